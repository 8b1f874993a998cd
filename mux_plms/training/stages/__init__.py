"""The pre-training stages, one module each, and the registry that every other part reads them from.

A stage is a :class:`Stage`: how to build its model, run a batch through it, save it, which collator feeds it,
its loss coefficients, loss / metric fields, extra training-record fields, its descriptions (record, ``--help``,
model card) and its checks (arguments, and the setup before any data is read). The loop
(:mod:`mux_plms.training.pretrain`), the arguments (:mod:`mux_plms.training.arguments`), the metrics
(:mod:`mux_plms.training.metrics`) and the model card (:mod:`mux_plms.hub.card`) know stages only through
:data:`STAGE_REGISTRY`; no other module names one.

Adding a stage: write ``stages/<name>.py`` defining a `Stage` and calling :func:`register_stage` on it, and
import it at the bottom of this file (the import order is the order of ``--stages`` choices in help and errors).

Import-light on purpose: ``mux-plms pretrain --help`` reads the stage names and help texts from here, so this
package and the stage modules import neither torch nor transformers at module level (their builders, collators
and checks import what they need when called).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..arguments import PretrainingArguments


@dataclass
class StageContext:
    """What a stage needs to build its model."""

    args: PretrainingArguments
    stage: str
    index: int
    init_source: str | None
    tokenizer: Any


@dataclass
class Stage:
    """A pre-training stage: everything the loop, the arguments, the metrics and the model card need to know."""

    name: str
    # One line in the stage's training-record entry (``description``).
    description: str
    build: Callable[[StageContext], Any]  # -> the torch module trained
    forward: Callable[[Any, dict], Any]  # (model, batch) -> output with .loss and the loss_fields
    # Loss components of the stage's output: logged during training and averaged in evaluation.
    loss_fields: tuple[str, ...]
    save: Callable[[Any, Path, Any, Any], None]  # (unwrapped model, folder, accelerator, state_dict)
    # The collator of the stage's batches: (args, tokenizer, num_instances) -> a `mux_plms.data.collators` collator.
    collator: Callable[[PretrainingArguments, Any, int], Any]
    # What `--help` says of the stage in the --stages help text.
    help: str = ""
    # How the model card describes the stage.
    card_description: str = ""
    mlm_logits: bool = False  # the output's `logits` are MLM logits at the labelled positions
    # The loss coefficients the stage's model config gets (checked before any data is read).
    coeffs: Callable[[PretrainingArguments], dict] | None = None
    # Extra fields of the stage's training-record entry.
    record: Callable[[PretrainingArguments, Any], dict] | None = None
    # The model family the stage implies when neither the init checkpoint nor --model_family names one.
    family: str | None = None
    # Argument checks (no I/O): called by `PretrainingArguments.validate` for every registered stage with the
    # stage list, selected or not (a stage checks its own flags in every run); raise ValueError naming the flag.
    check: Callable[[PretrainingArguments, list[str]], None] | None = None
    # The setup check when the stage runs first (model config without weights, block size), before any data is
    # read. Default (None): `mux_plms.training.stage_models.check_setup` with the stage's coefficients.
    check_first: Callable[[StageContext], None] | None = None
    # A check before any data is read, for every stage of the run, given the first stage's context (e.g. the
    # distillation teacher against the student).
    check_run: Callable[[StageContext], None] | None = None


STAGE_REGISTRY: dict[str, Stage] = {}
# Chains shown as examples in the --stages help text.
EXAMPLE_CHAINS = ("retrieval,mlm", "retrieval,distill", "distill,mlm")


def batch_forward(required: tuple[str, ...], optional: tuple[str, ...] = (), **fixed) -> Callable[[Any, dict], Any]:
    """A stage's ``forward``: the model called with the batch's `required` keys (a missing one is a
    ``KeyError``), its `optional` keys (None when absent) and the `fixed` keyword arguments."""

    def forward(model, batch: dict):
        inputs = {key: batch[key] for key in required} | {key: batch.get(key) for key in optional}
        return model(**inputs, **fixed)

    return forward


def register_stage(stage: Stage) -> Stage:
    """Add a stage to :data:`STAGE_REGISTRY` (name -> Stage); returns it."""
    STAGE_REGISTRY[stage.name] = stage
    return stage


def stage_names() -> tuple[str, ...]:
    """The registered stage names, in registration order."""
    return tuple(STAGE_REGISTRY)


def get_stage(name: str) -> Stage:
    """The registered stage `name`; `ValueError` listing the known stages otherwise."""
    try:
        return STAGE_REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown pre-training stage {name!r}: choose from {', '.join(STAGE_REGISTRY)}") from None


def stages_help() -> str:
    """The help text of ``--stages``, from the registered stages."""
    described = ", ".join(f"'{stage.name}' ({stage.help})" if stage.help else f"'{stage.name}'"
                          for stage in STAGE_REGISTRY.values())  # fmt: skip
    return (
        f"Comma-separated stages to run in order, each starting from the previous one's output: {described}. "
        f"Examples: {'; '.join(EXAMPLE_CHAINS)}."
    )


def check_arguments(args: PretrainingArguments, stages: list[str]) -> None:
    """Every registered stage's argument check (:attr:`Stage.check`)."""
    for stage in STAGE_REGISTRY.values():
        if stage.check is not None:
            stage.check(args, stages)


def loss_names() -> tuple[str, ...]:
    """Every loss component a registered stage's output may carry (``loss`` itself excepted), in order."""
    names: dict[str, None] = {}
    for stage in STAGE_REGISTRY.values():
        names.update((name, None) for name in stage.loss_fields if name != "loss")
    return tuple(names)


def implied_family(stages: list[str]) -> str | None:
    """The model family the first stage of `stages` that implies one implies (:attr:`Stage.family`)."""
    return next((get_stage(name).family for name in stages if get_stage(name).family), None)


# The stages, in the order of the --stages choices. Each module registers its Stage on import.
from . import retrieval, distill, mlm, electra  # noqa: E402, F401, I001

__all__ = [
    "batch_forward",
    "Stage",
    "StageContext",
    "STAGE_REGISTRY",
    "EXAMPLE_CHAINS",
    "register_stage",
    "stage_names",
    "get_stage",
    "stages_help",
    "check_arguments",
    "loss_names",
    "implied_family",
]
