"""Load a model folder for serving."""

from __future__ import annotations

from .predictor import MuxPredictor


def load_model_and_tokenizer(model_dir: str):
    """The classification model and tokenizer saved in `model_dir` (MUX or vanilla; Auto classes)."""
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    import mux_plms  # noqa: F401  (registers the MUX Auto classes)

    config = AutoConfig.from_pretrained(model_dir)
    architectures = getattr(config, "architectures", None) or []
    token = any(a.endswith("ForTokenClassification") for a in architectures)
    auto = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    model = auto.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def load_predictor(model_dir: str, **kwargs) -> MuxPredictor:
    """A :class:`MuxPredictor` over the model folder `model_dir` (kwargs as for MuxPredictor)."""
    model, tokenizer = load_model_and_tokenizer(model_dir)
    return MuxPredictor(model, tokenizer, **kwargs)
