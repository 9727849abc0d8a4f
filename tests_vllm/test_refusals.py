"""What vLLM refuses to serve, each with a one-line reason and before any weight is loaded: the
checks run in `SharqVllmConfig.maybe_update_config` while vLLM validates its config. All cases run
in one process (`runner.py refusals`): none of them may get as far as building an engine."""

import json
import shutil

import pytest

from serving_helpers import run_vllm

LOADING = "Starting to load model"  # vLLM's log line when a worker begins building the model


def _edit_record(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"].update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def refused(tiny_folders, tmp_path_factory):
    """{case: the message vLLM raised} for every bad folder."""
    root = tmp_path_factory.mktemp("refusals")
    good = tiny_folders("llama")
    cases = {}

    def copy(name):
        shutil.copytree(good, root / name)
        cases[name] = {"folder": str(root / name)}
        return root / name

    data = bytearray((copy("corrupt") / "model.safetensors").read_bytes())
    data[-100] ^= 0x10  # one bit of the last tensor's bytes
    (root / "corrupt" / "model.safetensors").write_bytes(bytes(data))
    whole = (copy("truncated") / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(whole[:-1000])
    _edit_record(copy("format_v2"), format_version=2)
    awq = copy("awq")
    config = json.loads((awq / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}
    (awq / "config.json").write_text(json.dumps(config))
    cases["awq"]["quantization"] = "sharq"
    for kind in ("qwen3_moe", "gemma3"):
        cases[kind] = {"folder": str(tiny_folders(kind))}
    (root / "cases.json").write_text(json.dumps(list(cases.values())))
    report, log = run_vllm("refusals", str(root / "cases.json"), timeout=300)
    assert report is not None, log[-4000:]
    assert LOADING not in log, "a refused checkpoint must not reach the model loader"
    by_folder = {r["folder"]: r for r in report}
    out = {}
    for name, case in cases.items():
        entry = by_folder.get(case["folder"])
        assert entry is not None and "error" in entry, (name, report)
        out[name] = entry["message"]
    return out


def test_corrupted_tensor_is_refused(refused):
    message = refused["corrupt"]
    assert "fails its checksum" in message and "model.safetensors" in message and "the file is corrupt" in message


def test_truncated_file_is_refused(refused):
    assert "truncated" in refused["truncated"]


def test_newer_format_version_is_refused(refused):
    assert "format_version is 2; this sharq reads checkpoint format 1 only" in refused["format_v2"]


def test_other_tools_quant_method_is_refused(refused):
    """quantization='sharq' on a folder another tool quantized: vLLM itself refuses the mismatch."""
    assert "(awq) does not match" in refused["awq"] and "(sharq)" in refused["awq"]


@pytest.mark.parametrize("kind, name", [("qwen3_moe", "Qwen3-MoE"), ("gemma3", "Gemma3")])
def test_unsupported_architecture_is_refused(kind, name, refused):
    message = refused[kind]
    assert f"does not serve architecture {name!r}" in message and "served: Llama, Qwen2/2.5, Qwen3" in message
