"""Backbone-independent plumbing of multiplexed encoders and their task models.

A backbone (BERT, ELECTRA, ...) provides two methods, ``embed`` (token ids -> per-instance
embeddings) and ``encode`` (mixtures -> mixed hidden states); :class:`MultiplexedEncoderMixin`
does the rest: grouping, internal padding, prefixes, the union mask, multiplexing and
demultiplexing. :class:`MuxTaskMixin` holds the losses shared by every task model.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import PreTrainedConfig
from transformers import initialization as init

from .demultiplexing import (
    Demultiplexer,
    LegacyRSADemultiplexer,
    MLPDemultiplexer,
    PrefixDemultiplexer,
    RSADemultiplexer,
)
from .heads import TokenClassificationHead, build_sequence_classification_head, build_vocabulary_head
from .modeling_outputs import MuxModelOutput, MuxTaskOutput
from .multiplexing import Multiplexer, fix_empty_rows

logger = logging.getLogger(__name__)
_stock_pipeline_warned = False  # warn_if_run_by_stock_pipeline: once per process


@dataclass
class MuxBatch:
    """Book-keeping of one multiplexed forward pass."""

    batch_size: int  # rows the caller passed
    padded_size: int  # rows after internal padding (a multiple of N)
    num_instances: int
    prefix_length: int
    input_ids: torch.Tensor | None  # (padded, prefix + L), prefix included
    attention_mask: torch.Tensor  # (padded, prefix + L), prefix positions are 1
    truncated_positions: int = 0  # trailing input positions dropped by legacy_prefix_truncate

    @property
    def num_groups(self) -> int:
        return self.padded_size // self.num_instances

    @property
    def seq_length(self) -> int:
        return self.attention_mask.shape[1] - self.prefix_length

    def ignore_truncated(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """`labels` with the positions dropped by ``legacy_prefix_truncate`` set to -100 (never predicted)."""
        if labels is None or not self.truncated_positions:
            return labels
        labels = labels.clone()
        labels[:, -self.truncated_positions :] = -100
        return labels


class LegacyInputRewrite:
    """Input rewrites of the original implementation (``legacy_*`` options), applied by
    :meth:`MultiplexedEncoderMixin.prepare_mux_batch` before internal padding and the prefix.

    * ``legacy_rsa_cls_token_id``: position 0 of every input becomes this token;
    * ``legacy_ignore_token_type_ids``: ``token_type_ids`` are dropped (every position gets type 0);
    * ``legacy_prefix_truncate``: the last `prefix length` positions are dropped, so that prefix + input
      keep the input's length.
    """

    def __init__(self, cls_token_id: int | None, ignore_token_type_ids: bool, truncate: int):
        self.cls_token_id = cls_token_id
        self.ignore_token_type_ids = ignore_token_type_ids
        self.truncate = truncate

    @classmethod
    def from_config(cls, config, prefix_length: int) -> LegacyInputRewrite | None:
        """The rewrite `config` asks for, or None (every option off: nothing runs per forward)."""
        truncate = prefix_length if getattr(config, "legacy_prefix_truncate", False) else 0
        cls_token_id = getattr(config, "legacy_rsa_cls_token_id", None)
        ignore_token_type_ids = getattr(config, "legacy_ignore_token_type_ids", False)
        if cls_token_id is None and not ignore_token_type_ids and not truncate:
            return None
        return cls(cls_token_id, ignore_token_type_ids, truncate)

    def __call__(self, input_ids, attention_mask, token_type_ids):
        if self.cls_token_id is not None and input_ids is not None:
            input_ids = input_ids.clone()
            input_ids[:, 0] = self.cls_token_id
        if self.ignore_token_type_ids:
            token_type_ids = None
        if self.truncate:
            keep = attention_mask.shape[1] - self.truncate
            if keep < 1:
                raise ValueError(
                    f"legacy_prefix_truncate drops the last {self.truncate} positions of every input; inputs of "
                    f"length {attention_mask.shape[1]} would keep none"
                )
            input_ids, attention_mask, token_type_ids = (
                t if t is None else t[:, :keep] for t in (input_ids, attention_mask, token_type_ids)
            )
        return input_ids, attention_mask, token_type_ids


def warn_if_run_by_stock_pipeline(num_instances: int) -> None:
    """Warn once per process when a transformers pipeline that is not MUX-aware runs a multiplexed model with
    a batch size that is not a multiple of N (its default is 1: each input alone in its mux group).

    Called by forward passes without gradients that pad a group with empty instances. Returns at once when
    transformers' pipelines are not loaded; otherwise looks for the pipeline in the calling frames (nothing is
    imported: these files import nothing outside transformers, for remote code). Pipelines with a true
    ``_mux_aware`` attribute (:mod:`mux_plms.pipelines`) keep groups whole and are left alone."""
    global _stock_pipeline_warned
    if _stock_pipeline_warned or "transformers.pipelines.base" not in sys.modules or torch.compiler.is_compiling():
        return
    pipe, batch_size = None, 1
    frame = sys._getframe(1)
    for _ in range(64):
        frame = frame.f_back
        if frame is None:
            break
        module, name = frame.f_globals.get("__name__", ""), frame.f_code.co_name
        if pipe is None and name == "forward" and module == "transformers.pipelines.base":
            pipe = frame.f_locals.get("self")
        elif pipe is not None and name == "__next__" and module == "transformers.pipelines.pt_utils":
            batch_size = getattr(frame.f_locals.get("self"), "loader_batch_size", None) or 1
            break
    if pipe is None or getattr(pipe, "_mux_aware", False) or batch_size % num_instances == 0:
        return
    _stock_pipeline_warned = True
    logger.warning(
        "%s (num_instances=%d) runs in the stock %s with batch_size=%d, not a multiple of %d: mux groups are left "
        "partly empty (batch_size=1: every input alone, no speed-up) and outputs differ from a batched forward of "
        "the same inputs (an input's output depends on the inputs sharing its group). Use "
        "mux_plms.pipelines.pipeline(...) (whole groups, 8*N inputs per batch) or a batch_size multiple of %d.",
        type(getattr(pipe, "model", None)).__name__,
        num_instances,
        type(pipe).__name__,
        batch_size,
        num_instances,
        num_instances,
    )


def pad_rows(tensor: torch.Tensor | None, rows: int, value) -> torch.Tensor | None:
    """Append `rows` rows filled with `value` (internal padding with empty instances)."""
    if tensor is None or rows == 0:
        return tensor
    filler = tensor.new_full((rows, *tensor.shape[1:]), value)
    return torch.cat([tensor, filler], dim=0)


class MultiplexedEncoderMixin:
    """Forward plumbing of a multiplexed base model.

    Requires ``self.config``, ``self.multiplexer``, ``self.demultiplexer``, ``self.embed(input_ids,
    token_type_ids, position_ids, inputs_embeds) -> (B, L, D)`` and ``self.encode(mixture (G, L, D),
    attention_mask (G, L), output_hidden_states) -> (hidden (G, L, H), all_hidden_states | None)``.
    ``position_mixing="shared"`` also needs ``self.embed_words`` (same arguments: what each instance
    contributes to the mixture) and ``self.embed_shared(mixture, token_type_ids, position_ids, N)``.
    """

    multiplexer: Multiplexer
    demultiplexer: Demultiplexer
    legacy_inputs: LegacyInputRewrite | None = None  # set by converted (legacy) models only

    def prepare_mux_batch(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        """Pad the batch to a multiple of N, prepend the demultiplexer's prefix, check lengths."""
        n = self.config.num_instances
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference.dim() != (2 if input_ids is not None else 3):
            raise ValueError(
                f"input_ids must be (batch, seq_len) and inputs_embeds (batch, seq_len, dim); got {tuple(reference.shape)}"
            )
        batch_size, seq_length = reference.shape[:2]
        if batch_size == 0 or seq_length == 0:
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(
                f"{name} has shape {tuple(reference.shape)}: a batch needs at least one row and one position "
                "(an empty batch or empty sequences, e.g. from an empty split or a zero --max_seq_length). "
                "Skip empty batches, and tokenize with at least the special tokens."
            )
        device = reference.device
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, seq_length, dtype=torch.long, device=device)
        if attention_mask.shape != (batch_size, seq_length):
            raise ValueError(
                f"attention_mask must have shape {(batch_size, seq_length)}, got {tuple(attention_mask.shape)}"
            )
        truncated = 0
        if self.legacy_inputs is not None:
            input_ids, attention_mask, token_type_ids = self.legacy_inputs(input_ids, attention_mask, token_type_ids)
            truncated, seq_length = seq_length - attention_mask.shape[1], attention_mask.shape[1]
        prefix_length = self.demultiplexer.prefix_length()
        total = prefix_length + seq_length
        limit = self.config.max_position_embeddings
        if position_ids is None and total > limit:
            extra = (
                f" ({prefix_length} prefix positions of the `prefix` demultiplexer included)" if prefix_length else ""
            )
            raise ValueError(
                f"Sequence length {seq_length}{extra} needs {total} positions, but the model's position table "
                f"has max_position_embeddings={limit}. Truncate the inputs to at most {limit - prefix_length} tokens."
            )
        padding_rows = (-batch_size) % n
        if padding_rows and not _stock_pipeline_warned and not torch.is_grad_enabled():
            warn_if_run_by_stock_pipeline(n)
        pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        input_ids = pad_rows(input_ids, padding_rows, pad_id)
        inputs_embeds = pad_rows(inputs_embeds, padding_rows, 0.0)
        attention_mask = pad_rows(attention_mask, padding_rows, 0)
        token_type_ids = pad_rows(token_type_ids, padding_rows, 0)
        if position_ids is not None and position_ids.shape[0] == batch_size:
            position_ids = pad_rows(position_ids, padding_rows, 0)
        padded = batch_size + padding_rows
        if prefix_length:
            if inputs_embeds is not None:
                raise ValueError(
                    "The `prefix` demultiplexer needs input_ids (it prepends prefix tokens); got inputs_embeds"
                )
            prefix = self.demultiplexer.prefix_ids(device).repeat(padded // n, 1)
            input_ids = torch.cat([prefix, input_ids], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(padded, prefix_length), attention_mask], dim=1)
            if token_type_ids is not None:
                token_type_ids = torch.cat([token_type_ids.new_zeros(padded, prefix_length), token_type_ids], dim=1)
            if position_ids is not None:
                raise ValueError("position_ids cannot be combined with the `prefix` demultiplexer")
        batch = MuxBatch(batch_size, padded, n, prefix_length, input_ids, attention_mask, truncated)
        return batch, input_ids, token_type_ids, position_ids, inputs_embeds

    def multiplex_encode(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states: bool = False,
    ):
        """Embed, multiplex and run the backbone once per mux group.

        Returns ``(mixed_hidden (G, P + L, H), MuxBatch, all_hidden_states | None)``.
        """
        batch, input_ids, token_type_ids, position_ids, inputs_embeds = self.prepare_mux_batch(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds
        )
        g, n = batch.num_groups, batch.num_instances
        mask = batch.attention_mask
        length = mask.shape[1]
        k = getattr(self.config, "instance_layers", 0)
        if k and not hasattr(self, "run_layers"):
            raise ValueError(f"instance_layers={k} is not supported by {type(self).__name__} (MUX-BERT only)")
        shared = getattr(self.config, "position_mixing", "keyed") == "shared"
        if shared and not hasattr(self, "embed_shared"):
            raise ValueError(f"position_mixing='shared' is not supported by {type(self).__name__} (MUX-BERT only)")
        embed = self.embed_words if shared else self.embed
        if self.multiplexer.streaming:
            # Embed and mix one instance slot at a time: the N-fold embeddings never exist.
            mixture = None
            slot_masks = mask.view(g, n, length)
            for index in range(n):
                slot = self._instance_slot(index, g, input_ids, token_type_ids, position_ids, inputs_embeds)
                embedded = embed(*slot)
                if k:  # combine first: the first k layers on this instance alone
                    embedded = self.run_layers(embedded, fix_empty_rows(slot_masks[:, index]).long(), 0, k)
                mixture = self.multiplexer(embedded, None, index=index, mixture=mixture)
        else:
            embeddings = embed(input_ids, token_type_ids, position_ids, inputs_embeds)
            if k:
                embeddings = self.run_layers(embeddings, fix_empty_rows(mask).long(), 0, k)
            mixture = self.multiplexer(embeddings.view(g, n, length, -1), mask.view(g, n, length))
        if shared:  # positions, token types, LayerNorm: once, on the mixture
            mixture = self.embed_shared(mixture, token_type_ids, position_ids, n)
        union_mask = fix_empty_rows(mask.view(g, n, length).any(dim=1)).long()
        if k:
            mixed, hidden_states = self.encode(mixture, union_mask, output_hidden_states, first_layer=k)
        else:
            mixed, hidden_states = self.encode(mixture, union_mask, output_hidden_states)
        return mixed, batch, hidden_states

    @staticmethod
    def _instance_slot(index, num_groups, input_ids, token_type_ids, position_ids, inputs_embeds):
        """The rows of instance slot `index` of every mux group (rows ``kN + index``) of each input."""

        def rows(t):
            return None if t is None else t.view(num_groups, -1, *t.shape[1:])[:, index]

        padded = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if position_ids is not None and position_ids.shape[0] == padded:
            position_ids = rows(position_ids)
        return rows(input_ids), rows(token_type_ids), position_ids, rows(inputs_embeds)

    def demultiplex(self, mixed: torch.Tensor, batch: MuxBatch, positions: torch.Tensor | None = None):
        """Per-instance states ``(batch_size, L_sel, H)`` (internal padding rows dropped)."""
        states = self.demultiplexer(mixed, positions)  # (G, N, L_sel, H)
        states = states.reshape(batch.padded_size, *states.shape[2:])[: batch.batch_size]
        if batch.truncated_positions and positions is None:  # legacy_prefix_truncate: zeros, back to input length
            states = nn.functional.pad(states, (0, 0, 0, batch.truncated_positions))
        return states


