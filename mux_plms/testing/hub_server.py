"""A loopback Hugging Face Hub for tests: the HTTP endpoints `huggingface_hub` uses to create a
repository, upload files and download them, served on 127.0.0.1 only and stored under a folder.

This is a TEST server. It imitates the Hub closely enough for `huggingface_hub` and transformers, and
refuses what the Hub refuses (malformed or truncated requests, bad tokens), but it is not hardened for any
other use: never expose it beyond 127.0.0.1 (it cannot listen elsewhere) and keep nothing of value in it.

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
clients raise their usual exceptions. Writes need an ``Authorization: Bearer`` header: the server's token
when it was started with one (``--token``), else any token. Private repositories are readable only with
valid credentials (401 ``RepoNotFound`` otherwise); public ones need none. One branch, ``main``; no pull
requests, no LFS. Unknown endpoints answer 501.

Every malformed request gets a 4xx JSON answer (``{"error": ...}`` plus ``X-Error-Message``): invalid JSON
or ndjson, fields of the wrong type, invalid base64 (decoded strictly), control characters in names or
paths (they never reach a response header), a body shorter than its ``Content-Length`` (400), larger than
the limit (413, ``--max-body-bytes``) or stalled (408, ``--idle-timeout``, which also closes idle
connections). A commit is parsed and checked whole before anything is stored: no partial commit, no blob
of a refused one.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import re
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .hub_store import REPO_TYPES, FileEntry, RepoStore, StoreError, check_path

HOST = "127.0.0.1"
USER = "loopback-user"
_RESOLVE_PREFIXES = {"datasets": "dataset", "spaces": "space"}


def _split(path: str) -> list[str]:
    return [_check_text(unquote(p, errors="strict"), "path") for p in path.split("/") if p != ""]


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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


def _header_value(value) -> str:
    """A header value that cannot break the response: control characters (CR / LF) become spaces and
    anything outside ASCII is escaped."""
    text = _CONTROL.sub(" ", str(value))
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _check_text(value: str, what: str) -> str:
    """Refuse control characters (CR, LF, NUL, ...) in names, paths and revisions from a request."""
    if _CONTROL.search(value):
        raise StoreError(400, f"Invalid {what} {value!r}: control characters are not allowed")
    return value


_MISSING = object()


def _field(payload: dict, key: str, kind: type, default=_MISSING):
    """``payload[key]`` checked to be a `kind` (or None when the default is None); `StoreError` 400 otherwise.
    Without a default the field is required."""
    if key not in payload:
        if default is _MISSING:
            raise StoreError(400, f"Missing field {key!r} in the request body")
        return default
    value = payload[key]
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StoreError(400, f"Field {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value  # names and paths are checked where they are used (check_repo_id, check_path)


class _Handler(BaseHTTPRequestHandler):
    server: _LoopbackHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "mux-plms-loopback-hub/1"

    # -- plumbing -------------------------------------------------------------------------------
    def setup(self):
        self.timeout = self.server.idle_timeout  # an idle (or stalled) socket is closed after this many seconds
        super().setup()

    def log_message(self, format, *args):  # noqa: A002  (signature of the base class)
        if self.server.verbose:
            super().log_message(format, *args)

    def send_error(self, code, message=None, explain=None):
        """Errors raised by the HTTP layer itself (bad request line, header too long, unknown method) are
        JSON too, like every other answer."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"  # a malformed request line: answer with a full HTTP response
        self._error(int(code), message or explain or "Bad request")

    def _read_exact(self, length: int) -> bytes:
        data = bytearray()
        while len(data) < length:
            chunk = self.rfile.read(length - len(data))
            if not chunk:
                self.close_connection = True
                raise StoreError(
                    400,
                    f"The request body ended after {len(data)} of the {length} bytes announced: incomplete request, "
                    "nothing was stored",
                )
            data += chunk
        return bytes(data)

    def _body(self) -> bytes:
        """The whole request body, or a `StoreError`: 400 when it is malformed or shorter than announced,
        413 above the server's limit, 408 when it stops arriving."""
        limit = self.server.max_body_bytes
        encoding = self.headers.get("Transfer-Encoding", "").strip().lower()
        try:
            if encoding:
                if encoding != "chunked":
                    raise StoreError(400, f"Unsupported Transfer-Encoding {encoding!r}: expected chunked")
                return self._chunked_body(limit)
            raw = self.headers.get("Content-Length")
            if raw is None:
                return b""
            if not raw.strip().isdigit():
                raise StoreError(400, f"Invalid Content-Length {raw!r}")
            length = int(raw)
            if length > limit:
                self.close_connection = True  # the body is not read: the connection cannot be reused
                raise StoreError(413, f"The request body ({length} bytes) exceeds the limit of {limit} bytes")
            return self._read_exact(length)
        except TimeoutError:
            self.close_connection = True
            raise StoreError(
                408, f"The request body did not arrive within {self.server.idle_timeout} s: nothing was stored"
            ) from None

    def _chunked_body(self, limit: int) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                self.close_connection = True
                raise StoreError(400, "Truncated or malformed chunked body: nothing was stored")
            size_text = line.strip().split(b";")[0]
            if not _CHUNK_SIZE.fullmatch(size_text):
                self.close_connection = True
                raise StoreError(400, f"Malformed chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                while True:  # optional trailers, then the empty line
                    trailer = self.rfile.readline(65537)
                    if not trailer:
                        self.close_connection = True
                        raise StoreError(400, "Truncated chunked body: nothing was stored")
                    if trailer in (b"\r\n", b"\n"):
                        return b"".join(chunks)
            total += size
            if total > limit:
                self.close_connection = True
                raise StoreError(413, f"The request body exceeds the limit of {limit} bytes")
            chunks.append(self._read_exact(size))
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                self.close_connection = True
                raise StoreError(400, "Malformed chunked body: a chunk is not followed by CRLF")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, _header_value(value))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD" and body:
            self.wfile.write(body)
        self.server.record(getattr(self, "command", None) or "", getattr(self, "path", "") or "", status)

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        extra = {"X-Error-Message": message}
        if code:
            extra["X-Error-Code"] = code
        extra.update(headers or {})
        self._json(status, {"error": message}, extra)

    def _authorized(self) -> bool:
        """A bearer token is present, and equals the server's ``--token`` when it was started with one."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            return False
        expected = self.server.token
        return expected is None or hmac.compare_digest(header[7:].strip().encode(), expected.encode())

    def _require_token(self) -> None:
        if not self._authorized():
            needed = "the server's --token" if self.server.token is not None else "a token (any value)"
            raise StoreError(401, f"Invalid credentials in Authorization header: writes need {needed}")

    def _check_readable(self, repo_type: str, repo_id: str) -> None:
        """A private repository is visible only with valid credentials (like the Hub: 401 RepoNotFound)."""
        meta = self.server.store.repo_meta(repo_type, repo_id)
        if meta.get("private") and not self._authorized():
            raise StoreError(
                401,
                f"Repository Not Found: {repo_id} ({repo_type}). It may be private: pass a valid token.",
                "RepoNotFound",
            )

    def _json_body(self, body: bytes, what: str) -> dict:
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(400, f"The {what} body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise StoreError(400, f"The {what} body must be a JSON object, got {type(payload).__name__}")
        return payload

    def _dispatch(self):
        try:
            _check_text(self.path, "request path")
            self.url = urlsplit(self.path)
            self.query = parse_qs(self.url.query)
            body = self._body()
            handled = self._route(body)
        except StoreError as exc:
            self._error(exc.status, exc.message, exc.code, exc.headers)
            return
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            self._error(400, f"Bad request: {type(exc).__name__}: {exc}")
            return
        except TimeoutError:
            raise
        except Exception as exc:  # a bug of the test server: still an answer, never a dropped connection
            self.close_connection = True
            self._error(500, f"Internal error of the loopback hub: {type(exc).__name__}: {exc}")
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
                return self._create_repo(self._json_body(body, "create-repo"))
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(self._json_body(body, "delete-repo"))
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(self._json_body(body, "validate-yaml"))
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
        action = rest[0] if rest else None
        reads = {(None, "GET"), ("revision", "GET"), ("tree", "GET"), ("paths-info", "POST"), ("refs", "GET"),
                 ("commits", "GET")}  # fmt: skip
        if (action, method) in (("preupload", "POST"), ("commit", "POST")):
            self._require_token()
        elif (action, method) in reads:
            self._check_readable(repo_type, repo_id)
        else:
            return False
        if not rest and method == "GET":
            return self._repo_info(repo_type, repo_id, None)
        action, args = rest[0], rest[1:]
        if action == "revision" and args and method == "GET":
            return self._repo_info(repo_type, repo_id, "/".join(args))
        if action == "preupload" and method == "POST":
            return self._preupload(repo_type, repo_id, "/".join(args) or "main", self._json_body(body, "preupload"))
        if action == "commit" and method == "POST":
            return self._commit(repo_type, repo_id, "/".join(args) or "main", body)
        if action == "tree" and method == "GET":
            revision, path = (args[0], "/".join(args[1:])) if args else ("main", "")
            return self._tree(repo_type, repo_id, revision, path)
        if action == "paths-info" and method == "POST":
            form = parse_qs(body.decode("utf-8"), strict_parsing=bool(body))
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
        repo_type = _field(payload, "type", str, "model") or "model"
        repo_id = f"{_field(payload, 'organization', str, None) or USER}/{_field(payload, 'name', str)}"
        private = _field(payload, "private", bool, None)
        if private is None:
            private = _field(payload, "visibility", str, "public") == "private"
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
        repo_id = f"{_field(payload, 'organization', str, None) or USER}/{_field(payload, 'name', str)}"
        self.server.store.delete(_field(payload, "type", str, "model") or "model", repo_id)
        self._send(200)
        return True

    def _validate_yaml(self, payload: dict) -> bool:
        data, error = _front_matter(_field(payload, "content", str, ""))
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
        items = _field(payload, "files", list, [])
        answer = []
        for item in items:
            if not isinstance(item, dict):
                raise StoreError(400, f"Each entry of 'files' must be an object, got {type(item).__name__}")
            path = check_path(_field(item, "path", str))
            existing = head_files.get(path)
            answer.append(
                {
                    "path": path,
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
        """Parse and check the whole ndjson commit first (a header line, then file / deletedFile /
        deletedFolder lines, each valid JSON of the right shape, contents in strict base64): any bad line
        is a 400 and nothing is stored."""
        self._check_writable_revision(revision)
        self.server.store.repo_meta(repo_type, repo_id)
        header: dict | None = None
        additions: dict[str, bytes] = {}
        deletions: list[str] = []
        folders: list[str] = []
        seen: set[str] = set()
        for number, raw in enumerate(body.split(b"\n"), start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                raise StoreError(
                    400, f"Line {number} of the commit is not valid JSON ({exc}): nothing was stored"
                ) from None
            if not isinstance(item, dict) or set(item) != {"key", "value"} or not isinstance(item["value"], dict):
                raise StoreError(400, f"Line {number} of the commit must be an object {{'key': ..., 'value': {{...}}}}")
            key, value = item["key"], item["value"]
            if header is None and key != "header":
                raise StoreError(400, f"Line {number}: the commit must start with its header line, got {key!r}")
            if key == "header":
                if header is not None:
                    raise StoreError(400, f"Line {number}: a second header line")
                header = {
                    "summary": _field(value, "summary", str, ""),
                    "description": _field(value, "description", str, None) or "",
                    "parentCommit": _field(value, "parentCommit", str, None),
                }
                continue
            if key == "lfsFile":
                raise StoreError(
                    400,
                    "The loopback hub stores every file as a regular file and accepts no LFS "
                    "pointer (its preupload answers uploadMode=regular)",
                )
            if key not in ("file", "deletedFile", "deletedFolder"):
                raise StoreError(400, f"Line {number}: unknown commit operation {key!r}")
            path = check_path(
                _field(value, "path", str).rstrip("/") if key == "deletedFolder" else _field(value, "path", str)
            )
            if path in seen:
                raise StoreError(400, f"Line {number}: {path!r} appears twice in the commit")
            seen.add(path)
            if key == "file":
                encoding = _field(value, "encoding", str, "base64")
                if encoding != "base64":
                    raise StoreError(400, f"Unsupported file encoding {encoding!r}: expected base64")
                content = _field(value, "content", str)
                try:
                    data = base64.b64decode(content.encode("ascii"), validate=True)
                except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
                    raise StoreError(
                        400, f"Line {number}: the content of {path!r} is not valid base64 ({exc})"
                    ) from None
                if base64.b64encode(data).decode("ascii") != content:  # strict: the one canonical encoding
                    raise StoreError(
                        400, f"Line {number}: the content of {path!r} is not valid base64 (not canonically padded)"
                    )
                additions[path] = data
            elif key == "deletedFile":
                deletions.append(path)
            else:
                folders.append(path)
        if header is None or not header["summary"]:
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
            _check_text(path, "path")
            if path in files:
                answer.append(self._tree_entry(files[path]))
            elif any(name.startswith(path.rstrip("/") + "/") for name in files):
                answer.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": path})
        self._json(200, answer)
        return True

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        store = self.server.store
        self._check_readable(repo_type, repo_id)
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


DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 30.0


class _LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        port: int,
        store: RepoStore,
        verbose: bool = False,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ):
        if token is not None and (not token or _CONTROL.search(token)):
            raise ValueError("token must be a non-empty string without control characters")
        if max_body_bytes < 1 or idle_timeout <= 0:
            raise ValueError("max_body_bytes must be >= 1 and idle_timeout > 0")
        super().__init__((HOST, port), _Handler)
        self.store = store
        self.verbose = verbose
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
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
        token: when given, writes need ``Authorization: Bearer <token>`` and private repositories are
            readable only with it (default: any bearer token is accepted).
        max_body_bytes: larger request bodies are refused with 413.
        idle_timeout: seconds after which an idle or stalled connection is closed (a stalled body: 408).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        port: int = 0,
        verbose: bool = False,
        token: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ):
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="loopback-hub-") if root is None else root)
        self.store = RepoStore(self.root)
        self._port = port
        self._verbose = verbose
        self._options = {"token": token, "max_body_bytes": max_body_bytes, "idle_timeout": idle_timeout}
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
            self._server = _LoopbackHTTPServer(self._port, self.store, self._verbose, **self._options)
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
        description="A TEST server: a loopback imitation of the Hugging Face Hub on 127.0.0.1 (create repo, "
        "upload, download) for tests and offline demos. It is not the Hub, not hardened for other uses and "
        "never listens beyond 127.0.0.1: do not expose it or keep anything of value in it.",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--root", required=True, help="folder storing the repositories (created if missing)")
    parser.add_argument(
        "--token",
        default=None,
        help="require this bearer token for writes and for reading private repositories "
        "(default: any token is accepted for writes)",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="largest request body accepted (413 above)"
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT, help="seconds before an idle connection is closed"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must lie in [0, 65535], got {args.port}")
    if args.max_body_bytes < 1 or args.idle_timeout <= 0:
        parser.error("--max-body-bytes must be >= 1 and --idle-timeout > 0")
    if args.token is not None and (not args.token or _CONTROL.search(args.token)):
        parser.error("--token must be a non-empty string without control characters")
    from ..utils.runtime import restore_ctrl_c

    restore_ctrl_c()  # before the banner: whoever reads it may press Ctrl-C at once
    server = _LoopbackHTTPServer(
        args.port,
        RepoStore(args.root),
        verbose=args.verbose,
        token=args.token,
        max_body_bytes=args.max_body_bytes,
        idle_timeout=args.idle_timeout,
    )
    try:  # the banner inside: a Ctrl-C the moment it is read still ends cleanly
        print(
            f"Loopback hub serving {server.endpoint} (root {Path(args.root).resolve()}); a test server, not the Hub. "
            "Ctrl-C stops it.",
            flush=True,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
