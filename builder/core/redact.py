"""How a URL that may carry credentials is shown, logged, stored and published.

A source's name is its URL; it is stored in ``tiles.db`` (which is published) and appears in
logs and error messages, so ``harvest`` stores it through :func:`redact_url` and ``build``
refuses a library holding a source it would still change.  Standard library only.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_PARAM = re.compile(r"key|token|secret|sig|password|passwd|auth|credential|session", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with credentials removed: user:password@ and secret-looking query values.

    The source name is stored in ``tiles.db`` (which is published) and appears in logs and
    error messages, so an API key in a template must never reach either.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    changed = False
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
        changed = True
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="{}")
            changed = True
    if not changed:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
