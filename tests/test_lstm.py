"""MUX-LSTM: LSTM-specific shape, padding (packed sequences) and errors.

The family battery (contract, padding, save/load, remote code, Trainer, meta device) is
tests/test_model_battery.py::TestMuxLstm."""

from __future__ import annotations

import pytest
import torch
from mux_testing import LENGTH, make_inputs, tiny_lstm

from mux_plms import (
    MuxLstmForMaskedLM,
    MuxLstmForSequenceClassification,
    MuxLstmForTokenClassification,
    MuxLstmModel,
)

# ------------------------------------------------------------------------------------------------ tests


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
