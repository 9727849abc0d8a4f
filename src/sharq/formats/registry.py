"""Format dispatch: one place that maps a `Format` to its quantizer and decoder."""

from __future__ import annotations

import torch

from ..config import Format, Granularity, WeightScale
from .hif4 import decode_scales_hif4, element_values_hif4, quantize_hif4
from .mxfp4 import decode_scales_mxfp4, quantize_mxfp4
from .nvfp4 import decode_scales_nvfp4, element_values_e2m1, quantize_nvfp4
from .quantized import QuantizedTensor

__all__ = ["quantize_tensor", "decode_scales", "element_values"]


def quantize_tensor(
    x: torch.Tensor,
    format: Format | str,
    block: int,
    *,
    granularity: Granularity | str = Granularity.TENSOR,
    global_scale: torch.Tensor | None = None,
    scale_rule: WeightScale | str = WeightScale.AMAX,
) -> QuantizedTensor:
    """Quantize one tensor `x` (..., K) to `format` with `block`-value scales (see each format's module).
    Not to be confused with `sharq.quantize_`, which quantizes a model in place.

    `scale_rule` picks the block scales: "amax" (each format's fixed rule) or "mse" (a search
    among candidates by squared error, NVFP4 and MXFP4 only; HiF4 refuses it with a ValueError).

    `granularity` and `global_scale` apply to NVFP4 only (the other formats have no second level;
    passing a `global_scale` for them is an error). `x` must be a real floating-point tensor with a
    last dimension (float64 is quantized from its float32 rounding); integer, bool and complex
    tensors are refused with a `TypeError`, a scalar with a `ValueError`.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize_tensor: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"quantize_tensor: x has dtype {x.dtype}; expected a floating-point tensor")
    if x.dim() == 0:
        raise ValueError("quantize: x is a scalar; expected shape (..., K)")
    format = Format(format)
    try:
        scale_rule = WeightScale(scale_rule)
    except ValueError:
        raise ValueError(f"quantize_tensor: scale_rule={scale_rule!r} is not 'amax' or 'mse'") from None
    if format is Format.NVFP4:
        return quantize_nvfp4(x, block, granularity=granularity, global_scale=global_scale, scale_rule=scale_rule)
    if global_scale is not None:
        raise ValueError(f"{format.value} has no second-level (global) scale")
    if format is Format.MXFP4:
        return quantize_mxfp4(x, block, scale_rule=scale_rule)
    if scale_rule is not WeightScale.AMAX:
        raise ValueError(f"scale_rule={scale_rule.value!r}: {format.value} has no block-scale search (amax only)")
    if format is Format.HIF4:
        return quantize_hif4(x, block)
    raise ValueError(f"format {format.value!r} does not quantize")


def decode_scales(qt: QuantizedTensor) -> torch.Tensor:
    """FP32 block-scale values (..., nb) of `qt`."""
    return {
        Format.NVFP4: decode_scales_nvfp4,
        Format.MXFP4: decode_scales_mxfp4,
        Format.HIF4: decode_scales_hif4,
    }[qt.format](qt)


def element_values(qt: QuantizedTensor, scale_block: int | None = None) -> torch.Tensor:
    """(..., Kp) FP32 values of `qt` without its global scale."""
    if qt.format is Format.HIF4:
        return element_values_hif4(qt, scale_block)
    return element_values_e2m1(qt, scale_block)
