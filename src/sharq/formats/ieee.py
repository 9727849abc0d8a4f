"""Device-independent FP32 arithmetic the SPEC relies on.

PyTorch's CUDA kernels divide by a Python scalar as a multiplication by its rounded reciprocal,
which differs from the correctly rounded quotient in the last bit for some inputs (the CPU divides
exactly). The SPEC's divisions (amax / 2688, amax / 6, Vmax / 7) are correctly rounded FP32
quotients on every device, so they divide by a tensor of the same device, which both back ends
compute as an IEEE division.
"""

from __future__ import annotations

import torch

__all__ = ["div_rn"]


def div_rn(t: torch.Tensor, divisor: float) -> torch.Tensor:
    """FP32 `t / divisor`, correctly rounded (round to nearest even) on CPU and CUDA alike."""
    t = t.float()
    return t / torch.full_like(t, divisor)
