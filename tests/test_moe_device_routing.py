"""MoE layers routed on the device (kernels/moe_route.py, kernels/gemv_experts.py, nn/experts.py).

- the routing kernel equals its torch twin (sorted pairs, tiles, combine order) for random, repeated
  and unused experts, pairs routed nowhere, 1 and 2 rows per tile;
- the per-expert amax and the weighted combine equal the host loop's (index_add_ per expert);
- the experts GEMV equals the decode GEMV of each expert's weight on its rows, bit for bit;
- SharqExperts with device routing equals the host loop bit for bit (T = 1, 2, 8, 33 tokens, both
  granularities, biases), and runs with no host synchronisation: it traces into one fullgraph
  torch.compile graph and a dispatch mode sees no synchronising op (the host loop fails both);
- a tiny Qwen3-MoE model: device and host routing give the same logits, and StaticDecoder's
  fullgraph-compiled decode step (what the CUDA graph captures) runs the device routing.

Without a GPU the kernels run under TRITON_INTERPRET=1 at small shapes.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
pytest.importorskip("transformers")

import sharq.kernels.plan as plan_module  # noqa: E402
from sharq import PRESETS, RuntimeOptions  # noqa: E402
from sharq.kernels.gemv_experts import experts_gemv, host_tiles  # noqa: E402
from sharq.kernels.gemv_nvfp4 import fp4_weight_gemv  # noqa: E402
from sharq.kernels.moe_route import combine_experts, combine_reference, route_experts, route_reference, segment_amax  # noqa: E402
from sharq.kernels.plan import experts_max_tiles, plan_experts  # noqa: E402
from sharq.nn.experts import SharqExperts  # noqa: E402
from sharq.ops import prepare  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON = PRESETS["sharq-nvfp4"]  # run with backend "triton" (TRITON_OPTIONS)
TRITON_OPTIONS = RuntimeOptions(backend="triton")


@pytest.fixture(autouse=True)
def _wide_tiles(monkeypatch):
    """Under the interpreter every program costs ~0.2 s whatever its size: the experts GEMV runs 16
    columns a program and the preparation 2048 positions (the values do not depend on either)."""
    if DEVICE == "cuda":
        return
    import sharq.kernels.prepare_fp4 as prep_module

    tiles, prep_tiles = plan_module._experts_tiles, prep_module._prep_tiles
    monkeypatch.setattr(plan_module, "_experts_tiles", lambda tokens: {**tiles(tokens), "BLOCK_N": 16})
    monkeypatch.setattr(prep_module, "_prep_tiles", lambda m, k: (prep_tiles(m, k)[0], 2048, prep_tiles(m, k)[2]))


def _top_k(t: int, k: int, e: int, seed: int, *, unused=(), nowhere: float = 0.0) -> torch.Tensor:
    """(T, k) distinct experts per token, never any of `unused`; a share `nowhere` of the slots is E."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor([x for x in range(e) if x not in unused])
    idx = torch.stack([pool[torch.randperm(len(pool), generator=g)[:k]] for _ in range(t)])
    idx[torch.rand(t, k, generator=g) < nowhere] = e
    return idx.to(DEVICE)


# --- routing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t,k,e", [(1, 8, 16), (2, 2, 4), (8, 2, 4), (8, 8, 128), (33, 2, 8), (5, 3, 64)])
@pytest.mark.parametrize("rows", [1, 2])
def test_route_equals_its_torch_twin(t, k, e, rows):
    idx = _top_k(t, k, e, seed=t * 100 + k, unused=(1,), nowhere=0.1)
    tiles = experts_max_tiles(t * k, e, rows)
    got = route_experts(idx, e, rows, tiles)
    want = route_reference(idx, e, rows, tiles)
    for name, a, b in zip(got._fields, got, want):
        assert a.dtype == torch.int32 and torch.equal(a.cpu(), b.cpu()), name
    counts, starts = got.tiles[2].cpu(), got.tiles[1].cpu()
    real = (idx < e).sum().item()
    assert counts.sum().item() == real and counts.max().item() <= rows  # every routed pair in one tile
    assert (got.tiles[0].cpu()[counts > 0] != 1).all()  # the unused expert has no tile
    covered = torch.cat([torch.arange(s, s + c) for s, c in zip(starts.tolist(), counts.tolist()) if c])
    assert torch.equal(covered.sort().values, torch.arange(real))


