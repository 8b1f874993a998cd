"""T-MUX presets: DataMUX's multiplexed Transformer trained from scratch (no pre-trained language model).

DataMUX trains a RoBERTa-shaped Transformer (12 layers, 768 wide, 12 heads) in two stages:

1. **retrieval warm-up**: only the token-retrieval loss (``retrieval_loss_coeff=1``, ``task_loss_coeff=0``),
   on unlabelled text, so the multiplexer / demultiplexer learn to keep the N instances apart;
2. **fine-tuning** on the task with the retrieval loss kept as an auxiliary term:
   ``loss = 0.1 * retrieval + 0.9 * task`` (``retrieval_loss_coeff=0.1``, ``task_loss_coeff=0.9``).

It is MUX-BERT's architecture without BERT's pre-training, so a preset is a set of `MuxBertConfig` keyword
arguments. Files ``tmux_<size>.json`` (sizes in :data:`TMUX_PRESETS`) hold a ``model`` section and one
section per stage (its two loss coefficients plus a ``recipe`` of starting-point training arguments; the
``base`` recipe is a GPU recipe and its values are starting points, not the paper's tuned settings).
Multiplexing follows DataMUX's best pairing: Gaussian Hadamard multiplexing with index (``prefix``)
demultiplexing, N = 2 (override ``num_instances``).

Example:

```python
>>> from mux_plms import MuxBertConfig, MuxBertForMaskedLM, MuxBertForSequenceClassification
>>> from mux_plms.configs.tmux import load_tmux_preset
>>> warmup = MuxBertForMaskedLM(MuxBertConfig(**load_tmux_preset("tiny", stage="warmup")))
>>> preset = load_tmux_preset("tiny", stage="finetune", num_labels=2)
>>> (preset["retrieval_loss_coeff"], preset["task_loss_coeff"])
(0.1, 0.9)
>>> model = MuxBertForSequenceClassification(MuxBertConfig(**preset))
```
"""

from __future__ import annotations

import json
from pathlib import Path

TMUX_DIR = Path(__file__).resolve().parent
TMUX_PRESETS = ("tiny", "demo", "base")
TMUX_STAGES = ("warmup", "finetune")


def tmux_preset_path(name: str) -> Path:
    """Path of ``tmux_<name>.json``; `ValueError` for an unknown name."""
    if name not in TMUX_PRESETS:
        raise ValueError(f"Unknown T-MUX preset {name!r}: choose one of {', '.join(TMUX_PRESETS)}")
    return TMUX_DIR / f"tmux_{name}.json"


def _read(name: str, stage: str) -> dict:
    if stage not in TMUX_STAGES:
        raise ValueError(f"Unknown T-MUX stage {stage!r}: choose one of {', '.join(TMUX_STAGES)}")
    return json.loads(tmux_preset_path(name).read_text())


def load_tmux_preset(name: str = "base", stage: str = "finetune", **overrides) -> dict:
    """`MuxBertConfig` keyword arguments of T-MUX preset `name` at `stage` (``warmup`` or ``finetune``):
    the model section plus that stage's loss coefficients, then `overrides` (e.g. ``vocab_size``,
    ``num_instances``, ``num_labels``). Use as ``MuxBertConfig(**load_tmux_preset(...))``."""
    data = _read(name, stage)
    section = data[stage]
    coefficients = {k: section[k] for k in ("retrieval_loss_coeff", "task_loss_coeff")}
    return {**data["model"], **coefficients, **overrides}


def tmux_recipe(name: str = "base", stage: str = "finetune") -> dict:
    """Starting-point training arguments of preset `name` at `stage` (learning rate, steps, batch size...)."""
    return dict(_read(name, stage)[stage]["recipe"])


def tmux_description(name: str) -> str:
    """One-line description of preset `name`."""
    return json.loads(tmux_preset_path(name).read_text())["description"]


__all__ = ["TMUX_PRESETS", "TMUX_STAGES", "load_tmux_preset", "tmux_recipe", "tmux_description", "tmux_preset_path"]
