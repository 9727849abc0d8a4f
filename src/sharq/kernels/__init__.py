"""Triton kernels (GPU, or the CPU under TRITON_INTERPRET=1). Each names its reference twin.

  prepare_fp4.prepare_activation_triton   twin of sparse.decompose.prepare_activation (NVFP4, MXFP4)
  gemm_fp4.fp4_weight_gemm                twin of ops.linear_from_prepared's matmul (NVFP4, MXFP4 weights)
  gemv_nvfp4.fp4_weight_gemv              the same matmul for up to 8 rows and an NVFP4 weight (decode)
  gemm_bf16_tma.bf16_gemm_tma             the same matmul over the bf16 scratch weight (gemm_fp4 calls it
                                          from 1,024 rows)
  dequant_fp4.dequantize_fp4_bf16         twin of QuantizedTensor.dequantize(apply_global_scale=False)
  sources (prepare_source_triton, prepare_split_source)   the preparation of what a producer computes:
                                          twins of nn.fused_norm.add_rms_norm_reference and
                                          nn.fused_mlp.act_mul_reference followed by the preparation

`backend="auto"` runs them on CUDA for the formats they implement. This module imports no triton.
"""

from __future__ import annotations

import os

from ..config import Format, SharqConfig

__all__ = ["interpreting", "supports", "cdiv", "next_pow2"]


def cdiv(x: int, y: int) -> int:
    """⌈x / y⌉ for the launch grids, as `triton.cdiv` computes it. Plain Python: the host code of every
    launch calls it several times, and Triton's own is a constexpr function (several µs a call)."""
    return (x + y - 1) // y


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (0 for n <= 0), as `triton.next_power_of_2`; plain Python."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def interpreting() -> bool:
    """True when Triton kernels run under TRITON_INTERPRET=1 (on the CPU, the tests): no inline asm,
    bf16 dots as FP32, no PDL."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supports(config: SharqConfig) -> bool:
    """True when the Triton preparation implements `config` (NVFP4 / MXFP4, M of N:M in 4, 8, 16)."""
    if config.format not in (Format.NVFP4, Format.MXFP4):
        return False
    specs = (config.mask_spec, config.residual_mask_spec)
    return all(spec is None or spec.pairs or spec.m in (4, 8, 16) for spec in specs)