def test_route_worst_case_fills_the_grid():
    """The plan's grid is the most tiles any routing needs: reached when all experts are hit with odd
    counts, never exceeded."""
    t, k, e = 3, 2, 4  # 6 pairs over 4 experts: counts (1, 1, 1, 3) give 1 + 1 + 1 + 2 = 5 tiles of 2
    plan = plan_experts(t, k, e, TRITON, "cuda", options=TRITON_OPTIONS)
    assert plan.tile_rows == 2 and plan.max_tiles == 5
    idx = torch.tensor([[0, 3], [1, 3], [2, 3]], device=DEVICE)
    route = route_experts(idx, e, 2, plan.max_tiles)
    assert route.tiles[2].tolist() == [1, 1, 1, 2, 1]
    assert route.tiles[0].tolist() == [0, 1, 2, 3, 3]


def test_segment_amax_is_each_experts_amax():
    x = torch.randn(9, 100, device=DEVICE).to(torch.bfloat16)
    x[4, 7] = -300.0
    seg = torch.tensor([0, 0, 2, 2, 2, 3, 5, 5, 9], dtype=torch.int32, device=DEVICE)
    got = segment_amax(x, seg).view(torch.float32).cpu()
    want = torch.stack([x.float().abs()[seg == s].max() for s in seg]).cpu()
    assert torch.equal(got, want) and got[2] == 300.0


@pytest.mark.parametrize(
    "y_dtype,w_dtype",
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float16),
        (torch.float32, torch.float32),
        (torch.float16, torch.bfloat16),
    ],
)
def test_combine_equals_index_add_per_expert(y_dtype, w_dtype):
    t, k, e = 7, 3, 6
    idx = _top_k(t, k, e, seed=5, unused=(4,), nowhere=0.15)
    idx[0] = e  # a token routed nowhere at all: zeros
    route = route_experts(idx, e, 2, t * k)
    pairs = t * k
    y = (torch.randn(pairs, 40, device=DEVICE) * 3).to(y_dtype)
    w = torch.rand(t, k, device=DEVICE).to(w_dtype)
    pos = torch.empty(t, k, dtype=torch.long, device=DEVICE)
    pos.scatter_(1, route.slots.long(), route.order.long())  # (token, slot) -> sorted position
    got = combine_experts(y, w, route, e, y_dtype)
    want = combine_reference(y, w, idx, pos, e, y_dtype)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(got[0], torch.zeros_like(got[0]))
    # the order matters: the same sums in float32 differ from the rounded ones somewhere
    if y_dtype is torch.bfloat16:
        loose = combine_reference(y.float(), w.float(), idx, pos, e, torch.float32)
        assert not torch.equal(loose.to(y_dtype), got)


