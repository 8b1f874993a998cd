"""MUX-RoBERTa and MUX-ALBERT (the MUX-BERT contract on two more Transformer backbones) and the T-MUX presets."""

from __future__ import annotations

import pytest
import torch
from test_lstm import check_remote_code, check_save_load, check_text_contract, check_trainer_step
from test_models import make_inputs
from transformers import (
    AlbertConfig,
    AlbertModel,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    RobertaConfig,
    RobertaModel,
)

from mux_plms import (
    MuxAlbertConfig,
    MuxAlbertForMaskedLM,
    MuxAlbertForSequenceClassification,
    MuxAlbertForTokenClassification,
    MuxAlbertModel,
    MuxBertConfig,
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxRobertaConfig,
    MuxRobertaForMaskedLM,
    MuxRobertaForSequenceClassification,
    MuxRobertaForTokenClassification,
    MuxRobertaModel,
)
from mux_plms.configs.tmux import TMUX_PRESETS, load_tmux_preset, tmux_description, tmux_recipe

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def roberta_config(**overrides) -> MuxRobertaConfig:
    return MuxRobertaConfig(**{**TINY, "max_position_embeddings": 42, **overrides})


def albert_config(**overrides) -> MuxAlbertConfig:
    """ALBERT-style shape: embedding_size 16 < hidden_size 32 (like ELECTRA-small)."""
    return MuxAlbertConfig(**{**TINY, "embedding_size": 16, "max_position_embeddings": 40, **overrides})


FAMILIES = {
    "roberta": (
        roberta_config,
        [MuxRobertaModel, MuxRobertaForMaskedLM, MuxRobertaForSequenceClassification, MuxRobertaForTokenClassification],
    ),
    "albert": (
        albert_config,
        [MuxAlbertModel, MuxAlbertForMaskedLM, MuxAlbertForSequenceClassification, MuxAlbertForTokenClassification],
    ),
}
AUTO_NAMES = {"Model": "AutoModel", "ForMaskedLM": "AutoModelForMaskedLM",
              "ForSequenceClassification": "AutoModelForSequenceClassification",
              "ForTokenClassification": "AutoModelForTokenClassification"}  # fmt: skip
AUTO = {"AutoModel": AutoModel, "AutoModelForMaskedLM": AutoModelForMaskedLM,
        "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
        "AutoModelForTokenClassification": AutoModelForTokenClassification}  # fmt: skip
PAIRINGS = [
    ("contextual", "prefix"),
    ("gaussian_hadamard", "rsa"),
    ("random_ortho", "mlp"),
    ("binary_hadamard", "prefix"),
]
CASES = [(family, cls) for family, (_, classes) in FAMILIES.items() for cls in classes]


