"""`load_quantized`: rebuild a saved sharq model without its original weights, streaming its tensors.

1. `open_checkpoint` checks config.json, the record (versions first), the files and their headers.
2. The model's skeleton is built from config.json with its parameters on the meta device (no
   memory), and the recorded modules are replaced by empty SharqLinear / SharqExperts (meta too).
3. The skeleton's tensor names must be exactly the stored ones (tied aliases aside), each with the
   stored shape and dtype — all of it checked before a byte of tensor data is read.
4. Tensors are read one at a time (safetensors), their CRC-32 checked, and put in place on `device`:
   at no point does a dense copy of a quantized weight, or a second copy of the model, exist.
5. The norms are fused (checked bit for bit against the architecture's norm, as `quantize_` does).

Every failure is a CheckpointError (a ValueError) naming the file and the tensor or field; a
model is returned only when all of it passed.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
from torch import nn

from ..config import Backend
from ..models.convert import convert_empty_
from ..progress import with_progress
from .format import CONFIG_FILE, INDEX_FILE, SINGLE_FILE, CheckpointError, dtype_name, tensor_crc32
from .reader import CheckpointFiles, open_checkpoint
from .tensors import global_scale_names, module_entry, stored_dtype

__all__ = ["load_quantized", "load_tokenizer"]


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


def _all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer name of `model` (aliases included) -> its tensor."""
    named = itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    return dict(named)


