"""The Hub-exportable core: torch + transformers only. Files here import each other with single-dot
relative imports and nothing from `mux_plms` outside this folder, so `save_pretrained` can copy them
next to the weights for `trust_remote_code=True` users.

The public names are loaded on first access (PEP 562): the model classes from the family table
(:mod:`.families`, one record per family), the rest from :data:`_SHARED`. ``import mux_plms.models`` itself
imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .families import family_exports

# name -> module (relative to this folder) of the public names that belong to no single family
_SHARED: dict[str, str] = {
    "MUXING_VARIANTS": "configuration_mux_utils",
    "DEMUXING_VARIANTS": "configuration_mux_utils",
    "MultiplexingConfigMixin": "configuration_mux_utils",
    "MULTIPLEXERS": "multiplexing",
    "Multiplexer": "multiplexing",
    "register_multiplexer": "multiplexing",
    "DEMULTIPLEXERS": "demultiplexing",
    "Demultiplexer": "demultiplexing",
    "register_demultiplexer": "demultiplexing",
    "MuxModelOutput": "modeling_outputs",
    "MuxTaskOutput": "modeling_outputs",
}
_EXPORTS: dict[str, str] = {**family_exports(), **_SHARED}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs; tests/test_cli.py keeps this list equal to _EXPORTS
    from .configuration_mux_albert import MuxAlbertConfig
    from .configuration_mux_bert import MuxBertConfig
    from .configuration_mux_electra import MuxElectraConfig
    from .configuration_mux_lstm import MuxLstmConfig
    from .configuration_mux_roberta import MuxRobertaConfig
    from .configuration_mux_utils import DEMUXING_VARIANTS, MUXING_VARIANTS, MultiplexingConfigMixin
    from .configuration_mux_vision import MuxVisionConfig
    from .demultiplexing import DEMULTIPLEXERS, Demultiplexer, register_demultiplexer
    from .modeling_mux_albert import (
        MuxAlbertForMaskedLM,
        MuxAlbertForSequenceClassification,
        MuxAlbertForTokenClassification,
        MuxAlbertModel,
        MuxAlbertPreTrainedModel,
    )
    from .modeling_mux_bert import (
        MuxBertForMaskedLM,
        MuxBertForSequenceClassification,
        MuxBertForTokenClassification,
        MuxBertModel,
        MuxBertPreTrainedModel,
    )
    from .modeling_mux_electra import (
        MuxElectraForMaskedLM,
        MuxElectraForPreTraining,
        MuxElectraForSequenceClassification,
        MuxElectraForTokenClassification,
        MuxElectraModel,
        MuxElectraPreTrainedModel,
    )
    from .modeling_mux_lstm import (
        MuxLstmForMaskedLM,
        MuxLstmForSequenceClassification,
        MuxLstmForTokenClassification,
        MuxLstmModel,
        MuxLstmPreTrainedModel,
    )
    from .modeling_mux_roberta import (
        MuxRobertaForMaskedLM,
        MuxRobertaForSequenceClassification,
        MuxRobertaForTokenClassification,
        MuxRobertaModel,
        MuxRobertaPreTrainedModel,
    )
    from .modeling_outputs import MuxModelOutput, MuxTaskOutput
    from .modeling_mux_vision import (
        MuxCnnForImageClassification,
        MuxMlpForImageClassification,
        MuxVisionForImageClassification,
        MuxVisionPreTrainedModel,
    )
    from .multiplexing import MULTIPLEXERS, Multiplexer, register_multiplexer
