"""Triton fused preparation == reference, bit for bit (codes, scales, global scales, FP32 sum).

Without a GPU the kernel runs under TRITON_INTERPRET=1 at small shapes; `-m gpu` runs the same
checks compiled on CUDA at larger shapes. There is no fallback inside `prepare_activation_triton`:
what it returns was written by the kernel.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

import triton.language as tl  # noqa: E402

from sharq import PRESETS, RuntimeOptions, SharqConfig  # noqa: E402
from sharq.kernels.prepare_fp4 import _round_bf16, prepare_activation_triton, supports  # noqa: E402
from sharq.sparse.decompose import prepare_activation  # noqa: E402

KERNEL_PRESETS = [p for p, c in PRESETS.items() if c.quantizes and supports(c)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal values, NaN matching NaN (payloads aside); ±Inf and ±0 must match exactly."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(
        a.nan_to_num(nan=0.0, posinf=float("inf"), neginf=float("-inf")).view(torch.int32),
        b.nan_to_num(nan=0.0, posinf=float("inf"), neginf=float("-inf")).view(torch.int32),
    )


def _check(x: torch.Tensor, config: SharqConfig, **kw) -> None:
    got = prepare_activation_triton(x, config, with_terms=True, terms_layout="rows", **kw)
    ref = prepare_activation(x, config)
    pairs = [(got.backbone, ref.backbone)]
    if ref.residual is not None:
        pairs.append((got.residual, ref.residual))
    else:
        assert got.residual is None
    for g, r in pairs:
        assert torch.equal(g.codes, r.codes), "codes"
        assert torch.equal(g.scales, r.scales), "scales"
        assert g.shape == r.shape and g.block == r.block
    assert _same(got.global_scale, ref.global_scale)
    if ref.dense is not None:  # operand bf16-sum ("auto" above 16 rows): bf16(deq(B) + deq(R))
        want = (ref.dense,)
    else:  # exact: deq(B) [and deq(R)], each exact in bf16
        want = (ref.backbone.dequantize(apply_global_scale=False),)
        if ref.residual is not None:
            want += (ref.residual.dequantize(apply_global_scale=False),)
    assert got.layout == "rows" and len(got.terms) == len(want)
    for t, w in zip(got.terms, want):
        assert t.dtype == torch.bfloat16 and _same(t.float(), w), "the GEMM operands"


def _outliers(m: int, k: int, seed: int, dtype=torch.bfloat16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(1, k, generator=g))
    hot = torch.randperm(k, generator=g)[: max(1, k // 64)]
    x[:, hot] *= 40.0
    return x.to(dtype)


def test_kernel_presets_cover_nvfp4_and_mxfp4():
    assert {
        "nvfp4",
        "mxfp4",
        "sharq-nvfp4",
        "sharq-nvfp4-w16",
        "sharq-mxfp4",
        "sparse-only",
        "dense-dense",
        "sparse-sparse",
        "naive-residual",
    } <= set(KERNEL_PRESETS)
    assert not supports(PRESETS["sharq-hif4"]) and not supports(PRESETS["hif4"])


@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("preset", KERNEL_PRESETS)
def test_bit_exact_random_and_outliers(preset, granularity):
    config = PRESETS[preset].replace(granularity=granularity)
    _check(_outliers(7, 160, seed=1), config)
    _check(torch.randn(3, 64, generator=torch.Generator().manual_seed(2)), config)


@pytest.mark.parametrize("shape", [(1, 32), (5, 40), (9, 200), (2, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bit_exact_odd_shapes_and_dtypes(shape, dtype):
    for preset in ("sharq-nvfp4", "sharq-mxfp4", "nvfp4"):
        _check(_outliers(*shape, seed=3, dtype=dtype), PRESETS[preset])


@pytest.mark.parametrize("mask", ["2:4", "4:8", "8:16", "pair4of8"])
def test_bit_exact_other_masks(mask):
    config = SharqConfig(
        format="nvfp4", mask=mask, residual="quantized", backbone_block=32, residual_block=16, weight_block=32
    )
    _check(_outliers(6, 96, seed=4), config)


def test_ties_zeros_and_extremes():
    config = PRESETS["sharq-nvfp4"]
    x = torch.zeros(6, 64)
    x[1] = 1.0  # all equal: ties go to the lower index
    x[2, ::2] = -3.0  # pair ties
    x[3] = torch.linspace(-1e-30, 1e-30, 64)  # scales deep in E4M3 subnormals after s_x
    x[4, 0] = 3e38  # huge
    x[4, 1:] = 1e-3
    x[5] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 8)  # every E2M1 tie
    for g in ("tensor", "token"):
        _check(x, config.replace(granularity=g))
        _check(x, PRESETS["sharq-mxfp4"])
        _check(x, PRESETS["nvfp4"].replace(granularity=g))


def test_non_finite_input_matches_reference():
    x = _outliers(4, 64, seed=5, dtype=torch.float32)
    x[1, 3] = float("nan")
    x[2, 10] = float("inf")
    for preset in ("sharq-nvfp4", "sharq-mxfp4"):
        _check(x, PRESETS[preset].replace(granularity="token"))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="does not implement hif4"):
        prepare_activation_triton(torch.randn(2, 64), PRESETS["sharq-hif4"])
    with pytest.raises(ValueError, match="2-D"):
        prepare_activation_triton(torch.randn(2, 3, 64), PRESETS["sharq-nvfp4"])
    with pytest.raises(ValueError, match="multiple of 32"):
        prepare_activation_triton(torch.randn(2, 64), PRESETS["sharq-nvfp4"], block_k=48)


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_short_batch_inline_amax_equals_the_amax_kernel_path(granularity, monkeypatch):
    """Up to AMAX_INLINE_MAX_M rows, every program computes the row maxima itself (one launch, the
    decode path); forcing the separate amax kernel gives the same bits, over K longer than one
    amax chunk (1024) and with a non-finite value in one row."""
    import sharq.kernels.prepare_fp4 as prep

    config = PRESETS["sharq-nvfp4"].replace(granularity=granularity)
    x = _outliers(3, 2100, seed=8, dtype=torch.float32)
    x[0, 1500] = 90.0  # the largest value sits in the second amax chunk
    y = x.clone()
    y[2, 2050] = float("inf")
    for inp in (x, x[:1], y):
        _check(inp, config)  # inline: m <= AMAX_INLINE_MAX_M
        inline = prepare_activation_triton(inp, config)
        monkeypatch.setattr(prep, "AMAX_INLINE_MAX_M", 0)
        separate = prepare_activation_triton(inp, config)
        monkeypatch.setattr(prep, "AMAX_INLINE_MAX_M", 4)
        assert _same(inline.global_scale, separate.global_scale)
        assert torch.equal(inline.backbone.codes, separate.backbone.codes)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", KERNEL_PRESETS)
def test_bit_exact_on_cuda_full_shapes(preset):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for granularity in ("tensor", "token"):
        config = PRESETS[preset].replace(granularity=granularity)
        for m, k in ((1, 4096), (257, 4096), (64, 14336), (33, 576), (2048, 1536)):
            x = _outliers(m, k, seed=m, dtype=torch.bfloat16).cuda()
            _check(x, config)  # the default tiles (what quantize_ runs)
            _check(x, config, block_m=16, block_k=128)


def test_backend_triton_runs_the_kernels_and_matches_the_reference_model(monkeypatch):
    """quantize_ with backend="triton": the preparation kernel prepares every activation and the
    GEMM kernel computes every linear (counted); the logits equal the reference backend's up to
    FP32 summation order (the preparation itself is bit-exact: the tests above)."""
    pytest.importorskip("transformers")
    import sharq.kernels.gemm_fp4 as gemm_mod
    import sharq.kernels.prepare_fp4 as kernel_mod
    from sharq.models import quantize_

    from .tiny_models import tiny_model

    calls, gemms = [], []
    real, real_gemm = kernel_mod.prepare_activation_triton, gemm_mod.fp4_weight_gemm
    real_source = kernel_mod.prepare_source_triton  # the norms: fused into the preparation

    def counting(x, config, **kw):
        calls.append(tuple(x.shape))
        return real(x, config, **kw)

    def counting_source(x, config, source, **kw):
        calls.append(tuple(x.shape))
        return real_source(x, config, source, **kw)

    def counting_gemm(terms, *args, **kw):
        gemms.append((len(terms), 1))
        return real_gemm(terms, *args, **kw)

    real_group = gemm_mod.fp4_weight_gemm_group

    def counting_group(terms, s_x, weights, *args, **kw):
        gemms.append((len(terms), len(weights)))
        return real_group(terms, s_x, weights, *args, **kw)

    monkeypatch.setattr(kernel_mod, "prepare_activation_triton", counting)
    monkeypatch.setattr(kernel_mod, "prepare_source_triton", counting_source)
    monkeypatch.setattr(gemm_mod, "fp4_weight_gemm", counting_gemm)
    monkeypatch.setattr(gemm_mod, "fp4_weight_gemm_group", counting_group)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0)).to(device)
    dtypes = (torch.float32, torch.bfloat16) if device == "cuda" else (torch.float32,)
    for dtype in dtypes:
        calls.clear()
        gemms.clear()
        logits = {}
        for backend in ("reference", "triton"):
            model = tiny_model("llama", dtype=dtype).to(device)
            quantize_(model, PRESETS["sharq-nvfp4"], backend=backend)
            with torch.no_grad():
                logits[backend] = model(input_ids=ids).logits.float()
        assert len(calls) == 4 * 2  # per layer: q/k/v (shared), o, gate/up (shared), down
        # per layer: q/k/v one launch, o, gate/up one launch, down; two terms (backbone, residual)
        assert gemms == [(2, 3), (2, 1), (2, 2), (2, 1)] * 2
        ref, got = logits["reference"], logits["triton"]
        err = (got - ref).norm() / ref.norm()
        assert err < (1e-5 if dtype == torch.float32 else 2e-2), (dtype, err)


def test_backend_triton_without_cuda_or_interpreter_is_an_error(monkeypatch):
    from sharq.ops import resolve_backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(NotImplementedError, match="needs a CUDA device"):
        resolve_backend(PRESETS["sharq-nvfp4"], torch.device("cpu"), RuntimeOptions(backend="triton"))


def test_empty_batch_matches_reference():
    for preset in ("sharq-nvfp4", "sharq-mxfp4"):
        for g in ("tensor", "token"):
            _check(torch.zeros(0, 64), PRESETS[preset].replace(granularity=g))


def test_tensor_scale_spans_every_program():
    """The per-tensor amax is a grid-wide reduction: the largest value sits in the last row and chunk."""
    x = _outliers(37, 1200, seed=8)
    x[-1, -1] = 5000.0
    for preset in ("sharq-nvfp4", "nvfp4"):
        _check(x, PRESETS[preset].replace(granularity="tensor"))


@triton.jit
def _round_bf16_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    v = tl.load(x_ptr + i, mask=i < n)
    tl.store(y_ptr + i, _round_bf16(v), mask=i < n)


def test_round_bf16_matches_torch_per_value():
    """The kernel's spelled-out FP32 -> bf16 rounding (ties to even, NaN, ±Inf, overflow, subnormals)."""
    kernel = _round_bf16_kernel
    one = 1.0
    values = [
        one + 2.0**-8,
        one + 3 * 2.0**-8,
        one + 2.0**-8 + 2.0**-20,
        -(one + 2.0**-8),
        1686.0,
        -1686.0,
        0.0,
        -0.0,
        3.3895314e38,
        3.4e38,
        -3.4e38,
        float("inf"),
        float("-inf"),
        1e-40,
        -3e-39,
        2.0**-133,
        6.0,
        0.1,
    ]
    x = torch.tensor(values, dtype=torch.float32)
    x = torch.cat([x, torch.randn(46, generator=torch.Generator().manual_seed(0)) * 1e3])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    y = torch.empty_like(x, device=dev)
    kernel[(1,)](x.to(dev), y, x.numel(), BLOCK=64)
    assert _same(y.cpu(), x.to(torch.bfloat16).float())
    nan = torch.full((1,), float("nan"))
    kernel[(1,)](nan.to(dev), y, 1, BLOCK=64)
    assert bool(y[0].isnan())
