"""Synchronous core of serving: validate texts, group them by length into mux groups of N, run the model
once per batch of whole groups, and give every text its own result.

The grouping is the ``examples`` length grouping of evaluation (:func:`mux_plms.training.finetune.eval_batches`):
the texts of one batch are sorted by token length (stable), so each mux group of N consecutive rows holds
texts of similar length and the group's union attention mask covers little padding. A batch whose size is not
a multiple of N is completed by the model's internal padding (empty instances), as for any forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

TASKS = ("text-classification", "token-classification")


class RequestError(ValueError):
    """A request the server rejects (HTTP 400): empty text, over-long text, wrong type."""


@dataclass
class Prediction:
    """The result of one request. Sequence models: `label` and `scores` (softmax over the labels, by name).
    Token models: `tokens` (word pieces, special tokens excluded) with one `token_labels` entry each, and
    `scores` as the per-token probability of the predicted label."""

    label: str | None = None
    scores: dict[str, float] | list[float] = field(default_factory=dict)
    tokens: list[str] | None = None
    token_labels: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (keys with None values left out)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _task_of(model) -> str:
    name = type(model).__name__
    if name.endswith("ForTokenClassification"):
        return "token-classification"
    if name.endswith("ForSequenceClassification"):
        return "text-classification"
    raise ValueError(f"serving needs a *ForSequenceClassification or *ForTokenClassification model; got {name}")


def max_text_tokens(model) -> int:
    """Most tokens (special tokens included) one text may have: the model's position table minus the
    positions the demultiplexer prepends (`prefix_length`)."""
    from mux_plms.models.demultiplexing import prefix_length

    config = model.config
    prefix = prefix_length(config) if hasattr(config, "num_instances") and hasattr(config, "demuxing_variant") else 0
    return int(config.max_position_embeddings) - prefix


class MuxPredictor:
    """Turns lists of texts into :class:`Prediction` objects with one forward pass per batch of whole
    mux groups. Not thread-safe by itself: :class:`~mux_plms.serving.MuxBatcher` calls it from one thread.

    Args:
        model: a (MUX or vanilla) sequence- or token-classification model.
        tokenizer: its tokenizer.
        max_batch_size: rows per forward pass; a multiple of N (mux rows x N). Default ``8 * N``.
        ensemble: use ``model.forward_ensemble`` (each text visits every slot; about N times the cost).
        device: where to run (default: the model's device).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        max_batch_size: int | None = None,
        ensemble: bool = False,
        device: str | torch.device | None = None,
    ) -> None:
        self.task = _task_of(model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.num_instances = int(getattr(model.config, "num_instances", 1))
        self.max_batch_size = int(max_batch_size or 8 * self.num_instances)
        if self.max_batch_size < 1 or self.max_batch_size % self.num_instances:
            raise ValueError(
                f"max_batch_size must be a positive multiple of N={self.num_instances} (whole mux groups); "
                f"got {self.max_batch_size}"
            )
        if ensemble and not hasattr(model, "forward_ensemble"):
            raise ValueError(f"ensemble=True needs a MUX model with forward_ensemble; got {type(model).__name__}")
        self.ensemble = ensemble
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.max_tokens = max_text_tokens(model)
        id2label = getattr(model.config, "id2label", None) or {}
        self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(model.config.num_labels)]

    # --- validation -----------------------------------------------------------------------------
    def encode(self, text: Any) -> dict[str, list[int]]:
        """Tokenize one text, or raise :class:`RequestError` (wrong type, empty, longer than the model allows)."""
        if not isinstance(text, str):
            raise RequestError(f"'text' must be a string; got {type(text).__name__}")
        if not text.strip():
            raise RequestError("'text' is empty: send at least one non-space character")
        features = self.tokenizer(text, truncation=False)
        length = len(features["input_ids"])
        if length > self.max_tokens:
            raise RequestError(
                f"text has {length} tokens (special tokens included) but this model takes at most "
                f"{self.max_tokens} (max_position_embeddings={self.model.config.max_position_embeddings} minus "
                f"the demultiplexer's prefix): shorten the text"
            )
        return dict(features)

    # --- batching -------------------------------------------------------------------------------
    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Row indices of each forward pass: texts sorted by length (stable), cut into batches of
        `max_batch_size` rows (whole mux groups of similar-length texts)."""
        from mux_plms.training.finetune import eval_batches

        return eval_batches(lengths, self.max_batch_size, self.num_instances, "examples")

    def pad(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Pad a list of tokenized texts into model inputs on the model's device."""
        keep = ("input_ids", "attention_mask", "token_type_ids")
        padded = self.tokenizer.pad([{k: f[k] for k in keep if k in f} for f in features], return_tensors="pt")
        return {k: v.to(self.device) for k, v in padded.items() if k in keep}

    @torch.inference_mode()
    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The forward pass (or the ensemble) over one padded batch."""
        if self.ensemble:
            return self.model.forward_ensemble(**inputs)
        return self.model(**inputs).logits

    def predict_features(self, features: list[dict[str, list[int]]]) -> list[Prediction]:
        """Predictions for already validated features, in input order."""
        results: list[Prediction | None] = [None] * len(features)
        for indices in self.batches([len(f["input_ids"]) for f in features]):
            inputs = self.pad([features[i] for i in indices])
            logits = self.logits(inputs).float().cpu()
            for row, index in enumerate(indices):
                results[index] = self._result(features[index], logits[row])
        return results  # type: ignore[return-value]

    def predict(self, texts: Sequence[Any]) -> list[Prediction]:
        """Validate every text (raising :class:`RequestError` on the first bad one), then predict."""
        return self.predict_features([self.encode(t) for t in texts])

    def _result(self, features: dict[str, list[int]], logits: torch.Tensor) -> Prediction:
        probs = logits.softmax(-1)
        if self.task == "text-classification":
            return Prediction(
                label=self.labels[int(probs.argmax())],
                scores={name: float(p) for name, p in zip(self.labels, probs.tolist())},
            )
        ids = features["input_ids"]
        special = set(self.tokenizer.all_special_ids)
        keep = [j for j, t in enumerate(ids) if t not in special]
        best = probs[: len(ids)].max(-1)
        return Prediction(
            tokens=self.tokenizer.convert_ids_to_tokens([ids[j] for j in keep]),
            token_labels=[self.labels[int(best.indices[j])] for j in keep],
            scores=[float(best.values[j]) for j in keep],
        )
