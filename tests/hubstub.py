"""A small in-memory Hugging Face Hub on 127.0.0.1, enough for ``HfApi`` to create a dataset
repo, branch, list files, preupload and commit, so ``push`` runs end to end in tests.

It answers ``uploadMode: "regular"`` for every file, so file contents travel base64-encoded in
the commit itself; the real Hub sends binary files through LFS/Xet, which this stub does not
implement (that transfer path stays untested here).

    with HubStub() as hub:          # then HF_ENDPOINT=hub.endpoint
        ...
        hub.files("alice/mosaic")   # {path: bytes} on main
        hub.requests                # [(method, path, authorization header)]
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml


class HubStub:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {rev: {path: bytes}}}
        self.requests: list[tuple[str, str, str]] = []
        self.commits: list[dict] = []
        self.validated: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub._handle(self, "GET")

            def do_POST(self):
                stub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id]["branches"][revision])

    # ----------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, url.path, h.headers.get("authorization", "")))
            status, payload = self._route(method, unquote(url.path), body)
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _validate_yaml(self, req: dict) -> tuple[int, object]:
        """The Hub checks a README's YAML header before a commit that changes it: so does the stub."""
        self.validated.append(req)
        content = req.get("content", "")
        try:
            header = yaml.safe_load(content.split("---\n", 2)[1]) if content.startswith("---\n") else None
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"YAML does not parse: {exc}"}]}
        if not isinstance(header, dict):
            return 400, {"errors": [{"message": "README.md has no YAML metadata header"}]}
        configs = header.get("configs", [])
        if not all(isinstance(c, dict) and "config_name" in c and "data_files" in c for c in configs):
            return 400, {"errors": [{"message": f"invalid configs: {configs!r}"}]}
        return 200, {"warnings": []}

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, object]:
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(body)
            assert req.get("type") == "dataset", req
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            if repo_id in self.repos:
                # the Hub's 409 carries the url too: create_repo(exist_ok=True) reads it
                return 409, {
                    "error": "You already created this dataset repo",
                    "url": f"{self.endpoint}/datasets/{repo_id}",
                }
            private = req.get("visibility") == "private" or bool(req.get("private"))
            self.repos[repo_id] = {"private": private, "visibility": req.get("visibility"), "branches": {"main": {}}}
            return 200, {"url": f"{self.endpoint}/datasets/{repo_id}"}
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        match = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(tree|branch|preupload|commit)/(.+)", path)
        if not match:
            return 404, {"error": f"no route {method} {path}"}
        repo_id, action, revision = match.groups()
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        if action == "branch" and method == "POST":
            if revision in repo["branches"]:
                return 409, {"error": "Reference already exists"}
            repo["branches"][revision] = dict(repo["branches"]["main"])
            return 200, {}
        files = repo["branches"].get(revision)
        if files is None:
            return 404, {"error": "Revision not found"}
        if action == "tree" and method == "GET":
            return 200, [
                {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for p, b in sorted(files.items())
            ]
        if action == "preupload" and method == "POST":
            req = json.loads(body)
            return 200, {
                "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in req["files"]]
            }
        if action == "commit" and method == "POST":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = lines[0]["value"]
            for item in lines[1:]:
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    files.pop(item["value"]["path"], None)
                else:
                    return 400, {"error": f"unsupported commit operation {item['key']}"}
            self.commits.append(
                {"repo": repo_id, "revision": revision, "summary": header.get("summary"), "ops": lines[1:]}
            )
            oid = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
            return 200, {
                "commitUrl": f"{self.endpoint}/datasets/{repo_id}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": None,
            }
        return 404, {"error": f"no route {method} {path}"}
