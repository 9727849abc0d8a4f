"""The grouped prefill GEMM (kernels/gemm_fp4.fp4_weight_gemm_group): q/k/v or gate/up multiplied
as one GEMM over their weights dequantized side by side. Every column bit for bit what its own
`fp4_weight_gemm` call gives — NVFP4-16/32 and MXFP4, one and two terms, row and tensor scales,
biases, the pointer loop and the persistent TMA loop — and what it refuses. The model: a decoder's
q/k/v and gate/up run one GEMM each from SCRATCH_MIN_M rows, with the same logits as one GEMM per
linear. Interpreter at small shapes; `-m gpu` at Llama-3.1-8B shapes."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from sharq.kernels import gemm_bf16_tma, gemm_fp4  # noqa: E402
from sharq.kernels.gemm_fp4 import (  # noqa: E402
    GEMM_GROUP_MAX,
    fp4_weight_gemm,
    fp4_weight_gemm_group,
    gemm_group_supports,
)
from sharq.kernels.plan import SCRATCH_MIN_M  # noqa: E402

from .kernel_launches import RecordingKernel  # noqa: E402
from .test_kernels_gemm import DEVICE, _weight  # noqa: E402


def _terms(m, k, seed):
    g = torch.Generator().manual_seed(seed)
    terms = [(torch.randn(m, k, generator=g) * s).to(torch.bfloat16).to(DEVICE) for s in (4.0, 0.3)]
    s_x = (torch.rand(m, 1, generator=g) + 0.5).to(DEVICE)
    return terms, s_x


def _group_equals_separate(weights, biases, terms, s_x, out_dtype, tiles=None):
    y = fp4_weight_gemm_group(terms, s_x, weights, biases, out_dtype, tiles=tiles)
    assert y.shape == (terms[0].shape[0], sum(w.shape[0] for w in weights)) and y.dtype == out_dtype
    col = 0
    for w, b in zip(weights, biases):
        alone = fp4_weight_gemm(terms, s_x, w, b, out_dtype, tiles=tiles)
        assert torch.equal(y[:, col : col + w.shape[0]], alone), (w.shape, len(terms))
        col += w.shape[0]


@pytest.mark.parametrize("preset", ("sharq-nvfp4", "sharq-nvfp4-w16", "sharq-mxfp4"))
def test_group_columns_equal_their_own_calls_pointer_loop(preset):
    """SCRATCH 2, the pointer loop; N_g of 64 and 32 with 32-wide tiles, and a tile-straddling 40."""
    k = 96
    weights = [_weight(n, k, preset, seed=n) for n in (64, 32, 40)]
    g = torch.Generator().manual_seed(5)
    biases = [torch.randn(w.shape[0], generator=g).to(DEVICE) for w in weights]
    terms, s_x = _terms(37, k, seed=6)
    tiles = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, SCRATCH=2, TMA=1)
    for use, scale, b in ((terms, s_x, biases), (terms[:1], s_x[0, 0], [None] * 3)):
        for dtype in (torch.float32, torch.bfloat16):
            _group_equals_separate(weights, b, use, scale, dtype, tiles)


def test_group_columns_equal_their_own_calls_tma_loop(monkeypatch):
    """The plan's own tiling from TMA_MIN_M rows (one term: the flattened TMA loop), by default."""
    launches = []
    monkeypatch.setattr(
        gemm_bf16_tma, "_bf16_gemm_tma_kernel", RecordingKernel(gemm_bf16_tma._bf16_gemm_tma_kernel, launches)
    )
    k = 64
    weights = [_weight(n, k, "sharq-nvfp4", seed=n) for n in (256, 256)]
    terms, s_x = _terms(gemm_fp4.TMA_MIN_M, k, seed=7)
    _group_equals_separate(weights, [None, None], terms[:1], s_x, torch.bfloat16)
    assert len(launches) == 3 and launches[0]["HAS_SW"] == 2 and launches[1]["HAS_SW"] == 1


