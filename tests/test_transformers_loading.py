"""transformers' `from_pretrained` on a sharq checkpoint folder after `import sharq`: the model
`load_quantized` returns, bit for bit, with the same checks; and nothing changes without sharq."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

import sharq
from sharq.checkpoint import CheckpointError

from .tiny_models import VOCAB, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _ids(batch=2, length=12, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _saved(path, kind="llama", preset="sharq-nvfp4", **changes):
    model = tiny_model(kind)
    sharq.quantize_(model, sharq.SharqConfig.from_preset(preset, **changes))
    sharq.save_quantized(model, path)
    return path


def _from_pretrained(path, **kwargs):
    """The Auto class a user would pick: AutoModelForCausalLM, the recorded class for a VLM."""
    name = json.loads((path / "config.json").read_text())["quantization_config"]["model_class"]
    cls = AutoModelForCausalLM if name.endswith("ForCausalLM") else getattr(transformers, name)
    return cls.from_pretrained(path, **kwargs)


def _tensors(model):
    return dict(model.named_buffers()) | dict(model.named_parameters())


@pytest.mark.parametrize(
    "kind, preset, changes",
    [
        ("llama", "sharq-nvfp4", {}),
        ("mistral", "sharq-nvfp4", {}),
        ("qwen2", "sharq-nvfp4-w16", {"granularity": "token"}),  # q/k/v biases
        ("qwen3", "nvfp4", {}),
        ("qwen3_moe", "sharq-nvfp4", {}),  # fused 3-D experts + one dense layer
        ("mixtral", "sharq-mxfp4", {}),
        ("gemma3", "sharq-hif4", {}),  # non-persistent embed_scale
        ("qwen3_vl", "sharq-nvfp4", {}),  # the vision tower stays in bf16
    ],
)
def test_from_pretrained_equals_load_quantized(tmp_path, kind, preset, changes):
    path = _saved(tmp_path / "ckpt", kind, preset, **changes)
    expected = sharq.load_quantized(path)
    got = _from_pretrained(path)

    ids = _ids()
    assert torch.equal(_logits(got, ids), _logits(expected, ids))
    kinds = lambda m: sorted((n, type(x).__name__) for n, x in m.named_modules())  # noqa: E731
    assert kinds(got) == kinds(expected)
    want = _tensors(expected)
    have = _tensors(got)
    assert set(have) == set(want)
    for name, t in want.items():
        assert have[name].dtype == t.dtype and torch.equal(have[name], t), name
    assert got.sharq_report.fused_norms == expected.sharq_report.fused_norms
    assert got.sharq_checkpoint == expected.sharq_checkpoint
    assert not got.training and got.is_quantized
    # config.json's record, as written, is what the loaded model's config holds
    record = json.loads((path / "config.json").read_text())["quantization_config"]
    assert got.config.quantization_config.to_dict() == record


def test_generate_dtype_and_device_map(tmp_path):
    path = _saved(tmp_path / "ckpt")
    expected = sharq.load_quantized(path)
    ids = _ids(1, 6)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    got = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cpu")  # the stored dtype
    with torch.no_grad():
        assert torch.equal(got.generate(ids, **kwargs), expected.generate(ids, **kwargs))

    f32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map={"": "cpu"})
    assert f32.model.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(_logits(f32, ids), _logits(sharq.load_quantized(path, dtype=torch.float32), ids))
    assert f32.model.layers[0].self_attn.q_proj.weight_codes.dtype == torch.uint8  # packed: never cast


def test_dtype_cast_of_biased_quantized_linears(tmp_path):
    """Qwen2's quantized q/k/v carry biases: from_pretrained(dtype=float32) builds them in float32,
    and the stored bf16 biases are cast, as load_quantized(dtype=float32) casts them."""
    path = _saved(tmp_path / "ckpt", "qwen2")
    expected = sharq.load_quantized(path, dtype=torch.float32)
    got = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert got.model.layers[0].self_attn.q_proj.bias.dtype == torch.float32
    have = _tensors(got)
    for name, t in _tensors(expected).items():
        assert have[name].dtype == t.dtype and torch.equal(have[name], t), name
    ids = _ids()
    assert torch.equal(_logits(got, ids), _logits(expected, ids))


def test_sharded_checkpoint_and_loading_info(tmp_path):
    model = tiny_model("qwen3_moe")
    sharq.quantize_(model, "sharq-nvfp4")
    saved = sharq.save_quantized(model, tmp_path / "ckpt", max_shard_size="100KB")
    assert len(saved.files) > 2  # shards + the index
    got, info = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = _ids()
    assert torch.equal(_logits(got, ids), _logits(model, ids))
    # transformers' own patterns again, without the checkpoint's names
    assert not any("weight_codes" in pattern for pattern in got._keys_to_ignore_on_load_unexpected or ())
    assert "model.embed_tokens.weight" in got.state_dict()  # the load-nothing hook is gone


@pytest.mark.parametrize(
    "device_map, message",
    [
        ("auto", "device_map='auto' is not supported"),
        ({"model": "cpu", "lm_head": "disk"}, "spreads the model over ['cpu', 'disk']"),
        ({"": "disk"}, "disk offload"),
    ],
)
def test_unsupported_device_maps_are_refused(tmp_path, device_map, message):
    path = _saved(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="sharq checkpoints load onto one device") as info:
        AutoModelForCausalLM.from_pretrained(path, device_map=device_map)
    assert message in str(info.value)


def test_damaged_checkpoints_raise_sharqs_errors(tmp_path):
    saved = _saved(tmp_path / "ckpt")
    flipped = tmp_path / "flipped"
    shutil.copytree(saved, flipped)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-100] ^= 0x10  # a byte of the last tensor's payload
    (flipped / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor '.*' fails its checksum"):
        AutoModelForCausalLM.from_pretrained(flipped)

    truncated = tmp_path / "truncated"
    shutil.copytree(saved, truncated)
    (truncated / "model.safetensors").write_bytes(data[:-64])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated: tensor '"):
        AutoModelForCausalLM.from_pretrained(truncated)

    future = tmp_path / "future"
    shutil.copytree(saved, future)
    config = json.loads((future / "config.json").read_text())
    config["quantization_config"]["format_version"] = 2
    (future / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json: quantization_config.format_version is 2"):
        AutoModelForCausalLM.from_pretrained(future)


def test_another_model_class_and_saving_are_refused(tmp_path):
    path = _saved(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="holds a LlamaForCausalLM, from_pretrained built a LlamaModel"):
        transformers.LlamaModel.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    with pytest.raises(ValueError, match="quantized with sharq and is not serializable"):
        model.save_pretrained(tmp_path / "resaved")
    with pytest.raises(ValueError, match="loads sharq checkpoint folders only"):
        AutoModelForCausalLM.from_pretrained(
            _float_folder(tmp_path / "float"), quantization_config=model.config.quantization_config
        )


def _float_folder(path):
    tiny_model("llama").save_pretrained(path)
    return path


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_without_import_sharq_transformers_is_unchanged(tmp_path):
    """transformers' own behaviour (it skips the unknown method, linears random); `import sharq`
    does not import transformers; imported after transformers, sharq registers at once."""
    path = _saved(tmp_path / "ckpt")
    done = _python(f"""
        import sys
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(path)!r})
        print(type(model.model.layers[0].self_attn.q_proj).__name__, "sharq" in sys.modules)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Linear", "False"]

    done = _python(f"""
        import sys
        import transformers, transformers.quantizers.auto as auto
        assert "sharq" not in auto.AUTO_QUANTIZER_MAPPING
        import sharq
        model = transformers.AutoModelForCausalLM.from_pretrained({str(path)!r})
        print(type(model.model.layers[0].self_attn.q_proj).__name__, auto.AUTO_QUANTIZER_MAPPING["sharq"].__name__)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SharqLinear", "SharqHfQuantizer"]

    done = _python(f"""
        import sys, sharq
        print("transformers" in sys.modules)
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(path)!r})
        print(type(model.model.layers[0].self_attn.q_proj).__name__)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "SharqLinear"]


@pytest.mark.gpu
@pytest.mark.parametrize("device_map", ["cuda:0", 0, {"": "cuda"}])
def test_from_pretrained_onto_cuda_equals_load_quantized(tmp_path, device_map):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    path = _saved(tmp_path / "ckpt", "qwen3_moe")
    expected = sharq.load_quantized(path, device="cuda")
    got = AutoModelForCausalLM.from_pretrained(path, device_map=device_map)
    have = _tensors(got)
    for name, t in _tensors(expected).items():
        assert have[name].device.type == "cuda" and torch.equal(have[name], t), name
    for ids in (_ids(batch=1, length=1), _ids(batch=2, length=12)):
        ids = ids.cuda()
        assert torch.equal(_logits(got, ids), _logits(expected, ids))