def _check_layout(ckpt: CheckpointFiles, model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The skeleton tensors to fill, by name, after checking names, shapes and dtypes against the files."""
    where = ckpt.root / CONFIG_FILE
    for fqn, entry in ckpt.record.modules.items():
        built = module_entry(modules[fqn])
        for key in ("type", "shape", "bias"):
            if built[key] != entry[key]:
                raise CheckpointError(
                    f"{where}: quantization_config.modules[{fqn!r}] records {key} {entry[key]!r}, the model "
                    f"built from config.json has {built[key]!r} there"
                )
    skeleton = _all_tensors(model)
    tied = ckpt.record.tied_weights
    for alias, target in tied.items():
        if alias not in skeleton or target not in skeleton or target in tied:
            raise CheckpointError(
                f"{where}: quantization_config.tied_weights ties {alias!r} to {target!r}, which the model built "
                "from config.json does not have"
            )
        if skeleton[alias].shape != skeleton[target].shape:
            raise CheckpointError(f"{where}: tied tensors {alias!r} and {target!r} have different shapes")
    wanted = {name: t for name, t in skeleton.items() if name not in tied}
    stored = ckpt.tensors
    missing = [name for name in wanted if name not in stored]
    if missing:
        files = ckpt.root / (SINGLE_FILE if len(ckpt.files) == 1 else INDEX_FILE)
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            f"{files}: tensor {missing[0]!r} is missing{more}; the checkpoint does not match the model of config.json"
        )
    for name, (file, _) in stored.items():
        if name not in wanted:
            why = "is tied to another tensor" if name in tied else "is not a tensor of the model built from config.json"
            raise CheckpointError(f"{file}: unexpected tensor {name!r}: it {why}")
    scale_names = global_scale_names(modules)
    quantized = tuple(f"{fqn}." for fqn in modules)
    for name, tensor in wanted.items():
        file, info = stored[name]
        want = dtype_name(stored_dtype(name, tensor, scale_names))
        # a tensor outside the quantized modules may keep another float dtype (the one it was saved in)
        both_float = info.dtype.startswith(("F", "BF")) and tensor.is_floating_point() and not name.startswith(quantized)
        if tuple(info.shape) != tuple(tensor.shape) or (info.dtype != want and not both_float):
            raise CheckpointError(
                f"{file}: tensor {name!r} is {info.dtype} {list(info.shape)}, the model built from config.json "
                f"expects {want} {list(tensor.shape)}"
            )
    return wanted


def _put(model: nn.Module, name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(value, requires_grad=like.requires_grad and value.is_floating_point())
    else:
        module._buffers[attr] = value


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
    backend: str | Backend | None = None,
    verify: bool = True,
    progress: bool | None = None,
) -> nn.Module:
    """The model saved in `path` by `sharq.save_quantized` / `sharq quantize`, in eval mode.

    device:   where the tensors go ("cpu" default, "cuda", "cuda:1").
    dtype:    cast every floating-point tensor (embeddings, norms, biases, rotary tables) to it, as
              `model.to(dtype)` would; the packed weights are integers and never change. None keeps
              the stored dtypes — the loaded model then computes bit-identically to the saved one.
    backend:  override the recorded `SharqConfig.backend` ("auto" | "reference" | "triton").
    verify:   check every tensor's CRC-32 against the one recorded when it was written.
    progress: progress bar over the tensors (None: only on a terminal).

    The record is on `model.sharq_checkpoint`, the conversion on `model.sharq_report`.
    """
    device = _resolve_device(device)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    ckpt = open_checkpoint(path)
    record = ckpt.record
    config = record.config if backend is None else record.config.replace(backend=backend)
    model = _skeleton(ckpt)
    try:
        conversion = convert_empty_(model, config, record.targets, device="meta")
    except ValueError as err:
        raise CheckpointError(f"{ckpt.root / CONFIG_FILE}: quantization_config.modules: {err}") from None
    wanted = _check_layout(ckpt, model, conversion.modules)
    scale_names = global_scale_names(conversion.modules)

    from safetensors import SafetensorError, safe_open

    bar = with_progress(range(len(wanted)), enabled=progress, desc="loading", unit="tensor")
    counter = iter(bar)
    for file in ckpt.files:
        name = None
        try:
            with safe_open(str(file), framework="pt", device="cpu") as reader:
                for name in ckpt.names_in(file):
                    value = reader.get_tensor(name)
                    if verify and (got := tensor_crc32(value)) != ckpt.crc32[name]:
                        raise CheckpointError(
                            f"{file}: tensor {name!r} fails its checksum (CRC-32 {got}, recorded "
                            f"{ckpt.crc32[name]}); the file is corrupt"
                        )
                    if name in scale_names:
                        value = value.view(torch.int32)  # the module keeps the FP32 bits as int32
                    elif dtype is not None and value.is_floating_point():
                        value = value.to(dtype)
                    _put(model, name, value.to(device), wanted[name])
                    next(counter, None)
        except SafetensorError as err:
            at = f" at tensor {name!r}" if name else ""
            raise CheckpointError(f"{file}: cannot be read{at} ({err})") from None
    for _ in counter:  # closes the bar
        pass
    for alias, target in record.tied_weights.items():
        owner, _, attr = alias.rpartition(".")
        t_owner, _, t_attr = target.rpartition(".")
        source = model.get_submodule(t_owner)
        value = source._parameters.get(t_attr, source._buffers.get(t_attr))
        module = model.get_submodule(owner)
        (module._parameters if attr in module._parameters else module._buffers)[attr] = value
    left = [name for name, t in _all_tensors(model).items() if t.is_meta]
    # a tensor a module keeps as a plain attribute (not registered) is not in any checkpoint
    left += [f"{fqn}.{attr}" for fqn, m in model.named_modules() for attr, v in vars(m).items()
             if isinstance(v, torch.Tensor) and v.is_meta]
    if left:
        raise CheckpointError(
            f"{ckpt.root}: tensor {left[0]!r} of {ckpt.record.model_class} was not loaded (not a registered "
            "parameter or buffer); sharq cannot rebuild this model from a checkpoint"
        )
    try:
        conversion.finish()
    except ValueError as err:
        raise CheckpointError(f"{ckpt.root / CONFIG_FILE}: {err}") from None
    _generation_config(model, ckpt.root)
    model.sharq_checkpoint = record
    return model.eval()


def _generation_config(model: nn.Module, root: Path) -> None:
    if not (root / "generation_config.json").is_file() or not hasattr(model, "generation_config"):
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(str(root), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"{root / 'generation_config.json'}: cannot be read ({err})") from None


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved with a checkpoint (`save_quantized(..., tokenizer=...)`, `sharq quantize`)."""
    root = Path(path)
    if not ((root / "tokenizer.json").is_file() or (root / "tokenizer_config.json").is_file()):
        raise CheckpointError(f"{root}: no tokenizer was saved with this checkpoint (tokenizer.json is missing)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except Exception as err:
        raise CheckpointError(f"{root}: the saved tokenizer cannot be loaded ({err})") from None
