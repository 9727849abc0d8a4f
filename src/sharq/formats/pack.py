"""Nibble packing: two 4-bit codes per byte, element 2i in the low nibble, 2i+1 in the high one.

This is the byte layout of `torch.float4_e2m1fn_x2`.
"""

from __future__ import annotations

import torch

__all__ = ["pack_nibbles", "unpack_nibbles"]


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
