"""Checkpoints: save a quantized model, load it without the original weights, bit-identical; the
bits each quantized weight costs on disk; tensors streamed; sharding; writing refusals."""

import json

import pytest
import torch
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode

import sharq
from sharq.checkpoint import CheckpointError, checkpoint_info
from sharq.checkpoint.format import read_header
from sharq.nn.experts import SharqExperts
from sharq.nn.linear import SharqLinear

from .tiny_models import VOCAB, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _quantized(kind="llama", preset="sharq-nvfp4", seed=0, **changes):
    model = tiny_model(kind, seed=seed)
    config = sharq.SharqConfig.from_preset(preset, **changes)
    sharq.quantize_(model, config)
    return model


def _ids(batch=2, length=12, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "kind, preset, changes",
    [
        ("llama", "sharq-nvfp4", {}),
        ("qwen2", "sharq-nvfp4-w16", {"granularity": "token"}),  # q/k/v biases
        ("qwen3_moe", "sharq-nvfp4", {}),  # fused 3-D experts + one dense layer
        ("gemma3", "sharq-hif4", {}),  # gemma norm variant, non-persistent embed_scale
        ("mixtral", "sharq-mxfp4", {}),
        ("llama", "nvfp4", {}),  # plain W4A4: no mask, no residual
        ("qwen3_vl", "sharq-nvfp4", {}),  # language model of a vision-language model; the vision tower stays
    ],
)
def test_round_trip_is_bit_identical(tmp_path, kind, preset, changes):
    model = _quantized(kind, preset, **changes)
    ids = _ids()
    expected = _logits(model, ids)
    sharq.save_quantized(model, tmp_path / "ckpt")
    loaded = sharq.load_quantized(tmp_path / "ckpt")

    assert torch.equal(_logits(loaded, ids), expected)
    # the same modules, the same shared preparations and fused norms
    kinds = lambda m: sorted((n, type(x).__name__) for n, x in m.named_modules())  # noqa: E731
    assert kinds(loaded) == kinds(model)
    assert loaded.sharq_report.fused_norms == model.sharq_report.fused_norms
    assert loaded.sharq_report.groups == model.sharq_report.groups
    assert loaded.sharq_report.config == model.sharq_report.config
    # every tensor equal to the saved one, read from disk (not the same storage)
    saved = dict(model.named_buffers()) | dict(model.named_parameters())
    got = dict(loaded.named_buffers()) | dict(loaded.named_parameters())
    assert set(got) == set(saved)
    for name, t in saved.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
        assert got[name].data_ptr() != t.data_ptr(), name
    assert loaded.sharq_checkpoint.sharq_version == sharq.__version__
    assert not loaded.training


def test_round_trip_generate_and_tied_embeddings(tmp_path):
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    sharq.quantize_(model, "sharq-nvfp4")
    saved = sharq.save_quantized(model, tmp_path / "ckpt")
    header, _ = read_header(tmp_path / "ckpt" / "model.safetensors")
    assert "lm_head.weight" not in header and "model.embed_tokens.weight" in header  # stored once
    assert saved.record.tied_weights == {"lm_head.weight": "model.embed_tokens.weight"}

    loaded = sharq.load_quantized(tmp_path / "ckpt")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = _ids(1, 6)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(loaded.generate(ids, **kwargs), model.generate(ids, **kwargs))


def test_resave_of_a_loaded_model_is_the_same_data(tmp_path):
    model = _quantized("qwen3_moe")
    sharq.save_quantized(model, tmp_path / "a")
    sharq.save_quantized(sharq.load_quantized(tmp_path / "a"), tmp_path / "b")
    ha, ma = read_header(tmp_path / "a" / "model.safetensors")
    hb, mb = read_header(tmp_path / "b" / "model.safetensors")
    assert ha == hb and ma == mb  # same tensors, offsets and checksums (metadata order may differ)
    data = lambda p: p.read_bytes()[8 + int.from_bytes(p.read_bytes()[:8], "little") :]  # noqa: E731
    assert data(tmp_path / "a" / "model.safetensors") == data(tmp_path / "b" / "model.safetensors")


def test_loaders_of_unquantized_models_refuse_a_checkpoint(tmp_path):
    """sharq's float-model loader (eval, inspect, quantize) takes no checkpoint: it would quantize twice."""
    from sharq.eval import load_model

    sharq.save_quantized(_quantized(), tmp_path / "ckpt")
    with pytest.raises(ValueError, match="is a sharq checkpoint .* sharq.load_quantized"):
        load_model(tmp_path / "ckpt")


