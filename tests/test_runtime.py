"""mux_plms.utils.runtime: the thread choice, the early offline check, and the quiet warm start / save logs."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import TINY

from mux_plms.utils import runtime

# ------------------------------------------------------------------------------------------ threads


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: `cores` CPUs in the affinity mask, torch's default thread count, a load average; nothing
    of the real torch thread pool is touched."""

    @dataclass
    class Machine:
        cores: int = 8
        torch_threads: int = 8
        load: float = 0.5
        set_calls: list = field(default_factory=list)

    m = Machine()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(m.cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (m.load, m.load, m.load))
    monkeypatch.setattr(torch, "get_num_threads", lambda: m.torch_threads)

    def set_num_threads(n):
        m.set_calls.append(n)
        m.torch_threads = n

    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)
    for name in ("OMP_NUM_THREADS", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return m


def test_processes_share_the_cores(machine, caplog):
    machine.cores, machine.torch_threads = 4, 4
    with caplog.at_level(logging.INFO, logger="mux_plms"):
        choice = runtime.configure_threads(2)
    assert (choice.threads, choice.processes, choice.cores, choice.source) == (2, 2, 4, "auto")
    assert machine.set_calls == [2] and not choice.oversubscribed
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "torch threads: 2 per process (2 processes on 4 cores; torch's default of 4 each would oversubscribe "
        "them). Choose with --threads or OMP_NUM_THREADS."
    )


def test_more_processes_than_cores_get_one_thread_each(machine):
    machine.cores, machine.torch_threads, machine.load = 2, 2, 3.5
    lines = []
    assert runtime.configure_threads(5, logger=lines.append).threads == 1
    assert machine.set_calls == [1]
    assert lines == [
        "warning: torch threads: 1 per process (5 processes on 2 cores; torch's default of 2 each would oversubscribe "
        "them). Choose with --threads or OMP_NUM_THREADS. More processes than cores: they take turns. The machine "
        "is busy (load average 3.5 on 2 cores): other processes compete for the cores; expect slower runs and "
        "noisier timings."
    ]


def test_one_process_keeps_torch_default_and_never_gets_more(machine, caplog):
    machine.cores, machine.torch_threads = 8, 4  # torch counts physical cores: never raised to the logical count
    with caplog.at_level(logging.INFO, logger="mux_plms"):
        choice = runtime.configure_threads(1)
    assert choice.threads == 4 and machine.set_calls == []
    assert caplog.records[0].getMessage() == "torch threads: 4 (1 process on 8 cores)."


def test_an_explicit_request_is_kept_even_when_it_oversubscribes(machine, caplog):
    machine.cores = 2
    with caplog.at_level(logging.INFO, logger="mux_plms"):
        choice = runtime.configure_threads(2, requested=3)
    assert choice.threads == 3 and machine.set_calls == [3] and choice.oversubscribed
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "3 per process as set by --threads, but 2 x 3 threads > 2 cores: the threads will contend (try 1)" in (
        record.getMessage()
    )


def test_omp_num_threads_is_respected(machine, monkeypatch, caplog):
    machine.cores, machine.torch_threads = 2, 2  # torch read OMP_NUM_THREADS=2 at start
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with caplog.at_level(logging.INFO, logger="mux_plms"):
        choice = runtime.configure_threads(2, flag=None)
    assert choice.threads == 2 and machine.set_calls == [] and choice.source == "OMP_NUM_THREADS=2"
    assert caplog.records[0].levelno == logging.WARNING
    assert "as set by OMP_NUM_THREADS=2, but 2 x 2 threads > 2 cores" in caplog.records[0].getMessage()


def test_a_busy_machine_is_reported(machine):
    machine.cores, machine.torch_threads, machine.load = 2, 2, 4.8
    lines = []
    choice = runtime.configure_threads(1, logger=lines.append)
    assert choice.busy and choice.threads == 2  # the choice does not depend on the load: reproducible
    assert lines == [
        "warning: torch threads: 2 (1 process on 2 cores). The machine is busy (load average 4.8 on 2 cores): other "
        "processes compete for the cores, and fewer threads (e.g. --threads 1 or OMP_NUM_THREADS=1) can run several "
        "times faster."
    ]


def test_only_the_local_main_process_reports(machine, monkeypatch):
    lines = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    runtime.configure_threads(2, logger=lines.append)
    assert lines == [] and machine.set_calls == [4]  # every rank still sets its threads
    monkeypatch.setenv("LOCAL_RANK", "0")
    runtime.configure_threads(2, logger=lines.append)
    assert len(lines) == 1


