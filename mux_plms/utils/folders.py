"""Model folders written whole, and read without leaving them.

Every model folder the package writes (pre-training stage outputs, the fine-tuned models of the examples,
converted original checkpoints) goes through :func:`atomic_model_folder`: it is written into a temporary
sibling (``.<name>.partial-<random>``), gets a completion marker (:data:`COMPLETE_MARKER`, a small JSON file
with the SHA-256 of every file) and only then is renamed into place. A process killed mid-write leaves a
hidden ``.partial`` sibling, never a half-written folder under the final name, and ``mux-plms push`` refuses
any folder without the marker (:func:`check_complete`).

:func:`contained_file` resolves a file name read from a folder's own metadata (a shard of a weight index)
and refuses anything that leaves the folder: absolute paths, ``..``, and symbolic links pointing outside.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

COMPLETE_MARKER = "mux_plms_complete.json"
MARKER_VERSION = 1


class IncompleteFolderError(ValueError):
    """A model folder is missing its completion marker, or its files do not match it."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(directory: Path) -> None:
    """Flush every file of `directory` (and the folder entries) to disk before the rename publishes them."""
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def folder_manifest(directory: str | os.PathLike) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every regular file under `directory` (the marker excluded)."""
    directory = Path(directory)
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.name == COMPLETE_MARKER and path.parent == directory:
            continue
        if path.is_file() and not path.is_symlink():
            files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    return files


def write_complete_marker(directory: str | os.PathLike, **info) -> Path:
    """Write the completion marker of `directory` (the manifest of its files plus `info`); returns its path."""
    directory = Path(directory)
    payload = {"version": MARKER_VERSION, "written_by": "mux-plms", "time": time.time(), **info}
    payload["files"] = folder_manifest(directory)
    marker = directory / COMPLETE_MARKER
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(partial, marker)
    return marker


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether `directory` carries a completion marker (its contents are not checked)."""
    return (Path(directory) / COMPLETE_MARKER).is_file()


def check_complete(directory: str | os.PathLike, verify_hashes: bool = True) -> dict:
    """Return the marker of `directory`; raise `IncompleteFolderError` when it is missing or unreadable, or
    when a file it lists is missing or differs (size, and SHA-256 when `verify_hashes`)."""
    directory = Path(directory)
    marker = directory / COMPLETE_MARKER
    if not marker.is_file():
        raise IncompleteFolderError(
            f"{directory} has no completion marker ({COMPLETE_MARKER}): it was not written whole by mux-plms "
            "(interrupted while saving, or saved with a plain save_pretrained)"
        )
    try:
        payload = json.loads(marker.read_text())
        listed = payload["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise IncompleteFolderError(f"{marker} is not a readable completion marker: {error}") from error
    for name, entry in listed.items():
        path = directory / name
        if not path.is_file():
            raise IncompleteFolderError(f"{directory}: {name}, listed in {COMPLETE_MARKER}, is missing")
        if path.stat().st_size != entry.get("size"):
            raise IncompleteFolderError(
                f"{directory}: {name} has {path.stat().st_size} bytes, but {COMPLETE_MARKER} recorded {entry.get('size')}"
            )
        if verify_hashes and sha256_of(path) != entry.get("sha256"):
            raise IncompleteFolderError(f"{directory}: {name} differs from the file {COMPLETE_MARKER} recorded")
    return payload


class AtomicFolder:
    """A model folder being written: files go into :attr:`path` (a temporary sibling of `target`);
    :meth:`commit` writes the completion marker and renames it to `target` (replacing an existing `target`
    when `overwrite`, else `FileExistsError` up front); :meth:`abort` removes it. Prefer
    :func:`atomic_model_folder`, which commits on success and aborts on an exception.

    With ``enabled=False`` (the ranks other than the main one of a distributed run) :attr:`path` is a scratch
    folder that is discarded: only the main process publishes."""

    def __init__(self, target: str | os.PathLike, *, overwrite: bool = True, enabled: bool = True, **marker_info):
        self.target = Path(target)
        self.enabled = enabled
        self.marker_info = marker_info
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if enabled:
            if self.target.exists() and not overwrite:
                raise FileExistsError(f"{self.target} already exists")
            for stale in self.target.parent.glob(f".{self.target.name}.partial-*"):  # a writer killed earlier
                shutil.rmtree(stale, ignore_errors=True)
            prefix = f".{self.target.name}.partial-"
        else:
            prefix = f".{self.target.name}.rank-"
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.target.parent))

    def commit(self) -> Path:
        """Publish the folder under its final name (main process) or discard the scratch copy (others)."""
        if not self.enabled:
            self.abort()
            return self.target
        write_complete_marker(self.path, **self.marker_info)
        _fsync_tree(self.path)
        target = self.target
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            # Move the old folder aside first, so that `target` is never a mix of both.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(self.path, target)
            shutil.rmtree(old, ignore_errors=True)
            return target
        os.replace(self.path, target)
        return target

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def atomic_model_folder(
    target: str | os.PathLike, *, overwrite: bool = True, enabled: bool = True, **marker_info
) -> Iterator[Path]:
    """Write a model folder whole: yields a temporary sibling of `target` to write into; on success it gets
    the completion marker and is renamed to `target` (an existing `target` is replaced when `overwrite`,
    otherwise `FileExistsError`). On an exception the temporary folder is removed and `target` is untouched.
    With ``enabled=False`` (ranks other than the main one) it yields a scratch folder that is discarded."""
    folder = AtomicFolder(target, overwrite=overwrite, enabled=enabled, **marker_info)
    try:
        yield folder.path
    except BaseException:
        folder.abort()
        raise
    folder.commit()


