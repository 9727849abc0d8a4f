"""`SharqVllmConfig`: the `sharq` quantization method of vLLM (imports vLLM; registered by
`sharq.serving.register`, the `vllm.general_plugins` entry point).

vLLM builds it from config.json's `quantization_config` — the record `sharq quantize` writes — and
then calls `maybe_update_config` with the model folder, where the whole folder is checked as
`sharq.load_quantized` checks it (versions, files, headers, every tensor's CRC-32) before any
weight is loaded. The class lives at module level: vLLM pickles it to the engine process.

Granularity: serving runs `token` (SPEC §3). A checkpoint recorded with `tensor` granularity is
served with `token` and says so once in the log: its packed weights do not depend on the
activation granularity, and `tensor` would let one request's activations set the scale of every
other request batched with it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase

from ..checkpoint.format import QUANT_METHOD, CheckpointError
from ..checkpoint.record import CheckpointRecord
from ..config import Granularity
from .names import DROPPED_SUFFIXES, logical_modules
from .verify import check_for_serving, check_record_for_serving

__all__ = ["SharqVllmConfig"]

log = logging.getLogger("sharq.serving")


class SharqVllmConfig(QuantizationConfig):
    """The checkpoint's record (`CheckpointRecord`) and the SharqConfig its layers are served with."""

    def __init__(self, record: CheckpointRecord) -> None:
        super().__init__()
        self.record = record
        self.serving_config = record.config.replace(granularity=Granularity.TOKEN)
        if record.config.granularity is not Granularity.TOKEN:
            log.warning(
                "sharq: the checkpoint was quantized with %r granularity; vLLM serves it with 'token' "
                "(one activation scale per row: requests batched together never share a scale)",
                record.config.granularity.value,
            )

    # --- what vLLM asks every method -------------------------------------------------------------
    def get_name(self) -> str:
        return QUANT_METHOD

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 80  # the Triton kernels' bf16 MMAs (Ampere and later); the CPU is not checked

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # the record is config.json's quantization_config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SharqVllmConfig:
        where = f"{'config.json'} quantization_config"
        record = CheckpointRecord.from_dict(config, where)  # versions first, then every field
        check_record_for_serving(record, where)
        return cls(record)

    def maybe_update_config(self, model_name: str, hf_config: Any = None, revision: str | None = None) -> None:
        """Check the whole folder before vLLM loads anything from it (CheckpointError otherwise)."""
        if not os.path.isdir(model_name):
            raise CheckpointError(f"{model_name}: sharq serves local checkpoint folders written by `sharq quantize`")
        check_for_serving(model_name)

    # --- the layers ------------------------------------------------------------------------------
    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from vllm.model_executor.layers.fused_moe import RoutedExperts

        if isinstance(layer, RoutedExperts):
            raise CheckpointError(f"sharq: MoE layer {prefix} is not served by sharq's vLLM method")
        if not isinstance(layer, LinearBase):
            return None  # embeddings, lm_head, attention: the model dtype
        from .vllm_linear import SharqLinearMethod

        names = logical_modules(prefix, self.packed_modules_mapping)
        found = [n for n in names if n in self.record.modules]
        if not found:
            return UnquantizedLinearMethod()
        if len(found) != len(names):
            missing = sorted(set(names) - set(found))
            raise CheckpointError(
                f"sharq: vLLM layer {prefix} fuses {names}, but the checkpoint quantized only "
                f"{found} (missing {missing})"
            )
        return SharqLinearMethod(self.serving_config, names, [self.record.modules[n] for n in names])

    @staticmethod
    def get_checkpoint_weight_mapper():
        """Drop the tensors `sharq quantize` writes that vLLM's models do not have (rotary tables)."""
        from vllm.model_executor.models.utils import WeightsMapper

        return WeightsMapper(orig_to_new_suffix={suffix: None for suffix in DROPPED_SUFFIXES})
