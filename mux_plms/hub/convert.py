"""Conversion of the original MUX-PLMs checkpoints into mux_plms checkpoints.

The authors' implementation (princeton-nlp/datamux-pretraining) saves ``"model_type": "bert"`` configs
with extra multiplexing fields and a pickled ``pytorch_model.bin`` whose keys follow its own modules
(``instance_embedding``, ``demux_module.dense_1``, ``retrieval_head.pre_decoder``, ...). This module maps
such a folder onto :class:`~mux_plms.MuxBertConfig` (with the ``legacy_*`` options that reproduce the
original computation) and the weights of the matching ``MuxBertFor*`` class, then writes a standard
mux_plms folder through ``save_pretrained`` (safetensors, complete ``auto_map``, remote code).

Anything it does not understand (a weight, a variant, a config value it cannot reproduce) is an error
naming it; weights the original never uses are dropped and listed in the returned report.
See docs/legacy-checkpoints.md for the quirks and how each one is reproduced.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import BertConfig

from ..models import MuxBertConfig, MuxBertForMaskedLM, MuxBertForSequenceClassification, MuxBertForTokenClassification
from ..utils.folders import atomic_model_folder, contained_file

logger = logging.getLogger(__name__)

# Original class name -> (kind, our class).
ARCHITECTURES: dict[str, tuple[str, type]] = {
    "MuxedBertForMaskedLM": ("mlm", MuxBertForMaskedLM),
    "MuxedBertForSequenceClassification": ("seqcls", MuxBertForSequenceClassification),
    "MuxedBertForTokenClassification": ("tokcls", MuxBertForTokenClassification),
}
LEGACY_MUXING_NAMES = {
    "gaussian_hadamard": "gaussian_hadamard",
    "binary_hadamard": "binary_hadamard",
    "random_ortho": "random_ortho",
    "gaussian_attention_v2": "contextual",
}
LEGACY_DEMUXING_NAMES = {"index_pos": "rsa", "index": "prefix"}
# How each original class runs the cross-instance layer of `gaussian_attention_v2` (`muxing_attention_2`):
# its sequence-classification forward passes the instances' padding mask, its MLM and token-classification
# forwards call the layer without a mask.
LEGACY_CROSS_INSTANCE_MASK = {"mlm": "cross_unmasked", "seqcls": "cross_masked", "tokcls": "cross_unmasked"}

# Token ids the original hard-codes (BERT vocabulary): the `index` prefix is filled with 680, instance i's
# index token is 680 - (i + 2), and a [CLS] (101) ends it; `index_pos` models write [CLS] at position 0.
LEGACY_PREFIX_FILLER_ID = 680
LEGACY_CLS_ID = 101

# Sizes every original config.json holds (transformers writes every BertConfig field); the weights are
# mapped with them, so a config without them is refused instead of falling back on BERT-base defaults.
REQUIRED_CONFIG_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)
# Config keys of the original that carry no information for the converted model.
IGNORED_CONFIG_KEYS = {
    "architectures",
    "model_type",
    "transformers_version",
    "_name_or_path",
    "torch_dtype",
    "dtype",
    "retrieval_percentage",  # share of the retrieval targets the original drops at random (training only)
    "gradient_checkpointing",
    "use_cache",
    "auto_map",
    "tie_word_embeddings",  # the converted models always tie their decoders (checked equal when the original did not)
}
# Config keys passed through unchanged (BERT's and every config's own fields).
PASSTHROUGH_CONFIG_KEYS = set(BertConfig().to_dict()) - IGNORED_CONFIG_KEYS | {"finetuning_task"}
MUX_CONFIG_KEYS = {
    "num_instances",
    "muxing_variant",
    "demuxing_variant",
    "num_hidden_demux_layers",
    "gaussian_hadamard_norm",
    "binary_hadamard_epsilon",
    "learn_muxing",
    "retrieval_loss_coeff",
    "task_loss_coeff",
}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class LegacyCheckpointError(ValueError):
    """The folder is not an original MUX-PLMs checkpoint this converter can reproduce faithfully."""


@dataclass
class LegacyConversion:
    """What :func:`convert_legacy_checkpoint` wrote."""

    out_dir: Path
    architecture: str  # the original class
    model_class: str  # ours
    num_instances: int
    muxing_variant: str  # ours
    demuxing_variant: str  # ours
    legacy_options: dict = field(default_factory=dict)  # the legacy_* (and prefix) config values set
    dropped_keys: dict[str, str] = field(default_factory=dict)  # original weight -> why it is not kept
    ignored_config_keys: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.architecture} -> {self.model_class} (N={self.num_instances}, {self.muxing_variant} + "
            f"{self.demuxing_variant}) written to {self.out_dir}",
            "legacy options: " + ", ".join(f"{k}={v!r}" for k, v in self.legacy_options.items()),
        ]
        by_reason: dict[str, list[str]] = {}
        for key, why in self.dropped_keys.items():
            by_reason.setdefault(why, []).append(key)
        if by_reason:
            lines.append(f"{len(self.dropped_keys)} weights of the original not kept:")
        for why, keys in by_reason.items():
            shown = ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")
            lines.append(f"  {why}: {shown}")
        if self.ignored_config_keys:
            lines.append("config keys ignored: " + ", ".join(self.ignored_config_keys))
        return "\n".join(lines)


def convert_legacy_checkpoint(
    src: str | Path, out_dir: str | Path, *, revision: str | None = None, overwrite: bool = False
) -> LegacyConversion:
    """Convert an original MUX-PLMs checkpoint into a mux_plms checkpoint folder.

    Args:
        src: a local folder holding the original ``config.json`` and ``pytorch_model.bin`` (or
            ``model.safetensors``, or sharded weights), or a Hub repo id such as
            ``princeton-nlp/muxbert_base_gaussian_hadamard_index_pos_2`` (downloaded with
            ``huggingface_hub.snapshot_download``).
        out_dir: the folder to write (safetensors weights, config with ``auto_map``, remote code,
            tokenizer files when the source has them).
        revision: Hub revision of `src` (repo ids only).
        overwrite: replace a checkpoint already in `out_dir` (otherwise an error). The folder is written
            into a temporary sibling and renamed into place with a completion marker (``mux_plms_complete.json``),
            so `out_dir` is either the old folder or the complete new one.

    Returns:
        A :class:`LegacyConversion` report. Load the result with the Auto classes after ``import mux_plms``
        (or with ``trust_remote_code=True`` without it), e.g.
        ``AutoModelForSequenceClassification.from_pretrained(out_dir)``.

    Raises:
        LegacyCheckpointError: a weight, variant or config value the converter does not understand or
            cannot reproduce (the message names it).
        OSError: `src` is neither a folder nor a repo id that could be downloaded.
    """
    source = _resolve_source(src, revision)
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and not overwrite:
        raise LegacyCheckpointError(f"{out_dir} already holds a checkpoint (config.json); pass overwrite=True")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise LegacyCheckpointError(f"{out_dir} already exists and is not empty; pass overwrite=True to replace it")
    if out_dir.resolve() == source.resolve():
        raise LegacyCheckpointError(f"The output folder {out_dir} is the source folder: write the conversion elsewhere")
    legacy_config = _read_config(source)
    architecture, kind, model_class = _architecture(legacy_config)
    config_kwargs, legacy_options, ignored = _convert_config(legacy_config, kind)
    config = MuxBertConfig(**config_kwargs)
    model = model_class(config)
    state_dict, dropped = map_legacy_state_dict(_load_weights(source), legacy_config, kind, model)
    _load_into(model, state_dict)
    # Written into a temporary sibling and renamed into place with a completion marker: an interrupted
    # conversion never leaves a half-written folder under `out_dir`.
    with atomic_model_folder(out_dir, converted_from=str(src)) as folder:
        model.save_pretrained(folder)
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)
    report = LegacyConversion(
        out_dir=out_dir,
        architecture=architecture,
        model_class=model_class.__name__,
        num_instances=config.num_instances,
        muxing_variant=config.muxing_variant,
        demuxing_variant=config.demuxing_variant,
        legacy_options=legacy_options,
        dropped_keys=dropped,
        ignored_config_keys=ignored,
    )
    logger.info(report.summary())
    return report


def legacy_finetuning_options(config, task: str = "sequence-classification") -> dict:
    """``from_pretrained`` overrides that make a converted *pre-trained* (MLM) checkpoint behave like the
    original's task models when fine-tuned from it (its MLM and task classes differ in several quirks).

    Example::

        config = AutoConfig.from_pretrained(converted_mlm_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            converted_mlm_dir, num_labels=3, **legacy_finetuning_options(config)
        )

    `task` is ``"sequence-classification"`` or ``"token-classification"``. Returns ``{}`` for a config that
    is not a converted one.
    """
    if task not in ("sequence-classification", "token-classification"):
        raise ValueError(f"task must be 'sequence-classification' or 'token-classification', got {task!r}")
    if not config.legacy_embed_mixture:
        return {}
    options = {"legacy_ignore_token_type_ids": True, "classifier_dropout": None}
    if config.legacy_demux is not None:
        options["legacy_demux"] = "finetuning"
    if config.legacy_contextual is not None:
        kind = "seqcls" if task == "sequence-classification" else "tokcls"
        options["legacy_contextual"] = LEGACY_CROSS_INSTANCE_MASK[kind]
    if config.legacy_prefix_truncate:
        options["legacy_prefix_truncate"] = False
    if task == "sequence-classification":
        options["legacy_linear_classifier"] = True
    return options


# --------------------------------------------------------------------------------------------------
# Source, config


def _resolve_source(src: str | Path, revision: str | None) -> Path:
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise LegacyCheckpointError(f"{src} is a file; pass the folder that holds config.json and the weights")
    if not _REPO_ID.match(str(src)):
        raise OSError(f"{src}: no such folder (and not a Hub repo id of the form namespace/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id=str(src),
                revision=revision,
                allow_patterns=["config.json", "*.bin", "*.safetensors", "*.index.json", *TOKENIZER_FILES],
            )
        )
    except Exception as error:  # offline, unknown repo, gated, network: all end the same way
        raise OSError(
            f"{src!r} is not a local folder and downloading it from the Hugging Face Hub failed "
            f"({type(error).__name__}: {error}). Download the repository elsewhere (e.g. `hf download {src} "
            "--local-dir DIR`) and pass that folder."
        ) from error


def _read_config(source: Path) -> dict:
    path = source / "config.json"
    if not path.is_file():
        raise LegacyCheckpointError(f"{source} has no config.json: not a checkpoint folder")
    config = json.loads(path.read_text())
    model_type = config.get("model_type")
    if model_type == "mux_bert":
        raise LegacyCheckpointError(f"{source} is already a mux_plms checkpoint (model_type 'mux_bert')")
    if model_type != "bert" or "num_instances" not in config:
        raise LegacyCheckpointError(
            f"{source}/config.json is not an original MUX-PLMs config: expected model_type 'bert' with "
            f"num_instances, muxing_variant and demuxing_variant; got model_type {model_type!r}"
        )
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise LegacyCheckpointError(
            f"{source}/config.json has no {', '.join(missing)}: the original code always writes the BERT sizes "
            "(hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size, "
            "max_position_embeddings), and the weights cannot be mapped without them. Restore them from the "
            "checkpoint's published config.json."
        )
    return config


def _architecture(config: dict) -> tuple[str, str, type]:
    architectures = config.get("architectures") or []
    if len(architectures) != 1:
        raise LegacyCheckpointError(
            f"config.json must name exactly one architecture (one of {', '.join(ARCHITECTURES)}); got {architectures}"
        )
    name = architectures[0]
    if name not in ARCHITECTURES:
        raise LegacyCheckpointError(
            f"Unsupported architecture {name!r}: the converter handles {', '.join(ARCHITECTURES)}"
        )
    kind, model_class = ARCHITECTURES[name]
    return name, kind, model_class


def _convert_config(legacy: dict, kind: str) -> tuple[dict, dict, list[str]]:
    """``(MuxBertConfig kwargs, the legacy options among them, config keys ignored)``."""
    muxing, demuxing = legacy.get("muxing_variant"), legacy.get("demuxing_variant")
    if muxing not in LEGACY_MUXING_NAMES:
        raise LegacyCheckpointError(
            f"Unsupported muxing_variant {muxing!r}: the converter handles {', '.join(LEGACY_MUXING_NAMES)}"
        )
    if demuxing not in LEGACY_DEMUXING_NAMES:
        raise LegacyCheckpointError(
            f"Unsupported demuxing_variant {demuxing!r}: the converter handles {', '.join(LEGACY_DEMUXING_NAMES)}"
        )
    if muxing == "gaussian_attention_v2" and demuxing == "index":
        raise LegacyCheckpointError(
            "Cannot reproduce muxing_variant 'gaussian_attention_v2' with demuxing_variant 'index': the original "
            "applies the inputs' attention mask to the prefixed sequence (a shape error in its classification "
            "models, misaligned positions in its MLM model), and no published checkpoint uses this pairing"
        )
    _check_reproducible(legacy)
    n = legacy["num_instances"]
    demux_layers = legacy.get("num_hidden_demux_layers", 2)  # the original's default
    kwargs = {key: legacy[key] for key in PASSTHROUGH_CONFIG_KEYS if key in legacy}
    kwargs.update(
        num_instances=n,
        muxing_variant=LEGACY_MUXING_NAMES[muxing],
        demuxing_variant=LEGACY_DEMUXING_NAMES[demuxing],
        num_hidden_demux_layers=demux_layers,
        gaussian_hadamard_norm=legacy.get("gaussian_hadamard_norm", 1.0),
        binary_hadamard_epsilon=legacy.get("binary_hadamard_epsilon", 0.0),
        learn_muxing=bool(legacy.get("learn_muxing", False)),
        retrieval_loss_coeff=legacy.get("retrieval_loss_coeff", 0.0),
        task_loss_coeff=legacy.get("task_loss_coeff", 1.0),
    )
    options: dict = {"legacy_embed_mixture": True}
    if demuxing == "index_pos":
        if demux_layers < 2:
            raise LegacyCheckpointError(
                f"Cannot reproduce num_hidden_demux_layers={demux_layers} with 'index_pos': the original needs "
                "at least 2 (its retrieval head always runs dense_1 and dense_2)"
            )
        options.update(
            legacy_demux="pretraining" if kind == "mlm" else "finetuning", legacy_rsa_cls_token_id=LEGACY_CLS_ID
        )
    else:
        if legacy.get("vocab_size", 0) <= LEGACY_PREFIX_FILLER_ID or n + 1 >= LEGACY_PREFIX_FILLER_ID:
            raise LegacyCheckpointError(
                f"Cannot reproduce the 'index' prefix with vocab_size={legacy.get('vocab_size')} and num_instances={n}: "
                f"the original uses the hard-coded BERT ids {LEGACY_PREFIX_FILLER_ID} (filler) and "
                f"{LEGACY_PREFIX_FILLER_ID} - (i + 2) (instance i)"
            )
        options.update(
            num_hidden_demux_layers=1,  # the original `index` demultiplexer is one layer whatever the config says
            prefix_filler_token_id=LEGACY_PREFIX_FILLER_ID,
            prefix_index_token_ids=[LEGACY_PREFIX_FILLER_ID - (i + 2) for i in range(n)],
            legacy_prefix_cls_token_id=LEGACY_CLS_ID,
            legacy_untransformed_vocab_head=True,
        )
        if kind == "mlm":
            options["legacy_prefix_truncate"] = True
    if muxing == "gaussian_attention_v2":
        options["legacy_contextual"] = LEGACY_CROSS_INSTANCE_MASK[kind]
    if kind != "mlm":
        options["legacy_ignore_token_type_ids"] = True
        options["classifier_dropout"] = None  # the original's classifiers use hidden_dropout_prob
    if kind == "seqcls":
        options["legacy_linear_classifier"] = True
    kwargs.update(options)
    ignored = sorted(
        set(legacy) - PASSTHROUGH_CONFIG_KEYS - MUX_CONFIG_KEYS - IGNORED_CONFIG_KEYS - set(CHECKED_CONFIG)
    )
    if ignored:
        logger.warning("Ignoring config keys the converted model does not use: %s", ", ".join(ignored))
    return kwargs, options, ignored


# Config values the original supports but the converted model would compute differently: key -> the
# only value (also the default) the converter accepts.
CHECKED_CONFIG = {
    "position_embedding_type": "absolute",
    "hidden_act": "gelu",  # the original's demultiplexers and heads hard-code gelu
    "is_decoder": False,
    "add_cross_attention": False,
}


def _check_reproducible(legacy: dict) -> None:
    for key, supported in CHECKED_CONFIG.items():
        value = legacy.get(key, supported)
        if value != supported:
            raise LegacyCheckpointError(f"Cannot reproduce {key}={value!r}: the converter supports only {supported!r}")


# --------------------------------------------------------------------------------------------------
# Weights


def _load_weights(source: Path) -> dict[str, torch.Tensor]:
    """The original state dict: safetensors if present, else the pickled .bin (tensors only)."""
    from safetensors.torch import load_file

    for name in WEIGHT_FILES:
        path = source / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise LegacyCheckpointError(
                    f"{path} is not a weight index (no readable weight_map): {error}"
                ) from error
            try:
                files = [contained_file(source, shard, f"shard listed in {name}") for shard in shards]
            except ValueError as error:
                raise LegacyCheckpointError(str(error)) from error
            missing = [str(file) for file in files if not file.is_file()]
            if missing:
                raise LegacyCheckpointError(f"{path} lists shards that are not in {source}: {', '.join(missing)}")
        else:
            files = [path]
        state_dict: dict[str, torch.Tensor] = {}
        for file in files:
            if file.suffix == ".safetensors":
                state_dict.update(load_file(file))
            else:
                state_dict.update(torch.load(file, map_location="cpu", weights_only=True))
        return state_dict
    raise LegacyCheckpointError(f"{source} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")


Rule = Callable[[re.Match, torch.Tensor], "list[tuple[str, torch.Tensor]] | str"]


def _rules(legacy: dict, kind: str, model) -> list[tuple[re.Pattern, Rule]]:
    """Ordered ``(pattern, rule)`` pairs; a rule returns the ``(our key, tensor)`` pairs of an original key,
    or a string: the reason the key is dropped."""
    demux = legacy["demuxing_variant"]
    mlm = kind == "mlm"
    heads = ["retrieval_head", "lm_head"] if mlm else ["retrieval_head"]
    hidden = legacy["hidden_size"]
    rules: list[tuple[str, Rule]] = [
        (r"bert\.embeddings\.(position_ids|token_type_ids)", lambda m, t: "buffer the model rebuilds"),
        (r"bert\.pooler\..*", lambda m, t: "pooler, unused by the original models"),
        (r"(bert\.(embeddings|encoder)\..*)", lambda m, t: [(m[1], t)]),
        (r"instance_embedding", lambda m, t: [("bert.multiplexer.instance_keys", t)]),
        (r"muxing_attention\.(.*)", lambda m, t: [(f"bert.multiplexer.instance_layer.{m[1]}", t)]),
        (r"muxing_attention_2\.(.*)", lambda m, t: [(f"bert.multiplexer.cross_instance_layer.{m[1]}", t)]),
        (r"retrieval_head\.bias", lambda m, t: "stale alias of retrieval_head.decoder.bias"),
        (r"retrieval_head\.decoder\.weight", lambda m, t: "tied to bert.embeddings.word_embeddings.weight"),
        (r"retrieval_head\.decoder\.bias", lambda m, t: [(f"{head}.decoder.bias", t) for head in heads]),
    ]
    if not mlm:
        rules.append((r"classifier\.(weight|bias)", lambda m, t: [(f"classifier.out_proj.{m[1]}", t)]))
    if demux == "index_pos":
        num_layers = len(model.bert.demultiplexer.layers)
        copies = r"(demultiplexer\.|retrieval_head\.)demux_module\..*"
        rules += [
            (copies, lambda m, t: "copy of the shared demux_module (checked equal)"),
            (r"demux_module\.demux_instance_embedding", lambda m, t: [("bert.demultiplexer.instance_keys", t)]),
            (
                r"demux_module\.dense_(\d+)\.(weight|bias)",
                lambda m, t: (
                    [(f"bert.demultiplexer.layers.{int(m[1]) - 1}.{m[2]}", t)]
                    if int(m[1]) <= num_layers
                    else "demultiplexer layer the original never runs"
                ),
            ),
            (
                r"demux_module\.layer_norm_(\d+)\.(weight|bias)",
                lambda m, t: (
                    [(f"bert.demultiplexer.norms.{int(m[1]) - 1}.{m[2]}", t)]
                    if int(m[1]) <= 2
                    else "LayerNorm the original never runs"
                ),
            ),
            (r"demultiplexer\.pre_decoder\.(.*)", lambda m, t: [(f"bert.demultiplexer.pre_decoder.{m[1]}", t)]),
            (
                r"demultiplexer\.pre_decoder_layer_norm\.(.*)",
                lambda m, t: [(f"bert.demultiplexer.pre_decoder_norm.{m[1]}", t)],
            ),
            (r"retrieval_head\.pre_decoder\.(.*)", lambda m, t: [(f"{h}.dense.{m[1]}", t) for h in heads]),
            (
                r"retrieval_head\.pre_decoder_layer_norm\.(.*)",
                lambda m, t: [(f"{h}.LayerNorm.{m[1]}", t) for h in heads],
            ),
        ]
    else:
        # The `index` demultiplexer is one Linear(2H, H) on [key; hidden] + gelu + LayerNorm. The original MLM
        # model computes its logits with `retrieval_head`'s copy of it, its task models with `demultiplexer`'s.
        used, unused = ("retrieval_head", "demultiplexer") if mlm else ("demultiplexer", "retrieval_head")
        why = (
            "the original MLM model never runs its `demultiplexer`"
            if mlm
            else "used only by the original's random retrieval loss (here it shares the demultiplexer)"
        )

        def split_concat_layer(m, t):
            if m[1] == "bias":
                return [("bert.demultiplexer.hidden_proj.bias", t)]
            key_half, hidden_half = t[:, :hidden], t[:, hidden:]  # the original concatenates the key first
            return [
                ("bert.demultiplexer.key_proj.weight", key_half),
                ("bert.demultiplexer.hidden_proj.weight", hidden_half),
            ]

        rules += [
            (rf"{used}\.dense\.(weight|bias)", split_concat_layer),
            (rf"{used}\.layer_norm\.(weight|bias)", lambda m, t: [(f"bert.demultiplexer.input_norm.{m[1]}", t)]),
            (rf"{unused}\.(dense|layer_norm)\.(weight|bias)", lambda m, t: why),
        ]
    return [(re.compile(pattern), rule) for pattern, rule in rules]


def map_legacy_state_dict(
    legacy_state_dict: dict[str, torch.Tensor], legacy_config: dict, kind: str, model
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename the original weights onto `model`'s keys.

    Returns ``(state dict for model, {original key: why it was dropped})``. Raises
    :class:`LegacyCheckpointError` naming any key no rule understands, a key whose target the model does
    not have or has with another shape, and copies of a shared module that disagree.
    """
    rules = _rules(legacy_config, kind, model)
    expected = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    unknown: list[str] = []
    for key, tensor in legacy_state_dict.items():
        for pattern, rule in rules:
            match = pattern.fullmatch(key)
            if match:
                result = rule(match, tensor)
                break
        else:
            unknown.append(key)
            continue
        if isinstance(result, str):
            dropped[key] = result
            continue
        for target, value in result:
            if target not in expected:
                raise LegacyCheckpointError(
                    f"Weight {key!r} maps to {target!r}, which the converted model does not have"
                )
            if tuple(value.shape) != tuple(expected[target].shape):
                raise LegacyCheckpointError(
                    f"Weight {key!r} has shape {tuple(value.shape)}, but {target!r} expects {tuple(expected[target].shape)}"
                )
            mapped[target] = value
    if unknown:
        raise LegacyCheckpointError(
            f"Unknown weights in the checkpoint (not part of a {legacy_config['architectures'][0]} with "
            f"{legacy_config['muxing_variant']} + {legacy_config['demuxing_variant']}): {', '.join(unknown)}"
        )
    _check_shared_copies(legacy_state_dict, legacy_config)
    return mapped, dropped


