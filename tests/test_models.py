"""`sharq.quantize_` on tiny random-weight models of every supported architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import sharq.ops as ops_mod  # noqa: E402
from sharq import PRESETS, SharqConfig, SharqLinear  # noqa: E402
from sharq.metrics import sqnr_db  # noqa: E402
from sharq.models import quantize_  # noqa: E402
from sharq.nn.experts import SharqExperts  # noqa: E402
from sharq.nn.fused_mlp import SharqMLP  # noqa: E402
from sharq.nn.fused_norm import FusedRMSNormPrep, rms_norm_reference  # noqa: E402

from .tiny_models import BUILDERS, VOCAB, tiny_model  # noqa: E402

ARCHS = sorted(BUILDERS)
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _ids(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _expected_targets(model) -> set[str]:
    """Decoder projections (and fused-experts modules) the conversion must swap — found by name."""
    out = set()
    for name, module in model.named_modules():
        if "visual" in name or "vision" in name:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if type(module) is nn.Linear and leaf in PROJ:
            out.add(name)
        elif leaf == "experts" and hasattr(module, "gate_up_proj"):
            out.add(name)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_swaps_exactly_the_decoder_linears(arch):
    model = tiny_model(arch)
    before = {n: type(m) for n, m in model.named_modules()}
    expected = _expected_targets(model)
    report = quantize_(model, "sharq-nvfp4")
    assert set(report.converted) == expected
    after = dict(model.named_modules())
    for name, cls in before.items():
        if name in expected:
            assert isinstance(after[name], (SharqLinear, SharqExperts)), name
        elif name in report.fused_norms:
            assert isinstance(after[name], FusedRMSNormPrep), name
        elif name in report.fused_mlps:  # act(gate) · up fused into down_proj's preparation
            assert isinstance(after[name], SharqMLP) and after[name].original_class == cls.__name__, name
        elif name in after and not any(name.startswith(e + ".") for e in expected):
            assert type(after[name]) is cls, f"{name} changed from {cls.__name__} to {type(after[name]).__name__}"
    # embeddings, lm_head, routers and vision towers stay
    assert type(model.lm_head) is nn.Linear
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    # every layer has its two fused norms: in front of q/k/v and in front of gate/up (or the experts)
    n_layers = model.config.get_text_config().num_hidden_layers
    assert len(report.fused_norms) == 2 * n_layers
    assert all(len(c) == 3 for g, c in report.groups.items() if g.endswith(".qkv"))
    # every dense MLP (all of them but the experts) is a SharqMLP
    dense = [
        n
        for n, m in model.named_modules()
        if n.endswith(".mlp") and isinstance(getattr(m, "down_proj", None), SharqLinear)
    ]
    assert set(report.fused_mlps) == set(dense) and (dense or arch in ("mixtral",)), arch


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_preset_is_bit_identical(arch):
    model = tiny_model(arch)
    ids = _ids()
    ref = _logits(model, ids)
    report = quantize_(model, "bf16")
    assert report.converted == [] and not any(isinstance(m, SharqLinear) for m in model.modules())
    assert torch.equal(_logits(model, ids), ref)


# Logit SQNR bars (dB) of the tiny random models, per preset: measured minimum over the eight
# architectures minus ~1 dB (Gemma 3 is the low one: its random norms and sqrt(H) embedding scale
# amplify the error). A broken plumbing (wrong rows, wrong scale) lands far below these.
SQNR_BARS = {
    "nvfp4": 3.0,
    "mxfp4": 1.0,
    "hif4": 4.0,
    "sharq-nvfp4": 5.0,
    "sharq-nvfp4-w16": 5.5,
    "sharq-mxfp4": 3.0,
    "sharq-hif4": 5.5,
    "sparse-only": -2.5,
    "dense-dense": 5.5,
    "sparse-sparse": 3.0,
    "naive-residual": 3.0,
}


@pytest.mark.parametrize("arch", ARCHS)
def test_output_close_to_bf16_and_sharq_beats_plain_fp4(arch):
    ids = _ids()
    ref = _logits(tiny_model(arch), ids)
    got = {}
    for preset in SQNR_BARS:
        model = tiny_model(arch)
        quantize_(model, preset)
        got[preset] = sqnr_db(ref, _logits(model, ids))
        assert got[preset] >= SQNR_BARS[preset], (preset, got[preset])
    for fmt in ("nvfp4", "mxfp4", "hif4"):
        assert got[f"sharq-{fmt}"] > got[fmt], (fmt, got)


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe", "gemma3"])
def test_generate_works(arch):
    model = tiny_model(arch)
    quantize_(model, "sharq-nvfp4")
    ids = _ids(batch=1, seq=5)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert out.shape == (1, 11) and torch.equal(out[:, :5], ids)


def test_generate_works_qwen3_vl_text_only():
    model = tiny_model("qwen3_vl")
    quantize_(model, "sharq-nvfp4")
    ids = _ids(batch=1, seq=5)
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape == (1, 9)


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe", "mixtral", "gemma3"])
def test_preparation_runs_once_per_shared_input(arch, monkeypatch):
    model = tiny_model(arch)
    report = quantize_(model, "sharq-nvfp4")
    calls = []
    real = ops_mod.prepare_activation

    def counting(x, config, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, config, **kwargs)

    monkeypatch.setattr(ops_mod, "prepare_activation", counting)  # every preparation goes through ops
    groups = {m.shared_input for m in model.modules() if isinstance(m, (SharqLinear, SharqExperts)) and m.shared_input}
    assert {g.name for g in groups} == set(report.groups)
    ids = _ids(batch=2, seq=7)
    _logits(model, ids)
    for g in groups:
        assert g.prepare_count == 1, (g.name, g.prepare_count)
        assert g._source is None  # released after the last consumer
    # total: per layer one shared q/k/v preparation, o_proj, one shared gate/up preparation, and
    # down_proj (once per routed expert in MoE layers)
    experts = [m for m in model.modules() if isinstance(m, SharqExperts)]
    n_layers = model.config.num_hidden_layers
    dense_layers = n_layers - len(experts)
    assert len(calls) == 3 * n_layers + dense_layers + sum(e.down_prepare_count for e in experts)
    assert all(c == (14, model.config.hidden_size) for c in calls if c[-1] == model.config.hidden_size)


class _LanesNorm(nn.Module):
    """A model's RMSNorm with its statistic in sharq's "lanes" order, nothing else (no preparation)."""

    def __init__(self, norm: FusedRMSNormPrep) -> None:
        super().__init__()
        self.weight, self.eps, self.variant = norm.weight, norm.eps, norm.variant

    def forward(self, x):
        return rms_norm_reference(x, self.weight, self.eps, self.variant, order="lanes")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3_moe", "gemma3"])
@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_fusion_changes_nothing_numerically(arch, granularity):
    """Fused norms + shared preparation (+ SharqMLP) give the same bits as each layer preparing its
    own input after a norm of the same ("lanes") order."""
    ids = _ids()
    config = SharqConfig.from_preset("sharq-nvfp4", granularity=granularity)
    fused = tiny_model(arch)
    quantize_(fused, config)
    plain = tiny_model(arch)  # the same layers swapped one by one: no fused norm, no sharing
    for name in fused.sharq_report.converted:
        old = plain.get_submodule(name)
        cls = (
            SharqExperts.from_experts if isinstance(fused.get_submodule(name), SharqExperts) else SharqLinear.from_float
        )
        plain.set_submodule(name, cls(old, config, name=name))
    for name in fused.sharq_report.fused_norms:
        plain.set_submodule(name, _LanesNorm(fused.get_submodule(name)))
    assert all(not isinstance(m, (FusedRMSNormPrep, SharqMLP)) for m in plain.modules())
    assert torch.equal(_logits(fused, ids), _logits(plain, ids))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_lanes_norm_is_the_models_norm_up_to_the_statistics_order(arch):
    """The converted norm computes the model's formula (checked bit for bit with torch's order when
    converting); the "lanes" order moves some rows' statistic by an FP32 rounding, which moves an
    output by at most one ulp of the model dtype, rarely."""
    model = tiny_model(arch)
    quantize_(model, "sharq-nvfp4")
    x = torch.randn(64, model.config.hidden_size, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16) * 4
    for name, norm in model.named_modules():
        if isinstance(norm, FusedRMSNormPrep):
            torch_order = rms_norm_reference(x, norm.weight, norm.eps, norm.variant, order="torch")
            lanes = rms_norm_reference(x, norm.weight, norm.eps, norm.variant, order="lanes")
            ulps = (torch_order.float().view(torch.int32) - lanes.float().view(torch.int32)).abs() >> 16
            assert int(ulps.max()) <= 1, name
            assert float((ulps != 0).float().mean()) < 0.02, name


def test_experts_match_per_expert_linears_token_granularity():
    """SharqExperts = one SharqLinear per expert projection on the routed rows (token: exact)."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(hidden_size=64, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
    hf = Qwen3MoeExperts(cfg)
    with torch.no_grad():
        hf.gate_up_proj.normal_(0, 0.1)
        hf.down_proj.normal_(0, 0.1)
    config = SharqConfig.from_preset("sharq-nvfp4", granularity="token")
    sq = SharqExperts.from_experts(hf, config, name="experts")
    x = torch.randn(9, 64) * torch.linspace(0.1, 3, 64)
    top_k = torch.stack([torch.randperm(4)[:2] for _ in range(9)])
    weights = torch.rand(9, 2)
    got = sq(x, top_k, weights)
    want = torch.zeros_like(x)
    for e in range(4):
        rows, pos = torch.where(top_k == e)
        lin = {}
        for name, w in (("gate", hf.gate_up_proj[e, :32]), ("up", hf.gate_up_proj[e, 32:]), ("down", hf.down_proj[e])):
            layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
            layer.weight.data.copy_(w)
            lin[name] = SharqLinear.from_float(layer, config)
        h = hf.act_fn(lin["gate"](x[rows])) * lin["up"](x[rows])
        want.index_add_(0, rows, lin["down"](h) * weights[rows, pos, None])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_qwen3_vl_vision_tower_stays_unless_selected():
    model = tiny_model("qwen3_vl")
    report = quantize_(model, "sharq-nvfp4")
    assert not any("visual" in n for n in report.converted)
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if "visual" in n and isinstance(m, nn.Linear))
    model = tiny_model("qwen3_vl")
    report = quantize_(model, "sharq-nvfp4", filter_fn=lambda m, n: True)
    vis = [n for n in report.converted if "visual" in n]
    assert vis and all(isinstance(model.get_submodule(n), SharqLinear) for n in vis)