# --- the experts GEMV ----------------------------------------------------------------------------------
def _experts(e=4, h=128, i=32, *, config=TRITON, bias=False, seed=0, dtype=torch.bfloat16):
    """A SharqExperts of random Qwen3-MoE experts (E, hidden h, MLP i); with `bias`, random biases."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    torch.manual_seed(seed)
    hf = Qwen3MoeExperts(Qwen3MoeConfig(hidden_size=h, moe_intermediate_size=i, num_experts=e, num_experts_per_tok=2))
    with torch.no_grad():
        hf.gate_up_proj.normal_(0, 0.1)
        hf.down_proj.normal_(0, 0.1)
    module = SharqExperts.from_experts(hf.to(DEVICE, dtype), config, name="experts")
    module.options = TRITON_OPTIONS
    if bias:
        for proj, n in (("gate", i), ("up", i), ("down", h)):
            setattr(module, f"{proj}_bias", torch.nn.Parameter(0.1 * torch.randn(e, n).to(dtype), requires_grad=False))
    return module.to(DEVICE)


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_experts_gemv_equals_the_decode_gemv_of_each_expert(granularity):
    """Each routed row of each tile (3 rows of expert e: tiles of 2 + 1) is what the decode GEMV
    computes for that row with expert e's gate and up weights (with biases), bit for bit."""
    module = _experts(e=3, h=64, i=16, config=TRITON.replace(granularity=granularity), bias=True)
    x = torch.randn(5, 64, device=DEVICE).to(torch.bfloat16)
    plan = plan_experts(5, 2, 3, module.config, DEVICE, intermediate=16, options=TRITON_OPTIONS)
    prepared = prepare(x, module.config, TRITON_OPTIONS, plan=plan.input)
    assert prepared.layout == "gemv" and plan.tiles["BLOCK_M"] == 2
    rows = torch.tensor([4, 0, 2], device=DEVICE)
    expert = 2
    got = experts_gemv(
        prepared.terms,
        prepared.global_scale,
        rows.int(),
        host_tiles(expert, 3, 2, DEVICE),
        module._members("gate", "up"),
        3,
        torch.float32,
        plan.tiles,
    )
    for r in range(3):
        one = tuple(t[rows[r] : rows[r] + 1] for t in prepared.terms)
        s_x = prepared.global_scale if prepared.global_scale.dim() == 0 else prepared.global_scale[rows[r]]
        for col, proj in ((0, "gate"), (16, "up")):
            want = fp4_weight_gemv(
                one,
                s_x,
                module.expert_weight(proj, expert),
                module._bias(proj, expert),
                torch.float32,
                tiles={"BLOCK_N": 16},
            )
            assert torch.equal(got[r : r + 1, col : col + 16], want), (r, proj)


# --- SharqExperts: device routing == host loop ------------------------------------------------------------
def _both(module, x, idx, w):
    module.routing = "host"
    host = module(x, idx, w)
    module.routing = "device"
    device = module(x, idx, w)
    module.routing = "auto"
    return host, device


@pytest.mark.parametrize(
    "t,granularity",
    [
        (1, "tensor"),
        (2, "token"),
        pytest.param(8, "tensor", marks=pytest.mark.slow),
        pytest.param(8, "token", marks=pytest.mark.slow),
        pytest.param(33, "tensor", marks=pytest.mark.slow),
        pytest.param(33, "token", marks=pytest.mark.slow),
    ],
)
def test_device_routing_equals_the_host_loop(t, granularity, monkeypatch):
    """Bit for bit, with repeated experts across tokens, an expert no token picks and (2 tokens) a
    pair routed nowhere; 33 tokens run
    with the exact operand and the token limit of the experts GEMV raised (a routing test: 66 pairs)."""
    config = TRITON.replace(granularity=granularity)
    if t > plan_module.EXPERTS_GEMV_MAX_TOKENS:
        monkeypatch.setattr(plan_module, "EXPERTS_GEMV_MAX_TOKENS", t)
        config = config.replace(operand="exact")
    e, k = 6, 2
    module = _experts(e=e, h=32, i=16, config=config, seed=t, bias=t == 8)
    x = (torch.randn(t, 32, device=DEVICE) * torch.linspace(0.2, 4, 32, device=DEVICE)).to(torch.bfloat16)
    idx = _top_k(t, k, e, seed=t, unused=(3,))
    idx[0] = torch.tensor([5, 0], device=DEVICE)  # the higher expert in the first slot: sums go by expert
    if t == 2:
        idx[1, 1] = e  # a pair routed nowhere (expert parallelism): no tile, adds nothing
    w = torch.softmax(torch.randn(t, k, device=DEVICE), dim=-1).to(torch.bfloat16)
    plan = module.plan(t, k, x.device, w.dtype)
    assert plan.routing == "device" and plan.expert_gemm == "experts-gemv"
    host, device = _both(module, x, idx, w)
    assert host.dtype == device.dtype == torch.bfloat16 and host.shape == (t, 32)
    assert torch.equal(host, device)
    assert host.abs().sum() > 0