def test_group_at_the_plan_rows_reads_each_weight_once(monkeypatch):
    """At SCRATCH_MIN_M rows: one dequantization per weight into one scratch, one GEMM launch."""
    deq, gemm = [], []
    from sharq.kernels import dequant_fp4

    monkeypatch.setattr(dequant_fp4, "_dequant_kernel", RecordingKernel(dequant_fp4._dequant_kernel, deq))
    monkeypatch.setattr(gemm_fp4, "_fp4_weight_gemm_kernel", RecordingKernel(gemm_fp4._fp4_weight_gemm_kernel, gemm))
    k = 64
    weights = [_weight(n, k, "sharq-nvfp4-w16", seed=n) for n in (128, 64, 64)]
    terms, s_x = _terms(SCRATCH_MIN_M, k, seed=8)
    y = fp4_weight_gemm_group(terms, s_x, weights, [None] * 3, torch.bfloat16)
    assert len(deq) == 1 and deq[0]["GROUPS"] == 3  # the three weights in one launch
    assert len(gemm) == 1 and gemm[0]["W_BF16"] and gemm[0]["HAS_SW"] == 2
    col = 0
    for w in weights:
        assert torch.equal(y[:, col : col + w.shape[0]], fp4_weight_gemm(terms, s_x, w, None, torch.bfloat16))
        col += w.shape[0]


@pytest.mark.parametrize("preset", ("sharq-nvfp4", "sharq-nvfp4-w16", "sharq-mxfp4"))
def test_weights_dequantized_side_by_side(preset, monkeypatch):
    """One launch where every boundary is a multiple of the row block (the last weight any size),
    one launch per weight otherwise; each row block equal to the weight's own dequantization."""
    from sharq.kernels import dequant_fp4

    launches = []
    monkeypatch.setattr(dequant_fp4, "_dequant_kernel", RecordingKernel(dequant_fp4._dequant_kernel, launches))
    k = 96
    for sizes, calls in (((64, 32, 40), 1), ((32, 40), 1), ((40, 32), 2), ((32, 32, 32, 32), 4)):
        weights = [_weight(n, k, preset, seed=n + i) for i, n in enumerate(sizes)]
        launches.clear()
        out = torch.full((sum(sizes), k), float("nan"), dtype=torch.bfloat16, device=DEVICE)
        dequant_fp4.dequant_group_into(
            [w.codes for w in weights],
            [w.scales for w in weights],
            out,
            weights[0].format.value == "mxfp4",
            weights[0].block,
        )
        assert len(launches) == calls, sizes
        want = torch.cat([w.dequantize(apply_global_scale=False).to(torch.bfloat16) for w in weights])
        assert torch.equal(out, want), sizes


def test_what_the_group_refuses():
    k = 64
    a, b = _weight(64, k, "sharq-nvfp4", seed=1), _weight(32, k, "sharq-nvfp4", seed=2)
    m = SCRATCH_MIN_M
    assert gemm_group_supports([a, b], m) and gemm_group_supports([a, b], m, [None, None])
    refused = [
        ([a, b], 2, None),  # two rows: the GEMV's
        ([a] * (GEMM_GROUP_MAX + 1), m, None),  # too many weights
        ([], m, None),
        ([a, _weight(32, k, "sharq-nvfp4-w16", seed=3)], m, None),  # two blocks
        ([a, _weight(32, k, "sharq-mxfp4", seed=3)], m, None),  # two formats
        ([a, _weight(32, 2 * k, "sharq-nvfp4", seed=3)], m, None),  # two K
        ([a, b], m, [torch.zeros(64, device=DEVICE), None]),  # a bias for one weight only
        ([a, b], m, [torch.zeros(64, device=DEVICE), torch.zeros(32, dtype=torch.float16, device=DEVICE)]),
        ([a, b], m, [torch.zeros(63, device=DEVICE), torch.zeros(32, device=DEVICE)]),  # wrong bias shape
    ]
    for weights, rows, biases in refused:
        assert not gemm_group_supports(weights, rows, biases)
    terms, s_x = _terms(2, k, seed=4)
    with pytest.raises(ValueError, match="tiles each weight's own call takes must agree"):
        fp4_weight_gemm_group(terms, s_x, [a, b], [None, None], torch.bfloat16)
    terms, s_x = _terms(m, k, seed=4)
    with pytest.raises(ValueError, match="bf16 \\(M, 64\\)"):
        fp4_weight_gemm_group([terms[0].float()], s_x, [a, b], [None, None], torch.bfloat16)


