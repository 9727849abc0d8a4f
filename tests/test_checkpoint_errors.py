"""Corrupted, truncated or mismatched checkpoints are refused with an error naming the file and the
tensor or field — never loaded into a wrong model."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import sharq
from sharq.checkpoint import CheckpointError, checkpoint_info
from sharq.checkpoint.format import CRC_KEY, read_header, tensor_crc32

from .tiny_models import tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

Q_CODES = "model.layers.0.self_attn.q_proj.weight_codes"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pristine checkpoint of a tiny quantized Llama (copied per test before damaging it)."""
    model = tiny_model("llama")
    sharq.quantize_(model, "sharq-nvfp4")
    path = tmp_path_factory.mktemp("pristine") / "ckpt"
    sharq.save_quantized(model, path)
    return path


@pytest.fixture
def ckpt(saved, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(saved, path)
    return path


def _refused(path, *fragments):
    """load_quantized(path) raises a CheckpointError whose message contains every fragment."""
    with pytest.raises(CheckpointError) as info:
        sharq.load_quantized(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message
    return message


def _rewrite(path, change, *, fix_checksums=True):
    """Apply `change(tensors) -> tensors` to a safetensors file, keeping (and updating) its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = change(load_file(str(path)))
    if fix_checksums:
        metadata[CRC_KEY] = json.dumps({n: tensor_crc32(t) for n, t in tensors.items()})
    save_file(tensors, str(path), metadata=metadata)


def _edit_record(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"].update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_pristine_checkpoint_loads(ckpt):
    assert sharq.load_quantized(ckpt) is not None  # the damage below is what fails, not the copy


def test_truncated_file_names_file_and_tensor(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    header, _ = read_header(path)
    path.write_bytes(data[:-100])
    last = max(header, key=lambda n: header[n].end)  # the tensor whose bytes are cut
    _refused(ckpt, "model.safetensors", "truncated", repr(last))
    path.write_bytes(data[:5])
    _refused(ckpt, "model.safetensors", "truncated")


def test_flipped_byte_fails_its_checksum(ckpt):
    path = ckpt / "model.safetensors"
    header, _ = read_header(path)
    data = bytearray(path.read_bytes())
    offset = 8 + int.from_bytes(data[:8], "little") + header[Q_CODES].start + 3
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    _refused(ckpt, "model.safetensors", repr(Q_CODES), "checksum")
    assert sharq.load_quantized(ckpt, verify=False) is not None  # only the check catches a payload flip


def test_wrong_shape(ckpt):
    _rewrite(ckpt / "model.safetensors", lambda t: {**t, Q_CODES: t[Q_CODES][:-1]})
    _refused(ckpt, "model.safetensors", repr(Q_CODES), "U8 [127, 64]", "expects U8 [128, 64]")


def test_wrong_dtype(ckpt):
    _rewrite(ckpt / "model.safetensors", lambda t: {**t, Q_CODES: t[Q_CODES].view(torch.int8)})
    _refused(ckpt, "model.safetensors", repr(Q_CODES), "I8", "expects U8")


def test_missing_tensor(ckpt):
    name = "model.layers.1.mlp.down_proj.weight_scales"
    _rewrite(ckpt / "model.safetensors", lambda t: {k: v for k, v in t.items() if k != name})
    _refused(ckpt, "model.safetensors", repr(name), "missing")


def test_extra_tensor(ckpt):
    name = "model.layers.0.self_attn.q_proj.weight"  # a dense weight where the packed one lives
    _rewrite(ckpt / "model.safetensors", lambda t: {**t, name: torch.zeros(128, 128, dtype=torch.bfloat16)})
    _refused(ckpt, "model.safetensors", repr(name), "unexpected tensor")


def test_checksum_table_must_cover_the_tensors(ckpt):
    name = "model.norm.weight"
    _rewrite(ckpt / "model.safetensors", lambda t: {k: v for k, v in t.items() if k != name}, fix_checksums=False)
    _refused(ckpt, "model.safetensors", repr(name), "damaged")


def test_major_version_of_pep440_strings():
    from sharq.checkpoint.record import major_version

    assert [major_version(v) for v in ("0.1.0", "1.2", "3", "0+unknown", "0.2.0.dev1+g1a2b")] == [0, 1, 3, 0, 0]
    assert [major_version(v) for v in ("N/A", "", "v1.0", "1x", None)] == [None] * 5


def test_different_major_version(ckpt):
    _edit_record(ckpt, sharq_version="1.0.0")
    _refused(ckpt, "config.json", "quantization_config.sharq_version", "1.0.0", "major version 1")


def test_different_format_version(ckpt):
    _edit_record(ckpt, format_version=2)
    _refused(ckpt, "config.json", "quantization_config.format_version", "2")


def test_unknown_preset(ckpt):
    _edit_record(ckpt, preset="sharq-fp3")
    _refused(ckpt, "config.json", "quantization_config.preset", "unknown preset 'sharq-fp3'")


def test_preset_contradicting_config(ckpt):
    _edit_record(ckpt, preset="sharq-hif4")
    _refused(ckpt, "config.json", "quantization_config.preset is 'sharq-hif4'")


def test_invalid_config_field(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"]["config"]["weight_block"] = 48
    (ckpt / "config.json").write_text(json.dumps(config))
    _refused(ckpt, "config.json", "quantization_config.config", "weight_block=48")


def test_config_json_missing_or_broken(ckpt):
    text = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(text[: len(text) // 2])
    _refused(ckpt, "config.json", "JSON")
    (ckpt / "config.json").unlink()
    _refused(ckpt, "config.json", "missing")


def test_not_a_sharq_checkpoint(ckpt, tmp_path):
    config = json.loads((ckpt / "config.json").read_text())
    del config["quantization_config"]
    (ckpt / "config.json").write_text(json.dumps(config))
    _refused(ckpt, "config.json", "quantization_config is missing")
    _refused(tmp_path / "nowhere", "nowhere", "no such checkpoint folder")


def test_model_of_another_size(ckpt):
    """config.json of a different model next to the tensors: refused on the first tensor that differs."""
    config = json.loads((ckpt / "config.json").read_text())
    config["intermediate_size"] = 512
    (ckpt / "config.json").write_text(json.dumps(config))
    # config.json lists the modules sorted: down_proj is the first one that differs
    _refused(
        ckpt,
        "config.json",
        "quantization_config.modules['model.layers.0.mlp.down_proj'] records shape",
        "[128, 256]",
        "[128, 512]",
    )


def test_model_with_fewer_layers(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (ckpt / "config.json").write_text(json.dumps(config))
    _refused(ckpt, "config.json", "model.layers.1.", "has no convertible module")


def test_recorded_module_not_in_model(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    modules = config["quantization_config"]["modules"]
    modules["model.layers.0.mlp.fc9"] = dict(modules["model.layers.0.mlp.up_proj"])
    config["quantization_config"]["quantized_weights"] += 256 * 128
    (ckpt / "config.json").write_text(json.dumps(config))
    _refused(ckpt, "config.json", "model.layers.0.mlp.fc9")


def test_unquantized_module_in_record_is_missing_its_weight(ckpt):
    """A record that forgets a quantized module: the dense weight it would need is not stored."""
    config = json.loads((ckpt / "config.json").read_text())
    del config["quantization_config"]["modules"]["model.layers.0.self_attn.o_proj"]
    config["quantization_config"]["quantized_weights"] -= 128 * 128
    (ckpt / "config.json").write_text(json.dumps(config))
    _refused(ckpt, "model.safetensors", "'model.layers.0.self_attn.o_proj.weight' is missing")


def test_sharded_index_errors(tmp_path):
    model = tiny_model("llama")
    sharq.quantize_(model, "sharq-nvfp4")
    path = tmp_path / "ckpt"
    sharq.save_quantized(model, path, max_shard_size="100KB")
    assert sharq.load_quantized(path) is not None
    index = json.loads((path / "model.safetensors.index.json").read_text())
    second = sorted(set(index["weight_map"].values()))[1]

    moved = next(n for n, f in index["weight_map"].items() if f != second)
    wrong = dict(index, weight_map={**index["weight_map"], moved: second})
    (path / "model.safetensors.index.json").write_text(json.dumps(wrong))
    _refused(path, "model.safetensors.index.json", repr(moved))

    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / second).unlink()
    _refused(path, "model.safetensors.index.json", second, "missing")

    (path / "model.safetensors.index.json").write_text("{}")
    _refused(path, "model.safetensors.index.json", "weight_map")


def test_both_single_file_and_index(ckpt):
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    _refused(ckpt, "model.safetensors", "model.safetensors.index.json", "both")


def test_inspect_refuses_what_load_refuses(ckpt):
    _edit_record(ckpt, sharq_version="2.3.0")
    with pytest.raises(CheckpointError, match=re.escape("quantization_config.sharq_version")):
        checkpoint_info(ckpt)
