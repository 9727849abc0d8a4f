"""RMSNorm fused with the SharQ preparation of its output (SPEC §9).

`FusedRMSNormPrep` takes the place of a decoder layer's input norm (or its pre-MLP norm). It
computes the norm exactly as the architecture does, prepares the normalized activation once, and
publishes the preparation to the linears that read it (q/k/v, or gate/up) through their
`SharedPreparation`. Its parameter is the original `weight` (same name, same tensor), so the
model's state_dict keys do not change.

Two RMSNorm variants cover the supported architectures (FP32 statistics in both):

  "llama"  w · (x · rsqrt(mean(x²) + eps)).to(dtype)           Llama, Mistral, Qwen2/3, Mixtral …
  "gemma"  (x · rsqrt(mean(x²) + eps) · (1 + w)).to(dtype)      Gemma 3 (one rounding, FP32 product)

`from_norm` checks, on a probe input, that the variant reproduces the original module bit for
bit; a norm it cannot reproduce is refused (the model is then not converted at all).
"""

from __future__ import annotations

import torch
from torch import nn

from .shared_input import SharedPreparation

__all__ = ["FusedRMSNormPrep", "NORM_VARIANTS", "rms_norm_reference"]

NORM_VARIANTS = ("llama", "gemma")


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, variant: str) -> torch.Tensor:
    """RMSNorm of `x` (..., H) with `weight` (H,), in x's dtype, as the `variant` computes it."""
    hidden = x.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    if variant == "llama":
        return weight * hidden.to(x.dtype)
    if variant == "gemma":
        return (hidden * (1.0 + weight.float())).type_as(x)
    raise ValueError(f"unknown RMSNorm variant {variant!r}; expected one of {NORM_VARIANTS}")


def _norm_eps(norm: nn.Module) -> float:
    for attr in ("variance_epsilon", "eps"):
        value = getattr(norm, attr, None)
        if isinstance(value, float):
            return value
    raise ValueError(f"{type(norm).__name__} has no float `variance_epsilon` or `eps`; cannot fuse it")


class FusedRMSNormPrep(nn.Module):
    """y = RMSNorm(x) (returned unchanged to the model), plus y's SharQ preparation, published once.

    x: (..., H) float; returns (..., H) in x's dtype. `shared` receives the preparation of y.
    """

    def __init__(self, weight: nn.Parameter, eps: float, variant: str, shared: SharedPreparation, name: str) -> None:
        super().__init__()
        if variant not in NORM_VARIANTS:
            raise ValueError(f"unknown RMSNorm variant {variant!r}; expected one of {NORM_VARIANTS}")
        self.weight = weight
        self.eps = eps
        self.variant = variant
        self.shared = shared
        self.name = name
        self.original_class = "RMSNorm"

    @classmethod
    def from_norm(cls, norm: nn.Module, variant: str, shared: SharedPreparation, *, name: str) -> FusedRMSNormPrep:
        """Wrap `norm` (which must hold `weight` (H,) and an eps), verified bit-exact on a probe."""
        weight = getattr(norm, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
            raise ValueError(f"{name}: {type(norm).__name__} has no 1-D `weight`; cannot fuse it")
        fused = cls(weight, _norm_eps(norm), variant, shared, name)
        fused.original_class = type(norm).__name__
        gen = torch.Generator(device="cpu").manual_seed(0)
        probe = (torch.randn(3, weight.shape[0], generator=gen) * 3).to(weight.device, weight.dtype)
        with torch.no_grad():
            expected = norm(probe)
            got = rms_norm_reference(probe, weight, fused.eps, variant)
        if expected.dtype != got.dtype or not torch.equal(expected, got):
            raise ValueError(
                f"{name}: {type(norm).__name__} does not compute the {variant!r} RMSNorm bit for bit; "
                "sharq cannot fuse it (the model was not converted)"
            )
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = rms_norm_reference(x, self.weight, self.eps, self.variant)
        if y.numel():
            self.shared.prepare(y)
        return y

    def extra_repr(self) -> str:
        return (
            f"{tuple(self.weight.shape)}, eps={self.eps}, variant={self.variant}, "
            f"fused_into={self.shared.name}, replaces={self.original_class}"
        )
