"""Analytical cost model: multiply-accumulates (MACs) of one forward pass, split into what is paid once
per mixture (the backbone) and what is paid once per instance (embeddings, multiplexing work that grows
with N, the demultiplexer, the task head).

Only matrix products are counted (linear layers and the two attention products); element-wise work
(embeddings, LayerNorm, GELU, softmax, the Hadamard mixing) is ignored, so the bound is an upper bound
on what a real implementation can reach. The speed-up bound of multiplexing N instances is

    bound = N * vanilla_macs_per_instance / mux_macs_per_mixture.
"""

from __future__ import annotations

from types import SimpleNamespace

from .sizes import NUM_LABELS, BackboneSize, BenchCase


def layer_macs(size: BackboneSize, tokens: int, attended: int) -> int:
    """MACs of one Transformer layer over `tokens` tokens, each attending to `attended` tokens:
    Q, K, V and output projections (4 H^2), the feed-forward block (2 H I), scores and weighted sum (2 S H)."""
    h, i = size.hidden, size.intermediate
    return tokens * (4 * h * h + 2 * h * i + 2 * attended * h)


def prefix_length(case: BenchCase) -> int:
    """Positions the demultiplexer of `case` prepends (the `prefix` demultiplexer adds N, the others none):
    the demultiplexer's own formula."""
    from ..models.demultiplexing import prefix_length as demux_prefix_length

    return demux_prefix_length(
        SimpleNamespace(num_instances=case.num_instances, demuxing_variant=case.demuxing_variant)
    )


def head_macs(case: BenchCase) -> int:
    """MACs of the task head for one instance (the same on both sides)."""
    h, labels = case.backbone.hidden, NUM_LABELS[case.head]
    if case.head == "sequence":
        return h * h + h * labels  # pooler dense + classifier
    return case.seq_length * h * labels


def vanilla_costs(case: BenchCase) -> dict[str, int]:
    """MACs of the vanilla model for ONE instance."""
    size = case.backbone
    backbone = size.layers * layer_macs(size, case.seq_length, case.seq_length)
    head = head_macs(case)
    return {"backbone": backbone, "head": head, "total": backbone + head}


def mux_costs(case: BenchCase, num_hidden_demux_layers: int = 2) -> dict[str, int]:
    """MACs of the MUX model for ONE mixture of N instances."""
    size, n = case.backbone, case.num_instances
    h = size.hidden
    length = case.seq_length + prefix_length(case)
    backbone = size.layers * layer_macs(size, length, length)
    if case.muxing_variant == "contextual":
        # A layer within each instance (N layer passes over the sequence), then a layer across the N
        # instances at every position: its projections cost N token passes per position, attention spans N.
        multiplexer = n * layer_macs(size, length, length) + length * layer_macs(size, n, n)
    elif case.muxing_variant == "random_ortho":
        multiplexer = n * length * h * h
    else:  # gaussian / binary Hadamard: element-wise
        multiplexer = 0
    demuxed_positions = 1 if case.head == "sequence" else case.seq_length
    if case.demuxing_variant == "mlp":
        demultiplexer = num_hidden_demux_layers * n * demuxed_positions * h * h
    else:
        # rsa / prefix: W_h h_j once per mixture position, W_k key_i once per instance, then the
        # remaining demux layers for every instance and position.
        demultiplexer = demuxed_positions * h * h + n * h * h
        demultiplexer += (num_hidden_demux_layers - 1) * n * demuxed_positions * h * h
    heads = n * head_macs(case)
    total = backbone + multiplexer + demultiplexer + heads
    return {
        "backbone": backbone,
        "multiplexer": multiplexer,
        "demultiplexer": demultiplexer,
        "head": heads,
        "total": total,
    }


def analytical_bound(case: BenchCase, num_hidden_demux_layers: int = 2) -> float:
    """Upper bound of the throughput speed-up of `case` over the vanilla model (MAC count ratio)."""
    vanilla = vanilla_costs(case)["total"]
    mux = mux_costs(case, num_hidden_demux_layers)["total"]
    return case.num_instances * vanilla / mux


def layer_pass_bound(layers: int, num_instances: int, muxing_variant: str) -> float:
    """The back-of-the-envelope bound in layer passes: ``N`` for the Hadamard multiplexers, and
    ``L N / (L + 2N)`` for `contextual` (its two extra layers cost about 2N layer passes)."""
    if muxing_variant == "contextual":
        return layers * num_instances / (layers + 2 * num_instances)
    return float(num_instances)
