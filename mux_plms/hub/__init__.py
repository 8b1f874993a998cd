"""Publishing MUX models: `push_to_hub` (one commit with a generated model card), model cards rendered
from a template and a training record (the record classes come from `mux_plms.records`), and conversion of original MUX-PLMs checkpoints
(`convert_legacy_checkpoint`).

The names below are imported on first access: ``mux-plms push --help`` imports neither huggingface_hub
nor torch, and the converter (torch state-dict rewriting) loads only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .card import (
        TRAINING_RECORD_FILE,
        BaselineComparison,
        EvaluationResult,
        FinetuningRecord,
        ThroughputRecord,
        TrainingRecord,
        TrainingStage,
        render_model_card,
        write_model_card,
    )
    from .convert import convert_legacy_checkpoint
    from .push import PushError, push_to_hub

# public name -> submodule that defines it
_LAZY = {
    "TRAINING_RECORD_FILE": "card",
    "BaselineComparison": "card",
    "EvaluationResult": "card",
    "FinetuningRecord": "card",
    "ThroughputRecord": "card",
    "TrainingRecord": "card",
    "TrainingStage": "card",
    "render_model_card": "card",
    "write_model_card": "card",
    "PushError": "push",
    "push_to_hub": "push",
    "convert_legacy_checkpoint": "convert",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
