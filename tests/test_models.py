"""MUX-BERT beyond the common battery: group independence, mixing, retrieval, pooling, ensembles, plugins.

The family battery (contract, padding, save/load, remote code, Trainer, meta device) is
tests/test_model_battery.py::TestMuxBert."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from mux_testing import LENGTH, make_inputs, make_labels

from mux_plms import (
    DEMUXING_VARIANTS,
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxBertForTokenClassification,
    MuxBertModel,
)


def test_groups_are_independent():
    """Rows kN..kN+N-1 form group k: changing group 1 leaves group 0's outputs untouched."""
    model = MuxBertForSequenceClassification(tiny_config(num_instances=2, num_labels=2)).eval()
    inputs = make_inputs(batch=4)
    with torch.no_grad():
        before = model(**inputs).logits
        inputs["input_ids"][2:, 1:4] = 7
        after = model(**inputs).logits
    torch.testing.assert_close(before[:2], after[:2], rtol=0, atol=0)
    assert not torch.allclose(before[2:], after[2:])


def test_mixing_couples_instances_within_a_group():
    """The instances of one group share a backbone pass: changing one changes the other's output."""
    model = MuxBertForSequenceClassification(
        tiny_config(num_instances=2, num_labels=2, muxing_variant="gaussian_hadamard", demuxing_variant="rsa")
    ).eval()
    inputs = make_inputs(batch=2)
    with torch.no_grad():
        before = model(**inputs).logits
        inputs["input_ids"][1, 1:4] = 7
        after = model(**inputs).logits
    assert not torch.allclose(before[0], after[0])


def test_retrieval_loss_uses_requested_instances():
    config = tiny_config(num_instances=2, retrieval_loss_coeff=1.0, task_loss_coeff=0.0)
    model = MuxBertForMaskedLM(config).eval()
    inputs = make_inputs(batch=4)
    ids_a = torch.zeros(2, LENGTH, dtype=torch.long)
    ids_b = torch.ones(2, LENGTH, dtype=torch.long)
    with torch.no_grad():
        out_a = model(**inputs, retrieval_instance_ids=ids_a)
        out_b = model(**inputs, retrieval_instance_ids=ids_b)
        default = model(**inputs)
    assert out_a.logits is None  # stage-1 model: no MLM head computed
    assert not torch.allclose(out_a.retrieval_loss, out_b.retrieval_loss)
    # the selected-instance path equals demultiplexing every instance and picking one
    mixed, batch, _ = model.bert.multiplex_encode(**inputs)
    every = model.bert.demultiplexer(mixed)  # (G, N, L, H)
    torch.testing.assert_close(model.retrieval_head(every[:, 1]), out_b.retrieval_logits, rtol=1e-5, atol=1e-5)
    assert default.retrieval_loss is not None and torch.isfinite(default.retrieval_loss)
    with pytest.raises(ValueError, match="retrieval_instance_ids must have shape"):
        model(**inputs, retrieval_instance_ids=torch.zeros(3, LENGTH, dtype=torch.long))
    with pytest.raises(ValueError, match=r"retrieval_instance_ids must lie in \[0, 2\)"):
        model(**inputs, retrieval_instance_ids=torch.full((2, LENGTH), 2))


def test_mlm_logits_at_labels_only():
    model = MuxBertForMaskedLM(tiny_config(num_instances=2)).eval()
    inputs = make_inputs(batch=4)
    labels = make_labels("MaskedLM", inputs)
    with torch.no_grad():
        full = model(**inputs, labels=labels)
        packed = model(**inputs, labels=labels, logits_at_labels_only=True)
    selected = labels != -100
    assert packed.logits.shape == (int(selected.sum()), model.config.vocab_size)
    torch.testing.assert_close(packed.logits, full.logits[selected])
    torch.testing.assert_close(packed.task_loss, full.task_loss)


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_sequence_classification_problem_types(problem):
    num_labels = 1 if problem == "regression" else 3
    model = MuxBertForSequenceClassification(tiny_config(num_instances=2, num_labels=num_labels))
    inputs = make_inputs(batch=5)
    labels = torch.rand(5) if problem == "regression" else (torch.rand(5, 3) > 0.5).float()
    out = model(**inputs, labels=labels)
    assert model.config.problem_type == problem
    assert out.logits.shape == (5, num_labels) and torch.isfinite(out.loss)
    out.loss.backward()


