"""The SharQ decomposition of one activation tensor (SPEC §5) and every ablation of SPEC §8.

xs = x / s_x                                   s_x: NVFP4 second-level scale (1 for MXFP4/HiF4)
b  = xs ⊙ mask(xs)                             sparse backbone (dense `xs` when mask is None)
B  = Q(b)          blocks of `backbone_block` logical positions (amax over the kept values)
r  = xs − deq(B)   residual="quantized" (SharQ)   |   xs − b   residual="naive"
r  = r ⊙ mask(r)   only with residual_mask (sparse-sparse)
R  = Q(r)          blocks of `residual_block`
x̂  = s_x · (deq(B) + deq(R))
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from ..config import Granularity, Operand, Residual, SharqConfig
from ..formats.nvfp4 import nvfp4_global_scale
from ..formats.quantized import QuantizedTensor
from ..formats.registry import quantize_tensor
from .masks import apply_mask

__all__ = [
    "PreparedActivation",
    "Decomposition",
    "prepare_activation",
    "decompose",
    "dequantize_prepared",
    "check_activation",
    "select_rows",
]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class PreparedActivation(NamedTuple):
    """The quantized terms of one activation, as the linear layer consumes them.

    backbone:      first term B (packed; its `global_scale` is s_x for NVFP4).
    residual:      second term R, or None (plain formats, sparse-only).
    global_scale:  s_x, FP32, shape () ("tensor") or (..., 1) ("token"); ones for MXFP4/HiF4.
    """

    backbone: QuantizedTensor
    residual: QuantizedTensor | None
    global_scale: torch.Tensor
    # FP32 (M, K) operand of the linear in the scaled domain, when set: bf16(deq(B) + deq(R)), for
    # operand="bf16-sum" and for "auto" on calls of more than AUTO_EXACT_MAX_ROWS rows (SPEC §7).
    # The linear multiplies it instead of dequantizing the codes.
    dense: torch.Tensor | None = None
    # The Triton kernels' operands, written by the Triton preparation, in the layout `layout` names
    # (kernels/plan.py): "rows" — bf16 (M, K) deq(B) [, deq(R)] (each exact in bf16) or their bf16
    # sum; "gemv" — per term int8 2·E2M1 codes (M, Kg) and FP32 scales per 16 (kernels/gemv_nvfp4.py).
    # Written by kernels/prepare_split.py (the operand alone, "rows"), the backbone's and residual's
    # codes and scales are not written: they are empty (M, 0) tensors.
    terms: tuple[torch.Tensor, ...] | None = None
    layout: str | None = None


class Decomposition(NamedTuple):
    """Dequantized terms in the unscaled domain of `x`: x̂ ≈ backbone + residual (FP32, x's shape)."""

    backbone: torch.Tensor
    residual: torch.Tensor
    global_scale: torch.Tensor


def check_activation(x: torch.Tensor, what: str = "activation") -> None:
    """Raise a clear error for input the numerics are not defined on."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{what} has dtype {x.dtype}; expected float32, bfloat16 or float16")
    if x.dim() == 0:
        raise ValueError(f"{what} is a scalar; expected shape (..., K)")


def _quantize_scaled(xs: torch.Tensor, config: SharqConfig, block: int, s: torch.Tensor | None) -> QuantizedTensor:
    """Quantize scaled-domain FP32 `xs`; the result carries `s` as its global scale (NVFP4)."""
    if s is None:
        return quantize_tensor(xs, config.format, block)
    qt = quantize_tensor(xs, config.format, block, global_scale=torch.ones((), dtype=torch.float32, device=xs.device))
    return dataclasses.replace(qt, global_scale=s)


def prepare_activation(
    x: torch.Tensor,
    config: SharqConfig,
    *,
    global_scale: torch.Tensor | None = None,
    check_finite: bool = False,
) -> PreparedActivation:
    """Split and quantize `x` (..., K) as `config` says (reference numerics, FP32 math).

    `global_scale`: a precomputed FP32 s_x used instead of the one derived from `x` — shape () for
    "tensor" granularity, (..., 1) for "token". It is how a rank holding a K slice of the activation
    (tensor parallelism, SPEC §3) quantizes with the scale of the whole row: with the scale of the
    full tensor, the preparation of a block-aligned K slice is that slice of the full preparation.
    Formats without a second-level scale (MXFP4, HiF4) refuse it. `check_finite`: raise on NaN/Inf
    input (`RuntimeOptions.check_finite`) instead of NaN outputs.
    """
    check_activation(x)
    if not config.quantizes:
        raise ValueError("prepare_activation: the config quantizes nothing (format='none')")
    if check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"activation of shape {tuple(x.shape)} contains NaN or Inf (check_finite=True)")
    if global_scale is not None:
        s = _checked_global_scale(global_scale, x, config)
    else:
        s = nvfp4_global_scale(x, config.granularity) if config.has_global_scale else None
    xs = x.float() / s if s is not None else x.float()
    first = apply_mask(xs, config.mask_spec) if config.mask is not None else xs
    backbone = _quantize_scaled(first, config, config.backbone_block, s)
    residual = None
    if config.residual is not Residual.NONE:
        if config.residual is Residual.QUANTIZED:
            r = xs - backbone.dequantize(apply_global_scale=False)
        else:  # Residual.NAIVE: relative to the unquantized backbone
            r = xs - first
        if config.residual_mask is not None:
            r = apply_mask(r, config.residual_mask_spec)
        residual = _quantize_scaled(r, config, config.residual_block, s)
    if s is None:
        s = torch.ones((), dtype=torch.float32, device=x.device)
    dense = None
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if config.operand.for_rows(rows) is Operand.BF16_SUM:  # the linear multiplies bf16(deq(B) + deq(R))
        total = backbone.dequantize(apply_global_scale=False)
        if residual is not None:
            total = total + residual.dequantize(apply_global_scale=False)
        dense = total.to(torch.bfloat16).float()
    return PreparedActivation(backbone, residual, s, dense)


def _checked_global_scale(global_scale: torch.Tensor, x: torch.Tensor, config: SharqConfig) -> torch.Tensor:
    """`global_scale` as FP32 after checking it fits `x` (..., K) and `config`'s granularity."""
    if not config.has_global_scale:
        raise ValueError(f"global_scale given, but format {config.format.value} has no second-level scale")
    if not isinstance(global_scale, torch.Tensor) or not global_scale.is_floating_point():
        raise TypeError(f"global_scale must be a floating-point tensor, got {global_scale!r:.80}")
    want = () if config.granularity is Granularity.TENSOR else (*x.shape[:-1], 1)
    if tuple(global_scale.shape) != want:
        raise ValueError(
            f"global_scale has shape {tuple(global_scale.shape)}; granularity "
            f"{config.granularity.value!r} of an activation {tuple(x.shape)} needs {want}"
        )
    if global_scale.device != x.device:
        raise ValueError(f"global_scale is on {global_scale.device} but the activation is on {x.device}")
    return global_scale.float()


def decompose(x: torch.Tensor, config: SharqConfig, *, check_finite: bool = False) -> Decomposition:
    """SharQ-decompose `x` (..., K): dequantized backbone and residual in x's unscaled domain.

    For `format='none'` (bf16) the backbone is x itself (as FP32) and the residual zero.
    """
    check_activation(x)
    if not config.quantizes:
        ones = torch.ones((), dtype=torch.float32, device=x.device)
        return Decomposition(x.float(), torch.zeros_like(x, dtype=torch.float32), ones)
    return dequantize_prepared(prepare_activation(x, config, check_finite=check_finite))


def dequantize_prepared(prepared: PreparedActivation) -> Decomposition:
    """The `Decomposition` (dequantized terms in the unscaled domain) of a prepared activation."""
    backbone = prepared.backbone.dequantize()
    residual = prepared.residual.dequantize() if prepared.residual is not None else torch.zeros_like(backbone)
    return Decomposition(backbone, residual, prepared.global_scale)


def _select_rows_qt(qt: QuantizedTensor, rows: torch.Tensor) -> QuantizedTensor:
    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or t.dim() == 0 else t[rows]

    return dataclasses.replace(
        qt,
        codes=qt.codes[rows],
        scales=qt.scales[rows],
        shape=(int(rows.numel()), qt.shape[-1]),
        global_scale=pick(qt.global_scale),
        exponents8=pick(qt.exponents8),
        exponents4=pick(qt.exponents4),
    )


def select_rows(prepared: PreparedActivation, rows: torch.Tensor) -> PreparedActivation:
    """The preparation of rows `rows` (1-D int64 indices) of a 2-D (M, K) prepared activation.

    Exact for "token" granularity (rows are independent); for "tensor" the rows keep the scale of
    the whole tensor they were prepared with (how MoE experts read a layer's shared preparation).
    """
    if len(prepared.backbone.shape) != 2:
        raise ValueError(f"select_rows needs a 2-D (M, K) preparation, got shape {prepared.backbone.shape}")
    gs = prepared.global_scale
    return PreparedActivation(
        _select_rows_qt(prepared.backbone, rows),
        None if prepared.residual is None else _select_rows_qt(prepared.residual, rows),
        gs if gs.dim() == 0 else gs[rows],
        None if prepared.dense is None else prepared.dense[rows],
        None if prepared.terms is None else tuple(t[rows] for t in prepared.terms),
        prepared.layout,
    )
