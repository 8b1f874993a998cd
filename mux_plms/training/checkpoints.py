"""Checkpoints of a pre-training stage: where they go, writing them (``accelerator.save_state`` then a JSON
progress file marking them complete), finding and resuming them, and what makes resuming safe: the run's
settings must equal the checkpoint's (:func:`stage_settings`, :func:`check_resume_settings`) and every file
must load without running code (:func:`check_checkpoint_files`).

:func:`stage_settings` lives here rather than with the training records: it is the resume contract, saved in
every checkpoint and compared on resume, together with :data:`RESUMABLE_CHANGES`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..utils import runtime

if TYPE_CHECKING:  # pragma: no cover
    from .arguments import PretrainingArguments

CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step_"
COMPLETE_MARKER = "progress.json"  # written last: a checkpoint without it is incomplete and ignored


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


__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_PREFIX",
    "COMPLETE_MARKER",
    "RESUMABLE_CHANGES",
    "TrainingProgress",
    "checkpoint_root",
    "list_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
    "stage_settings",
    "check_resume_settings",
    "read_progress",
    "check_checkpoint_files",
    "load_checkpoint",
]
