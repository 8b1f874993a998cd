"""MUX-ELECTRA specifics: the projection, the RTD loss, tied decoders, Auto classes, loading a discriminator
checkpoint into the task models, warm start from a vanilla ELECTRA, errors.

The family battery (contract, padding, save/load, remote code, Trainer, meta device) is
tests/test_model_battery.py::TestMuxElectra / TestMuxElectraBaseShape."""

from __future__ import annotations

import pytest
import torch
from conftest import vanilla_electra_config
from mux_testing import ELECTRA_SHAPES as SHAPES
from mux_testing import electra_config, make_inputs, make_labels
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForPreTraining,
    ElectraConfig,
    ElectraForPreTraining,
    ElectraModel,
)

import mux_plms
from mux_plms import (
    MUXING_VARIANTS,
    MuxElectraConfig,
    MuxElectraForMaskedLM,
    MuxElectraForPreTraining,
    MuxElectraForSequenceClassification,
    MuxElectraForTokenClassification,
    MuxElectraModel,
)

CLASSES = [
    MuxElectraModel,
    MuxElectraForPreTraining,
    MuxElectraForMaskedLM,
    MuxElectraForSequenceClassification,
    MuxElectraForTokenClassification,
]
BATCH, LENGTH, NUM_LABELS, VOCAB = 7, 9, 3, 120


# "small" mirrors ELECTRA-small (embedding_size < hidden_size: embeddings_project exists); "base" has E == H.
@pytest.mark.parametrize("shape", ["small", "base"])
def test_multiplexer_sits_before_the_projection(shape):
    """The multiplexer works at embedding_size; embeddings_project exists only when E != H (as in ElectraModel)."""
    for muxing in MUXING_VARIANTS:
        model = MuxElectraModel(electra_config(shape, muxing_variant=muxing, num_instances=2))
        keys = model.multiplexer.instance_keys
        assert keys.shape[-1] == SHAPES[shape]
        assert hasattr(model, "embeddings_project") == (shape == "small")
    # mixed hidden states are at the hidden width, after the projection
    model = MuxElectraModel(electra_config(shape, num_instances=2)).eval()
    out = model(**make_inputs(batch=4))
    assert out.mixed_hidden_state.shape[-1] == 32 and out.last_hidden_state.shape == (4, LENGTH, 32)


def test_backbone_is_exactly_electra():
    """Parameter names and shapes of the backbone equal ElectraModel's (so vanilla checkpoints load)."""
    config = electra_config("small", demuxing_variant="rsa")
    vanilla = ElectraModel(vanilla_electra_config(config))
    ours = {
        k: v.shape
        for k, v in MuxElectraModel(config).state_dict().items()
        if not k.startswith(("multiplexer.", "demultiplexer."))
    }
    assert ours == {k: v.shape for k, v in vanilla.state_dict().items()}


def test_groups_are_independent_and_instances_coupled():
    model = MuxElectraForTokenClassification(
        electra_config(num_instances=2, num_labels=2, muxing_variant="gaussian_hadamard", demuxing_variant="rsa")
    ).eval()
    inputs = make_inputs(batch=4)
    with torch.no_grad():
        before = model(**inputs).logits
        inputs["input_ids"][3, 1:4] = 7  # group 1, instance 1
        after = model(**inputs).logits
    torch.testing.assert_close(before[:2], after[:2], rtol=0, atol=0)  # group 0 untouched
    assert not torch.allclose(before[2], after[2])  # the other instance of group 1 changes


def test_rtd_loss_ignores_minus_100_and_padding():
    model = MuxElectraForPreTraining(electra_config(num_instances=2, demuxing_variant="rsa")).eval()
    inputs = make_inputs(batch=4)
    labels = make_labels("PreTraining", inputs)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
        asked = (labels != -100) & inputs["attention_mask"].bool()
        manual = torch.nn.functional.binary_cross_entropy_with_logits(out.logits[asked], labels[asked].float())
        torch.testing.assert_close(out.task_loss, manual)
        # labels under padding are ignored even when they are not -100
        noisy = labels.masked_fill(inputs["attention_mask"] == 0, 1)
        torch.testing.assert_close(model(**inputs, labels=noisy).task_loss, out.task_loss)
        # no position asked: a zero loss, not NaN
        empty = model(**inputs, labels=torch.full_like(labels, -100))
        assert empty.task_loss.item() == 0.0
    with pytest.raises(ValueError, match=r"labels must have shape \(batch, seq_len\) = \(4, 9\)"):
        model(**inputs, labels=labels[:, :5])


def test_generator_decoder_tied_to_word_embeddings():
    model = MuxElectraForMaskedLM(electra_config(num_instances=2))
    words = model.electra.embeddings.word_embeddings.weight
    assert model.lm_head.decoder.weight is words and model.retrieval_head.decoder.weight is words
    assert model.lm_head.decoder.weight.shape == (VOCAB, 16)  # at the embedding width


def test_forward_ensemble_and_mlm_logits_at_labels_only():
    model = MuxElectraForMaskedLM(electra_config(num_instances=2, muxing_variant="gaussian_hadamard")).eval()
    inputs = make_inputs(batch=5)
    labels = make_labels("MaskedLM", inputs)
    with torch.no_grad():
        full = model(**inputs, labels=labels)
        packed = model(**inputs, labels=labels, logits_at_labels_only=True)
    torch.testing.assert_close(packed.logits, full.logits[labels != -100])
    torch.testing.assert_close(packed.task_loss, full.task_loss)
    classifier = MuxElectraForSequenceClassification(electra_config(num_instances=2, num_labels=3)).eval()
    ensembled = classifier.forward_ensemble(**inputs)
    assert ensembled.shape == (5, 3) and torch.isfinite(ensembled).all()


