"""Helpers shared by the test modules: inputs, labels, and the checks every model family goes through.

A plain module (tests/ is on ``sys.path`` through pytest's rootdir conftest), so no test module imports from
another ``test_*`` module. Fixtures stay in conftest.py; `run_without_mux_plms` lives there too.
The family battery built on these checks is `model_tester.MuxModelTesterMixin`.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import run_without_mux_plms

BATCH, LENGTH, NUM_LABELS, VOCAB = 7, 9, 3, 120

KINDS = ("MaskedLM", "SequenceClassification", "TokenClassification", "PreTraining", "ImageClassification")
# kind -> the Auto class name that loads it
AUTO_NAMES = {
    "Model": "AutoModel",
    "MaskedLM": "AutoModelForMaskedLM",
    "SequenceClassification": "AutoModelForSequenceClassification",
    "TokenClassification": "AutoModelForTokenClassification",
    "PreTraining": "AutoModelForPreTraining",
    "ImageClassification": "AutoModelForImageClassification",
}
TOKEN_LEVEL = ("MaskedLM", "TokenClassification", "PreTraining")


# ---------------------------------------------------------------------------------- tiny configs

TINY_TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
# MUX-ELECTRA: "small" mirrors ELECTRA-small (embedding_size < hidden_size: embeddings_project exists); "base"
# has E == H.
ELECTRA_SHAPES = {"small": 16, "base": 32}
IMAGE_SIZE, IMAGE_LABELS = 8, 10


def electra_config(shape: str = "small", **overrides):
    """A tiny MuxElectraConfig: hidden 32, 2 layers, vocab 120, 40 positions, embedding 16 (small) or 32 (base)."""
    from mux_plms import MuxElectraConfig

    kwargs = dict(TINY_TEXT, embedding_size=ELECTRA_SHAPES[shape], max_position_embeddings=40,
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)  # fmt: skip
    return MuxElectraConfig(**{**kwargs, **overrides})


def roberta_config(**overrides):
    from mux_plms import MuxRobertaConfig

    return MuxRobertaConfig(**{**TINY_TEXT, "max_position_embeddings": 42, **overrides})


def albert_config(**overrides):
    """ALBERT-style shape: embedding_size 16 < hidden_size 32 (like ELECTRA-small)."""
    from mux_plms import MuxAlbertConfig

    return MuxAlbertConfig(**{**TINY_TEXT, "embedding_size": 16, "max_position_embeddings": 40, **overrides})


def tiny_lstm(**overrides):
    from mux_plms import MuxLstmConfig

    return MuxLstmConfig(**{**TINY_TEXT, "max_position_embeddings": 40, **overrides})


def tiny_vision(**overrides):
    """A tiny MuxVisionConfig: 8x8 one-channel images, hidden 32, 2 layers, 10 labels."""
    from mux_plms import MuxVisionConfig

    base = dict(image_size=IMAGE_SIZE, hidden_size=32, num_hidden_layers=2, num_labels=IMAGE_LABELS,
                num_attention_heads=2, intermediate_size=32)  # fmt: skip
    return MuxVisionConfig(**{**base, **overrides})


def make_images(batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- inputs, outputs


def make_inputs(batch=BATCH, length=LENGTH, vocab=VOCAB, seed=0):
    """Text inputs with ragged rows (real padding inside the batch) and two token types."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        pad = row % 4
        if pad:
            input_ids[row, -pad:] = 0
            attention_mask[row, -pad:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, length // 2 :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def kind_of(cls) -> str:
    """``MuxBertForTokenClassification`` -> ``TokenClassification``; a base model -> ``Model``."""
    name = cls if isinstance(cls, str) else cls.__name__
    return next((kind for kind in KINDS if name.endswith("For" + kind)), "Model")


def auto_name(cls) -> str:
    return AUTO_NAMES[kind_of(cls)]


def make_labels(kind: str, inputs: dict, num_labels: int = NUM_LABELS, seed: int = 0):
    """Labels of a head `kind` for text `inputs` (-100 under padding); None for a base model."""
    g = torch.Generator().manual_seed(seed + 1)
    batch, length = inputs["input_ids"].shape
    padding = inputs["attention_mask"] == 0
    if kind == "SequenceClassification":
        return torch.randint(0, num_labels, (batch,), generator=g)
    if kind == "TokenClassification":
        return torch.randint(0, num_labels, (batch, length), generator=g).masked_fill(padding, -100)
    if kind == "PreTraining":
        return (torch.rand(batch, length, generator=g) < 0.2).long().masked_fill(padding, -100)
    if kind == "MaskedLM":
        keep = torch.rand(batch, length, generator=g) < 0.3
        return inputs["input_ids"].masked_fill(~keep | padding, -100)
    return None


def main_output(output) -> torch.Tensor:
    """The per-instance output a model contract is about: logits of a head, else the last hidden state."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


def check_state_dicts_equal(model, loaded) -> None:
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def check_save_load(model, tmp_path, auto_class, model_type: str, config_module: str, inputs: dict,
                    tolerance: tuple[float, float] = (1e-6, 1e-7)) -> dict:  # fmt: skip
    """Save (safetensors) and reload through the Auto class: same config and model type, fixed keys in the
    weights file, bit-identical tensors, the same outputs. Returns the saved config.json."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model.eval().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == model_type
    assert saved["auto_map"]["AutoConfig"].startswith(f"{config_module}.")
    assert isinstance(AutoConfig.from_pretrained(tmp_path), type(model.config))
    weights = load_file(tmp_path / "model.safetensors")
    assert any(k.endswith("multiplexer.instance_keys") for k in weights)  # fixed keys travel with the weights
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    check_state_dicts_equal(model, loaded)
    # outputs equal up to BLAS rounding: safetensors loads tensors at addresses that are not 64-byte aligned,
    # which can select other SIMD kernels (differences ~1e-9 seen here)
    with torch.no_grad():
        rtol, atol = tolerance
        torch.testing.assert_close(main_output(loaded(**inputs)), main_output(model(**inputs)), rtol=rtol, atol=atol)
    return saved


def check_remote_code(tmp_path, models: dict, inputs: dict) -> None:
    """ONE subprocess without mux_plms loads every saved model with trust_remote_code through its Auto class
    and reproduces its outputs. `models`: class name -> model."""
    expected = {}
    for name, model in models.items():
        model.eval().save_pretrained(tmp_path / name)
        with torch.no_grad():
            expected[name] = main_output(model(**inputs)).tolist()
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "io.pt")
    autos = {name: auto_name(name) for name in models}
    code = f"""
        import torch
        import transformers
        try:
            import mux_plms
            raise SystemExit("mux_plms should not be importable here")
        except ImportError:
            pass
        data = torch.load({str(tmp_path / "io.pt")!r}, weights_only=True)
        for name, auto_name in {autos!r}.items():
            auto = getattr(transformers, auto_name)
            model = auto.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True).eval()
            assert type(model).__name__ == name, type(model)
            assert "transformers_modules" in type(model).__module__, type(model).__module__
            with torch.no_grad():
                out = model(**data["inputs"])
            got = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
            torch.testing.assert_close(got, torch.tensor(data["expected"][name]), rtol=1e-5, atol=1e-6)
            print("OK", name)
        print("REMOTE_OK")
    """
    result = run_without_mux_plms(code, cwd=tmp_path, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "REMOTE_OK" in result.stdout
    assert sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("OK ")) == sorted(models)


