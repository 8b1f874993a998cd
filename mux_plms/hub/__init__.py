"""Publishing MUX models: `push_to_hub` (one commit with a generated model card), model cards rendered
from a template and a training record (the record classes come from `mux_plms.records`), and conversion of
original MUX-PLMs checkpoints (`convert_legacy_checkpoint`, imported on first use)."""

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
from .push import PushError, push_to_hub

__all__ = [
    "TRAINING_RECORD_FILE",
    "BaselineComparison",
    "EvaluationResult",
    "FinetuningRecord",
    "PushError",
    "ThroughputRecord",
    "TrainingRecord",
    "TrainingStage",
    "convert_legacy_checkpoint",
    "push_to_hub",
    "render_model_card",
    "write_model_card",
]


def __getattr__(name: str):
    # Lazy: the converter (torch state-dict rewriting) loads only when asked for.
    if name == "convert_legacy_checkpoint":
        from .convert import convert_legacy_checkpoint

        return convert_legacy_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
