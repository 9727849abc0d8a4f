"""The real packaged model: `sharq quantize` (default MODEL) -> load_quantized, bit-identical logits
and ~4.25 bits per weight on disk. Slow (the GGUF loads twice, ~1 min): `pytest -m slow`."""

import json
import subprocess
import sys

import pytest
import torch

import sharq

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def test_packaged_smollm2_round_trip(tmp_path):
    from sharq.eval import load_model

    out = tmp_path / "smollm2-sharq"
    done = subprocess.run(
        [sys.executable, "-m", "sharq", "quantize", "--out", str(out), "--device", "cpu", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["preset"] == "sharq-nvfp4" and doc["quantized_modules"] == 210
    assert 4.25 <= doc["weight_bits"] <= 4.26  # NVFP4-32: 4 + 8/32, plus one FP32 s_w per matrix
    assert doc["tied_weights"] == {"lm_head.weight": "model.embed_tokens.weight"}

    model, tokenizer = load_model("smollm2", dtype=torch.bfloat16)
    sharq.quantize_(model, "sharq-nvfp4")
    loaded = sharq.load_quantized(out)
    ids = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # the file: packed weights + the bf16 embedding (tied, stored once) + norms
    size = (out / "model.safetensors").stat().st_size
    embed = model.model.embed_tokens.weight
    assert size < doc["quantized_weights"] * 4.26 / 8 + embed.numel() * 2 + 2**20


def test_packaged_smollm2_from_pretrained_after_import_sharq(tmp_path):
    """transformers' from_pretrained on the `sharq quantize` folder: the load_quantized model, bit for bit."""
    from transformers import AutoModelForCausalLM

    from sharq.eval import load_model

    model, tokenizer = load_model("smollm2", dtype=torch.bfloat16)
    sharq.quantize_(model, "sharq-nvfp4")
    sharq.save_quantized(model, tmp_path / "ckpt", tokenizer=tokenizer)
    expected = sharq.load_quantized(tmp_path / "ckpt")
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert type(got.model.layers[0].mlp.down_proj).__name__ == "SharqLinear"
    ids = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = got(ids).logits
        assert torch.equal(logits, expected(ids).logits)
        assert torch.equal(logits, model(ids).logits)