def staging_folder(target: str | os.PathLike) -> Path:
    """The temporary sibling into which :func:`publish_staged_files` moves files into `target`: a fixed name
    (``.<name>.staging``), so that every rank of a distributed run agrees on it."""
    target = Path(target)
    return target.parent / f".{target.name}.staging"


def publish_staged_files(staging: str | os.PathLike, target: str | os.PathLike, **marker_info) -> Path:
    """Move the files written into `staging` into the existing folder `target` (which also holds other
    things, e.g. a Trainer output folder with its checkpoints and results), then write the completion
    marker over them. `target`'s old marker is removed first, so that while files are being moved the folder
    counts as incomplete; each file is replaced atomically (``os.replace``, same file system) after being
    flushed to disk. Returns the marker's path."""
    staging, target = Path(staging), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    (target / COMPLETE_MARKER).unlink(missing_ok=True)
    _fsync_tree(staging)
    moved = folder_manifest(staging)
    for entry in sorted(staging.iterdir()):
        destination = target / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if destination.exists():
                shutil.rmtree(destination)
            os.replace(entry, destination)
        else:
            os.replace(entry, destination)
    shutil.rmtree(staging, ignore_errors=True)
    payload = {"version": MARKER_VERSION, "written_by": "mux-plms", "time": time.time(), **marker_info}
    payload["files"] = {name: moved[name] for name in sorted(moved)}
    marker = target / COMPLETE_MARKER
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, marker)
    return marker


def contained_file(folder: str | os.PathLike, name: str, what: str = "file") -> Path:
    """``folder / name`` when it is a file name inside `folder`; raise `ValueError` for an absolute path, a
    ``..`` step, or a symbolic link that leads outside `folder` (e.g. a shard listed in a weight index)."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name:
        raise ValueError(f"{what} {name!r} of {folder} is not a relative file name inside the folder: refused")
    parts = Path(name).parts
    if any(part in ("..", "") for part in parts):
        raise ValueError(f"{what} {name!r} of {folder} points outside the folder ('..'): refused")
    path = folder / name
    root = folder.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"{what} {name!r} of {folder} resolves to {resolved}, outside the folder: refused")
    return path


__all__ = [
    "AtomicFolder",
    "COMPLETE_MARKER",
    "IncompleteFolderError",
    "atomic_model_folder",
    "check_complete",
    "contained_file",
    "folder_manifest",
    "is_complete",
    "publish_staged_files",
    "staging_folder",
    "write_complete_marker",
]
