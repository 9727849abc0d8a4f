"""RMSNorm fused with the SharQ preparation of its output (SPEC §9).

`FusedRMSNormPrep` takes the place of a decoder layer's input norm (or its pre-MLP norm). It
computes the norm, prepares the normalized activation once, and publishes the preparation to the
linears that read it (q/k/v, or gate/up) through their `SharedPreparation`. Its parameter is the
original `weight` (same name, same tensor), so the model's state_dict keys do not change.

Two RMSNorm variants cover the supported architectures (FP32 statistics in both):

  "llama"  w · (x · rsqrt(mean(x²) + eps)).to(dtype)           Llama, Mistral, Qwen2/3, Mixtral …
  "gemma"  (x · rsqrt(mean(x²) + eps) · (1 + w)).to(dtype)      Gemma 3 (one rounding, FP32 product)

`from_norm` checks, on a probe input, that the variant reproduces the original module bit for
bit; a norm it cannot reproduce is refused (the model is then not converted at all).

The statistic's order. torch computes `x.pow(2).mean(-1)` in an order of its own on each device: a
cascade of vector-wide partial sums on the CPU (its width set by the CPU's instruction set), a
block-wide tree on CUDA whose width follows the number of rows of the call (Reduce.cuh sizes the
block by the number of outputs), and its `rsqrt` is not correctly rounded (on an AVX-512 CPU it is
up to 2 ulp from 1/sqrt; CUDA's rsqrtf is an approximation). No kernel reproduces that: it is not a
function of the row alone, and it differs between devices. So sharq's RMSNorm fixes the order — the
"lanes" order, `mean_square` and `rms_inverse`: lane j of NORM_LANES sums h[j]², h[NORM_LANES + j]², … in turn, the
lanes are added in adjacent pairs level by level, mean = sum / K, then 1 / sqrt(mean + eps) with a
correctly rounded sqrt and division. It is a function of the row alone, the same on every device,
backend and batch size, and the Triton kernel computes it bit for bit (kernels/sources.py), fused
into the preparation or not.

`FusedRMSNormPrep` computes the "lanes" order on every backend, so a converted model's norm can
differ from the module it replaced in the last bit of a row's statistic (and hence by one ulp of the
model dtype in some of its outputs); `from_norm` checks the formula (variant, eps, weight) bit for bit
with torch's own order ("torch", the module's computation) on a probe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..formats.ieee import div_rn
from .shared_input import SharedPreparation

__all__ = [
    "FusedRMSNormPrep",
    "NORM_VARIANTS",
    "NORM_ORDERS",
    "NORM_LANES",
    "rms_norm_reference",
    "add_rms_norm_reference",
    "mean_square",
    "rms_inverse",
    "norm_output_dtype",
]

NORM_VARIANTS = ("llama", "gemma")
NORM_ORDERS = ("torch", "lanes")
NORM_LANES = 128  # the fixed order's lanes (a power of two); kernels/sources.py reads it


def mean_square(h: torch.Tensor) -> torch.Tensor:
    """mean(h²) of FP32 h (..., K) as (..., 1) FP32 in the fixed "lanes" order: lane j (of
    NORM_LANES) adds h[j]², h[NORM_LANES + j]², … in turn (zeros past K), the lanes are added in
    adjacent pairs level by level, then the sum is divided by K (correctly rounded on every device)."""
    k = h.shape[-1]
    squares = F.pad(h * h, (0, -k % NORM_LANES)).unflatten(-1, (-1, NORM_LANES))  # (..., chunks, lanes)
    acc = squares[..., 0, :]
    for c in range(1, squares.shape[-2]):
        acc = acc + squares[..., c, :]
    while acc.shape[-1] > 1:
        acc = acc[..., 0::2] + acc[..., 1::2]
    return div_rn(acc, float(k))


def rms_inverse(h: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(h²) + eps) of FP32 h (..., K) as (..., 1) FP32: `mean_square` ("lanes" order),
    eps added in FP32, the sqrt and the reciprocal correctly rounded on every device."""
    ms = mean_square(h)
    var = ms + torch.full_like(ms, eps)  # eps rounded to FP32; no host tensor (CUDA-graph capturable)
    return torch.ones_like(var) / torch.sqrt(var)


