"""The FP8 baseline serving engines call `fp8`: E4M3 weights, dynamic per-token E4M3 activations.

Not part of SharQ; it is what a user would run instead, measured on the same model and harness.

Weight (N, K), quantized once:   s_w[n] = max(amax(|W[n, :]|) / 448, 1e-12)   (FP32, per output channel)
                                 W8 = E4M3(W / s_w)                             (round to nearest even)
Activation (M, K), every call:   s_x[m] = max(amax(|x[m, :]|) / 448, 1e-12)   (FP32, per token)
                                 x8 = E4M3(clamp(x / s_x, ±448))
Output:                          y = (x8 · W8ᵀ) · s_x · s_wᵀ + bias            (FP32 accumulation, bf16 out)

The product runs in `torch._scaled_mm` with row-wise scales (scale_a (M, 1), scale_b (1, N)). On CUDA
the per-token quantization is one fused kernel (`torch.compile` of `quantize_rows_e4m3`, compiled on
first use; eager torch ops where inductor is unavailable, which `fused_quantization()` reports).
"""

from __future__ import annotations

import functools
import logging

import torch

__all__ = ["E4M3_MAX", "quantize_weight_e4m3", "quantize_rows_e4m3", "fp8_linear", "fused_quantization"]

E4M3_MAX = 448.0
_MIN_SCALE = 1e-12
_log = logging.getLogger(__name__)


def quantize_weight_e4m3(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W8, s_w): the E4M3 weight (N, K) float8_e4m3fn and its per-channel scales (1, N) float32."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"fp8 weight must be a 2-D tensor (N, K), got {getattr(weight, 'shape', type(weight))}")
    if not weight.is_floating_point():
        raise TypeError(f"fp8 weight has dtype {weight.dtype}; expected a floating-point tensor")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("fp8 weight contains NaN or Inf; refusing to quantize it")
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp_min(_MIN_SCALE)  # (N, 1)
    w8 = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)  # (N, K)
    return w8, scale.reshape(1, -1).contiguous()


def quantize_rows_e4m3(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x8, s_x): per-row E4M3 quantization of x (M, K) → float8_e4m3fn (M, K), float32 (M, 1).

    A NaN in a row makes that row's scale NaN, so its outputs are NaN (never silently finite).
    """
    xf = x.float()
    scale = (xf.abs().amax(dim=1, keepdim=True) / E4M3_MAX).clamp_min(_MIN_SCALE)  # (M, 1)
    x8 = (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)  # (M, K)
    return x8, scale


@functools.cache
def _compiled_quantizer():
    return torch.compile(quantize_rows_e4m3, dynamic=True, fullgraph=True)


_FUSED = {"state": None}  # None: not tried yet; True: compiled kernel in use; False: eager fallback


def fused_quantization() -> bool | None:
    """Whether the CUDA per-token quantization runs as one compiled kernel (None: not run yet)."""
    return _FUSED["state"]


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.device.type != "cuda" or _FUSED["state"] is False or torch.compiler.is_compiling():
        return quantize_rows_e4m3(x)
    if _FUSED["state"] is None:  # first CUDA call: compile (outside any graph capture: callers warm up)
        try:
            out = _compiled_quantizer()(x)
            _FUSED["state"] = True
            return out
        except Exception as err:  # inductor missing or failing: the eager ops compute the same values
            _log.warning("fp8: compiling the per-token quantization failed (%s); using eager torch ops", err)
            _FUSED["state"] = False
            return quantize_rows_e4m3(x)
    return _compiled_quantizer()(x)


def check_fp8_input(x: torch.Tensor, in_features: int, device: torch.device, label: str) -> None:
    """Raise a clear error for an input an fp8 linear cannot take."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{label}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"{label}: input has dtype {x.dtype}; expected bfloat16, float16 or float32")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"{label}: input shape {tuple(x.shape)} does not end in in_features={in_features}")
    if x.device != device:
        raise ValueError(f"{label}: input is on {x.device} but the fp8 weight is on {device}")


def fp8_linear(
    x8: torch.Tensor,
    x_scale: torch.Tensor,
    w8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """y (M, N) = (x8 · W8ᵀ) · s_x · s_w + bias in `out_dtype` through `torch._scaled_mm`.

    x8 (M, K) e4m3, x_scale (M, 1) fp32, w8 (N, K) e4m3, w_scale (1, N) fp32, bias (N,) or None.
    The GEMM writes bfloat16 (the output row-wise scaled FP8 GEMMs support on Hopper), with the bias
    added in its FP32 epilogue; another `out_dtype` is a cast of that.
    """
    if bias is not None and bias.dtype != torch.bfloat16:
        bias = bias.to(torch.bfloat16)
    y = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, bias=bias, out_dtype=torch.bfloat16)
    return y if out_dtype == torch.bfloat16 else y.to(out_dtype)


def quantize_activation(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token E4M3 quantization of a 2-D activation (fused kernel on CUDA when available)."""
    return _quantize_rows(x2d)
