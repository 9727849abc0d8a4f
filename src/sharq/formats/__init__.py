"""Reference numerics of the 4-bit formats (SPEC §1–3): pure torch, no Triton."""

from .elements import decode_e2m1, decode_s1p2, round_to_e2m1_codes, round_to_s1p2_codes
from .hif4 import quantize_hif4
from .mxfp4 import quantize_mxfp4
from .nvfp4 import nvfp4_global_scale, quantize_nvfp4
from .pack import pack_nibbles, unpack_nibbles
from .quantized import QuantizedTensor
from .registry import quantize_tensor
from .scales import decode_e4m3, decode_e6m2, decode_e8m0, round_e4m3, round_e6m2

__all__ = [
    "QuantizedTensor",
    "quantize_tensor",
    "quantize_nvfp4",
    "quantize_mxfp4",
    "quantize_hif4",
    "nvfp4_global_scale",
    "round_to_e2m1_codes",
    "decode_e2m1",
    "round_to_s1p2_codes",
    "decode_s1p2",
    "pack_nibbles",
    "unpack_nibbles",
    "round_e4m3",
    "decode_e4m3",
    "round_e6m2",
    "decode_e6m2",
    "decode_e8m0",
]
