"""The on-disk pieces of a sharq checkpoint: file names, safetensors headers, dtypes, checksums.

A checkpoint folder holds

  config.json                         the model's Hugging Face config + `quantization_config` (record.py)
  model.safetensors                   every tensor of the model, or, above `max_shard_size`,
  model-0000i-of-0000n.safetensors    shards listed by
  model.safetensors.index.json        {"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}
  generation_config.json, tokenizer files   when the model / a tokenizer had them

Tensors are named as in the model (`model.layers.0.self_attn.q_proj.weight_codes`). A quantized
module's weight is stored as its packed buffers (`<prefix>_codes`, `<prefix>_scales`,
`<prefix>_global_scale`, HiF4's `<prefix>_exponents8/4`, with prefix `weight` for a linear and
`gate`/`up`/`down` for experts); the global scale is written as FP32 (in memory it is kept as its
int32 bit pattern). Each file's safetensors metadata carries a CRC-32 of every tensor's bytes.

The safetensors header is parsed here (8-byte little-endian length, then JSON) rather than through
the library, so that a truncated or damaged file is reported with the tensor it cuts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from pathlib import Path

import torch

__all__ = [
    "CheckpointError",
    "QUANT_METHOD",
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "SINGLE_FILE",
    "INDEX_FILE",
    "CRC_KEY",
    "TensorInfo",
    "read_header",
    "dtype_name",
    "tensor_crc32",
    "shard_name",
    "parse_size",
    "weight_storage_field",
    "STORAGE_FIELDS",
]

QUANT_METHOD = "sharq"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CRC_KEY = "sharq_crc32"  # safetensors metadata: JSON {tensor name: CRC-32 of its bytes, 8 hex digits}
FORMAT_KEY = "sharq_format_version"

# Buffers of a quantized module that hold its packed weight (what "bits per weight" counts).
STORAGE_FIELDS = ("codes", "scales", "global_scale", "exponents8", "exponents4")

_DTYPES: dict[torch.dtype, tuple[str, int]] = {
    torch.float64: ("F64", 8),
    torch.float32: ("F32", 4),
    torch.float16: ("F16", 2),
    torch.bfloat16: ("BF16", 2),
    torch.int64: ("I64", 8),
    torch.int32: ("I32", 4),
    torch.int16: ("I16", 2),
    torch.int8: ("I8", 1),
    torch.uint8: ("U8", 1),
    torch.bool: ("BOOL", 1),
    torch.float8_e4m3fn: ("F8_E4M3", 1),
    torch.float8_e5m2: ("F8_E5M2", 1),
}
_ITEMSIZE = {name: size for name, size in _DTYPES.values()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or loaded; the message names the file and the tensor or field."""


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype ("BF16", "U8", …)."""
    try:
        return _DTYPES[dtype][0]
    except KeyError:
        raise CheckpointError(f"dtype {dtype} cannot be stored in a sharq checkpoint") from None


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it: dtype name, shape, byte range in the data."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """({tensor name: TensorInfo}, metadata) of a safetensors file, checked against the file's size.

    Raises CheckpointError naming the file — and the first tensor whose bytes are cut, when the
    file is truncated.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise CheckpointError(
                    f"{path}: truncated or not a safetensors file (header of {n} bytes, file of {size} bytes)"
                )
            raw = fh.read(n)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    data_size = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        tensors[name] = info = _tensor_info(path, name, entry)
        if info.end > data_size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} needs bytes {info.start}..{info.end} of the data, "
                f"the file holds {data_size}"
            )
    covered = max((t.end for t in tensors.values()), default=0)
    if covered != data_size:
        raise CheckpointError(f"{path}: {data_size - covered} bytes after the last tensor; the file is damaged")
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _tensor_info(path: Path, name: str, entry: object) -> TensorInfo:
    try:
        dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        if dtype not in _ITEMSIZE or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: tensor {name!r} has a corrupt header entry {entry!r}") from None
    numel = 1
    for d in shape:
        numel *= d
    if end - start != numel * _ITEMSIZE[dtype]:
        raise CheckpointError(
            f"{path}: tensor {name!r} ({dtype} {list(shape)}) spans {end - start} bytes, expected "
            f"{numel * _ITEMSIZE[dtype]}; the header is corrupt"
        )
    return TensorInfo(dtype, shape, start, end)


def tensor_crc32(t: torch.Tensor) -> str:
    """CRC-32 of a tensor's bytes (its memory layout, row-major), as 8 hex digits."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return f"{zlib.crc32(flat.view(torch.uint8).numpy()) & 0xFFFFFFFF:08x}"


def shard_name(i: int, n: int) -> str:
    """File name of shard i (1-based) of n, as Hugging Face names them."""
    return f"model-{i:05d}-of-{n:05d}.safetensors"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | str) -> int:
    """Bytes of `size`: an int, or a string like "500MB", "2GB", "1GiB"."""
    if isinstance(size, bool):
        raise TypeError(f"a size must be an int or a string like '2GB', got {size!r}")
    if isinstance(size, int):
        value = size
    elif isinstance(size, str) and (m := _SIZE_RE.match(size)):
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    else:
        raise ValueError(f"size {size!r} is not a byte count like 500MB, 2GB or 1GiB")
    if value <= 0:
        raise ValueError(f"size {size!r} must be positive")
    return value


def weight_storage_field(name: str, module_fqn: str) -> str | None:
    """The storage field ("codes", "scales", …) when tensor `name` is part of the packed weight of the
    quantized module `module_fqn` (e.g. `<fqn>.weight_scales`, `<fqn>.down_codes`), else None."""
    if not name.startswith(module_fqn + "."):
        return None
    rest = name[len(module_fqn) + 1 :]
    if "." in rest:
        return None
    return next((f for f in STORAGE_FIELDS if rest.endswith("_" + f)), None)
