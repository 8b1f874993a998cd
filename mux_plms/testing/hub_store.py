"""On-disk storage of the loopback test hub: repositories, commits and content-addressed blobs.

Layout under the root folder::

    <root>/<models|datasets|spaces>/<namespace>/<name>/
        repo.json               {"private": bool, "created_at": ISO date, "head": commit oid}
        commits/<oid>.json      {"oid", "parent", "message", "description", "date", "files": {path: entry}}
        blobs/<sha256>          file contents (one copy per distinct content)

A commit lists every file of the repository at that commit (path -> sha256, size, git blob oid), so
any commit of the history can be served. There is one branch, ``main``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_TYPES = ("model", "dataset", "space")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT_OID = re.compile(r"^[0-9a-f]{40}$")


class StoreError(Exception):
    """A request the store refuses; `code` is the Hub's ``X-Error-Code`` (``RepoNotFound``, ...)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit."""

    path: str
    sha256: str
    size: int
    git_oid: str


def git_blob_oid(data: bytes) -> str:
    """The git blob id of `data` (what ``git hash-object`` prints; the Hub's ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def check_repo_id(repo_id: str) -> tuple[str, str]:
    """Split ``namespace/name``; raise `StoreError` (400) on anything else."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts) or ".." in repo_id:
        raise StoreError(
            400, f"Invalid repo id {repo_id!r}: expected 'namespace/name' (letters, digits, '.', '_', '-')"
        )
    return parts[0], parts[1]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_PATH_LENGTH = 1000


def check_path(path: str) -> str:
    """A file path inside a repository: a relative path without ``..``, empty segments, backslashes or
    control characters (CR / LF would end up in response headers)."""
    if not isinstance(path, str):
        raise StoreError(400, f"Invalid file path {path!r}: expected a string")
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(400, f"Invalid file path {path!r}: expected a relative path without '..'")
    if _CONTROL.search(path) or "\\" in path or len(path) > MAX_PATH_LENGTH:
        raise StoreError(
            400,
            f"Invalid file path {path!r}: control characters and backslashes are not allowed (at most "
            f"{MAX_PATH_LENGTH} characters)",
        )
    return path


