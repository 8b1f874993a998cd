"""Pre-training presets: a MUX-BERT size plus the training recipe that goes with it.

Each ``bert_<name>.json`` holds a ``model`` section (`MuxBertConfig` fields, the vocabulary size comes from the
tokenizer) and a ``recipe`` section (defaults for `PretrainingArguments`: block size, mux rows per device,
learning rate, warm-up, steps). Sizes:

* ``tiny``: 2 layers, 32 wide. Tests only.
* ``demo``: 4 layers, 256 wide, 32-token blocks: a few CPU minutes per stage.
* ``small`` / ``base`` / ``large``: the MUX-PLMs paper's sizes (4x512, 12x768, 24x1024) with the paper's recipe
  at real scale: 8 GPUs, 128 mux rows per optimizer step (16 per GPU), lr 1e-4, 10k warm-up steps then linear
  decay, 128-token (small) or 512-token (base, large) blocks.

Example:

```python
>>> from mux_plms.configs import load_preset, preset_config
>>> load_preset("demo").recipe["max_steps"]
300
>>> preset_config("tiny", vocab_size=100, num_instances=5).num_instances
5
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent
PRESETS = ("tiny", "demo", "small", "base", "large")


@dataclass(frozen=True)
class Preset:
    """A parsed preset file."""

    name: str
    description: str
    model: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)


def preset_path(name: str) -> Path:
    """Path of the preset file ``bert_<name>.json``; `ValueError` for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESET_DIR / f"bert_{name}.json"


def load_preset(name: str) -> Preset:
    """Read preset `name` (one of :data:`PRESETS`)."""
    data = json.loads(preset_path(name).read_text())
    return Preset(
        name=name,
        description=data.get("description", ""),
        model=dict(data.get("model", {})),
        recipe=dict(data.get("recipe", {})),
    )


def preset_config(name: str, **overrides):
    """A `MuxBertConfig` of preset `name`, with `overrides` (e.g. ``vocab_size``, ``num_instances``) applied."""
    from ..models import MuxBertConfig

    return MuxBertConfig(**{**load_preset(name).model, **overrides})


__all__ = ["PRESETS", "PRESET_DIR", "Preset", "load_preset", "preset_config", "preset_path"]