def test_generic_path_plain_module_tree():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32), nn.Linear(32, 8))
    report = quantize_(net, "sharq-nvfp4", modules_to_not_convert=("3",))
    assert report.architecture == "generic" and report.converted == ["0", "2"]
    assert isinstance(net[0], SharqLinear) and isinstance(net[2], SharqLinear) and type(net[3]) is nn.Linear
    assert not report.fused_norms
    net2 = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    report = quantize_(net2, PRESETS["nvfp4"], filter_fn=lambda m, n: n == "1")
    assert report.converted == ["1"] and type(net2[0]) is nn.Linear


def test_modules_to_not_convert_by_dotted_parts():
    model = tiny_model("llama")
    report = quantize_(model, "sharq-nvfp4", modules_to_not_convert=("lm_head", "layers.0", "down_proj"))
    assert all(".layers.1." in n and not n.endswith("down_proj") for n in report.converted)
    assert len(report.converted) == 6
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    assert type(model.model.layers[0].input_layernorm) is not FusedRMSNormPrep


def _snapshot(model):
    return {n: type(m) for n, m in model.named_modules()}


def _assert_refused_untouched(model, match: str) -> None:
    """quantize_ raises a ValueError matching `match` and leaves every parameter and module as it was."""
    before = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        quantize_(model, "sharq-nvfp4")
    assert _snapshot(model) == before