def test_load_dtype_device_and_backend(tmp_path):
    model = _quantized()
    sharq.save_quantized(model, tmp_path / "ckpt")
    f32 = sharq.load_quantized(tmp_path / "ckpt", dtype=torch.float32, device="cpu", backend="reference")
    assert f32.model.embed_tokens.weight.dtype == torch.float32
    q = f32.model.layers[0].self_attn.q_proj
    ref = model.model.layers[0].self_attn.q_proj
    assert q.options.backend.value == "reference"
    assert "backend" not in f32.sharq_checkpoint.config.to_dict()  # runtime options are never recorded
    assert sharq.load_quantized(tmp_path / "ckpt").model.layers[0].self_attn.q_proj.options == sharq.RuntimeOptions()
    assert q.weight_codes.dtype == torch.uint8 and torch.equal(q.weight_codes, ref.weight_codes)  # never cast
    assert torch.equal(q.weight_global_scale, ref.weight_global_scale)
    assert torch.equal(q.dequantized_weight(), ref.dequantized_weight())
    with pytest.raises(TypeError, match="floating-point"):
        sharq.load_quantized(tmp_path / "ckpt", dtype=torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            sharq.load_quantized(tmp_path / "ckpt", device="cuda")


def _expected_bits(model, block):
    """Bits per weight from the format: 4-bit codes + one 8-bit scale per block + 32-bit s_w per matrix."""
    mats = [m for m in model.modules() if isinstance(m, SharqLinear)]
    weights = sum(m.in_features * m.out_features for m in mats)
    return (4 * weights + 8 * weights / block + 32 * len(mats)) / weights


@pytest.mark.parametrize(
    "preset, block, low, high",
    [
        ("sharq-nvfp4", 32, 4.25, 4.26),  # NVFP4-32: E4M3 per 32 + FP32 s_w per matrix
        ("sharq-nvfp4-w16", 16, 4.5, 4.51),  # NVFP4-16
    ],
)
def test_bits_per_weight_on_disk(tmp_path, preset, block, low, high):
    model = _quantized("llama", preset)
    saved = sharq.save_quantized(model, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    header, _ = read_header(path)
    quantized = [n for n, m in model.named_modules() if isinstance(m, SharqLinear)]
    # bytes of the packed-weight tensors as the file lays them out
    weight_bytes = sum(
        info.nbytes
        for name, info in header.items()
        if name.rpartition(".")[0] in quantized and not name.endswith(".bias")
    )
    n_weights = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, SharqLinear))
    bits = 8 * weight_bytes / n_weights
    assert bits == pytest.approx(_expected_bits(model, block), rel=1e-12)
    assert low <= bits < high
    assert saved.record.weight_bits == pytest.approx(bits, abs=1e-6)
    info = checkpoint_info(tmp_path / "ckpt")
    assert info["weight_bits"] == pytest.approx(bits, rel=1e-12)
    assert info["weight_bytes"] + info["other_tensor_bytes"] <= path.stat().st_size
    # the global scale is stored as its FP32 value
    with safe_open(str(path), "pt") as f:
        s = f.get_tensor("model.layers.0.self_attn.q_proj.weight_global_scale")
    assert s.dtype == torch.float32 and s.shape == ()
    assert torch.equal(s, model.model.layers[0].self_attn.q_proj.quantized_weight.global_scale)


@pytest.mark.parametrize("preset, bits", [("sharq-mxfp4", 4.25), ("sharq-hif4", 4.5)])
def test_bits_per_weight_without_global_scale(tmp_path, preset, bits):
    model = _quantized("qwen3_moe", preset)  # experts included
    sharq.save_quantized(model, tmp_path / "ckpt")
    info = checkpoint_info(tmp_path / "ckpt")
    assert info["weight_bits"] == bits and info["weight_bits_range"] == [bits, bits]
    assert any(isinstance(m, SharqExperts) for m in model.modules())


