"""A loopback Hugging Face Hub for tests: the HTTP endpoints `huggingface_hub` uses to create a
repository, upload files and download them, served on 127.0.0.1 only and stored under a folder.

Run it::

    python -m mux_plms.testing.hub_server --port 8765 --root /tmp/hub
    HF_ENDPOINT=http://127.0.0.1:8765 HF_TOKEN=anything python -c "model.push_to_hub('org/name')"

or from Python with :class:`HubServer` (a free port, a thread, a temporary root by default).

Implemented (the subset `huggingface_hub` 1.x/2.x and transformers 5.x call for push and download):

- ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``GET /api/whoami-v2``, ``POST /api/validate-yaml``;
- ``GET /api/{type}s/{repo}[/revision/{rev}]`` (repo info: ``model_info``, ``repo_info``, ``snapshot_download``);
- ``POST /api/{type}s/{repo}/preupload/{rev}``: every file is answered ``uploadMode: regular``, so clients
  send contents inline in the commit (no LFS or Xet transfer is ever started);
- ``POST /api/{type}s/{repo}/commit/{rev}`` (ndjson: header, file, deletedFile, deletedFolder);
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]``, ``POST .../paths-info/{rev}``, ``GET .../refs``,
  ``GET .../commits/{rev}``;
- ``GET``/``HEAD /[datasets/|spaces/]{repo}/resolve/{rev}/{path}`` with ``ETag``, ``X-Repo-Commit``,
  ``Content-Length`` and ``Range`` support (what ``hf_hub_download`` needs).

Errors carry the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so
clients raise their usual exceptions. Writes need an ``Authorization`` header (any token is accepted);
reads do not. One branch, ``main``; no pull requests, no LFS. Anything else answers 501.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .hub_store import REPO_TYPES, FileEntry, RepoStore, StoreError

HOST = "127.0.0.1"
USER = "loopback-user"
_RESOLVE_PREFIXES = {"datasets": "dataset", "spaces": "space"}


def _split(path: str) -> list[str]:
    return [unquote(p) for p in path.split("/") if p != ""]


def _front_matter(content: str) -> tuple[dict | None, str | None]:
    """The YAML metadata block of a README: (mapping or None, error message or None)."""
    import yaml

    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|$)", content, flags=re.DOTALL)
    if match is None:
        return None, None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return None, f"Invalid YAML in the metadata block: {exc}"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, f"The metadata block must be a YAML mapping, got {type(data).__name__}"
    return data, None


class _Handler(BaseHTTPRequestHandler):
    server: _LoopbackHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "mux-plms-loopback-hub/1"

    # -- plumbing -------------------------------------------------------------------------------
    def log_message(self, format, *args):  # noqa: A002  (signature of the base class)
        if self.server.verbose:
            super().log_message(format, *args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.server.record(self.command, self.path, status)

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        extra = {"X-Error-Message": message.replace("\n", " ")}
        if code:
            extra["X-Error-Code"] = code
        extra.update(headers or {})
        self._json(status, {"error": message}, extra)

    def _require_token(self) -> None:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            raise StoreError(401, "Invalid credentials in Authorization header: writes need a token (any value)")

    def _dispatch(self):
        self.url = urlsplit(self.path)
        self.query = parse_qs(self.url.query)
        body = self._body() if self.command in ("POST", "PUT", "DELETE") else b""
        try:
            handled = self._route(body)
        except StoreError as exc:
            self._error(exc.status, exc.message, exc.code, exc.headers)
            return
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            self._error(400, f"Bad request: {exc}")
            return
        if not handled:
            self._error(501, f"The loopback hub does not implement {self.command} {self.url.path}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- routing --------------------------------------------------------------------------------
    def _route(self, body: bytes) -> bool:
        parts = _split(self.url.path)
        method = self.command
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(json.loads(body or b"{}"))
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(json.loads(body or b"{}"))
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(json.loads(body or b"{}"))
            if len(rest) >= 3 and rest[0].endswith("s") and rest[0][:-1] in REPO_TYPES:
                return self._repo_api(rest[0][:-1], f"{rest[1]}/{rest[2]}", rest[3:], body)
            return False
        if method in ("GET", "HEAD"):
            repo_type = "model"
            if parts[:1] and parts[0] in _RESOLVE_PREFIXES:
                repo_type, parts = _RESOLVE_PREFIXES[parts[0]], parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        return False

    def _repo_api(self, repo_type: str, repo_id: str, rest: list[str], body: bytes) -> bool:
        store, method = self.server.store, self.command
        if not rest and method == "GET":
            return self._repo_info(repo_type, repo_id, None)
        action, args = rest[0], rest[1:]
        if action == "revision" and args and method == "GET":
            return self._repo_info(repo_type, repo_id, "/".join(args))
        if action == "preupload" and method == "POST":
            self._require_token()
            return self._preupload(repo_type, repo_id, "/".join(args) or "main", json.loads(body))
        if action == "commit" and method == "POST":
            self._require_token()
            return self._commit(repo_type, repo_id, "/".join(args) or "main", body)
        if action == "tree" and method == "GET":
            revision, path = (args[0], "/".join(args[1:])) if args else ("main", "")
            return self._tree(repo_type, repo_id, revision, path)
        if action == "paths-info" and method == "POST":
            form = parse_qs(body.decode())
            return self._paths_info(repo_type, repo_id, "/".join(args) or "main", form.get("paths", []))
        if action == "refs" and method == "GET":
            head = store.resolve(repo_type, repo_id, "main")
            branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": head}
            self._json(200, {"branches": [branch], "tags": [], "converts": [], "pullRequests": []})
            return True
        if action == "commits" and method == "GET":
            commits = store.history(repo_type, repo_id, "/".join(args) or "main")
            self._json(
                200,
                [
                    {
                        "id": c["oid"],
                        "title": c["message"],
                        "message": c["description"],
                        "authors": [{"user": USER}],
                        "date": c["date"],
                    }
                    for c in commits
                ],
            )
            return True
        return False

    # -- endpoints ------------------------------------------------------------------------------
    def _whoami(self) -> bool:
        self._require_token()
        self._json(
            200,
            {
                "type": "user",
                "name": USER,
                "fullname": "Loopback user",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
            },
        )
        return True

    def _create_repo(self, payload: dict) -> bool:
        self._require_token()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        private = payload.get("private", payload.get("visibility") == "private")
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.server.endpoint}/{prefix}{repo_id}"
        if not self.server.store.create(repo_type, repo_id, private=bool(private)):
            self._json(
                409,
                {"error": "You already created this repo", "url": url},
                {"X-Error-Message": "You already created this repo"},
            )
            return True
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})
        return True

    def _delete_repo(self, payload: dict) -> bool:
        self._require_token()
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        self.server.store.delete(payload.get("type") or "model", repo_id)
        self._send(200)
        return True

    def _validate_yaml(self, payload: dict) -> bool:
        data, error = _front_matter(payload.get("content", ""))
        if error is None and data is not None and (payload.get("repoType") or "model") == "model":
            from huggingface_hub import ModelCardData

            try:
                ModelCardData(**data)  # parses model-index; raises on malformed eval results
            except (ValueError, TypeError, KeyError) as exc:
                error = f"Invalid model card metadata: {exc}"
        if error is not None:
            self._json(400, {"errors": [{"message": error}], "warnings": []})
            return True
        warnings = [] if data else [{"message": "empty or missing yaml metadata in repo card"}]
        self._json(200, {"errors": [], "warnings": warnings})
        return True

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> bool:
        store = self.server.store
        meta = store.repo_meta(repo_type, repo_id)
        oid = store.resolve(repo_type, repo_id, revision)
        commit = store.commit_info(repo_type, repo_id, oid)
        files = store.files(repo_type, repo_id, oid)
        info = {
            "_id": oid[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": oid,
            "lastModified": commit["date"],
            "createdAt": meta["created_at"],
            "private": meta["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": e.path, "size": e.size, "blobId": e.git_oid} for e in files.values()],
        }
        if "README.md" in files:
            card, _ = _front_matter(store.read(repo_type, repo_id, "README.md", oid).decode("utf-8", "replace"))
            if card:
                info["cardData"] = card
                tags = card.get("tags") or []
                info["tags"] = list(tags) if isinstance(tags, list) else [str(tags)]
                for key in ("library_name", "pipeline_tag"):
                    if card.get(key):
                        info[key] = card[key]
                if card.get("model-index"):
                    info["model-index"] = card["model-index"]
        if repo_type == "model":
            info["modelId"] = repo_id
            if "config.json" in files:
                try:
                    config = json.loads(store.read(repo_type, repo_id, "config.json", oid))
                    info["config"] = {k: config[k] for k in ("architectures", "model_type", "auto_map") if k in config}
                except json.JSONDecodeError:
                    pass
        self._json(200, info)
        return True

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> bool:
        self._check_writable_revision(revision)
        head_files = self.server.store.files(repo_type, repo_id, "main")
        answer = []
        for item in payload.get("files", []):
            existing = head_files.get(item["path"])
            answer.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": existing.git_oid if existing else None,
                }
            )
        self._json(200, {"files": answer, "commitOid": self.server.store.resolve(repo_type, repo_id, "main")})
        return True

    def _check_writable_revision(self, revision: str) -> None:
        if "create_pr" in self.query and self.query["create_pr"] != ["0"]:
            raise StoreError(400, "The loopback hub does not support pull requests (create_pr)")
        if unquote(revision) not in ("main", "refs/heads/main"):
            raise StoreError(
                404, f"Invalid rev id: {revision} (the loopback hub only commits to 'main')", "RevisionNotFound"
            )

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> bool:
        self._check_writable_revision(revision)
        self.server.store.repo_meta(repo_type, repo_id)
        header: dict = {}
        additions: dict[str, bytes] = {}
        deletions: list[str] = []
        folders: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise StoreError(400, f"Unsupported file encoding {value.get('encoding')!r}: expected base64")
                additions[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                deletions.append(value["path"])
            elif key == "deletedFolder":
                folders.append(value["path"])
            elif key == "lfsFile":
                raise StoreError(
                    400,
                    "The loopback hub stores every file as a regular file and accepts no LFS "
                    "pointer (its preupload answers uploadMode=regular)",
                )
            else:
                raise StoreError(400, f"Unknown commit operation {key!r}")
        if not header.get("summary"):
            raise StoreError(400, "The commit header needs a summary (commit message)")
        oid = self.server.store.commit(
            repo_type,
            repo_id,
            additions=additions,
            deletions=deletions,
            deleted_folders=folders,
            message=header["summary"],
            description=header.get("description", ""),
            parent_commit=header.get("parentCommit"),
        )
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.server.endpoint}/{prefix}{repo_id}/commit/{oid}",
                "pullRequestUrl": None,
            },
        )
        return True

    @staticmethod
    def _tree_entry(entry: FileEntry) -> dict:
        return {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": entry.path}

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        files = self.server.store.files(repo_type, repo_id, revision)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path.rstrip('/')}/" if path else ""
        if path and path in files:
            raise StoreError(400, f"{path} is a file, not a folder")
        entries, folders = [], set()
        for name, entry in files.items():
            if not name.startswith(prefix):
                continue
            relative = name[len(prefix) :]
            if recursive or "/" not in relative:
                entries.append(self._tree_entry(entry))
            parts = relative.split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:depth]))
        if path and not entries and not folders:
            raise StoreError(404, f"Entry not found: {path}", "EntryNotFound")
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        self._json(200, entries)
        return True

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, paths: list[str]) -> bool:
        files = self.server.store.files(repo_type, repo_id, revision)
        answer = []
        for path in paths:
            if path in files:
                answer.append(self._tree_entry(files[path]))
            elif any(name.startswith(path.rstrip("/") + "/") for name in files):
                answer.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": path})
        self._json(200, answer)
        return True

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        store = self.server.store
        oid = store.resolve(repo_type, repo_id, revision)
        entry = store.files(repo_type, repo_id, oid).get(path)
        if entry is None:
            raise StoreError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": oid})
        headers = {
            "ETag": f'"{entry.git_oid}"',
            "X-Repo-Commit": oid,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{Path(path).name}"',
        }
        data = b"" if self.command == "HEAD" else store.blob_path(repo_type, repo_id, entry).read_bytes()
        match = re.match(r"^bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if match and self.command == "GET":
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else entry.size - 1
            if start >= entry.size:
                self._send(416, b"", {"Content-Range": f"bytes */{entry.size}", **headers})
                return True
            end = min(end, entry.size - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
            self._send(206, data[start : end + 1], headers, content_type="application/octet-stream")
            return True
        if self.command == "HEAD":
            # Same headers as GET, with the real size, and no body.
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(entry.size))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.server.record(self.command, self.path, 200)
            return True
        self._send(200, data, headers, content_type="application/octet-stream")
        return True


class _LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, store: RepoStore, verbose: bool = False):
        super().__init__((HOST, port), _Handler)
        self.store = store
        self.verbose = verbose
        self.requests: list[tuple[str, str, int]] = []
        self._log_lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def record(self, method: str, path: str, status: int) -> None:
        with self._log_lock:
            self.requests.append((method, path, status))


class HubServer:
    """The loopback hub in a background thread, for tests.

    Example::

        with HubServer() as hub:            # free port on 127.0.0.1, temporary root
            api = HfApi(endpoint=hub.endpoint, token="anything")
            ...
            hub.store.read("model", "org/name", "config.json")

    Args:
        root: folder holding the repositories (default: a temporary folder removed on `stop`).
        port: TCP port on 127.0.0.1 (default 0: a free one).
        verbose: log every request to stderr.
    """

    def __init__(self, root: str | Path | None = None, port: int = 0, verbose: bool = False):
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="loopback-hub-") if root is None else root)
        self.store = RepoStore(self.root)
        self._port = port
        self._verbose = verbose
        self._server: _LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``: the value for ``HF_ENDPOINT`` or ``HfApi(endpoint=...)``."""
        if self._server is None:
            raise RuntimeError("HubServer is not running: call start() or use it as a context manager")
        return self._server.endpoint

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """Every request served so far: (method, path, status)."""
        return list(self._server.requests) if self._server is not None else []

    def start(self) -> HubServer:
        if self._server is None:
            self._server = _LoopbackHTTPServer(self._port, self.store, self._verbose)
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-hub", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = self._thread = None
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mux_plms.testing.hub_server",
        description="Serve a loopback Hugging Face Hub on 127.0.0.1 (create repo, upload, download) for tests.",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--root", required=True, help="folder storing the repositories (created if missing)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must lie in [0, 65535], got {args.port}")
    server = _LoopbackHTTPServer(args.port, RepoStore(args.root), verbose=args.verbose)
    print(f"Loopback hub serving {server.endpoint} (root {Path(args.root).resolve()}); Ctrl-C stops it.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