def test_sdpa_and_eager_agree():
    torch.manual_seed(0)
    config = tiny_config(num_instances=2, num_labels=3)
    sdpa = MuxBertForTokenClassification(config).eval()
    sdpa.set_attn_implementation("sdpa")
    inputs = make_inputs()
    with torch.no_grad():
        a = sdpa(**inputs).logits
        sdpa.set_attn_implementation("eager")
        assert sdpa.config._attn_implementation == "eager"
        b = sdpa(**inputs).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_forward_ensemble(n):
    torch.manual_seed(0)
    model = MuxBertForSequenceClassification(
        tiny_config(num_instances=n, num_labels=3, muxing_variant="gaussian_hadamard", demuxing_variant="rsa")
    ).eval()
    inputs = make_inputs(batch=5)
    ensembled = model.forward_ensemble(**inputs)
    assert ensembled.shape == (5, 3)
    with torch.no_grad():
        plain = model(**inputs).logits
    if n == 1:
        torch.testing.assert_close(ensembled, plain)
        return
    # manual: each example visits every slot of its group once
    groups = (5 + n - 1) // n
    total = torch.zeros(groups * n, 3)
    padded = {k: torch.cat([v, torch.zeros(groups * n - 5, LENGTH, dtype=v.dtype)]) for k, v in inputs.items()}
    for shift in range(n):
        order = torch.cat([g * n + (torch.arange(n) + shift) % n for g in range(groups)])
        with torch.no_grad():
            logits = model(**{k: v[order] for k, v in padded.items()}).logits
        total[order] += logits
    torch.testing.assert_close(ensembled, (total / n)[:5])
    assert not torch.allclose(ensembled, plain)