def auto_name(cls) -> str:
    return next(v for k, v in AUTO_NAMES.items() if cls.__name__.endswith(k))


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("muxing,demuxing", PAIRINGS)
@pytest.mark.parametrize("family,cls", CASES, ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_contract(family, cls, muxing, demuxing, n):
    make_config = FAMILIES[family][0]
    config = make_config(
        num_instances=n, muxing_variant=muxing, demuxing_variant=demuxing, num_labels=3, retrieval_loss_coeff=0.1
    )
    check_text_contract(cls, config)


@pytest.mark.parametrize("family,cls", CASES, ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_save_load_round_trip(family, cls, tmp_path):
    model = cls(FAMILIES[family][0](num_instances=2, num_labels=3))
    check_save_load(model, tmp_path, AUTO[auto_name(cls)], f"mux_{family}", f"mux_{family}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_remote_code_in_a_python_without_mux_plms(family, tmp_path):
    make_config, classes = FAMILIES[family]
    models = {cls.__name__: cls(make_config(num_instances=2, num_labels=3)) for cls in classes}
    check_remote_code(tmp_path, models, {cls.__name__: auto_name(cls) for cls in classes})


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trainer(family, tmp_path):
    torch.manual_seed(0)
    config = FAMILIES[family][0](num_instances=2, num_labels=2, demuxing_variant="rsa", hidden_dropout_prob=0.0)
    cls = MuxRobertaForSequenceClassification if family == "roberta" else MuxAlbertForSequenceClassification
    check_trainer_step(cls(config), tmp_path)


@pytest.mark.parametrize(
    "family,vanilla_config,vanilla_model",
    [("roberta", RobertaConfig, RobertaModel), ("albert", AlbertConfig, AlbertModel)],
)
def test_warm_start_from_a_vanilla_checkpoint(family, vanilla_config, vanilla_model, tmp_path):
    """A vanilla RoBERTa / ALBERT folder loads into the multiplexed classifier: backbone weights are copied,
    multiplexing modules and heads are new."""
    make_config, classes = FAMILIES[family]
    mux = make_config()
    kwargs = {k: getattr(mux, k) for k in [*TINY, "max_position_embeddings"]}
    if family == "albert":
        kwargs["embedding_size"] = 16
    torch.manual_seed(0)
    vanilla_model(vanilla_config(**kwargs)).save_pretrained(tmp_path)
    model, info = classes[2].from_pretrained(
        tmp_path, num_instances=2, muxing_variant="gaussian_hadamard", demuxing_variant="rsa", num_labels=2,
        output_loading_info=True,
    )  # fmt: skip
    base = getattr(model, family)
    source = vanilla_model.from_pretrained(tmp_path)
    torch.testing.assert_close(
        base.embeddings.word_embeddings.weight, source.embeddings.word_embeddings.weight, rtol=0, atol=0
    )
    torch.testing.assert_close(
        dict(base.encoder.named_parameters()), dict(source.encoder.named_parameters()), rtol=0, atol=0
    )
    missing = set(info["missing_keys"])
    assert not any(k.startswith((f"{family}.embeddings", f"{family}.encoder")) for k in missing)
    assert {"classifier.out_proj.weight", f"{family}.demultiplexer.instance_keys"} <= missing


def test_albert_multiplexes_at_the_embedding_width_before_the_projection():
    model = MuxAlbertModel(albert_config(muxing_variant="random_ortho", demuxing_variant="rsa"))
    assert model.multiplexer.instance_keys.shape == (2, 16, 16)
    assert model.encoder.embedding_hidden_mapping_in.in_features == 16
    mixed, _, _ = model.multiplex_encode(**make_inputs(batch=4))
    assert mixed.shape[-1] == 32
    lm = MuxAlbertForMaskedLM(albert_config())
    assert lm.lm_head.decoder.weight.data_ptr() == lm.albert.embeddings.word_embeddings.weight.data_ptr()


def test_albert_shares_layers_across_depth():
    model = MuxAlbertModel(albert_config(num_hidden_layers=4, num_hidden_groups=2, demuxing_variant="rsa"))
    assert len(model.encoder.albert_layer_groups) == 2
    _, _, hidden_states = model.multiplex_encode(**make_inputs(batch=2), output_hidden_states=True)
    assert len(hidden_states) == 5  # projected mixture + 4 applications of 2 shared groups
    with pytest.raises(ValueError, match="num_hidden_groups must divide num_hidden_layers=4"):
        albert_config(num_hidden_layers=4, num_hidden_groups=3)


def test_roberta_position_limit_counts_the_offset_and_the_prefix():
    model = MuxRobertaModel(roberta_config(demuxing_variant="prefix", num_instances=2))  # 42 - 1 - 1 = 40 positions
    model(input_ids=torch.full((2, 38), 7))
    with pytest.raises(ValueError, match=r"needs 41 positions .* leaves 40\. Truncate the inputs to at most 38 tokens"):
        model(input_ids=torch.full((2, 39), 7))


@pytest.mark.parametrize(
    "make_config,kwargs,match",
    [
        (roberta_config, {"muxing_variant": "fourier"}, "muxing_variant must be one of"),
        (roberta_config, {"legacy_embed_mixture": True}, "legacy_embed_mixture"),
        (
            albert_config,
            {"muxing_variant": "contextual", "embedding_size": 15},
            "embedding_size=15, which must be a multiple",
        ),
        (albert_config, {"demuxing_variant": "index"}, "demuxing_variant must be one of rsa, prefix, mlp"),
    ],
)
def test_config_errors(make_config, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_config(**kwargs)


# --------------------------------------------------------------------------------------------- T-MUX


def test_tmux_presets_follow_the_datamux_recipe():
    base = load_tmux_preset("base")
    assert (base["num_hidden_layers"], base["hidden_size"], base["num_attention_heads"]) == (12, 768, 12)
    assert (base["retrieval_loss_coeff"], base["task_loss_coeff"]) == (0.1, 0.9)
    assert (base["muxing_variant"], base["demuxing_variant"]) == ("gaussian_hadamard", "prefix")
    warmup = load_tmux_preset("base", stage="warmup")
    assert (warmup["retrieval_loss_coeff"], warmup["task_loss_coeff"]) == (1.0, 0.0)
    config = MuxBertConfig(**load_tmux_preset("base", num_instances=5))  # valid at paper scale (not built)
    assert config.num_instances == 5 and config.model_type == "mux_bert"
    for name in TMUX_PRESETS:
        assert tmux_description(name) and tmux_recipe(name, "warmup")["learning_rate"] > 0
    with pytest.raises(ValueError, match="Unknown T-MUX preset 'huge': choose one of tiny, demo, base"):
        load_tmux_preset("huge")
    with pytest.raises(ValueError, match="Unknown T-MUX stage 'pretrain': choose one of warmup, finetune"):
        load_tmux_preset("tiny", stage="pretrain")


def test_tmux_tiny_warmup_then_finetune(tmp_path):
    """Stage 1 trains retrieval only; its checkpoint starts the classifier, whose loss is 0.9 task + 0.1 retrieval."""
    torch.manual_seed(0)
    warm = MuxBertForMaskedLM(MuxBertConfig(**load_tmux_preset("tiny", stage="warmup", vocab_size=120)))
    inputs = make_inputs(batch=8)
    optimizer = torch.optim.AdamW(warm.parameters(), lr=tmux_recipe("tiny", "warmup")["learning_rate"] * 5)
    losses = []
    for _ in range(8):
        out = warm(**inputs)
        assert out.logits is None  # retrieval-only stage: no MLM head computed
        losses.append(out.loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]
    warm.save_pretrained(tmp_path)
    finetune = load_tmux_preset("tiny", stage="finetune", num_labels=2)
    model = MuxBertForSequenceClassification.from_pretrained(
        tmp_path, **{k: finetune[k] for k in ("retrieval_loss_coeff", "task_loss_coeff", "num_labels")}
    )
    torch.testing.assert_close(
        model.bert.multiplexer.instance_keys, warm.bert.multiplexer.instance_keys, rtol=0, atol=0
    )
    out = model(**inputs, labels=torch.tensor([0, 1] * 4))
    torch.testing.assert_close(out.loss, 0.9 * out.task_loss + 0.1 * out.retrieval_loss)


# ------------------------------------------------------------------------- fixed keys, every new family


def _new_family_models():
    from test_lstm import tiny_lstm
    from test_vision import tiny_vision

    from mux_plms import MuxCnnForImageClassification, MuxLstmModel, MuxMlpForImageClassification

    return {
        "lstm": lambda **kw: MuxLstmModel(tiny_lstm(**kw)),
        "mlp": lambda **kw: MuxMlpForImageClassification(tiny_vision(**kw)),
        "cnn": lambda **kw: MuxCnnForImageClassification(tiny_vision(**kw)),
        "roberta": lambda **kw: MuxRobertaModel(roberta_config(**kw)),
        "albert": lambda **kw: MuxAlbertModel(albert_config(**kw)),
    }


def _keys(model) -> torch.Tensor:
    base = getattr(model, "base_model", model)
    return base.multiplexer.instance_keys


@pytest.mark.parametrize("family", ["lstm", "mlp", "cnn", "roberta", "albert"])
@pytest.mark.parametrize("muxing", ["gaussian_hadamard", "random_ortho"])
def test_meta_device_build_gives_the_seeded_keys(family, muxing):
    """Models built on the meta device (as from_pretrained does) re-draw exactly the seeded fixed keys."""
    build = _new_family_models()[family]
    kwargs = dict(muxing_variant=muxing, num_instances=3, demuxing_variant="rsa")
    reference = build(**kwargs)
    with torch.device("meta"):
        model = build(**kwargs)
    model.to_empty(device="cpu")
    model.init_weights()
    torch.testing.assert_close(_keys(model), _keys(reference), rtol=0, atol=0)
    assert not torch.equal(_keys(build(**kwargs, muxing_seed=1)), _keys(reference))


@pytest.mark.parametrize("family", ["lstm", "mlp", "roberta", "albert"])
def test_fixed_keys_are_never_redrawn_on_load(family, tmp_path):
    model = _new_family_models()[family](muxing_variant="gaussian_hadamard", demuxing_variant="rsa")
    with torch.no_grad():
        _keys(model).mul_(-3.0)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    torch.testing.assert_close(_keys(loaded), _keys(model), rtol=0, atol=0)