# --- no host synchronisation -------------------------------------------------------------------------------
class _SyncDetector(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op that reads a tensor value on the host (or sizes its output by one)."""

    SYNCING = {
        "nonzero",
        "_local_scalar_dense",
        "item",
        "is_nonzero",
        "equal",
        "masked_select",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
        "bincount",
        "repeat_interleave",
        "allclose",
        "to_list",
    }

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNCING:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_device_routing_reads_nothing_on_the_host():
    """Run eagerly, the device path calls no op that synchronises; the host loop does (so the check
    bites). That it also traces into one fullgraph graph (no .item(), .tolist(), int(tensor) or
    data-dependent shape): test_static_decoder_compiles_the_moe_step_into_one_graph."""
    module = _experts(e=4, h=32, i=16)
    x = torch.randn(1, 32, device=DEVICE).to(torch.bfloat16)
    idx = torch.tensor([[3, 1]], device=DEVICE)
    w = torch.rand(1, 2, device=DEVICE).to(torch.bfloat16)
    module.routing = "device"
    with _SyncDetector() as detector:
        eager = module(x, idx, w)
    assert detector.seen == []
    module.routing = "host"
    with _SyncDetector() as detector:
        assert torch.equal(module(x, idx, w), eager)
    assert "nonzero" in detector.seen and "_local_scalar_dense" in detector.seen


def test_plan_decides_and_prints():
    plan = plan_experts(8, 8, 128, TRITON, "cuda", intermediate=768, options=TRITON_OPTIONS)
    assert (plan.routing, plan.expert_gemm, plan.tile_rows, plan.max_tiles, plan.input.preparation) == (
        "device",
        "experts-gemv",
        2,
        64,
        "gemv",
    )
    assert "device routing" in plan.describe() and "64 tiles" in plan.describe()
    one = plan_experts(1, 8, 128, TRITON, "cuda", intermediate=768, options=TRITON_OPTIONS)
    assert (one.tile_rows, one.max_tiles, one.tiles["BLOCK_N"] if DEVICE == "cuda" else 1) == (1, 8, 1)
    long = plan_experts(17, 8, 128, TRITON, "cuda", intermediate=768, options=TRITON_OPTIONS)
    assert (long.routing, long.expert_gemm, long.input.preparation) == ("host", "per-call", "operand-rows")
    ref = plan_experts(1, 8, 128, PRESETS["sharq-nvfp4"], "cpu")
    assert (ref.routing, ref.reason) == ("host", "reference backend")
    assert plan_experts(4, 2, 8, TRITON, "cuda", routing="host", options=TRITON_OPTIONS).routing == "host"
    assert plan_experts(4, 2, 8, TRITON, "cuda", options=RuntimeOptions(check_finite=True)).routing == "host"
    assert plan_experts(4, 2, 8, TRITON, "cuda", weights_dtype=torch.float64, options=TRITON_OPTIONS).routing == "host"
    with pytest.raises(ValueError, match="17 tokens"):
        plan_experts(17, 8, 128, TRITON, "cuda", routing="device", options=TRITON_OPTIONS)
    with pytest.raises(ValueError, match="mxfp4"):
        plan_experts(1, 8, 128, PRESETS["sharq-mxfp4"], "cuda", routing="device", options=TRITON_OPTIONS)
    with pytest.raises(ValueError, match="routing must be"):
        plan_experts(1, 8, 128, TRITON, "cuda", routing="gpu", options=TRITON_OPTIONS)
    table = plan_module.experts_plan_table(TRITON, 128, 8, 768, [1, 8, 17])
    assert len(table.splitlines()) == 3 and "per-expert linears" in table.splitlines()[2]


# --- a tiny Qwen3-MoE model ----------------------------------------------------------------------------------
def _moe_model():
    """One decoder layer of Qwen3-MoE (hidden 32, 4 experts of MLP 16, top 2) in float32, only its
    experts quantized (Triton backend; attention stays float32, which keeps the interpreter fast)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    import sharq

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_hidden_layers=1,
        vocab_size=64,
        max_position_embeddings=64,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        tie_word_embeddings=False,
    )
    model = Qwen3MoeForCausalLM(cfg).eval().to(DEVICE)
    report = sharq.quantize_(model, TRITON, modules_to_not_convert=["self_attn"], backend="triton")
    assert report.converted == ["model.layers.0.mlp.experts"]
    experts = model.model.layers[0].mlp.experts
    assert isinstance(experts, SharqExperts) and experts.shared_input.planner == experts.input_plan
    return model, experts


