"""MUX-aware `transformers` pipelines: text and token classification that batch whole mux groups.

A multiplexed model with N instances runs rows ``kN .. kN+N-1`` of every batch through one backbone pass
(one mux group). transformers' stock pipelines run one input at a time by default (``batch_size=1``): each
input is then alone in its group (the other N-1 slots are internally padded empty instances), so there is
no multiplexing speed-up, and the answer for an input is the one it gets *alone*, not the one a batched
``model(...)`` forward over the same inputs gives it.

**The output of a multiplexed model for one input depends on the other inputs of its mux group.** The
demultiplexer separates the N instances of a shared pass only approximately, so the same sentence can get
other scores (rarely another label) next to other partners. In eval mode the forward pass is deterministic:
the same inputs in the same order, batched the same way, always give the same outputs.

:class:`MuxTextClassificationPipeline` and :class:`MuxTokenClassificationPipeline` subclass the stock
pipelines and change only the batching policy, for MUX models with N > 1:

* the default ``batch_size`` is ``8 * N`` rows (8 mux groups per forward pass);
* a ``batch_size`` that is not a multiple of N (at construction or per call) is rounded **up** to the next
  multiple, with a one-line warning (once per pipeline and value): every forward pass then holds whole
  groups, and only the last batch of a call may be completed by internal padding;
* inputs are batched in the order given (no length sorting), so input ``i`` shares its group with the
  inputs ``N*(i//N) .. N*(i//N)+N-1`` and every output equals that of the batched forward
  ``model(**tokenizer(inputs, padding=True))`` over the same ordered inputs (up to float rounding).
  Token classification groups model *rows*: a text longer than the model (``stride``) becomes several rows.

For vanilla models and N = 1 they behave exactly as the stock pipelines (default ``batch_size`` 1, no
rounding). Ways to get them:

* ``mux_plms.pipelines.pipeline(task, model=..., ...)``: the stock factory with the MUX-aware class for
  ``"text-classification"`` / ``"sentiment-analysis"`` / ``"token-classification"`` / ``"ner"`` (any other
  task is passed through unchanged);
* ``transformers.pipeline("mux-text-classification" | "mux-token-classification", ...)`` once this module
  is imported (the tasks are registered in transformers' ``PIPELINE_REGISTRY``);
* the classes themselves, or ``transformers.pipeline(task, ..., pipeline_class=MuxTextClassificationPipeline)``.

The stock ``transformers.pipeline("text-classification", model=mux_model)`` keeps its own behaviour (this
module does not replace transformers' tasks); the MUX models log one warning per process when a stock
pipeline runs them with a batch size that is not a multiple of N
(:func:`mux_plms.models.modeling_mux_utils.warn_if_run_by_stock_pipeline`).

For serving single requests as they arrive, :class:`mux_plms.serving.MuxBatcher` collects requests into
whole groups and sorts each batch by length (outputs then depend on the arrival mix, as stated above).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification
from transformers import pipeline as transformers_pipeline
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline
from transformers.pipelines.text_classification import TextClassificationPipeline
from transformers.pipelines.token_classification import TokenClassificationPipeline

from . import _registration  # noqa: F401  (the MUX Auto classes, for models given by folder or Hub id)

logger = logging.getLogger(__name__)

ROWS_PER_GROUP_DEFAULT = 8  # default batch: 8 mux groups of N rows

__all__ = [
    "MUX_TASKS",
    "MuxPipelineMixin",
    "MuxTextClassificationPipeline",
    "MuxTokenClassificationPipeline",
    "num_instances_of",
    "pipeline",
    "register_pipelines",
]


def num_instances_of(model: Any) -> int:
    """N of a (MUX) model: ``config.num_instances``, 1 for vanilla models."""
    config = getattr(model, "config", None)
    value = getattr(config, "num_instances", None)
    return int(value) if isinstance(value, int) and value > 0 else 1


class MuxPipelineMixin:
    """Batching policy of the MUX-aware pipelines (see the module docstring); combined with a stock
    transformers pipeline class, before it in the bases.

    Attributes:
        num_instances: N of the model (1 for vanilla models: the stock behaviour is unchanged).
    """

    # Read by the MUX models' stock-pipeline check: this pipeline keeps mux groups whole, no warning.
    _mux_aware = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_instances = num_instances_of(self.model)
        self._rounding_warned: set[int] = set()
        if self.num_instances > 1:
            if self._batch_size is None:
                self._batch_size = ROWS_PER_GROUP_DEFAULT * self.num_instances
            else:
                self._batch_size = self.whole_groups(self._batch_size)

    def whole_groups(self, batch_size: int) -> int:
        """`batch_size` rounded up to a multiple of N, with a one-line warning once per pipeline and value
        when it had to be rounded. For N = 1 it is returned as given (the stock pipeline's behaviour)."""
        n = self.num_instances
        if n == 1:
            return batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size % n == 0:
            return batch_size
        rounded = -(-batch_size // n) * n
        if batch_size not in self._rounding_warned:
            self._rounding_warned.add(batch_size)
            logger.warning(
                "batch_size=%d is not a multiple of num_instances=%d: using batch_size=%d so that every forward "
                "pass holds whole mux groups of consecutive inputs",
                batch_size,
                n,
                rounded,
            )
        return rounded

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        """The stock iterator, over batches of whole mux groups (every list, dataset or generator call)."""
        return super().get_iterator(
            inputs, num_workers, self.whole_groups(batch_size), preprocess_params, forward_params, postprocess_params
        )


_BATCHING_NOTE = """

    MUX batching: for a model with N > 1 instances the default ``batch_size`` is ``8 * N`` and a batch size
    that is not a multiple of N is rounded up to one (one warning per value), so that inputs ``kN .. kN+N-1``
    (in the order given) share one backbone pass. A multiplexed model's output for an input depends on the
    other inputs of its mux group: the results equal those of the batched forward ``model(**tokenizer(inputs,
    padding=True))`` over the same ordered inputs, and can differ from running the same input alone or in
    another order. In eval mode the forward pass is deterministic for a fixed batch order. A single input
    (not a list) is run alone in its group. Vanilla models and N = 1 behave exactly as the stock pipeline.
"""
_TOKEN_NOTE = """
    Token classification groups the model's rows: a text longer than the model (``stride``) becomes several
    consecutive rows. ``aggregation_strategy`` is unchanged: it runs per text, after the forward pass.
"""
_STOCK_DOC = """
    The stock pipeline's documentation follows.
"""


class MuxTextClassificationPipeline(MuxPipelineMixin, TextClassificationPipeline):
    __doc__ = (
        "MUX-aware ``TextClassificationPipeline``: whole mux groups per forward pass."
        + _BATCHING_NOTE
        + _STOCK_DOC
        + (TextClassificationPipeline.__doc__ or "")
    )


class MuxTokenClassificationPipeline(MuxPipelineMixin, TokenClassificationPipeline):
    __doc__ = (
        "MUX-aware ``TokenClassificationPipeline``: whole mux groups per forward pass."
        + _BATCHING_NOTE
        + _TOKEN_NOTE
        + _STOCK_DOC
        + (TokenClassificationPipeline.__doc__ or "")
    )


# task (stock names, their aliases and the registered MUX names) -> (stock task, MUX-aware class)
MUX_TASKS: dict[str, tuple[str, type[Pipeline]]] = {
    "text-classification": ("text-classification", MuxTextClassificationPipeline),
    "sentiment-analysis": ("text-classification", MuxTextClassificationPipeline),
    "mux-text-classification": ("text-classification", MuxTextClassificationPipeline),
    "token-classification": ("token-classification", MuxTokenClassificationPipeline),
    "ner": ("token-classification", MuxTokenClassificationPipeline),
    "mux-token-classification": ("token-classification", MuxTokenClassificationPipeline),
}

_REGISTERED = {
    "mux-text-classification": (MuxTextClassificationPipeline, AutoModelForSequenceClassification),
    "mux-token-classification": (MuxTokenClassificationPipeline, AutoModelForTokenClassification),
}


def register_pipelines() -> None:
    """Register ``"mux-text-classification"`` and ``"mux-token-classification"`` with transformers'
    ``PIPELINE_REGISTRY`` (done on import; idempotent).

    The classes are part of the installed package, not custom code of a model: the registry's
    ``_registered_impl`` marker is removed so that ``pipe.save_pretrained`` saves the model and tokenizer
    only (no ``custom_pipelines`` entry in config.json, no copy of this module next to the weights)."""
    for task, (pipeline_class, auto_class) in _REGISTERED.items():
        current = PIPELINE_REGISTRY.supported_tasks.get(task)
        if current is None or current.get("impl") is not pipeline_class:
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=auto_class, type="text")
        if "_registered_impl" in vars(pipeline_class):
            del pipeline_class._registered_impl


def _architectures(model: Any) -> list[str]:
    """Architecture names of a model object, or of a local model folder's config.json (read as JSON)."""
    if isinstance(model, str | os.PathLike):
        config_file = os.path.join(os.fspath(model), "config.json")
        if not os.path.isfile(config_file):
            return []
        try:
            with open(config_file, encoding="utf-8") as handle:
                architectures = json.load(handle).get("architectures") or []
        except (OSError, ValueError, AttributeError):
            return []
        return [a for a in architectures if isinstance(a, str)]
    return [type(model).__name__] if model is not None else []


def _infer_task(model: Any) -> str | None:
    for name in _architectures(model):
        if name.endswith("ForSequenceClassification"):
            return "text-classification"
        if name.endswith("ForTokenClassification"):
            return "token-classification"
    return None


def pipeline(task: str | None = None, model: Any = None, **kwargs: Any) -> Pipeline:
    """``transformers.pipeline`` with the MUX-aware class for text and token classification.

    Args:
        task: ``"text-classification"`` (alias ``"sentiment-analysis"``), ``"token-classification"``
            (alias ``"ner"``), their ``"mux-*"`` names, or any other transformers task (passed through
            unchanged). When None, it is read from the model object's class or a local folder's
            ``config.json`` (``*ForSequenceClassification`` / ``*ForTokenClassification``); otherwise
            transformers infers it.
        model: a model object, a local folder or a Hub id (MUX or vanilla).
        **kwargs: everything ``transformers.pipeline`` takes (``tokenizer``, ``device``, ``batch_size``,
            ``top_k``, ``aggregation_strategy``, ...). An explicit ``pipeline_class`` is respected.

    Returns:
        A :class:`MuxTextClassificationPipeline` / :class:`MuxTokenClassificationPipeline` (the stock
        behaviour for vanilla models and N = 1), or the stock pipeline of any other task.

    Example::

        from mux_plms.pipelines import pipeline

        classifier = pipeline("text-classification", model=mux_model, tokenizer=tokenizer)
        classifier(texts)  # batches of 8 * N texts; text i shares its mux group with its N-1 neighbours
    """
    if task is None:
        task = _infer_task(model)
    if task in MUX_TASKS:
        stock_task, pipeline_class = MUX_TASKS[task]
        kwargs.setdefault("pipeline_class", pipeline_class)
        task = stock_task
    return transformers_pipeline(task, model=model, **kwargs)


register_pipelines()
