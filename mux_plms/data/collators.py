"""Collators for multiplexed pre-training: pad, batch to a multiple of N, choose retrieval targets, mask.

Every collator turns a list of tokenised examples (dicts with ``input_ids`` and optionally ``attention_mask`` and
``special_tokens_mask``) into a batch whose number of rows is a multiple of N: rows ``kN .. kN+N-1`` form mux
group k. Two ways to get there (pick one, both are explicit):

* **drop_last** (training): the data loader's batch size is ``mux_rows * N`` and ``drop_last=True``, so every
  batch is already full and no padding row is ever added;
* **pad** (evaluation, ``pad_to_multiple_of_instances=True``, the default): a short last batch is completed
  with empty rows (all padding, ``attention_mask`` 0, labels -100). They never count in a loss or a metric.

Randomness (retrieval targets, masking) comes from a generator seeded per batch. When the examples carry an
``example_index`` (the pre-training loop adds it), the seed is derived from ``(seed, epoch, example indices)``,
so a batch is the same whatever happened before it: resuming from a checkpoint, prefetching or data-loader
workers do not change it. Without ``example_index``, one generator seeded with `seed` is advanced per call.

Outputs (all ``torch.long``):

* :class:`RetrievalCollator` (stage 1): ``input_ids``, ``attention_mask``, ``retrieval_instance_ids``
  ``(rows / N, L)``: which instance of each group is asked for its token at each position, uniform in [0, N).
* :class:`MLMCollator` (stage 2, MUX-BERT): the above plus ``labels``; `mlm_probability` of the real,
  non-special tokens are selected; of those 80% become ``[MASK]``, 10% a random token, 10% stay (BERT).
* :class:`ElectraCollator` (stage 2, MUX-ELECTRA): the generator's inputs: 15% selected, 85% ``[MASK]``,
  15% unchanged, no random tokens (the MUX-PLMs ELECTRA recipe); ``labels`` hold the original tokens there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

INDEX_KEY = "example_index"


def _as_list(value) -> list[int]:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return list(value)


@dataclass
class MuxCollator:
    """Pad a list of examples into a batch whose size is a multiple of `num_instances`.

    Args:
        num_instances: N.
        pad_token_id: id used for padding positions and empty rows.
        special_token_ids: ids never selected for masking when the examples carry no ``special_tokens_mask``.
        seed: base seed of the per-batch generators.
        pad_to_multiple_of_instances: complete a short batch with empty rows (see the module docstring); if
            False, a batch whose size is not a multiple of N raises `ValueError`.
        max_length: refuse examples longer than this (None: no limit).
        epoch: part of the per-batch seed; the training loop sets it at the start of every epoch.
    """

    num_instances: int
    pad_token_id: int = 0
    special_token_ids: Sequence[int] = ()
    seed: int = 0
    pad_to_multiple_of_instances: bool = True
    max_length: int | None = None
    epoch: int = 0
    _fallback: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if isinstance(self.num_instances, bool) or not isinstance(self.num_instances, int) or self.num_instances < 1:
            raise ValueError(f"num_instances must be an integer >= 1, got {self.num_instances!r}")

    @classmethod
    def from_tokenizer(cls, tokenizer, num_instances: int, **kwargs):
        """Fill the token ids (padding, special tokens, and for masking collators ``[MASK]`` and the
        vocabulary size) from a transformers tokenizer."""
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: set tokenizer.pad_token before building a collator")
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        kwargs.setdefault("special_token_ids", tuple(tokenizer.all_special_ids))
        return cls(num_instances=num_instances, **kwargs)

    # ------------------------------------------------------------------------------------------ randomness
    def generator_for(self, features: Sequence[dict[str, Any]]) -> torch.Generator:
        """The generator of this batch: seeded from ``(seed, epoch, example indices)`` when every example
        carries ``example_index``; otherwise the collator's own generator (seeded once with `seed`)."""
        if features and all(INDEX_KEY in f for f in features):
            entropy = [int(self.seed), int(self.epoch) + 1] + [int(f[INDEX_KEY]) for f in features]
            state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
            return torch.Generator().manual_seed(int(state >> np.uint64(1)))
        if self._fallback is None:
            self._fallback = torch.Generator().manual_seed(int(self.seed))
        return self._fallback

    # ------------------------------------------------------------------------------------------ padding
    def pad(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``special_tokens_mask`` ``(rows, L)`` with rows a multiple of N."""
        if not features:
            raise ValueError("Cannot collate an empty list of examples")
        n = self.num_instances
        rows = len(features)
        if rows % n and not self.pad_to_multiple_of_instances:
            raise ValueError(
                f"A batch of {rows} examples is not a multiple of num_instances={n}: use a batch size of "
                "mux_rows * N with drop_last=True, or pad_to_multiple_of_instances=True"
            )
        padded_rows = rows + (-rows) % n
        ids = [_as_list(f["input_ids"]) for f in features]
        length = max(len(x) for x in ids)
        if length == 0:
            raise ValueError("Every example of the batch is empty (no input_ids)")
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"An example has {length} tokens, more than max_length={self.max_length}")
        input_ids = torch.full((padded_rows, length), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((padded_rows, length), dtype=torch.long)
        special = torch.ones((padded_rows, length), dtype=torch.long)
        special_ids = torch.tensor(sorted(set(self.special_token_ids)), dtype=torch.long)
        for row, (feature, tokens) in enumerate(zip(features, ids)):
            size = len(tokens)
            if size == 0:
                continue
            row_ids = torch.tensor(tokens, dtype=torch.long)
            input_ids[row, :size] = row_ids
            mask = feature.get("attention_mask")
            attention[row, :size] = torch.tensor(_as_list(mask), dtype=torch.long) if mask is not None else 1
            given = feature.get("special_tokens_mask")
            if given is not None:
                special[row, :size] = torch.tensor(_as_list(given), dtype=torch.long)
            else:
                special[row, :size] = torch.isin(row_ids, special_ids).long()
        special = special | (attention == 0).long()  # padding is never a masking candidate
        return {"input_ids": input_ids, "attention_mask": attention, "special_tokens_mask": special}

    def retrieval_instance_ids(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """``(rows / N, L)`` uniform in [0, N): the instance asked at each (group, position)."""
        rows, length = batch["input_ids"].shape
        return torch.randint(0, self.num_instances, (rows // self.num_instances, length), generator=generator)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        generator = self.generator_for(features)
        batch = self.pad(features)
        batch.pop("special_tokens_mask")
        batch["retrieval_instance_ids"] = self.retrieval_instance_ids(batch, generator)
        return batch


@dataclass
class RetrievalCollator(MuxCollator):
    """Stage 1 (token retrieval): padded inputs plus random ``retrieval_instance_ids``."""


@dataclass
class MLMCollator(MuxCollator):
    """Masked language modelling on each instance, plus ``retrieval_instance_ids`` for the auxiliary loss.

    Args:
        mask_token_id, vocab_size: the ``[MASK]`` id and the size of the vocabulary random tokens come from.
        mlm_probability: fraction of real, non-special tokens selected for prediction (at least 0, at most 1).
        mask_replace_prob: of the selected tokens, fraction replaced by ``[MASK]``.
        random_replace_prob: of the selected tokens, fraction replaced by a random token (the rest stay).
    """

    mask_token_id: int | None = None
    vocab_size: int | None = None
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.mask_token_id is None:
            raise ValueError(f"{type(self).__name__} needs mask_token_id (the tokenizer's [MASK] id)")
        if not 0.0 <= self.mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must lie in [0, 1], got {self.mlm_probability}")
        if (
            self.mask_replace_prob < 0
            or self.random_replace_prob < 0
            or self.mask_replace_prob + self.random_replace_prob > 1
        ):
            raise ValueError(
                "mask_replace_prob and random_replace_prob must be >= 0 and sum to at most 1, got "
                f"{self.mask_replace_prob} and {self.random_replace_prob}"
            )
        if self.random_replace_prob > 0 and not self.vocab_size:
            raise ValueError("random_replace_prob > 0 needs vocab_size (random tokens are drawn from it)")

    @classmethod
    def from_tokenizer(cls, tokenizer, num_instances: int, **kwargs):
        if tokenizer.mask_token_id is None:
            raise ValueError("The tokenizer has no [MASK] token, which masked language modelling needs")
        kwargs.setdefault("mask_token_id", tokenizer.mask_token_id)
        kwargs.setdefault("vocab_size", len(tokenizer))
        return super().from_tokenizer(tokenizer, num_instances, **kwargs)

    def mask(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Select and corrupt tokens; returns the batch with corrupted ``input_ids`` and ``labels``."""
        input_ids = batch["input_ids"]
        candidates = batch.pop("special_tokens_mask") == 0
        probabilities = torch.full(input_ids.shape, float(self.mlm_probability))
        selected = torch.bernoulli(probabilities, generator=generator).bool() & candidates
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        draw = torch.rand(input_ids.shape, generator=generator)
        to_mask = selected & (draw < self.mask_replace_prob)
        to_random = (
            selected & (draw >= self.mask_replace_prob) & (draw < self.mask_replace_prob + self.random_replace_prob)
        )
        corrupted = input_ids.masked_fill(to_mask, self.mask_token_id)
        if self.random_replace_prob > 0:
            random_tokens = torch.randint(0, int(self.vocab_size), input_ids.shape, generator=generator)
            corrupted = torch.where(to_random, random_tokens, corrupted)
        batch["input_ids"] = corrupted
        batch["labels"] = labels
        return batch

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        generator = self.generator_for(features)
        batch = self.mask(self.pad(features), generator)
        batch["retrieval_instance_ids"] = self.retrieval_instance_ids(batch, generator)
        return batch


@dataclass
class ElectraCollator(MLMCollator):
    """The generator's masking for MUX-ELECTRA: 85% ``[MASK]``, 15% unchanged, no random tokens."""

    mask_replace_prob: float = 0.85
    random_replace_prob: float = 0.0


__all__ = ["INDEX_KEY", "MuxCollator", "RetrievalCollator", "MLMCollator", "ElectraCollator"]