def default_retrieval_instance_ids(num_groups: int, seq_length: int, num_instances: int, device) -> torch.Tensor:
    """Deterministic choice of the instance asked at each (group, position): ``(g + j) mod N``.

    Every instance is asked equally often; collators pass random choices during training instead."""
    groups = torch.arange(num_groups, device=device)[:, None]
    positions = torch.arange(seq_length, device=device)[None, :]
    return (groups + positions) % num_instances


class MuxTaskMixin:
    """Losses and checks shared by every multiplexed task model.

    Requires ``self.config``, ``self.retrieval_head`` and ``self.mux_base`` (the base model)."""

    def sequence_states(self, mixed, batch, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """What each instance's sequence head reads, ``(batch, H)``: the demultiplexed first-token state
        (``config.sequence_pooling == "first"``; only that position is demultiplexed) or the mean of the
        instance's demultiplexed token states over its own tokens (``"mean"``; padding excluded)."""
        base = self.mux_base
        if getattr(self.config, "sequence_pooling", "first") == "mean":
            states = base.demultiplex(mixed, batch)  # (batch, L, H)
            if attention_mask is None:
                return states.mean(dim=1)
            mask = attention_mask[:, : states.shape[1]].to(states.dtype).unsqueeze(-1)
            return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        # the first input position (the legacy prefix's [CLS] slot for converted checkpoints)
        first = torch.full((1,), base.demultiplexer.sequence_position(), dtype=torch.long, device=mixed.device)
        return base.demultiplex(mixed, batch, first)[:, 0]  # only the position the head reads

    def retrieval_loss(self, mixed, batch: MuxBatch, retrieval_instance_ids=None):
        """Token-retrieval loss: from instance i's demuxed state at j, predict instance i's token at j.

        Padding positions and prefix positions are never asked. Returns ``(loss, logits (G, L, V))``."""
        if batch.input_ids is None:
            raise ValueError("The token-retrieval loss needs input_ids (its targets are the input tokens)")
        g, n, length = batch.num_groups, batch.num_instances, batch.seq_length
        device = mixed.device
        if retrieval_instance_ids is None:
            retrieval_instance_ids = default_retrieval_instance_ids(g, length, n, device)
        else:
            retrieval_instance_ids = retrieval_instance_ids.to(device)
            expected = ((batch.batch_size + n - 1) // n, length)
            if tuple(retrieval_instance_ids.shape) != expected:
                raise ValueError(
                    f"retrieval_instance_ids must have shape (ceil(batch / N), seq_len) = {expected}, "
                    f"got {tuple(retrieval_instance_ids.shape)}"
                )
            if retrieval_instance_ids.min() < 0 or retrieval_instance_ids.max() >= n:
                raise ValueError(f"retrieval_instance_ids must lie in [0, {n})")
        p = batch.prefix_length
        ids = batch.input_ids[:, p:].reshape(g, n, length)
        mask = batch.attention_mask[:, p:].reshape(g, n, length)
        index = retrieval_instance_ids[:, None, :]
        targets = ids.gather(1, index).squeeze(1)
        asked_real = mask.gather(1, index).squeeze(1).bool()
        targets = targets.masked_fill(~asked_real, -100)
        states = self.mux_base.demultiplexer.select(mixed, retrieval_instance_ids)
        logits = self.retrieval_head(states)
        loss = CrossEntropyLoss()(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return loss, logits

    def combine_losses(self, task_loss, retrieval_loss):
        """``task_loss_coeff * task + retrieval_loss_coeff * retrieval`` over the terms present."""
        terms = []
        if task_loss is not None and self.config.task_loss_coeff > 0:
            terms.append(self.config.task_loss_coeff * task_loss)
        if retrieval_loss is not None:
            terms.append(self.config.retrieval_loss_coeff * retrieval_loss)
        return sum(terms) if terms else None

    def wants_retrieval_loss(self, labels, retrieval_instance_ids) -> bool:
        """The retrieval loss is computed when it has a weight and a loss is asked for: labels or
        retrieval_instance_ids are given, or the task loss is off (the stage-1 retrieval model)."""
        if self.config.retrieval_loss_coeff <= 0:
            return False
        return labels is not None or retrieval_instance_ids is not None or self.config.task_loss_coeff == 0

    def sequence_classification_loss(self, logits, labels):
        config = self.config
        batch_size = logits.shape[0]
        integer = not labels.is_floating_point() and not labels.is_complex() and labels.dtype != torch.bool
        if config.problem_type is None:
            if config.num_labels == 1:
                config.problem_type = "regression"
            elif integer:  # any integer dtype (int8 ... int64, uint8) holds class ids
                config.problem_type = "single_label_classification"
            else:
                config.problem_type = "multi_label_classification"
        if config.problem_type == "regression":
            if labels.shape not in ((batch_size,), (batch_size, 1)) or config.num_labels != 1:
                if not (config.num_labels > 1 and labels.shape == (batch_size, config.num_labels)):
                    raise ValueError(
                        f"Regression labels must have shape ({batch_size},) (or ({batch_size}, num_labels)); "
                        f"got {tuple(labels.shape)}"
                    )
            if config.num_labels == 1:
                return MSELoss()(logits.squeeze(-1), labels.reshape(batch_size).to(logits.dtype))
            return MSELoss()(logits, labels.to(logits.dtype))
        if config.problem_type == "single_label_classification":
            if labels.shape != (batch_size,):
                raise ValueError(
                    f"Single-label classification labels must have shape ({batch_size},): one class id per "
                    f"input; got {tuple(labels.shape)}"
                )
            return CrossEntropyLoss()(logits, self.class_ids(labels, "Single-label classification labels"))
        if labels.shape != (batch_size, config.num_labels):
            raise ValueError(
                f"Multi-label classification labels must have shape ({batch_size}, {config.num_labels}); "
                f"got {tuple(labels.shape)}"
            )
        return BCEWithLogitsLoss()(logits, labels.to(logits.dtype))

    @staticmethod
    def check_token_labels(labels, shape):
        if tuple(labels.shape) != tuple(shape):
            raise ValueError(f"labels must have shape (batch, seq_len) = {tuple(shape)}, got {tuple(labels.shape)}")

    @staticmethod
    def class_ids(labels: torch.Tensor, what: str = "labels") -> torch.Tensor:
        """`labels` as the int64 class ids a cross-entropy loss takes: any integer dtype is accepted (int8 /
        int32 / uint8 data sets are converted); floats and booleans are refused with the fix named."""
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(
                f"{what} must be integer class ids (-100 where no prediction is asked), got dtype {labels.dtype}. "
                "Convert them to class ids (labels.long()) when they hold whole numbers; for scores use a "
                "regression head (num_labels=1, problem_type='regression')."
            )
        return labels if labels.dtype == torch.long else labels.long()


@torch.no_grad()
def init_mux_module(module: nn.Module, std: float) -> None:
    """Initialise the multiplexing modules (called from a model's ``_init_weights``)."""
    if isinstance(module, Multiplexer):
        module.reset_keys()
    if isinstance(module, PrefixDemultiplexer):
        init.copy_(module.prefix_token_ids, module.make_prefix_ids())  # non-persistent: rebuilt after meta init
    if isinstance(module, (RSADemultiplexer, LegacyRSADemultiplexer)):
        init.normal_(module.instance_keys, mean=0.0, std=1.0)
    if isinstance(module, MLPDemultiplexer):
        init.normal_(module.weight, mean=0.0, std=std)
        init.zeros_(module.bias)


class MuxPreTrainedMixin:
    """`from_pretrained` / `save_pretrained` behaviour shared by every multiplexed model family."""

    # Losses are per-batch means: let Trainer scale them for gradient accumulation.
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Like `PreTrainedModel.from_pretrained`; refuses an explicit `num_instances` that contradicts
        the checkpoint (its keys and demultiplexer are sized for its own N).

        A vanilla BERT checkpoint (``model_type`` ``bert``) is accepted: its backbone weights are
        loaded and the multiplexing modules and heads are freshly initialised (warm start)."""
        requested = kwargs.get("num_instances")
        if requested is not None and kwargs.get("config") is None:
            hub_kwargs = {
                k: kwargs[k]
                for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder", "force_download")
                if k in kwargs
            }
            saved, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            saved_n = saved.get("num_instances")
            if saved_n is not None and saved_n != requested:
                raise ValueError(
                    f"The checkpoint {pretrained_model_name_or_path!s} was trained with num_instances={saved_n}, "
                    f"but num_instances={requested} was requested. A multiplexed checkpoint only works at its own N; "
                    "drop the override or pick a checkpoint trained for that N."
                )
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    # Every Auto class -> "module.Class" of the remote-code files: the family's complete auto_map, set on each
    # class by the registration (mux_plms._registration, from the family table models/families.py).
    mux_auto_map: dict[str, str] = {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save safetensors weights, the config with a complete ``auto_map`` (every Auto class of the
        family, not only this one) and, when the classes are registered for remote code, the
        `models/` source files next to them."""
        if self.mux_auto_map and getattr(type(self), "_auto_class", None) is not None:
            self.config.auto_map = dict(self.mux_auto_map)
        return super().save_pretrained(save_directory, *args, **kwargs)

    #: ``(working_dir, repo_id) -> None``: writes the MUX model card into a folder about to be pushed. Injected by
    #: ``mux_plms._registration`` (the publishing layer); None for remote-code users, whose push keeps the
    #: generic README. These files import nothing outside this folder.
    push_card_writer = None

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        """Hook of transformers' `push_to_hub`, which calls it on the temporary folder it saved the model
        to, right after writing a generic README.md there: with the card writer injected (mux-plms installed),
        that README is replaced by the generated MUX model card."""
        writer = type(self).push_card_writer
        if writer is not None:
            writer(working_dir, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)


# ------------------------------------------------------------------------------------------------------
# Backbone-agnostic models. A family (BERT, ELECTRA, ...) combines these mixins with its own
# `PreTrainedModel` subclass, which builds the modules; the forward passes below never name a backbone.


class MultiplexedBaseModelMixin(MultiplexedEncoderMixin):
    """``forward`` of a multiplexed base model: demultiplexed per-instance states ``(batch, seq_len, hidden)``,
    a drop-in for `BertModel` / `ElectraModel`'s ``last_hidden_state``."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MuxModelOutput | tuple:
        mixed, batch, hidden_states = self.multiplex_encode(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, bool(output_hidden_states)
        )
        output = MuxModelOutput(
            last_hidden_state=self.demultiplex(mixed, batch),
            mixed_hidden_state=mixed,
            hidden_states=hidden_states,
        )
        return output if return_dict is not False else output.to_tuple()


class MuxTaskModelMixin(MuxTaskMixin):
    """Plumbing shared by every task model of every family: run the multiplexed base model, add the
    retrieval loss, build the `MuxTaskOutput`, ensembled inference.

    Requires ``self.mux_base`` (the base model), ``self.retrieval_head`` and ``self.config``. A family whose
    vocabulary heads work at another width than ``hidden_size`` names the config field in
    :attr:`vocabulary_width_field` (ELECTRA, ALBERT: ``"embedding_size"``)."""

    vocabulary_width_field: str | None = None

    def vocabulary_head(self, config):
        """A retrieval / MLM head for this family (decoder tied to the word embeddings by the model)."""
        width = getattr(config, self.vocabulary_width_field) if self.vocabulary_width_field else None
        return build_vocabulary_head(config, width)

    def _run(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states):
        return self.mux_base.multiplex_encode(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, bool(output_hidden_states)
        )

    def _output(self, logits, task_loss, mixed, batch, labels, retrieval_instance_ids, hidden_states, return_dict):
        retrieval_loss = retrieval_logits = None
        if self.wants_retrieval_loss(labels, retrieval_instance_ids):
            retrieval_loss, retrieval_logits = self.retrieval_loss(mixed, batch, retrieval_instance_ids)
        output = MuxTaskOutput(
            loss=self.combine_losses(task_loss, retrieval_loss),
            logits=logits,
            task_loss=task_loss,
            retrieval_loss=retrieval_loss,
            retrieval_logits=retrieval_logits,
            hidden_states=hidden_states,
        )
        return output if return_dict is not False else output.to_tuple()

    @torch.no_grad()
    def forward_ensemble(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs) -> torch.Tensor:
        """Ensembled inference: every example visits each of the N slots of its mux group once
        (N passes over the batch, i.e. about one un-multiplexed pass per example) and its N logits
        are averaged. Returns the averaged logits, one row per input, in input order."""
        n = self.config.num_instances
        reference = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        batch_size = reference.shape[0]
        groups = (batch_size + n - 1) // n
        rows = groups * n - batch_size
        pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        tensors = {
            "input_ids": pad_rows(input_ids, rows, pad_id),
            "attention_mask": pad_rows(attention_mask, rows, 0),
            "token_type_ids": pad_rows(token_type_ids, rows, 0),
            "inputs_embeds": pad_rows(kwargs.pop("inputs_embeds", None), rows, 0.0),
        }
        base = torch.arange(groups, device=reference.device)[:, None] * n
        total = None
        for shift in range(n):
            order = (base + (torch.arange(n, device=reference.device) + shift) % n).reshape(-1)
            inputs = {k: v[order] for k, v in tensors.items() if v is not None}
            logits = self(**inputs, **kwargs).logits
            restored = torch.empty_like(logits)
            restored[order] = logits
            total = restored if total is None else total + restored
        return (total / n)[:batch_size]


class MuxMaskedLMMixin(MuxTaskModelMixin):
    """A masked-LM task model: its ``lm_head`` and ``forward``, MLM over the demultiplexed states plus the
    auxiliary token-retrieval loss. With ``task_loss_coeff = 0`` and no labels it is the stage-1
    token-retrieval model (no MLM head computed). A family class is ``(MuxMaskedLMMixin, <family task
    model>)`` with its ``_tied_weights_keys``."""

    def __init__(self, config):
        super().__init__(config)
        self.lm_head = self.vocabulary_head(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        retrieval_instance_ids: torch.Tensor | None = None,
        logits_at_labels_only: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MuxTaskOutput | tuple:
        r"""
        labels: MLM targets ``(batch, seq_len)``, -100 where no prediction is asked.
        retrieval_instance_ids: ``(ceil(batch / N), seq_len)``: which instance of each mux group is asked
            for its token at each position by the retrieval loss (default: ``(group + position) mod N``).
        logits_at_labels_only: with labels, return logits only at labelled positions, packed as
            ``(num_labelled, vocab)`` in row-major order (saves the vocabulary projection elsewhere).
        """
        mixed, batch, hidden_states = self._run(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states
        )
        logits = task_loss = None
        if self.config.task_loss_coeff > 0 or labels is not None:
            states = self.mux_base.demultiplex(mixed, batch)
            if labels is not None:
                self.check_token_labels(labels, states.shape[:2])
                labels = batch.ignore_truncated(self.class_ids(labels, "MLM labels"))  # truncation: legacy only
            if logits_at_labels_only and labels is not None:
                selected = labels != -100
                logits = self.lm_head(states[selected])
                if selected.any():
                    task_loss = CrossEntropyLoss()(logits, labels[selected])
                else:
                    task_loss = logits.sum() * 0.0
            else:
                logits = self.lm_head(states)
                if labels is not None:
                    task_loss = CrossEntropyLoss()(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return self._output(logits, task_loss, mixed, batch, labels, retrieval_instance_ids, hidden_states, return_dict)


class MuxSequenceClassificationMixin(MuxTaskModelMixin):
    """A sequence classification / regression model: its ``classifier`` and ``forward`` on each instance's
    demultiplexed first-token state (or, with ``config.sequence_pooling="mean"``, the mean of its
    demultiplexed token states)."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.classifier = build_sequence_classification_head(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        retrieval_instance_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MuxTaskOutput | tuple:
        r"""
        labels: ``(batch,)`` class ids (single-label), ``(batch, num_labels)`` floats (multi-label), or
            ``(batch,)`` floats for regression (``num_labels == 1``).
        """
        mixed, batch, hidden_states = self._run(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states
        )
        logits = self.classifier(self.sequence_states(mixed, batch, attention_mask))
        task_loss = self.sequence_classification_loss(logits, labels) if labels is not None else None
        return self._output(logits, task_loss, mixed, batch, labels, retrieval_instance_ids, hidden_states, return_dict)


class MuxTokenClassificationMixin(MuxTaskModelMixin):
    """A token classification model: its ``classifier`` and ``forward`` on every demultiplexed token state."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.classifier = TokenClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        retrieval_instance_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MuxTaskOutput | tuple:
        r"""
        labels: ``(batch, seq_len)`` class ids, -100 where no prediction is asked (padding, sub-words).
        """
        mixed, batch, hidden_states = self._run(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states
        )
        states = self.mux_base.demultiplex(mixed, batch)
        logits = self.classifier(states)
        task_loss = None
        if labels is not None:
            self.check_token_labels(labels, logits.shape[:2])
            labels = self.class_ids(labels, "Token classification labels")
            task_loss = CrossEntropyLoss()(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return self._output(logits, task_loss, mixed, batch, labels, retrieval_instance_ids, hidden_states, return_dict)
