"""Public names, check_finite on the functional API, and the CLI driven as a user would."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sharq


def test_public_api_names():
    """__all__ is the API docs/usage.md documents, every name exists, and nothing else is exported."""
    documented = {
        "SharqConfig",
        "PRESETS",
        "Format",
        "Granularity",
        "Operand",
        "Residual",
        "WeightScale",
        "LmHead",
        "SharqLMHead",
        "Backend",
        "RuntimeOptions",
        "set_runtime_options",
        "quantize_",
        "ConversionReport",
        "save_quantized",
        "load_quantized",
        "load_tokenizer",
        "CheckpointError",
        "SharqLinear",
        "decompose",
        "Decomposition",
        "prepare_activation",
        "PreparedActivation",
        "quantize_weight",
        "sharq_linear",
        "quantize_tensor",
        "QuantizedTensor",
        "__version__",
    }
    assert set(sharq.__all__) == documented
    assert all(hasattr(sharq, name) for name in documented)
    usage = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    assert all(name in usage for name in documented - {"__version__"}), sorted(n for n in documented if n not in usage)
    import importlib.metadata

    assert sharq.__version__ == importlib.metadata.version("sharq")


def test_quantize_is_a_deprecated_alias_of_quantize_tensor():
    x = torch.randn(3, 32)
    with pytest.warns(DeprecationWarning, match="quantize_tensor"):
        old = sharq.quantize(x, "nvfp4", 16)
    new = sharq.quantize_tensor(x, "nvfp4", 16)
    assert torch.equal(old.codes, new.codes) and torch.equal(old.scales, new.scales)


def test_decompose_check_finite_raises():
    cfg = sharq.PRESETS["sharq-nvfp4"]
    x = torch.randn(2, 64)
    sharq.decompose(x, cfg, check_finite=True)  # finite: fine
    x[1, 3] = float("inf")
    assert not bool(torch.isfinite(sharq.decompose(x, cfg).backbone).all())  # off by default: no check
    with pytest.raises(ValueError, match="NaN or Inf"):
        sharq.decompose(x, cfg, check_finite=True)


def test_decompose_rejects_bad_input():
    cfg = sharq.PRESETS["sharq-nvfp4"]
    with pytest.raises(TypeError, match="dtype torch.int64"):
        sharq.decompose(torch.arange(64).reshape(2, 32), cfg)
    with pytest.raises(ValueError, match="scalar"):
        sharq.decompose(torch.tensor(1.0), cfg)
    with pytest.raises(TypeError, match="torch.Tensor"):
        sharq.decompose([1.0, 2.0], cfg)


def _sharq(*args):
    return subprocess.run([sys.executable, "-m", "sharq.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_presets_json():
    out = _sharq("presets", "--json")
    assert out.returncode == 0, out.stderr
    presets = json.loads(out.stdout)
    assert set(presets) == set(sharq.PRESETS)
    assert sharq.SharqConfig.from_dict(presets["sharq-hif4"]) == sharq.PRESETS["sharq-hif4"]


def test_cli_demo_small(tmp_path):
    path = tmp_path / "demo.json"
    out = _sharq("layer-demo", "--tokens", "32", "--k", "256", "--n", "64", "--json", str(path))
    assert out.returncode == 0, out.stderr
    assert "| sharq-nvfp4 | tensor |" in out.stdout
    rows = json.loads(path.read_text())["rows"]
    by = {(r["preset"], r["granularity"]): r for r in rows}
    assert by[("sharq-nvfp4", "tensor")]["act_sqnr_db"] > by[("nvfp4", "tensor")]["act_sqnr_db"] + 6
    assert by[("bf16", "-")]["act_sqnr_db"] is None  # inf is written as null


def test_cli_usage_and_runtime_errors():
    assert _sharq().returncode == 2  # no command
    assert _sharq("layer-demo", "--tokens", "many").returncode == 2
    assert _sharq("layer-demo", "--k", "0").returncode == 2
    out = _sharq("layer-demo", "--tokens", "4", "--k", "64", "--n", "4", "--json", "/nonexistent-dir/x.json")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "error" in out.stderr  # one clear line, no traceback


def test_cli_eval_and_inspect_explain_themselves():
    for command in ("eval", "inspect", "demo", "layer-demo"):
        out = _sharq(command, "--help")
        assert out.returncode == 0 and "example" in out.stdout, command
    out = _sharq("eval", "--presets", "fp3", "--tasks", "none", "--out", "/tmp/sharq-cli-test")
    assert out.returncode == 1 and "unknown preset 'fp3'" in out.stderr and "Traceback" not in out.stderr
    out = _sharq("eval", "--limit", "0")
    assert out.returncode == 2
