"""ELECTRA pre-training for MUX-ELECTRA: a generator and a multiplexed discriminator trained together.

:class:`MuxElectraPretrainingPair` is a training-side module (not a Hub class): its ``forward`` takes the
generator's masked inputs, lets the generator predict the masked tokens, samples replacements, and asks
the multiplexed discriminator which tokens of the corrupted inputs were replaced.
:func:`load_electra_preset` builds the two configurations of a size preset (``mux_plms/configs/electra_*.json``).

Example:

```python
>>> from mux_plms.training.electra import MuxElectraPretrainingPair
>>> pair = MuxElectraPretrainingPair.from_preset("tiny", num_instances=2)
>>> out = pair(input_ids, attention_mask=attention_mask, labels=mlm_labels)  # doctest: +SKIP
>>> out.loss.backward()  # doctest: +SKIP
>>> pair.save_pretrained("electra-out")  # discriminator in electra-out/, generator in electra-out/generator/
```
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..models import MuxElectraConfig, MuxElectraForMaskedLM, MuxElectraForPreTraining

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"
ELECTRA_PRESETS = ("tiny", "small", "base", "large")
PAIR_FILE = "electra_pair.json"
GENERATOR_SUBFOLDER = "generator"
# Fields that must agree for the generator and the discriminator to share one embedding module.
_SHARED_EMBEDDING_FIELDS = (
    "vocab_size",
    "embedding_size",
    "max_position_embeddings",
    "type_vocab_size",
    "pad_token_id",
)


@dataclass
class MuxElectraPretrainingOutput(ModelOutput):
    """Output of :class:`MuxElectraPretrainingPair`.

    Args:
        loss: ``generator_loss + g_coeff * generator_retrieval_loss + discriminator_weight * rtd_loss
            + d_coeff * retrieval_loss`` (the retrieval coefficients are each model's ``retrieval_loss_coeff``;
            absent terms count as 0).
        generator_loss: the generator's MLM loss at the masked positions.
        rtd_loss: the discriminator's replaced-token-detection loss (binary cross-entropy over real tokens).
        retrieval_loss: the discriminator's token-retrieval loss (None when its coefficient is 0).
        generator_retrieval_loss: the generator's token-retrieval loss (None when its coefficient is 0).
        rtd_accuracy: fraction of real tokens the discriminator labels correctly (logit > 0 = replaced).
        replaced_fraction: fraction of real tokens actually replaced (a sample equal to the original counts as
            original); predicting "original" everywhere scores ``1 - replaced_fraction``.
        logits: the discriminator's logits ``(batch, seq_len)``.
        corrupted_input_ids: what the discriminator saw ``(batch, seq_len)``.
        replaced: ``(batch, seq_len)`` bool, True where the discriminator's input differs from the original.
    """

    loss: torch.FloatTensor | None = None
    generator_loss: torch.FloatTensor | None = None
    rtd_loss: torch.FloatTensor | None = None
    retrieval_loss: torch.FloatTensor | None = None
    generator_retrieval_loss: torch.FloatTensor | None = None
    rtd_accuracy: torch.FloatTensor | None = None
    replaced_fraction: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    corrupted_input_ids: torch.LongTensor | None = None
    replaced: torch.BoolTensor | None = None


class MuxElectraPretrainingPair(nn.Module):
    """A generator (`MuxElectraForMaskedLM`) and a multiplexed discriminator (`MuxElectraForPreTraining`).

    ``forward`` runs the ELECTRA objective on one batch:

    1. the generator predicts the masked tokens (``labels != -100``) of ``input_ids``;
    2. a replacement is sampled at each masked position from the generator's distribution (no gradient
       flows through the sampling); a sample equal to the original token counts as "original";
    3. the discriminator sees the corrupted inputs, multiplexed N at a time, and predicts per instance and
       token whether it was replaced; its token-retrieval loss is added when its coefficient is positive.

    Sampling uses, in training, the `torch.Generator` passed to ``forward`` (``rng``), else the one given to
    the constructor (``sampling_generator``), else the global RNG. In eval mode it is deterministic: the
    ``rng`` passed to ``forward`` if any, else a fresh generator seeded with ``eval_seed`` on every call.

    **Generator multiplexing (our choice: multiplexed, same N as the discriminator, as in MUX-PLMs).** Any
    `MuxElectraForMaskedLM` is accepted: with ``num_instances = 1`` it is an ordinary (un-multiplexed)
    generator. Cost per example (multiply-adds per token, ELECTRA paper sizes, retrieval heads left out):
    discriminator encoder ``D / N``, generator encoder ``G / N`` if multiplexed or ``G`` if not, and the
    generator's vocabulary projection at the 15% masked positions, per instance either way. Small:
    D = 9.4 M, G = 0.59 M, projection 0.59 M; base: D = 85 M, G = 9.4 M, projection 3.5 M. An
    un-multiplexed generator therefore adds to the pair's compute +5% / +18% / +33% at N = 2 / 5 / 10
    (small) and +9% / +34% / +65% (base): it caps the pre-training speed-up of large N. The price of
    multiplexing it is a weaker generator (its predictions go through the demultiplexer), i.e. somewhat
    easier replacements; ELECTRA already prefers small, weak generators (1/4 to 1/3 of the discriminator).

    **Shared embeddings.** When the two configurations agree on ``vocab_size``, ``embedding_size``,
    ``max_position_embeddings``, ``type_vocab_size`` and ``pad_token_id`` (true for every preset), the
    generator uses the discriminator's embedding module (word, position and token-type tables and their
    LayerNorm), and the generator's decoder stays tied to those word embeddings (``share_embeddings=False``
    keeps them separate).

    Args:
        generator: the MLM generator.
        discriminator: the multiplexed discriminator.
        discriminator_weight: weight of the replaced-token-detection loss (ELECTRA: 50).
        share_embeddings: share the embedding module when the sizes allow.
        temperature: sampling temperature of the generator's distribution (> 0).
        sampling_generator: default `torch.Generator` for sampling in training.
        eval_seed: seed of the sampler in eval mode.
    """

    def __init__(
        self,
        generator: MuxElectraForMaskedLM,
        discriminator: MuxElectraForPreTraining,
        discriminator_weight: float = 50.0,
        share_embeddings: bool = True,
        temperature: float = 1.0,
        sampling_generator: torch.Generator | None = None,
        eval_seed: int = 0,
    ):
        super().__init__()
        if not isinstance(generator, MuxElectraForMaskedLM):
            raise ValueError(f"generator must be a MuxElectraForMaskedLM, got {type(generator).__name__}")
        if not isinstance(discriminator, MuxElectraForPreTraining):
            raise ValueError(f"discriminator must be a MuxElectraForPreTraining, got {type(discriminator).__name__}")
        if generator.config.vocab_size != discriminator.config.vocab_size:
            raise ValueError(
                "The generator and the discriminator must share a vocabulary: vocab_size "
                f"{generator.config.vocab_size} != {discriminator.config.vocab_size}"
            )
        if discriminator_weight < 0:
            raise ValueError(f"discriminator_weight must be >= 0, got {discriminator_weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.generator = generator
        self.discriminator = discriminator
        self.discriminator_weight = float(discriminator_weight)
        self.temperature = float(temperature)
        self.sampling_generator = sampling_generator
        self.eval_seed = int(eval_seed)
        self.embeddings_shared = False
        if share_embeddings and embeddings_can_be_shared(generator.config, discriminator.config):
            generator.electra.embeddings = discriminator.electra.embeddings
            generator.tie_weights()  # re-tie the generator's decoders to the (now shared) word embeddings
            self.embeddings_shared = True

    # ------------------------------------------------------------------------------------------ build

    @classmethod
    def from_configs(
        cls, generator_config: MuxElectraConfig, discriminator_config: MuxElectraConfig, **kwargs
    ) -> MuxElectraPretrainingPair:
        """A freshly initialised pair."""
        return cls(MuxElectraForMaskedLM(generator_config), MuxElectraForPreTraining(discriminator_config), **kwargs)

    @classmethod
    def from_preset(
        cls,
        name: str,
        generator: dict | None = None,
        discriminator: dict | None = None,
        pair_kwargs: dict | None = None,
        **overrides,
    ) -> MuxElectraPretrainingPair:
        """A freshly initialised pair of preset `name` (see :func:`load_electra_preset` for the overrides)."""
        generator_config, discriminator_config = load_electra_preset(
            name, generator=generator, discriminator=discriminator, **overrides
        )
        return cls.from_configs(generator_config, discriminator_config, **(pair_kwargs or {}))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs) -> MuxElectraPretrainingPair:
        """Load a pair saved by :meth:`save_pretrained`; `kwargs` override the saved pair settings."""
        directory = Path(directory)
        settings = {}
        if (directory / PAIR_FILE).exists():
            settings = json.loads((directory / PAIR_FILE).read_text())
        settings.update(kwargs)
        discriminator = MuxElectraForPreTraining.from_pretrained(directory)
        generator = MuxElectraForMaskedLM.from_pretrained(directory / GENERATOR_SUBFOLDER)
        return cls(generator, discriminator, **settings)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the discriminator at `save_directory` (a regular model folder: fine-tune it with
        ``MuxElectraForSequenceClassification.from_pretrained(save_directory)``), the generator at
        ``save_directory/generator`` and the pair's settings in ``electra_pair.json``."""
        save_directory = Path(save_directory)
        self.discriminator.save_pretrained(save_directory, **kwargs)
        self.generator.save_pretrained(save_directory / GENERATOR_SUBFOLDER, **kwargs)
        settings = {
            "discriminator_weight": self.discriminator_weight,
            "temperature": self.temperature,
            "share_embeddings": self.embeddings_shared,
            "eval_seed": self.eval_seed,
        }
        (save_directory / PAIR_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    # ---------------------------------------------------------------------------------------- forward

    def sample(self, logits: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """One token per row of `logits` ``(M, vocab)`` from ``softmax(logits / temperature)``.

        Inverse-CDF sampling: one uniform number per row (drawn on `rng`'s device) located in the row's
        cumulative distribution; exact, and on CPU several times faster than `torch.multinomial` over a
        30k vocabulary."""
        if logits.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=logits.device)
        if rng is None and not self.training:
            rng = torch.Generator(device=logits.device).manual_seed(self.eval_seed)
        device = rng.device if rng is not None else logits.device
        cdf = torch.softmax(logits.float() / self.temperature, dim=-1).double().cumsum(dim=-1)
        uniform = torch.rand(logits.shape[0], 1, generator=rng, device=device, dtype=torch.float64).to(cdf.device)
        index = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)
        return index.squeeze(-1).clamp(max=logits.shape[-1] - 1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        retrieval_instance_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        rng: torch.Generator | None = None,
    ) -> MuxElectraPretrainingOutput:
        r"""
        input_ids: ``(batch, seq_len)`` the generator's inputs ([MASK] at most masked positions).
        attention_mask: ``(batch, seq_len)``, 0 at padding (default: all ones).
        labels: ``(batch, seq_len)`` MLM labels: the original token at masked positions, -100 elsewhere.
        retrieval_instance_ids: ``(ceil(batch / N), seq_len)`` for the discriminator's retrieval loss (and the
            generator's when it has the same N); default ``(group + position) mod N``.
        rng: `torch.Generator` for the sampling of this call (see the class docstring).
        """
        if labels is None:
            raise ValueError(
                "labels are required: the MLM labels of the generator (original token at masked positions, "
                "-100 elsewhere)"
            )
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        masked = labels != -100
        same_n = self.generator.config.num_instances == self.discriminator.config.num_instances
        generated = self.generator(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            labels=labels,
            retrieval_instance_ids=retrieval_instance_ids if same_n else None,
            logits_at_labels_only=True,
        )
        with torch.no_grad():
            sampled = self.sample(generated.logits.detach(), rng if rng is not None else self._training_rng())
            corrupted = input_ids.clone()
            corrupted[masked] = sampled
            original = torch.where(masked, labels, input_ids)
            replaced = masked & (corrupted != original)
            real = attention_mask.bool()
            rtd_labels = replaced.long().masked_fill(~real, -100)
        judged = self.discriminator(
            input_ids=corrupted,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            labels=rtd_labels,
            retrieval_instance_ids=retrieval_instance_ids,
        )
        loss = generated.task_loss + self.discriminator_weight * judged.task_loss
        if generated.retrieval_loss is not None:
            loss = loss + self.generator.config.retrieval_loss_coeff * generated.retrieval_loss
        if judged.retrieval_loss is not None:
            loss = loss + self.discriminator.config.retrieval_loss_coeff * judged.retrieval_loss
        with torch.no_grad():
            num_real = real.sum().clamp(min=1)
            correct = ((judged.logits > 0) == replaced) & real
            rtd_accuracy = correct.sum() / num_real
            replaced_fraction = (replaced & real).sum() / num_real
        return MuxElectraPretrainingOutput(
            loss=loss,
            generator_loss=generated.task_loss,
            rtd_loss=judged.task_loss,
            retrieval_loss=judged.retrieval_loss,
            generator_retrieval_loss=generated.retrieval_loss,
            rtd_accuracy=rtd_accuracy,
            replaced_fraction=replaced_fraction,
            logits=judged.logits,
            corrupted_input_ids=corrupted,
            replaced=replaced,
        )

    def _training_rng(self) -> torch.Generator | None:
        return self.sampling_generator if self.training else None


