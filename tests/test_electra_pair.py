"""The ELECTRA pre-training pair (generator + multiplexed discriminator) and the ELECTRA size presets."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import vanilla_electra_config
from transformers import ElectraModel

from mux_plms import MuxElectraForMaskedLM, MuxElectraForPreTraining, MuxElectraForSequenceClassification
from mux_plms.training.electra import (
    ELECTRA_PRESETS,
    MuxElectraPretrainingPair,
    load_electra_preset,
)

VOCAB, MASK_ID = 120, 4


def tiny_pair(n: int = 2, generator_n: int | None = None, **pair_kwargs) -> MuxElectraPretrainingPair:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, max_position_embeddings=40, retrieval_loss_coeff=0.5)
    return MuxElectraPretrainingPair.from_preset(
        "tiny",
        generator={"num_instances": generator_n or n, **common},
        discriminator={"num_instances": n, **common},
        muxing_variant="gaussian_hadamard",
        demuxing_variant="rsa",
        pair_kwargs=pair_kwargs,
    )


def masked_batch(batch: int = 5, length: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    original = torch.randint(5, VOCAB, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, -3:] = 0
    attention_mask[3, -5:] = 0
    original = original.masked_fill(attention_mask == 0, 0)
    selected = (torch.rand(batch, length, generator=g) < 0.3) & attention_mask.bool()
    selected[0, 1] = True
    labels = original.masked_fill(~selected, -100)
    input_ids = original.masked_fill(selected, MASK_ID)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}, original


def test_forward_loss_and_metrics():
    pair = tiny_pair(n=2).eval()  # eval: no dropout, deterministic sampling
    batch, original = masked_batch()
    out = pair(**batch)
    expected = out.generator_loss + 50.0 * out.rtd_loss + 0.5 * out.retrieval_loss + 0.5 * out.generator_retrieval_loss
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape == (5, 10) and out.corrupted_input_ids.shape == (5, 10)
    masked = batch["labels"] != -100
    # outside the masked positions the discriminator sees the generator's inputs; inside, the samples
    assert torch.equal(out.corrupted_input_ids[~masked], batch["input_ids"][~masked])
    assert not (out.corrupted_input_ids[masked] == MASK_ID).all()
    assert torch.equal(out.replaced, masked & (out.corrupted_input_ids != original))
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(out.replaced_fraction, out.replaced[real].float().mean())
    torch.testing.assert_close(out.rtd_accuracy, ((out.logits > 0) == out.replaced)[real].float().mean())
    with torch.no_grad():
        # the generator's loss is its MLM loss on the masked inputs ...
        generated = pair.generator(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        torch.testing.assert_close(out.generator_loss, generated.task_loss)
        # ... and the discriminator's, replaced-token detection on the corrupted inputs, over real tokens
        rtd_labels = out.replaced.long().masked_fill(~real, -100)
        judged = pair.discriminator(out.corrupted_input_ids, batch["attention_mask"], labels=rtd_labels)
    torch.testing.assert_close(out.rtd_loss, judged.task_loss)
    torch.testing.assert_close(out.logits, judged.logits)


def test_a_sample_equal_to_the_original_counts_as_original(monkeypatch):
    pair = tiny_pair(n=2).eval()
    batch, original = masked_batch()
    masked = batch["labels"] != -100
    monkeypatch.setattr(pair, "sample", lambda logits, rng=None: batch["labels"][masked])
    out = pair(**batch)
    assert not out.replaced.any() and out.replaced_fraction.item() == 0.0
    assert torch.equal(out.corrupted_input_ids, original)
    other = (batch["labels"][masked] + 1) % VOCAB
    monkeypatch.setattr(pair, "sample", lambda logits, rng=None: other)
    out = pair(**batch)
    assert torch.equal(out.replaced, masked)


def test_eval_is_deterministic_and_training_uses_the_rng():
    pair = tiny_pair(n=2)
    batch, _ = masked_batch()
    pair.eval()
    with torch.no_grad():
        a, b = pair(**batch), pair(**batch)
    assert torch.equal(a.corrupted_input_ids, b.corrupted_input_ids)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    pair.train()
    with torch.no_grad():
        torch.manual_seed(123)  # dropout
        c = pair(**batch, rng=torch.Generator().manual_seed(7))
        torch.manual_seed(123)
        d = pair(**batch, rng=torch.Generator().manual_seed(7))
        e = pair(**batch, rng=torch.Generator().manual_seed(8))
    assert torch.equal(c.corrupted_input_ids, d.corrupted_input_ids)
    assert not torch.equal(c.corrupted_input_ids, e.corrupted_input_ids)


def test_sampler_follows_the_distribution():
    pair = tiny_pair(n=1).eval()
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0]])).expand(20000, 4)
    samples = pair.sample(logits, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(samples, minlength=4).float() / len(samples)
    torch.testing.assert_close(frequencies, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.015, rtol=0)
    assert pair.sample(torch.zeros(0, 4)).shape == (0,)


def test_no_gradient_through_sampling_and_shared_embeddings():
    pair = tiny_pair(n=2)
    assert pair.embeddings_shared
    words = pair.discriminator.electra.embeddings.word_embeddings.weight
    assert pair.generator.electra.embeddings is pair.discriminator.electra.embeddings
    assert pair.generator.lm_head.decoder.weight is words  # still tied after sharing
    assert pair.generator.retrieval_head.decoder.weight is words
    batch, _ = masked_batch()
    out = pair(**batch)
    out.rtd_loss.backward()  # the discriminator's loss alone
    generator_only = [p for n, p in pair.generator.named_parameters() if n.startswith("electra.encoder")]
    assert all(p.grad is None for p in generator_only)  # nothing flows back through the samples
    assert words.grad is not None and words.grad.abs().sum() > 0
    pair.zero_grad()
    pair(**batch).loss.backward()
    assert all(p.grad is not None for p in generator_only)


def test_unmultiplexed_generator_and_unshared_embeddings():
    pair = tiny_pair(n=2, generator_n=1)
    batch, _ = masked_batch()
    out = pair(**batch, retrieval_instance_ids=torch.zeros(3, 10, dtype=torch.long))
    assert torch.isfinite(out.loss) and out.logits.shape == (5, 10)
    g, d = load_electra_preset("tiny", vocab_size=VOCAB, generator={"embedding_size": 16, "num_attention_heads": 1})
    separate = MuxElectraPretrainingPair.from_configs(g, d)
    assert not separate.embeddings_shared
    assert separate.generator.lm_head.decoder.weight is separate.generator.electra.embeddings.word_embeddings.weight
    assert torch.isfinite(separate(**batch).loss)


def test_save_and_load_the_pair(tmp_path):
    pair = tiny_pair(n=2, discriminator_weight=20.0).eval()
    batch, _ = masked_batch()
    with torch.no_grad():
        before = pair(**batch)
    pair.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["MuxElectraForPreTraining"]
    assert json.loads((tmp_path / "generator" / "config.json").read_text())["architectures"] == [
        "MuxElectraForMaskedLM"
    ]
    loaded = MuxElectraPretrainingPair.from_pretrained(tmp_path).eval()
    assert loaded.discriminator_weight == 20.0 and loaded.embeddings_shared
    with torch.no_grad():
        after = loaded(**batch)
    assert torch.equal(before.corrupted_input_ids, after.corrupted_input_ids)
    torch.testing.assert_close(after.loss, before.loss, rtol=1e-5, atol=1e-5)
    # the discriminator folder is a regular checkpoint for fine-tuning
    classifier = MuxElectraForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert torch.equal(
        classifier.electra.encoder.layer[0].output.dense.weight,
        pair.discriminator.electra.encoder.layer[0].output.dense.weight,
    )


def test_pair_errors():
    pair = tiny_pair(n=2)
    batch, _ = masked_batch()
    with pytest.raises(ValueError, match="labels are required"):
        pair(batch["input_ids"], batch["attention_mask"])
    with pytest.raises(ValueError, match="labels must have the shape of input_ids"):
        pair(batch["input_ids"], labels=batch["labels"][:, :4])
    with pytest.raises(ValueError, match="discriminator_weight must be >= 0"):
        MuxElectraPretrainingPair(pair.generator, pair.discriminator, discriminator_weight=-1)
    with pytest.raises(ValueError, match="generator must be a MuxElectraForMaskedLM"):
        MuxElectraPretrainingPair(pair.discriminator, pair.discriminator)
    g, d = load_electra_preset("tiny", generator={"vocab_size": 100}, discriminator={"vocab_size": 120})
    with pytest.raises(ValueError, match="vocab_size 100 != 120"):
        MuxElectraPretrainingPair(MuxElectraForMaskedLM(g), MuxElectraForPreTraining(d))


# ------------------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize(
    "name,fraction,layers,hidden,embedding",
    [("small", 4, 12, 256, 128), ("base", 3, 12, 768, 768), ("large", 4, 24, 1024, 1024), ("tiny", 4, 2, 64, 32)],
)
def test_presets_follow_the_electra_paper(name, fraction, layers, hidden, embedding):
    generator, discriminator = load_electra_preset(name)
    assert (discriminator.num_hidden_layers, discriminator.hidden_size, discriminator.embedding_size) == (
        layers,
        hidden,
        embedding,
    )
    assert generator.hidden_size * fraction == discriminator.hidden_size
    assert generator.intermediate_size * fraction == discriminator.intermediate_size
    assert generator.num_attention_heads == max(1, discriminator.num_attention_heads // fraction)
    assert generator.num_hidden_layers == discriminator.num_hidden_layers
    assert generator.embedding_size == discriminator.embedding_size  # so the embeddings are shared
    assert generator.num_instances == discriminator.num_instances == 2
    # the discriminator's backbone has exactly ELECTRA's parameter count
    if name in ("small", "tiny"):
        vanilla = vanilla_electra_config(discriminator)
        with torch.device("meta"):
            ours = MuxElectraForPreTraining(discriminator).electra
            reference = ElectraModel(vanilla)
        count = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith(("multiplexer", "demultiplexer")))
        assert count == sum(p.numel() for p in reference.parameters())
        if name == "small":
            assert 13_000_000 < count < 14_500_000  # ELECTRA-Small: 14M parameters


def test_preset_overrides_and_errors(tmp_path):
    generator, discriminator = load_electra_preset(
        "small", num_instances=5, muxing_variant="random_ortho", generator={"num_instances": 1}
    )
    assert discriminator.num_instances == 5 and generator.num_instances == 1
    assert generator.muxing_variant == discriminator.muxing_variant == "random_ortho"
    assert set(ELECTRA_PRESETS) == {"tiny", "small", "base", "large"}
    with pytest.raises(ValueError, match="Unknown ELECTRA preset 'huge'"):
        load_electra_preset("huge")
    custom = tmp_path / "mine.json"
    custom.write_text(
        json.dumps({"discriminator": {"hidden_size": 64, "embedding_size": 32, "num_attention_heads": 2}})
    )
    with pytest.raises(ValueError, match=r"lacks the section\(s\) \['generator'\]"):
        load_electra_preset(custom)
