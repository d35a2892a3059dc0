"""A local stand-in for the Hugging Face Hub's file API, for tests that must never touch the network.

It answers what ``huggingface_hub.hf_hub_download`` asks (``HEAD``/``GET /{repo}/resolve/{revision}/{file}``)
with the headers it reads (``X-Repo-Commit``, ``ETag``, ``Content-Length``) and the hub's error codes
(``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``). Point huggingface_hub at it with
``HF_ENDPOINT=<url>`` (read when huggingface_hub is imported) or by setting ``huggingface_hub.constants.ENDPOINT``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HubServer:
    """``add(repo, files, branch="main")`` publishes a commit; ``url`` is the endpoint; ``requests`` logs
    ``(method, path)`` of every request."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> commit -> filename -> bytes
        self.refs: dict[str, dict[str, str]] = {}  # repo -> branch -> commit
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                hub._answer(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo: str, files: dict[str, bytes] | Path, branch: str = "main") -> str:
        """Publish ``files`` (a dict, or every file in a folder) as a new commit of ``repo`` on ``branch``."""
        if isinstance(files, Path):
            files = {p.name: p.read_bytes() for p in sorted(files.iterdir()) if p.is_file()}
        commit = hashlib.sha1(repr((repo, sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items()),
                                    len(self.repos.get(repo, {})))).encode()).hexdigest()
        self.repos.setdefault(repo, {})[commit] = dict(files)
        self.refs.setdefault(repo, {})[branch] = commit
        return commit

    def downloads(self, filename: str) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and p.endswith("/" + filename))

    def _api(self, h: BaseHTTPRequestHandler, parts: list[str], body: bool) -> None:
        """``/api/models/{repo}[/revision/{rev}]`` (repo info) and ``/api/models/{repo}/tree/{rev}[/{path}]``."""
        repo = "/".join(parts[2:4])
        if repo not in self.repos:
            return self._error(h, 404, "RepoNotFound")
        rest = parts[4:]
        revision = rest[1] if len(rest) >= 2 else "main"
        commit = self.refs[repo].get(revision, revision)
        if commit not in self.repos[repo]:
            return self._error(h, 404, "RevisionNotFound")
        files = self.repos[repo][commit]
        if rest[:1] == ["tree"]:
            prefix = "/".join(rest[2:])
            entries = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                       for f, d in sorted(files.items()) if not prefix or f.startswith(prefix + "/")]
            if prefix and not entries:
                return self._error(h, 404, "EntryNotFound", commit)
            doc: object = entries
        else:
            doc = {"id": repo, "modelId": repo, "sha": commit, "siblings": [{"rfilename": f} for f in sorted(files)]}
        data = json.dumps(doc).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(h.path).path)
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._api(h, parts, body)
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(h, 404, "RepoNotFound")
        repo, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo not in self.repos:
            return self._error(h, 404, "RepoNotFound")
        commit = self.refs[repo].get(revision, revision)
        if commit not in self.repos[repo]:
            return self._error(h, 404, "RevisionNotFound")
        data = self.repos[repo][commit].get(filename)
        if data is None:
            return self._error(h, 404, "EntryNotFound", commit)
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and body:
            start = int(rng[6:].split("-")[0] or 0)
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if body:
            h.wfile.write(data[start:])

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, status: int, code: str, commit: str | None = None) -> None:
        msg = f"{code}".encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Length", str(len(msg)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(msg)
