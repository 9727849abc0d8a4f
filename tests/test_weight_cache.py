"""kept_dequantized_weights: each SharqLinear decodes its weight once inside the context, and every
output stays bit for bit what it is outside."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import sharq
from sharq.formats import registry
from sharq.nn.linear import SharqLinear
from sharq.runtime.weight_cache import KeptQuantizedTensor, kept_dequantized_weights

from .tiny_models import tiny_model


@pytest.fixture
def model():
    m = tiny_model("llama", seed=3).float().eval()
    sharq.quantize_(m, "sharq-nvfp4")
    return m


def _count_decodes(monkeypatch) -> list[int]:
    calls = [0]
    original = registry.element_values

    def counting(qt, scale_block=None):
        calls[0] += 1
        return original(qt, scale_block)

    monkeypatch.setattr(registry, "element_values", counting)
    return calls


def test_outputs_are_identical_and_weights_decode_once(model, monkeypatch):
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    layers = [m for m in model.modules() if isinstance(m, SharqLinear)]
    calls = _count_decodes(monkeypatch)
    with torch.no_grad(), kept_dequantized_weights(model) as count:
        assert count == len(layers) > 0
        first = model(input_ids=ids).logits
        after_first = calls[0]
        second = model(input_ids=ids).logits
        during_second = calls[0] - after_first
    assert torch.equal(before, first) and torch.equal(before, second)
    # the second forward decodes activations only: one decode fewer per layer than the first
    assert after_first - during_second == len(layers)
    # outside the context the packed payload is read again and nothing is kept
    assert all("_kept_weight" not in m.__dict__ for m in layers)
    assert not isinstance(layers[0].quantized_weight, KeptQuantizedTensor)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_kept_tensor_remembers_per_view_and_forgets_on_copy(model):
    layer = next(m for m in model.modules() if isinstance(m, SharqLinear))
    kept = KeptQuantizedTensor.of(layer.quantized_weight)
    a = kept.dequantize(apply_global_scale=False, scale_block=16)
    assert kept.dequantize(apply_global_scale=False, scale_block=16) is a
    b = kept.dequantize()
    assert b is not a and torch.equal(b, layer.quantized_weight.dequantize())
    assert torch.equal(a, layer.quantized_weight.dequantize(apply_global_scale=False, scale_block=16))
    assert dataclasses.replace(kept).kept == {} and kept.to("cpu").kept == {}


def test_nested_context_is_refused(model):
    with kept_dequantized_weights(model):
        with pytest.raises(ValueError, match="already inside"):
            with kept_dequantized_weights(model):
                pass
    with kept_dequantized_weights(model) as count:  # usable again after exit
        assert count > 0
