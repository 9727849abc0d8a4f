"""`kept_dequantized_weights(model)`: a context in which each `SharqLinear` of `model` dequantizes
its weight once and reuses it, instead of rebuilding it from the packed payload on every call.

The reference backend (the CPU's) multiplies the FP32 matrix deq(Wq) (N, K); it decodes the packed
E2M1 codes and block scales into it on every call. For a few tokens that decoding is most of the
forward: in a profile of one 4-token forward of SmolLM2-135M under sharq-nvfp4 (2 threads, load ~5)
the decoding ops took ~3.8 s of 4.7 s. Measured on 1 CPU thread at low load, 8 greedy tokens of a
chat prompt took 6.4–6.9 s without this context and 2.7–2.9 s inside it (the same tokens).

Inside the context, every `SharqLinear.quantized_weight` is a `KeptQuantizedTensor`: the same packed
buffers, whose `dequantize` remembers its result per (apply_global_scale, scale_block). The values
are the very tensors `QuantizedTensor.dequantize` returns, so every output is bit for bit what it is
outside the context. The price is memory: 4 bytes a weight (FP32) per view used, held until the
context exits. The remembered tensors are shared: callers must not modify them in place (no sharq
code does). Triton kernels read the packed buffers as before and never use the kept values.
`SharqLMHead` and `SharqExperts` are not covered (they dequantize as usual).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from ..formats.quantized import QuantizedTensor

__all__ = ["KeptQuantizedTensor", "kept_dequantized_weights"]


@dataclasses.dataclass(frozen=True, eq=False)
class KeptQuantizedTensor(QuantizedTensor):
    """A `QuantizedTensor` whose `dequantize` results are remembered (per keyword combination).
    `to()` / `dataclasses.replace` give a fresh, empty memory."""

    kept: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def dequantize(self, *, apply_global_scale: bool = True, scale_block: int | None = None) -> torch.Tensor:
        key = (apply_global_scale, scale_block)
        if key not in self.kept:
            self.kept[key] = super().dequantize(apply_global_scale=apply_global_scale, scale_block=scale_block)
        return self.kept[key]

    @classmethod
    def of(cls, weight: QuantizedTensor) -> KeptQuantizedTensor:
        fields = {f.name: getattr(weight, f.name) for f in dataclasses.fields(QuantizedTensor)}
        return cls(**fields)


@contextlib.contextmanager
def kept_dequantized_weights(model: nn.Module) -> Iterator[int]:
    """Within the block, every `SharqLinear` of `model` decodes its weight at most once per view;
    yields how many layers take part. On exit the layers read their packed buffers again and the
    FP32 copies are dropped. Re-entering for a layer already inside is refused (ValueError)."""
    from ..nn.linear import SharqLinear

    layers = [m for m in model.modules() if isinstance(m, SharqLinear)]
    if any(m.__dict__.get("_kept_weight") is not None for m in layers):
        raise ValueError("kept_dequantized_weights: the model is already inside such a context")
    try:
        for layer in layers:
            layer._kept_weight = KeptQuantizedTensor.of(layer.quantized_weight)
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("_kept_weight", None)
