"""MUX-RoBERTa and MUX-ALBERT specifics (warm starts, ALBERT sharing, RoBERTa positions) and the T-MUX presets.

The family battery (contract, padding, save/load, remote code, Trainer, meta device) is
tests/test_model_battery.py::TestMuxRoberta / TestMuxAlbert."""

from __future__ import annotations

import pytest
import torch
from mux_testing import TINY_TEXT, albert_config, make_inputs, roberta_config
from transformers import (
    AlbertConfig,
    AlbertModel,
    RobertaConfig,
    RobertaModel,
)

from mux_plms import (
    MuxAlbertForMaskedLM,
    MuxAlbertForSequenceClassification,
    MuxAlbertForTokenClassification,
    MuxAlbertModel,
    MuxBertConfig,
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxRobertaForMaskedLM,
    MuxRobertaForSequenceClassification,
    MuxRobertaForTokenClassification,
    MuxRobertaModel,
)
from mux_plms.configs.tmux import TMUX_PRESETS, load_tmux_preset, tmux_description, tmux_recipe

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


@pytest.mark.parametrize(
    "family,vanilla_config,vanilla_model",
    [("roberta", RobertaConfig, RobertaModel), ("albert", AlbertConfig, AlbertModel)],
)
def test_warm_start_from_a_vanilla_checkpoint(family, vanilla_config, vanilla_model, tmp_path):
    """A vanilla RoBERTa / ALBERT folder loads into the multiplexed classifier: backbone weights are copied,
    multiplexing modules and heads are new."""
    make_config, classes = FAMILIES[family]
    mux = make_config()
    kwargs = {k: getattr(mux, k) for k in [*TINY_TEXT, "max_position_embeddings"]}
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
