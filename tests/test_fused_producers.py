"""The producers of the linears' inputs fused into the preparation (issue 25, SPEC §9): RMSNorm (with
or without the residual add before it) and act(gate) · up, each computed inside the preparation
kernel, give the bits of the unfused chain — torch computing the producer, then `ops.prepare` —
for every planned layout (GEMV operand, bf16 rows, operand rows), both granularities,
three dtypes, non-finite and zero rows; a tiny model's logits are identical with fusion on and off.

Without a GPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py) at small shapes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("triton")

from sharq import PRESETS, RuntimeOptions, ops  # noqa: E402
from sharq.formats.ieee import div_rn  # noqa: E402
from sharq.kernels.plan import PRODUCERS, plan_producer, plan_table  # noqa: E402
from sharq.nn.fused_mlp import SharqMLP, act_mul_reference, activation_table  # noqa: E402
from sharq.nn.fused_norm import NORM_LANES, add_rms_norm_reference, mean_square, rms_inverse  # noqa: E402

from .kernel_launches import RecordingKernel  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NVFP4 = PRESETS["sharq-nvfp4"]
TRITON = RuntimeOptions(backend="triton")
CHECKED = RuntimeOptions(backend="triton", check_finite=True)


def _bits_equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Bitwise equal, NaN matching NaN (any payload); ±Inf and ±0 must match."""
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    view = {1: torch.int8, 2: torch.int16, 4: torch.int32}[a.element_size()]
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0).view(view), b.nan_to_num(0.0).view(view))


def _same_prepared(got, want) -> None:
    assert got.layout == want.layout
    for g, w in ((got.backbone, want.backbone), (got.residual, want.residual)):
        assert (g is None) == (w is None)
        if g is not None:
            assert torch.equal(g.codes, w.codes) and torch.equal(g.scales, w.scales), "codes/scales"
    assert _bits_equal(got.global_scale, want.global_scale), "s_x"
    assert len(got.terms) == len(want.terms)
    for g, w in zip(got.terms, want.terms):
        assert _bits_equal(g, w), "the GEMM operand"


