"""Stage ``retrieval`` (stage 1 of MUX-PLMs): token retrieval only. The model (a multiplexed masked-LM model of
the chosen family) learns to recover every instance's tokens from the mixture; its MLM head has weight 0 and is
frozen. Small enough to hold everything here; the shared model building is :mod:`mux_plms.training.stage_models`.
"""

from __future__ import annotations

from ..stage_models import build_masked_lm, save_model
from . import Stage, batch_forward, register_stage

# The stage's loss weights (task, retrieval), whatever the arguments say.
COEFFS = {"task_loss_coeff": 0.0, "retrieval_loss_coeff": 1.0}


def coeffs(args) -> dict:
    return dict(COEFFS)


def build(ctx):
    return build_masked_lm(ctx, COEFFS)


forward = batch_forward(("input_ids", "attention_mask", "retrieval_instance_ids"))


def collator(args, tokenizer, num_instances: int):
    """Unmasked text; each position asks one instance's token (`RetrievalCollator`)."""
    from ...data.collators import RetrievalCollator

    return RetrievalCollator.from_tokenizer(tokenizer, num_instances, seed=args.seed, max_length=args.block_size)


STAGE = register_stage(
    Stage(
        name="retrieval",
        description="stage 1: token retrieval",
        build=build,
        forward=forward,
        loss_fields=("loss", "retrieval_loss"),
        save=save_model,
        collator=collator,
        help="stage 1: token retrieval only",
        card_description="stage 1, token retrieval: recover every instance's tokens from the mixture",
        coeffs=coeffs,
    )
)