def test_unsupported_decoder_is_refused_and_untouched():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    _assert_refused_untouched(model, r"model_type 'gpt2'.*Supported: Llama.*filter_fn")


def test_never_half_converts():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    _assert_refused_untouched(model, r"layers\.1\.mlp\.down_proj.*NaN")

    model = tiny_model("llama")
    model.model.layers[1].post_attention_layernorm = nn.LayerNorm(model.config.hidden_size)
    _assert_refused_untouched(model, r"layers\.1\.post_attention_layernorm: LayerNorm .*cannot fuse")


def test_refuses_to_quantize_twice_and_bad_arguments():
    model = tiny_model("llama")
    quantize_(model, "sharq-nvfp4")
    with pytest.raises(ValueError, match="already a sharq module"):
        quantize_(model, "nvfp4")
    with pytest.raises(ValueError, match="unknown preset"):
        quantize_(tiny_model("llama"), "fp3")
    with pytest.raises(TypeError, match="SharqConfig or a preset name"):
        quantize_(tiny_model("llama"), 4)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        quantize_("model", "nvfp4")


def test_shared_preparation_is_not_reused_for_other_tensors():
    model = tiny_model("llama")
    quantize_(model, "sharq-nvfp4")
    layer = model.model.layers[0]
    x = torch.randn(3, model.config.hidden_size, dtype=torch.bfloat16)
    y = torch.randn(3, model.config.hidden_size, dtype=torch.bfloat16)
    layer.input_layernorm(x)  # publishes the preparation of norm(x) for q/k/v
    got = layer.self_attn.q_proj(y)  # another tensor: q_proj must prepare y itself
    layer.self_attn.q_proj.shared_input = None
    want = layer.self_attn.q_proj(y)
    assert torch.equal(got, want)
    # an in-place change of the published tensor after publication invalidates it too
    group = layer.self_attn.k_proj.shared_input
    z = layer.input_layernorm(x)
    z.mul_(2)
    got = layer.self_attn.k_proj(z)
    layer.self_attn.k_proj.shared_input = None
    assert torch.equal(got, layer.self_attn.k_proj(z)) and group.prepare_count >= 3


