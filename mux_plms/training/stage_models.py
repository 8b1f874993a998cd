"""Model building shared by the pre-training stages (:mod:`mux_plms.training.stages`): the model family and the
configuration a stage trains (fresh from a preset / config, warm-started from a vanilla checkpoint, or loaded
from a previous stage), the checks of that setup (multiplexing flags against the init checkpoint, block size
against the position table), loading and saving, and freezing the heads whose loss has weight 0.

Import-light: torch, transformers and the models are imported inside the functions (the stage modules import
this one at module level and ``mux-plms pretrain --help`` imports the stage modules).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils import runtime

if TYPE_CHECKING:  # pragma: no cover
    from .arguments import PretrainingArguments
    from .stages import StageContext

# Saved folders carry the MUX-PLMs fine-tuning weights, ready for fine-tuning; the weights used in training
# are in training_record.json.
SAVED_COEFFS = {"task_loss_coeff": 1.0, "retrieval_loss_coeff": 0.0}
MUX_FIELDS = ("num_instances", "muxing_variant", "demuxing_variant", "num_hidden_demux_layers")
LOAD_REPORT_HINT = "TRANSFORMERS_VERBOSITY=debug"  # how to get transformers' full table of new / unused weights


def say(text: str) -> None:
    """A progress line of the run, printed by the main process only (``RANK`` 0 or unset)."""
    if os.environ.get("RANK", "0").strip() in ("", "0"):
        print(text, flush=True)


def read_config_dict(path: str, flag: str = "--model_name_or_path") -> dict:
    from transformers import PreTrainedConfig

    try:
        config, _ = PreTrainedConfig.get_config_dict(path)
    except OSError as error:
        raise ValueError(f"{flag} {path}: no readable config.json ({error})") from error
    return config


def mux_overrides(args: PretrainingArguments) -> dict:
    return {name: getattr(args, name) for name in MUX_FIELDS if getattr(args, name) is not None}


def check_init_compatible(args: PretrainingArguments, init_source: str, saved: dict) -> None:
    """A multiplexed checkpoint only works at its own N and with its own (de)multiplexer: refuse overrides
    that contradict it, naming the flag and the checkpoint's value."""
    if saved.get("num_instances") is None:
        return  # a vanilla backbone: every multiplexing field is free
    for name, value in mux_overrides(args).items():
        if name in saved and saved[name] != value:
            raise ValueError(
                f"--{name} {value} contradicts the init checkpoint {init_source}, which was trained with "
                f"{name}={saved[name]!r}. Drop --{name}, or start from a checkpoint trained with {name}={value!r}."
            )


def pretrainable_family_of(model_type: str | None) -> str | None:
    """The ``--model_family`` name of a checkpoint's model_type (MUX or vanilla), from the family table."""
    from ..models.families import family_of

    family = family_of(model_type) if model_type else None
    return family.short_name if family is not None and family.pretrainable else None


def model_family(args: PretrainingArguments, init_source: str | None) -> str:
    """The ``--model_family`` name: from the init checkpoint, else ``--model_family``, else the family a stage
    implies (:attr:`Stage.family`, e.g. 'electra'), else 'bert'."""
    if init_source is not None:
        model_type = read_config_dict(init_source).get("model_type")
        family = pretrainable_family_of(model_type)
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
    from .stages import implied_family

    return implied_family(args.stage_list) or "bert"


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


def family_config_class(family: str):
    from ..models.families import family_of

    return family_of(family).config_class()


def fresh_config_fields(args: PretrainingArguments, family: str) -> dict:
    if family == "electra":
        electra = electra_module()
        data = json.loads(electra.electra_preset_path(electra_preset_name(args)).read_text())
        return dict(data["discriminator"])
    if args.preset is not None:
        from ..configs import load_preset

        return dict(load_preset(args.preset).model)
    if args.config_name is not None:
        fields = read_config_dict(args.config_name, "--config_name")
        for key in ("architectures", "auto_map", "transformers_version", "model_type", "dtype", "torch_dtype"):
            fields.pop(key, None)
        return fields
    raise ValueError("Nothing to initialise from: give --preset, --config_name or --model_name_or_path")


def stage_config(ctx: StageContext, coeffs: dict, family: str | None = None):
    """The configuration (MUX-BERT, or the MUX-ELECTRA discriminator) a stage trains, without weights: used
    both to check the setup before any data is touched and to build the model."""
    args, tokenizer = ctx.args, ctx.tokenizer
    family = family or model_family(args, ctx.init_source)
    config_class = family_config_class(family)
    if ctx.init_source is None:
        if family not in ("bert", "electra"):
            raise ValueError(
                f"--model_family {family} starts from a checkpoint only (--model_name_or_path, a vanilla or MUX "
                f"{family} model); fresh models come from the bert and electra presets"
            )
        fields = fresh_config_fields(args, family)
        fields.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        return config_class(**{**fields, **mux_overrides(args), **coeffs})
    saved = read_config_dict(ctx.init_source)
    check_init_compatible(args, ctx.init_source, saved)
    overrides = {**mux_overrides(args), **coeffs}
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


def check_setup(ctx: StageContext, coeffs: dict) -> None:
    """The setup check of a stage that runs first, before any data is read: its configuration (without
    weights) against the init checkpoint and the arguments, and the block size against its position table."""
    config = stage_config(ctx, coeffs)
    check_block_size(ctx.args.block_size, config)


def masked_lm_class(family: str):
    from ..models import MuxAlbertForMaskedLM, MuxBertForMaskedLM, MuxElectraForMaskedLM, MuxRobertaForMaskedLM

    return {"bert": MuxBertForMaskedLM, "electra": MuxElectraForMaskedLM, "roberta": MuxRobertaForMaskedLM,
            "albert": MuxAlbertForMaskedLM}[family]  # fmt: skip


def build_masked_lm(ctx: StageContext, coeffs: dict):
    family = model_family(ctx.args, ctx.init_source)
    config = stage_config(ctx, coeffs, family)
    model_class = masked_lm_class(family)
    if ctx.init_source is None:
        return model_class(config)
    return load_init(model_class, ctx.init_source, config)


def load_init(model_class, source: str, config):
    """``model_class.from_pretrained(source, config=config)``, with transformers' table of new and unused weights
    summarised in one line (the table at DEBUG level: `mux_plms.utils.runtime.load_pretrained`)."""
    warm = read_config_dict(source).get("num_instances") is None
    return runtime.load_pretrained(
        model_class, source, warm_start=warm, logger=say, hint=LOAD_REPORT_HINT, config=config
    )


def save_model(model, directory: Path, accelerator, state_dict) -> None:
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


__all__ = [
    "MUX_FIELDS",
    "SAVED_COEFFS",
    "read_config_dict",
    "check_init_compatible",
    "model_family",
    "electra_module",
    "electra_preset_name",
    "stage_config",
    "prefix_length_of",
    "check_block_size",
    "check_setup",
    "masked_lm_class",
    "build_masked_lm",
    "load_init",
    "save_model",
    "freeze_unweighted_heads",
    "stage_parts",
    "mux_config_of",
]
