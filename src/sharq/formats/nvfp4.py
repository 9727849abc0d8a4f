"""NVFP4: E2M1 elements, one E4M3 scale per 16 or 32 values along K, FP32 second-level scale.

SPEC §2–3. Quantization of `x` (..., K):
  s      = max(amax(|x|) / (6 * 448), 1e-9)            FP32, per tensor or per row ("token")
  xs     = x / s
  scale  = E4M3(amax_block(|xs|) / 6)                  RTNE, subnormals kept, saturating at 448
           (scale_rule="mse": the best of E4M3(amax_block / d), d in NVFP4_MSE_DIVISORS, by the
           block's squared error; ties to the larger scale — formats/scale_search.py)
  code   = E2M1(xs / scale)  (0 where scale == 0)      ties to even, saturating at 6
  value  = s * scale * E2M1 value
"""

from __future__ import annotations

import torch

from ..config import Format, Granularity, WeightScale
from .blocks import from_blocks, to_blocks
from .elements import E2M1_MAX, decode_e2m1, round_to_e2m1_codes
from .ieee import div_rn
from .pack import pack_nibbles, unpack_nibbles
from .quantized import QuantizedTensor
from .scale_search import choose_block_scales
from .scales import E4M3_MAX, decode_e4m3, encode_e4m3, round_e4m3

__all__ = [
    "nvfp4_global_scale",
    "nvfp4_block_scales",
    "quantize_nvfp4",
    "quantize_nvfp4_scaled",
    "NVFP4_BLOCKS",
    "NVFP4_MSE_DIVISORS",
]

NVFP4_BLOCKS = (16, 32)
# Block-scale candidates of scale_rule="mse": E4M3(amax / d) for each d. amax/6 maps the block's
# largest magnitude onto E2M1's 6 (the amax rule); amax/4 onto 4, where the grid is finer near the
# top ("Four Over Six"); 5.5, 5 and 4.5 fill the E4M3 steps between; amax/7 clips the largest
# value (saturating at 6) for a finer grid under it. Measured on SmolLM2 (docs/accuracy.md): 32-block
# weights need more than (6, 4); more or denser divisors added nothing measurable.
NVFP4_MSE_DIVISORS = (7.0, 6.0, 5.5, 5.0, 4.5, 4.0)
GLOBAL_SCALE_DIVISOR = E2M1_MAX * E4M3_MAX  # 2688
GLOBAL_SCALE_FLOOR = 1e-9


def nvfp4_global_scale(x: torch.Tensor, granularity: Granularity | str = Granularity.TENSOR) -> torch.Tensor:
    """FP32 second-level scale of `x` (..., K): shape () for "tensor", (..., 1) for "token".

    NaN/Inf in `x` give a NaN/Inf scale for the tensor (or the affected rows), so the non-finite
    value reaches the output instead of being silently clipped.
    """
    granularity = Granularity(granularity)
    a = x.detach().float().abs()
    if granularity is Granularity.TENSOR:
        amax = a.amax() if a.numel() else a.new_zeros(())
    else:
        if x.dim() == 0:
            raise ValueError("token granularity needs at least a 1-D tensor (..., K)")
        amax = a.amax(dim=-1, keepdim=True) if x.shape[-1] else a.new_zeros(*x.shape[:-1], 1)
    return torch.clamp(div_rn(amax, GLOBAL_SCALE_DIVISOR), min=GLOBAL_SCALE_FLOOR)


def nvfp4_block_scales(blocks: torch.Tensor, scale_rule: WeightScale | str = WeightScale.AMAX) -> torch.Tensor:
    """E4M3 block-scale values FP32 (..., nb) of FP32 `blocks` (..., nb, block) in the scaled domain.

    "amax": E4M3(amax / 6). "mse": among E4M3(amax / d) for d in NVFP4_MSE_DIVISORS, the one whose
    dequantized block has the smallest squared error (FP32, fixed pairwise sum); ties to the larger.
    NaN in a block gives a NaN scale under either rule.
    """
    amax = blocks.abs().amax(dim=-1)  # (..., nb); NaN propagates
    if WeightScale(scale_rule) is WeightScale.AMAX:
        return round_e4m3(div_rn(amax, E2M1_MAX))
    return choose_block_scales(blocks, [round_e4m3(div_rn(amax, d)) for d in NVFP4_MSE_DIVISORS])


def quantize_nvfp4_scaled(
    xs: torch.Tensor, block: int, scale_rule: WeightScale | str = WeightScale.AMAX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-quantize already-scaled FP32 `xs` (..., K); `scale_rule` as in `nvfp4_block_scales`.

    Returns (codes uint8 (..., Kp) unpacked, scale bits uint8 (..., Kp // block)).
    """
    if block not in NVFP4_BLOCKS:
        raise ValueError(f"NVFP4 block must be 16 or 32, got {block}")
    blocks = to_blocks(xs.float(), block)  # (..., nb, block)
    scale = nvfp4_block_scales(blocks, scale_rule)  # (..., nb)
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = round_to_e2m1_codes(blocks / divisor.unsqueeze(-1))
    codes = torch.where((scale == 0).unsqueeze(-1), torch.zeros_like(codes), codes)
    kp = blocks.shape[-2] * block
    return codes.reshape(*codes.shape[:-2], kp), encode_e4m3(scale)


def quantize_nvfp4(
    x: torch.Tensor,
    block: int = 16,
    *,
    granularity: Granularity | str = Granularity.TENSOR,
    global_scale: torch.Tensor | None = None,
    scale_rule: WeightScale | str = WeightScale.AMAX,
) -> QuantizedTensor:
    """Quantize `x` (..., K), any float dtype, to NVFP4 with `block`-value E4M3 scales.

    `global_scale` overrides the data-derived second-level scale (it must broadcast against x).
    `scale_rule` chooses the block scales (`nvfp4_block_scales`); the stored format is the same.
    """
    if global_scale is None:
        global_scale = nvfp4_global_scale(x, granularity)
    global_scale = global_scale.float()
    codes, scale_bits = quantize_nvfp4_scaled(x.float() / global_scale, block, scale_rule)
    return QuantizedTensor(
        format=Format.NVFP4,
        codes=pack_nibbles(codes),
        scales=scale_bits,
        shape=tuple(x.shape),
        block=block,
        global_scale=global_scale,
    )


def decode_scales_nvfp4(qt: QuantizedTensor) -> torch.Tensor:
    return decode_e4m3(qt.scales)


def element_values_e2m1(qt: QuantizedTensor, scale_block: int | None) -> torch.Tensor:
    """(..., Kp) FP32: E2M1 value * block scale (no global scale). Shared by NVFP4 and MXFP4."""
    block = scale_block or qt.block
    scales = qt.scale_values(block)  # (..., Kp // block)
    values = to_blocks(decode_e2m1(unpack_nibbles(qt.codes)), block)  # (..., nb, block)
    return from_blocks(values * scales.unsqueeze(-1), values.shape[-2] * block)
