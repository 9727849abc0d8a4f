"""Nibble packing: two 4-bit codes per byte, element 2i in the low nibble, 2i+1 in the high one.

This is the byte layout of `torch.float4_e2m1fn_x2`.
"""

from __future__ import annotations

import torch

__all__ = ["pack_nibbles", "unpack_nibbles", "pack_uint_bits", "unpack_uint_bits"]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (..., K) with K even, each in 0..15 -> packed uint8 (..., K // 2)."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"pack_nibbles needs uint8 codes, got {codes.dtype}")
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles needs an even last dimension, got shape {tuple(codes.shape)}")
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return (pairs[..., 0] & 0xF) | ((pairs[..., 1] & 0xF) << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """packed uint8 (..., K // 2) -> uint8 codes (..., K)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_nibbles needs uint8 bytes, got {packed.dtype}")
    low = packed & 0xF
    high = packed >> 4
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def pack_uint_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ints (..., n), each < 2**bits -> uint8 (..., ceil(n * bits / 8)).

    Little-endian bit stream: bit j of value i is stream bit i * bits + j; stream bit t is bit
    t % 8 of byte t // 8. The tail of the last byte is zero.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"pack_uint_bits: bits must be in 1..8, got {bits}")
    shifts = torch.arange(bits, device=values.device, dtype=torch.int32)
    stream = (values.to(torch.int32).unsqueeze(-1) >> shifts) & 1  # (..., n, bits)
    stream = stream.reshape(*values.shape[:-1], values.shape[-1] * bits)
    pad = -stream.shape[-1] % 8
    if pad:
        stream = torch.nn.functional.pad(stream, (0, pad))
    stream = stream.reshape(*stream.shape[:-1], stream.shape[-1] // 8, 8)
    weights = 1 << torch.arange(8, device=values.device, dtype=torch.int32)
    return (stream * weights).sum(dim=-1).to(torch.uint8)


def unpack_uint_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_uint_bits`: uint8 (..., nbytes) -> int64 (..., n)."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32)
    stream = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & 1  # (..., nbytes, 8)
    stream = stream.reshape(*packed.shape[:-1], packed.shape[-1] * 8)[..., : n * bits]
    stream = stream.reshape(*packed.shape[:-1], n, bits)
    weights = 1 << torch.arange(bits, device=packed.device, dtype=torch.int32)
    return (stream * weights).sum(dim=-1).to(torch.int64)