def test_sharded_checkpoint(tmp_path):
    model = _quantized("qwen3_moe")
    ids = _ids()
    saved = sharq.save_quantized(model, tmp_path / "ckpt", max_shard_size="100KB")
    shards = sorted(p.name for p in (tmp_path / "ckpt").glob("*.safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    sizes = {}
    for shard in shards:
        header, _ = read_header(tmp_path / "ckpt" / shard)
        sizes[shard] = sum(i.nbytes for i in header.values())
        assert all(index["weight_map"][n] == shard for n in header)
        # a shard exceeds the limit only when it holds a single tensor bigger than it
        assert sizes[shard] <= 100_000 or len(header) == 1
    assert index["metadata"]["total_size"] == sum(sizes.values())
    assert saved.files[-1] == "model.safetensors.index.json"
    assert torch.equal(_logits(sharq.load_quantized(tmp_path / "ckpt"), ids), _logits(model, ids))


class _Allocations(TorchDispatchMode):
    """Records the largest floating-point tensor any torch op allocates (new storage, off the meta
    device; views and in-place results of existing tensors are not allocations)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = [*args, *(kwargs or {}).values()]
        inputs = {t.untyped_storage().data_ptr() for t in flat if isinstance(t, torch.Tensor) and not t.is_meta}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (
                isinstance(t, torch.Tensor)
                and not t.is_meta
                and t.is_floating_point()
                and t.untyped_storage().data_ptr() not in inputs
            ):
                self.largest = max(self.largest, t.numel())
        return out


def test_load_streams_without_dense_weights(tmp_path):
    model = _quantized()
    sharq.save_quantized(model, tmp_path / "ckpt")
    smallest = min(m.in_features * m.out_features for m in model.modules() if isinstance(m, SharqLinear))
    with _Allocations() as probe:
        loaded = sharq.load_quantized(tmp_path / "ckpt")
    # no op allocated a float tensor as large as the smallest quantized weight: nothing was
    # dequantized, and the skeleton's dense parameters were never allocated (only the norm probes)
    assert 0 < probe.largest < smallest
    # the loaded quantized modules hold their packed storage only
    q = loaded.model.layers[0].mlp.down_proj
    assert {n for n, _ in q.named_buffers()} == {"weight_codes", "weight_scales", "weight_global_scale"}
    assert not [n for n, _ in q.named_parameters()]
    # a control: the same probe does see a dense weight when one is made
    with _Allocations() as probe:
        q.dequantized_weight()
    assert probe.largest >= q.in_features * q.out_features


def test_save_refusals(tmp_path):
    plain = tiny_model("llama")
    with pytest.raises(CheckpointError, match="no sharq module"):
        sharq.save_quantized(plain, tmp_path / "a")
    with pytest.raises(TypeError, match="transformers model"):
        sharq.save_quantized(torch.nn.Linear(4, 4), tmp_path / "a")
    model = _quantized()
    with pytest.raises(ValueError, match="not a byte count"):
        sharq.save_quantized(model, tmp_path / "a", max_shard_size="lots")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        sharq.save_quantized(model, other)
    with pytest.raises(CheckpointError, match="not a sharq checkpoint; refusing to overwrite"):
        sharq.save_quantized(model, other, overwrite=True)
    assert (other / "todo.txt").read_text() == "keep me"

    sharq.save_quantized(_quantized(preset="sharq-hif4"), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not empty"):
        sharq.save_quantized(model, tmp_path / "ckpt")
    sharq.save_quantized(model, tmp_path / "ckpt", overwrite=True)  # replaces a sharq checkpoint
    assert sharq.load_quantized(tmp_path / "ckpt").sharq_report.config == model.sharq_report.config


def test_progress_bars_on_request(tmp_path, capsys):
    model = tiny_model("llama")
    sharq.quantize_(model, "sharq-nvfp4", progress=True)
    sharq.save_quantized(model, tmp_path / "ckpt", progress=True)
    sharq.load_quantized(tmp_path / "ckpt", progress=True)
    err = capsys.readouterr().err
    assert "quantizing" in err and "writing" in err and "loading" in err
    sharq.load_quantized(tmp_path / "ckpt", progress=False)
    assert "loading" not in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["sharq-nvfp4", "sharq-mxfp4"])
def test_load_onto_cuda_is_bit_identical_to_the_saved_model_on_cuda(tmp_path, preset):
    """Saved on the CPU, loaded straight onto the GPU (Triton backend there): the same tensors and
    the same logits, bit for bit, as the saved model moved to the GPU, at one row (the decode GEMV)
    and at a batch (the tensor-core GEMM)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _quantized("llama", preset)
    sharq.save_quantized(model, tmp_path / "ckpt")
    loaded = sharq.load_quantized(tmp_path / "ckpt", device="cuda")
    moved = model.to("cuda")
    for name, t in (dict(moved.named_buffers()) | dict(moved.named_parameters())).items():
        got = dict(loaded.named_buffers()) | dict(loaded.named_parameters())
        assert got[name].device.type == "cuda" and torch.equal(got[name], t), name
    for ids in (_ids(batch=1, length=1), _ids(batch=2, length=12)):
        ids = ids.cuda()
        assert torch.equal(_logits(loaded, ids), _logits(moved, ids))
