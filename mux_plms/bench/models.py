"""Build the two sides of a benchmark case (the MUX model and the vanilla transformers model with the
identical backbone), their inputs, and a forward callable with the run's optimisations applied."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .cost_model import prefix_length
from .sizes import NUM_LABELS, VOCAB_SIZE, BenchCase

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZATIONS = ("int8",)
QUANTIZE_SCOPES = ("backbone", "all")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
SIDES = ("mux", "vanilla")


@dataclass(frozen=True)
class RunSettings:
    """How every case of a run is measured.

    Args:
        rows: backbone rows per forward, R. The vanilla batch is R instances, the MUX batch R*N instances.
        device: ``cpu`` or ``cuda``.
        dtype: ``fp32``, ``bf16`` or ``fp16``: the weights are cast to it, or, with `autocast`, the
            forward runs under ``torch.autocast`` with fp32 weights.
        compile: wrap both models in ``torch.compile``.
        quantize: ``int8``: dynamic int8 quantization of every ``nn.Linear`` of the backbone (the encoder
            and, for the contextual multiplexer, its two Transformer layers) on both sides (CPU, fp32).
        quantize_scope: ``backbone`` (default) or ``all``: every ``nn.Linear`` of both models, the
            demultiplexer and the task heads included.
        attn_implementation: attention kernel of both sides (``sdpa`` or ``eager``).
        seed: seed of the weights and of the random input tokens.
    """

    rows: int = 8
    device: str = "cpu"
    dtype: str = "fp32"
    autocast: bool = False
    compile: bool = False
    quantize: str | None = None
    quantize_scope: str = "backbone"
    attn_implementation: str = "sdpa"
    seed: int = 0
    num_hidden_demux_layers: int = 2

    def __post_init__(self):
        if self.rows < 1:
            raise ValueError(f"rows must be >= 1, got {self.rows}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.autocast and self.dtype == "fp32":
            raise ValueError("autocast needs dtype bf16 or fp16 (fp32 autocast is a no-op)")
        if self.quantize is not None:
            if self.quantize not in QUANTIZATIONS:
                raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)} or None; got {self.quantize!r}")
            if self.device != "cpu":
                raise ValueError("quantize int8 (dynamic quantization) runs on the CPU only; use --device cpu")
            if self.dtype != "fp32":
                raise ValueError("quantize int8 needs fp32 weights: drop --dtype or --quantize")
        if self.quantize_scope not in QUANTIZE_SCOPES:
            raise ValueError(f"quantize_scope must be one of {', '.join(QUANTIZE_SCOPES)}; got {self.quantize_scope!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}; got {self.attn_implementation!r}"
            )

    @property
    def optimized(self) -> bool:
        """Whether an optimisation (compile, lower precision, quantization) is switched on."""
        return self.compile or self.dtype != "fp32" or self.quantize is not None

    def reference(self) -> RunSettings:
        """The same run without optimisations (fp32 eager): the reference of the composability study."""
        return replace(self, dtype="fp32", autocast=False, compile=False, quantize=None, quantize_scope="backbone")

    def to_dict(self) -> dict:
        return asdict(self)


def _bert_kwargs(case: BenchCase, positions: int) -> dict:
    size = case.backbone
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=size.intermediate,
        # The prefix demultiplexer needs N more positions; the table size does not change the compute.
        max_position_embeddings=max(512, positions),
        num_labels=NUM_LABELS[case.head],
    )


def build_model(case: BenchCase, side: str, settings: RunSettings, mux_module=None) -> tuple[nn.Module, int]:
    """The model of one side of `case`, in eval mode on the run's device, optimisations applied, and
    its number of parameters (counted before quantization). `mux_module` (default: ``mux_plms``)
    provides ``MuxBertConfig`` and the MUX task classes, e.g. a patched copy of ``mux_plms.models``."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")
    torch.manual_seed(settings.seed)
    if side == "vanilla":
        from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

        cls = BertForSequenceClassification if case.head == "sequence" else BertForTokenClassification
        config = BertConfig(**_bert_kwargs(case, case.seq_length))
    else:
        if mux_module is None:
            import mux_plms as mux_module

        head_class = "MuxBertForSequenceClassification" if case.head == "sequence" else "MuxBertForTokenClassification"
        cls = getattr(mux_module, head_class)
        config = mux_module.MuxBertConfig(
            **_bert_kwargs(case, case.seq_length + prefix_length(case)),
            num_instances=case.num_instances,
            muxing_variant=case.muxing_variant,
            demuxing_variant=case.demuxing_variant,
            num_hidden_demux_layers=settings.num_hidden_demux_layers,
        )
    model = cls._from_config(config, attn_implementation=settings.attn_implementation)
    model.eval().to(settings.device)
    num_parameters = sum(p.numel() for p in model.parameters())
    return optimize(model, settings), num_parameters


def backbone_modules(model: nn.Module) -> list[nn.Module]:
    """The Transformer layers of a model: its encoder and, for the contextual multiplexer, its two layers."""
    modules = [model.bert.encoder]
    multiplexer = getattr(model.bert, "multiplexer", None)
    if multiplexer is not None and any(isinstance(m, nn.Linear) for m in multiplexer.modules()):
        modules.append(multiplexer)
    return modules


def optimize(model: nn.Module, settings: RunSettings) -> nn.Module:
    """Apply the run's dtype, quantization and compilation (in that order)."""
    if settings.dtype != "fp32" and not settings.autocast:
        model.to(DTYPES[settings.dtype])
    if settings.quantize == "int8":
        from torch.ao.quantization import quantize_dynamic

        modules = [model] if settings.quantize_scope == "all" else backbone_modules(model)
        for module in modules:
            quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    if settings.compile:
        model = torch.compile(model)
    return model


def make_inputs(case: BenchCase, side: str, settings: RunSettings) -> dict[str, torch.Tensor]:
    """Random full-length inputs: R instances for the vanilla side, R*N for the MUX side."""
    instances = settings.rows * (case.num_instances if side == "mux" else 1)
    generator = torch.Generator().manual_seed(settings.seed)
    input_ids = torch.randint(1000, VOCAB_SIZE, (instances, case.seq_length), generator=generator)
    input_ids[:, 0] = 101  # [CLS]
    input_ids[:, -1] = 102  # [SEP]
    attention_mask = torch.ones_like(input_ids)
    return {"input_ids": input_ids.to(settings.device), "attention_mask": attention_mask.to(settings.device)}


def make_forward(model: nn.Module, inputs: dict[str, torch.Tensor], settings: RunSettings) -> Callable[[], None]:
    """A no-argument callable running one inference forward (eval, ``inference_mode``, autocast if asked)."""

    def forward() -> None:
        autocast = (
            torch.autocast(settings.device, dtype=DTYPES[settings.dtype])
            if settings.autocast
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            model(**inputs)

    return forward


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def instances_per_forward(case: BenchCase, side: str, settings: RunSettings) -> int:
    return settings.rows * (case.num_instances if side == "mux" else 1)


def model_bytes(model: nn.Module) -> int:
    """Bytes of the weights and buffers (quantized packed weights counted through the state dict)."""
    model = getattr(model, "_orig_mod", model)
    total = 0
    seen: set[int] = set()

    def add(value) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            if id(value) in seen:
                return
            seen.add(id(value))
            total += value.numel() * value.element_size()
        elif isinstance(value, list | tuple):
            for item in value:
                add(item)

    for value in model.state_dict(keep_vars=True).values():
        add(value)
    return total
