"""`Fp8Linear`: an nn.Linear replaced by the FP8 baseline (see `fp8.py` for the numerics).

Stored (computed once by `from_float`, no calibration data):

  weight_e4m3   float8_e4m3fn (N, K)   the weight divided by its channel scale, rounded to E4M3
  weight_scale  float32 (1, N)         per-output-channel scales
  bias          (N,) in the layer's dtype, or None

Layers that read the same input (q/k/v, gate/up) may share one per-token quantization through an
`Fp8SharedInput` — as SharQ layers share their preparation — so the baseline pays the activation
quantization once per input, like a serving engine's fused qkv / gate_up projection.
"""

from __future__ import annotations

import torch
from torch import nn

from .fp8 import check_fp8_input, fp8_linear, quantize_activation, quantize_weight_e4m3

__all__ = ["Fp8Linear", "Fp8SharedInput"]


class Fp8SharedInput:
    """One per-token FP8 quantization of an input, reused by the `consumers` layers that read it.

    The first consumer quantizes, the others reuse it when they are called with that very tensor
    (not modified in place since); after `consumers` calls the reference is dropped. Any other
    input is quantized anew, so sharing never changes what a layer computes.
    """

    def __init__(self, consumers: int, name: str) -> None:
        if consumers <= 0:
            raise ValueError(f"{name}: a shared fp8 input needs at least one consumer, got {consumers}")
        self.consumers = consumers
        self.name = name
        self.quantize_count = 0
        self._source: torch.Tensor | None = None
        self._quantized: tuple[torch.Tensor, torch.Tensor] | None = None
        self._version = 0
        self._taken = 0

    def take(self, x: torch.Tensor, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x8, s_x) of `x2d` = `x` as (M, K) rows."""
        source = self._source
        if torch.compiler.is_compiling():  # `_version` is not traceable; reuse only the very tensor
            fresh = source is not None and x is source
        else:
            fresh = source is not None and x is source and x._version == self._version
        if not fresh:
            compiling = torch.compiler.is_compiling()
            self._quantized = quantize_activation(x2d)
            self._source, self._taken = x, 0
            self._version = 0 if compiling else x._version
            if not compiling:  # eager calls only: a counter read by a traced graph would be a guard
                self.quantize_count += 1
        quantized = self._quantized
        self._taken += 1
        if self._taken >= self.consumers:
            self._source, self._quantized, self._taken = None, None, 0
        return quantized

    def __repr__(self) -> str:
        return f"Fp8SharedInput({self.name!r}, consumers={self.consumers})"


class Fp8Linear(nn.Module):
    """y = x Wᵀ + b with an E4M3 weight (per-channel scales) and per-token E4M3 activations.

    Input (..., in_features) bfloat16 / float16 / float32 → output (..., out_features), same dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Fp8Linear needs positive sizes, got in={in_features}, out={out_features}")
        if in_features % 16 or out_features % 16:
            raise ValueError(
                f"{name or 'Fp8Linear'}: torch._scaled_mm needs in and out features divisible by 16, "
                f"got in={in_features}, out={out_features}"
            )
        self.in_features, self.out_features, self.name = in_features, out_features, name
        self.shared_input: Fp8SharedInput | None = None
        self.register_buffer(
            "weight_e4m3", torch.zeros(out_features, in_features, dtype=torch.float8_e4m3fn, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(1, out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(
                torch.zeros(out_features, dtype=dtype or torch.get_default_dtype(), device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_float(cls, linear: nn.Linear, *, name: str | None = None) -> Fp8Linear:
        """Quantize a trained `nn.Linear` (weight (N, K), optional bias) once."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Fp8Linear.from_float needs an nn.Linear, got {type(linear).__name__}")
        module = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            dtype=linear.weight.dtype,
            device=linear.weight.device,
            name=name,
        )
        try:
            w8, scale = quantize_weight_e4m3(linear.weight)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{module._label()}: {err}") from None
        module.weight_e4m3.copy_(w8)
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the layer multiplies, W8 · s_w, as (N, K) float32."""
        return self.weight_e4m3.float() * self.weight_scale.reshape(-1, 1)

    def _label(self) -> str:
        return self.name or f"Fp8Linear({self.in_features}->{self.out_features})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_fp8_input(x, self.in_features, self.weight_e4m3.device, self._label())
        lead = x.shape[:-1]
        if x.numel() == 0:
            return x.new_zeros(*lead, self.out_features)
        x2d = x.reshape(-1, self.in_features)  # (M, K)
        if self.shared_input is not None:
            x8, x_scale = self.shared_input.take(x, x2d)
        else:
            x8, x_scale = quantize_activation(x2d)
        y = fp8_linear(x8, x_scale, self.weight_e4m3, self.weight_scale, self.bias, x.dtype)  # (M, N)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        shared = f", shared_input={self.shared_input.name}" if self.shared_input is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight=e4m3 per-channel, activation=e4m3 per-token{shared}"
        )
