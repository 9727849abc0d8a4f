"""Error metrics used by tests, the demo and reports."""

from __future__ import annotations

import math

import torch

__all__ = ["sqnr_db"]


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σ ref² / Σ (ref − approx)²) in dB (FP64 sums).

    inf when the two are equal, nan when either holds a non-finite value.
    """
    if reference.shape != approx.shape:
        raise ValueError(f"sqnr_db: shapes differ, {tuple(reference.shape)} vs {tuple(approx.shape)}")
    ref = reference.double()
    err = ref - approx.double()
    signal = float((ref * ref).sum())
    noise = float((err * err).sum())
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return float("nan")
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)
