"""A local Hugging Face Hub on 127.0.0.1 that the real ``huggingface_hub`` (2.x) and ``datasets``
(5.x) clients talk to, for the tests and ``bench/``: nothing in the client is mocked.

    with LocalHub() as hub:                       # or the ``local_hub`` fixture of tests/conftest.py
        env = {**os.environ, **hub.env(home)}     # HF_ENDPOINT, HF_TOKEN, HF_HUB_DISABLE_XET=1, caches
        ...                                       # push, snapshot_download, load_dataset, HfFileSystem...
        hub.files("user/repo")                    # {path: bytes} at main (any revision or commit sha)
        hub.served_bytes("*.parquet")             # body bytes served for matching paths
        hub.requests                              # every request: method, path, status, bytes, range...
        hub.history("user/repo"), hub.changes("user/repo")   # commits; what the last one changed

Two origins, as on the Hub: the Hub itself (``hub.endpoint``: the API, ``resolve``, the LFS batch
API) and a storage/CDN origin on a second port (``hub.cdn``) that LFS uploads go to and LFS
downloads are redirected to, with signed, expiring URLs: the client sends its token to the Hub
and never to storage, as with the real thing.

Implemented, with the URLs, methods, payloads and headers ``huggingface_hub`` 2.4 and
``datasets`` 5.2 use (models, datasets and spaces alike; ``{repo}`` is ``[datasets/|spaces/]ns/name``):

- ``POST /api/repos/create`` (409 with the repo's ``url`` when it exists, as ``exist_ok`` needs;
  an initial commit holding the Hub's default ``.gitattributes``; ``default_private`` plays an
  organisation that makes new repos private), ``DELETE /api/repos/delete``;
- ``GET /api/{type}s/{ns}/{name}`` and ``.../revision/{rev}``: ``id``, ``sha``, ``private``,
  ``lastModified``, ``createdAt``, ``cardData`` (the README's YAML header), ``siblings`` (with
  ``size``, ``blobId`` and ``lfs`` when ``blobs=true``), ``usedStorage``; ``expand`` honoured;
- ``GET .../tree/{rev}[/{path}]`` with ``recursive``, ``expand`` (``lastCommit`` per entry) and
  cursor pagination through ``Link: <...>; rel="next"`` (1000 entries a page, 50 with ``expand``);
- ``POST .../paths-info/{rev}`` (form or JSON ``paths``, ``expand``); files carry ``oid`` (git blob
  id), ``size`` and, for LFS files, ``lfs: {oid (sha256), size, pointerSize}``; folders their tree id;
- ``POST .../preupload/{rev}``: ``uploadMode`` is ``lfs`` when the path matches an LFS pattern of
  the revision's ``.gitattributes``, the 512-byte sample is binary, or the file is over 10 MiB,
  ``regular`` otherwise; ``shouldIgnore`` from ``gitIgnore`` or the repo's ``.gitignore`` (plain
  patterns; no ``!`` negation); ``oid`` of the file already there, so an unchanged file is skipped;
- ``POST .../commit/{rev}`` (NDJSON ``header``, ``file`` base64, ``lfsFile``, ``deletedFile``,
  ``deletedFolder``): ``parentCommit`` checked (412 when the branch moved); a regular file over
  10 MiB or binary refused (400), an ``lfsFile`` whose object was never uploaded refused (400), a
  deleted path that does not exist 404 ``EntryNotFound``; each commit a real git commit id over
  real git tree and blob ids (LFS files as their pointer files), so old commits keep resolving;
- ``GET .../commits/{rev}`` (paginated), ``GET .../refs``, ``POST``/``DELETE .../branch/{name}``,
  ``POST .../tag/{rev}``, ``DELETE .../tag/{name}``, ``POST /api/validate-yaml`` (YAML parses and is
  a mapping; ``configs`` entries have ``config_name`` and ``data_files``), ``GET /api/whoami-v2``;
- ``POST {repo}.git/info/lfs/objects/batch`` (``upload`` and ``download``; objects already stored
  get no actions), the ``basic`` transfer (one PUT to storage) and the ``multipart`` one for objects
  over ``multipart_chunk_size`` (part PUTs answered with an ``ETag``, then the completion POST),
  sha256 and size checked on arrival; ``POST {repo}.git/info/lfs/objects/verify``;
- ``GET``/``HEAD {repo}/resolve/{rev}/{path}`` by branch, tag or commit sha: regular files served
  directly, LFS files a 302 to a signed storage URL with ``X-Linked-Etag`` (the sha256) and
  ``X-Linked-Size``; ``ETag``, ``X-Repo-Commit``, ``Accept-Ranges``, ``Content-Length``; ``Range``
  (``a-b``, ``a-``, ``-n``) answered 206 with ``Content-Range``, 416 with ``Content-Range: bytes */size``
  when unsatisfiable (several ranges in one header get the whole file, as on S3);
- errors as the Hub sends them: ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound`` (with ``X-Repo-Commit``), ``X-Error-Message``, a JSON ``{"error": ...}`` body, so
  the client raises its own exceptions.

Authorisation: one token (``HF_TOKEN``), required for every write (401 without it); a request with
any other token is refused 401 ``Invalid credentials in Authorization header``; private repos are
``RepoNotFound`` without it. The token is never logged or written: requests record only whether
one was sent and whether it was right. Any namespace may be written to by the token's user.

Not implemented: Xet. ``huggingface_hub`` 2.4 uploads through Xet whenever ``hf_xet`` is installed
and ``HF_HUB_DISABLE_XET`` is unset (``is_xet_available()``, for ``create_commit`` and
``upload_folder`` alike), and downloads through Xet only when a ``resolve`` answer carries
``X-Xet-Hash``, which this server never sends; its Xet token routes answer 501, so clients need
``HF_HUB_DISABLE_XET=1``, which ``env()`` and the fixture set. Nor pull requests (``create_pr``), copies between repos, super-squash, buckets,
gated repos, the dataset viewer (``datasets-server``), spaces' runtime, discussions, webhooks,
security scans, git over HTTP (clone/push). Requests nobody routes answer 404 and are counted.

Repos live on disk under ``root`` (``objects/`` content-addressed, ``repos/{type}s/{ns}/{name}/``
refs and one JSON file per commit), so a ``LocalHub`` started on the same ``root`` serves them
again (a bench can build a large release once).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

REGULAR_MAX_SIZE = 10 * 1024 * 1024  # the Hub refuses regular (non-LFS) files above 10 MiB
SAMPLE_SIZE = 512  # bytes of a file the client sends to preupload
TREE_PAGE_SIZE = 1000
TREE_PAGE_SIZE_EXPANDED = 50
COMMITS_PAGE_SIZE = 50
SIGNED_URL_SECONDS = 3600
COPY_CHUNK = 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_JSON = "application/vnd.git-lfs+json"
INVALID_TOKEN = "Invalid credentials in Authorization header"
DATASET_MEDIA_ATTRIBUTES = """\
# Audio files - uncompressed
*.pcm filter=lfs diff=lfs merge=lfs -text
*.sam filter=lfs diff=lfs merge=lfs -text
*.raw filter=lfs diff=lfs merge=lfs -text
# Audio files - compressed
*.aac filter=lfs diff=lfs merge=lfs -text
*.flac filter=lfs diff=lfs merge=lfs -text
*.mp3 filter=lfs diff=lfs merge=lfs -text
*.ogg filter=lfs diff=lfs merge=lfs -text
*.wav filter=lfs diff=lfs merge=lfs -text
# Image files - uncompressed
*.bmp filter=lfs diff=lfs merge=lfs -text
*.gif filter=lfs diff=lfs merge=lfs -text
*.png filter=lfs diff=lfs merge=lfs -text
*.tiff filter=lfs diff=lfs merge=lfs -text
# Image files - compressed
*.jpg filter=lfs diff=lfs merge=lfs -text
*.jpeg filter=lfs diff=lfs merge=lfs -text
*.webp filter=lfs diff=lfs merge=lfs -text
# Video files - compressed
*.mp4 filter=lfs diff=lfs merge=lfs -text
*.webm filter=lfs diff=lfs merge=lfs -text
"""
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.lz4 *.mds *.mlmodel *.model"
        " *.msgpack *.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors"
        " saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
    ).split()
)


# ------------------------------------------------------------------------------------ git objects


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's ``oid``/``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file git stores in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_object_id(kind: bytes, body: bytes) -> str:
    return hashlib.sha1(kind + b" %d\0" % len(body) + body).hexdigest()


def tree_ids(files: dict[str, Entry]) -> dict[str, str]:
    """Git tree ids of every folder of ``files`` (``""`` is the root), computed as git does."""
    children: dict[str, dict[str, str | None]] = {"": {}}  # folder -> {name: blob id, or None for a folder}
    for path, entry in files.items():
        parts = path.split("/")
        for depth in range(1, len(parts)):
            children.setdefault("/".join(parts[:depth]), {})
            children["/".join(parts[: depth - 1])][parts[depth - 1]] = None
        children["/".join(parts[:-1])][parts[-1]] = entry.blob_id
    ids: dict[str, str] = {}
    for folder in sorted(children, key=lambda p: p.count("/") + 1 if p else 0, reverse=True):  # deepest first
        body = b""
        for name, oid in sorted(children[folder].items(), key=lambda kv: kv[0] + ("/" if kv[1] is None else "")):
            if oid is None:
                body += b"40000 " + name.encode() + b"\0" + bytes.fromhex(ids[f"{folder}/{name}" if folder else name])
            else:
                body += b"100644 " + name.encode() + b"\0" + bytes.fromhex(oid)
        ids[folder] = _git_object_id(b"tree", body)
    return ids


def commit_id(tree: str, parents: list[str], author: str, timestamp: int, message: str) -> str:
    """A git commit id over the tree, parents, author and message, as git computes it."""
    who = f"{author} <{author}@users.noreply.localhost> {timestamp} +0000"
    lines = [f"tree {tree}", *(f"parent {p}" for p in parents), f"author {who}", f"committer {who}", "", message]
    return _git_object_id(b"commit", ("\n".join(lines) + "\n").encode())


# --------------------------------------------------------------------------------- content rules


def is_binary_sample(sample: bytes) -> bool:
    """Whether a file's first bytes say it is binary: a NUL byte, or bytes that are not UTF-8
    (a multi-byte character cut by the end of the sample does not count)."""
    if b"\0" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        return not (exc.reason == "unexpected end of data" and exc.start >= len(sample) - 3)
    return False


def _pattern_matches(pattern: str, path: str) -> bool:
    """gitattributes/gitignore matching: a pattern without ``/`` matches any path component's
    name, one with ``/`` the path from the root."""
    pattern = pattern.lstrip("/") if "/" in pattern.rstrip("/") else pattern
    if "/" in pattern:
        return fnmatch.fnmatchcase(path, pattern)
    return any(fnmatch.fnmatchcase(part, pattern) for part in path.split("/"))


def lfs_patterns(gitattributes: str) -> list[str]:
    """The patterns a ``.gitattributes`` sends to LFS (``filter=lfs``)."""
    patterns = []
    for line in gitattributes.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def is_ignored(gitignore: str, path: str) -> bool:
    """Whether ``path`` is ignored by a ``.gitignore`` (plain patterns; ``!`` is not supported)."""
    for line in gitignore.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith(("#", "!")):
            continue
        if pattern.endswith("/"):
            folders = path.split("/")[:-1]
            if any(_pattern_matches(pattern.rstrip("/"), "/".join(folders[: i + 1])) for i in range(len(folders))):
                return True
        elif _pattern_matches(pattern, path):
            return True
    return False


def _now_iso(timestamp: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------------------------- repo model


@dataclass(frozen=True)
class Entry:
    """One file of a commit: ``regular`` (content in git, ``blob_id`` its git id) or ``lfs``
    (content in LFS storage under ``sha256``; ``blob_id`` the git id of its pointer file)."""

    kind: str
    blob_id: str
    size: int
    sha256: str | None = None

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size)) if self.sha256 else 0

    def as_json(self) -> list:
        return [self.kind, self.blob_id, self.size, self.sha256]


@dataclass
class Commit:
    oid: str
    parents: list[str]
    title: str
    message: str
    author: str
    timestamp: int
    files: dict[str, Entry]
    trees: dict[str, str]

    @property
    def date(self) -> str:
        return _now_iso(self.timestamp)

    def as_json(self) -> dict:
        return {
            "oid": self.oid, "parents": self.parents, "title": self.title, "message": self.message,
            "author": self.author, "timestamp": self.timestamp, "trees": self.trees,
            "files": {path: entry.as_json() for path, entry in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, data: dict) -> Commit:
        files = {path: Entry(*values) for path, values in data.pop("files").items()}
        return cls(files=files, **data)


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    created_at: str
    heads: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        """The commit a branch, a tag or a full commit sha names; :class:`HubError` otherwise."""
        oid = self.heads.get(revision) or self.tags.get(revision)
        if oid is None and re.fullmatch(r"[0-9a-f]{40}", revision) and revision in self.commits:
            oid = revision
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[oid]

    def last_change(self, commit: Commit, path: str) -> Commit:
        """The newest commit, following first parents from ``commit``, that changed ``path``."""
        def state(c: Commit):
            return c.files[path].blob_id if path in c.files else c.trees.get(path)

        current = commit
        while current.parents:
            parent = self.commits[current.parents[0]]
            if state(parent) != state(current):
                break
            current = parent
        return current

    def meta_json(self) -> dict:
        return {"type": self.type, "id": self.id, "private": self.private, "createdAt": self.created_at,
                "heads": self.heads, "tags": self.tags}


class HubError(Exception):
    """An error answer: status, message and the Hub's ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass(frozen=True)