def tiny_training_arguments(output_dir, **settings):
    """`TrainingArguments` for a short CPU test run: no reports, no checkpoints, no progress bars, seed 0;
    `settings` (batch sizes, steps, learning rate, ...) on top."""
    from transformers import TrainingArguments

    defaults = dict(report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    return TrainingArguments(output_dir=str(output_dir), **{**defaults, **settings})


def check_trainer_step(model, tmp_path, train, num_labels: int, steps: int = 4) -> None:
    """`steps` `transformers.Trainer` steps on `train` (batches not a multiple of N): finite logged losses, the
    trainable parameters change, predict gives one row of logits per input and a finite loss."""
    from transformers import Trainer

    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    args = tiny_training_arguments(
        tmp_path,
        per_device_train_batch_size=3,  # not a multiple of N
        per_device_eval_batch_size=5,
        max_steps=steps,
        learning_rate=3e-3,
        logging_steps=2,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == steps // 2 and all(np.isfinite(losses))
    changed = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])]
    assert changed, "no parameter changed"
    prediction = trainer.predict(train.select(range(7)))
    assert prediction.predictions.shape == (7, num_labels)  # exactly one row per example, logits only
    assert np.isfinite(prediction.metrics["test_loss"])


def synthetic_text_classification(n_rows: int = 48, seed: int = 0):
    """Label 1 iff token 7 sits at position 3 (learnable by a tiny model)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 120, (n_rows, 8), generator=g)
    labels = torch.randint(0, 2, (n_rows,), generator=g)
    ids[labels == 1, 3] = 7
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * n_rows, "labels": labels.tolist()}
    )


__all__ = [
    "AUTO_NAMES", "BATCH", "ELECTRA_SHAPES", "IMAGE_LABELS", "IMAGE_SIZE", "LENGTH", "NUM_LABELS", "TINY_TEXT",
    "TOKEN_LEVEL", "VOCAB", "albert_config", "electra_config", "make_images", "roberta_config", "tiny_lstm",
    "tiny_vision", "auto_name", "check_remote_code",
    "check_save_load", "check_state_dicts_equal", "check_trainer_step", "kind_of", "main_output", "make_inputs",
    "make_labels", "run_without_mux_plms", "synthetic_text_classification",
]  # fmt: skip