def _launches(monkeypatch) -> dict[str, list]:
    """Record the Triton launches of the preparations and the stats kernel (keyword arguments)."""
    import sharq.kernels.prepare_fp4 as prep
    import sharq.kernels.prepare_split as split
    import sharq.kernels.sources as sources

    log = {"prep": [], "split": [], "stats": []}
    monkeypatch.setattr(prep, "_prepare_kernel", RecordingKernel(prep._prepare_kernel, log["prep"]))
    monkeypatch.setattr(split, "_prepare_split_kernel", RecordingKernel(split._prepare_split_kernel, log["split"]))
    monkeypatch.setattr(sources, "source_stats_kernel", RecordingKernel(sources.source_stats_kernel, log["stats"]))
    return log


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hidden(m: int, k: int, seed: int, dtype=torch.bfloat16) -> torch.Tensor:
    """Activations with outlier channels (the shape of a residual stream)."""
    g = _gen(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(1, k, generator=g))
    x[:, torch.randperm(k, generator=g)[: max(1, k // 32)]] *= 30.0
    return x.to(dtype)


def _check_norm(x, residual, weight, variant, config, *, eps=1e-6, fused=True):
    """The fused RMSNorm [+ residual add] + preparation == torch's norm in the "lanes" order, then
    `ops.prepare`: y, h, codes, scales, s_x and the operand, bit for bit."""
    k = x.shape[-1]
    plan = plan_producer("rms-norm", x.numel() // k, k, config, x.device, options=TRITON)
    assert plan.fused == fused, plan
    y, h, got = ops.prepare_rms_norm(x, weight, eps, variant, config, TRITON, residual=residual)
    want_y, want_h = add_rms_norm_reference(x, residual, weight, eps, variant, order="lanes")
    assert _bits_equal(y, want_y), "normalized activation"
    assert _bits_equal(h, want_h if residual is not None else None), "updated residual"
    _same_prepared(got, ops.prepare(want_y.reshape(-1, k), config, TRITON))
    return plan


# --- the statistic's order ---------------------------------------------------------------------
def _lanes_by_hand(row: torch.Tensor, eps: float) -> float:
    """The "lanes" definition, one FP32 operation at a time (numpy scalars)."""
    import numpy as np

    f32 = np.float32
    sq = [f32(v) * f32(v) for v in row.tolist()] + [f32(0)] * (-len(row) % NORM_LANES)
    lanes = [f32(0)] * NORM_LANES
    for i, v in enumerate(sq):
        lanes[i % NORM_LANES] = f32(lanes[i % NORM_LANES] + v)
    while len(lanes) > 1:
        lanes = [f32(lanes[i] + lanes[i + 1]) for i in range(0, len(lanes), 2)]
    var = f32(lanes[0] / f32(len(row))) + f32(eps)
    return float(f32(1) / f32(np.sqrt(var)))


def test_rms_inverse_is_the_lanes_order_and_a_function_of_the_row_alone():
    x = _hidden(6, 200, seed=1, dtype=torch.float32)  # 200: the last lane chunk is padded
    got = rms_inverse(x, 1e-5)
    assert got.shape == (6, 1) and got.dtype == torch.float32
    for i in range(6):
        assert got[i, 0].item() == _lanes_by_hand(x[i], 1e-5)
        assert torch.equal(rms_inverse(x[i : i + 1], 1e-5), got[i : i + 1])  # batch invariant


def test_torch_statistic_order_is_not_a_kernel_order():
    """Why the norm has an order of its own (the failing case): torch's `pow(2).mean(-1)` on this CPU
    (a cascade of vector-wide partial sums, as wide as the CPU's vectors) differs both from the
    lanes order and from numpy's pairwise sum (what tl.sum computes under the interpreter) on some of
    these rows, so neither a fixed kernel order nor tl.sum reproduces it; on CUDA its tree follows the
    number of rows of the call (nn/fused_norm.py). The fused kernel follows the lanes order."""
    import numpy as np

    x = _hidden(256, 4096, seed=2, dtype=torch.float32)
    torch_mean = x.pow(2).mean(-1, keepdim=True)
    lanes = mean_square(x)
    pairwise = div_rn(torch.from_numpy(np.add.reduce((x * x).numpy(), axis=-1, keepdims=True)), 4096.0)
    assert not torch.equal(torch_mean, lanes)
    assert not torch.equal(torch_mean, pairwise)
    assert (torch_mean != lanes).float().mean() > 0.05  # not a rare tie: a different order


# --- RMSNorm [+ residual add] + preparation ----------------------------------------------------
# rows -> the plan's preparation (sharq-nvfp4, operand auto): 1 the GEMV operand, 5 bf16 rows with the
# statistics inline, 12 bf16 rows after the stats kernel, 20 and 260 the operand rows
NORM_CASES = [
    # rows, K, dtype, variant, residual add, granularity
    (1, 64, torch.bfloat16, "llama", True, "tensor"),
    pytest.param(2, 96, torch.float16, "gemma", False, "token", marks=pytest.mark.slow),  # the GEMV operand: ~8 s
    (5, 200, torch.bfloat16, "gemma", True, "token"),
    (5, 96, torch.float32, "llama", False, "tensor"),
    (12, 160, torch.bfloat16, "llama", False, "tensor"),
    (12, 64, torch.float16, "llama", True, "token"),
    (20, 96, torch.bfloat16, "gemma", True, "tensor"),
    (20, 128, torch.float32, "gemma", False, "token"),
    pytest.param(260, 64, torch.bfloat16, "llama", True, "token", marks=pytest.mark.slow),  # ~11 s
]


@pytest.mark.parametrize("rows,k,dtype,variant,add,granularity", NORM_CASES)
def test_fused_norm_equals_norm_then_preparation(rows, k, dtype, variant, add, granularity):
    config = NVFP4.replace(granularity=granularity)
    x = _hidden(rows, k, seed=rows + k, dtype=dtype).to(DEVICE)
    residual = _hidden(rows, k, seed=7, dtype=dtype).to(DEVICE) if add else None
    weight = (1 + 0.2 * torch.randn(k, generator=_gen(3))).to(dtype).to(DEVICE)
    plan = _check_norm(x, residual, weight, variant, config)
    assert (
        plan.linear.preparation
        == {1: "gemv", 2: "gemv", 5: "rows", 12: "rows", 20: "operand-rows", 260: "operand-rows"}[rows]
    )


def test_fused_norm_weight_dtype_promotes_like_torch():
    """ "llama" multiplies by the weight in torch's promoted dtype: an FP32 weight on bf16 x gives an
    FP32 y, prepared as such; 3-D input keeps its shape."""
    x = _hidden(6, 64, seed=4).view(2, 3, 64).to(DEVICE)
    weight = (1 + 0.2 * torch.randn(64, generator=_gen(5))).to(DEVICE)
    y, _, _ = ops.prepare_rms_norm(x, weight, 1e-5, "llama", NVFP4, TRITON)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 64)
    _check_norm(x, None, weight, "llama", NVFP4, eps=1e-5)
    _check_norm(x, None, weight, "gemma", NVFP4.replace(granularity="token"), eps=1e-5)


@pytest.mark.parametrize("rows", [5, 20])
def test_fused_norm_propagates_nan_inf_and_zero_rows(rows):
    """SPEC §10: a NaN or Inf makes its row NaN (the statistic is NaN or Inf), all-zero rows stay zero,
    the padding stays zero — exactly as the unfused chain, for both granularities."""
    x = _hidden(rows, 96, seed=9).to(DEVICE)
    x[1, 5] = float("nan")
    x[2, 7] = float("inf")
    x[3] = 0.0
    weight = torch.ones(96, dtype=torch.bfloat16, device=DEVICE)
    for granularity in ("token", "tensor"):
        _check_norm(x, None, weight, "llama", NVFP4.replace(granularity=granularity))
    residual = -x.nan_to_num(0.0, posinf=0.0)  # x + residual: NaN, Inf and exact zeros
    _check_norm(x, residual, weight, "gemma", NVFP4.replace(granularity="token"))


def test_fused_norm_on_mxfp4_and_empty_input():
    x = _hidden(12, 64, seed=11).to(DEVICE)
    weight = torch.full((64,), 0.5, dtype=torch.bfloat16, device=DEVICE)
    _check_norm(x, None, weight, "llama", PRESETS["sharq-mxfp4"])
    y, h, prepared = ops.prepare_rms_norm(x[:0], weight, 1e-6, "llama", NVFP4, TRITON)
    assert y.shape == (0, 64) and h is None and prepared is None


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_statistics_inline_or_from_the_stats_kernel_agree(monkeypatch, granularity):
    """The row statistics computed by the preparation's own programs or by the stats kernel first:
    the same bits, in both preparation kernels; the plan's launch count is what runs."""
    from sharq.kernels.prepare_fp4 import prepare_source_triton
    from sharq.kernels.prepare_split import prepare_split_source
    from sharq.kernels.sources import SOURCE_NORM, SourceSpec, dtype_code

    config = NVFP4.replace(granularity=granularity)
    x, r = _hidden(6, 128, seed=12).to(DEVICE), _hidden(6, 128, seed=13).to(DEVICE)
    w = (1 + 0.2 * torch.randn(128, generator=_gen(14))).to(torch.bfloat16).to(DEVICE)

    def spec(stats):
        return SourceSpec(r, w, 1e-6, SOURCE_NORM, True, 0, dtype_code(torch.bfloat16), True, True, stats)

    log = _launches(monkeypatch)
    rows = [prepare_source_triton(x, config, spec(s), terms_layout="rows") for s in (-1, 0, 1)]
    assert [len(log["stats"]), len(log["prep"])] == [1, 3]
    for p, y, h in rows[1:]:
        _same_prepared(p, rows[0][0])
        assert _bits_equal(y, rows[0][1]) and _bits_equal(h, rows[0][2])
    stats = (-1, 0, 1) if granularity == "token" else (-1, 0)
    split = [prepare_split_source(x, config, spec(s), two=False) for s in stats]
    for s, ops_, y, _h in split[1:]:
        assert _bits_equal(s, split[0][0]) and _bits_equal(ops_[0], split[0][1][0]) and _bits_equal(y, split[0][2])
    if granularity == "tensor":
        with pytest.raises(ValueError, match="needs 'token'"):
            prepare_split_source(x, config, spec(1), two=False)


# --- act(gate) · up + preparation ---------------------------------------------------------------
class _Softmax(nn.Module):  # not elementwise: refused by activation_table
    def forward(self, x):
        return torch.softmax(x.float(), -1).to(x.dtype)


def test_activation_table_is_the_activation_of_every_16_bit_value():
    for dtype in (torch.bfloat16, torch.float16):
        table = activation_table(nn.SiLU(), dtype, DEVICE)
        values = torch.arange(65536, dtype=torch.int32, device=DEVICE)
        one_by_one = torch.stack(
            [F.silu(v) for v in (values - (values >= 32768).int() * 65536).to(torch.int16).view(dtype)[::257]]
        )  # each alone (the scalar path), every 257th
        assert _bits_equal(table[::257], one_by_one)
    assert activation_table(_Softmax(), torch.bfloat16, DEVICE) is None
    with pytest.raises(ValueError, match="bf16 and fp16"):
        activation_table(nn.SiLU(), torch.float32, DEVICE)


def _check_act_mul(gate, up, act, config):
    k = gate.shape[-1]
    table = activation_table(act, gate.dtype, gate.device)
    got = ops.prepare_act_mul(gate, up, config, TRITON, table=table)
    assert got is not None
    _same_prepared(got, ops.prepare(act_mul_reference(gate, up, act).reshape(-1, k), config, TRITON))


ACT_CASES = [
    # rows, K, dtype, activation, granularity
    pytest.param(1, 64, torch.bfloat16, "silu", "tensor", marks=pytest.mark.slow),  # the GEMV operand: ~8 s
    (5, 96, torch.float16, "silu", "token"),
    (12, 160, torch.bfloat16, "gelu-tanh", "tensor"),
    (20, 128, torch.bfloat16, "silu", "tensor"),
    pytest.param(260, 64, torch.float16, "gelu-tanh", "token", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("rows,k,dtype,act,granularity", ACT_CASES)
def test_fused_act_mul_equals_torch_then_preparation(rows, k, dtype, act, granularity):
    """gate and up as column slices of one wider output (the grouped GEMV's layout): strided rows."""
    both = _hidden(rows, 2 * k, seed=rows, dtype=dtype).to(DEVICE)
    gate, up = both[:, :k], both[:, k:]
    module = nn.SiLU() if act == "silu" else nn.GELU(approximate="tanh")
    _check_act_mul(gate, up, module, NVFP4.replace(granularity=granularity))


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_split_stats_kernel_equals_whole_rows(monkeypatch, granularity):
    """The stats kernel of act·mul with each row's chunks split among programs (atomic max per row or
    over the tensor) gives the bits of one program a row, NaN rows included; the plan splits a short
    batch and not a long one."""
    import sharq.kernels.sources as sources

    both = _hidden(12, 2 * 400, seed=31).to(DEVICE)  # 12 rows: past the inline statistics; K: 4 chunks
    both[3, 7] = float("nan")
    gate, up = both[:, :400], both[:, 400:]
    config = NVFP4.replace(granularity=granularity)
    table = activation_table(nn.SiLU(), gate.dtype, gate.device)
    assert sources.stats_splits(1, 14336, 1, NORM_LANES) == 112  # a decode row of down_proj: a chunk a program
    assert sources.stats_splits(4096, 14336, 4, NORM_LANES) == 1  # prefill: whole rows, enough programs
    log = _launches(monkeypatch)
    split = ops.prepare_act_mul(gate, up, config, TRITON, table=table)
    monkeypatch.setattr(sources, "STATS_PROGRAMS", 1)  # one program a row block: the whole-row order
    whole = ops.prepare_act_mul(gate, up, config, TRITON, table=table)
    assert [entry["SPLIT"] for entry in log["stats"]] == [True, False]
    _same_prepared(split, whole)
    _same_prepared(split, ops.prepare(act_mul_reference(gate, up, nn.SiLU()).reshape(-1, 400), config, TRITON))


def test_fused_act_mul_non_finite_and_zero_rows():
    gate, up = _hidden(5, 64, seed=20).to(DEVICE), _hidden(5, 64, seed=21).to(DEVICE)
    gate[0, 3], up[1, 4], gate[2] = float("nan"), float("inf"), 0.0
    for granularity in ("tensor", "token"):
        _check_act_mul(gate, up, nn.SiLU(), NVFP4.replace(granularity=granularity))


class _GatedMLP(nn.Module):
    def __init__(self, act_of_product: bool = False) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(64, 128), nn.Linear(64, 128), nn.Linear(128, 64)
        self.act_fn, self.act_of_product = nn.SiLU(), act_of_product

    def forward(self, x):
        if self.act_of_product:  # act(gate · up): another dataflow, not fusable as act(gate) · up
            return self.down_proj(self.act_fn(self.gate_proj(x) * self.up_proj(x)))
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_sharq_mlp_takes_only_the_gated_dataflow():
    from sharq import SharqLinear

    for act_of_product in (False, True):
        mlp = _GatedMLP(act_of_product)
        parts = [
            SharqLinear.from_float(getattr(mlp, p), NVFP4, options=TRITON)
            for p in ("gate_proj", "up_proj", "down_proj")
        ]
        if act_of_product:
            with pytest.raises(ValueError, match=r"mlp: _GatedMLP.forward is not down_proj\(act_fn"):
                SharqMLP.from_mlp(mlp, *parts, name="mlp")
            continue
        fused = SharqMLP.from_mlp(mlp, *parts, name="mlp")
        assert fused.act_fn is mlp.act_fn and fused.down_proj is parts[2]
        x = _hidden(3, 64, seed=41).float().to(DEVICE)
        with torch.no_grad():  # fp32: never fused; the dataflow as written, with the quantized layers
            want = parts[2](mlp.act_fn(parts[0](x)) * parts[1](x))
            assert torch.equal(fused.to(DEVICE)(x), want)
    with pytest.raises(ValueError, match="do not chain"):
        SharqMLP.from_mlp(_GatedMLP(), *parts[:2], parts[0], name="mlp")


# --- the plan ------------------------------------------------------------------------------------
def test_plan_fuses_on_triton_only_where_it_can(monkeypatch):
    auto = PRESETS["sharq-nvfp4"]
    for producer in PRODUCERS:
        assert plan_producer(producer, 4, 64, auto, "cpu").reason == "reference backend"
        assert plan_producer(producer, 4, 64, auto, "cuda").fused  # planning needs no GPU
        assert plan_producer(producer, 0, 64, NVFP4, "cpu", options=TRITON).reason == "no rows"
    assert not plan_producer("act-mul", 4, 64, NVFP4, "cpu", dtype=torch.float32, options=TRITON).fused
    assert not plan_producer("act-mul", 4, 64, NVFP4, "cpu", act_table=False, options=TRITON).fused
    assert not plan_producer("act-mul", 4, 64, NVFP4, "cpu", options=CHECKED).fused
    assert plan_producer("rms-norm", 4, 64, NVFP4, "cpu", options=CHECKED).fused  # y is checked
    # the consumer's plan, when given (a MoE layer's input), is the plan the producer feeds
    from sharq.kernels.plan import experts_input_plan

    moe_input = experts_input_plan(4, NVFP4, "cpu", options=TRITON)
    assert moe_input.preparation == "gemv"
    assert plan_producer("rms-norm", 4, 64, NVFP4, "cpu", options=TRITON, linear=moe_input).linear is moe_input
    with pytest.raises(ValueError, match="a plan of 4 rows"):
        plan_producer("rms-norm", 5, 64, NVFP4, "cpu", options=TRITON, linear=moe_input)
    # traced by torch.compile, a short batch's producers run in torch (inductor fuses them); a long one fused
    from sharq.kernels.plan import COMPILED_UNFUSED_MAX_M

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for producer in PRODUCERS:
        short = plan_producer(producer, COMPILED_UNFUSED_MAX_M, 64, NVFP4, "cpu", options=TRITON)
        assert not short.fused and "torch.compile" in short.reason
        assert plan_producer(producer, COMPILED_UNFUSED_MAX_M + 1, 64, NVFP4, "cpu", options=TRITON).fused
    monkeypatch.setenv("SHARQ_FUSE", "always")
    assert plan_producer("rms-norm", 1, 64, NVFP4, "cpu", options=TRITON).fused
    monkeypatch.delenv("SHARQ_FUSE")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert plan_producer("rms-norm", 1, 64, NVFP4, "cpu", options=TRITON).fused  # eager decode: fused
    monkeypatch.setenv("SHARQ_FUSE", "0")
    assert plan_producer("rms-norm", 4, 64, NVFP4, "cpu", options=TRITON).reason == "SHARQ_FUSE=0"
    x = _hidden(4, 64, seed=30).to(DEVICE)
    _check_norm(x, None, torch.ones(64, dtype=torch.bfloat16, device=DEVICE), "llama", NVFP4, fused=False)
    assert ops.prepare_act_mul(x, x, NVFP4, TRITON, table=activation_table(nn.SiLU(), x.dtype, DEVICE)) is None


def test_plan_printout_shows_each_producer():
    shapes = {"qkv": (6144, 4096), "down": (4096, 14336)}
    text = plan_table(PRESETS["sharq-nvfp4"], shapes, [1, 64], producers={"rms-norm": "qkv", "act-mul": "down"})
    assert "rms-norm: fused, stats inline, 1 launch" in text  # decode: one launch
    assert text.count("act-mul: fused") == 2 and "rms-norm: fused, stats kernel, 3 launches" in text


@pytest.mark.parametrize("rows,granularity", [(5, "tensor"), (12, "token"), (12, "tensor"), (20, "token")])
def test_planned_launches_are_the_launches(monkeypatch, rows, granularity):
    config = NVFP4.replace(granularity=granularity)
    x = _hidden(rows, 64, seed=31).to(DEVICE)
    plan = plan_producer("rms-norm", rows, 64, config, DEVICE, options=TRITON)
    log = _launches(monkeypatch)
    ops.prepare_rms_norm(x, torch.ones(64, dtype=torch.bfloat16, device=DEVICE), 1e-6, "llama", config, TRITON)
    triton_launches = sum(len(v) for v in log.values())
    zeroed_word = plan.stats == "kernel" and granularity == "tensor"
    assert plan.fused and triton_launches + zeroed_word == plan.launches
    assert [entry["SOURCE"] for entry in log["prep"] + log["split"]] == [1]


# --- errors ----------------------------------------------------------------------------------------
def test_check_finite_and_bad_operands():
    x = _hidden(4, 64, seed=40).to(DEVICE)
    x[2, 2] = float("nan")
    weight = torch.ones(64, dtype=torch.bfloat16, device=DEVICE)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ops.prepare_rms_norm(x, weight, 1e-6, "llama", NVFP4, CHECKED)
    with pytest.raises(ValueError, match="must match the RMSNorm input"):
        ops.prepare_rms_norm(x, weight, 1e-6, "llama", NVFP4, TRITON, residual=x.float())
    with pytest.raises(ValueError, match="unknown RMSNorm variant"):
        ops.prepare_rms_norm(x, weight, 1e-6, "olmo", NVFP4, TRITON)
    with pytest.raises(ValueError, match="up .* must match gate"):
        ops.prepare_act_mul(x, x[:, :32], NVFP4, TRITON, table=None)
    with pytest.raises(ValueError, match="activation table must be"):
        ops.prepare_act_mul(x, x, NVFP4, TRITON, table=torch.zeros(65536, device=DEVICE))


def test_custom_ops_pass_opcheck():
    """The fused preparations are torch custom ops with fake implementations (torch.compile, graphs)."""
    from sharq.kernels.sources import SOURCE_ACT_MUL, SOURCE_NORM, dtype_code

    x, r = _hidden(2, 64, seed=50).to(DEVICE), _hidden(2, 64, seed=51).to(DEVICE)
    w = torch.ones(64, dtype=torch.bfloat16, device=DEVICE)
    table = activation_table(nn.SiLU(), torch.bfloat16, DEVICE)
    bf16 = dtype_code(torch.bfloat16)
    norm = (r, w, 1e-6, SOURCE_NORM, True, 1, bf16, True, True, -1)
    act = (r, table, 0.0, SOURCE_ACT_MUL, False, 0, bf16, False, False, -1)
    torch.library.opcheck(
        torch.ops.sharq.prepare_fp4_source.default, (x, *norm, 1, False, 1, 2, 8, 1, 0, 1, 1, 32, 16, 1, 0, 0, 0)
    )
    torch.library.opcheck(
        torch.ops.sharq.prepare_split_source.default,
        (x, *act, True, 1, 2, 8, 1, 0, 1, 1, 32, 16, False, [0, 0, 0]),
    )


# --- in a model ------------------------------------------------------------------------------------
def _model_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "arch,tokens",
    [
        ("llama", 5),  # bf16 rows, statistics inline
        pytest.param("llama", 17, marks=pytest.mark.slow),  # the operand rows after the stats kernel (~15 s)
        pytest.param("gemma3", 5, marks=pytest.mark.slow),  # the "gemma" norm, a GELU-tanh MLP (~15 s)
        # 17 tokens: host routing, each hit expert's act·mul fused (the device-routed experts GEMV of up to 16
        # tokens prepares its experts' down input itself, unfused)
        pytest.param("qwen3_moe", 17, marks=pytest.mark.slow),
    ],
)
def test_tiny_model_logits_identical_with_fusion_on_and_off(monkeypatch, arch, tokens):
    """A tiny bf16 model on the Triton backend: the logits with every norm and act·mul fused equal,
    bit for bit, those with SHARQ_FUSE=0 (torch computes the producers, then the preparation)."""
    from sharq import quantize_

    from .tiny_models import tiny_model

    model = tiny_model(arch).to(DEVICE)
    report = quantize_(model, NVFP4, backend="triton")
    n_layers = model.config.num_hidden_layers
    assert len(report.fused_norms) == 2 * n_layers
    ids = torch.randint(0, 256, (1, tokens), generator=_gen(60)).to(DEVICE)
    log = _launches(monkeypatch)
    fused = _model_logits(model, ids)
    sources = [entry["SOURCE"] for entry in log["prep"] + log["split"]]
    # every norm and every down_proj input (dense MLPs, routed experts) fused; o_proj prepares its own
    assert sources.count(1) == 2 * n_layers and sources.count(0) == n_layers
    if arch == "qwen3_moe":  # the dense layer's MLP and at least one routed expert
        assert len(report.fused_mlps) == 1 and sources.count(2) > 1
    else:
        assert len(report.fused_mlps) == n_layers and sources.count(2) == n_layers
    monkeypatch.setenv("SHARQ_FUSE", "0")
    for entries in log.values():
        entries.clear()
    unfused = _model_logits(model, ids)
    assert all(entry["SOURCE"] == 0 for entry in log["prep"] + log["split"]) and not log["stats"]
    assert torch.equal(fused, unfused)


# --- the benchmark ---------------------------------------------------------------------------------
@pytest.fixture()
def fused_prep_bench():
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, bench)
    try:
        import fused_prep

        yield fused_prep
    finally:
        sys.path.remove(bench)


def test_benchmark_arguments(fused_prep_bench):
    args = fused_prep_bench.parse_args(["--m", "1,4096", "--model", "qwen2.5-7b"])
    assert args.rows == [1, 4096] and fused_prep_bench._shapes(args) == (3584, 18944)
    with pytest.raises(SystemExit):
        fused_prep_bench.parse_args(["--m", "0"])


@pytest.mark.slow
def test_benchmark_smoke_checks_every_provider(fused_prep_bench, tmp_path):
    """benchmarks/fused_prep.py on the CPU (interpreter, no times): every provider runs once, the fused
    ones equal their unfused chains, the JSON names its machine and versions."""
    import json

    path = fused_prep_bench.main(
        ["--device", "cpu", "--m", "3", "--k-norm", "64", "--k-act", "64", "--out", str(tmp_path)]
    )
    doc = json.loads(path.read_text())
    assert doc["gpu"] == "cpu" and {"torch", "triton", "rows"} <= doc.keys()
    providers = {(r["producer"], r["provider"]) for r in doc["rows"]}
    assert {
        ("rms-norm", "fused"),
        ("rms-norm", "torch+prep"),
        ("act-mul", "fused"),
        ("add+rms-norm", "fused"),
    } <= providers
    assert all(r["bits_equal"] for r in doc["rows"] if "bits_equal" in r)


# --- compiled, on the GPU (-m gpu) ---------------------------------------------------------------
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("rows", [1, 2, 8, 16, 17, 300, 1100, 4099])
def test_gpu_fused_equals_unfused_at_llama_shapes(rows, granularity):
    """Compiled: the fused residual add + RMSNorm (K = 4096) and SiLU·mul (K = 14336) preparations
    equal torch's chains on the GPU bit for bit (torch's CUDA division, sqrt and casts included), in
    every layout the plan picks from 1 to 4,099 rows."""
    config = NVFP4.replace(granularity=granularity)
    x, res = _hidden(rows, 4096, seed=70).cuda(), _hidden(rows, 4096, seed=71).cuda()
    w = (1 + 0.2 * torch.randn(4096, generator=_gen(72))).to(torch.bfloat16).cuda()
    for variant in ("llama", "gemma"):
        _check_norm(x, res, w, variant, config, eps=1e-5)
    both = _hidden(rows, 2 * 14336, seed=73).cuda()
    _check_act_mul(both[:, :14336], both[:, 14336:], nn.SiLU(), config)


@pytest.mark.gpu
@needs_gpu
def test_gpu_lanes_norm_is_batch_invariant():
    """A row's fused norm and preparation ("token") do not depend on the rows beside it (the lanes
    order is per row); prints whether torch's own `pow(2).mean(-1)` does on this GPU (its block shape
    follows the number of rows)."""
    config = NVFP4.replace(granularity="token")
    x = _hidden(1100, 4096, seed=80).cuda()
    w = torch.ones(4096, dtype=torch.bfloat16, device="cuda")
    y_all, _, p_all = ops.prepare_rms_norm(x, w, 1e-5, "llama", config, TRITON)
    for m in (1, 2, 17, 300):
        y, _, p = ops.prepare_rms_norm(x[:m], w, 1e-5, "llama", config, TRITON)
        assert _bits_equal(y, y_all[:m]) and _bits_equal(p.global_scale, p_all.global_scale[:m])
    h = x.float()
    torch_stat = {m: h[:m].pow(2).mean(-1) for m in (1, 16, 1100)}
    varies = any(not torch.equal(torch_stat[m], torch_stat[1100][:m]) for m in (1, 16))
    print(f"torch's CUDA mean(x²) of a row depends on the batch's row count: {varies}")