# ------------------------------------------------------------------------------------- Auto, remote code


def test_public_names_and_auto_config():
    for cls in [MuxElectraConfig, *CLASSES]:
        assert getattr(mux_plms, cls.__name__) is cls
    assert isinstance(AutoConfig.for_model("mux_electra"), MuxElectraConfig)
    assert type(AutoModelForPreTraining.from_config(electra_config())) is MuxElectraForPreTraining


# --------------------------------------------------------------------------- checkpoints and warm start


@pytest.mark.parametrize(
    "cls,head_keys",
    [
        (
            MuxElectraForSequenceClassification,
            [
                "classifier.dense.bias",
                "classifier.dense.weight",
                "classifier.out_proj.bias",
                "classifier.out_proj.weight",
            ],
        ),
        (MuxElectraForTokenClassification, ["classifier.out_proj.bias", "classifier.out_proj.weight"]),
    ],
    ids=["sequence", "token"],
)
def test_discriminator_checkpoint_loads_into_task_models(tmp_path, cls, head_keys):
    discriminator = MuxElectraForPreTraining(electra_config(num_instances=2))
    discriminator.save_pretrained(tmp_path)
    model, info = cls.from_pretrained(tmp_path, num_labels=NUM_LABELS, output_loading_info=True)
    assert sorted(info["missing_keys"]) == head_keys  # only the task head is new
    assert sorted(info["unexpected_keys"]) == [
        "discriminator_predictions.dense.bias",
        "discriminator_predictions.dense.weight",
        "discriminator_predictions.dense_prediction.bias",
        "discriminator_predictions.dense_prediction.weight",
    ]
    assert not info["mismatched_keys"]
    source = discriminator.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(("electra.", "retrieval_head.")):
            assert torch.equal(value, source[key]), key


def vanilla_electra_folder(tmp_path):
    config = ElectraConfig(
        vocab_size=VOCAB,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    torch.manual_seed(1)
    ElectraForPreTraining(config).save_pretrained(tmp_path)
    return tmp_path


def test_warm_start_from_a_vanilla_electra_discriminator(tmp_path):
    folder = vanilla_electra_folder(tmp_path)
    model, info = MuxElectraForPreTraining.from_pretrained(
        folder, num_instances=2, muxing_variant="gaussian_hadamard", demuxing_variant="rsa", output_loading_info=True
    )
    assert isinstance(model.config, MuxElectraConfig) and model.config.num_instances == 2
    weights = load_file(folder / "model.safetensors")
    for key in [
        "electra.embeddings.word_embeddings.weight",
        "electra.embeddings_project.weight",
        "electra.encoder.layer.1.output.dense.weight",
        "discriminator_predictions.dense_prediction.weight",
    ]:
        torch.testing.assert_close(model.get_parameter(key), weights[key], rtol=0, atol=0)
    missing = set(info["missing_keys"])
    assert not any(
        k.startswith(("electra.embeddings", "electra.encoder", "discriminator_predictions")) for k in missing
    )
    assert {"electra.demultiplexer.instance_keys", "retrieval_head.dense.weight"} <= missing
    assert not info["unexpected_keys"]
    out = model(input_ids=torch.randint(5, VOCAB, (3, 6)))
    assert out.logits.shape == (3, 6) and torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match="num_instances=2, but num_instances=5"):
        model.save_pretrained(tmp_path / "mux")
        MuxElectraForPreTraining.from_pretrained(tmp_path / "mux", num_instances=5)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"muxing_variant": "fourier"}, "muxing_variant must be one of"),
        ({"demuxing_variant": "index"}, "demuxing_variant must be one of"),
        ({"num_instances": 0}, "num_instances must be an integer >= 1"),
        (
            {"embedding_size": 15, "muxing_variant": "contextual"},
            r"embedding_size=15, which must be a multiple of num_attention_heads=2",
        ),
        ({"legacy_embed_mixture": True}, r"not supported by mux_electra.*legacy_embed_mixture"),
        ({"legacy_ignore_token_type_ids": True}, "not supported by mux_electra"),
        (
            {"prefix_index_token_ids": [2, 500]},
            r"prefix_index_token_ids must be vocabulary ids in \[0, vocab_size=120\)",
        ),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        electra_config(**kwargs)


def test_gradient_checkpointing_and_attention_implementations_agree():
    torch.manual_seed(0)
    config = electra_config(num_instances=2, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = MuxElectraForTokenClassification(config)
    inputs = make_inputs()
    labels = make_labels("TokenClassification", inputs)
    plain = model(**inputs, labels=labels).loss
    plain.backward()
    grad = model.get_input_embeddings().weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    checkpointed = model(**inputs, labels=labels).loss
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, plain)
    torch.testing.assert_close(model.get_input_embeddings().weight.grad, grad, rtol=1e-5, atol=1e-6)
    model.eval()
    with torch.no_grad():
        sdpa = model(**inputs).logits
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        torch.testing.assert_close(model(**inputs).logits, sdpa, rtol=1e-4, atol=1e-5)
