"""`load_quantized`: rebuild a saved sharq model without its original weights, streaming its tensors.

1. `open_checkpoint` checks config.json, the record (versions first), the files and their headers.
2. The model's skeleton is built from config.json with its parameters on the meta device (no
   memory), and the recorded modules are replaced by empty SharqLinear / SharqExperts (meta too).
3. fill.py: the skeleton's tensor names must be exactly the stored ones (tied aliases aside), each
   with the stored shape and dtype — all of it checked before a byte of tensor data is read.
4. Tensors are read one at a time (safetensors), their CRC-32 checked, and put in place on `device`:
   at no point does a dense copy of a quantized weight, or a second copy of the model, exist.
5. The norms are fused (checked bit for bit against the architecture's norm, as `quantize_` does).

transformers' `from_pretrained` runs steps 1, 3, 4 and 5 too after `import sharq` (transformers_quantizer.py).

Every failure is a CheckpointError (a ValueError) naming the file and the tensor or field; a
model is returned only when all of it passed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..options import Backend, RuntimeOptions, set_runtime_options
from .fill import convert_skeleton, fill_skeleton
from .format import CONFIG_FILE, CheckpointError
from .reader import CheckpointFiles, open_checkpoint

__all__ = ["load_quantized", "load_tokenizer", "has_tokenizer", "TOKENIZER_FILES"]


def _skeleton(ckpt: CheckpointFiles) -> nn.Module:
    """The model of config.json with every parameter and buffer on the meta device (no memory)."""
    import transformers
    from accelerate import init_empty_weights

    where = ckpt.root / CONFIG_FILE
    name = ckpt.record.model_class
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(
            f"{where}: quantization_config.model_class {name!r} is not a model class of the installed "
            f"transformers {transformers.__version__}"
        )
    try:
        hf_config = transformers.AutoConfig.from_pretrained(str(ckpt.root), local_files_only=True)
    except Exception as err:  # transformers raises many kinds for a config it cannot read
        raise CheckpointError(f"{where}: transformers cannot build a config from it ({err})") from None
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config  # the record is sharq's; transformers must not act on it
    dtype = hf_config.dtype if isinstance(getattr(hf_config, "dtype", None), torch.dtype) else torch.float32
    try:
        # every tensor, buffers included, is in the checkpoint: nothing needs memory before it is read
        with torch.device("meta"), init_empty_weights(include_buffers=True):
            model = cls._from_config(hf_config, dtype=dtype)
    except Exception as err:
        raise CheckpointError(f"{where}: cannot build {name} from it ({err})") from None
    return model.eval()


def _resolve_device(device: str | torch.device | None) -> torch.device:
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available")
    if device.type == "meta":
        raise ValueError("load_quantized loads real tensors; device 'meta' is not a place to load them")
    return device


def load_quantized(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    backend: str | Backend = "auto",
    check_finite: bool = False,
    verify: bool = True,
    progress: bool | None = None,
) -> nn.Module:
    """The model saved in `path` by `sharq.save_quantized` / `sharq quantize`, in eval mode.

    device:   where the tensors go ("cpu" default, "cuda", "cuda:1").
    dtype:    cast every floating-point tensor (embeddings, norms, biases, rotary tables) to it, as
              `model.to(dtype)` would; the packed weights are integers and never change. None keeps
              the stored dtypes — the loaded model then computes bit-identically to the saved one.
    backend, check_finite: runtime options (`sharq.options.RuntimeOptions`): "auto" | "reference" |
              "triton", and a NaN/Inf check of every layer input. Not recorded in checkpoints.
    verify:   check every tensor's CRC-32 against the one recorded when it was written.
    progress: progress bar over the tensors (None: only on a terminal).

    The record is on `model.sharq_checkpoint`, the conversion on `model.sharq_report`.
    """
    device = _resolve_device(device)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    ckpt = open_checkpoint(path)
    options = RuntimeOptions(backend=backend, check_finite=check_finite)
    model = _skeleton(ckpt)
    conversion = convert_skeleton(ckpt, model, ckpt.record.config)
    fill_skeleton(ckpt, conversion, device=device, dtype=dtype, verify=verify, progress=progress)
    set_runtime_options(model, backend=options.backend, check_finite=options.check_finite, strict=False)
    _generation_config(model, ckpt.root)
    return model.eval()


def _generation_config(model: nn.Module, root: Path) -> None:
    if not (root / "generation_config.json").is_file() or not hasattr(model, "generation_config"):
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(str(root), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"{root / 'generation_config.json'}: cannot be read ({err})") from None


# Files any of which means a folder holds a tokenizer (fast, sentencepiece, BPE or WordPiece vocabularies).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
)


def has_tokenizer(path: str | os.PathLike) -> bool:
    """True when the folder `path` holds one of TOKENIZER_FILES (nothing is loaded or checked)."""
    root = Path(path)
    return root.is_dir() and any((root / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved with a checkpoint (`save_quantized(..., tokenizer=...)`, `sharq quantize`)."""
    root = Path(path)
    if not has_tokenizer(root):
        raise CheckpointError(
            f"{root}: no tokenizer was saved with this checkpoint (no tokenizer.json or tokenizer_config.json)"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"{root}: the saved tokenizer cannot be loaded ({err})") from None
