"""Baselines that are not SharQ, swapped into the same models the same way (for comparisons).

fp8: E4M3 weights with per-channel scales and dynamic per-token E4M3 activations through
`torch._scaled_mm` — what serving engines call `fp8`.
"""

from .fp8 import E4M3_MAX, fp8_linear, quantize_rows_e4m3, quantize_weight_e4m3
from .fp8_layer import Fp8Linear, Fp8SharedInput
from .fp8_model import Fp8Report, fp8_quantize_

__all__ = [
    "E4M3_MAX",
    "fp8_linear",
    "quantize_rows_e4m3",
    "quantize_weight_e4m3",
    "Fp8Linear",
    "Fp8SharedInput",
    "Fp8Report",
    "fp8_quantize_",
]