class RepoStore:
    """Thread-safe store of the loopback hub's repositories under `root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._counter = 0

    # -- repositories ---------------------------------------------------------------------------
    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        if repo_type not in REPO_TYPES:
            raise StoreError(400, f"Invalid repo type {repo_type!r}: expected one of {', '.join(REPO_TYPES)}")
        namespace, name = check_repo_id(repo_id)
        return self.root / f"{repo_type}s" / namespace / name

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (self.repo_dir(repo_type, repo_id) / "repo.json").is_file()

    def repo_meta(self, repo_type: str, repo_id: str) -> dict:
        path = self.repo_dir(repo_type, repo_id) / "repo.json"
        if not path.is_file():
            raise StoreError(404, f"Repository {repo_id} ({repo_type}) not found", "RepoNotFound")
        return json.loads(path.read_text())

    def create(self, repo_type: str, repo_id: str, private: bool = False) -> bool:
        """Create an empty repository (one initial commit without files). Returns False if it existed."""
        with self._lock:
            if self.exists(repo_type, repo_id):
                return False
            directory = self.repo_dir(repo_type, repo_id)
            oid = self._write_commit(directory, parent=None, message="initial commit", description="", files={})
            meta = {"private": bool(private), "created_at": _now(), "head": oid}
            _atomic_write(directory / "repo.json", json.dumps(meta, indent=1).encode())
            return True

    def delete(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            self.repo_meta(repo_type, repo_id)  # raises if missing
            shutil.rmtree(self.repo_dir(repo_type, repo_id))

    def list_repos(self, repo_type: str = "model") -> list[str]:
        base = self.root / f"{repo_type}s"
        return sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in base.glob("*/*/repo.json"))

    # -- commits --------------------------------------------------------------------------------
    def resolve(self, repo_type: str, repo_id: str, revision: str | None) -> str:
        """The commit oid of `revision` (``main``, ``None`` or a full commit oid of the history)."""
        meta = self.repo_meta(repo_type, repo_id)
        if revision in (None, "main", "refs/heads/main"):
            return meta["head"]
        if _COMMIT_OID.fullmatch(revision) and (self._commits_dir(repo_type, repo_id) / f"{revision}.json").is_file():
            return revision
        raise StoreError(
            404,
            f"Invalid rev id: {revision} (the loopback hub has one branch, 'main', plus its commits)",
            "RevisionNotFound",
        )

    def commit_info(self, repo_type: str, repo_id: str, oid: str) -> dict:
        return json.loads((self._commits_dir(repo_type, repo_id) / f"{oid}.json").read_text())

    def history(self, repo_type: str, repo_id: str, revision: str | None = None) -> list[dict]:
        """Commits from `revision` back to the initial one, newest first."""
        oid: str | None = self.resolve(repo_type, repo_id, revision)
        commits = []
        while oid is not None:
            info = self.commit_info(repo_type, repo_id, oid)
            commits.append(info)
            oid = info["parent"]
        return commits

    def files(self, repo_type: str, repo_id: str, revision: str | None = None) -> dict[str, FileEntry]:
        oid = self.resolve(repo_type, repo_id, revision)
        raw = self.commit_info(repo_type, repo_id, oid)["files"]
        return {path: FileEntry(path=path, **entry) for path, entry in raw.items()}

    def read(self, repo_type: str, repo_id: str, path: str, revision: str | None = None) -> bytes:
        """The content of `path` at `revision`; `StoreError` 404 ``EntryNotFound`` if absent."""
        entry = self.files(repo_type, repo_id, revision).get(path)
        if entry is None:
            raise StoreError(404, f"Entry not found: {path}", "EntryNotFound")
        return (self.repo_dir(repo_type, repo_id) / "blobs" / entry.sha256).read_bytes()

    def blob_path(self, repo_type: str, repo_id: str, entry: FileEntry) -> Path:
        return self.repo_dir(repo_type, repo_id) / "blobs" / entry.sha256

    def commit(
        self,
        repo_type: str,
        repo_id: str,
        *,
        additions: dict[str, bytes],
        deletions: list[str] = (),
        deleted_folders: list[str] = (),
        message: str,
        description: str = "",
        parent_commit: str | None = None,
    ) -> str:
        """Apply the operations on top of ``main`` and return the new commit oid."""
        for path in [*additions, *deletions, *(folder.rstrip("/") for folder in deleted_folders)]:
            check_path(path)  # every path first: a refused commit writes nothing, not even blobs
        with self._lock:
            directory = self.repo_dir(repo_type, repo_id)
            meta = self.repo_meta(repo_type, repo_id)
            head = meta["head"]
            if parent_commit is not None and parent_commit != head:
                raise StoreError(412, f"parentCommit {parent_commit} is not the head of main ({head})")
            files = dict(self.commit_info(repo_type, repo_id, head)["files"])
            for path in deletions:
                if files.pop(path, None) is None:
                    raise StoreError(404, f"Cannot delete {path}: no such file", "EntryNotFound")
            for folder in deleted_folders:
                prefix = folder.rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(prefix)}
            entries = {}
            for path, data in additions.items():
                entries[path] = {
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "git_oid": git_blob_oid(data),
                }
            # All checks passed: only now are blobs written, then the commit, then the new head.
            for path, data in additions.items():
                blob = directory / "blobs" / entries[path]["sha256"]
                if not blob.is_file():
                    _atomic_write(blob, data)
            files.update(entries)
            oid = self._write_commit(directory, parent=head, message=message, description=description, files=files)
            meta["head"] = oid
            _atomic_write(directory / "repo.json", json.dumps(meta, indent=1).encode())
            return oid

    def _commits_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.repo_dir(repo_type, repo_id) / "commits"

    def _write_commit(self, directory: Path, *, parent, message, description, files) -> str:
        self._counter += 1
        date = _now()
        seed = json.dumps([parent, message, description, files, date, self._counter, time.monotonic_ns()])
        oid = hashlib.sha1(seed.encode()).hexdigest()
        info = {
            "oid": oid,
            "parent": parent,
            "message": message,
            "description": description,
            "date": date,
            "files": dict(sorted(files.items())),
        }
        _atomic_write(directory / "commits" / f"{oid}.json", json.dumps(info, indent=1).encode())
        return oid
