"""MUX-LSTM: the MUX-BERT contract on a bidirectional LSTM backbone, plus LSTM-specific padding behaviour.

`check_text_contract` and `check_remote_code` are shared with tests/test_backbones_other.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_without_mux_plms
from datasets import Dataset
from safetensors.torch import load_file
from test_models import BATCH, LENGTH, NUM_LABELS, make_inputs
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Trainer,
    TrainingArguments,
)

from mux_plms import (
    MuxLstmConfig,
    MuxLstmForMaskedLM,
    MuxLstmForSequenceClassification,
    MuxLstmForTokenClassification,
    MuxLstmModel,
)

TINY_LSTM = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=40,
)
CLASSES = [MuxLstmModel, MuxLstmForMaskedLM, MuxLstmForSequenceClassification, MuxLstmForTokenClassification]
PAIRINGS = [
    ("gaussian_hadamard", "prefix"),
    ("random_ortho", "rsa"),
    ("contextual", "mlp"),
    ("binary_hadamard", "prefix"),
]


def tiny_lstm(**overrides) -> MuxLstmConfig:
    return MuxLstmConfig(**{**TINY_LSTM, **overrides})


def kind_of(cls) -> str:
    for kind in ("MaskedLM", "SequenceClassification", "TokenClassification"):
        if cls.__name__.endswith("For" + kind):
            return kind
    return "Model"


def make_labels(kind: str, inputs: dict, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    batch, length = inputs["input_ids"].shape
    if kind == "SequenceClassification":
        return torch.randint(0, NUM_LABELS, (batch,), generator=g)
    if kind == "TokenClassification":
        return torch.randint(0, NUM_LABELS, (batch, length), generator=g).masked_fill(
            inputs["attention_mask"] == 0, -100
        )
    if kind == "MaskedLM":
        keep = torch.rand(batch, length, generator=g) < 0.3
        return inputs["input_ids"].masked_fill(~keep | (inputs["attention_mask"] == 0), -100)
    return None


def main_output(kind: str, output):
    return output.last_hidden_state if kind == "Model" else output.logits


def check_text_contract(cls, config) -> None:
    """Shapes, finite loss = weighted sum of its parts, gradients, eval determinism, internal padding ==
    explicit all-padding rows (the MUX-BERT contract of tests/test_models.py)."""
    torch.manual_seed(0)
    kind = kind_of(cls)
    model = cls(config)
    inputs = make_inputs()
    labels = make_labels(kind, inputs)
    model.train()
    output = model(**inputs, **({"labels": labels} if labels is not None else {}))
    expected_shape = {
        "Model": (BATCH, LENGTH, config.hidden_size),
        "MaskedLM": (BATCH, LENGTH, config.vocab_size),
        "SequenceClassification": (BATCH, NUM_LABELS),
        "TokenClassification": (BATCH, LENGTH, NUM_LABELS),
    }[kind]
    assert main_output(kind, output).shape == expected_shape
    if kind == "Model":
        loss = output.last_hidden_state.pow(2).mean()
    else:
        loss = output.loss
        assert torch.isfinite(loss) and torch.isfinite(output.task_loss) and torch.isfinite(output.retrieval_loss)
        torch.testing.assert_close(
            loss, config.task_loss_coeff * output.task_loss + config.retrieval_loss_coeff * output.retrieval_loss
        )
    loss.backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        first = main_output(kind, model(**inputs))
        torch.testing.assert_close(first, main_output(kind, model(**inputs)), rtol=0, atol=0)
        extra = (-BATCH) % config.num_instances
        if extra:
            pad = {"input_ids": config.pad_token_id}  # explicit all-padding rows: pad tokens, mask 0
            padded = {
                k: torch.cat([v, torch.full((extra, LENGTH), pad.get(k, 0), dtype=v.dtype)]) for k, v in inputs.items()
            }
            explicit = main_output(kind, model(**padded))
            assert explicit.shape[0] == BATCH + extra
            torch.testing.assert_close(first, explicit[:BATCH], rtol=1e-5, atol=1e-6)


def check_save_load(model, tmp_path, auto_class, model_type: str, family_file: str) -> None:
    """Save, reload through the Auto class: same type, bit-identical tensors, same outputs, auto_map."""
    model.eval().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == model_type
    assert saved["auto_map"]["AutoConfig"].startswith(f"configuration_{family_file}.")
    assert isinstance(AutoConfig.from_pretrained(tmp_path), type(model.config))
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    weights = load_file(tmp_path / "model.safetensors")
    assert any(k.endswith("multiplexer.instance_keys") for k in weights)  # fixed keys travel with the weights
    inputs = make_inputs()
    with torch.no_grad():
        kind = kind_of(type(model))
        torch.testing.assert_close(
            main_output(kind, loaded(**inputs)), main_output(kind, model(**inputs)), rtol=1e-6, atol=1e-7
        )


def check_remote_code(tmp_path, models: dict, auto_names: dict) -> None:
    """ONE subprocess without mux_plms loads every saved model with trust_remote_code and reproduces its
    outputs. `models`: class name -> model; `auto_names`: class name -> Auto class name."""
    inputs = make_inputs()
    expected = {}
    for name, model in models.items():
        model.eval().save_pretrained(tmp_path / name)
        with torch.no_grad():
            expected[name] = main_output(kind_of(type(model)), model(**inputs)).tolist()
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
        for name, auto_name in {auto_names!r}.items():
            auto = getattr(transformers, auto_name)
            model = auto.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True).eval()
            assert type(model).__name__ == name, type(model)
            assert "transformers_modules" in type(model).__module__, type(model).__module__
            with torch.no_grad():
                out = model(**data["inputs"])
            got = out.last_hidden_state if name.endswith("Model") else out.logits
            torch.testing.assert_close(got, torch.tensor(data["expected"][name]), rtol=1e-5, atol=1e-6)
        print("REMOTE_OK")
    """
    result = run_without_mux_plms(code, cwd=tmp_path, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "REMOTE_OK" in result.stdout


def check_trainer_step(model, tmp_path) -> None:
    """A few Trainer steps on a learnable synthetic task lower the loss; predict gives one row per input."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 120, (48, 8), generator=g)
    labels = torch.randint(0, 2, (48,), generator=g)
    ids[labels == 1, 3] = 7
    train = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * 48, "labels": labels.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=3,  # not a multiple of N
        per_device_eval_batch_size=5,
        max_steps=16,
        learning_rate=3e-3,
        logging_steps=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 4 and all(np.isfinite(losses))
    prediction = trainer.predict(train.select(range(7)))
    assert prediction.predictions.shape == (7, 2)
    assert np.isfinite(prediction.metrics["test_loss"])


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("muxing,demuxing", PAIRINGS)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_contract(cls, muxing, demuxing, n):
    config = tiny_lstm(
        num_instances=n,
        muxing_variant=muxing,
        demuxing_variant=demuxing,
        num_labels=NUM_LABELS,
        retrieval_loss_coeff=0.1,
    )
    check_text_contract(cls, config)


def test_backbone_shape_follows_the_follow_up():
    """hidden_size / 2 units per direction, one bidirectional LSTM per layer."""
    model = MuxLstmModel(tiny_lstm(hidden_size=48, num_hidden_layers=3))
    assert len(model.layers) == 3
    for lstm in model.layers:
        assert lstm.bidirectional and lstm.hidden_size == 24 and lstm.input_size == 48


def test_trailing_padding_of_every_instance_is_never_read():
    """Positions padded in every instance at the end (union mask) do not influence the other positions."""
    model = MuxLstmForTokenClassification(tiny_lstm(num_instances=2, num_labels=2)).eval()
    inputs = make_inputs(batch=2, length=8)
    inputs["attention_mask"][:, -2:] = 0
    with torch.no_grad():
        before = model(**inputs).logits
        inputs["input_ids"][:, -2:] = 55
        after = model(**inputs).logits
        mixed, _, _ = model.lstm.multiplex_encode(**inputs)
    torch.testing.assert_close(before[:, :-2], after[:, :-2], rtol=1e-5, atol=1e-6)
    prefix = model.lstm.demultiplexer.prefix_length()
    assert torch.equal(mixed[:, prefix + 6 :], torch.zeros_like(mixed[:, prefix + 6 :]))  # packed away


def test_batch_composition_does_not_leak_between_groups():
    """Packed sequences of different lengths: changing group 1 leaves group 0's outputs untouched."""
    model = MuxLstmForSequenceClassification(tiny_lstm(num_instances=2, num_labels=2)).eval()
    inputs = make_inputs(batch=4)
    with torch.no_grad():
        before = model(**inputs).logits
        inputs["input_ids"][2:, 1:4] = 7
        inputs["attention_mask"][2:, -3:] = 0
        after = model(**inputs).logits
    torch.testing.assert_close(before[:2], after[:2], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before[2:], after[2:])


def test_stage_one_retrieval_model():
    model = MuxLstmForMaskedLM(tiny_lstm(num_instances=2, retrieval_loss_coeff=1.0, task_loss_coeff=0.0)).eval()
    inputs = make_inputs(batch=4)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits is None and out.task_loss is None
    assert out.retrieval_logits.shape == (2, LENGTH, 120)
    torch.testing.assert_close(out.loss, out.retrieval_loss)
    # tied decoders: the retrieval and MLM heads share the word embeddings
    assert model.retrieval_head.decoder.weight.data_ptr() == model.lstm.embeddings.word_embeddings.weight.data_ptr()
    assert model.lm_head.decoder.weight.data_ptr() == model.lstm.embeddings.word_embeddings.weight.data_ptr()


def test_forward_ensemble_matches_plain_at_n1_and_has_one_row_per_input():
    torch.manual_seed(0)
    inputs = make_inputs(batch=5)
    one = MuxLstmForSequenceClassification(tiny_lstm(num_instances=1, num_labels=3, demuxing_variant="rsa")).eval()
    with torch.no_grad():
        torch.testing.assert_close(one.forward_ensemble(**inputs), one(**inputs).logits)
    two = MuxLstmForSequenceClassification(tiny_lstm(num_instances=2, num_labels=3)).eval()
    assert two.forward_ensemble(**inputs).shape == (5, 3)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_save_load_round_trip(cls, tmp_path):
    auto = {
        MuxLstmModel: AutoModel,
        MuxLstmForMaskedLM: AutoModelForMaskedLM,
        MuxLstmForSequenceClassification: AutoModelForSequenceClassification,
        MuxLstmForTokenClassification: AutoModelForTokenClassification,
    }[cls]
    check_save_load(cls(tiny_lstm(num_instances=2, num_labels=3)), tmp_path, auto, "mux_lstm", "mux_lstm")


def test_remote_code_in_a_python_without_mux_plms(tmp_path):
    auto_names = {
        "MuxLstmModel": "AutoModel",
        "MuxLstmForMaskedLM": "AutoModelForMaskedLM",
        "MuxLstmForSequenceClassification": "AutoModelForSequenceClassification",
        "MuxLstmForTokenClassification": "AutoModelForTokenClassification",
    }
    models = {cls.__name__: cls(tiny_lstm(num_instances=2, num_labels=3)) for cls in CLASSES}
    check_remote_code(tmp_path, models, auto_names)


def test_trainer(tmp_path):
    torch.manual_seed(0)
    model = MuxLstmForSequenceClassification(
        tiny_lstm(num_instances=2, num_labels=2, demuxing_variant="rsa", hidden_dropout_prob=0.0)
    )
    check_trainer_step(model, tmp_path)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"hidden_size": 33}, "hidden_size must be an even integer"),
        ({"muxing_variant": "fourier"}, "muxing_variant must be one of"),
        ({"demuxing_variant": "index"}, "demuxing_variant must be one of rsa, prefix, mlp"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be >= 1"),
        ({"muxing_variant": "contextual", "num_attention_heads": 3}, "multiple of num_attention_heads=3"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_lstm(**kwargs)


def test_position_ids_are_refused():
    model = MuxLstmModel(tiny_lstm(demuxing_variant="rsa"))
    with pytest.raises(ValueError, match="position_ids are not used by MUX-LSTM"):
        model(input_ids=torch.ones(2, 5, dtype=torch.long), position_ids=torch.arange(5)[None].expand(2, -1))
