"""What vLLM refuses to serve, each with a one-line reason and before any weight is loaded: the
checks run in `SharqVllmConfig.maybe_update_config`, while vLLM validates its config."""

import json
import shutil

import pytest

from serving_helpers import run_vllm

LOADING = "Starting to load model"  # vLLM's log line when a worker begins building the model


def _refusal(folder, *extra):
    result, log = run_vllm("load", str(folder), *extra, timeout=240)
    assert result is not None and "error" in result, log[-4000:]
    assert LOADING not in log, "a refused checkpoint must not reach the model loader"
    return result["message"]


def test_corrupted_tensor_is_refused(tiny_folders, tmp_path):
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_folders("llama"), folder)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-100] ^= 0x10  # one bit of the last tensor's bytes
    (folder / "model.safetensors").write_bytes(bytes(data))
    message = _refusal(folder)
    assert "fails its checksum" in message and "model.safetensors" in message and "the file is corrupt" in message


def test_truncated_file_is_refused(tiny_folders, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(tiny_folders("llama"), folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-1000])
    assert "truncated" in _refusal(folder)


def test_other_tools_quant_method_is_refused(tiny_folders, tmp_path):
    """quantization='sharq' on a folder another tool quantized: vLLM itself refuses the mismatch."""
    folder = tmp_path / "awq"
    shutil.copytree(tiny_folders("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}
    (folder / "config.json").write_text(json.dumps(config))
    message = _refusal(folder, "--quantization", "sharq")
    assert "(awq) does not match" in message and "(sharq)" in message


def test_newer_format_version_is_refused(tiny_folders, tmp_path):
    folder = tmp_path / "v2"
    shutil.copytree(tiny_folders("llama"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["format_version"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    assert "format_version is 2; this sharq reads checkpoint format 1 only" in _refusal(folder)


@pytest.mark.parametrize("kind, name", [("qwen3_moe", "Qwen3-MoE"), ("gemma3", "Gemma3")])
def test_unsupported_architecture_is_refused(kind, name, tiny_folders):
    message = _refusal(tiny_folders(kind))
    assert f"does not serve architecture {name!r}" in message and "served: Llama, Qwen2/2.5, Qwen3" in message
