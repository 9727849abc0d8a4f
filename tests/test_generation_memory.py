"""A long generation loop does not grow memory, and no prepared activation outlives its step.

On a tiny quantized Llama (tests/tiny_models.py, reference backend on the CPU):
- repeated `generate` calls: after a warm-up, the tensors alive (count and storage bytes) are
  exactly the same after every call, and Python allocations made in sharq's own files stay flat;
- one long `generate` (150 steps): memory grows by the same number of bytes every step, no more
  than the KV cache (plus the growing ids and mask) takes;
- `SharedPreparation` (q/k/v and gate/up share one preparation) holds nothing between steps, and
  the prepared tensors it published are freed (weak references die), on three architectures.
`-m gpu`: the same on CUDA with the Triton backend, measured with torch.cuda.memory_allocated.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import pytest
import torch

pytest.importorskip("transformers")
from transformers import StoppingCriteria, StoppingCriteriaList  # noqa: E402

import sharq  # noqa: E402
from sharq.nn.shared_input import SharedPreparation  # noqa: E402

from .tiny_models import HEAD_DIM, KV, LAYERS, tiny_model  # noqa: E402


def live_tensors() -> tuple[int, int]:
    """(number, total bytes) of the distinct tensor storages reachable from Python objects."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            try:
                storage = obj.untyped_storage()
                key = (storage.device.type, storage.data_ptr())
            except RuntimeError:  # fake / functional tensors an earlier torch.compile left: no memory
                continue
            storages[key] = storage.nbytes()
    return len(storages), sum(storages.values())


def _model(arch: str = "llama", preset: str = "sharq-nvfp4", device: str = "cpu", backend: str = "auto", **changes):
    model = tiny_model(arch)
    config = sharq.PRESETS[preset].replace(granularity="token", **changes)
    sharq.quantize_(model, config, backend=backend)
    model.generation_config.pad_token_id = 0
    return model.to(device)


def _prompt(device: str = "cpu") -> torch.Tensor:
    return torch.randint(1, 256, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)


def _generate(model, ids, steps: int, criteria=()) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            ids,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            stopping_criteria=StoppingCriteriaList(list(criteria)),
        )


class EveryStep(StoppingCriteria):
    """Calls `probe(length)` after every generated token; never stops generation."""

    def __init__(self, probe) -> None:
        self.probe = probe

    def __call__(self, input_ids, scores, **kwargs):
        self.probe(input_ids.shape[1])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _kv_bytes_per_step(dtype: torch.dtype = torch.bfloat16) -> int:
    """K and V of one token, all layers: what the cache must add each step."""
    return LAYERS * 2 * KV * HEAD_DIM * torch.finfo(dtype).bits // 8


def test_repeated_generation_does_not_grow_memory():
    model = _model()
    ids = _prompt()
    for _ in range(2):  # warm-up (lazy caches of torch and transformers)
        _generate(model, ids, 20)
    first = live_tensors()
    tracemalloc.start()
    try:
        _generate(model, ids, 10)
        gc.collect()
        before = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/sharq/*")])
        outputs = []
        for _ in range(6):
            outputs.append(_generate(model, ids, 10).tolist())  # (tokens as Python ints, no tensor kept)
            assert live_tensors() == first
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/sharq/*")])
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # measured: a few kB over these 60 steps (allocator free lists); one 64-byte object kept per
    # linear and step would be 14 × 64 × 60 = 54 kB
    assert grown < 20_000, grown
    assert all(out == outputs[0] for out in outputs)  # and the same tokens each time


def test_long_generation_grows_only_by_the_kv_cache():
    model = _model()
    samples: dict[int, int] = {}

    def probe(length: int) -> None:
        if length % 30 == 8:
            samples[length] = live_tensors()[1]

    _generate(model, _prompt(), 150, [EveryStep(probe)])
    lengths = sorted(samples)
    assert len(lengths) >= 4
    steps = [(samples[b] - samples[a]) / (b - a) for a, b in zip(lengths, lengths[1:])]
    assert len(set(steps)) == 1, steps  # the same bytes every step: nothing else accumulates
    kv = _kv_bytes_per_step()
    assert kv <= steps[0] <= kv + 32, (steps[0], kv)  # the cache, plus int64 ids and mask (8 + 8)


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe", "gemma3"])
def test_shared_preparation_holds_nothing_between_steps(arch, monkeypatch):
    model = _model(arch)
    groups = {
        id(m.shared_input): m.shared_input
        for m in model.modules()
        if isinstance(getattr(m, "shared_input", None), SharedPreparation)
    }
    assert groups, "the model has shared preparations (q/k/v, gate/up)"
    published: list[weakref.ref] = []
    original = SharedPreparation.publish  # what the fused norm and a lazy consumer's `prepare` call

    def watched(self, x, prepared):
        published.append(weakref.ref(prepared.backbone.codes))
        return original(self, x, prepared)

    monkeypatch.setattr(SharedPreparation, "publish", watched)
    held: list[int] = []

    def probe(length: int) -> None:
        held.append(sum(g._prepared is not None or g._source is not None for g in groups.values()))

    _generate(model, _prompt(), 12, [EveryStep(probe)])
    assert len(held) == 12 and not any(held)
    gc.collect()
    assert len(published) >= 12 * len(groups)
    assert all(ref() is None for ref in published)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generation_memory_triton():
    """CUDA, Triton backend: the same memory after every generate call once warm, and a long
    generate grows by the same bytes every step (the KV cache's, in the allocator's rounding)."""
    model = _model(device="cuda", backend="triton")
    ids = _prompt("cuda")
    for _ in range(2):
        _generate(model, ids, 20)
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    for _ in range(5):
        _generate(model, ids, 40)
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == baseline
    samples: dict[int, int] = {}

    def probe(length: int) -> None:
        if length % 40 == 8:
            torch.cuda.synchronize()
            samples[length] = torch.cuda.memory_allocated()

    _generate(model, ids, 200, [EveryStep(probe)])
    lengths = sorted(samples)
    growth = [samples[b] - samples[a] for a, b in zip(lengths, lengths[1:])]
    print("CUDA bytes per 40 steps:", growth, "KV cache:", 40 * _kv_bytes_per_step())
    # the caching allocator rounds blocks to 512 B: allow one rounding per tensor that grows
    assert all(g <= 40 * _kv_bytes_per_step() + 4 * LAYERS * 512 + 2048 for g in growth), growth
