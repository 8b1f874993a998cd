"""Conversion of the original MUX-PLMs checkpoints (`mux_plms.convert_legacy_checkpoint`, `mux-plms convert-legacy`).

Two kinds of evidence:
* the fixtures in ``LEGACY_FIXTURES``, saved by the original code with the outputs it computed, must be
  reproduced through the Auto classes within their tolerance;
* synthetic checkpoints in the original layout, for every variant pairing and several N, must convert and
  match ``legacy_forward`` below: an independent, plain-torch reading of the original forward passes
  (written from its source; it reproduces every fixture to float precision, see the first test).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import LEGACY_FIXTURES, run_without_mux_plms
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
)
from transformers.models.bert.modeling_bert import BertLayer

import mux_plms
from mux_plms import MuxBertConfig, convert_legacy_checkpoint
from mux_plms.cli import main as cli_main
from mux_plms.hub.convert import LegacyCheckpointError, legacy_finetuning_options

KINDS = {
    "MuxedBertForMaskedLM": ("mlm", AutoModelForMaskedLM),
    "MuxedBertForSequenceClassification": ("seqcls", AutoModelForSequenceClassification),
    "MuxedBertForTokenClassification": ("tokcls", AutoModelForTokenClassification),
}
FIXTURES = sorted(p.name for p in LEGACY_FIXTURES.iterdir() if p.is_dir()) if LEGACY_FIXTURES.is_dir() else []
needs_fixtures = pytest.mark.skipif(
    not FIXTURES, reason=f"legacy fixtures not found at {LEGACY_FIXTURES} (shared/fixtures/legacy-checkpoints)"
)


# --------------------------------------------------------------------------------------------------
# The original forward passes in plain torch, straight from an original state dict and config.


def _linear(sd, prefix, x):
    return F.linear(x, sd[prefix + "weight"], sd.get(prefix + "bias"))


def _norm(sd, prefix, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], eps)


def _bert_layer(sd, prefix, x, heads, eps, mask=None):
    b, s, h = x.shape
    q, k, v = (
        _linear(sd, f"{prefix}attention.self.{name}.", x).view(b, s, heads, h // heads).transpose(1, 2)
        for name in ("query", "key", "value")
    )
    scores = q @ k.transpose(-1, -2) / math.sqrt(h // heads)
    if mask is not None:
        scores = scores + (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, h)
    attended = _norm(
        sd, prefix + "attention.output.LayerNorm.", _linear(sd, prefix + "attention.output.dense.", context) + x, eps
    )
    inner = F.gelu(_linear(sd, prefix + "intermediate.dense.", attended))
    return _norm(sd, prefix + "output.LayerNorm.", _linear(sd, prefix + "output.dense.", inner) + attended, eps)


def _embed(sd, eps, ids=None, embeds=None):
    x = sd["bert.embeddings.word_embeddings.weight"][ids] if embeds is None else embeds
    x = (
        x
        + sd["bert.embeddings.token_type_embeddings.weight"][0]
        + sd["bert.embeddings.position_embeddings.weight"][: x.shape[1]]
    )
    return _norm(sd, "bert.embeddings.LayerNorm.", x, eps)


def legacy_forward(sd, cfg, input_ids, attention_mask, labels=None):
    """Logits (and MLM loss) of the original model class named in `cfg` (eval mode). Positions follow the
    original: with the `index` demultiplexer they include its prefix (N + 1 slots)."""
    kind = KINDS[cfg["architectures"][0]][0]
    n, h, eps, heads = cfg["num_instances"], cfg["hidden_size"], cfg["layer_norm_eps"], cfg["num_attention_heads"]
    muxing, demuxing = cfg["muxing_variant"], cfg["demuxing_variant"]
    ids = input_ids.clone()
    b = ids.shape[0]
    g, p = b // n, n + 1
    if demuxing == "index":
        prefix = torch.full((n, n), 680)
        prefix[torch.arange(n), torch.arange(n)] = 680 - (torch.arange(n) + 2)
        prefix = torch.cat([prefix, torch.full((n, 1), 101)], 1).repeat(g, 1)
        ids = torch.cat([prefix, ids[:, :-p] if kind == "mlm" else ids], 1)
    else:
        ids[:, 0] = 101
    s = ids.shape[1]
    x = _embed(sd, eps, ids)
    keys = sd["instance_embedding"]
    if muxing in ("gaussian_hadamard", "binary_hadamard"):
        mixed = (x.view(g, n, s, h) * keys[None, :, None, :]).mean(1)
    elif muxing == "random_ortho":
        mixed = torch.einsum("nde,gnse->gsd", keys, x.view(g, n, s, h)) / math.sqrt(n)
    else:
        contextual = _bert_layer(sd, "muxing_attention.", x, heads, eps, attention_mask) + x
        keyed = contextual.view(g, n, s, h) * keys[None, :, None, :]
        across = keyed.permute(0, 2, 1, 3).reshape(g * s, n, h)
        # The original's sequence-classification forward passes the instances' padding mask to its
        # cross-instance layer (muxing_attention_2); its MLM and token-classification forwards pass none.
        across_mask = attention_mask.view(g, n, s).permute(0, 2, 1).reshape(-1, n) if kind == "seqcls" else None
        crossed = _bert_layer(sd, "muxing_attention_2.", across, heads, eps, across_mask)
        mixed = (crossed.view(g, s, n, h).permute(0, 2, 1, 3) + keyed).mean(1)
    x = _embed(sd, eps, embeds=mixed)
    for i in range(cfg["num_hidden_layers"]):
        x = _bert_layer(sd, f"bert.encoder.layer.{i}.", x, heads, eps)
    instance = x[:, :n] if demuxing == "index" else sd["demux_module.demux_instance_embedding"][None].expand(g, -1, -1)
    z = torch.cat([instance[:, :, None].expand(g, n, s, h), x[:, None].expand(g, n, s, h)], -1).reshape(b, s, 2 * h)
    if kind == "mlm":
        if demuxing == "index":
            z = _norm(sd, "retrieval_head.layer_norm.", F.gelu(_linear(sd, "retrieval_head.dense.", z)), eps)
        else:
            for k in (1, 2):
                z = _norm(sd, f"demux_module.layer_norm_{k}.", F.gelu(_linear(sd, f"demux_module.dense_{k}.", z)), eps)
            z = _norm(
                sd, "retrieval_head.pre_decoder_layer_norm.", F.gelu(_linear(sd, "retrieval_head.pre_decoder.", z)), eps
            )
        logits = F.linear(z, sd["bert.embeddings.word_embeddings.weight"], sd["retrieval_head.decoder.bias"])
        if demuxing == "index":
            labels = torch.cat([torch.full((b, p), -100), labels[:, :-p]], 1)
        logits = logits * (labels != -100)[..., None]
        return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    if demuxing == "index":
        z = _norm(sd, "demultiplexer.layer_norm.", F.gelu(_linear(sd, "demultiplexer.dense.", z)), eps)
    else:
        for k in range(1, cfg["num_hidden_demux_layers"]):
            y = F.gelu(_linear(sd, f"demux_module.dense_{k}.", z))
            z = y if k == 1 else z + y
        z = (
            _norm(
                sd, "demultiplexer.pre_decoder_layer_norm.", F.gelu(_linear(sd, "demultiplexer.pre_decoder.", z)), eps
            )
            + z
        )
    if kind == "seqcls":
        z = z[:, n] if demuxing == "index" else z[:, 0]
    return _linear(sd, "classifier.", z), None


# --------------------------------------------------------------------------------------------------
# Synthetic checkpoints in the original layout.

VOCAB, HIDDEN, LAYERS, HEADS, FFN, POSITIONS, NUM_LABELS = 700, 16, 2, 2, 32, 40, 3


def legacy_config(architecture, muxing, demuxing, n, demux_layers=3, **extra):
    config = {
        "architectures": [architecture],
        "model_type": "bert",
        "attention_probs_dropout_prob": 0.1,
        "hidden_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "max_position_embeddings": POSITIONS,
        "vocab_size": VOCAB,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "id2label": {str(i): f"LABEL_{i}" for i in range(NUM_LABELS)},
        "label2id": {f"LABEL_{i}": i for i in range(NUM_LABELS)},
        "num_instances": n,
        "muxing_variant": muxing,
        "demuxing_variant": demuxing,
        "num_hidden_demux_layers": demux_layers,
        "gaussian_hadamard_norm": 1.0,
        "binary_hadamard_epsilon": 0.0,
        "learn_muxing": 0,
        "retrieval_loss_coeff": 0.0,
        "retrieval_percentage": 1.0,
        "task_loss_coeff": 1.0,
        "transformers_version": "4.30.2",
    }
    config.update(extra)
    return config


def legacy_state_dict(cfg, seed=0):
    """Random weights under the original module names, shared modules saved under each of their names."""
    gen = torch.Generator().manual_seed(seed)
    h, n = cfg["hidden_size"], cfg["num_instances"]

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=gen) * scale

    def linear(prefix, out_features, in_features):
        return {prefix + "weight": rand(out_features, in_features), prefix + "bias": rand(out_features, scale=0.05)}

    def norm(prefix):
        return {prefix + "weight": 1 + rand(h, scale=0.1), prefix + "bias": rand(h, scale=0.1)}

    def bert_layer(prefix):
        shapes = BertLayer(BertConfig(hidden_size=h, num_attention_heads=HEADS, intermediate_size=FFN)).state_dict()
        return {
            prefix + k: (1 + rand(*v.shape, scale=0.1)) if "LayerNorm.weight" in k else rand(*v.shape, scale=0.2)
            for k, v in shapes.items()
        }

    words = rand(VOCAB, h, scale=0.5)
    sd = {
        "bert.embeddings.position_ids": torch.arange(POSITIONS)[None],
        "bert.embeddings.word_embeddings.weight": words,
        "bert.embeddings.position_embeddings.weight": rand(POSITIONS, h),
        "bert.embeddings.token_type_embeddings.weight": rand(2, h),
        **norm("bert.embeddings.LayerNorm."),
    }
    for i in range(LAYERS):
        sd.update(bert_layer(f"bert.encoder.layer.{i}."))
    muxing = cfg["muxing_variant"]
    if muxing == "random_ortho":
        sd["instance_embedding"] = torch.linalg.qr(torch.randn(n, h, h, generator=gen))[0]
    elif muxing == "binary_hadamard":
        keys = torch.zeros(n, h)
        for i in range(n):
            keys[i, i * (h // n) : (i + 1) * (h // n) if i < n - 1 else h] = 1.0
        sd["instance_embedding"] = keys
    else:
        keys = torch.randn(n, h, generator=gen)
        sd["instance_embedding"] = keys / keys.norm(dim=1, keepdim=True)
    if muxing == "gaussian_attention_v2":
        sd.update(bert_layer("muxing_attention."))
        sd.update(bert_layer("muxing_attention_2."))
    decoder_bias = rand(VOCAB, scale=0.1)
    sd.update(
        {
            "retrieval_head.bias": decoder_bias,
            "retrieval_head.decoder.weight": words,
            "retrieval_head.decoder.bias": decoder_bias,
        }
    )
    if cfg["demuxing_variant"] == "index_pos":
        shared = {"demux_module.demux_instance_embedding": rand(n, h, scale=1.0)}
        for k in range(1, cfg["num_hidden_demux_layers"] + 1):
            shared.update(linear(f"demux_module.dense_{k}.", h, 2 * h if k == 1 else h))
            shared.update(norm(f"demux_module.layer_norm_{k}."))
        for owner in ("", "demultiplexer.", "retrieval_head."):
            sd.update({owner + key: value for key, value in shared.items()})
        for owner in ("demultiplexer.", "retrieval_head."):
            sd.update(linear(owner + "pre_decoder.", h, h))
            sd.update(norm(owner + "pre_decoder_layer_norm."))
    else:
        for owner in ("demultiplexer.", "retrieval_head."):
            sd.update(linear(owner + "dense.", h, 2 * h))
            sd.update(norm(owner + "layer_norm."))
    if KINDS[cfg["architectures"][0]][0] != "mlm":
        labels = cfg.get("num_labels", NUM_LABELS)
        sd.update(linear("classifier.", labels, h))
    return sd


def write_legacy_checkpoint(folder, cfg, sd=None, safetensors=False):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    sd = legacy_state_dict(cfg) if sd is None else sd
    if safetensors:
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, folder / "model.safetensors")
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    return folder


def legacy_inputs(n, groups=2, length=12, mlm=False, seed=0):
    """Rows [CLS] tokens [SEP] padding; every other row is full length (so the MLM tail is labelled)."""
    gen = torch.Generator().manual_seed(seed)
    rows = n * groups
    ids = torch.randint(110, 679, (rows, length), generator=gen)
    mask = torch.ones(rows, length, dtype=torch.long)
    for row in range(rows):
        real = length if row % 2 == 0 else length - 1 - row % 4
        ids[row, 0], ids[row, real - 1] = 101, 102
        ids[row, real:], mask[row, real:] = 0, 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if mlm:
        chosen = (torch.rand(rows, length, generator=gen) < 0.4) & mask.bool()
        chosen[0, -1] = True  # a label in the positions the original MLM `index` model drops
        inputs["labels"] = ids.masked_fill(~chosen, -100)
        inputs["input_ids"] = ids.masked_fill(chosen, 103)
    return inputs


def load_converted(out_dir, architecture):
    return KINDS[architecture][1].from_pretrained(out_dir).eval()


# --------------------------------------------------------------------------------------------------
# Fixtures written by the original code


@needs_fixtures
@pytest.mark.parametrize("name", FIXTURES)
def test_reference_forward_matches_the_fixture(name):
    """The plain-torch reading of the original used below reproduces what the original computed."""
    folder = LEGACY_FIXTURES / name
    cfg = json.loads((folder / "config.json").read_text())
    sd = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    inputs, expected = load_file(folder / "inputs.safetensors"), load_file(folder / "expected.safetensors")
    logits, loss = legacy_forward(sd, cfg, inputs["input_ids"], inputs["attention_mask"], inputs.get("labels"))
    if KINDS[cfg["architectures"][0]][0] == "tokcls" and cfg["demuxing_variant"] == "index":
        logits = logits[:, cfg["num_instances"] + 1 :]
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)
    if loss is not None:
        torch.testing.assert_close(loss.reshape(1), expected["loss"], atol=1e-5, rtol=0)


@needs_fixtures
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_is_reproduced_through_the_auto_classes(name, tmp_path):
    folder = LEGACY_FIXTURES / name
    fixture = json.loads((folder / "fixture.json").read_text())
    report = convert_legacy_checkpoint(folder, tmp_path / "converted")
    model = load_converted(tmp_path / "converted", fixture["class"])
    assert type(model).__name__ == report.model_class == fixture["class"].replace("Muxed", "Mux")
    inputs, expected = load_file(folder / "inputs.safetensors"), load_file(folder / "expected.safetensors")
    with torch.no_grad():
        output = model(**inputs)
    atol = fixture["atol"]
    assert output.logits.shape == expected["logits"].shape
    if fixture["kind"] == "mlm":
        # the original's MLM logits are zero except at labelled positions; ours are computed everywhere
        labelled = inputs["labels"] != -100
        assert (expected["logits"][~labelled] == 0).all()
        torch.testing.assert_close(output.logits[labelled], expected["logits"][labelled], atol=atol, rtol=0)
        torch.testing.assert_close(output.loss.reshape(1), expected["loss"], atol=atol, rtol=0)
    else:
        torch.testing.assert_close(output.logits, expected["logits"], atol=atol, rtol=0)


@needs_fixtures
def test_converted_folder_is_a_standard_mux_plms_checkpoint(tmp_path):
    out = tmp_path / "converted"
    report = convert_legacy_checkpoint(LEGACY_FIXTURES / "seqcls-contextual-rsa-n2", out)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    for code in ("configuration_mux_bert.py", "modeling_mux_bert.py", "multiplexing.py", "demultiplexing.py"):
        assert (out / code).is_file(), code
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "mux_bert"
    assert saved["architectures"] == ["MuxBertForSequenceClassification"]
    assert set(saved["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForMaskedLM",
        "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification",
    }
    expected_options = {
        "muxing_variant": "contextual",
        "demuxing_variant": "rsa",
        "num_instances": 2,
        "legacy_embed_mixture": True,
        "legacy_demux": "finetuning",
        "legacy_contextual": "cross_masked",
        "legacy_rsa_cls_token_id": 101,
        "legacy_ignore_token_type_ids": True,
        "legacy_linear_classifier": True,
        "legacy_prefix_truncate": False,
        "legacy_untransformed_vocab_head": False,
    }
    assert {k: saved[k] for k in expected_options} == expected_options
    assert report.legacy_options["legacy_contextual"] == "cross_masked"
    assert report.dropped_keys["retrieval_head.bias"] == "stale alias of retrieval_head.decoder.bias"
    assert "demux_module.dense_3.weight" in report.dropped_keys  # never run by the original (3 demux layers)
    assert AutoConfig.from_pretrained(out).num_labels == 3


@needs_fixtures
@pytest.mark.slow
def test_converted_folder_runs_as_remote_code_without_mux_plms(tmp_path):
    folder = LEGACY_FIXTURES / "seqcls-hadamard-prefix-n2"
    convert_legacy_checkpoint(folder, tmp_path / "converted")
    shutil.copy(folder / "inputs.safetensors", tmp_path / "inputs.safetensors")
    shutil.copy(folder / "expected.safetensors", tmp_path / "expected.safetensors")
    run_without_mux_plms(
        """
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained("converted", trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model(**load_file("inputs.safetensors")).logits
        assert (logits - load_file("expected.safetensors")["logits"]).abs().max() < 1e-4
        """,
        cwd=tmp_path,
    )


# --------------------------------------------------------------------------------------------------
# Every architecture, variant pairing and N, on synthetic checkpoints

COMBINATIONS = [
    ("MuxedBertForMaskedLM", "random_ortho", "index", 5, 3),
    ("MuxedBertForMaskedLM", "binary_hadamard", "index_pos", 4, 4),
    ("MuxedBertForMaskedLM", "gaussian_attention_v2", "index_pos", 3, 2),
    ("MuxedBertForSequenceClassification", "binary_hadamard", "index_pos", 3, 3),
    ("MuxedBertForSequenceClassification", "random_ortho", "index", 5, 3),
    ("MuxedBertForSequenceClassification", "gaussian_attention_v2", "index_pos", 5, 4),
    ("MuxedBertForTokenClassification", "random_ortho", "index", 5, 3),
    ("MuxedBertForTokenClassification", "binary_hadamard", "index_pos", 2, 2),
    ("MuxedBertForTokenClassification", "gaussian_hadamard", "index", 3, 3),
    ("MuxedBertForTokenClassification", "gaussian_attention_v2", "index_pos", 5, 3),
]


@pytest.mark.parametrize("architecture,muxing,demuxing,n,demux_layers", COMBINATIONS)
def test_synthetic_checkpoint_converts_and_matches_the_original_forward(
    architecture, muxing, demuxing, n, demux_layers, tmp_path
):
    kind = KINDS[architecture][0]
    cfg = legacy_config(architecture, muxing, demuxing, n, demux_layers)
    sd = legacy_state_dict(cfg)
    write_legacy_checkpoint(tmp_path / "legacy", cfg, sd)
    convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted")
    model = load_converted(tmp_path / "converted", architecture)
    inputs = legacy_inputs(n, mlm=kind == "mlm")
    with torch.no_grad():
        output = model(**inputs)
    expected, expected_loss = legacy_forward(sd, cfg, **inputs)
    rows, length = inputs["input_ids"].shape
    shape = {"mlm": (rows, length, VOCAB), "seqcls": (rows, NUM_LABELS), "tokcls": (rows, length, NUM_LABELS)}[kind]
    assert output.logits.shape == shape and torch.isfinite(output.logits).all()
    prefix = n + 1 if demuxing == "index" else 0
    if kind == "mlm":
        # the original's positions include the prefix; its `index` model drops the last N + 1 inputs
        kept = length - prefix
        labelled = inputs["labels"][:, :kept] != -100
        torch.testing.assert_close(output.logits[:, :kept][labelled], expected[:, prefix:][labelled], atol=1e-4, rtol=0)
        torch.testing.assert_close(output.loss, expected_loss, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(
            output.logits, expected[:, prefix:] if kind == "tokcls" else expected, atol=1e-4, rtol=0
        )


def test_safetensors_weights_and_tokenizer_files(tmp_path):
    cfg = legacy_config("MuxedBertForSequenceClassification", "gaussian_hadamard", "index", 2)
    sd = legacy_state_dict(cfg)
    legacy = write_legacy_checkpoint(tmp_path / "legacy", cfg, sd, safetensors=True)
    (legacy / "vocab.txt").write_text("[PAD]\n[CLS]\n")
    (legacy / "tokenizer_config.json").write_text("{}")
    convert_legacy_checkpoint(legacy, tmp_path / "converted")
    assert (tmp_path / "converted" / "vocab.txt").read_text() == "[PAD]\n[CLS]\n"
    assert (tmp_path / "converted" / "tokenizer_config.json").is_file()
    model = load_converted(tmp_path / "converted", cfg["architectures"][0])
    inputs = legacy_inputs(2)
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, legacy_forward(sd, cfg, **inputs)[0], atol=1e-4, rtol=0)


def test_legacy_classifiers_ignore_token_type_ids(tmp_path):
    """The original classification models embed every position with token type 0."""
    cfg = legacy_config("MuxedBertForSequenceClassification", "gaussian_hadamard", "index_pos", 2)
    write_legacy_checkpoint(tmp_path / "legacy", cfg)
    convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted")
    model = load_converted(tmp_path / "converted", cfg["architectures"][0])
    inputs = legacy_inputs(2)
    with torch.no_grad():
        plain = model(**inputs).logits
        typed = model(**inputs, token_type_ids=torch.ones_like(inputs["input_ids"])).logits
    assert torch.equal(plain, typed)


@pytest.mark.parametrize("muxing,demuxing", [("gaussian_attention_v2", "index_pos"), ("random_ortho", "index")])
def test_converted_models_train_on_any_batch_size(muxing, demuxing, tmp_path):
    """Fine-tuning a converted model: odd batch sizes (internal padding), both losses, finite gradients."""
    cfg = legacy_config("MuxedBertForSequenceClassification", muxing, demuxing, 3, retrieval_loss_coeff=0.1)
    write_legacy_checkpoint(tmp_path / "legacy", cfg)
    convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted")
    model = load_converted(tmp_path / "converted", cfg["architectures"][0]).train()
    inputs = {k: v[:5] for k, v in legacy_inputs(3).items()}  # 5 rows: one empty instance added inside
    output = model(**inputs, labels=torch.tensor([0, 1, 2, 1, 0]))
    assert output.logits.shape == (5, NUM_LABELS)
    assert torch.isfinite(output.task_loss) and torch.isfinite(output.retrieval_loss)
    torch.testing.assert_close(output.loss, output.task_loss + 0.1 * output.retrieval_loss)
    output.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_finetuning_from_a_converted_mlm_checkpoint_follows_the_original(tmp_path):
    """legacy_finetuning_options turn a converted MLM checkpoint into the original's task model."""
    mlm = legacy_config("MuxedBertForMaskedLM", "gaussian_attention_v2", "index_pos", 2, 3)
    sd = legacy_state_dict(mlm)
    write_legacy_checkpoint(tmp_path / "legacy", mlm, sd)
    convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted")
    options = legacy_finetuning_options(AutoConfig.from_pretrained(tmp_path / "converted"))
    assert options["legacy_demux"] == "finetuning" and options["legacy_contextual"] == "cross_masked"
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "converted", num_labels=NUM_LABELS, **options)
    model.eval()
    # the original fine-tuning model loads the same weights and a fresh classifier: give it ours
    seqcls = {**mlm, "architectures": ["MuxedBertForSequenceClassification"]}
    sd = {
        **sd,
        "classifier.weight": model.classifier.out_proj.weight,
        "classifier.bias": model.classifier.out_proj.bias,
    }
    inputs = legacy_inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, legacy_forward(sd, seqcls, **inputs)[0], atol=1e-4, rtol=0)
    assert legacy_finetuning_options(MuxBertConfig()) == {}


