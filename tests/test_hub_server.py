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


# ------------------------------------------------------------------------------------------------ refusals
# Real sockets on 127.0.0.1, every read bounded by a timeout.


def raw_exchange(port: int, data: bytes, shutdown_write: bool = False, timeout: float = 10.0) -> bytes:
    """Send `data` on a fresh connection and return everything the server answers until it closes the
    connection or one complete response (headers + Content-Length body) has arrived."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shutdown_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            head, sep, rest = received.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                if len(rest) >= length:
                    return received
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes, list[bytes]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.decode().lower()] = value.strip().decode()
    return status, headers, body, lines


def commit_request(
    repo: str, lines: list, token: str = "t", length: int | None = None, cut: int | None = None
) -> bytes:
    body = b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines)
    announced = len(body) if length is None else length
    if cut is not None:
        body = body[:cut]
    head = (
        f"POST /api/models/{repo}/commit/main HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/x-ndjson\r\nContent-Length: {announced}\r\n\r\n"
    )
    return head.encode() + body


HEADER = {"key": "header", "value": {"summary": "s", "description": ""}}


def file_line(path: str, data: bytes) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}}


def blobs(hub, repo: str) -> set[str]:
    folder = hub.root / "models" / repo / "blobs"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_truncated_commit_is_refused_and_nothing_is_stored(hub, api):
    api.create_repo("org/cut")
    head = hub.store.resolve("model", "org/cut", "main")
    lines = [HEADER, file_line("a.txt", b"first file"), file_line("b.txt", b"second file")]
    whole = commit_request("org/cut", lines)
    body_length = len(whole) - whole.index(b"\r\n\r\n") - 4
    first_two = len(b"\n".join(json.dumps(x).encode() for x in lines[:2])) + 1  # cut at a line boundary
    status, headers, body, _ = parse_response(
        raw_exchange(hub.port, commit_request("org/cut", lines, length=body_length, cut=first_two), shutdown_write=True)
    )
    assert status == 400 and headers["content-type"] == "application/json"
    assert "ended after" in json.loads(body)["error"] and "nothing was stored" in json.loads(body)["error"]
    assert hub.store.resolve("model", "org/cut", "main") == head and blobs(hub, "org/cut") == set()


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            [HEADER, {"key": "file", "value": {"path": "a.txt", "content": "not base64!", "encoding": "base64"}}],
            "not valid base64",
        ),
        (
            [HEADER, {"key": "file", "value": {"path": "a.txt", "content": "YWJj=", "encoding": "base64"}}],
            "not valid base64",
        ),
        ([HEADER, file_line("ok.txt", b"kept?"), b"{not json"], "Line 3 of the commit is not valid JSON"),
        ([HEADER, file_line("ok.txt", b"kept?"), b"[1, 2]"], "Line 3 of the commit must be an object"),
        ([HEADER, file_line("ok.txt", b"kept?"), file_line("bad\r\nSet-Cookie: x", b"y")], "control characters"),
        ([HEADER, file_line("ok.txt", b"kept?"), file_line("../escape", b"y")], "Invalid file path"),
        (
            [HEADER, file_line("ok.txt", b"kept?"), {"key": "file", "value": {"path": 3, "content": ""}}],
            "must be a str",
        ),
        ([file_line("ok.txt", b"kept?"), HEADER], "must start with its header line"),
        ([HEADER, file_line("ok.txt", b"kept?"), file_line("ok.txt", b"again")], "appears twice"),
        (
            [HEADER, file_line("ok.txt", b"kept?"), {"key": "deletedFile", "value": {"path": "missing.txt"}}],
            "no such file",
        ),
    ],
    ids=[
        "bad-alphabet",
        "bad-padding",
        "bad-json",
        "not-object",
        "crlf-path",
        "dotdot",
        "wrong-type",
        "no-header-first",
        "duplicate",
        "delete-missing",
    ],  # fmt: skip
)
def test_malformed_commit_lines_are_refused_before_any_blob_is_written(hub, api, lines, message):
    api.create_repo("org/bad")
    head = hub.store.resolve("model", "org/bad", "main")
    status, headers, body, _ = parse_response(raw_exchange(hub.port, commit_request("org/bad", lines)))
    assert 400 <= status < 500 and headers["content-type"] == "application/json"
    assert message in json.loads(body)["error"]
    assert hub.store.resolve("model", "org/bad", "main") == head and blobs(hub, "org/bad") == set()


def test_control_characters_never_reach_a_response_header(hub, api):
    api.create_repo("org/hdr")
    for path in (
        "/org/hdr/resolve/main/a%0d%0aSet-Cookie:%20stolen",
        "/api/models/org/hdr/tree/main/x%0aX-Injected:%201",
    ):
        status, headers, body, lines = parse_response(
            raw_exchange(hub.port, f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        )
        assert status == 400 and "control characters" in json.loads(body)["error"]
        assert not any(line.lower().startswith((b"set-cookie", b"x-injected")) for line in lines)
        assert "\r" not in headers["x-error-message"] and "\n" not in headers["x-error-message"]


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"POST /api/repos/create HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 9\r\n\r\n{not json", 400),
        (b"POST /api/repos/create HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 6\r\n\r\n[1, 2]", 400),
        (b'POST /api/repos/create HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 13\r\n\r\n{"name": 123}', 400),
        (b"POST /api/validate-yaml HTTP/1.1\r\nContent-Length: 4\r\n\r\nnull", 400),
        (
            b"POST /api/models/org/m/preupload/main HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 14\r\n\r\n"
            b'{"files": [1]}',
            400,
        ),
        (b"POST /api/repos/create HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: ab\r\n\r\n", 400),
        (
            b"POST /api/repos/create HTTP/1.1\r\nAuthorization: Bearer t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (b"GARBAGE\r\n\r\n", 400),
    ],
    ids=["not-json", "not-object", "wrong-type", "null-yaml", "bad-preupload", "bad-length", "bad-chunk", "bad-line"],
)
def test_every_malformed_request_gets_a_json_4xx(hub, api, request_bytes, status):
    api.create_repo("org/m")
    got, headers, body, _ = parse_response(raw_exchange(hub.port, request_bytes, shutdown_write=True))
    assert got == status and headers["content-type"] == "application/json" and "error" in json.loads(body)


def test_body_limit_idle_timeout_and_stalled_body(tmp_path):
    import socket
    import time

    with HubServer(max_body_bytes=1000, idle_timeout=1.0) as hub:
        big = commit_request("org/x", [HEADER, file_line("a.bin", b"x" * 2000)])
        status, _, body, _ = parse_response(raw_exchange(hub.port, big))
        assert status == 413 and "exceeds the limit of 1000 bytes" in json.loads(body)["error"]

        started = time.monotonic()  # an idle connection is closed by the server
        with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
            assert sock.recv(1024) == b""
        assert time.monotonic() - started < 8

        stalled = b'POST /api/repos/create HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 100\r\n\r\n{"na'
        status, _, body, _ = parse_response(raw_exchange(hub.port, stalled))
        assert status == 408 and "did not arrive within 1.0 s" in json.loads(body)["error"]
        assert hub.store.list_repos() == []


def test_token_is_checked_and_private_repositories_need_it(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer(token="s3cret") as hub:
        with pytest.raises(HfHubHTTPError, match="401"):
            HfApi(endpoint=hub.endpoint, token="wrong").create_repo("org/p", private=True)
        owner = HfApi(endpoint=hub.endpoint, token="s3cret")
        owner.create_repo("org/p", private=True)
        owner.upload_file(path_or_fileobj=b"secret weights", path_in_repo="w.bin", repo_id="org/p")
        owner.create_repo("org/public")
        owner.upload_file(path_or_fileobj=b"open", path_in_repo="o.txt", repo_id="org/public")
        cache = tmp_path / "cache"
        for token in (False, "wrong"):
            with pytest.raises(RepositoryNotFoundError):
                HfApi(endpoint=hub.endpoint, token=token).model_info("org/p")
            with pytest.raises(RepositoryNotFoundError):
                hf_hub_download("org/p", "w.bin", endpoint=hub.endpoint, cache_dir=cache, token=token)
        assert owner.model_info("org/p").private is True
        path = hf_hub_download("org/p", "w.bin", endpoint=hub.endpoint, cache_dir=cache, token="s3cret")
        assert Path(path).read_bytes() == b"secret weights"
        public = hf_hub_download("org/public", "o.txt", endpoint=hub.endpoint, cache_dir=cache, token=False)
        assert Path(public).read_bytes() == b"open"
        status, _, body = request(f"{hub.endpoint}/api/whoami-v2", headers={"Authorization": "Bearer wrong"})
        assert status == 401 and b"the server's --token" in body


def test_help_says_it_is_a_test_server(capsys):
    from mux_plms.testing.hub_server import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width
    assert "A TEST server" in out and "It is not the Hub" in out and "--token" in out and "--max-body-bytes" in out


def test_command_line_server_stops_on_ctrl_c_even_when_started_with_sigint_ignored(tmp_path):
    """A background job of a shell script inherits SIGINT ignored; the server restores Ctrl-C anyway."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mux_plms.testing.hub_server", "--port", "0", "--root", str(tmp_path / "root")],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert process.stdout.readline().startswith("Loopback hub serving"), process.stderr.read()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        finally:
            process.kill()
            process.stdout.close()
            process.stderr.close()
    assert process.returncode == 0
