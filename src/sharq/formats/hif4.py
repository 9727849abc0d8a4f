"""HiF4: 64-value blocks with a three-level scale and S1P2 elements (SPEC §2).

Per block of 64 along K:
  SF       = E6M2(Vmax / 7)                       level-1 scale, RTNE, no zero
  E8[j]    = (V8_j / SF >= 4)                      one-bit exponent per group of 8 (j = 0..7)
  E4[i]    = (V4_i / SF / 2^E8 >= 2)               one-bit exponent per group of 4 (i = 0..15)
  element  = S1P2(x / (SF * 2^(E8 + E4)))          ±{0, 0.25, …, 1.75}, ties to even, saturating
  value    = SF * 2^(E8 + E4) * element
(V = amax of the block, V8/V4 = amax of each group of 8/4.) 4 + (8 + 8 + 16) / 64 = 4.5 bits.
"""

from __future__ import annotations

import torch

from ..config import Format
from .blocks import from_blocks, to_blocks
from .elements import decode_s1p2, round_to_s1p2_codes
from .ieee import div_rn
from .pack import pack_nibbles, pack_uint_bits, unpack_nibbles, unpack_uint_bits
from .quantized import QuantizedTensor
from .scales import decode_e6m2, encode_e6m2, round_e6m2

__all__ = ["quantize_hif4", "quantize_hif4_scaled", "HIF4_BLOCK"]

HIF4_BLOCK = 64


def quantize_hif4_scaled(x: torch.Tensor, block: int = HIF4_BLOCK):
    """Block-quantize FP32 `x` (..., K).

    Returns (codes uint8 (..., Kp), E6M2 bits uint8 (..., nb), exponents8 uint8 (..., nb),
    exponents4 uint8 (..., nb, 2)).
    """
    if block != HIF4_BLOCK:
        raise ValueError(f"HiF4 block must be 64, got {block}")
    blocks = to_blocks(x.float(), block)  # (..., nb, 64)
    a = blocks.abs()
    sf = round_e6m2(div_rn(a.amax(dim=-1), 7.0))  # (..., nb)
    v8 = a.reshape(*a.shape[:-1], 8, 8).amax(dim=-1)  # (..., nb, 8)
    e8 = v8 / sf.unsqueeze(-1) >= 4.0  # (..., nb, 8)
    e8_per4 = e8.repeat_interleave(2, dim=-1)  # (..., nb, 16)
    v4 = a.reshape(*a.shape[:-1], 16, 4).amax(dim=-1)  # (..., nb, 16)
    e4 = v4 / sf.unsqueeze(-1) / torch.exp2(e8_per4.float()) >= 2.0  # (..., nb, 16)
    multiplier = sf.unsqueeze(-1) * torch.exp2((e8_per4.int() + e4.int()).float())  # (..., nb, 16)
    divisor = multiplier.repeat_interleave(4, dim=-1)  # (..., nb, 64)
    codes = round_to_s1p2_codes(blocks / divisor)
    kp = blocks.shape[-2] * block
    return (
        codes.reshape(*codes.shape[:-2], kp),
        encode_e6m2(sf),
        pack_uint_bits(e8, 1).squeeze(-1),
        pack_uint_bits(e4, 1),
    )


def quantize_hif4(x: torch.Tensor, block: int = HIF4_BLOCK) -> QuantizedTensor:
    """Quantize `x` (..., K), any float dtype, to HiF4."""
    codes, sf_bits, e8, e4 = quantize_hif4_scaled(x, block)
    return QuantizedTensor(
        format=Format.HIF4,
        codes=pack_nibbles(codes),
        scales=sf_bits,
        shape=tuple(x.shape),
        block=block,
        exponents8=e8,
        exponents4=e4,
    )


def decode_scales_hif4(qt: QuantizedTensor) -> torch.Tensor:
    return decode_e6m2(qt.scales)


def element_values_hif4(qt: QuantizedTensor, scale_block: int | None) -> torch.Tensor:
    """(..., Kp) FP32 values of a HiF4 tensor."""
    if scale_block not in (None, qt.block):
        raise ValueError(f"HiF4 has no {scale_block}-block scale view")
    sf = decode_e6m2(qt.scales)  # (..., nb)
    e8 = unpack_uint_bits(qt.exponents8.unsqueeze(-1), 1, 8)  # (..., nb, 8)
    e4 = unpack_uint_bits(qt.exponents4, 1, 16)  # (..., nb, 16)
    exponent = e8.repeat_interleave(2, dim=-1) + e4  # (..., nb, 16)
    multiplier = sf.unsqueeze(-1) * torch.exp2(exponent.float())  # (..., nb, 16)
    values = to_blocks(decode_s1p2(unpack_nibbles(qt.codes)), qt.block)  # (..., nb, 64)
    values = values * multiplier.repeat_interleave(4, dim=-1)
    return from_blocks(values, values.shape[-2] * qt.block)
