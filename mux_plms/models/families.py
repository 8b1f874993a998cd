"""The model families: one record per family, the one place that says what a family is.

Every consumer reads this table: Auto-class registration and the complete ``auto_map`` written on save
(`mux_plms._registration`), warm starts of the fine-tuning scripts, pre-training's family choice, the model
card's family name and the remote-code files `push` uploads. A new backbone is its configuration file, its
modeling file and one :class:`Family` entry below (docs/design.md).

The records hold ``"module.Class"`` strings, the form ``auto_map`` uses, so reading the table imports neither
torch nor any modeling file; :meth:`Family.config_class` / :meth:`Family.model_class` import on demand.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# Auto class name -> the head it serves in the fine-tuning scripts (warm starts)
HEAD_AUTO_CLASSES = {
    "sequence": "AutoModelForSequenceClassification",
    "token": "AutoModelForTokenClassification",
}


@dataclass(frozen=True)
class Family:
    """One multiplexed model family.

    Args:
        model_type: the config's ``model_type`` (``mux_bert``).
        display_name: for people and model cards (``MUX-BERT``).
        config: ``"module.Class"`` of the configuration class, module relative to this folder.
        models: Auto class name -> ``"module.Class"`` of the model class it maps to.
        vanilla_model_type: ``model_type`` of the transformers model this family warm-starts from and whose
            N = 1 encoder can be its distillation teacher (``bert``); None when there is none.
        pretrainable: trained by ``mux-plms pretrain`` (its stages).
        extra_exports: ``"module.Class"`` of further public classes that no Auto class maps to (the
            family's ``PreTrainedModel`` base, alternative backbones); exported by ``mux_plms`` with the rest.
    """

    model_type: str
    display_name: str
    config: str
    models: dict[str, str] = field(default_factory=dict)
    vanilla_model_type: str | None = None
    pretrainable: bool = False
    extra_exports: tuple[str, ...] = ()

    def exports(self) -> dict[str, str]:
        """Public class name -> its module (relative to this folder): the config, every Auto class's model
        class and :attr:`extra_exports`."""
        paths = [self.config, *self.models.values(), *self.extra_exports]
        return {path.rsplit(".", 1)[1]: path.rsplit(".", 1)[0] for path in paths}

    def auto_map(self) -> dict[str, str]:
        """The complete ``auto_map`` of the family (every Auto class, not only the saved one)."""
        return {"AutoConfig": self.config, **self.models}

    @property
    def short_name(self) -> str:
        """The family's name on the command line (``bert``): its vanilla counterpart, else its model type."""
        return self.vanilla_model_type or self.model_type.removeprefix("mux_")

    def config_class(self) -> type:
        return _resolve(self.config)

    def model_class(self, auto_name: str) -> type:
        """The class behind Auto class `auto_name` (``AutoModelForSequenceClassification``)."""
        try:
            return _resolve(self.models[auto_name])
        except KeyError:
            raise ValueError(f"{self.display_name} has no {auto_name} class") from None

    def head_class(self, head: str) -> type:
        """The fine-tuning class of `head` (``sequence`` or ``token``)."""
        return self.model_class(HEAD_AUTO_CLASSES[head])

    @property
    def warm_startable(self) -> bool:
        """A vanilla checkpoint of ``vanilla_model_type`` can be turned into this family for every head."""
        return self.vanilla_model_type is not None and all(name in self.models for name in HEAD_AUTO_CLASSES.values())


def _resolve(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(f".{module}", __package__), name)


def _text_family(model_type, display_name, stem, prefix, vanilla, pretrainable, extra=()) -> Family:
    """A family with the four text classes (base, masked LM, sequence and token classification)."""
    models = {"AutoModel": f"modeling_mux_{stem}.{prefix}Model"}
    for auto_name, suffix in extra:
        models[auto_name] = f"modeling_mux_{stem}.{prefix}{suffix}"
    models.update({
        "AutoModelForMaskedLM": f"modeling_mux_{stem}.{prefix}ForMaskedLM",
        "AutoModelForSequenceClassification": f"modeling_mux_{stem}.{prefix}ForSequenceClassification",
        "AutoModelForTokenClassification": f"modeling_mux_{stem}.{prefix}ForTokenClassification",
    })  # fmt: skip
    config = f"configuration_mux_{stem}.{prefix}Config"
    base = (f"modeling_mux_{stem}.{prefix}PreTrainedModel",)
    return Family(model_type, display_name, config, models, vanilla, pretrainable, extra_exports=base)


FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        _text_family("mux_bert", "MUX-BERT", "bert", "MuxBert", "bert", True),
        _text_family(
            "mux_electra",
            "MUX-ELECTRA",
            "electra",
            "MuxElectra",
            "electra",
            True,
            extra=[("AutoModelForPreTraining", "ForPreTraining")],
        ),  # fmt: skip
        _text_family("mux_roberta", "MUX-RoBERTa", "roberta", "MuxRoberta", "roberta", True),
        _text_family("mux_albert", "MUX-ALBERT", "albert", "MuxAlbert", "albert", True),
        _text_family("mux_lstm", "MUX-LSTM", "lstm", "MuxLstm", None, False),
        Family(
            "mux_vision",
            "MUX vision",
            "configuration_mux_vision.MuxVisionConfig",
            {"AutoModelForImageClassification": "modeling_mux_vision.MuxVisionForImageClassification"},
            extra_exports=(
                "modeling_mux_vision.MuxMlpForImageClassification",
                "modeling_mux_vision.MuxCnnForImageClassification",
                "modeling_mux_vision.MuxVisionPreTrainedModel",
            ),
        ),
    )
}


def family_of(model_type: str) -> Family | None:
    """The family of a MUX ``model_type`` or of its vanilla counterpart (``bert`` -> MUX-BERT); None otherwise."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    return next((f for f in FAMILIES.values() if f.vanilla_model_type == model_type), None)


def family_exports() -> dict[str, str]:
    """Every family's public class name -> its module (relative to this folder), in table order."""
    return {name: module for family in FAMILIES.values() for name, module in family.exports().items()}


def pretrainable_families() -> tuple[str, ...]:
    """The ``--model_family`` names of ``mux-plms pretrain`` (``bert``, ``electra``, ...)."""
    return tuple(f.short_name for f in FAMILIES.values() if f.pretrainable)


__all__ = ["FAMILIES", "Family", "HEAD_AUTO_CLASSES", "family_exports", "family_of", "pretrainable_families"]
