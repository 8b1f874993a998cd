"""Fetch transformers' common model tests for the installed transformers version (used by `make install`).

The transformers wheel ships no tests; its sdist on PyPI does. This script downloads the sdist of the
INSTALLED version (``pip download transformers==<version> --no-binary :all: --no-deps``) and extracts only
the files tests/test_transformers_common.py reads into a cache folder::

    ~/.cache/mux_plms/transformers-tests/<version>/hf_tests/{__init__,test_modeling_common,test_configuration_common}.py

(``MUX_PLMS_TRANSFORMERS_TESTS`` overrides the root). The folder appears atomically (extracted beside it,
then renamed), so an interrupted run leaves nothing half-written. The files are not part of this repository:
they stay transformers' (Apache-2.0, the sdist's LICENSE is copied beside them).

    python scripts/fetch_transformers_tests.py [--sdist PATH]   # PATH: an already downloaded sdist
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

FILES = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")
PACKAGE = "hf_tests"  # not "tests": that name is this repository's own test folder


def cache_root() -> Path:
    default = Path.home() / ".cache" / "mux_plms" / "transformers-tests"
    return Path(os.environ.get("MUX_PLMS_TRANSFORMERS_TESTS", default))


def tests_dir(version: str | None = None) -> Path:
    """The folder to put on sys.path for `version` (default: the installed transformers)."""
    return cache_root() / (version or importlib.metadata.version("transformers"))


def download_sdist(version: str, folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-binary", ":all:",
         "--no-deps", "-d", str(folder), "-q"],
        check=True,
    )  # fmt: skip
    found = sorted(folder.glob(f"transformers-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no transformers-{version}.tar.gz in {folder}")
    return found[0]


def extract(sdist: Path, version: str, staging: Path) -> None:
    package = staging / PACKAGE
    package.mkdir(parents=True)
    with tarfile.open(sdist) as archive:
        for name in (*FILES, "LICENSE"):
            member = archive.getmember(f"transformers-{version}/{name}")
            source = archive.extractfile(member)
            target = package / Path(name).name if name != "LICENSE" else staging / "LICENSE"
            target.write_bytes(source.read())
    (package / "__init__.py").write_text(f'"""transformers {version} tests/ (from its sdist), for mux-plms tests."""\n')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="an already downloaded transformers sdist of that version")
    parser.add_argument("--force", action="store_true", help="fetch again even if the cache is there")
    args = parser.parse_args(argv)
    version = importlib.metadata.version("transformers")
    dest = tests_dir(version)
    if (dest / PACKAGE / "test_modeling_common.py").exists() and not args.force:
        print(f"transformers {version} tests already in {dest}")
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{version}-") as tmp:
        tmp = Path(tmp)
        sdist = args.sdist or download_sdist(version, tmp / "download")
        staging = tmp / "staging"
        extract(sdist, version, staging)
        if dest.exists():  # --force, or another run finished first
            shutil.rmtree(dest)
        os.replace(staging, dest)  # atomic: the folder is complete or absent
    print(f"transformers {version} tests extracted to {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
