"""What a sharq checkpoint folder must pass before vLLM builds anything from it (no vLLM import).

`check_for_serving(path)` runs the checks of `sharq.load_quantized` that need no model — the
record (versions first), the files, their headers, every tensor's CRC-32 — and the serving
limits: an architecture the vLLM method serves, the NVFP4 format (the packed payload it loads).
Every refusal is a `CheckpointError` (a ValueError) with a one-line message naming the problem.
"""

from __future__ import annotations

import os

from ..checkpoint.format import CONFIG_FILE, CheckpointError, tensor_crc32
from ..checkpoint.reader import open_checkpoint
from ..checkpoint.record import CheckpointRecord
from ..config import Format
from .names import SERVED_ARCHITECTURES

__all__ = ["check_record_for_serving", "check_for_serving"]


def check_record_for_serving(record: CheckpointRecord, where: str) -> None:
    """Refuse a record the vLLM method does not serve (architecture, format, MoE experts)."""
    if record.architecture not in SERVED_ARCHITECTURES:
        raise CheckpointError(
            f"{where}: sharq's vLLM method does not serve architecture {record.architecture!r} "
            f"({record.model_class}); served: {', '.join(SERVED_ARCHITECTURES)}"
        )
    if record.config.format is not Format.NVFP4:
        raise CheckpointError(
            f"{where}: sharq's vLLM method serves NVFP4 checkpoints; this one is {record.config.format.value}"
        )
    if record.config.quantizes_lm_head:
        raise CheckpointError(
            f"{where}: sharq's vLLM method does not serve a weight-only quantized lm_head "
            f"(config.lm_head={record.config.lm_head.value!r}); quantize without it to serve the model"
        )
    experts = [fqn for fqn, e in record.modules.items() if e["type"] != "linear"]
    if experts:
        raise CheckpointError(f"{where}: MoE experts ({experts[0]!r}) are not served by sharq's vLLM method")


def check_for_serving(path: str | os.PathLike, *, verify: bool = True) -> CheckpointRecord:
    """The record of the checkpoint folder `path`, after every check (CRC-32s too when `verify`)."""
    ckpt = open_checkpoint(path)
    check_record_for_serving(ckpt.record, str(ckpt.root / CONFIG_FILE))
    if verify:
        from safetensors import safe_open

        for file in ckpt.files:
            with safe_open(str(file), framework="pt", device="cpu") as reader:
                for name in ckpt.names_in(file):
                    got = tensor_crc32(reader.get_tensor(name))
                    if got != ckpt.crc32[name]:
                        raise CheckpointError(
                            f"{file}: tensor {name!r} fails its checksum (CRC-32 {got}, recorded "
                            f"{ckpt.crc32[name]}); the file is corrupt"
                        )
    return ckpt.record