def test_tiny_qwen3_moe_routes_on_the_device_with_the_host_loops_logits(monkeypatch):
    import sharq.kernels.moe_route as route_module

    model, experts = _moe_model()
    ids = torch.randint(1, 64, (2, 4), generator=torch.Generator().manual_seed(1)).to(DEVICE)  # 8 tokens (b8)
    calls = []
    real = route_module.route_experts
    monkeypatch.setattr(route_module, "route_experts", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        experts.routing = "host"
        host = model(ids).logits
        assert calls == []
        experts.routing = "auto"  # device routing for 8 tokens
        device = model(ids).logits
    assert calls == [(8, 2)]
    assert torch.equal(host, device)


def test_static_decoder_compiles_the_moe_step_into_one_graph():
    """StaticDecoder(compile=...) traces each decode step with fullgraph=True — what its CUDA graph
    captures on a GPU: with device routing the MoE step traces and gives the tokens and logits of
    the uncompiled host loop; with host routing it cannot trace."""
    from sharq.runtime import StaticDecoder

    model, experts = _moe_model()
    ids = torch.randint(1, 64, (1, 2), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    experts.routing = "host"
    eager = StaticDecoder(model, 1, 8, split_argmax=False)
    want = eager.generate(ids, 3)  # the prefill's token, then two decode steps
    experts.routing = "auto"
    torch._dynamo.reset()
    compiled = StaticDecoder(model, 1, 8, compile="aot_eager", split_argmax=False)
    assert torch.equal(compiled.generate(ids, 3), want)
    assert torch.equal(compiled.logits, eager.logits)
    experts.routing = "host"
    with pytest.raises(Exception, match="(?i)nonzero|data-dependent|dynamic shape|graph break"):
        StaticDecoder(model, 1, 8, compile="aot_eager", split_argmax=False).generate(ids, 2)


def test_ops_pass_opcheck():
    """Schema, fake implementations and autograd registration of the routing ops and the experts
    GEMV (every output row written: one tile per row), and the preparation with a given amax."""
    from sharq.kernels.prepare_fp4 import prepare_activation_triton

    idx = torch.tensor([[2, 0], [2, 1], [0, 3]], device=DEVICE)
    torch.library.opcheck(torch.ops.sharq.route_experts.default, (idx, 4, 2, 5))
    route = route_experts(idx, 4, 1, 6)
    y = torch.randn(6, 32, device=DEVICE).to(torch.bfloat16)
    w = torch.rand(3, 2, device=DEVICE)
    torch.library.opcheck(
        torch.ops.sharq.combine_experts.default,
        (y, w, route.order, route.slots, route.sorted_expert, 4, torch.bfloat16),
    )
    torch.library.opcheck(torch.ops.sharq.segment_amax.default, (y, route.sorted_expert))
    module = _experts(e=4, h=32, i=16)
    pairs = route_experts(idx, 4, 2, 5)  # 4 tiles of 1-2 rows cover the 6 rows, one unused
    inner = torch.randn(6, 16, device=DEVICE).to(torch.bfloat16)
    prepared = prepare_activation_triton(inner, module._gemv_config, with_terms=True, terms_layout="gemv", gemv_rows=6)
    (down,) = module._members("down")
    torch.library.opcheck(
        torch.ops.sharq.experts_gemv.default,
        (
            *prepared.terms,
            None,
            prepared.global_scale.reshape(-1),
            pairs.tiles,
            [down["codes"]],
            [down["scales"]],
            [down["global_scale"]],
            [],
            32,
            6,
            torch.bfloat16,
            2,
            32,
            1024,
            2,
        ),
    )
    amax = segment_amax(y, route.sorted_expert)
    torch.library.opcheck(
        torch.ops.sharq.prepare_fp4.default, (y, 3, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, 3, 0, 0, 0, amax)
    )


# --- on the GPU (-m gpu): Qwen3-30B-A3B expert shapes, the asm kernels, a CUDA graph -----------------------
def _routing(t: int, e: int, k: int, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    probs = torch.softmax(torch.randn(t, e, device="cuda", generator=g), dim=-1)
    w, idx = torch.topk(probs, k, dim=-1)
    return idx, (w / w.sum(-1, keepdim=True)).to(torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("t", [1, 2, 8, 16])
def test_qwen3_30b_experts_on_the_gpu_route_capture_and_match(t):
    """128 experts of hidden 2048 / MLP 768, top 8: device routing equals the host loop bit for bit
    with the compiled asm kernels, synchronises nothing (set_sync_debug_mode raises on a sync), and a
    CUDA graph of the layer replays new routings to the host loop's bits."""
    module = _experts(e=128, h=2048, i=768)
    x = torch.randn(t, 2048, device="cuda").to(torch.bfloat16)
    idx, w = _routing(t, 128, 8, seed=t)
    host, device = _both(module, x, idx, w)
    assert torch.equal(host, device)
    module.routing = "device"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        module(x, idx, w)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    static = [x.clone(), idx.clone(), w.clone()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        module(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = module(*static)
    for seed in (100, 101):
        x2 = torch.randn(t, 2048, device="cuda").to(torch.bfloat16)
        idx2, w2 = _routing(t, 128, 8, seed=seed)
        for buf, new in zip(static, (x2, idx2, w2)):
            buf.copy_(new)
        graph.replay()
        module.routing = "host"
        assert torch.equal(out, module(x2, idx2, w2))
        module.routing = "device"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_experts_gemv_equals_the_decode_gemv_on_the_gpu():
    """With the asm helpers and each routing's tiling (1 row: the decode GEMV's M = 1 tiling; 2-row
    tiles: its M = 2 tiling), every routed row equals `fp4_weight_gemv` of that row (1 row) or row
    pair, bit for bit: one accumulation code (`_gemv_rows`), one tiling."""
    module = _experts(e=8, h=2048, i=768)
    x = torch.randn(4, 2048, device="cuda").to(torch.bfloat16)
    for tokens, rows in ((1, [0]), (4, [3, 1])):
        plan = plan_experts(tokens, 2, 8, module.config, "cuda", intermediate=768, options=TRITON_OPTIONS)
        prepared = prepare(x[:tokens], module.config, TRITON_OPTIONS, plan=plan.input)
        src = torch.tensor(rows, device="cuda", dtype=torch.int32)
        got = experts_gemv(
            prepared.terms,
            prepared.global_scale,
            src,
            host_tiles(5, len(rows), plan.tile_rows, "cuda"),
            module._members("gate", "up"),
            len(rows),
            torch.bfloat16,
            plan.tiles,
        )
        one = tuple(t[src.long()] for t in prepared.terms)
        want = torch.cat(
            [
                fp4_weight_gemv(one, prepared.global_scale, module.expert_weight(p, 5), None, torch.bfloat16)
                for p in ("gate", "up")
            ],
            dim=1,
        )
        assert torch.equal(got, want), tokens


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_", [False, "inductor"])
def test_static_decoder_captures_the_moe_step_on_the_gpu(compile_):
    """The tiny Qwen3-MoE decode step in a CUDA graph (eager step or inductor-compiled) gives the
    tokens of the uncaptured host loop."""
    from sharq.runtime import StaticDecoder

    model, experts = _moe_model()
    ids = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(4)).to("cuda")
    experts.routing = "host"
    want = StaticDecoder(model, 2, 16, graph=False).generate(ids, 6)
    experts.routing = "auto"
    torch._dynamo.reset()
    decoder = StaticDecoder(model, 2, 16, graph=True, compile=compile_)
    assert torch.equal(decoder.generate(ids, 6), want)
    assert decoder._graph is not None
