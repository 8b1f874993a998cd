"""The loopback test hub: the endpoints huggingface_hub uses, its errors, its storage, its command line."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mux_plms.testing import HubServer
from mux_plms.testing.hub_store import git_blob_oid

PAYLOAD = bytes(range(256)) * 400  # 100 KiB of binary data, the size of a tiny safetensors file


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def api(hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return HfApi(endpoint=hub.endpoint, token="any-token")


def request(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_upload_folder_then_download_regular_files_only(hub, api, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(PAYLOAD)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "notes.txt").write_text("hello")

    assert api.create_repo("org/repo").repo_id == "org/repo"
    assert api.create_repo("org/repo", exist_ok=True).repo_id == "org/repo"
    with pytest.raises(HfHubHTTPError, match="409"):
        api.create_repo("org/repo")
    commit = api.upload_folder(folder_path=folder, repo_id="org/repo", commit_message="add files")

    # Uploaded as regular files: a preupload and one commit, never an LFS batch or a Xet transfer.
    paths = [path for _, path, _ in hub.requests]
    assert "/api/models/org/repo/preupload/main" in paths and "/api/models/org/repo/commit/main" in paths
    assert not any("lfs" in p or "xet" in p for p in paths)
    assert hub.store.read("model", "org/repo", "model.safetensors") == PAYLOAD
    blobs = list((hub.root / "models" / "org" / "repo" / "blobs").iterdir())
    assert len(blobs) == 3

    info = api.model_info("org/repo")
    assert info.sha == commit.oid
    assert sorted(s.rfilename for s in info.siblings) == ["config.json", "model.safetensors", "sub/notes.txt"]
    assert sorted(api.list_repo_files("org/repo")) == ["config.json", "model.safetensors", "sub/notes.txt"]

    path = hf_hub_download("org/repo", "model.safetensors", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == PAYLOAD
    assert commit.oid in path  # cached under the commit the server reported (X-Repo-Commit)
    nested = hf_hub_download("org/repo", "sub/notes.txt", endpoint=hub.endpoint, cache_dir=tmp_path / "cache")
    assert Path(nested).read_text() == "hello"

    # HEAD metadata: what hf_hub_download needs.
    status, headers, body = request(f"{hub.endpoint}/org/repo/resolve/main/model.safetensors", method="HEAD")
    assert status == 200 and body == b""
    assert headers["ETag"] == f'"{git_blob_oid(PAYLOAD)}"'
    assert headers["X-Repo-Commit"] == commit.oid
    assert int(headers["Content-Length"]) == len(PAYLOAD)
    # Range requests (resumed downloads).
    status, headers, body = request(
        f"{hub.endpoint}/org/repo/resolve/main/model.safetensors", headers={"Range": "bytes=100-"}
    )
    assert status == 206 and body == PAYLOAD[100:]
    assert headers["Content-Range"] == f"bytes 100-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"


def test_history_revisions_and_deletions(hub, api, tmp_path):
    api.create_repo("org/hist")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="a.txt", repo_id="org/hist").oid
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="a.txt", repo_id="org/hist").oid
    assert first != second
    old = hf_hub_download("org/hist", "a.txt", revision=first, endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    new = hf_hub_download("org/hist", "a.txt", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(old).read_bytes() == b"v1" and Path(new).read_bytes() == b"v2"
    assert [c.title for c in api.list_repo_commits("org/hist")][:2] == ["Upload a.txt with huggingface_hub"] * 2
    api.delete_file("a.txt", repo_id="org/hist")
    assert api.list_repo_files("org/hist") == []
    assert hub.store.read("model", "org/hist", "a.txt", revision=second) == b"v2"  # history kept


def test_errors_use_hub_error_codes(hub, api, tmp_path):
    api.create_repo("org/err")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/err")
    cache = tmp_path / "cache"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "x.txt", endpoint=hub.endpoint, cache_dir=cache)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("org/err", "missing.txt", endpoint=hub.endpoint, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/err", "x.txt", revision="dev", endpoint=hub.endpoint, cache_dir=cache)
    assert api.file_exists("org/err", "x.txt") and not api.file_exists("org/err", "missing.txt")

    # Writes need a token (any value); LFS pointers and pull requests are refused with a clear message.
    status, _, body = request(f"{hub.endpoint}/api/repos/create", "POST", b'{"name": "n", "organization": "o"}')
    assert status == 401 and b"writes need a token" in body
    lfs = json.dumps({"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64}}).encode()
    header = json.dumps({"key": "header", "value": {"summary": "s"}}).encode()
    status, _, body = request(
        f"{hub.endpoint}/api/models/org/err/commit/main", "POST", header + b"\n" + lfs, {"Authorization": "Bearer t"}
    )
    assert status == 400 and b"accepts no LFS" in body
    with pytest.raises(HfHubHTTPError, match="pull requests"):
        api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id="org/err", create_pr=True)
    status, _, body = request(f"{hub.endpoint}/api/spaces/org/err/unknown-endpoint")
    assert status == 501 and b"does not implement" in body


def test_validate_yaml(hub):
    def validate(content: str):
        body = json.dumps({"content": content, "repoType": "model"}).encode()
        status, _, answer = request(f"{hub.endpoint}/api/validate-yaml", "POST", body)
        return status, json.loads(answer)

    assert validate("---\nlicense: mit\ntags:\n- a\n---\n# Title\n") == (200, {"errors": [], "warnings": []})
    status, answer = validate("# no metadata\n")
    assert status == 200 and answer["warnings"][0]["message"] == "empty or missing yaml metadata in repo card"
    status, answer = validate("---\nlicense: [unclosed\n---\n")
    assert status == 400 and "Invalid YAML" in answer["errors"][0]["message"]
    status, answer = validate("---\nmodel-index:\n- name: m\n  results:\n  - task: {}\n---\n")
    assert status == 400 and "Invalid model card metadata" in answer["errors"][0]["message"]


def test_commit_payload_with_inline_base64_is_stored_under_root(hub, api):
    api.create_repo("org/raw")
    lines = [
        {"key": "header", "value": {"summary": "raw commit", "description": "d"}},
        {
            "key": "file",
            "value": {"path": "dir/f.txt", "content": base64.b64encode(b"raw").decode(), "encoding": "base64"},
        },
    ]
    status, _, body = request(
        f"{hub.endpoint}/api/models/org/raw/commit/main",
        "POST",
        b"\n".join(json.dumps(x).encode() for x in lines),
        {"Authorization": "Bearer t"},
    )
    answer = json.loads(body)
    assert status == 200 and answer["success"] is True and len(answer["commitOid"]) == 40
    commit = json.loads((hub.root / "models" / "org" / "raw" / "commits" / f"{answer['commitOid']}.json").read_text())
    assert commit["message"] == "raw commit" and commit["files"]["dir/f.txt"]["size"] == 3
    tree = {e.path: type(e).__name__ for e in api.list_repo_tree("org/raw", recursive=True)}
    assert tree == {"dir": "RepoFolder", "dir/f.txt": "RepoFile"}


def test_command_line_server(tmp_path):
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mux_plms.testing.hub_server", "--port", "0", "--root", str(root)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        assert banner.startswith("Loopback hub serving http://127.0.0.1:"), banner + process.stderr.read()
        endpoint = banner.split()[3]
        status, _, body = request(
            f"{endpoint}/api/repos/create",
            "POST",
            b'{"name": "cli", "organization": "org"}',
            {"Authorization": "Bearer t"},
        )
        assert status == 200 and json.loads(body)["url"] == f"{endpoint}/org/cli"
        assert (root / "models" / "org" / "cli" / "repo.json").is_file()
        status, headers, _ = request(f"{endpoint}/org/cli/resolve/main/missing.txt", "HEAD")
        assert status == 404 and headers["X-Error-Code"] == "EntryNotFound"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)  # generous: a loaded 2-core CI machine once needed more than 20 s
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == 0


def test_command_line_rejects_bad_port(capsys):
    from mux_plms.testing.hub_server import main

    with pytest.raises(SystemExit):
        main(["--port", "70000", "--root", "/tmp/unused-root"])
    assert "--port must lie in [0, 65535]" in capsys.readouterr().err
