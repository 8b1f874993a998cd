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
from .configuration_mux_electra import MuxElectraConfig
from .modeling_mux_electra import (
    MuxElectraForMaskedLM,
    MuxElectraForPreTraining,
    MuxElectraForSequenceClassification,
    MuxElectraForTokenClassification,
    MuxElectraModel,
    MuxElectraPreTrainedModel,
)
from .configuration_mux_vision import MuxVisionConfig
from .modeling_mux_vision import (
    MuxCnnForImageClassification,
    MuxMlpForImageClassification,
    MuxVisionForImageClassification,
    MuxVisionPreTrainedModel,
)
from .configuration_mux_lstm import MuxLstmConfig
from .modeling_mux_lstm import (
    MuxLstmForMaskedLM,
    MuxLstmForSequenceClassification,
    MuxLstmForTokenClassification,
    MuxLstmModel,
    MuxLstmPreTrainedModel,
)
from .configuration_mux_roberta import MuxRobertaConfig
from .modeling_mux_roberta import (
    MuxRobertaForMaskedLM,
    MuxRobertaForSequenceClassification,
    MuxRobertaForTokenClassification,
    MuxRobertaModel,
    MuxRobertaPreTrainedModel,
)
from .configuration_mux_albert import MuxAlbertConfig
from .modeling_mux_albert import (
    MuxAlbertForMaskedLM,
    MuxAlbertForSequenceClassification,
    MuxAlbertForTokenClassification,
    MuxAlbertModel,
    MuxAlbertPreTrainedModel,
)
