"""Register sharq's quantizer (`quant_method: "sharq"`) with transformers, without importing transformers.

`install()` runs on `import sharq`. transformers' quantizer registry (`transformers.quantizers.auto`)
takes seconds to import, so sharq does not import it: when it is imported already, the quantizer
is registered at once; otherwise a finder placed first on `sys.meta_path` waits for that module
(every `from_pretrained` imports it, through transformers.modeling_utils), lets the usual finder
and loader import it, registers right after it has executed, and removes itself. Both steps are
idempotent. Without `import sharq`, transformers is left as it is.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

from .format import QUANT_METHOD

__all__ = ["install", "register"]

_REGISTRY = "transformers.quantizers.auto"


def register() -> None:
    """Add sharq's config and quantizer classes to transformers' registry (once); warn, naming the
    reason, when that cannot be done — `from_pretrained` then does not know sharq folders."""
    auto = sys.modules[_REGISTRY]
    from .transformers_quantizer import SharqHfQuantizer, SharqQuantizationConfig

    quantizers = getattr(auto, "AUTO_QUANTIZER_MAPPING", None)
    configs = getattr(auto, "AUTO_QUANTIZATION_CONFIG_MAPPING", None)
    if quantizers is None or configs is None or not hasattr(auto, "register_quantizer"):
        warnings.warn(
            f"sharq: transformers {_version()} has no quantizer registry; from_pretrained cannot load "
            "sharq checkpoints (use sharq.load_quantized)",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    if quantizers.get(QUANT_METHOD) is SharqHfQuantizer and configs.get(QUANT_METHOD) is SharqQuantizationConfig:
        return
    if QUANT_METHOD in quantizers or QUANT_METHOD in configs:
        warnings.warn(
            f"sharq: transformers already has another quantizer for quant_method {QUANT_METHOD!r} "
            f"({quantizers.get(QUANT_METHOD)}); sharq's is not registered",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    auto.register_quantization_config(QUANT_METHOD)(SharqQuantizationConfig)
    auto.register_quantizer(QUANT_METHOD)(SharqHfQuantizer)


def _version() -> str:
    return getattr(sys.modules.get("transformers"), "__version__", "?")


class _RegisterAfterExec(importlib.abc.Loader):
    """The usual loader of the registry module, then `register()`; anything else is the usual loader's."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        _uninstall()
        register()

    def __getattr__(self, name):  # get_source, get_filename, ... for inspect and linecache
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _REGISTRY:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterExec(spec.loader)
                return spec
        return None


_FINDER = _Finder()


def _uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def install() -> None:
    """Register now when transformers' registry is imported, else when it is (see the module docstring)."""
    if _REGISTRY in sys.modules:
        register()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
