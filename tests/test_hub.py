"""Publishing to a loopback Hub: `model.push_to_hub`, `mux_plms.hub.push_to_hub`, the `push` CLI, and
loading the pushed repository by id with remote code in a process that cannot import mux_plms."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
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
from mux_plms.utils.folders import COMPLETE_MARKER, atomic_model_folder, write_complete_marker

REMOTE_CODE_FILES = {
    "configuration_mux_bert.py",
    "configuration_mux_utils.py",
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
    """A tiny model folder as the package writes them: whole, with its completion marker."""
    torch.manual_seed(0)
    model = MuxBertForSequenceClassification(tiny_config(num_labels=3, **overrides)).eval()
    with atomic_model_folder(directory) as partial:
        model.save_pretrained(partial)
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
    write_complete_marker(model_dir)  # the folder as a tool that writes it whole would leave it

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
# Only whole folders, only what a model repository needs
# ---------------------------------------------------------------------------------------------
HALF_WRITE = """
import sys, time
from pathlib import Path
import torch
import transformers.modeling_utils as modeling_utils
from safetensors.torch import save as to_bytes
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from mux_plms import MuxBertForSequenceClassification
from mux_plms.utils.folders import atomic_model_folder

def half_then_hang(tensors, filename, metadata=None):
    data = to_bytes(tensors, metadata=metadata)
    with open(filename, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
    Path({ready!r}).touch()
    time.sleep(600)  # killed here, half of model.safetensors on disk

modeling_utils.safe_save_file = half_then_hang
torch.manual_seed(1)
model = MuxBertForSequenceClassification(tiny_config(num_labels=3))
{save}
"""


def _kill_mid_write(tmp_path: Path, save: str) -> None:
    ready = tmp_path / "ready"
    code = HALF_WRITE.format(tests=str(REPO_ROOT / "tests"), ready=str(ready), save=save)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the writer never reached model.safetensors"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stderr.close()


def test_a_folder_killed_while_saving_is_never_published(hub, online, tmp_path):
    """A real process killed in the middle of model.safetensors: the package's atomic write leaves the old
    folder in place and the half-written one hidden and unmarked; push refuses the unmarked folder, and its
    truncated weights even with --allow-unmarked; a plain save_pretrained killed in place is refused too."""
    from mux_plms.hub.push import IncompleteModelError

    model, target = save_tiny(tmp_path / "model")
    before = (target / "model.safetensors").read_bytes()
    _kill_mid_write(
        tmp_path, f"with atomic_model_folder({str(target)!r}) as partial:\n    model.save_pretrained(partial)"
    )
    assert (target / "model.safetensors").read_bytes() == before  # the old folder, whole
    (partial,) = tmp_path.glob(".model.partial-*")
    assert 0 < (partial / "model.safetensors").stat().st_size < len(before) and not (partial / COMPLETE_MARKER).exists()
    with pytest.raises(IncompleteModelError, match=r"no completion marker .*--allow-unmarked"):
        push_to_hub(partial, "org/half", token="t", endpoint=hub.endpoint)
    with pytest.raises(IncompleteModelError, match=r"model\.safetensors is not a complete safetensors file"):
        push_to_hub(partial, "org/half", token="t", endpoint=hub.endpoint, allow_unmarked=True)

    plain = tmp_path / "plain"  # what a plain save_pretrained killed in place leaves
    (tmp_path / "second").mkdir()
    _kill_mid_write(tmp_path / "second", f"model.save_pretrained({str(plain)!r})")
    with pytest.raises(IncompleteModelError, match="not a complete safetensors file"):
        push_to_hub(plain, "org/half", token="t", endpoint=hub.endpoint, allow_unmarked=True)
    assert hub.store.list_repos() == []

    push_to_hub(target, "org/whole", token="t", endpoint=hub.endpoint)  # the complete folder goes up
    assert hub.store.read("model", "org/whole", "model.safetensors") == before


def test_push_uploads_an_allow_list_and_follows_no_link_out_of_the_folder(hub, online, tmp_path):
    _, model_dir = save_tiny(tmp_path / "model")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token.txt").write_text("hf_secret")
    (model_dir / "credentials.json").write_text('{"token": "hf_secret"}')
    (model_dir / "notes.txt").write_text("private notes")
    (model_dir / "train_script.py").write_text("TOKEN = 'hf_secret'\n")  # not remote code of the auto_map
    (model_dir / "tokenizer.json").symlink_to(secrets / "token.txt")  # an allowed name, leading out
    (model_dir / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (model_dir / "logs").mkdir()
    (model_dir / "logs" / "events.txt").write_text("x")
    TrainingRecord(stages=[TrainingStage("finetune", 1, "polarity", {})]).save(model_dir)

    push_to_hub(model_dir, "org/allow", token="t", endpoint=hub.endpoint)
    uploaded = set(hub.store.files("model", "org/allow"))
    assert uploaded == {"config.json", "model.safetensors", "README.md", "training_record.json", "vocab.txt"} | (
        REMOTE_CODE_FILES
    )
    blobs = b"".join(hub.store.read("model", "org/allow", name) for name in uploaded)
    assert b"hf_secret" not in blobs and b"private notes" not in blobs


def test_push_refuses_changed_weights_foreign_shards_and_names_the_fix(hub, online, tmp_path, capsys):
    from mux_plms.cli import main
    from mux_plms.hub.push import IncompleteModelError

    _, model_dir = save_tiny(tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "num_labels": 7}))
    with pytest.raises(IncompleteModelError, match=r"config\.json has \d+ bytes, but mux_plms_complete\.json recorded"):
        push_to_hub(model_dir, "org/x", token="t", endpoint=hub.endpoint, allow_unmarked=True)  # never overridden

    plain = tmp_path / "plain"
    MuxBertForSequenceClassification(tiny_config(num_labels=3)).save_pretrained(plain)
    assert main(["push", str(plain), "org/plain", "--endpoint", hub.endpoint, "--token", "t"]) == 1
    error = capsys.readouterr().err
    assert "no completion marker" in error and "push it with --allow-unmarked" in error
    assert main(["push", str(plain), "org/plain", "--endpoint", hub.endpoint, "--token", "t", "--allow-unmarked"]) == 0

    sharded = tmp_path / "sharded"
    MuxBertForSequenceClassification(tiny_config(num_labels=3)).save_pretrained(sharded)
    outside = tmp_path / "outside.safetensors"
    (sharded / "model.safetensors").rename(outside)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))
    with pytest.raises(ValueError, match=r"points outside the folder"):
        push_to_hub(sharded, "org/sharded", token="t", endpoint=hub.endpoint, allow_unmarked=True)
    assert "org/sharded" not in hub.store.list_repos()


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
