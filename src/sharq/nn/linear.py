"""`SharqLinear`: a linear layer that holds one packed FP4 weight payload and computes SPEC §7.

Stored buffers (integer dtypes only, so `module.to(dtype)` / `.half()` can never re-round a
scale; `.to(device)` moves them as usual):

  weight_codes         uint8 (N, Kp // 2)            packed 4-bit codes, low nibble first
  weight_scales        uint8 (N, Kp // weight_block) block-scale bits (E4M3 | E8M0 | E6M2)
  weight_global_scale  int32 ()                      bits of the FP32 s_w           (NVFP4 only)
  weight_exponents8    uint8 (N, nb)                 one-bit exponents per 8        (HiF4 only)
  weight_exponents4    uint8 (N, nb, 2)              one-bit exponents per 4        (HiF4 only)
  bias                 (N,) in the layer's dtype, or None

No dense float copy of the weight is kept.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Format, SharqConfig, preset_name
from ..formats.blocks import padded_length
from ..formats.quantized import QuantizedTensor
from ..ops import quantize_weight, resolve_backend, sharq_linear
from ..options import DEFAULT_OPTIONS, RuntimeOptions
from ..sparse.decompose import check_activation
from .shared_input import SharedPreparation
from .weight_storage import StoredWeightMixin, buffers, store_weight, weight_view

__all__ = ["SharqLinear", "check_layer_input"]


class SharqLinear(StoredWeightMixin, nn.Module):
    """y = x Wᵀ + b with SharQ-quantized activations and a packed FP4 weight.

    Build it from a trained layer with `SharqLinear.from_float(linear, config)`; the constructor
    allocates empty (zero) storage of the right shapes, e.g. to `load_state_dict` into.
    Inputs (..., in_features) of float32, bfloat16 or float16 give (..., out_features) in the
    input's dtype. `options` (`RuntimeOptions`: backend, NaN check) is set by `sharq.quantize_`,
    `sharq.load_quantized` or `sharq.set_runtime_options`; it is not part of the scheme.
    """

    options: RuntimeOptions = DEFAULT_OPTIONS

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        config: SharqConfig,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
        options: RuntimeOptions | None = None,
    ) -> None:
        super().__init__()
        if options is not None:
            if not isinstance(options, RuntimeOptions):
                raise TypeError(f"options must be a sharq.RuntimeOptions, got {type(options).__name__}")
            self.options = options
        if not isinstance(config, SharqConfig):
            raise TypeError(f"config must be a SharqConfig, got {type(config).__name__}")
        if not config.quantizes:
            raise ValueError("SharqLinear needs a quantizing config; the 'bf16' preset (format='none') keeps nn.Linear")
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"SharqLinear needs positive sizes, got in={in_features}, out={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.config = config
        self.name = name
        # Set by `sharq.quantize_` when this layer shares its input's preparation (q/k/v, gate/up).
        self.shared_input: SharedPreparation | None = None
        dtype = dtype or torch.get_default_dtype()
        block = config.weight_block
        kp = padded_length(in_features, block)
        u8 = dict(dtype=torch.uint8, device=device)
        self.register_buffer("weight_codes", torch.zeros(out_features, kp // 2, **u8))
        self.register_buffer("weight_scales", torch.zeros(out_features, kp // block, **u8))
        if config.format is Format.NVFP4:
            one_bits = torch.ones((), dtype=torch.float32).view(torch.int32)
            self.register_buffer("weight_global_scale", one_bits.clone().to(device))
        if config.format is Format.HIF4:
            self.register_buffer("weight_exponents8", torch.zeros(out_features, kp // block, **u8))
            self.register_buffer("weight_exponents4", torch.zeros(out_features, kp // block, 2, **u8))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def empty_like(
        cls,
        linear: nn.Linear,
        config: SharqConfig,
        *,
        name: str | None = None,
        device: torch.device | str | None = None,
        options: RuntimeOptions | None = None,
    ) -> SharqLinear:
        """A layer of `linear`'s sizes, bias and dtype with zero storage on `device` (default: the
        weight's device, "meta" allowed); the weight is not read. A checkpoint loader fills it."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        return cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            config=config,
            dtype=linear.weight.dtype,
            device=linear.weight.device if device is None else device,
            name=name,
            options=options,
        )

    @classmethod
    def from_float(
        cls, linear: nn.Linear, config: SharqConfig, *, name: str | None = None, options: RuntimeOptions | None = None
    ) -> SharqLinear:
        """Quantize a trained `nn.Linear` (weight (N, K), optional bias) once, no calibration data.
        `options`: runtime options (backend, NaN check), default `RuntimeOptions()`."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_float needs an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        module = cls.empty_like(linear, config, name=name, options=options)
        try:
            qt = quantize_weight(weight, config)
        except ValueError as err:
            raise ValueError(f"{module._label()}: {err}") from None
        store_weight(buffers(module, "weight"), qt)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    # --- the stored weight -----------------------------------------------------------------------
    @property
    def quantized_weight(self) -> QuantizedTensor:
        """The packed weight as a `QuantizedTensor` (views of the buffers, no copy); inside
        `sharq.runtime.weight_cache.kept_dequantized_weights` one that remembers its dequantization."""
        kept = self.__dict__.get("_kept_weight")
        if kept is not None:
            return kept
        return weight_view(
            buffers(self, "weight"), self.config.format, (self.out_features, self.in_features), self.config.weight_block
        )

    # --- forward ---------------------------------------------------------------------------------
    def _label(self) -> str:
        return self.name or f"SharqLinear({self.in_features}->{self.out_features})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(self, x)
        if x.numel() == 0:
            resolve_backend(self.config, x.device, self.options)  # an unavailable backend errors even on empty input
            return x.new_zeros(*x.shape[:-1], self.out_features)
        if self.shared_input is not None:  # q/k/v, gate/up: one preparation, maybe one launch
            return self.shared_input.linear(x, self)
        return self.linear_prepared(x, None)

    def linear_prepared(self, x: torch.Tensor, prepared) -> torch.Tensor:
        """y (..., N) for x (..., K), from x's preparation as (M, K) rows when given (else prepared here)."""
        # one GEMM over deq(B) + deq(R): SPEC §7's equal form, the path the GPU kernels take
        return sharq_linear(
            x, self.quantized_weight, self.bias, self.config, prepared=prepared, one_gemm=True, options=self.options
        )

    def extra_repr(self) -> str:
        preset = preset_name(self.config)
        cfg = self.config
        parts = [
            f"in_features={self.in_features}",
            f"out_features={self.out_features}",
            f"bias={self.bias is not None}",
            f"preset={preset}" if preset else "preset=custom",
            f"format={cfg.format.value}",
            f"mask={cfg.mask}",
            f"residual={cfg.residual.value}",
        ]
        if cfg.residual_mask:
            parts.append(f"residual_mask={cfg.residual_mask}")
        parts += [
            f"blocks=(backbone={cfg.backbone_block}, residual={cfg.residual_block}, weight={cfg.weight_block})",
            f"granularity={cfg.granularity.value}",
            f"backend={self.options.backend.value}",
        ]
        if self.shared_input is not None:
            parts.append(f"shared_input={self.shared_input.name}")
        return ", ".join(parts)


def check_layer_input(module: nn.Module, x: torch.Tensor) -> None:
    """The checks a packed-weight layer (SharqLinear, SharqLMHead) makes before computing: x's dtype and
    shape, its last dimension = module.in_features, x on the weight's device, and, with
    `module.options.check_finite`, no NaN/Inf. Errors name the layer (`module._label()`)."""
    label = module._label()
    check_activation(x, f"{label} input")
    if x.shape[-1] != module.in_features:
        raise ValueError(
            f"{label}: input shape {tuple(x.shape)} has last dimension {x.shape[-1]}, "
            f"expected in_features={module.in_features}"
        )
    if x.device != module.weight_codes.device:
        raise ValueError(f"{label}: input is on {x.device} but the layer's weight is on {module.weight_codes.device}")
    if module.options.check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{label}: input contains NaN or Inf (check_finite=True)")
