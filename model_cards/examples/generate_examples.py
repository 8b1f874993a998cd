"""Generate the example model card(s) of this folder with mux-plms' own card code.

    python model_cards/examples/generate_examples.py            # train, measure, write the examples
    python model_cards/examples/generate_examples.py --render   # only re-render README.md from the saved
                                                                # config.json and training_record.json

The example is a tiny MUX-BERT (N=2, 2 layers, hidden 32, vocabulary 120) taken through two short
stages on synthetic token data, so every number in its card was measured by this script:

1. ``retrieval``: 100 steps of stage-1 token retrieval on random token sequences;
2. ``finetune``: 100 steps of sequence classification on "is the first token id >= 65?", then
   accuracy on 256 held-out sequences (multiplexed and ensembled) and CPU throughput vs N=1.

The folder keeps ``config.json``, ``training_record.json`` and the generated ``README.md`` (not the
weights); ``tests/test_model_card.py`` checks that re-rendering reproduces the committed README.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from mux_plms import MuxBertConfig, MuxBertForMaskedLM, MuxBertForSequenceClassification
from mux_plms.hub.card import (
    EvaluationResult,
    ThroughputRecord,
    TrainingRecord,
    TrainingStage,
    render_model_card,
)

HERE = Path(__file__).resolve().parent
NAME = "mux-bert-tiny-n2"
REPO_ID = f"mux-plms/{NAME}"
CONFIG = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=40,
    num_instances=2,
    muxing_variant="contextual",
    demuxing_variant="prefix",
)
SEQ_LEN, BATCH, STEPS, THRESHOLD = 16, 32, 100, 65


def synthetic_batch(generator: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sequences of ids 10..119, labelled 1 when their first token id is >= THRESHOLD."""
    ids = torch.randint(10, 120, (size, SEQ_LEN), generator=generator)
    return ids, (ids[:, 0] >= THRESHOLD).long()


def train(model, steps: int, make_batch, lr: float = 3e-3) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = model(**make_batch()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return float(loss)


def samples_per_second(model, ids: torch.Tensor, repeats: int = 20) -> float:
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
        start = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=ids)
    return repeats * ids.shape[0] / (time.perf_counter() - start)


def build(out: Path) -> None:
    """Run the two stages, evaluate, measure, and save model + record into `out`."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    stage1_dir = out.parent / "stage1"

    retrieval = MuxBertForMaskedLM(MuxBertConfig(**CONFIG, task_loss_coeff=0.0, retrieval_loss_coeff=1.0))
    retrieval_loss = train(
        retrieval, STEPS, lambda: {"input_ids": torch.randint(10, 120, (BATCH, SEQ_LEN), generator=generator)}
    )
    retrieval.save_pretrained(stage1_dir)

    model = MuxBertForSequenceClassification.from_pretrained(
        stage1_dir, num_labels=2, task_loss_coeff=1.0, retrieval_loss_coeff=0.0
    )

    def labelled():
        ids, labels = synthetic_batch(generator, BATCH)
        return {"input_ids": ids, "labels": labels}

    task_loss = train(model, STEPS, labelled)
    model.eval()
    ids, labels = synthetic_batch(torch.Generator().manual_seed(1), 256)
    with torch.no_grad():
        multiplexed = float((model(input_ids=ids).logits.argmax(-1) == labels).float().mean())
        ensembled = float((model.forward_ensemble(input_ids=ids).argmax(-1) == labels).float().mean())

    vanilla = MuxBertForSequenceClassification(MuxBertConfig(**{**CONFIG, "num_instances": 1}, num_labels=2))
    bench_ids = ids[:64]
    throughput = ThroughputRecord(
        samples_per_second=round(samples_per_second(model, bench_ids), 1),
        baseline_samples_per_second=round(samples_per_second(vanilla, bench_ids), 1),
        device="cpu (1 thread)",
        batch_size=64,
        sequence_length=SEQ_LEN,
    )
    record = TrainingRecord(
        stages=[
            TrainingStage(
                "retrieval", STEPS, "synthetic: random token ids 10-119", {"retrieval_loss": round(retrieval_loss, 4)}
            ),
            TrainingStage(
                "finetune", STEPS, f"synthetic: is the first token id >= {THRESHOLD}", {"loss": round(task_loss, 4)}
            ),
        ],
        eval_results=[
            EvaluationResult(
                "text-classification",
                "synthetic first-token threshold",
                "accuracy",
                round(multiplexed, 4),
                dataset_id="synthetic",
                split="held-out (256)",
            ),
            EvaluationResult(
                "text-classification",
                "synthetic first-token threshold",
                "accuracy",
                round(ensembled, 4),
                dataset_id="synthetic",
                split="held-out (256)",
                ensembled=True,
            ),
        ],
        throughput=throughput,
    )
    model.save_pretrained(out)
    record.save(out)


def render(folder: Path, model_dir: Path | None = None) -> str:
    """The card of the example: the saved config and record, weights rebuilt from the config if absent."""
    if model_dir is None:
        model_dir = Path(tempfile.mkdtemp(prefix="mux-card-example-"))
        config = MuxBertConfig.from_pretrained(folder)
        MuxBertForSequenceClassification(config).save_pretrained(model_dir)
        shutil.copy(folder / "training_record.json", model_dir / "training_record.json")
    try:
        return str(render_model_card(model_dir, repo_id=REPO_ID, license="mit"))
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", action="store_true", help="only re-render README.md from the saved files")
    args = parser.parse_args(argv)
    folder = HERE / NAME
    folder.mkdir(exist_ok=True)
    if not args.render:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "model"
            build(out)
            for name in ("config.json", "training_record.json"):
                shutil.copy(out / name, folder / name)
    (folder / "README.md").write_text(render(folder), encoding="utf-8")
    print(f"Wrote {folder / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
