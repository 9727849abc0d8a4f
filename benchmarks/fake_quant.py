"""A linear layer for accuracy experiments: y = x̂ · Wᵀ + b in FP32 with a given (fake-quantized or
not) weight and an activation rule, so weight and activation errors can be switched on apart."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sharq import SharqConfig, decompose

__all__ = ["FakeQuantLinear", "sharq_activation"]


def sharq_activation(config: SharqConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (M, K) -> x̂ = deq(B) + deq(R) (FP32, x's domain) under `config` (the reference numerics)."""

    def act(x: torch.Tensor) -> torch.Tensor:
        d = decompose(x, config)
        return d.backbone + d.residual

    return act


class FakeQuantLinear(nn.Module):
    """weight (N, K) FP32 as given; bias (N,) FP32 or None; act: x (M, K) -> x̂ (M, K), or None for
    x itself. Input (..., K) in any float dtype -> (..., N) in that dtype."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, act: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        self.weight, self.bias, self.act = weight.float(), None if bias is None else bias.float(), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self.act is not None:
            x2 = self.act(x2)
        y = x2.float() @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)