class Served:
    """One request as the server saw it (never the token: only whether one came and was right)."""

    origin: str  # "hub" or "cdn" (LFS storage)
    method: str
    path: str  # URL path, percent-decoded, without the query
    query: str
    status: int
    sent: int  # body bytes written
    received: int  # request body bytes
    range: str | None
    auth: str  # "none", "valid" or "invalid"
    repo: str | None = None  # "datasets/ns/name" for requests about one repo
    file: str | None = None  # the path in the repo for downloads (resolve and storage)


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None  # body streamed from this file instead: (offset, length)
    offset: int = 0
    length: int = 0


def _error_reply(exc: HubError) -> Reply:
    reply = _json_reply(exc.status, {"error": exc.message}, **{"X-Error-Message": exc.message, **exc.headers})
    if exc.code:
        reply.headers["X-Error-Code"] = exc.code
    return reply


def _json_reply(status: int, payload: Any, content_type: str = "application/json; charset=utf-8", **headers) -> Reply:
    return Reply(status, {"Content-Type": content_type, **headers}, json.dumps(payload).encode())


class _Body:
    """A request body read on demand (``Content-Length`` or chunked), drained if left unread."""

    def __init__(self, handler: BaseHTTPRequestHandler):
        self.rfile = handler.rfile
        self.chunked = handler.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self.remaining = int(handler.headers.get("Content-Length") or 0)
        self.received = 0
        self.done = not self.chunked and self.remaining == 0

    def chunks(self) -> Iterator[bytes]:
        while not self.done:
            if self.chunked:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    self.done = True
                    return
                data = self.rfile.read(size)
                self.rfile.readline()
            else:
                data = self.rfile.read(min(COPY_CHUNK, self.remaining))
                self.remaining -= len(data)
                self.done = self.remaining == 0 or not data
            self.received += len(data)
            yield data

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def drain(self) -> None:
        for _ in self.chunks():
            pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server_version = "LocalHub"
    timeout = 60  # an idle keep-alive connection is closed after this

    def log_message(self, *args) -> None:  # nothing is logged (requests carry the token)
        pass

    def _serve(self) -> None:
        self.server.hub._serve(self, self.server.origin)  # type: ignore[attr-defined]

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive handler threads must not hold up stop()

    def __init__(self, hub: LocalHub, origin: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub, self.origin = hub, origin


# ----------------------------------------------------------------------------------- the hub


class LocalHub:
    """The server: two listening sockets (Hub and LFS storage), repos on disk under ``root``."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        token: str | None = None,
        user: str = "user",
        default_private: bool = False,
        multipart_chunk_size: int = 16 * 1024 * 1024,
        client_home: str | os.PathLike | None = None,
    ):
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="localhub-") if root is None else root)
        self.token = token or "hf_local_" + secrets.token_hex(16)
        self.user = user
        self.default_private = default_private
        self.multipart_chunk_size = multipart_chunk_size
        self.client_home = Path(client_home) if client_home is not None else None
        self._secret = secrets.token_bytes(32)  # signs storage URLs
        self._lock = threading.RLock()
        self._served: list[Served] = []
        self._served_lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        for folder in ("objects/lfs", "objects/git", "tmp", "repos"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._load()
        self._servers = [_Server(self, "hub"), _Server(self, "cdn")]
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_port}"
        self.cdn = f"http://127.0.0.1:{self._servers[1].server_port}"
        self._threads: list[threading.Thread] = []

    # -------------------------------------------------------------------------- lifecycle

    def start(self) -> LocalHub:
        if not self._threads:
            for server in self._servers:
                thread = threading.Thread(
                    target=server.serve_forever, args=(0.05,), daemon=True, name=f"localhub-{server.origin}"
                )
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            if self._threads:
                server.shutdown()
            server.server_close()
        self._threads = []
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------------------------- clients

    def env(self, home: str | os.PathLike | None = None, token: bool = True) -> dict[str, str]:
        """Environment variables that point a client process here: the endpoint, the token (unless
        ``token=False``), LFS instead of Xet, online, no telemetry or download-count pings, and with
        ``home`` (default ``client_home``) every Hugging Face cache under it."""
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
        }
        if token:
            env["HF_TOKEN"] = self.token
        home = Path(home) if home is not None else self.client_home
        if home is not None:
            env.update(
                HF_HOME=str(home / "hf_home"),
                HF_HUB_CACHE=str(home / "hf_home" / "hub"),
                HF_DATASETS_CACHE=str(home / "datasets_cache"),
            )
        return env

    def client_patches(self, home: str | os.PathLike | None = None) -> list[tuple[object, str, object]]:
        """``(module, attribute, value)`` for the settings ``huggingface_hub`` and ``datasets`` read
        from the environment when they are imported, so an already-imported client in this process
        behaves as a fresh process started with :meth:`env` would (apply with ``monkeypatch.setattr``)."""
        import datasets.config as dconfig
        from huggingface_hub import constants
        from huggingface_hub.utils import _http

        env = self.env(home)
        hf_home = env.get("HF_HOME", constants.HF_HOME)
        hub_cache = env.get("HF_HUB_CACHE", constants.HF_HUB_CACHE)
        datasets_cache = Path(env.get("HF_DATASETS_CACHE", dconfig.HF_DATASETS_CACHE))
        return [
            (constants, "ENDPOINT", self.endpoint),
            (constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
            (constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"}),
            (_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(self.endpoint)}),
            (constants, "HF_HUB_DISABLE_XET", True),
            (constants, "HF_HUB_DISABLE_TELEMETRY", True),
            (constants, "HF_HUB_OFFLINE", False),
            (constants, "HF_HOME", hf_home),
            (constants, "HF_HUB_CACHE", hub_cache),
            (constants, "HUGGINGFACE_HUB_CACHE", hub_cache),
            (constants, "HF_ASSETS_CACHE", os.path.join(hf_home, "assets")),
            (constants, "HF_XET_CACHE", os.path.join(hf_home, "xet")),
            (constants, "HF_TOKEN_PATH", os.path.join(hf_home, "token")),
            (constants, "HF_STORED_TOKENS_PATH", os.path.join(hf_home, "stored_tokens")),
            (dconfig, "HF_ENDPOINT", self.endpoint),
            (dconfig, "HUB_DATASETS_URL", self.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"),
            (dconfig, "HF_UPDATE_DOWNLOAD_COUNTS", False),
            (dconfig, "HF_HUB_OFFLINE", False),
            (dconfig, "HF_DATASETS_OFFLINE", False),
            (dconfig, "HF_CACHE_HOME", hf_home),
            (dconfig, "HF_MODULES_CACHE", Path(hf_home) / "modules"),
            (dconfig, "HF_DATASETS_CACHE", datasets_cache),
            (dconfig, "DOWNLOADED_DATASETS_PATH", datasets_cache / "downloads"),
            (dconfig, "EXTRACTED_DATASETS_PATH", datasets_cache / "downloads" / "extracted"),
        ]

    # -------------------------------------------------------------------------- counters

    @property
    def requests(self) -> list[Served]:
        """Every request served so far (since the last :meth:`reset_counters`), in order."""
        with self._served_lock:
            return list(self._served)

    def reset_counters(self) -> None:
        with self._served_lock:
            self._served.clear()

    def _matching(self, path_glob: str | None, method: str | None, origin: str | None) -> list[Served]:
        def matches(record: Served) -> bool:
            if path_glob is None:
                return True
            return fnmatch.fnmatchcase(record.path, path_glob) or (
                record.file is not None and fnmatch.fnmatchcase(record.file, path_glob)
            )

        return [
            r for r in self.requests
            if matches(r) and (method is None or r.method == method) and (origin is None or r.origin == origin)
        ]

    def served_bytes(self, path_glob: str | None = None, method: str | None = None, origin: str | None = None) -> int:
        """Body bytes served. ``path_glob`` (``fnmatch``, ``*`` crosses ``/``) is matched against each
        request's URL path and, for downloads (``resolve`` and storage), the file's path in its repo,
        so ``served_bytes("*.parquet")`` counts every byte sent for Parquet files and their redirects."""
        return sum(r.sent for r in self._matching(path_glob, method, origin))

    def request_count(self, path_glob: str | None = None, method: str | None = None, origin: str | None = None) -> int:
        """How many requests matched (same rules as :meth:`served_bytes`)."""
        return len(self._matching(path_glob, method, origin))

    def bytes_by_path(self) -> dict[tuple[str, str], int]:
        """Body bytes served per (method, path), for a bench's report."""
        totals: dict[tuple[str, str], int] = {}
        for r in self.requests:
            key = (r.method, r.path)
            totals[key] = totals.get(key, 0) + r.sent
        return totals

    # -------------------------------------------------------------------------- inspection

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        with self._lock:
            return self.repos[(repo_type, repo_id)]

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> str:
        """The commit sha ``revision`` points to."""
        with self._lock:
            return self.repo(repo_id, repo_type).resolve(revision).oid

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Every file of the repo at ``revision`` (branch, tag or commit sha), with its content."""
        with self._lock:
            commit = self.repo(repo_id, repo_type).resolve(revision)
        return {path: self._content_path(entry).read_bytes() for path, entry in sorted(commit.files.items())}

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> list[Commit]:
        """The commits reachable from ``revision`` through first parents, newest first."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            commit, out = repo.resolve(revision), []
            while True:
                out.append(commit)
                if not commit.parents:
                    return out
                commit = repo.commits[commit.parents[0]]

    def changes(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, list[str]]:
        """What the commit ``revision`` names changed against its parent: added, modified, deleted paths."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            commit = repo.resolve(revision)
            before = repo.commits[commit.parents[0]].files if commit.parents else {}
        after = commit.files
        return {
            "added": sorted(set(after) - set(before)),
            "modified": sorted(p for p in set(after) & set(before) if after[p] != before[p]),
            "deleted": sorted(set(before) - set(after)),
        }

    # -------------------------------------------------------------------------- storage

    def _repo_dir(self, repo: Repo) -> Path:
        return self.root / "repos" / f"{repo.type}s" / repo.id

    def _lfs_path(self, sha256: str) -> Path:
        return self.root / "objects" / "lfs" / sha256[:2] / sha256

    def _git_path(self, blob_id: str) -> Path:
        return self.root / "objects" / "git" / blob_id[:2] / blob_id

    def _content_path(self, entry: Entry) -> Path:
        return self._lfs_path(entry.sha256) if entry.kind == "lfs" else self._git_path(entry.blob_id)

    def _lfs_size(self, sha256: str) -> int | None:
        path = self._lfs_path(sha256)
        return path.stat().st_size if path.is_file() else None

    def _store(self, target: Path, data: bytes) -> None:
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.root / "tmp" / secrets.token_hex(8)
            tmp.write_bytes(data)
            os.replace(tmp, target)

    def _write_json(self, path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)

    def _save_repo(self, repo: Repo) -> None:
        self._write_json(self._repo_dir(repo) / "repo.json", repo.meta_json())

    def _load(self) -> None:
        for meta in sorted((self.root / "repos").glob("*/*/*/repo.json")):
            data = json.loads(meta.read_text())
            repo = Repo(data["type"], data["id"], data["private"], data["createdAt"], data["heads"], data["tags"])
            for commit_file in (meta.parent / "commits").glob("*.json"):
                commit = Commit.from_json(json.loads(commit_file.read_text()))
                repo.commits[commit.oid] = commit
            self.repos[(repo.type, repo.id)] = repo

    def _new_commit(self, repo: Repo, files: dict[str, Entry], parents: list[str], title: str, message: str) -> Commit:
        trees = tree_ids(files)
        timestamp = int(time.time())
        full = title if not message else f"{title}\n\n{message}"
        oid = commit_id(trees[""], parents, self.user, timestamp, full)
        commit = Commit(oid, parents, title, message, self.user, timestamp, dict(files), trees)
        repo.commits[oid] = commit
        self._write_json(self._repo_dir(repo) / "commits" / f"{oid}.json", commit.as_json())
        return commit

    def _signed(self, route: str, **params: Any) -> str:
        """A storage URL for ``route`` that expires, signed so only this hub hands them out."""
        params["expires"] = int(time.time()) + SIGNED_URL_SECONDS
        message = route + "?" + urlencode(sorted(params.items()))
        params["signature"] = hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()
        return f"{self.cdn}{route}?{urlencode(params)}"

    def _check_signature(self, route: str, query: dict[str, str]) -> None:
        params = {k: v for k, v in query.items() if k != "signature"}
        message = route + "?" + urlencode(sorted(params.items()))
        expected = hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, query.get("signature", "")):
            raise HubError(403, "Signature does not match")
        if int(query.get("expires", "0")) < time.time():
            raise HubError(403, "Request has expired")

    # -------------------------------------------------------------------------- dispatch

    def _serve(self, h: BaseHTTPRequestHandler, origin: str) -> None:
        method = h.command
        url = urlsplit(h.path)
        body = _Body(h)
        auth = self._auth_state(h.headers.get("Authorization"))
        try:
            if origin == "hub" and auth == "invalid":
                raise HubError(401, INVALID_TOKEN)
            route = self._route_hub if origin == "hub" else self._route_cdn
            reply = route(method, url.path, parse_qs(url.query), h.headers, body, auth)
        except HubError as exc:
            reply = _error_reply(exc)
        except Exception as exc:  # noqa: BLE001 - a bug here answers 500 instead of dropping the connection
            reply = _error_reply(HubError(500, f"local Hub error: {type(exc).__name__}: {exc}"))
        body.drain()
        # Recorded before the answer leaves, so a client that has it finds it counted; corrected
        # below if the client hangs up before the whole body is written.
        length = 0 if method == "HEAD" else reply.length if reply.file is not None else len(reply.body)
        record = Served(
            origin, method, unquote(url.path), url.query, reply.status, length, body.received,
            h.headers.get("Range"), auth, *self._subject(origin, url.path, url.query),
        )
        with self._served_lock:
            index = len(self._served)
            self._served.append(record)
        sent = self._send(h, method, reply)
        if sent != length:
            with self._served_lock:
                if index < len(self._served) and self._served[index] is record:
                    self._served[index] = replace(record, sent=sent)

    def _subject(self, origin: str, path: str, query: str) -> tuple[str | None, str | None]:
        """The repo (``datasets/ns/name``) a request is about and, for downloads, the file's path in it."""
        if origin == "cdn":
            params = {k: v[-1] for k, v in parse_qs(query).items()}
            return params.get("repo"), params.get("path")
        if match := self._API_REPO.match(path):
            return f"{match[1]}/{unquote(match[2])}/{unquote(match[3])}", None
        if match := self._LFS_API.match(path):
            return f"{match[1] or 'models'}/{unquote(match[2])}/{unquote(match[3])}", None
        if match := self._RESOLVE.match(path):
            _revision, segments = _split_revision(match[4].split("/"))
            return f"{match[1] or 'models'}/{unquote(match[2])}/{unquote(match[3])}", unquote("/".join(segments))
        return None, None

    def _auth_state(self, header: str | None) -> str:
        if not header:
            return "none"
        scheme, _, value = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())
        return "valid" if ok else "invalid"

    def _send(self, h: BaseHTTPRequestHandler, method: str, reply: Reply) -> int:
        length = reply.length if reply.file is not None else len(reply.body)
        h.send_response(reply.status)
        for name, value in reply.headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        if method == "HEAD" or not length:
            return 0
        sent = 0
        try:
            if reply.file is None:
                h.wfile.write(reply.body)
                return length
            with open(reply.file, "rb") as f:
                f.seek(reply.offset)
                while sent < length:
                    chunk = f.read(min(COPY_CHUNK, length - sent))
                    if not chunk:
                        break
                    h.wfile.write(chunk)
                    sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        return sent

    _API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(.*))?$")
    _RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/(.+)$")
    _LFS_API = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+?)\.git/info/lfs/objects/(batch|verify)$")

    def _route_hub(self, method, path, query, headers, body, auth) -> Reply:
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo(json.loads(body.read() or b"{}"), auth)
        if path == "/api/repos/delete" and method == "DELETE":
            return self._delete_repo(json.loads(body.read() or b"{}"), auth)
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(json.loads(body.read() or b"{}"))
        if path == "/api/whoami-v2" and method == "GET":
            self._require_write(auth)
            return _json_reply(200, {"type": "user", "name": self.user, "fullname": self.user, "orgs": [],
                                     "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if match := self._API_REPO.match(path):
            kind, ns, name, rest = match.groups()
            repo_type, repo_id = REPO_TYPES[kind], f"{unquote(ns)}/{unquote(name)}"
            return self._route_repo_api(method, repo_type, repo_id, rest or "", query, body, auth)
        if match := self._LFS_API.match(path):
            kind, ns, name, action = match.groups()
            repo_type, repo_id = REPO_TYPES.get(kind or "models"), f"{unquote(ns)}/{unquote(name)}"
            repo = self._readable_repo(repo_type, repo_id, auth)
            payload = json.loads(body.read() or b"{}")
            return self._lfs_batch(repo, payload, auth) if action == "batch" else self._lfs_verify(payload, auth)
        if (match := self._RESOLVE.match(path)) and method in ("GET", "HEAD"):
            kind, ns, name, rest = match.groups()
            repo_type, repo_id = REPO_TYPES.get(kind or "models"), f"{unquote(ns)}/{unquote(name)}"
            revision, segments = _split_revision(rest.split("/"))
            file_path = unquote("/".join(segments))
            return self._resolve(repo_type, repo_id, revision, file_path, headers.get("Range"), auth)
        raise HubError(404, f"no route for {method} {unquote(path)} on this local Hub")

    def _route_repo_api(self, method, repo_type, repo_id, rest, query, body, auth) -> Reply:
        segments = rest.split("/") if rest else []
        action = segments[0] if segments else ""
        if action.startswith("xet-"):
            raise HubError(501, "Xet is not implemented by this local Hub: set HF_HUB_DISABLE_XET=1")
        if action == "" and method == "GET":
            repo = self._readable_repo(repo_type, repo_id, auth)
            return self._repo_info(repo, repo.resolve("main"), query)
        if action == "revision" and method == "GET" and len(segments) > 1:
            repo = self._readable_repo(repo_type, repo_id, auth)
            return self._repo_info(repo, repo.resolve(unquote("/".join(segments[1:]))), query)
        if action == "tree" and method == "GET" and len(segments) > 1:
            revision, path_segments = _split_revision(segments[1:])
            repo = self._readable_repo(repo_type, repo_id, auth)
            return self._tree(repo, revision, unquote("/".join(path_segments)), query)
        if action == "paths-info" and method == "POST" and len(segments) > 1:
            repo = self._readable_repo(repo_type, repo_id, auth)
            return self._paths_info(repo, unquote("/".join(segments[1:])), body.read())
        if action == "preupload" and method == "POST" and len(segments) > 1:
            self._require_write(auth)
            repo = self._readable_repo(repo_type, repo_id, auth)
            return self._preupload(repo, unquote("/".join(segments[1:])), json.loads(body.read() or b"{}"), query)
        if action == "commit" and method == "POST" and len(segments) > 1:
            self._require_write(auth)
            repo = self._readable_repo(repo_type, repo_id, auth)
            return self._commit(repo, unquote("/".join(segments[1:])), body.read(), query)
        if action == "commits" and method == "GET" and len(segments) > 1:
            repo = self._readable_repo(repo_type, repo_id, auth)
            return self._commits(repo, unquote("/".join(segments[1:])), query)
        if action == "refs" and method == "GET":
            return self._refs(self._readable_repo(repo_type, repo_id, auth), query)
        if action in ("branch", "tag") and len(segments) > 1 and method in ("POST", "DELETE"):
            self._require_write(auth)
            repo = self._readable_repo(repo_type, repo_id, auth)
            payload = json.loads(body.read() or b"{}") if method == "POST" else {}
            return self._ref_change(repo, action, method, unquote("/".join(segments[1:])), payload)
        raise HubError(404, f"no route for {method} /api/{repo_type}s/{repo_id}/{rest} on this local Hub")

    def _route_cdn(self, method, path, query, headers, body, auth) -> Reply:
        params = {k: v[-1] for k, v in query.items()}
        if (match := re.fullmatch(r"/lfs/([0-9a-f]{64})", path)) and method in ("GET", "HEAD"):
            self._check_signature(path, params)
            sha256 = match.group(1)
            size = self._lfs_size(sha256)
            if size is None:
                raise HubError(404, "The specified key does not exist.")
            return _file_reply(self._lfs_path(sha256), size, headers.get("Range"), {
                "ETag": f'"{sha256}"',
                "Content-Type": "application/octet-stream",
                "Content-Disposition": _disposition(params.get("path", sha256)),
            })
        if match := re.fullmatch(r"/upload/([0-9a-f]{64})(?:/(\d+|complete))?", path):
            self._check_signature(path, params)
            sha256, part = match.groups()
            if part is None and method == "PUT":
                return self._receive_lfs(sha256, int(params["size"]), body)
            if part == "complete" and method == "POST":
                return self._complete_multipart(sha256, int(params["size"]), json.loads(body.read() or b"{}"))
            if part is not None and method == "PUT":
                return self._receive_part(sha256, int(part), body)
        raise HubError(404, f"no route for {method} {path} on this local Hub's storage")

    # -------------------------------------------------------------------------- access

    def _require_write(self, auth: str) -> None:
        if auth != "valid":
            raise HubError(401, "Authorization required: this operation needs a token with write access")

    def _readable_repo(self, repo_type: str | None, repo_id: str, auth: str) -> Repo:
        with self._lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and auth != "valid"):
            status = 404 if auth == "valid" else 401
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    # -------------------------------------------------------------------------- repos

    def _create_repo(self, payload: dict, auth: str) -> Reply:
        self._require_write(auth)
        repo_type = payload.get("type") or "model"
        name, organization = payload.get("name"), payload.get("organization")
        if repo_type not in URL_PREFIX or not name:
            raise HubError(400, f"invalid repo type or name: {repo_type!r} {name!r}")
        repo_id = f"{organization or self.user}/{name}"
        if not all(_REPO_NAME.fullmatch(part) for part in repo_id.split("/")):
            raise HubError(400, f"invalid repo id {repo_id!r}")
        url = f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                return _json_reply(409, {"error": f"You already created this {repo_type} repo", "url": url},
                                   **{"X-Error-Message": f"You already created this {repo_type} repo"})
            visibility = payload.get("visibility")
            private = visibility == "private" or (visibility is None and self.default_private)
            repo = Repo(repo_type, repo_id, private, _now_iso())
            attributes = DEFAULT_GITATTRIBUTES + (DATASET_MEDIA_ATTRIBUTES if repo_type == "dataset" else "")
            data = attributes.encode()
            entry = Entry("regular", git_blob_id(data), len(data))
            self._store(self._git_path(entry.blob_id), data)
            commit = self._new_commit(repo, {".gitattributes": entry}, [], "initial commit", "")
            repo.heads["main"] = commit.oid
            self.repos[(repo_type, repo_id)] = repo
            self._save_repo(repo)
        return _json_reply(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict, auth: str) -> Reply:
        self._require_write(auth)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload.get('name')}"
        with self._lock:
            repo = self.repos.pop((repo_type, repo_id), None)
            if repo is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            shutil.rmtree(self._repo_dir(repo), ignore_errors=True)
        return _json_reply(200, {})

    def _validate_yaml(self, payload: dict) -> Reply:
        content = payload.get("content", "")
        errors = []
        if content.startswith("---\n") and "\n---" in content[3:]:
            try:
                header = yaml.safe_load(content.split("---\n", 2)[1])
            except yaml.YAMLError as exc:
                header, errors = None, [f"YAML does not parse: {exc}"]
            if not errors and not isinstance(header, dict):
                errors = ["the metadata header is not a YAML mapping"]
            configs = header.get("configs", []) if isinstance(header, dict) else []
            if not isinstance(configs, list) or not all(
                isinstance(c, dict) and "config_name" in c and "data_files" in c for c in configs
            ):
                errors.append(f"invalid configs: {configs!r}")
        if errors:
            return _json_reply(400, {"errors": [{"message": m} for m in errors]}, **{"X-Error-Message": errors[0]})
        return _json_reply(200, {"warnings": []})

    def _card_data(self, commit: Commit) -> dict | None:
        entry = commit.files.get("README.md")
        if entry is None:
            return None
        text = self._content_path(entry).read_text(encoding="utf-8", errors="replace")
        if not text.startswith("---\n"):
            return None
        try:
            header = yaml.safe_load(text.split("---\n", 2)[1])
        except (yaml.YAMLError, IndexError):
            return None
        return header if isinstance(header, dict) else None

    def _repo_info(self, repo: Repo, commit: Commit, query: dict) -> Reply:
        blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.kind == "lfs":
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        card = self._card_data(commit)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.type}/{repo.id}".encode()).hexdigest()[:24],
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags") or []) if card and isinstance(card.get("tags"), list) else [],
            "siblings": siblings,
            "usedStorage": sum(entry.size for entry in commit.files.values()),
        }
        if card is not None:
            info["cardData"] = card
        expand = query.get("expand", []) + query.get("expand[]", [])
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        return _json_reply(200, info)

    # -------------------------------------------------------------------------- tree, paths-info

    def _entry_json(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        entry = commit.files.get(path)
        if entry is not None:
            out: dict[str, Any] = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
            if entry.kind == "lfs":
                out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        else:
            out = {"type": "directory", "oid": commit.trees[path], "size": 0, "path": path}
        if expand:
            last = repo.last_change(commit, path)
            out["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return out

    def _tree(self, repo: Repo, revision: str, folder: str, query: dict) -> Reply:
        commit = repo.resolve(revision)
        recursive = _flag(query, "recursive")
        expand = _flag(query, "expand")
        folder = folder.strip("/")
        if folder and folder not in commit.trees:
            raise HubError(404, f"{folder} does not exist at {revision}", "EntryNotFound",
                           {"X-Repo-Commit": commit.oid})
        prefix = f"{folder}/" if folder else ""
        paths = [p for p in list(commit.trees) + list(commit.files) if p and p.startswith(prefix)]
        if not recursive:
            paths = [p for p in paths if "/" not in p[len(prefix):]]
        paths.sort()
        page_size = TREE_PAGE_SIZE_EXPANDED if expand else TREE_PAGE_SIZE
        start = int(query.get("cursor", ["0"])[-1] or 0)
        page = [self._entry_json(repo, commit, p, expand) for p in paths[start:start + page_size]]
        headers = {}
        if start + page_size < len(paths):
            params = {"recursive": str(recursive).lower(), "expand": str(expand).lower(), "cursor": start + page_size}
            route = f"/api/{repo.type}s/{repo.id}/tree/{quote(revision, safe='')}"
            route += f"/{quote(folder, safe='')}" if folder else ""
            headers["Link"] = f'<{self.endpoint}{route}?{urlencode(params)}>; rel="next"'
        return _json_reply(200, page, **headers)

    def _paths_info(self, repo: Repo, revision: str, raw: bytes) -> Reply:
        commit = repo.resolve(revision)
        try:
            payload = json.loads(raw) if raw.lstrip().startswith(b"{") else None
        except json.JSONDecodeError:
            payload = None
        if payload is None:
            form = parse_qs(raw.decode())
            payload = {"paths": form.get("paths", []), "expand": form.get("expand", ["false"])[-1]}
        paths = payload.get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        expand = str(payload.get("expand", False)).lower() in ("1", "true")
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files or (path and path in commit.trees):
                out.append(self._entry_json(repo, commit, path, expand))
        return _json_reply(200, out)

    # -------------------------------------------------------------------------- upload

    def _branch_commit(self, repo: Repo, revision: str) -> Commit:
        """The head of the branch ``revision``: commits go to branches only."""
        with self._lock:
            if revision not in repo.heads:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return repo.commits[repo.heads[revision]]

    def _text_at(self, commit: Commit, path: str) -> str:
        entry = commit.files.get(path)
        return self._content_path(entry).read_text(encoding="utf-8", errors="replace") if entry else ""

    def _preupload(self, repo: Repo, revision: str, payload: dict, query: dict) -> Reply:
        commit = self._branch_commit(repo, revision)
        patterns = lfs_patterns(self._text_at(commit, ".gitattributes"))
        gitignore = payload.get("gitIgnore")
        gitignore = self._text_at(commit, ".gitignore") if gitignore is None else gitignore
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample", ""))
            lfs = size > REGULAR_MAX_SIZE or is_binary_sample(sample) or any(_pattern_matches(p, path) for p in patterns)
            existing = commit.files.get(path)
            oid = None if existing is None else (existing.sha256 if existing.kind == "lfs" else existing.blob_id)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": is_ignored(gitignore, path), "oid": oid})
        return _json_reply(200, {"files": files, "commitOid": commit.oid})

    def _commit(self, repo: Repo, revision: str, raw: bytes, query: dict) -> Reply:
        if query.get("create_pr", ["0"])[-1] not in ("0", ""):
            raise HubError(501, "pull requests are not implemented by this local Hub")
        try:
            lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise HubError(400, f"the commit payload is not NDJSON: {exc}") from None
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        staged: list[tuple[str, Any]] = []
        for item in lines[1:]:
            key, value = item.get("key"), item.get("value") or {}
            path = _clean_repo_path(value.get("path", ""), folder=key == "deletedFolder")
            if key == "file":
                data = base64.b64decode(value.get("content", ""))
                if len(data) > REGULAR_MAX_SIZE:
                    raise HubError(400, "Your push was rejected because it contains files larger than 10 MiB."
                                        f" Please use https://git-lfs.github.com/ to store large files. Offending files: {path}")
                if is_binary_sample(data[:SAMPLE_SIZE]):
                    raise HubError(400, "Your push was rejected because it contains binary files."
                                        f" Please use https://git-lfs.github.com/ to store binary files. Offending files: {path}")
                entry = Entry("regular", git_blob_id(data), len(data))
                self._store(self._git_path(entry.blob_id), data)
                staged.append(("add", (path, entry)))
            elif key == "lfsFile":
                sha256 = str(value.get("oid", ""))
                size = self._lfs_size(sha256) if re.fullmatch(r"[0-9a-f]{64}", sha256) else None
                if size is None or ("size" in value and int(value["size"]) != size):
                    raise HubError(400, f"Your push was rejected because an LFS pointer ({path}) points to an object"
                                        " that was never uploaded")
                blob_id = git_blob_id(lfs_pointer(sha256, size))
                staged.append(("add", (path, Entry("lfs", blob_id, size, sha256))))
            elif key in ("deletedFile", "deletedFolder"):
                staged.append((key, path))
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        with self._lock:
            head = self._branch_commit(repo, revision)
            parent = header.get("parentCommit")
            if parent and not head.oid.startswith(parent.lower()):
                raise HubError(412, f"A commit has happened since {parent}: {revision} is at {head.oid}")
            files = dict(head.files)
            for action, arg in staged:
                if action == "add":
                    path, entry = arg
                    _check_no_conflict(files, path)
                    files[path] = entry
                elif action == "deletedFile":
                    if files.pop(arg, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {arg}", "EntryNotFound",
                                       {"X-Repo-Commit": head.oid})
                else:
                    gone = [p for p in files if p.startswith(arg.rstrip("/") + "/")]
                    if not gone:
                        raise HubError(404, f"A folder with this name doesn't exist: {arg}", "EntryNotFound",
                                       {"X-Repo-Commit": head.oid})
                    for p in gone:
                        del files[p]
            title = str(header.get("summary") or "").strip() or "Update"
            commit = self._new_commit(repo, files, [head.oid], title, str(header.get("description") or ""))
            repo.heads[revision] = commit.oid
            self._save_repo(repo)
        url = f"{self.endpoint}/{URL_PREFIX[repo.type]}{repo.id}/commit/{commit.oid}"
        return _json_reply(200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    # -------------------------------------------------------------------------- LFS

    def _lfs_batch(self, repo: Repo, payload: dict, auth: str) -> Reply:
        operation = payload.get("operation")
        if operation == "upload":
            self._require_write(auth)
        elif operation != "download":
            raise HubError(422, f"unknown LFS operation {operation!r}")
        objects, transfer = [], "basic"
        multipart_ok = "multipart" in (payload.get("transfers") or ["basic"])
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "invalid oid or size"}})
                continue
            stored = self._lfs_size(oid)
            if operation == "download":
                if stored is None:
                    objects.append({"oid": oid, "size": size, "error": {"code": 404, "message": "Object does not exist"}})
                else:
                    href = self._signed(f"/lfs/{oid}", repo=f"{repo.type}s/{repo.id}")
                    objects.append({"oid": oid, "size": stored, "authenticated": True,
                                    "actions": {"download": {"href": href, "expires_in": SIGNED_URL_SECONDS}}})
                continue
            if stored == size:
                objects.append({"oid": oid, "size": size})  # already stored: nothing to upload
                continue
            verify = {"href": f"{self.endpoint}/{URL_PREFIX[repo.type]}{repo.id}.git/info/lfs/objects/verify"}
            if multipart_ok and size > self.multipart_chunk_size:
                transfer = "multipart"
                chunk = self.multipart_chunk_size
                parts = -(-size // chunk)
                upload_header = {"chunk_size": str(chunk)}
                for number in range(1, parts + 1):
                    upload_header[f"{number:05d}"] = self._signed(f"/upload/{oid}/{number}", size=size)
                upload = {"href": self._signed(f"/upload/{oid}/complete", size=size), "header": upload_header}
            else:
                upload = {"href": self._signed(f"/upload/{oid}", size=size)}
            upload["expires_in"] = SIGNED_URL_SECONDS
            objects.append({"oid": oid, "size": size, "authenticated": True,
                            "actions": {"upload": upload, "verify": verify}})
        return _json_reply(200, {"transfer": transfer, "objects": objects, "hash_algo": "sha256"}, LFS_JSON)

    def _lfs_verify(self, payload: dict, auth: str) -> Reply:
        self._require_write(auth)
        oid, size = str(payload.get("oid", "")), payload.get("size")
        stored = self._lfs_size(oid) if re.fullmatch(r"[0-9a-f]{64}", oid) else None
        if stored is None or stored != size:
            raise HubError(404, f"LFS object {oid} of {size} bytes was not uploaded")
        return _json_reply(200, {"success": True}, LFS_JSON)

    def _finish_object(self, tmp: Path, sha256: str, size: int, digest: str, length: int) -> Reply:
        """Move an uploaded object into storage if it is what was announced."""
        if digest != sha256 or length != size:
            tmp.unlink(missing_ok=True)
            raise HubError(400, f"uploaded object does not match: expected sha256 {sha256} of {size} bytes,"
                                f" got {digest} of {length} bytes")
        target = self._lfs_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        return Reply(200)

    def _receive_lfs(self, sha256: str, size: int, body: _Body) -> Reply:
        tmp = self.root / "tmp" / f"{sha256}.{secrets.token_hex(4)}"
        hasher, length = hashlib.sha256(), 0
        with open(tmp, "wb") as out:
            for chunk in body.chunks():
                hasher.update(chunk)
                out.write(chunk)
                length += len(chunk)
        return self._finish_object(tmp, sha256, size, hasher.hexdigest(), length)

    def _parts_dir(self, sha256: str) -> Path:
        return self.root / "tmp" / f"multipart-{sha256}"

    def _receive_part(self, sha256: str, number: int, body: _Body) -> Reply:
        folder = self._parts_dir(sha256)
        folder.mkdir(parents=True, exist_ok=True)
        data = body.read()
        (folder / f"{number:05d}").write_bytes(data)
        return Reply(200, {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _complete_multipart(self, sha256: str, size: int, payload: dict) -> Reply:
        folder = self._parts_dir(sha256)
        parts = sorted(payload.get("parts", []), key=lambda p: p.get("partNumber", 0))
        if payload.get("oid") != sha256 or not parts:
            raise HubError(400, "the completion payload names another object or no parts")
        tmp = self.root / "tmp" / f"{sha256}.{secrets.token_hex(4)}"
        hasher, length = hashlib.sha256(), 0
        with open(tmp, "wb") as out:
            for expected_number, part in enumerate(parts, start=1):
                path = folder / f"{int(part['partNumber']):05d}"
                if part["partNumber"] != expected_number or not path.is_file():
                    tmp.unlink(missing_ok=True)
                    raise HubError(400, f"part {part['partNumber']} was not uploaded")
                data = path.read_bytes()
                if str(part.get("etag", "")).strip('"') != hashlib.md5(data).hexdigest():
                    tmp.unlink(missing_ok=True)
                    raise HubError(400, f"part {expected_number}: ETag does not match what was uploaded")
                hasher.update(data)
                out.write(data)
                length += len(data)
        reply = self._finish_object(tmp, sha256, size, hasher.hexdigest(), length)
        shutil.rmtree(folder, ignore_errors=True)
        return reply

    # -------------------------------------------------------------------------- download

    def _resolve(self, repo_type, repo_id, revision, path, range_header, auth) -> Reply:
        repo = self._readable_repo(repo_type, repo_id, auth)
        with self._lock:
            commit = repo.resolve(revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.blob_id}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": _disposition(path)}
        if entry.kind == "lfs":
            location = self._signed(f"/lfs/{entry.sha256}", repo=f"{repo.type}s/{repo.id}", path=path)
            headers.update({"Location": location, "X-Linked-Etag": f'"{entry.sha256}"',
                            "X-Linked-Size": str(entry.size), "Content-Type": "text/plain; charset=utf-8"})
            return Reply(302, headers, f"Found. Redirecting to {location}".encode())
        headers["Content-Type"] = "text/plain; charset=utf-8"
        return _file_reply(self._git_path(entry.blob_id), entry.size, range_header, headers)

    # -------------------------------------------------------------------------- refs

    def _commits(self, repo: Repo, revision: str, query: dict) -> Reply:
        with self._lock:
            commit = repo.resolve(revision)
            chain = [commit]
            while chain[-1].parents:
                chain.append(repo.commits[chain[-1].parents[0]])
        start = int(query.get("p", ["0"])[-1] or 0) * COMMITS_PAGE_SIZE
        page = [
            {"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
             "authors": [{"user": c.author, "avatar": None}]}
            for c in chain[start:start + COMMITS_PAGE_SIZE]
        ]
        headers = {}
        if start + COMMITS_PAGE_SIZE < len(chain):
            nxt = f"{self.endpoint}/api/{repo.type}s/{repo.id}/commits/{quote(revision, safe='')}"
            headers["Link"] = f'<{nxt}?p={start // COMMITS_PAGE_SIZE + 1}>; rel="next"'
        return _json_reply(200, page, **headers)

    def _refs(self, repo: Repo, query: dict) -> Reply:
        with self._lock:
            out: dict[str, Any] = {
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in sorted(repo.heads.items())],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in sorted(repo.tags.items())],
                "converts": [],
            }
        if query.get("include_prs"):
            out["pullRequests"] = []
        return _json_reply(200, out)

    def _ref_change(self, repo: Repo, kind: str, method: str, name: str, payload: dict) -> Reply:
        with self._lock:
            refs = repo.heads if kind == "branch" else repo.tags
            if kind == "tag" and method == "POST":
                target, name = repo.resolve(name).oid, str(payload.get("tag", ""))
            elif kind == "branch" and method == "POST":
                target = repo.resolve(str(payload.get("startingPoint") or "main")).oid
            if method == "POST":
                if not name or name in repo.heads or name in repo.tags:
                    raise HubError(409, "Reference already exists")
                refs[name] = target
            else:
                if name not in refs:
                    raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
                if kind == "branch" and name == "main":
                    raise HubError(403, "the default branch cannot be deleted")
                del refs[name]
            self._save_repo(repo)
        return _json_reply(200, {})


# ------------------------------------------------------------------------------- small helpers


_REPO_NAME = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _flag(query: dict, name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


def _split_revision(segments: list[str]) -> tuple[str, list[str]]:
    """The revision at the head of URL path segments (percent-encoded as one segment, or the
    special ``refs/pr/N`` and ``refs/convert/X`` left unencoded) and the segments after it."""
    if unquote(segments[0]) == "refs" and len(segments) >= 3:
        return "/".join(unquote(s) for s in segments[:3]), segments[3:]
    return unquote(segments[0]), segments[1:]


def _clean_repo_path(path: str, folder: bool = False) -> str:
    """A path in a repo as the Hub accepts it; 400 for empty, absolute-escaping or ``.git`` paths."""
    clean = path.strip("/") if folder else path.lstrip("/")
    parts = clean.split("/")
    if not clean or any(part in ("", ".", "..", ".git") for part in parts):
        raise HubError(400, f"invalid path in repo: {path!r}")
    return clean


def _check_no_conflict(files: dict[str, Entry], path: str) -> None:
    parents = [str(p) for p in PurePosixPath(path).parents if str(p) != "."]
    if any(p in files for p in parents) or any(f.startswith(path + "/") for f in files):
        raise HubError(400, f"{path} conflicts with a file or folder of the same name")


def _disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_")
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\";"


def _file_reply(path: Path, size: int, range_header: str | None, headers: dict[str, str]) -> Reply:
    """200 with the whole file, 206 with one byte range, or 416 when the range is unsatisfiable."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    spec = (range_header or "").strip()
    if not spec.lower().startswith("bytes=") or "," in spec:
        return Reply(200, headers, file=path, offset=0, length=size)
    first, _, last = spec[6:].strip().partition("-")
    try:
        if first == "":
            start, end = max(size - int(last), 0), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return Reply(200, headers, file=path, offset=0, length=size)
    if first == "" and int(last) == 0 or start >= size or start > end:
        return Reply(416, {**headers, "Content-Range": f"bytes */{size}"}, b"")
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Reply(206, headers, file=path, offset=start, length=end - start + 1)


__all__ = ["LocalHub", "Served", "HubError", "git_blob_id", "lfs_pointer", "is_binary_sample"]
