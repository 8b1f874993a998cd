"""Backbone sizes and the benchmark case description shared by every part of :mod:`mux_plms.bench`."""

from __future__ import annotations

from dataclasses import asdict, dataclass

HEADS = ("sequence", "token")
VOCAB_SIZE = 30522  # bert-base-uncased
NUM_LABELS = {"sequence": 2, "token": 9}  # binary sentiment; CoNLL-2003 BIO tags


@dataclass(frozen=True)
class BackboneSize:
    """BERT shape: layers, hidden width, attention heads, feed-forward width."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int


# tiny = Google's BERT-Tiny (2/128); small = the MUX-PLMs paper's small (4/512); base and large = BERT's.
SIZES: dict[str, BackboneSize] = {
    "tiny": BackboneSize("tiny", 2, 128, 2, 512),
    "small": BackboneSize("small", 4, 512, 8, 2048),
    "base": BackboneSize("base", 12, 768, 12, 3072),
    "large": BackboneSize("large", 24, 1024, 16, 4096),
}


def get_size(name: str) -> BackboneSize:
    try:
        return SIZES[name]
    except KeyError:
        raise ValueError(f"size must be one of {', '.join(SIZES)}; got {name!r}") from None


@dataclass(frozen=True)
class BenchCase:
    """One measured configuration: a MUX model and its vanilla twin with the same backbone."""

    size: str
    head: str
    seq_length: int
    num_instances: int
    muxing_variant: str
    demuxing_variant: str

    def __post_init__(self):
        get_size(self.size)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}; got {self.head!r}")
        if self.seq_length < 2:
            raise ValueError(f"seq_length must be >= 2, got {self.seq_length}")
        if self.num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {self.num_instances}")

    @property
    def backbone(self) -> BackboneSize:
        return get_size(self.size)

    @property
    def variant(self) -> str:
        return f"{self.muxing_variant}+{self.demuxing_variant}"

    @property
    def baseline_key(self) -> tuple[str, str, int]:
        """Cases sharing this key share one vanilla model (its cost does not depend on N or the variant)."""
        return (self.size, self.head, self.seq_length)

    def label(self) -> str:
        return f"{self.size}/{self.head}/L{self.seq_length}/{self.variant}/N{self.num_instances}"

    def slug(self) -> str:
        return f"{self.size}_{self.head}_L{self.seq_length}_{self.muxing_variant}_{self.demuxing_variant}_N{self.num_instances}"

    def to_dict(self) -> dict:
        return asdict(self)
