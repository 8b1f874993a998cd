"""The Hub-exportable core: torch + transformers only. Files here import each other with single-dot
relative imports and nothing from `mux_plms` outside this folder, so `save_pretrained` can copy them
next to the weights for `trust_remote_code=True` users."""

from .configuration_mux_bert import DEMUXING_VARIANTS, MUXING_VARIANTS, MuxBertConfig
from .demultiplexing import DEMULTIPLEXERS, Demultiplexer, register_demultiplexer
from .modeling_mux_bert import (
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxBertForTokenClassification,
    MuxBertModel,
    MuxBertPreTrainedModel,
)
from .modeling_outputs import MuxModelOutput, MuxTaskOutput
from .multiplexing import MULTIPLEXERS, Multiplexer, register_multiplexer
