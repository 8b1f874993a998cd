"""The common battery (`model_tester.MuxModelTesterMixin`) applied to every family of the Family table.

Each ``Test<Family>`` class describes one family; `test_every_family_of_the_table_has_a_tester` fails when a
family (or a model class of one) is added to `mux_plms.models.families.FAMILIES` without a tester here.
Family-specific tests stay in the family's own module (test_models.py, test_electra.py, ...).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny_config
from datasets import Dataset
from model_tester import MuxModelTesterMixin
from mux_testing import (
    BATCH,
    IMAGE_LABELS,
    IMAGE_SIZE,
    albert_config,
    electra_config,
    make_images,
    roberta_config,
    tiny_lstm,
    tiny_vision,
)

from mux_plms import (
    DEMUXING_VARIANTS,
    MUXING_VARIANTS,
    MuxAlbertForMaskedLM,
    MuxAlbertForSequenceClassification,
    MuxAlbertForTokenClassification,
    MuxAlbertModel,
    MuxBertForMaskedLM,
    MuxBertForSequenceClassification,
    MuxBertForTokenClassification,
    MuxBertModel,
    MuxCnnForImageClassification,
    MuxElectraForMaskedLM,
    MuxElectraForPreTraining,
    MuxElectraForSequenceClassification,
    MuxElectraForTokenClassification,
    MuxElectraModel,
    MuxLstmForMaskedLM,
    MuxLstmForSequenceClassification,
    MuxLstmForTokenClassification,
    MuxLstmModel,
    MuxMlpForImageClassification,
    MuxRobertaForMaskedLM,
    MuxRobertaForSequenceClassification,
    MuxRobertaForTokenClassification,
    MuxRobertaModel,
    MuxVisionForImageClassification,
)
from mux_plms.models.families import FAMILIES

EVERY_PAIRING = tuple(itertools.product(MUXING_VARIANTS, DEMUXING_VARIANTS))
# four pairings that between them use every multiplexer and every demultiplexer once or more
FOUR_PAIRINGS = (("contextual", "prefix"), ("gaussian_hadamard", "rsa"), ("random_ortho", "mlp"),
                 ("binary_hadamard", "prefix"))  # fmt: skip


class TestMuxBert(MuxModelTesterMixin):
    family = "mux_bert"
    model_classes = (MuxBertModel, MuxBertForMaskedLM, MuxBertForSequenceClassification, MuxBertForTokenClassification)
    pairings = EVERY_PAIRING

    def get_config(self, **overrides):
        return tiny_config(**overrides)


class TestMuxElectra(MuxModelTesterMixin):
    """The ELECTRA-small shape (embedding 16 < hidden 32); the saved round trip at every N, as before."""

    family = "mux_electra"
    model_classes = (MuxElectraModel, MuxElectraForPreTraining, MuxElectraForMaskedLM,
                     MuxElectraForSequenceClassification, MuxElectraForTokenClassification)  # fmt: skip
    pairings = EVERY_PAIRING
    save_load_instances = (1, 2, 5)
    save_load_tolerance = (1e-5, 1e-6)  # as the ELECTRA contract had it
    shape = "small"

    def get_config(self, **overrides):
        return electra_config(self.shape, **overrides)


class TestMuxElectraBaseShape(TestMuxElectra):
    """The ELECTRA-base shape (embedding == hidden: no embeddings_project), N=2, prefix demultiplexing."""

    shape = "base"
    pairings = tuple((muxing, "prefix") for muxing in MUXING_VARIANTS)
    instances = padded_instances = save_load_instances = (2,)

    def test_remote_code(self, tmp_path):
        pytest.skip("the same classes and files as TestMuxElectra::test_remote_code (one subprocess per family)")

    def test_trainer_step(self, tmp_path):
        pytest.skip("covered by TestMuxElectra::test_trainer_step: the shape does not touch the Trainer")

    def test_meta_device_init(self, meta_class, muxing):
        pytest.skip("covered by TestMuxElectra::test_meta_device_init: the keys live at the embedding width")


class TestMuxRoberta(MuxModelTesterMixin):
    family = "mux_roberta"
    model_classes = (MuxRobertaModel, MuxRobertaForMaskedLM, MuxRobertaForSequenceClassification,
                     MuxRobertaForTokenClassification)  # fmt: skip
    pairings = FOUR_PAIRINGS

    def get_config(self, **overrides):
        return roberta_config(**overrides)


class TestMuxAlbert(MuxModelTesterMixin):
    family = "mux_albert"
    model_classes = (MuxAlbertModel, MuxAlbertForMaskedLM, MuxAlbertForSequenceClassification,
                     MuxAlbertForTokenClassification)  # fmt: skip
    pairings = FOUR_PAIRINGS
    save_load_tolerance = (1e-5, 1e-6)  # shared layers: BLAS rounding reaches 1e-7 on the unaligned weights

    def get_config(self, **overrides):
        return albert_config(**overrides)


class TestMuxLstm(MuxModelTesterMixin):
    family = "mux_lstm"
    model_classes = (MuxLstmModel, MuxLstmForMaskedLM, MuxLstmForSequenceClassification,
                     MuxLstmForTokenClassification)  # fmt: skip
    pairings = (("gaussian_hadamard", "prefix"), ("random_ortho", "rsa"), ("contextual", "mlp"),
                ("binary_hadamard", "prefix"))  # fmt: skip

    def get_config(self, **overrides):
        return tiny_lstm(**overrides)


class TestMuxVision(MuxModelTesterMixin):
    """Images: no sequence, so the padding test checks internal padding == explicit all-zero images only."""

    family = "mux_vision"
    model_classes = (MuxMlpForImageClassification, MuxCnnForImageClassification)
    pairings = tuple(itertools.product(MUXING_VARIANTS, ("rsa", "mlp")))  # prefix is text-only
    length_padding = False  # an image has no positions that can be padded
    meta_classes = (MuxMlpForImageClassification, MuxCnnForImageClassification)
    num_labels = IMAGE_LABELS

    def get_config(self, **overrides):
        return tiny_vision(**overrides)

    def config_for(self, model_class, **overrides):
        overrides.pop("num_labels", None)
        backbone = "mlp" if model_class is MuxMlpForImageClassification else "cnn"
        return tiny_vision(backbone=backbone, **overrides)

    def build(self, model_class, config):
        model = MuxVisionForImageClassification(config)  # the family's class dispatches on config.backbone
        assert type(model) is model_class
        return model

    def make_inputs(self, batch: int = BATCH) -> dict:
        return {"pixel_values": make_images(batch)}

    def make_labels(self, model_class, inputs):
        batch = len(inputs["pixel_values"])
        return torch.randint(0, IMAGE_LABELS, (batch,), generator=torch.Generator().manual_seed(1))

    def expected_retrieval_shape(self, config, batch):
        """Every instance's reconstruction: all pixels at once (MLP) or one value per pixel (CNN)."""
        pixels = IMAGE_SIZE * IMAGE_SIZE
        return (batch, 1, pixels) if config.backbone == "mlp" else (batch, pixels, 1)

    def gradient_parameter(self, model):
        return (model.layers[0] if model.backbone_type == "mlp" else model.stem).weight

    def pad_batch(self, inputs, extra, config):
        images = inputs["pixel_values"]
        return {"pixel_values": torch.cat([images, torch.zeros(extra, *images.shape[1:])])}

    def check_saved(self, saved, model):
        assert saved["backbone"] == model.config.backbone

    def reload_class(self, model):
        return MuxVisionForImageClassification

    def test_length_padding(self, model_class, pairing, n):
        pytest.skip("images have no positions to pad (internal padding: test_padding_equivalence)")

    def trainer_model(self):
        config = tiny_vision(num_instances=2, hidden_size=64, muxing_variant="random_ortho", backbone="mlp")
        return MuxMlpForImageClassification(config), IMAGE_LABELS

    def trainer_dataset(self):
        g = torch.Generator().manual_seed(0)
        images = torch.rand(48, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        labels = torch.randint(0, IMAGE_LABELS, (48,), generator=g)
        return Dataset.from_dict({"pixel_values": images.numpy(), "labels": labels.numpy()}).with_format("torch")


TESTERS = [TestMuxBert, TestMuxElectra, TestMuxRoberta, TestMuxAlbert, TestMuxLstm, TestMuxVision]


def test_every_family_of_the_table_has_a_tester():
    """A backbone cannot join the Family table (or a family gain a class) without the battery."""
    assert {tester.family for tester in TESTERS} == set(FAMILIES)
    for tester in TESTERS:
        family = FAMILIES[tester.family]
        for auto_name in family.models:
            cls = family.model_class(auto_name)
            assert any(issubclass(tested, cls) for tested in tester.model_classes), (tester.__name__, cls)
