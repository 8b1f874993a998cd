"""Generated model cards: metadata the Hub understands, body from config + training record, the
training record schema, the `card` CLI, and the committed example card."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, tiny_config
from huggingface_hub import ModelCard, ModelCardData, RepoCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from mux_plms import (
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxBertForTokenClassification,
    MuxBertModel,
)
from mux_plms.hub import (
    EvaluationResult,
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
        "| treebank (Penn Treebank) | retrieval_accuracy = 0.97 |",
        "| 2 | `mlm` (stage 2, multiplexed masked-language-model pre-training) | 2,000 | treebank (Penn Treebank) "
        "| mlm_loss = 3.25 |",
        "| 3 | `finetune` (stage 3, task fine-tuning) | 300 | polarity sentences | loss = 0.41 |",
    ]
    assert "| SST-2 (sst2) | validation | accuracy | 0.875 | multiplexed |" in text
    assert "| SST-2 (sst2) | validation | accuracy | 0.9 | ensembled |" in text
    assert "| this model (N = 2) | 800.0 | 2.00x |" in text and "| same backbone, N = 1 | 400.0 | 1.00x |" in text
    # Usage with and without mux_plms, ensembling, limitations.
    assert "import mux_plms" in text
    assert 'AutoModelForSequenceClassification.from_pretrained("org/mux-bert-n2").eval()' in text
    assert 'AutoModelForSequenceClassification.from_pretrained("org/mux-bert-n2", trust_remote_code=True)' in text
    assert 'AutoTokenizer.from_pretrained("google-bert/bert-base-uncased")' in text  # no tokenizer in the folder
    assert "model.forward_ensemble(**batch)" in text
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


def test_training_record_round_trip_and_validation(tmp_path):
    path = RECORD.save(tmp_path)
    assert path == tmp_path / "training_record.json"
    assert TrainingRecord.load(tmp_path) == RECORD
    assert TrainingRecord.load(path).throughput.speedup == 2.0
    assert TrainingRecord.load(tmp_path / "other", missing_ok=True) == TrainingRecord()
    with pytest.raises(FileNotFoundError, match="No training record"):
        TrainingRecord.load(tmp_path / "other")

    with pytest.raises(ValueError, match=r"stage has unknown keys \['epochs'\]"):
        TrainingRecord.from_dict({"stages": [{"name": "mlm", "steps": 1, "data": "d", "epochs": 2}]})
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        TrainingStage("mlm", -1, "d")
    with pytest.raises(ValueError, match=r"metrics\['loss'\] must be a finite number"):
        TrainingStage("mlm", 1, "d", {"loss": math.nan})
    with pytest.raises(ValueError, match="version 2 is not supported"):
        TrainingRecord.from_dict({"version": 2})
    with pytest.raises(ValueError, match="samples_per_second must be > 0"):
        ThroughputRecord(0.0)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        TrainingRecord.load(tmp_path / "bad.json")


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
    with pytest.raises(ValueError, match="entry 0 must be a JSON object with a 'stage' key"):
        TrainingRecord.from_dict([{"steps": 3}])