def test_token_classification_of_the_contextual_multiplexer_follows_the_original(tmp_path):
    """The original MuxedBertForTokenClassification runs its cross-instance layer without a mask (unlike its
    sequence classification): a converted checkpoint, and a converted MLM checkpoint fine-tuned with
    legacy_finetuning_options, reproduce that on a padded batch at N=5."""
    tokcls = legacy_config("MuxedBertForTokenClassification", "gaussian_attention_v2", "index_pos", 5, 3)
    sd = legacy_state_dict(tokcls)
    write_legacy_checkpoint(tmp_path / "tokcls", tokcls, sd)
    report = convert_legacy_checkpoint(tmp_path / "tokcls", tmp_path / "tokcls-converted")
    assert report.legacy_options["legacy_contextual"] == "cross_unmasked"
    model = load_converted(tmp_path / "tokcls-converted", tokcls["architectures"][0])
    inputs = legacy_inputs(5)
    assert not inputs["attention_mask"].all()  # padding: a masked cross-instance layer would differ
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, legacy_forward(sd, tokcls, **inputs)[0], atol=1e-4, rtol=0)

    mlm = {**tokcls, "architectures": ["MuxedBertForMaskedLM"]}
    mlm_sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    write_legacy_checkpoint(tmp_path / "mlm", mlm, mlm_sd)
    convert_legacy_checkpoint(tmp_path / "mlm", tmp_path / "mlm-converted")
    options = legacy_finetuning_options(AutoConfig.from_pretrained(tmp_path / "mlm-converted"), "token-classification")
    assert options["legacy_contextual"] == "cross_unmasked"
    model = AutoModelForTokenClassification.from_pretrained(
        tmp_path / "mlm-converted", num_labels=NUM_LABELS, **options
    ).eval()
    sd = {
        **mlm_sd,
        "classifier.weight": model.classifier.out_proj.weight,
        "classifier.bias": model.classifier.out_proj.bias,
    }
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, legacy_forward(sd, tokcls, **inputs)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("old,new", [("mlm", "cross_unmasked"), ("task", "cross_masked")])
def test_legacy_contextual_values_of_earlier_versions_keep_their_meaning(old, new):
    tiny = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    models = [
        mux_plms.MuxBertForTokenClassification(MuxBertConfig(legacy_contextual=value, demuxing_variant="rsa", **tiny))
        for value in (old, new)
    ]
    masked = [model.bert.multiplexer.mask_across_instances for model in models]
    assert masked[0] == masked[1] == (new == "cross_masked")