def embeddings_can_be_shared(generator_config, discriminator_config) -> bool:
    """True when both models' embedding modules have the same shapes and padding id."""
    return all(getattr(generator_config, f) == getattr(discriminator_config, f) for f in _SHARED_EMBEDDING_FIELDS)


# -------------------------------------------------------------------------------------------- presets


def electra_preset_path(name: str | os.PathLike) -> Path:
    """Path of preset `name` (one of :data:`ELECTRA_PRESETS`) or of a JSON file of the same format."""
    if str(name) in ELECTRA_PRESETS:
        return PRESET_DIR / f"electra_{name}.json"
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return path
    raise ValueError(
        f"Unknown ELECTRA preset {str(name)!r}: choose one of {', '.join(ELECTRA_PRESETS)} or a JSON file path"
    )


def load_electra_preset(
    name: str | os.PathLike,
    generator: dict | None = None,
    discriminator: dict | None = None,
    **overrides,
) -> tuple[MuxElectraConfig, MuxElectraConfig]:
    """``(generator_config, discriminator_config)`` of an ELECTRA preset.

    Presets (``mux_plms/configs/electra_<name>.json``, each ``{"discriminator": {...}, "generator": {...}}``):
    ``tiny`` (tests), ``small``, ``base``, ``large`` (the ELECTRA paper's sizes and generator sizes: 1/4, 1/3
    and 1/4 of the discriminator's hidden size, FFN size and attention heads, same depth, same embedding
    size so the embeddings are shared).

    Args:
        name: a preset name or the path of a JSON file in the same format.
        generator, discriminator: overrides for one of the two configurations only.
        overrides: applied to both configurations first (e.g. ``vocab_size``, ``num_instances``,
            ``muxing_variant``, ``demuxing_variant``).
    """
    data = json.loads(electra_preset_path(name).read_text())
    missing = {"discriminator", "generator"} - data.keys()
    if missing:
        raise ValueError(f"ELECTRA preset {str(name)!r} lacks the section(s) {sorted(missing)}")
    generator_config = MuxElectraConfig(**{**data["generator"], **overrides, **(generator or {})})
    discriminator_config = MuxElectraConfig(**{**data["discriminator"], **overrides, **(discriminator or {})})
    return generator_config, discriminator_config


__all__ = [
    "ELECTRA_PRESETS",
    "MuxElectraPretrainingOutput",
    "MuxElectraPretrainingPair",
    "electra_preset_path",
    "embeddings_can_be_shared",
    "load_electra_preset",
]
