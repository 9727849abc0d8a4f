"""`SharqLMHead`: the weight-only quantized lm_head (SPEC §9, beyond the paper, opt-in).

`SharqConfig(lm_head="nvfp4-w16")` makes `sharq.quantize_` replace the model's output projection by
this module: its weight in NVFP4 with 16-blocks (E4M3 block scales, one FP32 s_w: the SharQ weight
payload of SPEC §6, from the same quantizer, `ops.quantize_lm_head_weight`), its input — the final
hidden state — left in the model dtype:

  y = s_w · (x · deq(Wq)ᵀ) + bias      FP32 accumulation, returned in x's dtype

Stored buffers (integer dtypes only, as in `SharqLinear`; the same names, so checkpoints treat both
alike):

  weight_codes         uint8 (N, Kp // 2)    packed E2M1 codes, low nibble first
  weight_scales        uint8 (N, Kp // 16)   E4M3 block-scale bits
  weight_global_scale  int32 ()              bits of the FP32 s_w
  bias                 (N,) in the model dtype, or None

N is the vocabulary, K the hidden size, Kp K padded to 16. No dense copy of the weight is kept.
Backends: `ops.lm_head_linear` (the torch reference, dequantize + FP32 matmul; Triton on CUDA for
bf16 input: a W4A16 GEMV for decode rows, the FP4-weight GEMM above).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import LM_HEAD_WEIGHT_BLOCK, Format, SharqConfig
from ..formats.blocks import padded_length
from ..formats.quantized import QuantizedTensor
from ..ops import lm_head_linear, quantize_lm_head_weight, resolve_lm_head_backend
from ..options import DEFAULT_OPTIONS, RuntimeOptions
from .linear import check_layer_input
from .weight_storage import StoredWeightMixin, buffers, store_weight, weight_view

__all__ = ["SharqLMHead"]


class SharqLMHead(StoredWeightMixin, nn.Module):
    """Logits y = x Wᵀ + b with a packed NVFP4-16 weight and the input in the model dtype.

    Build it from the model's output projection with `SharqLMHead.from_float(linear, config)`; the
    constructor allocates empty (zero) storage, e.g. for a checkpoint loader. Input (..., K) of
    float32, bfloat16 or float16 gives (..., N) in the input's dtype. Of `config` it reads
    `weight_scale` (when quantizing); `config.lm_head` must ask for a quantized lm_head. `options`
    (`RuntimeOptions`: backend, NaN check) is set like SharqLinear's.
    """

    options: RuntimeOptions = DEFAULT_OPTIONS

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        config: SharqConfig,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, SharqConfig):
            raise TypeError(f"config must be a SharqConfig, got {type(config).__name__}")
        if not config.quantizes_lm_head:
            raise ValueError(f"SharqLMHead needs SharqConfig.lm_head='nvfp4-w16', got {config.lm_head.value!r}")
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"SharqLMHead needs positive sizes, got in={in_features}, out={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.config = config
        self.name = name
        # The parameter this lm_head's weight was tied to before quantization (the input embedding's,
        # which keeps it), or None: set by `quantize_` and by the checkpoint loader, recorded on save.
        self.untied_from: str | None = None
        kp = padded_length(in_features, LM_HEAD_WEIGHT_BLOCK)
        u8 = dict(dtype=torch.uint8, device=device)
        self.register_buffer("weight_codes", torch.zeros(out_features, kp // 2, **u8))
        self.register_buffer("weight_scales", torch.zeros(out_features, kp // LM_HEAD_WEIGHT_BLOCK, **u8))
        one_bits = torch.ones((), dtype=torch.float32).view(torch.int32)
        self.register_buffer("weight_global_scale", one_bits.clone().to(device))
        if bias:
            dtype = dtype or torch.get_default_dtype()
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
    ) -> SharqLMHead:
        """An lm_head of `linear`'s sizes, bias and dtype with zero storage on `device` (default: the
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
        )

    @classmethod
    def from_float(cls, linear: nn.Linear, config: SharqConfig, *, name: str | None = None) -> SharqLMHead:
        """Quantize a trained output projection (`nn.Linear`, weight (N, K)) once, no calibration data.
        `linear` is only read: a weight it shares with the input embedding stays as it is."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_float needs an nn.Linear, got {type(linear).__name__}")
        module = cls.empty_like(linear, config, name=name)
        try:
            qt = quantize_lm_head_weight(linear.weight.detach(), config)
        except ValueError as err:
            raise ValueError(f"{module._label()}: {err}") from None
        store_weight(buffers(module, "weight"), qt)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    # --- the stored weight -----------------------------------------------------------------------
    @property
    def quantized_weight(self) -> QuantizedTensor:
        """The packed weight as a `QuantizedTensor` (views of the buffers, no copy)."""
        return weight_view(
            buffers(self, "weight"), Format.NVFP4, (self.out_features, self.in_features), LM_HEAD_WEIGHT_BLOCK
        )

    # --- forward ---------------------------------------------------------------------------------
    def _label(self) -> str:
        return self.name or f"SharqLMHead({self.in_features}->{self.out_features})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_layer_input(self, x)
        if x.numel() == 0:
            resolve_lm_head_backend(self.options.backend, x)  # an unavailable backend errors even on empty input
            return x.new_zeros(*x.shape[:-1], self.out_features)
        return lm_head_linear(x, self.quantized_weight, self.bias, self.options.backend)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight=nvfp4-{LM_HEAD_WEIGHT_BLOCK} ({self.config.weight_scale.value} scales), "
            f"input=model dtype, backend={self.options.backend.value}"
        )
