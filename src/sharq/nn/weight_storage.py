"""A packed weight's buffers inside a module, and the QuantizedTensor they hold (no copies).

A module stores one weight as integer buffers named `<prefix>_codes`, `<prefix>_scales`,
`<prefix>_global_scale` (int32 bits of the FP32 s_w, NVFP4 only), `<prefix>_exponents8/4` (HiF4
only), possibly with a leading expert dimension; `buffers(module, prefix, index)` picks one weight.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Format
from ..formats.quantized import QuantizedTensor

__all__ = ["buffers", "store_weight", "weight_view", "StoredWeightMixin"]

_FIELDS = ("codes", "scales", "global_scale", "exponents8", "exponents4")


def buffers(module: nn.Module, prefix: str, index: int | None = None) -> dict[str, torch.Tensor | None]:
    """{field: the module's buffer (or its `index`-th slice), None where the format has none}."""
    out = {}
    for field in _FIELDS:
        t = getattr(module, f"{prefix}_{field}", None)
        out[field] = t if t is None or index is None else t[index]
    return out


def store_weight(target: dict[str, torch.Tensor | None], qt: QuantizedTensor) -> None:
    """Copy `qt`'s storage into the buffers `target` (from `buffers`)."""
    target["codes"].copy_(qt.codes)
    target["scales"].copy_(qt.scales)
    if qt.global_scale is not None:
        target["global_scale"].copy_(qt.global_scale.reshape(()).view(torch.int32))
    if qt.exponents8 is not None:
        target["exponents8"].copy_(qt.exponents8)
        target["exponents4"].copy_(qt.exponents4)


def weight_view(
    source: dict[str, torch.Tensor | None], format: Format, shape: tuple[int, int], block: int
) -> QuantizedTensor:
    """The QuantizedTensor (N, K) the buffers `source` hold, as views."""
    gs = source["global_scale"] if format is Format.NVFP4 else None
    return QuantizedTensor(
        format=format,
        codes=source["codes"],
        scales=source["scales"],
        shape=shape,
        block=block,
        global_scale=None if gs is None else gs.view(torch.float32),
        exponents8=source["exponents8"],
        exponents4=source["exponents4"],
    )


class StoredWeightMixin:
    """What a module holding one packed weight (a `quantized_weight` property) derives from it."""

    quantized_weight: QuantizedTensor

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the layer multiplies, s_w · deq(Wq), as (N, K) in `dtype`."""
        return self.quantized_weight.dequantize().to(dtype)

    @property
    def weight_bits_per_value(self) -> float:
        """Stored bits per weight value: payload, block scales and the per-matrix scale."""
        return self.quantized_weight.bits_per_value