@pytest.mark.parametrize("muxing", ["gaussian_hadamard", "binary_hadamard"])
def test_streaming_mixture_equals_stacked_mixture(muxing):
    """Embedding and mixing one instance slot at a time (the memory-saving path of Hadamard
    multiplexers) gives the same outputs and gradients as mixing the stacked N-fold embeddings."""
    config = tiny_config(num_instances=3, num_labels=3, muxing_variant=muxing, demuxing_variant="rsa")
    torch.manual_seed(0)
    model = MuxBertForTokenClassification(config).eval()
    assert model.bert.multiplexer.streaming
    inputs = make_inputs(batch=6)
    labels = make_labels("TokenClassification", inputs)
    calls = []
    hook = model.bert.multiplexer.register_forward_hook(lambda *_: calls.append(1))
    streamed = model(**inputs, labels=labels)
    streamed.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(calls) == 3  # one module call per slot: forward hooks (profiling) still see the stage
    hook.remove()
    model.zero_grad()
    model.bert.multiplexer.streaming = False  # instance attribute: the stacked path
    stacked = model(**inputs, labels=labels)
    stacked.loss.backward()
    torch.testing.assert_close(streamed.logits, stacked.logits, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_contextual_multiplexer_chunks_match_one_shot_computation(n):
    """The contextual multiplexer runs its two layers in N memory-bounded chunks; the result equals
    the one-shot computation of the four steps (layer within instances, keys, layer across, mean),
    empty instances and padding included."""
    from mux_plms.models.multiplexing import ContextualMultiplexer

    torch.manual_seed(0)
    config = tiny_config(num_instances=n)
    mux = ContextualMultiplexer(config, config.hidden_size).eval()
    g, length, d = 3, 7, config.hidden_size
    embeddings = torch.randn(g, n, length, d)
    mask = torch.ones(g, n, length, dtype=torch.long)
    mask[0, 1, 4:] = 0
    mask[1, -1] = 0  # an empty instance (internal padding row)
    with torch.no_grad():
        chunked = mux(embeddings, mask)
        flat = embeddings.reshape(g * n, length, d)
        within = mux.instance_layer(flat, mux.instance_mask(flat, mask.reshape(g * n, length))) + flat
        keyed = within.view(g, n, length, d) * mux.instance_keys[None, :, None, :]
        across = keyed.permute(0, 2, 1, 3).reshape(g * length, n, d)
        across_mask = mux.cross_instance_mask(across, mask.permute(0, 2, 1).reshape(g * length, n))
        reference = (mux.cross_instance_layer(across, across_mask) + across).view(g, length, n, d).mean(dim=2)
    assert chunked.shape == (g, length, d)
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("demuxing", DEMUXING_VARIANTS)
def test_mean_sequence_pooling_averages_each_instances_own_token_states(demuxing):
    """sequence_pooling="mean": the head reads the mean of the instance's demultiplexed token states over its
    own (non-padding) tokens; "first" stays the default; unknown values are refused."""
    assert tiny_config().sequence_pooling == "first"
    with pytest.raises(ValueError, match="sequence_pooling must be one of first, mean; got 'max'"):
        tiny_config(sequence_pooling="max")
    config = tiny_config(num_instances=2, num_labels=3, muxing_variant="binary_hadamard",
                         demuxing_variant=demuxing, sequence_pooling="mean")  # fmt: skip
    torch.manual_seed(0)
    model = MuxBertForSequenceClassification(config).eval()
    inputs = make_inputs(batch=5)  # ragged rows, and an odd batch (internal padding instance)
    with torch.no_grad():
        logits = model(**inputs).logits
        states = model.bert(**inputs).last_hidden_state  # (5, L, H) demultiplexed per-instance states
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        expected = model.classifier((states * mask).sum(1) / mask.sum(1))
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
        model.config.sequence_pooling = "first"
        first = model(**inputs).logits
    assert not torch.allclose(first, logits)


def test_instance_layers_run_the_first_layers_per_instance_before_mixing(tiny):
    """Combine first: at N=1 (binary keys: the identity) mixing after k layers changes nothing; at N=2 an
    instance's states depend on its partner only through the layers after mixing, and padding rows change
    nothing."""

    torch.manual_seed(0)
    plain = MuxBertModel(tiny(num_instances=1, muxing_variant="binary_hadamard", demuxing_variant="rsa")).eval()
    combined = MuxBertModel(tiny(num_instances=1, muxing_variant="binary_hadamard", demuxing_variant="rsa",
                                 instance_layers=1)).eval()  # fmt: skip
    combined.load_state_dict(plain.state_dict())
    ids = torch.randint(5, 120, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    torch.testing.assert_close(combined(ids, mask).last_hidden_state, plain(ids, mask).last_hidden_state)

    model = MuxBertModel(tiny(num_instances=2, muxing_variant="gaussian_hadamard", demuxing_variant="rsa",
                              instance_layers=1)).eval()  # fmt: skip
    states = model(ids, mask).last_hidden_state
    padded = model(torch.cat([ids, torch.zeros(1, 7, dtype=torch.long)]),
                   torch.cat([mask, torch.zeros(1, 7, dtype=torch.long)])).last_hidden_state  # fmt: skip
    torch.testing.assert_close(padded[:3], states, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"instance_layers must be an integer in .* = \[0, 1\], got 2"):
        tiny(instance_layers=2)


def test_shared_position_mixing_keys_the_word_embeddings_only(tiny):
    """position_mixing='shared': at N=1 (binary keys: the identity) it equals the keyed model; at N=2 the
    first layer reads LayerNorm(mean of keyed word embeddings + mean token-type embedding + positions)."""

    torch.manual_seed(0)
    plain = MuxBertModel(tiny(num_instances=1, muxing_variant="binary_hadamard", demuxing_variant="rsa")).eval()
    shared = MuxBertModel(tiny(num_instances=1, muxing_variant="binary_hadamard", demuxing_variant="rsa",
                               position_mixing="shared")).eval()  # fmt: skip
    shared.load_state_dict(plain.state_dict())
    inputs = make_inputs(batch=3, length=7)
    torch.testing.assert_close(shared(**inputs).last_hidden_state, plain(**inputs).last_hidden_state)

    model = MuxBertModel(tiny(num_instances=2, muxing_variant="binary_hadamard", demuxing_variant="rsa",
                              position_mixing="shared")).eval()  # fmt: skip
    seen = []
    hook = model.encoder.layer[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    inputs = make_inputs(batch=4, length=7)
    states = model(**inputs).last_hidden_state
    hook.remove()
    emb, keys = model.embeddings, model.multiplexer.instance_keys  # (N, D)
    words = emb.word_embeddings(inputs["input_ids"]).view(2, 2, 7, -1)
    types = emb.token_type_embeddings(inputs["token_type_ids"]).view(2, 2, 7, -1).mean(1)
    expected = emb.LayerNorm((words * keys[None, :, None]).mean(1) + types + emb.position_embeddings.weight[:7])
    torch.testing.assert_close(seen[0], expected)
    keyed = MuxBertModel(tiny(num_instances=2, muxing_variant="binary_hadamard", demuxing_variant="rsa")).eval()
    keyed.load_state_dict(model.state_dict())
    assert not torch.allclose(keyed(**inputs).last_hidden_state, states)  # the option changes what is mixed
    # an odd batch: the internal padding instance stands in for the missing partner; the full groups keep
    # their states
    odd = model(**make_inputs(batch=3, length=7)).last_hidden_state
    torch.testing.assert_close(odd[:2], states[:2])
    assert not torch.allclose(odd[2], states[2])

    with pytest.raises(ValueError, match=r"position_mixing must be one of keyed, shared; got 'per_instance'"):
        tiny(position_mixing="per_instance")
    with pytest.raises(ValueError, match=r"position_mixing='shared' mixes word embeddings, but instance_layers"):
        tiny(position_mixing="shared", instance_layers=1)


def test_a_registered_plugin_variant_is_accepted_end_to_end(tmp_path):
    """The registries drive validation: a multiplexer registered by user code is a valid muxing_variant of
    every family's config, trains, saves and loads; unregistered names are refused, naming the registered ones."""
    from mux_plms.models import multiplexing
    from mux_plms.models.multiplexing import MULTIPLEXERS, GaussianHadamardMultiplexer, register_multiplexer

    @register_multiplexer("negated_hadamard")
    class NegatedHadamard(GaussianHadamardMultiplexer):
        description = "binary chunks, the second instance negated"

        def make_keys(self, generator):
            keys = torch.ones(self.num_instances, self.hidden_size)
            keys[1::2] = -1.0
            return keys

    try:
        assert "negated_hadamard" in multiplexing.muxing_variants()
        config = tiny_config(num_instances=2, num_labels=2, muxing_variant="negated_hadamard", demuxing_variant="rsa")
        torch.manual_seed(0)
        model = MuxBertForSequenceClassification(config)
        assert isinstance(model.bert.multiplexer, NegatedHadamard)
        inputs = make_inputs(batch=4)
        labels = torch.tensor([0, 1, 1, 0])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        before = model(**inputs, labels=labels).loss.item()
        for _ in range(5):
            optimizer.zero_grad()
            model(**inputs, labels=labels).loss.backward()
            optimizer.step()
        model.eval()
        assert model(**inputs, labels=labels).loss.item() < before
        model.save_pretrained(tmp_path)
        loaded = MuxBertForSequenceClassification.from_pretrained(tmp_path).eval()
        assert loaded.config.muxing_variant == "negated_hadamard"
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    finally:
        del MULTIPLEXERS["negated_hadamard"]
    with pytest.raises(ValueError, match=r"muxing_variant must be one of gaussian_hadamard, .*contextual; got 'neg"):
        tiny_config(muxing_variant="negated_hadamard")
    assert "legacy_contextual" not in multiplexing.muxing_variants()  # built only by the legacy options


def test_contextual_empty_instance_reads_the_padded_length():
    """Positions padded in every instance must not change the outputs, also in a group holding the internal
    padding instance (an odd batch at N=2): the empty instance reads its group's real positions. (Found by the
    battery's test_length_padding; the legacy multiplexer keeps the original's uniform attention.)"""
    torch.manual_seed(0)
    model = MuxBertModel(tiny_config(num_instances=2, muxing_variant="contextual", demuxing_variant="rsa")).eval()
    inputs = make_inputs(batch=3)
    longer = {k: torch.cat([v, torch.zeros(3, 2, dtype=v.dtype)], 1) for k, v in inputs.items()}
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
        padded = model(**longer).last_hidden_state[:, :LENGTH]
    torch.testing.assert_close(plain[:2], padded[:2], rtol=1e-5, atol=1e-6)  # the full group: fine
    torch.testing.assert_close(plain[2], padded[2], rtol=1e-5, atol=1e-6)  # beside the padding instance
