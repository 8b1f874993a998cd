"""Stage ``mlm`` (stage 2 of MUX-BERT): masked-language modelling plus the auxiliary retrieval loss, weighted by
``--task_loss_coeff`` / ``--retrieval_loss_coeff``. Small enough to hold everything here; the shared model
building is :mod:`mux_plms.training.stage_models`.
"""

from __future__ import annotations

from ..stage_models import build_masked_lm, save_model
from . import Stage, batch_forward, register_stage


def coeffs(args) -> dict:
    return {"task_loss_coeff": args.task_loss_coeff, "retrieval_loss_coeff": args.retrieval_loss_coeff}


def build(ctx):
    return build_masked_lm(ctx, coeffs(ctx.args))


forward = batch_forward(("input_ids", "attention_mask", "labels", "retrieval_instance_ids"), logits_at_labels_only=True)


def collator(args, tokenizer, num_instances: int):
    """BERT's 80/10/10 masking at ``--mlm_probability`` (`MLMCollator`)."""
    from ...data.collators import MLMCollator

    return MLMCollator.from_tokenizer(tokenizer, num_instances, seed=args.seed, max_length=args.block_size,
                                      mlm_probability=args.mlm_probability)  # fmt: skip


STAGE = register_stage(
    Stage(
        name="mlm",
        description="stage 2: MLM + auxiliary retrieval (MUX-BERT)",
        build=build,
        forward=forward,
        loss_fields=("loss", "task_loss", "retrieval_loss"),
        save=save_model,
        collator=collator,
        help="stage 2, MUX-BERT: MLM + auxiliary retrieval",
        card_description="stage 2, multiplexed masked-language-model pre-training",
        mlm_logits=True,
        coeffs=coeffs,
    )
)
