"""Registration of the MUX classes with the transformers Auto classes (local use and remote code)."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .models import (
    MuxAlbertConfig,
    MuxAlbertForMaskedLM,
    MuxAlbertForSequenceClassification,
    MuxAlbertForTokenClassification,
    MuxAlbertModel,
    MuxBertConfig,
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxBertForTokenClassification,
    MuxBertModel,
    MuxElectraConfig,
    MuxElectraForMaskedLM,
    MuxElectraForPreTraining,
    MuxElectraForSequenceClassification,
    MuxElectraForTokenClassification,
    MuxElectraModel,
    MuxLstmConfig,
    MuxLstmForMaskedLM,
    MuxLstmForSequenceClassification,
    MuxLstmForTokenClassification,
    MuxLstmModel,
    MuxRobertaConfig,
    MuxRobertaForMaskedLM,
    MuxRobertaForSequenceClassification,
    MuxRobertaForTokenClassification,
    MuxRobertaModel,
    MuxVisionConfig,
    MuxVisionForImageClassification,
)

AUTO_CLASSES = {
    "AutoModel": AutoModel,
    "AutoModelForMaskedLM": AutoModelForMaskedLM,
    "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
    "AutoModelForTokenClassification": AutoModelForTokenClassification,
    "AutoModelForPreTraining": AutoModelForPreTraining,
    "AutoModelForImageClassification": AutoModelForImageClassification,
}

# model_type -> (config class, {auto class name: model class})
FAMILIES: dict[str, tuple[type, dict[str, type]]] = {
    "mux_bert": (
        MuxBertConfig,
        {
            "AutoModel": MuxBertModel,
            "AutoModelForMaskedLM": MuxBertForMaskedLM,
            "AutoModelForSequenceClassification": MuxBertForSequenceClassification,
            "AutoModelForTokenClassification": MuxBertForTokenClassification,
        },
    ),
    "mux_electra": (
        MuxElectraConfig,
        {
            "AutoModel": MuxElectraModel,
            "AutoModelForPreTraining": MuxElectraForPreTraining,
            "AutoModelForMaskedLM": MuxElectraForMaskedLM,
            "AutoModelForSequenceClassification": MuxElectraForSequenceClassification,
            "AutoModelForTokenClassification": MuxElectraForTokenClassification,
        },
    ),
    "mux_vision": (MuxVisionConfig, {"AutoModelForImageClassification": MuxVisionForImageClassification}),
    "mux_lstm": (
        MuxLstmConfig,
        {
            "AutoModel": MuxLstmModel,
            "AutoModelForMaskedLM": MuxLstmForMaskedLM,
            "AutoModelForSequenceClassification": MuxLstmForSequenceClassification,
            "AutoModelForTokenClassification": MuxLstmForTokenClassification,
        },
    ),
    "mux_roberta": (
        MuxRobertaConfig,
        {
            "AutoModel": MuxRobertaModel,
            "AutoModelForMaskedLM": MuxRobertaForMaskedLM,
            "AutoModelForSequenceClassification": MuxRobertaForSequenceClassification,
            "AutoModelForTokenClassification": MuxRobertaForTokenClassification,
        },
    ),
    "mux_albert": (
        MuxAlbertConfig,
        {
            "AutoModel": MuxAlbertModel,
            "AutoModelForMaskedLM": MuxAlbertForMaskedLM,
            "AutoModelForSequenceClassification": MuxAlbertForSequenceClassification,
            "AutoModelForTokenClassification": MuxAlbertForTokenClassification,
        },
    ),
}


def register_family(model_type: str, config_class: type, models: dict[str, type]) -> None:
    """Register a model family locally (Auto classes) and for remote code (``auto_map`` on save)."""
    FAMILIES[model_type] = (config_class, models)
    try:
        AutoConfig.register(model_type, config_class, exist_ok=True)
    except TypeError:  # older signature
        AutoConfig.register(model_type, config_class)
    config_class.register_for_auto_class()
    for auto_name, model_class in models.items():
        AUTO_CLASSES[auto_name].register(config_class, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)


def auto_map_for(model_type: str) -> dict[str, str]:
    """The complete ``auto_map`` of a family (every Auto class, not only the saved one)."""
    config_class, models = FAMILIES[model_type]
    mapping = {"AutoConfig": f"{config_class.__module__.rsplit('.', 1)[-1]}.{config_class.__name__}"}
    for auto_name, model_class in models.items():
        mapping[auto_name] = f"{model_class.__module__.rsplit('.', 1)[-1]}.{model_class.__name__}"
    return mapping


for _model_type, (_config_class, _models) in list(FAMILIES.items()):
    register_family(_model_type, _config_class, _models)