def norm_output_dtype(x_dtype: torch.dtype, weight_dtype: torch.dtype, variant: str) -> torch.dtype:
    """The dtype a variant's output has: "llama" multiplies by the weight in torch's promoted dtype,
    "gemma" rounds to x's dtype."""
    return torch.promote_types(x_dtype, weight_dtype) if variant == "llama" else x_dtype


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, variant: str, *, order: str = "lanes"
) -> torch.Tensor:
    """RMSNorm of `x` (..., H) with `weight` (H,), in `norm_output_dtype`, as the `variant` computes
    it, its statistic in `order`: "lanes" (sharq's, `rms_inverse`) or "torch" (the transformers
    module's own computation)."""
    hidden = x.to(torch.float32)
    if order == "torch":
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    elif order == "lanes":
        hidden = hidden * rms_inverse(hidden, eps)
    else:
        raise ValueError(f"unknown RMSNorm order {order!r}; expected one of {NORM_ORDERS}")
    if variant == "llama":
        return weight * hidden.to(x.dtype)
    if variant == "gemma":
        return (hidden * (1.0 + weight.float())).type_as(x)
    raise ValueError(f"unknown RMSNorm variant {variant!r}; expected one of {NORM_VARIANTS}")


def add_rms_norm_reference(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    variant: str,
    *,
    order: str = "lanes",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h): h = x + residual in x's dtype (h = x without a residual), y = RMSNorm(h) — a decoder
    layer's residual add and the norm after it."""
    h = x if residual is None else x + residual
    return rms_norm_reference(h, weight, eps, variant, order=order), h


def _norm_eps(norm: nn.Module) -> float:
    for attr in ("variance_epsilon", "eps"):
        value = getattr(norm, attr, None)
        if isinstance(value, float):
            return value
    raise ValueError(f"{type(norm).__name__} has no float `variance_epsilon` or `eps`; cannot fuse it")


class FusedRMSNormPrep(nn.Module):
    """y = RMSNorm(x) (returned unchanged to the model), plus y's SharQ preparation, published once.

    x: (..., H) float; returns (..., H) in `norm_output_dtype`. `shared` receives the preparation of
    y, computed with its runtime options (`shared.options`, its consumers', set by
    `sharq.set_runtime_options`) and, where a consumer set one, its planner (a MoE layer's input
    plan). The statistic in the "lanes" order on every backend; on Triton one preparation kernel
    computes y and its preparation (`ops.prepare_rms_norm`), on the reference backend torch computes
    y first.
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
            got = rms_norm_reference(probe, weight, fused.eps, variant, order="torch")  # the formula
        if expected.dtype != got.dtype or not torch.equal(expected, got):
            raise ValueError(
                f"{name}: {type(norm).__name__} does not compute the {variant!r} RMSNorm bit for bit; "
                "sharq cannot fuse it (the model was not converted)"
            )
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..ops import prepare_rms_norm

        # the plan (kernels.plan.plan_producer) fuses the norm into the preparation's kernel on Triton;
        # the group's runtime options and planner (a MoE layer's input plan) are its consumers'
        shared = self.shared
        plan = None
        if shared.planner is not None and x.shape[-1]:
            plan = shared.planner(x.numel() // x.shape[-1], x.device)
        y, _, prepared = prepare_rms_norm(
            x, self.weight, self.eps, self.variant, shared.config, shared.options, plan=plan
        )
        if prepared is not None:
            self.shared.publish(y, prepared)
        return y

    def extra_repr(self) -> str:
        return (
            f"{tuple(self.weight.shape)}, eps={self.eps}, variant={self.variant}, "
            f"fused_into={self.shared.name}, replaces={self.original_class}"
        )
