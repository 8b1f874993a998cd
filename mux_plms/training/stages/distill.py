"""Stage ``distill``: hidden-state distillation of a frozen vanilla N=1 teacher into the MUX student, with
optional auxiliary retrieval / MLM terms (``--distill_*`` flags).

The distillation itself (:class:`~mux_plms.training.distill_stage.DistillationPair`, the loss, loading and
checking the teacher) stays in :mod:`mux_plms.training.distill_stage`: it is torch code (~270 lines) usable
without the loop, imported here only when the stage builds its model or checks the teacher. This file holds what
makes it a stage.
"""

from __future__ import annotations

from pathlib import Path

from ..stage_models import SAVED_COEFFS, build_masked_lm, read_config_dict, save_model, stage_config
from . import Stage, batch_forward, register_stage

DISTILL_LOSSES = ("mse_cosine", "mse", "cosine")


def coeffs(args) -> dict:
    """The student's own loss weights: the auxiliary terms' (the model refuses two zeros; the pair then freezes
    both heads itself, see `DistillationPair`)."""
    weights = {"task_loss_coeff": args.distill_mlm_coeff, "retrieval_loss_coeff": args.distill_retrieval_coeff}
    return weights if any(weights.values()) else dict(SAVED_COEFFS)


def teacher_source(args) -> str:
    """The distillation teacher: ``--teacher_name_or_path``, else ``--model_name_or_path`` when it is vanilla."""
    if args.teacher_name_or_path is not None:
        return args.teacher_name_or_path
    if args.model_name_or_path is not None:
        if read_config_dict(args.model_name_or_path).get("num_instances") is None:
            return args.model_name_or_path
        raise ValueError(
            f"The distill stage needs a vanilla N=1 teacher, but --model_name_or_path {args.model_name_or_path} is "
            "multiplexed: pass --teacher_name_or_path (e.g. the encoder it was warm-started from)"
        )
    raise ValueError("The distill stage needs a teacher: pass --teacher_name_or_path (a vanilla N=1 encoder)")


def build(ctx):
    """The MUX student (a masked-LM model: its heads serve the auxiliary terms) and the frozen N=1 teacher."""
    from ..distill_stage import DistillationPair, load_teacher

    args = ctx.args
    student = build_masked_lm(ctx, coeffs(args))
    teacher = load_teacher(teacher_source(args), student.config, ctx.tokenizer)
    return DistillationPair(student, teacher, args.distill_loss, args.distill_retrieval_coeff, args.distill_mlm_coeff,
                            args.distill_token_coeff, args.distill_pooled_coeff)  # fmt: skip


forward = batch_forward(("input_ids", "attention_mask"), optional=("retrieval_instance_ids", "labels"))


def save(pair, directory: Path, accelerator, state_dict) -> None:
    """The student alone (the teacher is not part of the pair's state)."""
    prefix = "student."
    student_state = None if state_dict is None else {k[len(prefix) :]: v for k, v in state_dict.items()}
    save_model(pair.student, directory, accelerator, student_state)


def collator(args, tokenizer, num_instances: int):
    """The MLM stage's masking when the auxiliary MLM term is on (the student reads masked text), else the
    retrieval stage's unmasked batches."""
    from . import mlm, retrieval

    chosen = mlm if args.distill_mlm_coeff > 0 else retrieval
    return chosen.collator(args, tokenizer, num_instances)


def record(args, model) -> dict:
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


def check(args, stages: list[str]) -> None:
    """The ``--distill_*`` flags, checked in every run (as they always were), the stage selected or not."""
    weights = {"--distill_retrieval_coeff": args.distill_retrieval_coeff,
               "--distill_mlm_coeff": args.distill_mlm_coeff,
               "--distill_token_coeff": args.distill_token_coeff,
               "--distill_pooled_coeff": args.distill_pooled_coeff}  # fmt: skip
    for flag, value in weights.items():
        if value < 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")
    if args.distill_token_coeff == 0 and args.distill_pooled_coeff == 0:
        raise ValueError("--distill_token_coeff and --distill_pooled_coeff cannot both be 0: nothing to distil")
    if args.distill_loss not in DISTILL_LOSSES:
        raise ValueError(f"--distill_loss must be one of {', '.join(DISTILL_LOSSES)}, got {args.distill_loss!r}")


def check_run(first) -> None:
    """The teacher's config and tokenizer against the student's, before any data is read."""
    from transformers import AutoConfig

    from ..distill_stage import check_teacher

    args = first.args
    source = teacher_source(args)
    try:
        teacher_config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"--teacher_name_or_path {source}: no readable config.json ({error})") from error
    student_fields = stage_config(first, {})
    check_teacher(teacher_config, student_fields, source=source)
    if args.prune_vocabulary:
        raise ValueError("The distill stage needs the teacher's vocabulary: pass --prune_vocabulary false")


STAGE = register_stage(
    Stage(
        name="distill",
        description="hidden-state distillation from the N=1 teacher",
        build=build,
        forward=forward,
        loss_fields=(
            "loss",
            "distill_loss",
            "distill_mse",
            "distill_cosine",
            "distill_pooled_cosine",
            "task_loss",
            "retrieval_loss",
        ),  # fmt: skip
        save=save,
        collator=collator,
        help="hidden-state distillation from the N=1 teacher, --teacher_name_or_path",
        card_description=(
            "hidden-state distillation: each instance's demultiplexed states learn the frozen N=1 encoder's states"
        ),
        mlm_logits=True,
        coeffs=coeffs,
        record=record,
        check=check,
        check_run=check_run,
    )
)
