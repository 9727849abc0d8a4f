"""Functional API: weight quantization and the SharQ linear (SPEC §6–7), dispatched by backend.

Only the reference backend exists in this version; asking for another one is an error, never a
silent fallback.
"""

from __future__ import annotations

import torch

from .config import Backend, Format, SharqConfig
from .formats.quantized import QuantizedTensor
from .formats.registry import quantize
from .sparse.decompose import PreparedActivation, prepare_activation

__all__ = ["resolve_backend", "quantize_weight", "weight_scale_views", "linear_from_prepared", "sharq_linear"]


def resolve_backend(config: SharqConfig, device: torch.device) -> Backend:
    """The backend that runs `config` on `device`. AUTO picks the reference in this version."""
    if config.backend is Backend.TRITON:
        raise NotImplementedError(
            "backend='triton' is not available in this version of sharq; use backend='reference' or 'auto'"
        )
    return Backend.REFERENCE


def quantize_weight(weight: torch.Tensor, config: SharqConfig) -> QuantizedTensor:
    """Quantize a weight (N, K) once, without calibration data (SPEC §6).

    NVFP4: s_w = max(amax(W) / 2688, 1e-9) per matrix, then `config.weight_block` E4M3 scales.
    MXFP4 / HiF4: their block format, no second level. Non-finite weights are rejected.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D tensor (N, K), got {getattr(weight, 'shape', type(weight))}")
    if not weight.is_floating_point():
        raise TypeError(f"weight has dtype {weight.dtype}; expected a floating-point tensor")
    if not config.quantizes:
        raise ValueError("quantize_weight: the config quantizes nothing (format='none')")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight contains NaN or Inf; refusing to quantize it")
    return quantize(weight, config.format, config.weight_block)  # NVFP4: one s_w ("tensor" granularity)


def weight_scale_views(weight: QuantizedTensor) -> tuple[int | None, int | None]:
    """(sparse-path, dense-path) scale-view block sizes of a weight.

    NVFP4-32 weights: the sparse path reads the stored per-32 scales, the dense path the per-16
    view (every per-32 scale twice), the layouts the two Blackwell GEMMs take. Other weights:
    both paths read the stored scales (None).
    """
    if weight.format is Format.NVFP4 and weight.block == 32:
        return 32, 16
    return None, None


def linear_from_prepared(
    prepared: PreparedActivation,
    weight: QuantizedTensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    one_gemm: bool = False,
) -> torch.Tensor:
    """y = s_x · s_w · (deq(B) · deq(W)ᵀ + deq(R) · deq(W)ᵀ) + bias, FP32 accumulation.

    prepared: activation terms of shape (M, K) (scaled domain + s_x of shape () or (M, 1)).
    weight:   quantized (N, K). Returns (M, N) in `out_dtype`.
    one_gemm=True computes (deq(B) + deq(R)) · deq(W)ᵀ — SPEC §7's equal form (up to FP32
    summation order), the Hopper fast path.
    """
    sparse_view, dense_view = weight_scale_views(weight)
    s_w = weight.global_scale if weight.global_scale is not None else torch.ones((), device=weight.device)
    b = prepared.backbone.dequantize(apply_global_scale=False)  # (M, K) fp32
    w_sparse = weight.dequantize(apply_global_scale=False, scale_block=sparse_view)  # (N, K) fp32
    if prepared.residual is None:
        acc = b @ w_sparse.T
    else:
        r = prepared.residual.dequantize(apply_global_scale=False)  # (M, K) fp32
        if one_gemm:
            acc = (b + r) @ w_sparse.T
        else:
            w_dense = weight.dequantize(apply_global_scale=False, scale_block=dense_view)
            acc = b @ w_sparse.T + r @ w_dense.T
    y = (prepared.global_scale * s_w) * acc  # (M, N) fp32
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def sharq_linear(
    x: torch.Tensor,
    weight: QuantizedTensor,
    bias: torch.Tensor | None,
    config: SharqConfig,
    *,
    one_gemm: bool = False,
    prepared: PreparedActivation | None = None,
) -> torch.Tensor:
    """SharQ linear of `x` (..., K) with a quantized weight (N, K): returns (..., N) in x's dtype.

    `prepared`: x's preparation as (M, K) rows when it was already computed (shared by q/k/v or
    gate/up, SPEC §9); it must be `prepare_activation(x.reshape(-1, K), config)`.
    """
    resolve_backend(config, x.device)
    k = x.shape[-1]
    if prepared is None:
        prepared = prepare_activation(x.reshape(-1, k), config)  # (M, K) terms
    y = linear_from_prepared(prepared, weight, bias, x.dtype, one_gemm=one_gemm)
    return y.reshape(*x.shape[:-1], y.shape[-1])