def test_the_plan_names_the_regimes_that_group():
    from sharq import PRESETS
    from sharq.kernels.plan import plan_linear

    narrow = [_weight(n, 64, "sharq-nvfp4", seed=n) for n in (64, 32)]  # one tiling at every M
    for m, grouping in (
        (1, "one launch"),
        (16, "where their tiles agree"),
        (511, "where their tiles agree"),
        (512, "one launch"),
        (4096, "one launch"),
    ):
        plan = plan_linear(m, PRESETS["sharq-nvfp4"], "cuda")
        assert grouping in plan.grouping and grouping in plan.describe(), m
        if m > 2:  # the GEMM's own rule agrees with the plan
            assert gemm_group_supports(narrow, m), m
    reference = plan_linear(64, PRESETS["sharq-nvfp4"], "cpu")
    assert reference.grouping == "one launch per linear"


def test_below_the_scratch_rows_one_launch_where_the_tiles_agree(monkeypatch):
    """3-511 rows (the weight decoded in the loop): Llama-like q/k/v (one tiling, N multiples of
    BLOCK_N) run one launch, each column its own call's bits; members whose own calls take other
    tiles (N >= 6,144 against a narrow one), or a boundary inside a column tile, are refused."""
    gemm = []
    monkeypatch.setattr(gemm_fp4, "_fp4_weight_gemm_kernel", RecordingKernel(gemm_fp4._fp4_weight_gemm_kernel, gemm))
    k = 512
    for preset in ("sharq-nvfp4", "sharq-mxfp4"):
        weights = [_weight(n, k, preset, seed=n) for n in (128, 64, 64)]
        g = torch.Generator().manual_seed(9)
        biases = [torch.randn(w.shape[0], generator=g).to(DEVICE) for w in weights]
        for m, nterms in ((5, 2), (12, 2), (40, 1), (100, 1)):
            terms, s_x = _terms(m, k, seed=m)
            assert gemm_group_supports(weights, m, biases, terms=nterms), (preset, m)
            gemm.clear()
            _group_equals_separate(weights, biases, terms[:nterms], s_x, torch.bfloat16)
            assert gemm[0]["GROUPS"] == 3 and gemm[0]["HAS_SW"] == (0 if preset == "sharq-mxfp4" else 2)
    wide = [_weight(6144, 64, "sharq-nvfp4", seed=1), _weight(64, 64, "sharq-nvfp4", seed=2)]
    assert not gemm_group_supports(wide, 40)  # 64-wide N tiles for 6,144, other K tiles for 64
    straddle = [_weight(40, 64, "sharq-nvfp4", seed=3), _weight(64, 64, "sharq-nvfp4", seed=4)]
    assert not gemm_group_supports(straddle, 40) and gemm_group_supports(straddle[::-1], 40)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ("sharq-nvfp4", "sharq-nvfp4-w16", "sharq-mxfp4"))
def test_group_full_shapes_on_cuda(preset):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    k = 4096
    qkv = [_weight(n, k, preset, seed=n) for n in (4096, 1024, 1024)]
    gate_up = [_weight(14336, k, preset, seed=s) for s in (1, 2)]
    g = torch.Generator(device="cuda").manual_seed(0)
    biases = [torch.randn(w.shape[0], device="cuda", generator=g).to(torch.bfloat16) for w in qkv]
    for m in (5, 16, 64, 256, 512, 1024, 4099):  # decoded in the loop below 512, the scratch from there
        terms = [(torch.randn(m, k, device="cuda", generator=g) * s).to(torch.bfloat16) for s in (4.0, 0.3)]
        s_x = torch.rand(m, 1, device="cuda", generator=g) + 0.5
        for use in (terms, terms[:1]):
            _group_equals_separate(qkv, biases, use, s_x, torch.bfloat16)
            _group_equals_separate(gate_up, [None, None], use, s_x[0, 0], torch.bfloat16)


