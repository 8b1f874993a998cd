"""mux-plms: data multiplexing for pre-trained language models, native to Hugging Face transformers.

Importing this package registers the MUX model families with the transformers Auto classes.
"""

from .models import (
    DEMUXING_VARIANTS,
    MUXING_VARIANTS,
    MuxBertConfig,
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxBertForTokenClassification,
    MuxBertModel,
    MuxModelOutput,
    MuxTaskOutput,
)
from . import _registration  # noqa: F401  (registers the Auto classes)

__version__ = "0.1.0"

__all__ = [
    "DEMUXING_VARIANTS",
    "MUXING_VARIANTS",
    "MuxBertConfig",
    "MuxBertModel",
    "MuxBertForMaskedLM",
    "MuxBertForSequenceClassification",
    "MuxBertForTokenClassification",
    "MuxModelOutput",
    "MuxTaskOutput",
]
