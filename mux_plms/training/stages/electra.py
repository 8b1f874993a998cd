"""Stage ``electra`` (stage 2 of MUX-ELECTRA): a small generator fills the masked positions and the multiplexed
discriminator detects the replaced tokens, plus the auxiliary retrieval loss.

The generator/discriminator pairing (:class:`~mux_plms.training.electra.MuxElectraPretrainingPair`, its loss,
sampling and saving, the ELECTRA presets) stays in :mod:`mux_plms.training.electra`: it is a model in its own
right (~360 lines, torch at import), usable without the pre-training loop, and imported here only when the
stage builds its model. This file holds what makes it a stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..stage_models import (
    MUX_FIELDS,
    SAVED_COEFFS,
    check_init_compatible,
    check_setup,
    electra_module,
    electra_preset_name,
    load_init,
    model_family,
    read_config_dict,
    stage_config,
)
from . import Stage, batch_forward, register_stage


def is_electra_pair_folder(folder: str | None) -> bool:
    """True for a folder written by `MuxElectraPretrainingPair.save_pretrained` (generator included)."""
    return folder is not None and (Path(folder) / electra_module().PAIR_FILE).is_file()


def build(ctx):
    """A generator + multiplexed discriminator pair. The discriminator is fresh (ELECTRA preset), or loaded
    from a previous stage (a stage-1 MUX-ELECTRA retrieval folder, or a saved pair, whose generator is
    loaded too); a new generator comes from the ELECTRA preset and shares the discriminator's embeddings."""
    from ...models import MuxElectraConfig, MuxElectraForMaskedLM, MuxElectraForPreTraining

    electra = electra_module()
    args = ctx.args
    coeff = {"retrieval_loss_coeff": args.retrieval_loss_coeff}
    pair_kwargs = {"discriminator_weight": args.discriminator_weight}
    if is_electra_pair_folder(ctx.init_source):
        check_init_compatible(args, ctx.init_source, read_config_dict(ctx.init_source))
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
        discriminator = load_init(MuxElectraForPreTraining, ctx.init_source, discriminator_config)
    generator_fields = json.loads(electra.electra_preset_path(electra_preset_name(args)).read_text())["generator"]
    shared = ("vocab_size", "pad_token_id", "embedding_size", "max_position_embeddings", "type_vocab_size") + MUX_FIELDS
    generator_fields.update({name: getattr(discriminator_config, name) for name in shared})
    generator = MuxElectraForMaskedLM(MuxElectraConfig(**{**generator_fields, **coeff}))
    return electra.MuxElectraPretrainingPair(generator, discriminator, **pair_kwargs)


forward = batch_forward(("input_ids", "attention_mask", "labels", "retrieval_instance_ids"))


def save(pair, directory: Path, accelerator, state_dict) -> None:
    """The discriminator at `directory` (fine-tuning ready), the generator in ``generator/``."""
    if accelerator.is_main_process:
        for name, value in SAVED_COEFFS.items():
            setattr(pair.discriminator.config, name, value)
        pair.save_pretrained(directory)


def collator(args, tokenizer, num_instances: int):
    """The generator's masking: 85% ``[MASK]``, 15% unchanged, no random tokens (`ElectraCollator`)."""
    from ...data.collators import ElectraCollator

    return ElectraCollator.from_tokenizer(tokenizer, num_instances, seed=args.seed, max_length=args.block_size,
                                          mlm_probability=args.mlm_probability)  # fmt: skip


def check(args, stages: list[str]) -> None:
    if "electra" not in stages:
        return
    if "mlm" in stages:
        raise ValueError("--stages: 'mlm' (MUX-BERT) and 'electra' (MUX-ELECTRA) are alternative second stages")
    if args.model_family == "bert":
        raise ValueError("--stages electra needs --model_family electra (or no --model_family)")


def check_first(ctx) -> None:
    """A saved pair is checked against the multiplexing flags; anything else like every first stage."""
    if is_electra_pair_folder(ctx.init_source):
        check_init_compatible(ctx.args, ctx.init_source, read_config_dict(ctx.init_source))
    else:
        check_setup(ctx, {})


STAGE = register_stage(
    Stage(
        name="electra",
        description="stage 2: ELECTRA (MUX-ELECTRA)",
        build=build,
        forward=forward,
        loss_fields=("loss", "generator_loss", "rtd_loss", "retrieval_loss"),
        save=save,
        collator=collator,
        help="stage 2, MUX-ELECTRA",
        card_description="stage 2, multiplexed ELECTRA pre-training (replaced-token detection)",
        family="electra",
        check=check,
        check_first=check_first,
    )
)