def test_a_layers_qkv_at_prefill_rows_is_one_gemm_with_each_linears_output(monkeypatch):
    """q/k/v of a quantized layer on one published input of SCRATCH_MIN_M rows: one GEMM launch, and
    each linear's own output (its launch alone) bit for bit; fewer rows keep one launch each."""
    from .test_grouped_gemv_layers import _quantized

    gemms = []
    for module, name in ((gemm_fp4, "_fp4_weight_gemm_kernel"), (gemm_bf16_tma, "_bf16_gemm_tma_kernel")):
        monkeypatch.setattr(module, name, RecordingKernel(getattr(module, name), gemms))
    monkeypatch.setenv("SHARQ_FUSE", "0")  # the norm in torch: the same bits, faster under the interpreter
    model = _quantized("llama")
    attn, norm = model.model.layers[0].self_attn, model.model.layers[0].input_layernorm
    x = torch.randn(1, SCRATCH_MIN_M, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = norm(x.to(torch.bfloat16).to(DEVICE))
        grouped = [attn.q_proj(y), attn.k_proj(y), attn.v_proj(y)]
        assert len(gemms) == 1 and gemms[0]["HAS_SW"] == 2
        attn.q_proj.shared_input.set_members(())
        alone = [attn.q_proj(y), attn.k_proj(y), attn.v_proj(y)]
        assert len(gemms) == 4
    assert all(torch.equal(g, a) for g, a in zip(grouped, alone))


@pytest.mark.slow  # ~1 min each under the interpreter (the fused norm's preparation at 512 rows)
@pytest.mark.parametrize("arch", ("llama", "qwen2"))  # qwen2: q/k/v biases
def test_model_prefill_runs_four_gemms_a_layer_with_the_ungrouped_logits(arch, monkeypatch):
    from .test_grouped_gemv_layers import SMALL, _groups, _quantized

    gemms = []
    monkeypatch.setattr(gemm_fp4, "_fp4_weight_gemm_kernel", RecordingKernel(gemm_fp4._fp4_weight_gemm_kernel, gemms))
    monkeypatch.setattr(
        gemm_bf16_tma, "_bf16_gemm_tma_kernel", RecordingKernel(gemm_bf16_tma._bf16_gemm_tma_kernel, gemms)
    )
    monkeypatch.setitem(SMALL, "max_position_embeddings", 2 * SCRATCH_MIN_M)
    model = _quantized(arch)
    layers = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (1, SCRATCH_MIN_M), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        grouped = model(ids.to(DEVICE), use_cache=False).logits
        assert len(gemms) == 4 * layers  # q/k/v, o, gate/up, down
        assert [g["HAS_SW"] for g in gemms] == [2, 1, 2, 1] * layers
        for g in _groups(model):
            g.set_members(())  # one GEMM per linear
        gemms.clear()
        alone = model(ids.to(DEVICE), use_cache=False).logits
    assert len(gemms) == 7 * layers
    assert torch.equal(grouped, alone)


def test_group_op_passes_opcheck_and_compiles():
    """The custom op (what torch.compile and CUDA graphs call): schema, fake tensor, and a traced
    grouped linear equal to the eager one."""
    a, b = _weight(64, 96, "sharq-nvfp4", seed=11), _weight(32, 96, "sharq-nvfp4", seed=12)
    terms, s_x = _terms(24, 96, seed=13)
    sw = torch.cat([w.global_scale.reshape(1).expand(w.shape[0]) for w in (a, b)])
    bias = torch.randn(96, device=DEVICE)
    tiles = [16, 32, 32, 1, 4, 2, 2, 0, 0, 0, 1]  # the scratch weight, the pointer loop
    for args in (
        (terms[0], terms[1], [a.codes, b.codes], [a.scales, b.scales], s_x.reshape(-1), sw, bias),
        (terms[0], None, [a.codes, b.codes], [a.scales, b.scales], s_x.reshape(-1)[:1], sw, None),
    ):
        torch.library.opcheck(torch.ops.sharq.fp4_weight_gemm_group.default, (*args, False, 32, torch.bfloat16, tiles))
    over = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=1, SCRATCH=2, TMA=1)

    def grouped(x):
        return fp4_weight_gemm_group([x], s_x, [a, b], [None, None], torch.bfloat16, tiles=over)

    compiled = torch.compile(grouped, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(terms[0]), grouped(terms[0]))