# --------------------------------------------------------------------------------------------------
# Clear errors


def _convert_expecting(tmp_path, cfg, sd=None, match=""):
    write_legacy_checkpoint(tmp_path / "legacy", cfg, sd)
    with pytest.raises(LegacyCheckpointError, match=match):
        convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted")
    assert not (tmp_path / "converted" / "config.json").exists()


def test_unknown_weight_is_named(tmp_path):
    cfg = legacy_config("MuxedBertForSequenceClassification", "random_ortho", "index", 5)
    sd = legacy_state_dict(cfg)
    sd["demultiplexer.extra_gate.weight"] = torch.zeros(3)
    _convert_expecting(tmp_path, cfg, sd, match=r"Unknown weights .*demultiplexer\.extra_gate\.weight")


def test_weight_of_the_wrong_shape_is_named(tmp_path):
    cfg = legacy_config("MuxedBertForTokenClassification", "binary_hadamard", "index_pos", 2)
    sd = legacy_state_dict(cfg)
    sd["classifier.weight"] = torch.zeros(7, HIDDEN)
    _convert_expecting(
        tmp_path, cfg, sd, match=r"'classifier\.weight' has shape \(7, 16\).*classifier\.out_proj\.weight"
    )


def test_diverging_copies_of_a_shared_module_are_refused(tmp_path):
    cfg = legacy_config("MuxedBertForSequenceClassification", "binary_hadamard", "index_pos", 2)
    sd = legacy_state_dict(cfg)
    sd["retrieval_head.demux_module.dense_1.weight"] = sd["retrieval_head.demux_module.dense_1.weight"] + 1
    _convert_expecting(tmp_path, cfg, sd, match=r"'retrieval_head\.demux_module\.dense_1\.weight' differs")


