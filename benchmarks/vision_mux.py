"""Multiplexed image classification on real handwritten digits: held-out accuracy vs N, MLP and CNN.

    python benchmarks/vision_mux.py          # MLP and CNN, N in {1, 2, 4, 8}, random_ortho and gaussian_hadamard
    python benchmarks/vision_mux.py --backbones mlp --num-instances 1 2 --epochs 30

Data: scikit-learn's ``load_digits`` (1,797 real 8x8 grey-level digits, intensities 0..16 scaled to
[0, 1]), split 80 / 20 with a stratified, seeded shuffle (1,437 train / 360 held-out). MNIST is not used:
no PyPI package on this machine ships it offline (see benchmarks/results/backbones/README.md).

Each run trains a fresh `MuxMlpForImageClassification` / `MuxCnnForImageClassification` from scratch with
AdamW; every epoch reshuffles the training images, so the mux groups (rows kN .. kN+N-1 of a batch)
change from epoch to epoch. Reports plain held-out accuracy (each image in one slot of one group, one
pass per N images) and ensembled accuracy (each image in every slot, averaged; about one pass per
image). Every optimizer step sees 32 images (32 / N mux groups) whatever N. Writes JSON with every number and the command that produced it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "backbones" / "vision.json"

# Per-backbone defaults (tuned once at N=1 and kept for every N).
DEFAULTS = {
    "mlp": {"hidden": 256, "layers": 2, "epochs": 60, "lr": 2e-3},
    "cnn": {"hidden": 64, "layers": 2, "epochs": 40, "lr": 2e-3},
}


def digits_splits(seed: int = 0, test_fraction: float = 0.2):
    """``(train_x, train_y, test_x, test_y)``: scikit-learn digits as float tensors ``(n, 1, 8, 8)`` in [0, 1]
    and long labels, split with a stratified, seeded shuffle (1,437 / 360 for the defaults)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    as_x = lambda a: torch.from_numpy(a).unsqueeze(1)  # noqa: E731
    as_y = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return as_x(train_x), as_y(train_y), as_x(test_x), as_y(test_y)


def make_model(backbone: str, num_instances: int, hidden: int, layers: int, **config_overrides):
    from mux_plms import MuxVisionConfig, MuxVisionForImageClassification

    config = MuxVisionConfig(
        backbone=backbone,
        image_size=8,
        num_channels=1,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_labels=10,
        num_instances=num_instances,
        **config_overrides,
    )
    return MuxVisionForImageClassification(config)


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, ensemble: bool = False, batch: int = 240) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        logits = model.forward_ensemble(x) if ensemble else model(pixel_values=x).logits
        correct += int((logits.argmax(-1) == labels[start : start + batch]).sum())
    return correct / len(images)


def train(
    backbone: str = "mlp",
    num_instances: int = 2,
    epochs: int | None = None,
    hidden: int | None = None,
    layers: int | None = None,
    lr: float | None = None,
    images_per_step: int = 32,
    muxing_variant: str = "random_ortho",
    demuxing_variant: str = "mlp",
    retrieval_loss_coeff: float = 0.0,
    seed: int = 0,
    data=None,
    progress: bool = True,
) -> dict:
    """Train one model from scratch on the digits and return its held-out numbers.

    Every optimizer step sees `images_per_step` images (``images_per_step / N`` mux groups), so every N
    gets the same number of steps per epoch."""
    defaults = DEFAULTS[backbone]
    epochs = epochs or defaults["epochs"]
    hidden = hidden or defaults["hidden"]
    layers = layers or defaults["layers"]
    lr = lr or defaults["lr"]
    torch.manual_seed(seed)
    train_x, train_y, test_x, test_y = data if data is not None else digits_splits(seed=0)
    task_coeff = 1.0 - retrieval_loss_coeff if retrieval_loss_coeff else 1.0
    model = make_model(
        backbone,
        num_instances,
        hidden,
        layers,
        muxing_variant=muxing_variant,
        demuxing_variant=demuxing_variant,
        retrieval_loss_coeff=retrieval_loss_coeff,
        task_loss_coeff=task_coeff,
    )
    if images_per_step % num_instances:
        raise ValueError(f"images_per_step={images_per_step} must be a multiple of num_instances={num_instances}")
    batch = images_per_step
    steps_per_epoch = -(-len(train_x) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(epochs), desc=f"{backbone} N={num_instances}", disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(len(train_x), generator=generator)
        for i in range(0, len(order), batch):
            rows = order[i : i + batch]
            loss = model(pixel_values=train_x[rows], labels=train_y[rows]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        model.train()
    train_seconds = time.perf_counter() - start
    return {
        "backbone": backbone,
        "num_instances": num_instances,
        "heldout_accuracy": accuracy(model, test_x, test_y),
        "heldout_accuracy_ensemble": accuracy(model, test_x, test_y, ensemble=True) if num_instances > 1 else None,
        "train_accuracy": accuracy(model, train_x, train_y),
        "epochs": epochs,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "learning_rate": lr,
        "images_per_step": batch,
        "muxing_variant": muxing_variant,
        "demuxing_variant": demuxing_variant,
        "retrieval_loss_coeff": retrieval_loss_coeff,
        "seed": seed,
        "train_seconds": round(train_seconds, 1),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["mlp", "cnn"], choices=sorted(DEFAULTS))
    parser.add_argument("--num-instances", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: per backbone (mlp 60, cnn 40)")
    parser.add_argument("--muxing-variants", nargs="+", default=["random_ortho", "gaussian_hadamard"])
    parser.add_argument("--demuxing-variant", default="mlp")
    parser.add_argument("--retrieval-loss-coeff", type=float, default=0.0)
    parser.add_argument("--images-per-step", type=int, default=32, help="images per optimizer step (a multiple of N)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = digits_splits(seed=0)
    runs = []
    for muxing_variant, backbone, n, seed in itertools.product(
        args.muxing_variants, args.backbones, args.num_instances, args.seeds
    ):
        result = train(
            backbone,
            n,
            epochs=args.epochs,
            muxing_variant=muxing_variant,
            demuxing_variant=args.demuxing_variant,
            retrieval_loss_coeff=args.retrieval_loss_coeff,
            images_per_step=args.images_per_step,
            seed=seed,
            data=data,
        )
        runs.append(result)
        print(json.dumps(result), flush=True)
    command = "python benchmarks/vision_mux.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = {
        "data": "sklearn.datasets.load_digits: 1,437 train / 360 held-out (stratified, random_state=0)",
        "command": command.strip(),
        "torch": torch.__version__,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
