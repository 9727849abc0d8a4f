"""MXFP4 (OCP Microscaling): E2M1 elements, one E8M0 scale per 32 values, no second level.

SPEC §2: scale = 2^(floor(log2 amax) - 2), exponent clamped to [-127, 127]. Because the exponent
is rounded down, amax / scale lies in [4, 8) and values above 6 saturate to 6.
scale_rule="mse": each block takes 2^e or 2^(e+1) (e the rule's exponent: amax / scale in [4, 8)
or [2, 4)), whichever dequantizes the block with the smaller squared error; ties to the larger
(formats/scale_search.py). Same E8M0 codes format.
"""

from __future__ import annotations

import torch

from ..config import Format, WeightScale
from .blocks import to_blocks
from .elements import round_to_e2m1_codes
from .pack import pack_nibbles
from .quantized import QuantizedTensor
from .scale_search import choose_block_scales
from .scales import E8M0_MAX_EXP, decode_e8m0, e8m0_exponent, encode_e8m0

__all__ = ["quantize_mxfp4", "quantize_mxfp4_scaled", "MXFP4_BLOCK", "MXFP4_MSE_EXPONENT_STEPS"]

MXFP4_BLOCK = 32
# scale_rule="mse": exponent offsets tried from the floor rule's exponent (clamped to 127).
MXFP4_MSE_EXPONENT_STEPS = (0, 1)


def quantize_mxfp4_scaled(
    x: torch.Tensor, block: int = MXFP4_BLOCK, scale_rule: WeightScale | str = WeightScale.AMAX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-quantize FP32 `x` (..., K). Returns (codes uint8 (..., Kp), E8M0 codes uint8 (..., nb))."""
    if block != MXFP4_BLOCK:
        raise ValueError(f"MXFP4 block must be 32, got {block}")
    blocks = to_blocks(x.float(), block)  # (..., nb, 32)
    amax = blocks.abs().amax(dim=-1)  # (..., nb)
    exponent = e8m0_exponent(amax)  # int32 (..., nb)
    if WeightScale(scale_rule) is WeightScale.MSE:
        cands = [
            decode_e8m0(encode_e8m0(torch.clamp(exponent + j, max=E8M0_MAX_EXP), amax))
            for j in MXFP4_MSE_EXPONENT_STEPS
        ]
        chosen = choose_block_scales(blocks, cands)  # powers of two (NaN for non-finite blocks)
        _, exp = torch.frexp(chosen)
        exponent = torch.where(torch.isfinite(chosen), (exp - 1).to(torch.int32), exponent)
    scale_bits = encode_e8m0(exponent, amax)
    scale = decode_e8m0(scale_bits)  # exact power of two (NaN for non-finite blocks)
    codes = round_to_e2m1_codes(blocks / scale.unsqueeze(-1))
    return codes.reshape(*codes.shape[:-2], blocks.shape[-2] * block), scale_bits


def quantize_mxfp4(
    x: torch.Tensor, block: int = MXFP4_BLOCK, *, scale_rule: WeightScale | str = WeightScale.AMAX
) -> QuantizedTensor:
    """Quantize `x` (..., K), any float dtype, to MXFP4; `scale_rule` as in `quantize_mxfp4_scaled`."""
    codes, scale_bits = quantize_mxfp4_scaled(x, block, scale_rule)
    return QuantizedTensor(
        format=Format.MXFP4, codes=pack_nibbles(codes), scales=scale_bits, shape=tuple(x.shape), block=block
    )


def decode_scales_mxfp4(qt: QuantizedTensor) -> torch.Tensor:
    return decode_e8m0(qt.scales)