class _LegacyMoeBlock(nn.Module):
    """The older transformers MoE layout: a router nn.Linear and a ModuleList of expert MLPs."""

    def __init__(self, new_block, config):
        super().__init__()
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeMLP

        experts = new_block.experts
        e, i2, h = experts.gate_up_proj.shape
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(h, e, bias=False).to(experts.gate_up_proj.dtype)
        self.experts = nn.ModuleList()
        for idx in range(e):
            mlp = Qwen3MoeMLP(config, intermediate_size=i2 // 2).to(experts.gate_up_proj.dtype)
            with torch.no_grad():
                mlp.gate_proj.weight.copy_(experts.gate_up_proj[idx, : i2 // 2])
                mlp.up_proj.weight.copy_(experts.gate_up_proj[idx, i2 // 2 :])
                mlp.down_proj.weight.copy_(experts.down_proj[idx])
            self.experts.append(mlp)

    def forward(self, hidden_states):
        b, s, h = hidden_states.shape
        x = hidden_states.view(-1, h)
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for idx, expert in enumerate(self.experts):
            rows, pos = torch.where(chosen == idx)
            if rows.numel():
                out.index_add_(0, rows, expert(x[rows]) * weights[rows, pos, None])
        return out.view(b, s, h)


def test_moe_with_one_module_per_expert_layout():
    """Older transformers keep one MLP (nn.Linear gate/up/down) per expert: every expert is converted,
    each expert's gate and up share one preparation, the router stays."""
    model = tiny_model("qwen3_moe")
    for layer in model.model.layers:
        if hasattr(layer.mlp, "experts"):
            layer.mlp = _LegacyMoeBlock(layer.mlp, model.config)
    ids = _ids()
    ref = _logits(model, ids)
    report = quantize_(model, "sharq-nvfp4")
    experts = [n for n in report.converted if ".experts." in n]
    assert len(experts) == 3 * 4  # layer 0 is MoE (layer 1 is dense): 4 experts x gate/up/down
    assert type(model.model.layers[0].mlp.gate) is nn.Linear
    groups = [g for g in report.groups if ".experts." in g]
    assert len(groups) == 4 and all(len(report.groups[g]) == 2 for g in groups)
    assert sqnr_db(ref, _logits(model, ids)) > SQNR_BARS["sharq-nvfp4"]
    for g in groups:
        shared = model.get_submodule(report.groups[g][0]).shared_input
        assert shared.prepare_count <= 1  # gate and up: one preparation per call (0 if not routed)
