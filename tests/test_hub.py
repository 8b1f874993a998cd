"""Publishing to a loopback Hub: `model.push_to_hub`, `mux_plms.hub.push_to_hub`, the `push` CLI, and
loading the pushed repository by id with remote code in a process that cannot import mux_plms."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, run_without_mux_plms, tiny_config
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import OfflineModeIsEnabled

from mux_plms import MuxBertForSequenceClassification
from mux_plms.hub import PushError, TrainingRecord, TrainingStage, push_to_hub
from mux_plms.hub.card import GENERATED_MARKER
from mux_plms.testing import HubServer

REMOTE_CODE_FILES = {
    "configuration_mux_bert.py",
    "modeling_mux_bert.py",
    "modeling_mux_utils.py",
    "modeling_outputs.py",
    "multiplexing.py",
    "demultiplexing.py",
    "heads.py",
}
FULL_AUTO_MAP = {
    "AutoConfig",
    "AutoModel",
    "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
}


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def online(monkeypatch):
    """The test session runs with HF_HUB_OFFLINE=1 (conftest); lift it for requests to the loopback hub."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def save_tiny(directory: Path, **overrides) -> tuple[MuxBertForSequenceClassification, Path]:
    torch.manual_seed(0)
    model = MuxBertForSequenceClassification(tiny_config(num_labels=3, **overrides)).eval()
    model.save_pretrained(directory)
    return model, directory


def snapshot(directory: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime) for p in directory.rglob("*")}


def hub_env(hub: HubServer, home: Path) -> dict[str, str]:
    """Environment of a subprocess talking to the loopback hub only: any other host goes to a closed
    proxy port and fails."""
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": "any-token",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1",
    }


# ---------------------------------------------------------------------------------------------
# Acceptance: model.push_to_hub, then from_pretrained(repo_id, trust_remote_code=True) without mux_plms
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_model_push_to_hub_then_load_by_repo_id_without_mux_plms(hub, tmp_path):
    model, model_dir = save_tiny(tmp_path / "model")
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 120, (5, 12), generator=generator)  # 5 rows: padded internally to 6 at N=2
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    inputs = {"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist()}
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))

    # 1. transformers' own push_to_hub on our model, in a process configured like a user's (HF_ENDPOINT).
    push_code = f"""
        import mux_plms
        from mux_plms import MuxBertForSequenceClassification
        model = MuxBertForSequenceClassification.from_pretrained({str(model_dir)!r})
        info = model.push_to_hub("org/mux-bert-n2")
        print("COMMIT", info.oid)
    """
    env = {**os.environ, **hub_env(hub, tmp_path / "home-push")}
    pushed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(push_code)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    head = hub.store.resolve("model", "org/mux-bert-n2", "main")
    assert f"COMMIT {head}" in pushed.stdout

    # A complete repo: safetensors weights, full auto_map, remote code, the generated card.
    files = hub.store.files("model", "org/mux-bert-n2")
    assert {"model.safetensors", "config.json", "README.md"} | REMOTE_CODE_FILES <= set(files)
    config = json.loads(hub.store.read("model", "org/mux-bert-n2", "config.json"))
    assert set(config["auto_map"]) == FULL_AUTO_MAP
    card = ModelCard(hub.store.read("model", "org/mux-bert-n2", "README.md").decode())
    assert GENERATED_MARKER in card.text
    assert {"data-multiplexing", "mux-plms"} <= set(card.data.tags)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert 'from_pretrained("org/mux-bert-n2", trust_remote_code=True)' in card.text

    # 2. A fresh process that cannot import mux_plms loads the repo by id (remote code) from the hub.
    load_code = f"""
        import json, sys, torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained("org/mux-bert-n2", trust_remote_code=True).eval()
        inputs = {{k: torch.tensor(v) for k, v in json.loads(open({str(tmp_path / "inputs.json")!r}).read()).items()}}
        with torch.no_grad():
            logits = model(**inputs).logits
        assert "mux_plms" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
        print("MODULE", type(model).__module__)
        print("LOGITS", json.dumps(logits.tolist()))
    """
    result = run_without_mux_plms(load_code, cwd=tmp_path, env=hub_env(hub, tmp_path / "home-load"))
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("MODULE", "LOGITS")))
    assert lines["MODULE"].startswith("transformers_modules.")
    assert torch.allclose(torch.tensor(json.loads(lines["LOGITS"])), expected, atol=1e-5)
    # Everything went through the loopback hub: the upload and then the download of every file.
    paths = [path for _, path, _ in hub.requests]
    assert any(p.startswith("/api/models/org/mux-bert-n2/commit/") for p in paths)
    assert any(p.endswith("/model.safetensors") and method == "GET" for method, p, _ in hub.requests)


