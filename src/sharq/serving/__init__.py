"""Serving sharq checkpoints in vLLM: the `sharq` quantization method (docs/serving.md).

`pip install "sharq[vllm]"` registers `register` under the entry point group
`vllm.general_plugins`; vLLM calls it in every process it starts. It imports vLLM only when
called, and calling it twice changes nothing.

  register()            make quant_method "sharq" known to vLLM (idempotent)
  tensor_parallel       which K slices keep SharQ's numerics; the row-parallel activation scale
  names, verify         checkpoint names vs vLLM's, the checks run before anything is loaded
  vllm_config           SharqVllmConfig (vLLM's QuantizationConfig); vllm_linear: SharqLinearMethod
"""

from __future__ import annotations

__all__ = ["register"]

_registered = False


def register() -> None:
    """Register the `sharq` quantization method with vLLM (the `vllm.general_plugins` entry point)."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, register_quantization_config

    from ..checkpoint.format import QUANT_METHOD
    from .vllm_config import SharqVllmConfig

    if QUANT_METHOD not in QUANTIZATION_METHODS:
        register_quantization_config(QUANT_METHOD)(SharqVllmConfig)
    _registered = True