def test_missing_weight_is_named(tmp_path):
    cfg = legacy_config("MuxedBertForSequenceClassification", "gaussian_hadamard", "index_pos", 2)
    sd = legacy_state_dict(cfg)
    del sd["demultiplexer.pre_decoder.weight"]
    _convert_expecting(tmp_path, cfg, sd, match=r"missing \['bert\.demultiplexer\.pre_decoder\.weight'\]")


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"muxing_variant": "random_ortho_low_rank"}, "Unsupported muxing_variant 'random_ortho_low_rank'"),
        ({"demuxing_variant": "mlp"}, "Unsupported demuxing_variant 'mlp'"),
        ({"muxing_variant": "gaussian_attention_v2", "demuxing_variant": "index"}, "Cannot reproduce muxing_variant"),
        (
            {"architectures": ["MuxedBertForQuestionAnswering"]},
            "Unsupported architecture 'MuxedBertForQuestionAnswering'",
        ),
        ({"architectures": []}, "exactly one architecture"),
        ({"position_embedding_type": "relative_key"}, "Cannot reproduce position_embedding_type='relative_key'"),
        ({"hidden_act": "relu"}, "Cannot reproduce hidden_act='relu'"),
        ({"num_hidden_demux_layers": 1}, "Cannot reproduce num_hidden_demux_layers=1"),
        ({"demuxing_variant": "index", "vocab_size": 600}, "Cannot reproduce the 'index' prefix with vocab_size=600"),
        ({"model_type": "mux_bert"}, "already a mux_plms checkpoint"),
        ({"model_type": "roberta"}, "not an original MUX-PLMs config"),
    ],
)
def test_unsupported_config_is_named(tmp_path, overrides, match):
    base = legacy_config("MuxedBertForSequenceClassification", "gaussian_hadamard", "index_pos", 2)
    sd = legacy_state_dict(base)
    _convert_expecting(tmp_path, {**base, **overrides}, sd, match=match)


