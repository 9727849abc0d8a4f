"""`save_quantized`: write a model quantized by `sharq.quantize_` as a checkpoint folder (format.py).

The packed FP4 payload, the block scales and the global scales are written as they are held — no
dense copy of a quantized weight exists at any point — together with every other tensor of the
model in its dtype, the model's config (plus `quantization_config`, record.py), its generation
config and, when given, the tokenizer. config.json is written last: a folder without it is an
interrupted save, and no loader takes it for a checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..config import preset_name
from ..models.architectures import find_architecture
from ..progress import with_progress
from .format import (
    CRC_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointError,
    dtype_name,
    parse_size,
    shard_name,
    tensor_crc32,
)
from .reader import is_sharq_checkpoint
from .record import CheckpointRecord, module_entry_weights
from .tensors import global_scale_names, model_tensors, module_entry, quantized_modules, storage_bytes

__all__ = ["save_quantized", "SavedCheckpoint", "check_output_folder"]


@dataclasses.dataclass
class SavedCheckpoint:
    """What `save_quantized` wrote."""

    path: Path
    files: list[str]  # safetensors files (and the index when sharded)
    file_bytes: int  # bytes of the safetensors files
    tensors: int  # tensors stored
    record: CheckpointRecord

    def summary(self) -> str:
        rec = self.record
        what = rec.preset or "custom config"
        if rec.config.quantizes_lm_head:
            what += f", lm_head {rec.config.lm_head.value}"
        return (
            f"wrote {self.path}: {len(rec.modules)} quantized modules ({what}), "
            f"{rec.quantized_weights:,} quantized weights at {rec.weight_bits:.3f} bits each, "
            f"{self.tensors} tensors in {len([f for f in self.files if f.endswith('.safetensors')])} file(s), "
            f"{self.file_bytes / 2**20:.1f} MiB"
        )


def check_output_folder(root: str | os.PathLike, overwrite: bool = False) -> list[Path]:
    """Raise CheckpointError unless a checkpoint may be written to `root`; return what it would replace.

    An absent or empty folder is fine; a non-empty one only with `overwrite`, and only when it is a
    sharq checkpoint (without sub-folders) — never a folder of anything else.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"{root}: exists and is not a folder")
    entries = list(root.iterdir()) if root.exists() else []
    if not entries:
        return []
    if not overwrite:
        raise CheckpointError(f"{root}: the folder is not empty; choose a new one, or overwrite it (--force)")
    if not is_sharq_checkpoint(root):
        raise CheckpointError(f"{root}: the folder is not empty and not a sharq checkpoint; refusing to overwrite it")
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            raise CheckpointError(f"{root}: holds a folder {entry.name!r}; refusing to overwrite it")
    return entries


def _shards(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Consecutive groups of tensor names of at most `limit` bytes each (a larger tensor alone)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def save_quantized(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    tokenizer=None,
    max_shard_size: int | str = "4GB",
    overwrite: bool = False,
    progress: bool | None = None,
) -> SavedCheckpoint:
    """Write `model` (a transformers model after `sharq.quantize_`) to the folder `path`.

    tokenizer:       saved alongside (`tokenizer.save_pretrained`), so `sharq generate DIR` works.
    max_shard_size:  bytes per safetensors file ("500MB", "2GB", an int); above it the tensors are
                     split into shards listed by model.safetensors.index.json.
    overwrite:       replace an existing sharq checkpoint in `path` (never any other non-empty folder).
    progress:        progress bar over the tensors (None: only on a terminal).

    Raises CheckpointError (a ValueError) for a model without sharq modules, modules with different
    configs, a tensor still on the meta device, or a folder it must not write into.
    """
    from safetensors.torch import save_file

    from .. import __version__

    config_obj = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not hasattr(config_obj, "save_pretrained"):
        raise TypeError(f"save_quantized needs a transformers model with a .config, got {type(model).__name__}")
    modules = quantized_modules(model)
    if not modules:
        raise CheckpointError("the model has no sharq module; quantize it first with sharq.quantize_(model, preset)")
    configs = {m.config for m in modules.values()}
    if len(configs) != 1:
        raise CheckpointError(f"the model's sharq modules use {len(configs)} different configs; a checkpoint holds one")
    config = configs.pop()
    limit = parse_size(max_shard_size)
    tensors, tied = model_tensors(model)
    for name, tensor in tensors.items():
        if tensor.is_meta:
            raise CheckpointError(f"tensor {name!r} is on the meta device (no data); cannot save the model")
        dtype_name(tensor.dtype)  # refuses a dtype safetensors cannot hold, before anything is written

    entries = {fqn: module_entry(m) for fqn, m in modules.items()}
    weights = sum(module_entry_weights(e) for e in entries.values())
    report = getattr(model, "sharq_report", None)
    arch = find_architecture(model)
    record = CheckpointRecord(
        config=config,
        preset=preset_name(config),
        model_class=type(model).__name__,
        architecture=report.architecture if report is not None else (arch.name if arch else "generic"),
        modules=entries,
        tied_weights=tied,
        quantized_weights=weights,
        weight_bits=round(8.0 * storage_bytes(modules) / weights, 6),
        sharq_version=__version__,
    )

    root = Path(path)
    for entry in check_output_folder(root, overwrite):
        entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    scale_names = global_scale_names(modules)
    shards = _shards({n: t.numel() * t.element_size() for n, t in tensors.items()}, limit)
    names = [SINGLE_FILE] if len(shards) == 1 else [shard_name(i + 1, len(shards)) for i in range(len(shards))]
    shard_of = {name: i for i, shard in enumerate(shards) for name in shard}
    weight_map: dict[str, str] = {}
    file_bytes = 0
    data: dict[str, torch.Tensor] = {}
    crc: dict[str, str] = {}
    storages: set[int] = set()
    for name in with_progress(list(tensors), enabled=progress, desc="writing", unit="tensor"):
        t = tensors[name].detach().to("cpu").contiguous()
        if name in scale_names:
            t = t.view(torch.float32)  # the int32 bits of s_w, stored as the FP32 value
        if t.untyped_storage().data_ptr() in storages:  # safetensors refuses tensors sharing memory
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        data[name], crc[name] = t, tensor_crc32(t)
        file = names[shard_of[name]]
        weight_map[name] = file
        if name == shards[shard_of[name]][-1]:
            save_file(
                data,
                str(root / file),
                metadata={"format": "pt", FORMAT_KEY: str(FORMAT_VERSION), CRC_KEY: json.dumps(crc, sort_keys=True)},
            )
            file_bytes += (root / file).stat().st_size
            data, crc, storages = {}, {}, set()
    if len(names) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (root / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        names.append(INDEX_FILE)

    if tokenizer is not None:
        tokenizer.save_pretrained(str(root))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(str(root))
    hf_config = copy.deepcopy(config_obj)
    hf_config.architectures = [type(model).__name__]
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        hf_config.dtype = dtype
    hf_config.quantization_config = record.to_dict()
    hf_config.save_pretrained(str(root))  # config.json, last
    return SavedCheckpoint(root, names, file_bytes, len(tensors), record)
