"""Open a checkpoint folder without reading any tensor: config.json, the record, every file's header.

`open_checkpoint(path)` checks what can be checked from headers alone — the record's versions and
fields, which files exist, that the index and the files agree, that no tensor is stored twice and
that each file is complete — and returns where every tensor lives. Loading (load.py) and
`sharq inspect` (info.py) both start here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .format import (
    CONFIG_FILE,
    CRC_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    INDEX_FILE,
    QUANT_METHOD,
    SINGLE_FILE,
    CheckpointError,
    TensorInfo,
    read_header,
)
from .record import CheckpointRecord

__all__ = ["CheckpointFiles", "open_checkpoint", "is_sharq_checkpoint", "read_config"]


@dataclasses.dataclass
class CheckpointFiles:
    root: Path
    config: dict[str, Any]  # config.json as read (quantization_config included)
    record: CheckpointRecord
    files: list[Path]  # the safetensors files, in order
    tensors: dict[str, tuple[Path, TensorInfo]]  # name -> (file, header entry)
    crc32: dict[str, str]  # name -> CRC-32 recorded when it was written

    def names_in(self, path: Path) -> list[str]:
        """Tensor names stored in `path`, in the order of their bytes."""
        items = [(info.start, name) for name, (p, info) in self.tensors.items() if p == path]
        return [name for _, name in sorted(items)]


def read_config(root: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint folder as a dict; CheckpointError naming the file when it cannot be."""
    root = Path(root)
    if not root.exists():
        raise CheckpointError(f"{root}: no such checkpoint folder")
    if not root.is_dir():
        raise CheckpointError(f"{root}: is a file, not a checkpoint folder")
    path = root / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {root} is not a sharq checkpoint folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def is_sharq_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a folder whose config.json names quant_method 'sharq' (nothing else checked)."""
    try:
        config = read_config(path)
    except CheckpointError:
        return False
    record = config.get("quantization_config")
    return isinstance(record, dict) and record.get("quant_method") == QUANT_METHOD


def _file_list(root: Path) -> tuple[list[Path], dict[str, str] | None]:
    """(the safetensors files, the index's weight map — None for a single file)."""
    single, index = root / SINGLE_FILE, root / INDEX_FILE
    if single.exists() and index.exists():
        raise CheckpointError(f"{root}: both {SINGLE_FILE} and {INDEX_FILE} are present; which one is the model?")
    if single.exists():
        return [single], None
    if not index.exists():
        raise CheckpointError(f"{root}: no {SINGLE_FILE} or {INDEX_FILE}; the tensors are missing")
    weight_map = _weight_map(index)
    return sorted({root / name for name in weight_map.values()}), weight_map


def _weight_map(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f'{index}: not a safetensors index with a "weight_map" ({err!r})') from None
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file or not file.endswith(".safetensors"):
            raise CheckpointError(f"{index}: tensor {name!r} maps to {file!r}, not a .safetensors file of the folder")
        if not (index.parent / file).is_file():
            raise CheckpointError(f"{index}: tensor {name!r} maps to {file}, which is missing")
    return weight_map


def _crc_table(path: Path, metadata: dict[str, str], names: set[str]) -> dict[str, str]:
    if metadata.get(FORMAT_KEY) != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path}: safetensors metadata {FORMAT_KEY} is {metadata.get(FORMAT_KEY)!r}, expected "
            f"'{FORMAT_VERSION}'; not written by this sharq checkpoint format"
        )
    try:
        table = json.loads(metadata[CRC_KEY])
        if not isinstance(table, dict):
            raise TypeError
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(f"{path}: safetensors metadata {CRC_KEY} is missing or corrupt") from None
    if set(table) != names:
        odd = sorted(set(table) ^ names)[0]
        raise CheckpointError(
            f"{path}: the checksum table and the tensors disagree on tensor {odd!r}; the file is damaged"
        )
    return table


def open_checkpoint(path: str | os.PathLike) -> CheckpointFiles:
    """Every check that needs no tensor data; raises CheckpointError naming the file and tensor/field."""
    root = Path(path)
    config = read_config(root)
    record = CheckpointRecord.from_dict(config.get("quantization_config"), str(root / CONFIG_FILE))
    files, weight_map = _file_list(root)
    tensors: dict[str, tuple[Path, TensorInfo]] = {}
    crc32: dict[str, str] = {}
    for file in files:
        header, metadata = read_header(file)
        crc32.update(_crc_table(file, metadata, set(header)))
        for name, info in header.items():
            if name in tensors:
                raise CheckpointError(f"{file}: tensor {name!r} is also stored in {tensors[name][0].name}")
            if weight_map is not None and weight_map.get(name) != file.name:
                raise CheckpointError(
                    f"{file}: tensor {name!r} is not mapped to this file in {INDEX_FILE} "
                    f"(the index says {weight_map.get(name)!r})"
                )
            tensors[name] = (file, info)
    if weight_map is not None:
        for name, file in weight_map.items():
            if name not in tensors:
                raise CheckpointError(f"{root / file}: tensor {name!r} listed in {INDEX_FILE} is missing from the file")
    return CheckpointFiles(root, config, record, files, tensors, crc32)