def test_config_without_the_bert_sizes_is_named(tmp_path):
    cfg = legacy_config("MuxedBertForSequenceClassification", "gaussian_hadamard", "index_pos", 2)
    sd = legacy_state_dict(cfg)
    del cfg["hidden_size"]
    _convert_expecting(tmp_path, cfg, sd, match=r"config\.json has no hidden_size: the original code always writes")


def test_shard_index_pointing_outside_the_source_is_refused(tmp_path):
    cfg = legacy_config("MuxedBertForSequenceClassification", "gaussian_hadamard", "index_pos", 2)
    sd = legacy_state_dict(cfg)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    torch.save(sd, outside / "weights.bin")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps(cfg))
    (legacy / "sneaky.bin").symlink_to(outside / "weights.bin")
    for shard, match in (
        ("../elsewhere/weights.bin", r"points outside the folder \('\.\.'\): refused"),
        (str(outside / "weights.bin"), "is not a relative file name inside the folder: refused"),
        ("sneaky.bin", "resolves to .*elsewhere/weights.bin, outside the folder: refused"),
    ):
        (legacy / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
        with pytest.raises(LegacyCheckpointError, match=match):
            convert_legacy_checkpoint(legacy, tmp_path / "converted")
        assert not (tmp_path / "converted").exists()


def test_conversion_is_written_whole_with_a_completion_marker(tmp_path, monkeypatch):
    """A conversion killed while saving leaves no folder under the output name (only a hidden partial one)."""
    from mux_plms.utils.folders import COMPLETE_MARKER, check_complete

    cfg = legacy_config("MuxedBertForTokenClassification", "gaussian_hadamard", "index_pos", 2)
    write_legacy_checkpoint(tmp_path / "legacy", cfg)
    report = convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted")
    assert check_complete(report.out_dir)["files"]["model.safetensors"]["size"] > 0
    assert (tmp_path / "converted" / COMPLETE_MARKER).is_file()

    def crash(self, *args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(mux_plms.MuxBertForTokenClassification, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "again")
    assert not (tmp_path / "again").exists() and not list(tmp_path.glob(".again*"))
    with pytest.raises(KeyboardInterrupt):
        convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted", overwrite=True)
    check_complete(tmp_path / "converted")  # the previous conversion is untouched


def test_source_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"'princeton-nlp/no-such-muxbert' is not a local folder.*failed"):
        convert_legacy_checkpoint("princeton-nlp/no-such-muxbert", tmp_path / "out")
    with pytest.raises(OSError, match="no such folder"):
        convert_legacy_checkpoint(tmp_path / "missing" / "folder", tmp_path / "out")
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "config.json").write_text(
        json.dumps(legacy_config("MuxedBertForMaskedLM", "random_ortho", "index", 2))
    )
    with pytest.raises(LegacyCheckpointError, match="holds no weights"):
        convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "out")


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    cfg = legacy_config("MuxedBertForTokenClassification", "gaussian_hadamard", "index", 2)
    write_legacy_checkpoint(tmp_path / "legacy", cfg)
    convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted")
    with pytest.raises(LegacyCheckpointError, match="already holds a checkpoint"):
        convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted")
    assert convert_legacy_checkpoint(tmp_path / "legacy", tmp_path / "converted", overwrite=True).num_instances == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(legacy_demux="finetuning", demuxing_variant="prefix"), "legacy_demux .* needs demuxing_variant='rsa'"),
        (dict(legacy_demux="sometimes", demuxing_variant="rsa"), "legacy_demux must be None or one of"),
        (dict(legacy_contextual="cross_unmasked", muxing_variant="random_ortho"), "legacy_contextual needs muxing"),
        (dict(legacy_contextual="sometimes"), "legacy_contextual must be None or one of cross_unmasked, cross_masked"),
        (dict(legacy_prefix_truncate=True, demuxing_variant="rsa"), "belong to the `prefix` demultiplexer"),
        (dict(legacy_rsa_cls_token_id=101, demuxing_variant="prefix"), "legacy_rsa_cls_token_id needs"),
    ],
)
def test_legacy_options_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MuxBertConfig(**kwargs)


