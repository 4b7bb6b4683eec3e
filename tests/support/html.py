"""Reading the HTML pages the project writes (report, gallery, demo) the way a browser would."""

from __future__ import annotations

from html.parser import HTMLParser


class Links(HTMLParser):
    """Every ``href``/``src`` of a page as ``(tag, url)``, and its ``<title>`` text (entities decoded)."""

    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.title = ""
        self._in_title = False

    @property
    def urls(self) -> list[str]:
        return [url for _tag, url in self.links]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("href", "src"):
            if key in attrs:
                self.links.append((tag, attrs[key]))
        self._in_title = tag == "title"

    def handle_data(self, data):
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag):
        self._in_title = False