def test_cores_and_process_counts(machine, monkeypatch):
    machine.cores = 3
    assert runtime.available_cores() == 3  # the affinity mask (taskset), not os.cpu_count()
    assert runtime.local_process_count() == 1 and runtime.local_process_count(4) == 4
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert runtime.local_process_count() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 per node of 8: the node's share counts
    assert runtime.local_process_count() == 2
    with pytest.raises(ValueError, match="num_processes must be >= 1, got 0"):
        runtime.plan_threads(0)
    with pytest.raises(ValueError, match="--threads must be >= 1, got 0"):
        runtime.plan_threads(1, requested=0)


# ------------------------------------------------------------------------------------------ offline


@pytest.fixture
def no_datasets_loader(monkeypatch):
    """`datasets.load_dataset` must not be reached: the check comes first."""
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError("load_dataset was called: the offline check did not come first")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def online_but_unreachable(monkeypatch):
    """Offline mode off, and the Hub endpoint a loopback port nobody listens on (refused at once)."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(runtime, "_PROBE_CACHE", {})
    return port


def test_glue_task_offline_fails_at_once_naming_local_replacements(offline, no_datasets_loader, tmp_path):
    from mux_plms.data import tasks

    started = time.perf_counter()
    with pytest.raises(runtime.HubUnavailableError) as error:
        tasks.load_sequence_data(task_name="sst2", cache_dir=str(tmp_path))
    assert time.perf_counter() - started < 5  # no retry loop (datasets' takes ~35 s)
    message = str(error.value)
    assert message.startswith("--task_name sst2 loads the data set nyu-mll/glue (sst2) from the Hugging Face Hub")
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in message and str(tmp_path) in message
    assert "--train_file train.csv --validation_file validation.csv" in message
    assert "--dataset_name polarity" in message and ".jsonl" in message
    assert isinstance(error.value, ValueError)  # the examples' and CLIs' one-line errors


def test_token_task_offline_names_the_shipped_ner_set(offline, no_datasets_loader, tmp_path):
    from mux_plms.data import tasks

    with pytest.raises(runtime.HubUnavailableError, match=r"--task_name ner loads the data set eriktks/conll2003") as e:
        tasks.load_token_data(task_name="ner", cache_dir=str(tmp_path))
    assert "--dataset_name wnut16" in str(e.value) and '"ner_tags": [...]' in str(e.value)


def test_unreachable_hub_is_detected_by_one_quick_probe(online_but_unreachable, no_datasets_loader, tmp_path):
    from mux_plms.data import tasks

    started = time.perf_counter()
    with pytest.raises(runtime.HubUnavailableError) as error:
        tasks.load_sequence_data(task_name="mrpc", cache_dir=str(tmp_path))
    assert time.perf_counter() - started < 5
    assert f"the Hub (http://127.0.0.1:{online_but_unreachable}) is unreachable (no connection to 127.0.0.1" in str(
        error.value
    )
    assert "MUX_PLMS_HUB_TIMEOUT=10 waits longer, 0 skips this check" in str(error.value)


def test_cached_datasets_load_offline(offline, tmp_path, monkeypatch):
    """A data set datasets already prepared is read from its cache offline: the check lets it through."""
    import datasets

    from mux_plms.data import tasks

    (tmp_path / "nyu-mll___glue" / "sst2" / "0.0.0").mkdir(parents=True)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k["cache_dir"])) or {})
    tasks.load_sequence_data(task_name="sst2", cache_dir=str(tmp_path))
    assert calls == [(("nyu-mll/glue", "sst2"), str(tmp_path))]


def test_probe_reports_a_reachable_endpoint_and_never_waits_past_its_timeout(monkeypatch):
    monkeypatch.setattr(runtime, "_PROBE_CACHE", {})
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert runtime.probe_hub(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2) is None

    def hang(*args, **kwargs):  # a firewall that drops packets, or a resolver that never answers
        time.sleep(10)
        raise TimeoutError("timed out")  # (after the test: the probe thread must not fail in a later test)

    monkeypatch.setattr(socket, "create_connection", hang)
    started = time.perf_counter()
    assert runtime.probe_hub("https://hub.example", timeout=0.3) == "hub.example:443 did not answer within 0.3 s"
    assert time.perf_counter() - started < 2
    monkeypatch.setenv(runtime.HUB_TIMEOUT_ENV, "0")
    assert runtime.probe_hub("https://other.example") is None  # 0: no probe at all


def test_probe_goes_to_the_proxy_when_one_is_set(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert runtime._probe_target("https://huggingface.co") == ("proxy.internal", 3128)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("https_proxy", raising=False)
    assert runtime._probe_target("https://huggingface.co") == ("huggingface.co", 443)


def test_models_by_hub_id_offline(offline, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    runtime.check_hub_models({"--model_name_or_path": str(folder), "--tokenizer_name": None})  # local: never checked
    with pytest.raises(runtime.HubUnavailableError) as error:
        runtime.check_hub_models({"--model_name_or_path": "google-bert/bert-base-uncased"}, cache_dir=tmp_path)
    message = str(error.value)
    assert message.startswith("--model_name_or_path google-bert/bert-base-uncased is not a local folder")
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in message and "MiniLM" in message
    # a repository in the Hub cache loads offline: no error
    snapshot = tmp_path / "models--google-bert--bert-base-uncased" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--google-bert--bert-base-uncased" / "refs").mkdir()
    (tmp_path / "models--google-bert--bert-base-uncased" / "refs" / "main").write_text("abc123")
    runtime.check_hub_models({"--model_name_or_path": "google-bert/bert-base-uncased"}, cache_dir=tmp_path)


def test_the_examples_check_models_right_after_parsing(offline):
    from mux_plms.training.finetune import parse_arguments

    @dataclass
    class Data:
        max_seq_length: int = 16

    with pytest.raises(runtime.HubUnavailableError, match="--teacher_model_name_or_path someone/teacher is not a"):
        parse_arguments(Data, ["--model_name_or_path", "/", "--teacher_model_name_or_path", "someone/teacher",
                               "--output_dir", "unused"])  # fmt: skip


def test_pretraining_on_a_hub_dataset_offline_fails_before_loading(offline, tmp_path, monkeypatch):
    from mux_plms.training import pretrain, pretrain_data
    from mux_plms.training.arguments import PretrainingArguments

    monkeypatch.setattr(pretrain_data, "load_raw_datasets", lambda args: pytest.fail("reached the data loading"))
    args = PretrainingArguments(preset="tiny", dataset_name="wikitext", dataset_config_name="wikitext-2-raw-v1",
                                output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path), report_to="none")  # fmt: skip
    with pytest.raises(runtime.HubUnavailableError, match=r"--dataset_name wikitext loads .*--corpus ptb"):
        pretrain.run_pretraining(args)


def test_hub_warnings_are_printed_once_under_a_configured_root_logger(monkeypatch):
    import io

    hub_root = logging.getLogger("huggingface_hub")
    monkeypatch.setattr(hub_root, "propagate", True)  # what huggingface_hub leaves, and restored afterwards
    own = logging.StreamHandler(io.StringIO())  # stands for huggingface_hub's own stderr handler
    monkeypatch.setattr(hub_root, "handlers", [own])
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger().addHandler(handler)  # what logging.basicConfig in the examples does
    try:
        retry = logging.getLogger("huggingface_hub.utils._http")
        retry.warning("Retrying in 1s [Retry 1/5].")
        assert seen == ["Retrying in 1s [Retry 1/5]."]  # twice in all: root's handler and huggingface_hub's own
        runtime.quiet_hub_logging()
        retry.warning("Retrying in 2s [Retry 2/5].")
        assert seen == ["Retrying in 1s [Retry 1/5]."]
        assert own.stream.getvalue().splitlines() == ["Retrying in 1s [Retry 1/5].", "Retrying in 2s [Retry 2/5]."]
    finally:
        logging.getLogger().removeHandler(handler)


# ------------------------------------------------------------------------------------------ quiet loads and saves


@pytest.fixture(scope="module")
def vanilla_bert(tmp_path_factory) -> Path:
    """A tiny vanilla BERT (masked-LM head, hidden 32, 2 layers) as a user would warm-start from."""
    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("vanilla") / "bert"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**TINY)).save_pretrained(folder)
    return folder


@pytest.fixture
def printed(capfd):
    """Everything a load prints: stdout / stderr (progress bars) and transformers' log records (its handler's
    stream was bound when transformers was imported, so they are collected from its library logger)."""
    records: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: records.append(record.getMessage())
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    capfd.readouterr()

    def lines() -> list[str]:
        captured = capfd.readouterr()
        text = "\n".join([captured.out, captured.err, *records])
        records.clear()
        return [line for line in text.splitlines() if line.strip()]

    yield lines
    library.removeHandler(handler)


def _warm_start(folder: Path, verbose: bool = False, **extra):
    from mux_plms.training.finetune import MuxModelArguments, inspect_checkpoint, load_model

    args = MuxModelArguments(model_name_or_path=str(folder), num_instances=2, **extra)
    return load_model(args, inspect_checkpoint(args), "sequence", 2, verbose=verbose)


def test_a_warm_start_prints_one_summary_line(vanilla_bert, printed, caplog):
    with caplog.at_level(logging.INFO, logger="mux_plms"):
        model = _warm_start(vanilla_bert)
    assert printed() == []  # no table, no model-type warning, no progress bar
    [record] = [r for r in caplog.records if r.name.startswith("mux_plms")]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"Warm start of MuxBertForSequenceClassification (N=2) from {vanilla_bert}: 51 new weights initialised "
        "(demultiplexer, multiplexer, classifier, retrieval_head), 5 unused checkpoint weights ignored (cls). "
        "Full loading report: --log_level debug (or DEBUG logging)."
    )
    assert model.config.num_instances == 2


def test_the_full_loading_report_on_request(vanilla_bert, printed):
    import transformers

    _warm_start(vanilla_bert, verbose=True)
    text = "\n".join(printed())
    assert "MuxBertForSequenceClassification LOAD REPORT" in text and "MISSING" in text and "UNEXPECTED" in text
    assert "to instantiate a model of type `mux_bert`" in text and "Loading weights" in text  # all captured
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_debug()  # --log_level debug
    try:
        _warm_start(vanilla_bert)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    assert "LOAD REPORT" in "\n".join(printed())


def test_a_partial_load_still_shows_the_table(vanilla_bert, tmp_path, printed, caplog):
    """Backbone weights missing from the checkpoint are not what a warm start expects: the table is shown."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(vanilla_bert, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["bert.encoder.layer.0.attention.self.query.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.INFO, logger="mux_plms"):
        _warm_start(broken)
    text = "\n".join(printed())
    assert "LOAD REPORT" in text and "bert.encoder.layer.0.attention.self.query.weight" in text
    assert not [r for r in caplog.records if r.name.startswith("mux_plms")]  # no reassuring summary