def test_legacy_options_are_off_by_default():
    config = MuxBertConfig()
    assert not config.legacy_embed_mixture and not config.legacy_prefix_truncate
    assert config.legacy_demux is config.legacy_contextual is config.legacy_rsa_cls_token_id is None
    assert not (
        config.legacy_ignore_token_type_ids or config.legacy_linear_classifier or config.legacy_untransformed_vocab_head
    )
    tiny = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = mux_plms.MuxBertForSequenceClassification(MuxBertConfig(demuxing_variant="rsa", **tiny))
    assert type(model.bert.demultiplexer).__name__ == "RSADemultiplexer"
    assert type(model.bert.multiplexer).__name__ == "ContextualMultiplexer"
    assert type(model.classifier).__name__ == "SequenceClassificationHead" and model.bert.legacy_inputs is None


# --------------------------------------------------------------------------------------------------
# Command line


def test_cli_converts_and_reports(tmp_path, capsys):
    cfg = legacy_config("MuxedBertForSequenceClassification", "random_ortho", "index_pos", 3)
    write_legacy_checkpoint(tmp_path / "legacy", cfg)
    assert cli_main(["convert-legacy", str(tmp_path / "legacy"), str(tmp_path / "converted")]) == 0
    printed = capsys.readouterr().out
    assert "MuxedBertForSequenceClassification -> MuxBertForSequenceClassification (N=3, random_ortho + rsa)" in printed
    model = load_converted(tmp_path / "converted", cfg["architectures"][0])
    with torch.no_grad():
        assert model(**legacy_inputs(3)).logits.shape == (6, NUM_LABELS)
    assert cli_main(["convert-legacy", str(tmp_path / "legacy"), str(tmp_path / "converted")]) == 1
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_only_mux_bert_declares_the_legacy_options_and_every_other_family_refuses_them():
    """The `legacy_*` options belong to the BERT configuration (converted original checkpoints are BERT);
    another family refuses one with a non-default value, and reads an earlier version's config.json, which
    wrote them at their off values, without complaint."""
    import dataclasses

    from mux_plms.models.families import FAMILIES

    for family in FAMILIES.values():
        config_class = family.config_class()
        legacy = sorted(f.name for f in dataclasses.fields(config_class) if f.name.startswith("legacy_"))
        if family.model_type == "mux_bert":
            assert len(legacy) == 9 and config_class.supports_legacy_options
            continue
        assert legacy == [] and not config_class.supports_legacy_options, family.model_type
        with pytest.raises(ValueError, match=rf"not supported by {family.model_type}.*legacy_embed_mixture"):
            config_class(legacy_embed_mixture=True)
        with pytest.raises(ValueError, match="legacy_demux"):
            config_class(legacy_demux="finetuning")
        config_class(legacy_embed_mixture=False, legacy_demux=None)  # an earlier version's saved defaults