# ---------------------------------------------------------------------------------------------
# mux_plms.hub.push_to_hub (folder publisher)
# ---------------------------------------------------------------------------------------------
def test_push_folder_uploads_card_record_and_skips_pickles(hub, online, tmp_path):
    _, model_dir = save_tiny(tmp_path / "model")
    TrainingRecord(stages=[TrainingStage("finetune", 12, "polarity", {"accuracy": 0.5})]).save(model_dir)
    (model_dir / "training_args.bin").write_bytes(b"pickle")
    (model_dir / "checkpoint-10").mkdir()
    (model_dir / "README.md").write_text("hand-written, stale")
    before = snapshot(model_dir)

    info = push_to_hub(
        model_dir, "org/tiny", token="t", endpoint=hub.endpoint, license="apache-2.0", tags=["sentiment"]
    )

    assert snapshot(model_dir) == before  # nothing written locally
    files = hub.store.files("model", "org/tiny")
    assert info.oid == hub.store.resolve("model", "org/tiny", "main")
    assert "training_record.json" in files and "model.safetensors" in files
    assert "training_args.bin" not in files and not any(p.startswith("checkpoint-10") for p in files)
    readme = hub.store.read("model", "org/tiny", "README.md").decode()
    assert GENERATED_MARKER in readme and "hand-written" not in readme
    assert "| 1 | `finetune` (stage 3, task fine-tuning)" in readme
    info_api = HfApi(endpoint=hub.endpoint).model_info("org/tiny")
    assert info_api.card_data.license == "apache-2.0"
    assert {"sentiment", "data-multiplexing", "mux-plms", "mux-n2"} <= set(info_api.card_data.tags)
    assert info_api.pipeline_tag == "text-classification"
    # Byte-identical files: the uploaded weights are the local ones.
    assert hub.store.read("model", "org/tiny", "model.safetensors") == (model_dir / "model.safetensors").read_bytes()

    # Pushing the same folder again changes nothing (no new commit).
    commits = len(hub.store.history("model", "org/tiny"))
    push_to_hub(model_dir, "org/tiny", token="t", endpoint=hub.endpoint, license="apache-2.0", tags=["sentiment"])
    assert len(hub.store.history("model", "org/tiny")) == commits


def test_push_folder_completes_missing_remote_code(hub, online, tmp_path):
    _, model_dir = save_tiny(
        tmp_path / "model", num_instances=3, muxing_variant="gaussian_hadamard", demuxing_variant="rsa"
    )
    config = json.loads((model_dir / "config.json").read_text())
    del config["auto_map"]
    (model_dir / "config.json").write_text(json.dumps(config))
    for name in REMOTE_CODE_FILES:
        (model_dir / name).unlink()

    push_to_hub(model_dir, "org/no-code", token="t", endpoint=hub.endpoint)

    files = hub.store.files("model", "org/no-code")
    assert REMOTE_CODE_FILES <= set(files)
    pushed = json.loads(hub.store.read("model", "org/no-code", "config.json"))
    assert set(pushed["auto_map"]) == FULL_AUTO_MAP
    assert pushed["num_instances"] == 3 and pushed["muxing_variant"] == "gaussian_hadamard"
    assert "auto_map" not in json.loads((model_dir / "config.json").read_text())  # local file untouched


def test_push_cli(hub, online, tmp_path, capsys):
    from mux_plms.cli import main

    _, model_dir = save_tiny(tmp_path / "model")
    code = main(
        [
            "push",
            str(model_dir),
            "org/cli",
            "--endpoint",
            hub.endpoint,
            "--token",
            "t",
            "--private",
            "--base-model",
            "google-bert/bert-base-uncased",
            "--commit-message",
            "first upload",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert f"{hub.endpoint}/org/cli/commit/" in out
    assert hub.store.repo_meta("model", "org/cli")["private"] is True
    assert hub.store.history("model", "org/cli")[0]["message"] == "first upload"
    card = ModelCard(hub.store.read("model", "org/cli", "README.md").decode())
    assert card.data.base_model == "google-bert/bert-base-uncased"

    assert main(["push", str(tmp_path / "missing"), "org/cli", "--endpoint", hub.endpoint]) == 1
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Errors: offline, unreachable endpoint, bad folders
# ---------------------------------------------------------------------------------------------
def test_push_offline_fails_clearly_and_writes_nothing(hub, monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model, model_dir = save_tiny(tmp_path / "model")
    before = snapshot(model_dir)
    with pytest.raises(PushError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        push_to_hub(model_dir, "org/offline", token="t", endpoint=hub.endpoint)
    assert snapshot(model_dir) == before
    # transformers' own method fails before saving anything as well.
    with pytest.raises(OfflineModeIsEnabled, match="HF_HUB_OFFLINE"):
        model.push_to_hub("org/offline", token="t")
    assert hub.requests == [] and hub.store.list_repos() == []


def test_push_unreachable_endpoint_fails_clearly_and_writes_nothing(online, tmp_path):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    _, model_dir = save_tiny(tmp_path / "model")
    before = snapshot(model_dir)
    with pytest.raises(PushError, match=r"Cannot reach the Hub at http://127\.0\.0\.1:\d+ to push org/x"):
        push_to_hub(model_dir, "org/x", token="t", endpoint=closed)
    assert snapshot(model_dir) == before


def test_push_bad_folders_and_repo_ids(hub, online, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_to_hub(tmp_path / "nope", "org/x", endpoint=hub.endpoint)
    _, model_dir = save_tiny(tmp_path / "model")
    (model_dir / "model.safetensors").rename(model_dir / "weights.tmp")
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        push_to_hub(model_dir, "org/x", endpoint=hub.endpoint)
    (model_dir / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"pickled weights \(pytorch_model.bin\)"):
        push_to_hub(model_dir, "org/x", endpoint=hub.endpoint)
    (model_dir / "weights.tmp").rename(model_dir / "model.safetensors")
    (model_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        push_to_hub(model_dir, "org/x", endpoint=hub.endpoint)
    _, model_dir = save_tiny(tmp_path / "model2")
    with pytest.raises(ValueError, match="not a valid Hub repository id"):
        push_to_hub(model_dir, "org/bad--name", endpoint=hub.endpoint)
    with pytest.raises(ValueError, match="Unknown model card override"):
        push_to_hub(model_dir, "org/x", endpoint=hub.endpoint, licence="mit")
    assert hub.requests == []


def test_push_refused_without_token(hub, online, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    _, model_dir = save_tiny(tmp_path / "model")
    with pytest.raises(PushError, match=r"(?s)HTTP 401.*writes need a token.*Check your token"):
        push_to_hub(model_dir, "org/x", token=False, endpoint=hub.endpoint)
    assert hub.store.list_repos() == []
