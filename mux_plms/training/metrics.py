"""Evaluation of a pre-training stage: loss components, token-retrieval accuracy (overall and per instance
slot) and perplexity, MLM accuracy and perplexity, replaced-token-detection accuracy, summed per rank and
reduced across ranks, so the numbers do not depend on the number of processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.collators import MuxCollator
from .pretrain_data import IndexedBlocks
from .stages import Stage, loss_names

# Loss components a stage output may carry (every registered stage's loss fields, `Stage.loss_fields`); each
# is averaged over the evaluation batches that had it.
LOSS_NAMES = loss_names()


@dataclass
class EvalStats:
    """Sums over an evaluation pass (per rank), reduced across ranks into metrics."""

    num_instances: int
    mlm_logits: bool = False
    values: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value) -> None:
        self.values[name] = self.values.get(name, 0.0) + float(value)

    def update(self, batch: dict, output) -> None:
        n = self.num_instances
        self.add("batches", 1)
        if getattr(output, "loss", None) is not None:
            self.add("loss", output.loss.detach().float())
        for name in LOSS_NAMES:
            value = getattr(output, name, None)
            if value is not None:
                self.add(name, value.detach().float())
                self.add(f"{name}_batches", 1)
        retrieval_logits = getattr(output, "retrieval_logits", None)
        if retrieval_logits is not None:
            ids = batch["input_ids"]
            rows, length = ids.shape
            asked = batch["retrieval_instance_ids"].to(ids.device)
            groups = ids.view(rows // n, n, length)
            masks = batch["attention_mask"].view(rows // n, n, length)
            targets = groups.gather(1, asked[:, None, :]).squeeze(1)
            real = masks.gather(1, asked[:, None, :]).squeeze(1).bool()
            logits = retrieval_logits.float()
            predictions = logits.argmax(-1)
            correct = (predictions == targets) & real
            nll = F.cross_entropy(logits[real], targets[real], reduction="sum") if real.any() else 0.0
            self.add("retrieval_correct", correct.sum())
            self.add("retrieval_total", real.sum())
            self.add("retrieval_nll", nll)
            for slot in range(n):
                in_slot = real & (asked == slot)
                self.add(f"retrieval_correct_{slot}", (correct & in_slot).sum())
                self.add(f"retrieval_total_{slot}", in_slot.sum())
        labels = batch.get("labels")
        logits = getattr(output, "logits", None)
        if self.mlm_logits and labels is not None and logits is not None:  # MLM logits at labelled positions
            targets = labels[labels != -100].to(logits.device)
            if targets.numel():
                logits = logits.float()
                self.add("mlm_correct", (logits.argmax(-1) == targets).sum())
                self.add("mlm_total", targets.numel())
                self.add("mlm_nll", F.cross_entropy(logits, targets, reduction="sum"))
        rtd_accuracy = getattr(output, "rtd_accuracy", None)
        if rtd_accuracy is not None:
            tokens = batch["attention_mask"].sum()
            self.add("rtd_correct", rtd_accuracy.detach().float() * tokens)
            self.add("rtd_total", tokens)

    def reduce(self, accelerator) -> dict[str, float]:
        """Sum every rank's totals (ranks may hold different keys, e.g. one saw no real token) into metrics."""
        totals = dict(self.values)
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            totals = {}
            for values in gather_object([self.values]):
                for name, value in values.items():
                    totals[name] = totals.get(name, 0.0) + value
        return self.metrics(totals)

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        batches = max(totals.get("batches", 0.0), 1.0)
        if "loss" in totals:
            out["loss"] = totals["loss"] / batches
        for name in LOSS_NAMES:
            if name in totals:
                out[name] = totals[name] / max(totals[f"{name}_batches"], 1.0)
        if totals.get("retrieval_total"):
            out["retrieval_accuracy"] = totals["retrieval_correct"] / totals["retrieval_total"]
            out["retrieval_perplexity"] = math.exp(min(totals["retrieval_nll"] / totals["retrieval_total"], 50.0))
            for slot in range(self.num_instances):
                total = totals.get(f"retrieval_total_{slot}", 0.0)
                if total:
                    out[f"retrieval_accuracy_slot{slot}"] = totals[f"retrieval_correct_{slot}"] / total
            out["retrieval_tokens"] = totals["retrieval_total"]
        if totals.get("mlm_total"):
            out["mlm_accuracy"] = totals["mlm_correct"] / totals["mlm_total"]
            out["mlm_perplexity"] = math.exp(min(totals["mlm_nll"] / totals["mlm_total"], 50.0))
            out["mlm_tokens"] = totals["mlm_total"]
        if totals.get("rtd_total"):
            out["rtd_accuracy"] = totals["rtd_correct"] / totals["rtd_total"]
        return out


@torch.no_grad()
def evaluate(accelerator, model, stage: Stage, blocks, collator: MuxCollator, rows: int) -> dict[str, float]:
    """Metrics on the validation blocks. Each rank evaluates its own slice (rows ``rank::world``, no
    duplicates) and the sums are reduced, so the numbers do not depend on the number of processes."""
    was_training = model.training
    model.eval()
    n = collator.num_instances
    world, rank = accelerator.num_processes, accelerator.process_index
    # Every rank runs the same number of batches (the wrapped model may synchronise in forward: FSDP,
    # DeepSpeed): the shorter shards are completed with empty rows, which count nowhere.
    per_rank = math.ceil(len(blocks) / world)
    shard = IndexedBlocks(blocks, range(rank, len(blocks), world), length=per_rank, pad_token_id=collator.pad_token_id)
    loader = DataLoader(shard, batch_size=rows * n, shuffle=False, collate_fn=collator)
    stats = EvalStats(n, mlm_logits=stage.mlm_logits)
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            output = stage.forward(model, batch)
        stats.update(batch, output)
    if was_training:
        model.train()
    return stats.reduce(accelerator)


__all__ = ["LOSS_NAMES", "EvalStats", "evaluate"]
