"""The MUX-ELECTRA contract: every multiplexer x demultiplexer x N x class, save/load, Auto classes, remote
code, loading a discriminator checkpoint into the task models, warm start from a vanilla ELECTRA, errors."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import run_without_mux_plms, vanilla_electra_config
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    ElectraConfig,
    ElectraForPreTraining,
    ElectraModel,
)

import mux_plms
from mux_plms import (
    DEMUXING_VARIANTS,
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
AUTO = {
    MuxElectraModel: AutoModel,
    MuxElectraForPreTraining: AutoModelForPreTraining,
    MuxElectraForMaskedLM: AutoModelForMaskedLM,
    MuxElectraForSequenceClassification: AutoModelForSequenceClassification,
    MuxElectraForTokenClassification: AutoModelForTokenClassification,
}
BATCH, LENGTH, NUM_LABELS, VOCAB = 7, 9, 3, 120
# "small" mirrors ELECTRA-small (embedding_size < hidden_size: embeddings_project exists); "base" has E == H.
SHAPES = {"small": 16, "base": 32}


def electra_config(shape: str = "small", **overrides) -> MuxElectraConfig:
    """A tiny MuxElectraConfig: hidden 32, 2 layers, vocab 120, 40 positions, embedding 16 (small) or 32 (base)."""
    kwargs = dict(
        vocab_size=VOCAB,
        embedding_size=SHAPES[shape],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    return MuxElectraConfig(**{**kwargs, **overrides})


def make_inputs(batch=BATCH, length=LENGTH, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):  # ragged rows: real padding inside the batch
        pad = row % 4
        if pad:
            input_ids[row, -pad:] = 0
            attention_mask[row, -pad:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, length // 2 :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def make_labels(cls, inputs, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    batch, length = inputs["input_ids"].shape
    padding = inputs["attention_mask"] == 0
    if cls is MuxElectraForSequenceClassification:
        return torch.randint(0, NUM_LABELS, (batch,), generator=g)
    if cls is MuxElectraForTokenClassification:
        return torch.randint(0, NUM_LABELS, (batch, length), generator=g).masked_fill(padding, -100)
    if cls is MuxElectraForPreTraining:
        return (torch.rand(batch, length, generator=g) < 0.2).long().masked_fill(padding, -100)
    if cls is MuxElectraForMaskedLM:
        keep = torch.rand(batch, length, generator=g) < 0.3
        return inputs["input_ids"].masked_fill(~keep | padding, -100)
    return None


def main_output(cls, output):
    return output.last_hidden_state if cls is MuxElectraModel else output.logits


def expected_shape(cls, config):
    return {
        MuxElectraModel: (BATCH, LENGTH, config.hidden_size),
        MuxElectraForPreTraining: (BATCH, LENGTH),
        MuxElectraForMaskedLM: (BATCH, LENGTH, config.vocab_size),
        MuxElectraForSequenceClassification: (BATCH, NUM_LABELS),
        MuxElectraForTokenClassification: (BATCH, LENGTH, NUM_LABELS),
    }[cls]


def check_contract(cls, config, tmp_path):
    """Every property on one model: shapes, finite loss, gradients, determinism, padding, save/load."""
    torch.manual_seed(0)
    model = cls(config)
    inputs = make_inputs()
    labels = make_labels(cls, inputs)
    n = config.num_instances

    # training step: finite loss made of its parts, gradients reach the word embeddings
    model.train()
    output = model(**inputs, **({"labels": labels} if labels is not None else {}))
    assert main_output(cls, output).shape == expected_shape(cls, config)
    if cls is MuxElectraModel:
        assert output.mixed_hidden_state.shape[0] == -(-BATCH // n)
        loss = output.last_hidden_state.pow(2).mean()
    else:
        loss = output.loss
        assert torch.isfinite(loss) and torch.isfinite(output.task_loss) and torch.isfinite(output.retrieval_loss)
        torch.testing.assert_close(loss, output.task_loss + 0.1 * output.retrieval_loss)
        assert output.retrieval_logits.shape == (-(-BATCH // n), LENGTH, config.vocab_size)
    loss.backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0

    # eval: deterministic, and internal padding == explicit all-padding rows
    model.eval()
    token_level = cls in (MuxElectraForPreTraining, MuxElectraForMaskedLM, MuxElectraForTokenClassification)
    with torch.no_grad():
        first_output = model(**inputs, **({"labels": labels} if token_level else {}))
        first = main_output(cls, first_output)
        torch.testing.assert_close(first, main_output(cls, model(**inputs)), rtol=0, atol=0)
        extra = (-BATCH) % n
        if extra:
            padded = {k: torch.cat([v, torch.zeros(extra, LENGTH, dtype=v.dtype)]) for k, v in inputs.items()}
            padded_labels = torch.cat([labels, torch.full((extra, LENGTH), -100)]) if token_level else None
            explicit_output = model(**padded, **({"labels": padded_labels} if token_level else {}))
            explicit = main_output(cls, explicit_output)
            assert explicit.shape[0] == BATCH + extra
            torch.testing.assert_close(first, explicit[:BATCH], rtol=1e-5, atol=1e-6)
            if token_level:  # padding rows never count in a loss
                torch.testing.assert_close(first_output.loss, explicit_output.loss, rtol=1e-5, atol=1e-6)

    # save / load through the Auto class: same class, same tensors, same outputs
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "mux_electra"
    assert saved["auto_map"]["AutoModelForPreTraining"] == "modeling_mux_electra.MuxElectraForPreTraining"
    loaded = AUTO[cls].from_pretrained(tmp_path).eval()
    assert type(loaded) is cls
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    # outputs equal up to BLAS rounding (safetensors tensors are not 64-byte aligned: other SIMD kernels)
    with torch.no_grad():
        torch.testing.assert_close(main_output(cls, loaded(**inputs)), first, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("muxing,demuxing,n", list(itertools.product(MUXING_VARIANTS, DEMUXING_VARIANTS, [1, 2, 5])))
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_contract_small_shape(cls, muxing, demuxing, n, tmp_path):
    config = electra_config(
        "small",
        num_instances=n,
        muxing_variant=muxing,
        demuxing_variant=demuxing,
        num_labels=NUM_LABELS,
        retrieval_loss_coeff=0.1,
    )
    check_contract(cls, config, tmp_path)


@pytest.mark.parametrize("muxing", MUXING_VARIANTS)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_contract_base_shape(cls, muxing, tmp_path):
    config = electra_config(
        "base",
        num_instances=2,
        muxing_variant=muxing,
        demuxing_variant="prefix",
        num_labels=NUM_LABELS,
        retrieval_loss_coeff=0.1,
    )
    check_contract(cls, config, tmp_path)


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
    labels = make_labels(MuxElectraForPreTraining, inputs)
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
    labels = make_labels(MuxElectraForMaskedLM, inputs)
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


def test_remote_code_in_a_python_without_mux_plms(tmp_path):
    inputs = make_inputs()
    expected = {}
    for cls in CLASSES:
        model = cls(electra_config(num_instances=2, num_labels=NUM_LABELS)).eval()
        model.save_pretrained(tmp_path / cls.__name__)
        with torch.no_grad():
            expected[cls.__name__] = main_output(cls, model(**inputs)).tolist()
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "io.pt")
    code = f"""
        import torch
        import transformers
        try:
            import mux_plms
            raise SystemExit("mux_plms should not be importable here")
        except ImportError:
            pass
        data = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        autos = dict(MuxElectraModel="AutoModel", MuxElectraForPreTraining="AutoModelForPreTraining",
                     MuxElectraForMaskedLM="AutoModelForMaskedLM",
                     MuxElectraForSequenceClassification="AutoModelForSequenceClassification",
                     MuxElectraForTokenClassification="AutoModelForTokenClassification")
        for name, auto in autos.items():
            model = getattr(transformers, auto).from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True)
            model.eval()
            assert type(model).__name__ == name, type(model)
            assert "transformers_modules" in type(model).__module__, type(model).__module__
            with torch.no_grad():
                out = model(**data["inputs"])
            got = out.last_hidden_state if name == "MuxElectraModel" else out.logits
            torch.testing.assert_close(got, torch.tensor(data["expected"][name]), rtol=1e-5, atol=1e-6)
            print("OK", name)
        print("REMOTE_OK")
    """
    result = run_without_mux_plms(code, cwd=tmp_path, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "REMOTE_OK" in result.stdout and result.stdout.count("OK Mux") == len(CLASSES)


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
    labels = make_labels(MuxElectraForTokenClassification, inputs)
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
