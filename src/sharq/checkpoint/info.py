"""What a checkpoint holds, from its headers alone (no tensor read): `sharq inspect DIR`.

`checkpoint_info(path)` returns a JSON-ready dict: the record (preset, config, versions, model
class), the files and their sizes, and the bits per quantized weight *measured on disk* — bytes of
every packed-weight tensor (codes, block scales, global scales, HiF4 exponents) of the quantized
modules, times 8, over their logical weights. Biases and every other tensor are counted apart.
"""

from __future__ import annotations

import os
from typing import Any

from .format import weight_storage_field
from .reader import open_checkpoint
from .record import module_entry_weights

__all__ = ["checkpoint_info", "format_info"]


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = open_checkpoint(path)
    record = ckpt.record
    weight_bytes = other_bytes = 0
    by_module: dict[str, int] = {fqn: 0 for fqn in record.modules}
    for name, (_, info) in ckpt.tensors.items():
        owner = name.rpartition(".")[0]
        if owner in by_module and weight_storage_field(name, owner):
            by_module[owner] += info.nbytes
            weight_bytes += info.nbytes
        else:
            other_bytes += info.nbytes
    weights = sum(module_entry_weights(e) for e in record.modules.values())
    bits = {fqn: 8.0 * by_module[fqn] / module_entry_weights(e) for fqn, e in record.modules.items()}
    heads = [fqn for fqn, e in record.modules.items() if e["type"] == "lm_head"]
    lm_head = None
    if heads:  # the weight-only quantized lm_head (config.lm_head), counted among the quantized modules
        entry = record.modules[heads[0]]
        lm_head = {
            "module": heads[0],
            "format": f"{entry['format']}-{entry['weight_block']}",
            "weight_bits": bits[heads[0]],
            "untied_from": entry.get("untied_from"),
        }
    return {
        "path": str(ckpt.root),
        "sharq_version": record.sharq_version,
        "format_version": record.format_version,
        "preset": record.preset,
        "config": record.config.to_dict(),
        "model_class": record.model_class,
        "architecture": record.architecture,
        "dtype": ckpt.config.get("dtype"),
        "quantized_modules": len(record.modules),
        "quantized_weights": weights,
        "weight_bytes": weight_bytes,
        "weight_bits": 8.0 * weight_bytes / weights,
        "weight_bits_range": [min(bits.values()), max(bits.values())],
        "other_tensor_bytes": other_bytes,
        "tensors": len(ckpt.tensors),
        "tied_weights": record.tied_weights,
        "lm_head": lm_head,
        "files": {p.name: p.stat().st_size for p in ckpt.files},
    }


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form of `checkpoint_info`."""
    cfg = info["config"]
    lines = [
        f"{info['path']}: sharq checkpoint (format {info['format_version']}, written by sharq {info['sharq_version']})",
        f"  model       {info['model_class']} ({info['architecture']}), {info['dtype']}",
        f"  preset      {info['preset'] or 'custom'}: format={cfg['format']} mask={cfg['mask']} "
        f"residual={cfg['residual']} blocks={cfg['backbone_block']}/{cfg['residual_block']}/{cfg['weight_block']} "
        f"granularity={cfg['granularity']}",
        f"  quantized   {info['quantized_modules']} modules, {info['quantized_weights']:,} weights, "
        f"{info['weight_bits']:.4f} bits/weight on disk ({info['weight_bytes']:,} bytes)",
        f"  other       {info['other_tensor_bytes']:,} bytes (embeddings, norms, biases, "
        f"{'' if info.get('lm_head') else 'lm_head, '}rotary tables)",
    ]
    head = info.get("lm_head")
    if head:
        untied = f", untied from {head['untied_from']} (which keeps its weight)" if head["untied_from"] else ""
        lines.append(
            f"  lm_head     {head['module']}: weight-only {head['format']}, {head['weight_bits']:.4f} "
            f"bits/weight, input in the model dtype{untied}"
        )
    if info["tied_weights"]:
        lines.append("  tied        " + ", ".join(f"{a} = {t}" for a, t in info["tied_weights"].items()))
    for name, size in info["files"].items():
        lines.append(f"  file        {name} ({size:,} bytes)")
    return "\n".join(lines)
