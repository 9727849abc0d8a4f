"""benchmarks/e2e.py runs end to end on a tiny model on the CPU and writes the agreed JSON schema.

The H100 run is one blind call: this smoke test is what makes sure the script, its JSON and its
charts work before that (reference backend, short decode, every provider).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def e2e():
    sys.path.insert(0, str(BENCH))
    try:
        import e2e as module

        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_e2e_smoke_writes_the_schema(e2e, tmp_path):
    path = e2e.main(
        [
            "--model",
            "tiny",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--context",
            "8",
            "--new-tokens",
            "2",
            "--decode-steps",
            "2",
            "--reps",
            "1",
            "--profile",
            "--profile-tokens",
            "16",
            "--scenarios",
            "decode_b1,serving_mix,weight_bytes,peak_bytes",
            "--providers",
            "sharq,sharq-lmhead,bf16,fp8",
        ]
    )
    assert path.name == "e2e-tiny-cpu-smoke.json"
    doc = json.loads(path.read_text())
    assert {"gpu", "torch", "model", "rows"} <= doc.keys() and doc["model"] == "tiny" and doc["gpu"] == "cpu"
    assert "errors" not in doc
    rows = {(r["scenario"], r["provider"]): r for r in doc["rows"]}
    for row in doc["rows"]:
        assert {"scenario", "provider", "value", "unit"} <= row.keys() and "error" not in row, row
        assert row["provider"] in ("bf16", "fp8", "sharq", "sharq-lmhead")
    for provider in ("bf16", "fp8", "sharq", "sharq-lmhead"):
        for scenario in ("decode_b1", "serving_mix", "weight_bytes", "weight_bytes_linear", "peak_bytes"):
            assert (scenario, provider) in rows
        assert rows[("decode_b1", provider)]["value"] > 0 and rows[("decode_b1", provider)]["unit"] == "ms/token"
        assert rows[("serving_mix", provider)]["unit"] == "tokens/s"
        assert rows[("peak_bytes", provider)]["value"] is None  # CPU: not measured, said so
    # the weights shrink as the formats say: fp8 ~1 byte, SharQ 4.25 bits per linear weight
    linear = {p: rows[("weight_bytes_linear", p)]["value"] for p in ("bf16", "fp8", "sharq")}
    assert 1.9 < linear["bf16"] / linear["fp8"] < 2.0
    assert 3.7 < linear["bf16"] / linear["sharq"] < 16 / 4.25 + 1e-9
    assert rows[("weight_bytes", "sharq")]["linear_bytes"] == linear["sharq"]
    assert doc["ratios"]["weight_bytes_linear"]["vs_bf16"] == pytest.approx(linear["bf16"] / linear["sharq"])
    # the quantized lm_head: same decoder linears, fewer bytes in all (the tiny model's lm_head is untied)
    assert rows[("weight_bytes_linear", "sharq-lmhead")]["value"] == linear["sharq"]
    assert rows[("weight_bytes", "sharq-lmhead")]["value"] < rows[("weight_bytes", "sharq")]["value"]
    assert doc["providers"]["sharq-lmhead"]["linear"].endswith("lm_head nvfp4-w16")
    assert doc["ratios_sharq_lmhead"]["decode_b1"]["vs_bf16"] > 0
    assert path.with_suffix(".png").stat().st_size > 10_000
    profile = json.loads((tmp_path / "e2e-profile-tiny-cpu-smoke.json").read_text())
    for provider in ("bf16", "fp8", "sharq"):
        entry = profile["providers"][provider]
        assert set(entry["by_category"]) == {"preparation", "gemm", "attention", "other"}
        assert entry["total"] > 0 and sum(entry["share"].values()) == pytest.approx(1.0)
    assert profile["providers"]["bf16"]["by_category"]["gemm"] > 0


def test_e2e_moe_smoke_runs_both_providers_and_records_the_experts_plan(e2e, tmp_path):
    """A Qwen3-MoE-shaped model: sharq, sharq-lmhead and bf16 by default (no fp8 baseline for experts), decode at
    batch 1 and 8 through the StaticDecoder, the experts counted as quantized layers, and the plan of
    each decode batch in the JSON (on the CPU: the reference backend, host routing)."""
    path = e2e.main(
        [
            "--model",
            "tiny-moe",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--context",
            "4",
            "--new-tokens",
            "2",
            "--decode-steps",
            "1",
            "--reps",
            "1",
            "--layers",
            "1",
            "--scenarios",
            "decode_b1,decode_b8,weight_bytes",
        ]
    )
    assert path.name == "e2e-tiny-moe-cpu-smoke.json"
    doc = json.loads(path.read_text())
    assert "errors" not in doc and doc["settings"]["layers"] == 1
    rows = {(r["scenario"], r["provider"]): r for r in doc["rows"]}
    assert {p for _, p in rows} == {"sharq", "sharq-lmhead", "bf16"}
    for provider in ("sharq", "bf16"):
        for scenario in ("decode_b1", "decode_b8"):
            row = rows[(scenario, provider)]
            assert row["value"] > 0 and "error" not in row and "note" not in row, row
    linear = {p: rows[("weight_bytes_linear", p)]["value"] for p in ("bf16", "sharq")}
    assert 3.7 < linear["bf16"] / linear["sharq"] < 16 / 4.25 + 1e-9  # the experts are in: 4.25 bits a weight
    plans = doc["providers"]["sharq"]["experts_plans"]
    assert set(plans) == {"decode_b1", "decode_b8", "prefill_1024"}
    assert all("host routing" in p and "reference backend" in p for p in plans.values())


def test_e2e_arguments_are_checked(e2e):
    with pytest.raises(SystemExit):
        e2e.parse_args(["--providers", "bf16,int8"])
    with pytest.raises(SystemExit):
        e2e.parse_args(["--scenarios", "decode_b2"])
    with pytest.raises(SystemExit):
        e2e.parse_args(["--new-tokens", "1"])
    gemlite = ["gemlite-int4", "gemlite-fp8"] if e2e.load_gemlite() is not None else []
    assert e2e.parse_args([]).providers == ["sharq", "sharq-lmhead", "bf16", "fp8", *gemlite]
    assert e2e.parse_args(["--model", "qwen3-30b-a3b"]).providers == ["sharq", "sharq-lmhead", "bf16"]
    assert e2e.parse_args(["--model", "qwen3-30b-a3b", "--providers", "fp8"]).providers == ["fp8"]
    assert e2e.parse_args(["--layers", "4"]).layers == 4
    with pytest.raises(SystemExit):
        e2e.parse_args(["--layers", "0"])


def test_ratios_against_the_faster_fp8_peer(e2e):
    """vs_fp8_best is the advantage over whichever FP8 peer is faster in that scenario (time: the
    smaller; serving throughput: the larger)."""
    rows = (
        [
            {"scenario": "decode_b1", "provider": p, "value": v}
            for p, v in (("sharq", 4.0), ("bf16", 8.0), ("fp8", 6.0), ("gemlite-fp8", 5.0))
        ]
        + [
            {"scenario": "serving_mix", "provider": p, "value": v}
            for p, v in (("sharq", 900.0), ("fp8", 1000.0), ("gemlite-fp8", 800.0))
        ]
        + [{"scenario": "prefill_1024", "provider": p, "value": v} for p, v in (("sharq", 2.0), ("bf16", 1.0))]
    )
    got = e2e.ratios(rows)
    assert got["decode_b1"] == {"vs_bf16": 2.0, "vs_fp8": 1.5, "vs_gemlite-fp8": 1.25, "vs_fp8_best": 1.25}
    assert got["serving_mix"]["vs_fp8_best"] == pytest.approx(0.9)
    assert "vs_fp8_best" not in got["prefill_1024"] and got["prefill_1024"]["vs_bf16"] == 0.5


def test_model_configs_have_the_real_hyperparameters():
    sys.path.insert(0, str(BENCH))
    try:
        from e2e_models import model_config
    finally:
        sys.path.remove(str(BENCH))
    llama, qwen = model_config("llama-3.1-8b"), model_config("qwen2.5-7b")
    assert (
        llama.hidden_size,
        llama.num_hidden_layers,
        llama.num_attention_heads,
        llama.num_key_value_heads,
        llama.intermediate_size,
        llama.vocab_size,
    ) == (4096, 32, 32, 8, 14336, 128256)
    assert llama.rope_parameters["rope_type"] == "llama3" and llama.rope_parameters["rope_theta"] == 500000.0
    assert (
        qwen.hidden_size,
        qwen.num_hidden_layers,
        qwen.num_attention_heads,
        qwen.num_key_value_heads,
        qwen.intermediate_size,
        qwen.vocab_size,
    ) == (3584, 28, 28, 4, 18944, 152064)
    assert set(qwen.layer_types) == {"full_attention"}
    # parameter counts of the real models (8.03 B and 7.62 B), computed from the configs
    import torch
    from transformers import AutoModelForCausalLM

    moe = model_config("qwen3-30b-a3b")
    assert (
        moe.hidden_size,
        moe.num_hidden_layers,
        moe.num_attention_heads,
        moe.num_key_value_heads,
        moe.head_dim,
        moe.num_experts,
        moe.num_experts_per_tok,
        moe.moe_intermediate_size,
        moe.vocab_size,
    ) == (2048, 48, 32, 4, 128, 128, 8, 768, 151936)
    assert model_config("qwen3-30b-a3b", layers=3).num_hidden_layers == 3
    for config, billions in ((llama, 8.03), (qwen, 7.62), (moe, 30.53)):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def test_benchmark_layer_shapes_match_the_model_configs(e2e):
    """benchmarks/shapes.py: the (N, K) of each model's linears follow from its hyperparameters
    (the e2e models' configs, and the published ones of Qwen3-30B-A3B and SmolLM2-135M)."""
    import e2e_models
    from shapes import MODEL_LAYERS

    def layers(hidden, heads, kv_heads, head_dim, mlp):
        attn = heads * head_dim
        return {
            "qkv": (attn + 2 * kv_heads * head_dim, hidden),
            "o": (hidden, attn),
            "gate_up": (2 * mlp, hidden),
            "down": (hidden, mlp),
        }

    for name in ("llama-3.1-8b", "qwen2.5-7b"):
        c = e2e_models.MODELS[name]
        head_dim = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
        assert MODEL_LAYERS[name] == layers(
            c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], head_dim, c["intermediate_size"]
        )
    assert MODEL_LAYERS["smollm2-135m"] == layers(576, 9, 3, 64, 1536)
    c = e2e_models.MODELS["qwen3-30b-a3b"]
    qwen3 = layers(
        c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["moe_intermediate_size"]
    )
    assert MODEL_LAYERS["qwen3-30b-a3b"] == {
        "qkv": qwen3["qkv"],
        "o": qwen3["o"],
        "expert_gate_up": qwen3["gate_up"],
        "expert_down": qwen3["down"],
    }
