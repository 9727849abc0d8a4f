"""A model's tensors under their checkpoint names — the same rules when saving and when loading.

model_tensors(model)      every parameter and buffer (non-persistent ones too, such as the rotary
                          `inv_freq`, so that a loaded model is bit-identical even where the saved
                          one had them cast), each tensor once; names that share a tensor are "tied"
quantized_modules(model)  the SharqLinear / SharqExperts / SharqLMHead modules by qualified name
module_entry(module)      what the record says about one of them (type, shape, bias, format)
stored_dtype(...)         the dtype a tensor has in the file (the int32 global-scale bits are FP32)
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from ..nn.experts import SharqExperts
from ..nn.linear import SharqLinear
from ..nn.lm_head import SharqLMHead
from .format import weight_storage_field

__all__ = ["model_tensors", "quantized_modules", "module_entry", "global_scale_names", "storage_bytes", "stored_dtype"]


def model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({name: tensor} with each tensor object once, in module order; {alias: name} for the others)."""
    first: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    named = itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        key = id(tensor)
        if key in first:
            tied[name] = first[key]
        else:
            first[key] = name
            tensors[name] = tensor
    return tensors, tied


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {fqn: m for fqn, m in model.named_modules() if isinstance(m, (SharqLinear, SharqExperts, SharqLMHead))}


def module_entry(module: nn.Module) -> dict[str, Any]:
    """{"type", "shape", "bias", "format", "weight_block"} of a SharqLinear ([N, K]) or SharqExperts
    ([E, H, I]); a SharqLMHead: "type" "lm_head", [N, K], its own format ("nvfp4", 16), and
    "untied_from" (the parameter its weight was tied to before quantization, or None)."""
    cfg = module.config
    if isinstance(module, SharqLMHead):
        return {
            "type": "lm_head",
            "shape": [module.out_features, module.in_features],
            "bias": module.bias is not None,
            "format": module.quantized_weight.format.value,
            "weight_block": module.quantized_weight.block,
            "untied_from": module.untied_from,
        }
    if isinstance(module, SharqLinear):
        kind, shape, bias = "linear", [module.out_features, module.in_features], module.bias is not None
    elif isinstance(module, SharqExperts):
        kind, shape = "experts", [module.num_experts, module.hidden, module.intermediate]
        bias = module.gate_bias is not None
    else:
        raise TypeError(f"not a sharq module: {type(module).__name__}")
    return {"type": kind, "shape": shape, "bias": bias, "format": cfg.format.value, "weight_block": cfg.weight_block}


def global_scale_names(modules: dict[str, nn.Module]) -> set[str]:
    """Names of the int32 buffers holding FP32 global-scale bits (stored as F32 in the file)."""
    return {
        f"{fqn}.{b}"
        for fqn, m in modules.items()
        for b, _ in m.named_buffers(recurse=False)
        if weight_storage_field(f"{fqn}.{b}", fqn) == "global_scale"
    }


def storage_bytes(modules: dict[str, nn.Module]) -> int:
    """Bytes of the packed weights (codes, scales, global scales, HiF4 exponents) of `modules`; no bias."""
    return sum(
        buf.numel() * buf.element_size()
        for fqn, m in modules.items()
        for b, buf in m.named_buffers(recurse=False)
        if weight_storage_field(f"{fqn}.{b}", fqn)
    )


def stored_dtype(name: str, tensor: torch.Tensor, scale_names: set[str]) -> torch.dtype:
    """The dtype `tensor` (named `name` in the model) has in the file."""
    return torch.float32 if name in scale_names else tensor.dtype