def _check_shared_copies(state_dict: dict[str, torch.Tensor], legacy_config: dict) -> None:
    """The original saves one module under several names (a shared demux module, tied decoder): check
    that the copies it drops are the tensors it keeps."""
    pairs = [
        (key, key.split(".", 1)[1])
        for key in state_dict
        if re.fullmatch(r"(demultiplexer|retrieval_head)\.demux_module\..*", key)
    ]
    if legacy_config.get("tie_word_embeddings", True) is False and "retrieval_head.decoder.weight" in state_dict:
        pairs.append(("retrieval_head.decoder.weight", "bert.embeddings.word_embeddings.weight"))
    for copy, kept in pairs:
        if kept not in state_dict or not torch.equal(state_dict[copy], state_dict[kept]):
            raise LegacyCheckpointError(
                f"Weight {copy!r} differs from {kept!r}: the converted model shares one tensor for both and "
                "cannot reproduce two different ones"
            )


def _load_into(model, state_dict: dict[str, torch.Tensor]) -> None:
    """Load `state_dict` strictly: only the decoder weights tied to the word embeddings may be absent."""
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise LegacyCheckpointError(
            f"The checkpoint does not provide every weight of {type(model).__name__}: missing {missing}, "
            f"unexpected {unexpected}"
        )
    words = model.get_input_embeddings().weight
    for key in tied:
        tensor = model.get_parameter(key)
        if not torch.equal(tensor, words):
            raise LegacyCheckpointError(f"{key} is not tied to the word embeddings after loading")


__all__ = [
    "convert_legacy_checkpoint",
    "legacy_finetuning_options",
    "map_legacy_state_dict",
    "LegacyConversion",
    "LegacyCheckpointError",
]
