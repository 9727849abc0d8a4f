"""sharq — SharQ activation quantization (sparse FP4 backbone + dense FP4 residual) for LLM inference.

Public API:
  SharqConfig, PRESETS           the quantization scheme and its named presets
  decompose(x, config)           dequantized backbone + residual + global scale(s) of an activation
  prepare_activation(x, config)  the packed quantized terms of an activation
  quantize(x, format, block)     block-quantize one tensor (NVFP4 / MXFP4 / HiF4) to packed storage
  quantize_weight(w, config)     the packed weight payload of SPEC §6
  SharqLinear                    nn.Module holding the packed weight, computing SPEC §7
  SharqLMHead                    the opt-in weight-only NVFP4-16 lm_head (SharqConfig.lm_head, SPEC §9)
  quantize_(model, config)       swap a transformers decoder's linears in place, RMSNorm fused
  save_quantized(model, dir)     write the quantized model (packed FP4 safetensors + config.json)
  load_quantized(dir)            rebuild it without the original weights, bit-identical

After `import sharq`, transformers' `from_pretrained(dir)` loads such a folder as `load_quantized`
does (quant_method "sharq" is registered when transformers' quantizer registry is imported).
"""

from .checkpoint import CheckpointError, load_quantized, load_tokenizer, save_quantized
from .config import PRESETS, Backend, Format, Granularity, MaskSpec, Operand, Residual, SharqConfig, parse_mask
from .formats import QuantizedTensor, quantize
from .metrics import sqnr_db
from .models import ConversionReport, quantize_
from .nn import SharqLinear, SharqLMHead
from .ops import quantize_weight, sharq_linear
from .sparse import Decomposition, PreparedActivation, decompose, nm_mask, prepare_activation

__version__ = "0.1.0"

from .checkpoint.transformers_hook import install as _install_transformers_quantizer  # noqa: E402

_install_transformers_quantizer()

__all__ = [
    "PRESETS",
    "Backend",
    "Operand",
    "Format",
    "Granularity",
    "MaskSpec",
    "Residual",
    "SharqConfig",
    "parse_mask",
    "QuantizedTensor",
    "quantize",
    "quantize_weight",
    "sharq_linear",
    "SharqLinear",
    "SharqLMHead",
    "Decomposition",
    "PreparedActivation",
    "decompose",
    "prepare_activation",
    "nm_mask",
    "sqnr_db",
    "quantize_",
    "ConversionReport",
    "save_quantized",
    "load_quantized",
    "load_tokenizer",
    "CheckpointError",
    "__version__",
]
