"""Multiplexed MLP and CNN image classifiers: vision specifics and learning on real digits.

The family battery (contract, padding, save/load, remote code, Trainer, meta device) is
tests/test_model_battery.py::TestMuxVision."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from datasets import Dataset
from mux_testing import make_images, tiny_training_arguments, tiny_vision
from transformers import Trainer

from mux_plms import (
    MuxCnnForImageClassification,
    MuxMlpForImageClassification,
    MuxVisionForImageClassification,
)

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
pytest.importorskip("sklearn", reason="scikit-learn ships the digits data set")

BATCH, SIZE, LABELS = 7, 8, 10
CLASSES = {"mlp": MuxMlpForImageClassification, "cnn": MuxCnnForImageClassification}


@pytest.mark.parametrize("backbone", ["mlp", "cnn"])
def test_groups_are_independent_and_instances_are_mixed(backbone):
    model = CLASSES[backbone](tiny_vision(num_instances=2)).eval()
    images = make_images(batch=4)
    with torch.no_grad():
        before = model(pixel_values=images).logits
        images[3] = 1.0 - images[3]  # change one instance of group 1
        after = model(pixel_values=images).logits
    torch.testing.assert_close(before[:2], after[:2], rtol=0, atol=0)
    assert not torch.allclose(before[2], after[2])  # its partner saw the change: one shared backbone pass


def test_backbone_is_filled_in_or_checked():
    config = tiny_vision()
    assert config.backbone is None
    model = MuxCnnForImageClassification(config)
    assert model.config.backbone == "cnn" and model.config.mux_width == 32
    with pytest.raises(ValueError, match="MuxMlpForImageClassification needs config.backbone='mlp', got 'cnn'"):
        MuxMlpForImageClassification(model.config)
    with pytest.raises(ValueError, match="config.backbone must be one of mlp, cnn"):
        MuxVisionForImageClassification(tiny_vision())
    assert tiny_vision(backbone="mlp").mux_width == SIZE * SIZE  # the MLP mixes raw pixels


@pytest.mark.parametrize("n", [1, 3])
def test_forward_ensemble(n):
    torch.manual_seed(0)
    model = MuxMlpForImageClassification(tiny_vision(num_instances=n)).eval()
    images = make_images(batch=5)
    ensembled = model.forward_ensemble(images)
    with torch.no_grad():
        plain = model(pixel_values=images).logits
    assert ensembled.shape == (5, LABELS)
    if n == 1:
        torch.testing.assert_close(ensembled, plain)
        return
    padded = torch.cat([images, torch.zeros(1, 1, SIZE, SIZE)])  # 2 groups of 3
    total = torch.zeros(6, LABELS)
    for shift in range(n):
        order = torch.cat([g * n + (torch.arange(n) + shift) % n for g in range(2)])
        with torch.no_grad():
            total[order] += model(pixel_values=padded[order]).logits
    torch.testing.assert_close(ensembled, (total / n)[:5])


def test_trainer_on_digits(tmp_path):
    from vision_mux import digits_splits

    train_x, train_y, test_x, test_y = digits_splits()
    assert (len(train_x), len(test_x)) == (1437, 360)
    assert train_x.shape[1:] == (1, 8, 8) and 0.0 <= float(train_x.min()) and float(train_x.max()) <= 1.0
    torch.manual_seed(0)
    model = MuxMlpForImageClassification(tiny_vision(num_instances=2, hidden_size=64, muxing_variant="random_ortho"))
    train = Dataset.from_dict({"pixel_values": train_x[:300].numpy(), "labels": train_y[:300].numpy()})
    train.set_format("torch")
    args = tiny_training_arguments(
        tmp_path,
        per_device_train_batch_size=15,  # not a multiple of N
        per_device_eval_batch_size=7,
        max_steps=40,
        learning_rate=5e-3,
        logging_steps=10,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 4 and losses[-1] < losses[0]
    dev = Dataset.from_dict({"pixel_values": test_x[:9].numpy(), "labels": test_y[:9].numpy()}).with_format("torch")
    prediction = trainer.predict(dev)
    assert prediction.predictions.shape == (9, LABELS)  # one row per image, logits only
    assert np.isfinite(prediction.metrics["test_loss"])


# Measured on this machine (seeded, one thread): N=1 0.975, N=2 0.947 after 25 epochs (gap 2.8 points);
# 15 epochs gave 0.975 / 0.933 (gap 4.2: too close to the bar), 60 epochs 0.978 / 0.967.
EPOCHS_FOR_TEST = 25


@pytest.mark.slow
def test_heldout_digits_accuracy_at_n2_within_5_points_of_n1():
    """Real data: the multiplexed MLP at N=2 stays within 5 points of N=1 on the 360 held-out digits."""
    from vision_mux import digits_splits, train

    data = digits_splits()
    kwargs = dict(epochs=EPOCHS_FOR_TEST, muxing_variant="random_ortho", data=data, progress=False)
    one = train("mlp", 1, **kwargs)["heldout_accuracy"]
    two = train("mlp", 2, **kwargs)["heldout_accuracy"]
    assert one > 0.93, one  # chance is 0.10
    assert two >= one - 0.05, (one, two)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"demuxing_variant": "prefix"}, "demuxing_variant must be one of rsa, mlp for images"),
        ({"backbone": "resnet"}, "backbone must be one of mlp, cnn"),
        ({"kernel_size": 4}, "kernel_size must be an odd integer"),
        (
            {"backbone": "cnn", "muxing_variant": "contextual", "num_attention_heads": 3},
            "multiple of num_attention_heads=3",
        ),
        ({"muxing_variant": "fourier"}, "muxing_variant must be one of"),
        ({"image_size": 0}, "image_size must be an integer >= 1"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_vision(**kwargs)


def test_pixel_values_of_the_wrong_shape():
    model = MuxMlpForImageClassification(tiny_vision())
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 1, 8, 8\)"):
        model(pixel_values=torch.rand(2, 64))
    with pytest.raises(ValueError, match="got None"):
        model()
