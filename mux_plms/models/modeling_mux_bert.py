"""MUX-BERT: a BERT backbone that runs once for N multiplexed inputs.

Building blocks come from transformers' BERT (embeddings, layers); the multiplexing machinery from
the shared modules of this folder. Classes: :class:`MuxBertModel` (per-instance features),
:class:`MuxBertForMaskedLM` (MLM + token retrieval; stage 1 and 2),
:class:`MuxBertForSequenceClassification`, :class:`MuxBertForTokenClassification`.
"""

from __future__ import annotations

import torch
from torch.nn import CrossEntropyLoss
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder

from .configuration_mux_bert import MuxBertConfig
from .demultiplexing import build_demultiplexer
from .heads import (
    TokenClassificationHead,
    VocabularyHead,
    build_sequence_classification_head,
    build_vocabulary_head,
)
from .modeling_mux_utils import (
    LegacyInputRewrite,
    MultiplexedEncoderMixin,
    MuxTaskMixin,
    init_mux_module,
    pad_rows,
)
from .modeling_outputs import MuxModelOutput, MuxTaskOutput
from .multiplexing import build_multiplexer

_WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


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

    # Filled by each family: every Auto class -> "module.Class" of the remote-code files.
    mux_auto_map: dict[str, str] = {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save safetensors weights, the config with a complete ``auto_map`` (every Auto class of the
        family, not only this one) and, when the classes are registered for remote code, the
        `models/` source files next to them."""
        if self.mux_auto_map and getattr(type(self), "_auto_class", None) is not None:
            self.config.auto_map = dict(self.mux_auto_map)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        """Hook of transformers' `push_to_hub`, which calls it on the temporary folder it saved the model
        to, right after writing a generic README.md there. With the mux-plms package installed, that
        README is replaced by the generated MUX model card; without it (remote-code users) it is kept.
        The import is optional so these files keep importing nothing outside this folder."""
        try:
            from mux_plms.hub.card import write_push_card
        except ImportError:
            write_push_card = None
        if write_push_card is not None:
            write_push_card(working_dir, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)


class MuxBertPreTrainedModel(MuxPreTrainedMixin, PreTrainedModel):
    config: MuxBertConfig
    config_class = MuxBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["BertEmbeddings", "BertLayer"]
    mux_auto_map = {
        "AutoConfig": "configuration_mux_bert.MuxBertConfig",
        "AutoModel": "modeling_mux_bert.MuxBertModel",
        "AutoModelForMaskedLM": "modeling_mux_bert.MuxBertForMaskedLM",
        "AutoModelForSequenceClassification": "modeling_mux_bert.MuxBertForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_mux_bert.MuxBertForTokenClassification",
    }

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VocabularyHead):
            init.zeros_(module.decoder.bias)
        elif isinstance(module, BertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        init_mux_module(module, self.config.initializer_range)


class MuxBertModel(MultiplexedEncoderMixin, MuxBertPreTrainedModel):
    """Multiplexed BERT encoder returning demultiplexed per-instance states ``(batch, seq_len, hidden)``.

    Rows ``kN .. kN+N-1`` of a batch share one backbone pass. Any batch size works: a batch that is
    not a multiple of N is padded internally with empty instances whose outputs are dropped.
    """

    def __init__(self, config: MuxBertConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.multiplexer = build_multiplexer(config)
        self.encoder = BertEncoder(config)
        self.demultiplexer = build_demultiplexer(config)
        self.legacy_inputs = LegacyInputRewrite.from_config(config, self.demultiplexer.prefix_length())
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def embed(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        return self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )

    def embed_words(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        """``position_mixing="shared"``: each instance contributes its word embeddings only."""
        return self.embeddings.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds

    def embed_shared(self, mixture, token_type_ids, position_ids, num_instances: int):
        """``position_mixing="shared"``: add the position embeddings and the group's mean token-type embedding
        to the mixed word embeddings ``(G, L, D)``, then the embedding LayerNorm and dropout (once per group)."""
        embeddings = self.embeddings
        groups, length = mixture.shape[:2]
        if position_ids is None:
            position_ids = embeddings.position_ids[:, :length]
        elif position_ids.shape[0] != 1:
            grouped = position_ids.view(groups, num_instances, length)
            if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
                raise ValueError(
                    "position_mixing='shared' gives every instance of a mux group the same positions; "
                    "got position_ids that differ within a group"
                )
            position_ids = grouped[:, 0]
        if token_type_ids is None:
            types = embeddings.token_type_embeddings(embeddings.token_type_ids[:, :length])
        else:
            types = embeddings.token_type_embeddings(token_type_ids).view(groups, num_instances, length, -1).mean(1)
        hidden = mixture + types + embeddings.position_embeddings(position_ids)
        return embeddings.dropout(embeddings.LayerNorm(hidden))

    def run_layers(self, hidden, attention_mask, start: int, end: int):
        """Backbone layers ``start .. end-1`` on `hidden` ``(rows, L, H)`` with the padding mask ``(rows, L)``
        (``instance_layers``: the layers each instance runs on its own before mixing)."""
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.encoder.layer[start:end]:
            hidden = layer(hidden, mask)
        return hidden

    def encode(self, mixture, attention_mask, output_hidden_states=False, first_layer: int = 0):
        if self.config.legacy_embed_mixture:
            # Original implementation: the mixture re-enters the embedding layer (positions, token
            # types and LayerNorm applied twice) and the encoder runs without an attention mask.
            mixture = self.embeddings(inputs_embeds=mixture)
            attention_mask = None
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=mixture, attention_mask=attention_mask)
        hidden = mixture
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.encoder.layer[first_layer:]:
            hidden = layer(hidden, mask)
            if all_hidden is not None:
                all_hidden.append(hidden)
        return hidden, tuple(all_hidden) if all_hidden is not None else None

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


class MuxBertTaskModel(MuxTaskMixin, MuxBertPreTrainedModel):
    """Common constructor of the task models: the base model plus the token-retrieval head."""

    _tied_weights_keys = {"retrieval_head.decoder.weight": _WORD_EMBEDDINGS}

    def __init__(self, config: MuxBertConfig):
        super().__init__(config)
        self.bert = MuxBertModel(config)
        self.retrieval_head = build_vocabulary_head(config)

    @property
    def mux_base(self) -> MuxBertModel:
        return self.bert

    def _run(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states):
        return self.bert.multiplex_encode(
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
        padded = groups * n
        pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        rows = padded - batch_size
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


class MuxBertForMaskedLM(MuxBertTaskModel):
    """MLM over the demultiplexed states plus the auxiliary token-retrieval loss.

    With ``task_loss_coeff = 0`` it is the stage-1 token-retrieval model (no MLM head computed)."""

    _tied_weights_keys = {
        "retrieval_head.decoder.weight": _WORD_EMBEDDINGS,
        "lm_head.decoder.weight": _WORD_EMBEDDINGS,
    }

    def __init__(self, config: MuxBertConfig):
        super().__init__(config)
        self.lm_head = build_vocabulary_head(config)
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
            ``(num_labelled, vocab)`` (saves the vocabulary projection elsewhere; used in pre-training).
        """
        mixed, batch, hidden_states = self._run(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states
        )
        logits = task_loss = None
        if self.config.task_loss_coeff > 0 or labels is not None:
            states = self.bert.demultiplex(mixed, batch)
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


class MuxBertForSequenceClassification(MuxBertTaskModel):
    """Sequence classification / regression on each instance's demultiplexed first-token state (or, with
    ``config.sequence_pooling="mean"``, the mean of its demultiplexed token states)."""

    def __init__(self, config: MuxBertConfig):
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


class MuxBertForTokenClassification(MuxBertTaskModel):
    """Token classification (NER, POS) on every demultiplexed token state."""

    def __init__(self, config: MuxBertConfig):
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
        states = self.bert.demultiplex(mixed, batch)
        logits = self.classifier(states)
        task_loss = None
        if labels is not None:
            self.check_token_labels(labels, logits.shape[:2])
            labels = self.class_ids(labels, "Token classification labels")
            task_loss = CrossEntropyLoss()(logits.reshape(-1, self.num_labels), labels.reshape(-1))
        return self._output(logits, task_loss, mixed, batch, labels, retrieval_instance_ids, hidden_states, return_dict)


__all__ = [
    "MuxBertPreTrainedModel",
    "MuxBertModel",
    "MuxBertForMaskedLM",
    "MuxBertForSequenceClassification",
    "MuxBertForTokenClassification",
]