def test_a_failed_load_shows_the_table(tmp_path, printed):
    from mux_plms import MuxBertForSequenceClassification
    from mux_plms.models import MuxBertConfig

    MuxBertForSequenceClassification(MuxBertConfig(**TINY, num_instances=2, num_labels=2)).save_pretrained(tmp_path)
    printed()
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        runtime.load_pretrained(MuxBertForSequenceClassification, tmp_path, num_labels=3)
    assert "MISMATCH" in "\n".join(printed())


def _accelerate_save(model, folder: Path, quiet: bool, caplog) -> str:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    try:
        accelerator = Accelerator(cpu=True)
        prepared = accelerator.prepare(model)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            if quiet:
                with runtime.tied_weights_save(accelerator.unwrap_model(prepared)):
                    accelerator.save_state(str(folder))
            else:
                accelerator.save_state(str(folder))
        return caplog.text
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()


def test_saving_declared_tied_weights_raises_no_warning_and_reloads_tied(tmp_path, caplog):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from mux_plms.models import MuxBertConfig, MuxBertForMaskedLM

    torch.manual_seed(0)
    model = MuxBertForMaskedLM(MuxBertConfig(**TINY, num_instances=2))
    assert "Removed shared tensor" in _accelerate_save(model, tmp_path / "loud", False, caplog)  # the flood
    assert "Removed shared tensor" not in _accelerate_save(model, tmp_path / "quiet", True, caplog)

    fresh = MuxBertForMaskedLM(MuxBertConfig(**TINY, num_instances=2))
    try:
        accelerator = Accelerator(cpu=True)
        fresh = accelerator.prepare(fresh)
        accelerator.load_state(str(tmp_path / "quiet"))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()
    embeddings = fresh.bert.embeddings.word_embeddings.weight
    assert torch.equal(embeddings, model.bert.embeddings.word_embeddings.weight)
    assert fresh.lm_head.decoder.weight.data_ptr() == embeddings.data_ptr()  # still tied after the reload


def test_undeclared_shared_tensors_still_warn(tmp_path, caplog):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight  # shared at run time, declared nowhere: from_pretrained would not re-tie it
    assert "Removed shared tensor" in _accelerate_save(model, tmp_path / "ckpt", True, caplog)


def test_push_reports_its_commit_once(tmp_path, monkeypatch, capfd):
    """`mux-plms push` printed "Pushed ..." twice: its own line, and push_to_hub's INFO log."""
    from huggingface_hub import constants

    from mux_plms import MuxBertForSequenceClassification
    from mux_plms.cli import main
    from mux_plms.models import MuxBertConfig
    from mux_plms.testing import HubServer
    from mux_plms.utils.folders import atomic_model_folder

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    model = MuxBertForSequenceClassification(MuxBertConfig(**TINY, num_instances=2, num_labels=2))
    with atomic_model_folder(tmp_path / "model") as partial:
        model.save_pretrained(partial)
    with HubServer() as hub:
        capfd.readouterr()
        assert main(["push", str(tmp_path / "model"), "org/once", "--endpoint", hub.endpoint, "--token", "t"]) == 0
    captured = capfd.readouterr()
    assert (captured.out + captured.err).count("Pushed ") == 1
