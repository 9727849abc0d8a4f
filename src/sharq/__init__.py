"""sharq — SharQ activation quantization (sparse FP4 backbone + dense FP4 residual) for LLM inference.

Public API (README, docs/usage.md):
  SharqConfig, PRESETS               the quantization scheme (what a checkpoint records) and its presets
  quantize_(model, config, ...)      swap a transformers decoder's linears in place, RMSNorm fused
  save_quantized(model, dir)         write the quantized model (packed FP4 safetensors + config.json)
  load_quantized(dir, ...)           rebuild it without the original weights, bit-identical
  load_tokenizer(dir)                the tokenizer saved beside it
  set_runtime_options(model, ...)    backend ("auto" | "reference" | "triton") and NaN checks: how a
                                     model runs, never what it computes (RuntimeOptions)
  SharqLinear                        nn.Module holding the packed weight, computing SPEC §7
  SharqLMHead                        the opt-in weight-only NVFP4-16 lm_head (SharqConfig.lm_head, SPEC §9)
  decompose(x, config)               dequantized backbone + residual + global scale(s) of an activation
  prepare_activation(x, config)      the packed quantized terms of an activation
  quantize_weight(w, config)         the packed weight payload of SPEC §6
  sharq_linear(x, w, bias, config)   the functional linear
  quantize_tensor(x, format, block)  block-quantize one tensor (NVFP4 / MXFP4 / HiF4) to packed storage
                                     (`quantize`: its deprecated name, removed in the next release)

After `import sharq`, transformers' `from_pretrained(dir)` loads such a folder as `load_quantized`
does (quant_method "sharq" is registered when transformers' quantizer registry is imported).
"""

from __future__ import annotations

import warnings

from .checkpoint import CheckpointError, load_quantized, load_tokenizer, save_quantized
from .checkpoint.transformers_hook import install as _install_transformers_quantizer  # noqa: E402
from .config import PRESETS, Format, Granularity, LmHead, Operand, Residual, SharqConfig, WeightScale
from .formats import QuantizedTensor, quantize_tensor
from .models import ConversionReport, quantize_
from .nn import SharqLinear, SharqLMHead
from .ops import quantize_weight, sharq_linear
from .options import Backend, RuntimeOptions, set_runtime_options
from .sparse import Decomposition, PreparedActivation, decompose, prepare_activation
from .version import __version__

_install_transformers_quantizer()


def quantize(*args, **kwargs) -> QuantizedTensor:
    """Deprecated name of `quantize_tensor` (one tensor; `quantize_` is the model-level function)."""
    warnings.warn(
        "sharq.quantize is deprecated and will be removed in the next release; use "
        "sharq.quantize_tensor (one tensor) or sharq.quantize_ (a model, in place)",
        DeprecationWarning,
        stacklevel=2,
    )
    return quantize_tensor(*args, **kwargs)


__all__ = [
    "SharqConfig",
    "PRESETS",
    "Format",
    "Granularity",
    "Operand",
    "Residual",
    "WeightScale",
    "LmHead",
    "Backend",
    "RuntimeOptions",
    "set_runtime_options",
    "quantize_",
    "ConversionReport",
    "save_quantized",
    "load_quantized",
    "load_tokenizer",
    "CheckpointError",
    "SharqLinear",
    "SharqLMHead",
    "decompose",
    "Decomposition",
    "prepare_activation",
    "PreparedActivation",
    "quantize_weight",
    "sharq_linear",
    "quantize_tensor",
    "QuantizedTensor",
    "__version__",
]
