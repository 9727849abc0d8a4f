"""Functional API: weight quantization and the SharQ linear (SPEC §6–7), dispatched by backend.

backend="reference": pure torch, the executable SPEC. backend="triton": the fused Triton preparation
(bit-identical codes and scales) and the Triton FP4-weight GEMM (equal up to FP32 summation order).
backend="auto" (the default) is Triton on CUDA for the formats the kernels implement (NVFP4, MXFP4),
the reference otherwise (HiF4, CPU). Asking for a backend that cannot run is an error, never a
silent fallback.
"""

from __future__ import annotations

import importlib.util

import torch

from .config import LM_HEAD_WEIGHT_BLOCK, Format, Operand, Residual, SharqConfig
from .formats.nvfp4 import nvfp4_global_scale
from .formats.quantized import QuantizedTensor
from .formats.registry import quantize_tensor
from .options import DEFAULT_OPTIONS, Backend, RuntimeOptions
from .sparse.decompose import PreparedActivation, check_activation, prepare_activation

__all__ = [
    "resolve_backend",
    "prepare",
    "prepare_rms_norm",
    "prepare_act_mul",
    "quantize_weight",
    "weight_scale_views",
    "linear_from_prepared",
    "grouped_linear_from_prepared",
    "group_launch_possible",
    "sharq_linear",
    "quantize_lm_head_weight",
    "resolve_lm_head_backend",
    "lm_head_reference",
    "lm_head_linear",
]


# looked up once at import: `resolve_backend` runs inside torch.compile traces, which cannot trace find_spec
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _triton_installed() -> bool:
    return _TRITON_INSTALLED


def resolve_backend(config: SharqConfig, device: torch.device, options: RuntimeOptions = DEFAULT_OPTIONS) -> Backend:
    """The backend that runs `config` on `device` under `options.backend`; never a silent substitute.

    AUTO picks Triton for a CUDA tensor whose format the kernels implement (and triton installed),
    the reference otherwise. TRITON needs a format the kernels implement (NVFP4, MXFP4), triton
    installed, and a CUDA device — or TRITON_INTERPRET=1 set before the kernels were imported (CPU,
    for tests).
    """
    from .kernels import interpreting, supports

    if options.backend is Backend.REFERENCE:
        return Backend.REFERENCE
    if options.backend is Backend.AUTO:
        cuda = torch.device(device).type == "cuda"
        usable = cuda and supports(config) and _triton_installed()
        return Backend.TRITON if usable else Backend.REFERENCE

    if not supports(config):
        raise NotImplementedError(
            f"backend='triton' does not implement {config.format.value} with mask {config.mask}; "
            "use backend='reference' or 'auto'"
        )
    if not _triton_installed():
        raise NotImplementedError("backend='triton' needs the triton package (pip install 'sharq[kernels]')")
    if torch.device(device).type != "cuda" and not interpreting():
        raise NotImplementedError(f"backend='triton' needs a CUDA device (or TRITON_INTERPRET=1), got {device}")
    return Backend.TRITON


def prepare(
    x: torch.Tensor,
    config: SharqConfig,
    options: RuntimeOptions = DEFAULT_OPTIONS,
    *,
    plan=None,
    row_amax: torch.Tensor | None = None,
) -> PreparedActivation:
    """The preparation of a 2-D activation (M, K) as `kernels.plan.plan_linear` plans it (or as `plan`,
    a `LinearPlan` of M rows, says: a MoE layer's input, `kernels.plan.experts_input_plan`): the
    reference (`prepare_activation`), or the Triton kernel that writes the planned GEMM's operand
    (codes, scales and s_x bit for bit the reference's where written). `options`: backend, NaN check.

    row_amax: None, or FP32 (M,) — the amax each row's scale comes from instead of the row's own
    ("token" granularity, NVFP4): a tensor-parallel rank holding a K slice passes its rows' whole
    amax (`serving.tensor_parallel.row_parallel_prepare`). On Triton the preparation kernel takes it
    (the GEMV operand up to its rows, else the "rows" operand of `fp4_weight_gemm`)."""
    from .kernels.plan import plan_linear

    if plan is None:
        plan = plan_linear(x.shape[0], config, x.device, options)
    elif plan.rows != x.shape[0]:
        raise ValueError(f"a plan of {plan.rows} rows cannot prepare an activation of {x.shape[0]} rows")
    if row_amax is not None:
        _check_row_amax(x, config, row_amax)
    if plan.preparation == "reference":
        scale = None if row_amax is None else nvfp4_global_scale(row_amax.unsqueeze(-1), "token")
        return prepare_activation(x, config, global_scale=scale, check_finite=options.check_finite)
    check_activation(x)
    if options.check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"activation of shape {tuple(x.shape)} contains NaN or Inf (check_finite=True)")
    from .kernels.prepare_fp4 import prepare_activation_triton

    if row_amax is not None:  # the kernel takes the amax as FP32 bit patterns, as its amax pass writes them
        layout = "gemv" if plan.preparation == "gemv" else "rows"
        bits = row_amax.contiguous().view(torch.int32)
        return prepare_activation_triton(
            x, config, with_terms=True, terms_layout=layout, gemv_rows=x.shape[0], row_amax=bits
        )
    if plan.preparation == "operand-rows":
        from .kernels.prepare_split import prepare_split

        s, terms = prepare_split(x, config, two=plan.operand is Operand.EXACT)
        return _operand_prepared(x, config, s, terms)
    # the plan chose the layout: the GEMV operand here serves any row count (MoE layers send up to
    # EXPERTS_GEMV_MAX_TOKENS rows to the experts GEMV)
    return prepare_activation_triton(x, config, with_terms=True, terms_layout=plan.preparation, gemv_rows=x.shape[0])


def _check_row_amax(x: torch.Tensor, config: SharqConfig, row_amax: torch.Tensor) -> None:
    """A given row amax sets each row's NVFP4 scale s = max(amax / 2688, 1e-9): "token" NVFP4 only,
    FP32 (M,) on x's device."""
    from .config import Granularity

    m = x.shape[0] if x.dim() == 2 else -1
    if not config.has_global_scale or config.granularity is not Granularity.TOKEN:
        raise ValueError(
            f"row_amax sets a per-row NVFP4 scale: it needs format nvfp4 with granularity 'token', got "
            f"{config.format.value} / {config.granularity.value}"
        )
    if row_amax.dtype != torch.float32 or tuple(row_amax.shape) != (m,) or row_amax.device != x.device:
        raise ValueError(
            f"row_amax must be float32 of shape ({m},) on {x.device}, got {row_amax.dtype} "
            f"{tuple(row_amax.shape)} on {row_amax.device}"
        )


def _operand_prepared(
    x: torch.Tensor, config: SharqConfig, s: torch.Tensor, terms: tuple[torch.Tensor, ...]
) -> PreparedActivation:
    """The PreparedActivation of `prepare_split`'s output for x (M, K): the operand alone as "rows",
    codes and scales unwritten (empty (M, 0))."""
    m, k = x.shape
    unwritten = x.new_empty(m, 0, dtype=torch.uint8)
    gs = s if config.has_global_scale else None

    def term(block: int) -> QuantizedTensor:
        return QuantizedTensor(
            format=config.format, codes=unwritten, scales=unwritten, shape=(m, k), block=block, global_scale=gs
        )

    residual = term(config.residual_block) if config.residual is not Residual.NONE else None
    return PreparedActivation(term(config.backbone_block), residual, s, terms=terms, layout="rows")


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t (..., K) as (M, K) rows with a unit inner stride (a view where one exists)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _prepare_with_source(x: torch.Tensor, config: SharqConfig, source, linear) -> tuple:
    """(prepared, y, h): the planned preparation (`linear`, a LinearPlan) of the activation that
    `source` (kernels.sources.SourceSpec) computes from x (M, K), in the preparation's kernel."""
    if linear.preparation == "operand-rows":
        from .kernels.prepare_split import prepare_split_source

        s, terms, y, h = prepare_split_source(x, config, source, two=linear.operand is Operand.EXACT)
        return _operand_prepared(x, config, s, terms), y, h
    from .kernels.prepare_fp4 import prepare_source_triton

    # as in `prepare`: a planned GEMV operand serves any row count (a MoE layer's experts GEMV)
    return prepare_source_triton(x, config, source, terms_layout=linear.preparation, gemv_rows=x.shape[0])


def prepare_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    variant: str,
    config: SharqConfig,
    options: RuntimeOptions = DEFAULT_OPTIONS,
    *,
    residual: torch.Tensor | None = None,
    write_y: bool = True,
    plan=None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, PreparedActivation | None]:
    """(y, h, prepared) of a decoder's RMSNorm, optionally after its residual add, feeding linears of
    `config` (SPEC §9): h = x + residual in x's dtype (None without a residual), y = RMSNorm(h)
    (`nn.fused_norm.add_rms_norm_reference`, `variant` "llama" or "gemma"), prepared = `prepare` of y
    as (M, K) rows (None for an empty x).

    x, residual: (..., K) fp32/bf16/fp16 of one dtype and shape; weight (K,). y and h have x's shape.
    options: the consumers' `RuntimeOptions` (backend, NaN check). plan: None (`plan_linear`), or the
    consumers' `LinearPlan` of the M rows when it is not plan_linear's (a MoE layer's input,
    `kernels.plan.experts_input_plan`), as `prepare`'s.
    `kernels.plan.plan_producer("rms-norm", ...)` decides: on the Triton backend the preparation's
    kernel computes h and y itself (y written only when `write_y` or check_finite asks for it, else
    None); otherwise torch computes them and `prepare` runs — the same bits (the statistic in the
    fixed "lanes" order, `nn.fused_norm.rms_inverse`, either way)."""
    from .kernels.plan import plan_producer
    from .nn.fused_norm import NORM_VARIANTS, add_rms_norm_reference, norm_output_dtype

    check_activation(x, "RMSNorm input")
    if variant not in NORM_VARIANTS:
        raise ValueError(f"unknown RMSNorm variant {variant!r}; expected one of {NORM_VARIANTS}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device):
        raise ValueError(
            f"the residual ({tuple(residual.shape)}, {residual.dtype}, {residual.device}) must match the "
            f"RMSNorm input ({tuple(x.shape)}, {x.dtype}, {x.device})"
        )
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    producer = plan_producer("rms-norm", rows, k, config, x.device, options=options, linear=plan)
    if not producer.fused:
        y, h = add_rms_norm_reference(x, residual, weight, eps, variant)
        prepared = prepare(y.reshape(-1, k), config, options, plan=plan) if rows else None
        return y, (h if residual is not None else None), prepared
    from .kernels.sources import SOURCE_NORM, SourceSpec, dtype_code

    x2d = _rows(x)
    y_dtype = norm_output_dtype(x.dtype, weight.dtype, variant)
    spec = SourceSpec(
        _rows(residual) if residual is not None else x2d.new_empty(0),
        weight.contiguous(),
        float(eps),
        SOURCE_NORM,
        residual is not None,
        NORM_VARIANTS.index(variant),
        dtype_code(y_dtype),
        write_y or options.check_finite,
        residual is not None,
        -1,
    )
    prepared, y, h = _prepare_with_source(x2d, config, spec, producer.linear)
    if options.check_finite and not bool(torch.isfinite(y).all()):
        raise ValueError(f"activation of shape {tuple(y.shape)} contains NaN or Inf (check_finite=True)")
    return (y.view(x.shape) if write_y else None), (h.view(x.shape) if h is not None else None), prepared


def prepare_act_mul(
    gate: torch.Tensor,
    up: torch.Tensor,
    config: SharqConfig,
    options: RuntimeOptions = DEFAULT_OPTIONS,
    *,
    table: torch.Tensor | None,
) -> PreparedActivation | None:
    """The preparation of act(gate) · up (down_proj's input, as (M, K) rows) computed in the
    preparation's kernel, or None where `kernels.plan.plan_producer("act-mul", ...)` does not fuse
    (the caller then computes act_fn(gate) * up in torch and prepares it as usual: the same bits).

    gate, up: (..., K) bf16 or fp16, one shape and dtype; options: down_proj's `RuntimeOptions`;
    table: (65,536,) of that dtype, act of every 16-bit value by its bits
    (`nn.fused_mlp.activation_table`), or None (not built yet)."""
    from .kernels.plan import plan_producer

    check_activation(gate, "gate")
    if up.shape != gate.shape or up.dtype != gate.dtype or up.device != gate.device:
        raise ValueError(f"up ({tuple(up.shape)}, {up.dtype}) must match gate ({tuple(gate.shape)}, {gate.dtype})")
    k = gate.shape[-1]
    rows = gate.numel() // k if k else 0
    plan = plan_producer(
        "act-mul", rows, k, config, gate.device, dtype=gate.dtype, act_table=table is not None, options=options
    )
    if not plan.fused:
        return None
    if table.shape != (65536,) or table.dtype != gate.dtype or table.device != gate.device:
        raise ValueError(
            f"the activation table must be (65536,) {gate.dtype} on {gate.device}, got "
            f"{tuple(table.shape)} {table.dtype} on {table.device}"
        )
    from .kernels.sources import SOURCE_ACT_MUL, SourceSpec, dtype_code

    spec = SourceSpec(_rows(up), table, 0.0, SOURCE_ACT_MUL, False, 0, dtype_code(gate.dtype), False, False, -1)
    return _prepare_with_source(_rows(gate), config, spec, plan.linear)[0]


def quantize_weight(weight: torch.Tensor, config: SharqConfig) -> QuantizedTensor:
    """Quantize a weight (N, K) once, without calibration data (SPEC §6).

    NVFP4: s_w = max(amax(W) / 2688, 1e-9) per matrix, then `config.weight_block` E4M3 scales.
    MXFP4 / HiF4: their block format, no second level. Non-finite weights are rejected.
    `config.weight_scale` picks the block scales: "amax" (the format's fixed rule) or "mse" (each
    block's scale searched among candidates, `formats.nvfp4.nvfp4_block_scales` /
    `formats.mxfp4.quantize_mxfp4_scaled`); the payload's format is the same either way.
    """
    _check_weight(weight)
    if not config.quantizes:
        raise ValueError("quantize_weight: the config quantizes nothing (format='none')")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight contains NaN or Inf; refusing to quantize it")
    # NVFP4: one s_w ("tensor" granularity)
    return quantize_tensor(weight, config.format, config.weight_block, scale_rule=config.weight_scale)


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D tensor (N, K), got {getattr(weight, 'shape', type(weight))}")
    if not weight.is_floating_point():
        raise TypeError(f"weight has dtype {weight.dtype}; expected a floating-point tensor")
    if weight.device.type == "meta":
        raise ValueError(
            "weight is on the meta device and holds no values to quantize; build an empty layer "
            "(SharqLinear.empty_like) and load a checkpoint into it instead"
        )


def quantize_lm_head_weight(weight: torch.Tensor, config: SharqConfig) -> QuantizedTensor:
    """The packed weight (N, K) of a weight-only quantized lm_head (`config.lm_head`, SPEC §9).

    NVFP4 in LM_HEAD_WEIGHT_BLOCK (16) blocks whatever `config.format` is: s_w = max(amax(W) / 2688,
    1e-9) per matrix, E4M3 block scales by `config.weight_scale` ("amax" or "mse"), the same
    quantizer and payload as a SharQ weight (SPEC §6). Non-finite weights are rejected.
    """
    _check_weight(weight)
    if not config.quantizes_lm_head:
        raise ValueError(
            f"quantize_lm_head_weight: SharqConfig.lm_head is {config.lm_head.value!r}; "
            "the lm_head stays in the model dtype"
        )
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("lm_head weight contains NaN or Inf; refusing to quantize it")
    return quantize_tensor(weight, Format.NVFP4, LM_HEAD_WEIGHT_BLOCK, scale_rule=config.weight_scale)


def weight_scale_views(weight: QuantizedTensor) -> tuple[int | None, int | None]:
    """(sparse-path, dense-path) scale-view block sizes of a weight.

    NVFP4-32 weights: the sparse path reads the stored per-32 scales, the dense path the per-16
    view (every per-32 scale twice), the layouts the two Blackwell GEMMs take. Other weights:
    both paths read the stored scales (None).
    """
    if weight.format is Format.NVFP4 and weight.block == 32:
        return 32, 16
    return None, None


def linear_from_prepared(
    prepared: PreparedActivation,
    weight: QuantizedTensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    one_gemm: bool = False,
) -> torch.Tensor:
    """y = s_x · s_w · (deq(B) · deq(W)ᵀ + deq(R) · deq(W)ᵀ) + bias, FP32 accumulation.

    prepared: activation terms of shape (M, K) (scaled domain + s_x of shape () or (M, 1)).
    weight:   quantized (N, K). Returns (M, N) in `out_dtype`.
    one_gemm=True computes (deq(B) + deq(R)) · deq(W)ᵀ — SPEC §7's equal form (up to FP32
    summation order), the Hopper fast path.
    A preparation that carries `dense` (bf16(deq(B) + deq(R)), operand bf16-sum) is multiplied as it
    is. One that carries Triton operands (`prepared.layout`, kernels/plan.py) runs the planned kernel:
    the decode GEMV ("gemv") or `gemm_fp4` ("rows"); each equals this function's reference sum up to
    FP32 summation order.
    """
    if prepared.layout == "gemv":  # a short exact batch: the decode GEMV's operand
        from .kernels.gemv_nvfp4 import fp4_weight_gemv

        return fp4_weight_gemv(prepared.terms, prepared.global_scale, weight, bias, out_dtype)
    if prepared.layout == "rows":
        from .kernels.gemm_fp4 import fp4_weight_gemm

        return fp4_weight_gemm(prepared.terms, prepared.global_scale, weight, bias, out_dtype)
    sparse_view, dense_view = weight_scale_views(weight)
    s_w = weight.global_scale if weight.global_scale is not None else torch.ones((), device=weight.device)
    w_sparse = weight.dequantize(apply_global_scale=False, scale_block=sparse_view)  # (N, K) fp32
    if prepared.dense is not None:  # the producer's operand: deq(B) + deq(R), or its bf16 rounding
        acc = prepared.dense @ w_sparse.T
    else:
        b = prepared.backbone.dequantize(apply_global_scale=False)
        if prepared.residual is None:
            acc = b @ w_sparse.T
        else:
            r = prepared.residual.dequantize(apply_global_scale=False)  # (M, K) fp32
            if one_gemm:
                acc = (b + r) @ w_sparse.T
            else:
                w_dense = weight.dequantize(apply_global_scale=False, scale_block=dense_view)
                acc = b @ w_sparse.T + r @ w_dense.T
    y = (prepared.global_scale * s_w) * acc  # (M, N) fp32
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def group_launch_possible(prepared: PreparedActivation) -> bool:
    """A cheap first test for `grouped_linear_from_prepared`: False where it returns None whatever the
    weights (it serves the GEMV's operand and the GEMM's of 3 rows or more), so the members' weights
    need not be gathered on every call."""
    if prepared.layout == "gemv":
        return True
    return prepared.layout == "rows" and prepared.terms[0].shape[0] >= 3


def grouped_linear_from_prepared(
    prepared: PreparedActivation,
    weights: list[QuantizedTensor],
    biases: list[torch.Tensor | None],
    out_dtype: torch.dtype,
) -> torch.Tensor | None:
    """The linears of one prepared input with each of `weights` (N_g, K) in one launch: (M, Σ N_g) in
    `out_dtype`, weight g's outputs in its columns, each equal to `linear_from_prepared` with that
    weight — or None where one launch does not serve them. It does on the Triton backend for
    - a short batch prepared as the decode GEMV's operand (up to GEMV_AUTO_MAX_M NVFP4 rows), weights
      the GEMV reads of one K and block (`kernels.gemv_nvfp4.gemv_group_supports`);
    - the GEMM's operand ("rows"), weights of one format, block and K (`kernels.gemm_fp4.
      gemm_group_supports`): from SCRATCH_MIN_M rows dequantized side by side into one scratch
      matrix, below it decoded in the loop where every weight's own call takes the same tiles;
    with biases all None or of one dtype."""
    if prepared.layout == "rows":
        from .kernels.gemm_fp4 import fp4_weight_gemm_group, gemm_group_supports

        if not gemm_group_supports(weights, prepared.terms[0].shape[0], biases, terms=len(prepared.terms)):
            return None
        return fp4_weight_gemm_group(prepared.terms, prepared.global_scale, weights, biases, out_dtype)
    if prepared.layout != "gemv":
        return None
    from .kernels.gemv_nvfp4 import fp4_weight_gemv_group, gemv_group_supports

    if not gemv_group_supports(weights, prepared.terms[0].shape[0], biases=biases):
        return None
    return fp4_weight_gemv_group(prepared.terms, prepared.global_scale, weights, biases, out_dtype)


def _check_linear_operands(x: torch.Tensor, weight: QuantizedTensor, bias: torch.Tensor | None) -> None:
    """Clear errors for operands `sharq_linear` is not defined on (before any kernel sees them: the
    M = 1 Triton GEMV reads its K-padded terms and would not notice a wrong K)."""
    if not isinstance(weight, QuantizedTensor):
        raise TypeError(f"weight must be a QuantizedTensor (sharq.quantize_weight), got {type(weight).__name__}")
    check_activation(x)
    if len(weight.shape) != 2:
        raise ValueError(f"weight must be 2-D (N, K), got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(
            f"activation of shape {tuple(x.shape)} has last dimension {x.shape[-1]}, "
            f"but the weight of shape {tuple(weight.shape)} has K={k}"
        )
    if x.device != weight.device:
        raise ValueError(f"activation is on {x.device} but the weight is on {weight.device}")
    if bias is not None:
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
        if bias.device != weight.device:
            raise ValueError(f"bias is on {bias.device} but the weight is on {weight.device}")


def sharq_linear(
    x: torch.Tensor,
    weight: QuantizedTensor,
    bias: torch.Tensor | None,
    config: SharqConfig,
    *,
    one_gemm: bool = False,
    prepared: PreparedActivation | None = None,
    options: RuntimeOptions = DEFAULT_OPTIONS,
) -> torch.Tensor:
    """SharQ linear of `x` (..., K) with a quantized weight (N, K): returns (..., N) in x's dtype.

    `prepared`: x's preparation as (M, K) rows when it was already computed (shared by q/k/v or
    gate/up, SPEC §9); it must be `prepare_activation(x.reshape(-1, K), config)`. `options`: the
    backend and NaN check (`sharq.options.RuntimeOptions`).
    Refused before any computation: a weight that is not a `QuantizedTensor` (TypeError), x of a
    dtype other than float32/bfloat16/float16 (TypeError), a scalar x, x's last dimension not the
    weight's K, x or bias on another device than the weight, a bias not of shape (N,) (ValueError).
    """
    _check_linear_operands(x, weight, bias)
    resolve_backend(config, x.device, options)
    k = x.shape[-1]
    if prepared is None:
        prepared = prepare(x.reshape(-1, k), config, options)  # (M, K) terms
    y = linear_from_prepared(prepared, weight, bias, x.dtype, one_gemm=one_gemm)
    return y.reshape(*x.shape[:-1], y.shape[-1])


# --- the weight-only quantized lm_head (SPEC §9, beyond the paper) ---------------------------------


def resolve_lm_head_backend(backend: Backend, x: torch.Tensor) -> Backend:
    """The backend a weight-only lm_head call on `x` runs; never a silent substitute.

    The Triton kernels multiply a bf16 input (the operand of the bf16 tensor-core GEMM, and what the
    GEMV reads). AUTO: Triton for a bf16 CUDA input with triton installed, the reference otherwise
    (float32 / float16 inputs, the CPU). TRITON: refused (NotImplementedError) for another dtype,
    without triton, or off CUDA unless TRITON_INTERPRET=1 (the CPU tests).
    """
    from .kernels import interpreting

    backend = Backend(backend)
    if backend is Backend.REFERENCE:
        return backend
    if backend is Backend.AUTO:
        usable = x.device.type == "cuda" and x.dtype == torch.bfloat16 and _triton_installed()
        return Backend.TRITON if usable else Backend.REFERENCE
    if x.dtype != torch.bfloat16:
        raise NotImplementedError(
            f"backend='triton' runs the quantized lm_head on bfloat16 input, got {x.dtype}; "
            "use backend='reference' or 'auto'"
        )
    if not _triton_installed():
        raise NotImplementedError("backend='triton' needs the triton package (pip install 'sharq[kernels]')")
    if x.device.type != "cuda" and not interpreting():
        raise NotImplementedError(f"backend='triton' needs a CUDA device (or TRITON_INTERPRET=1), got {x.device}")
    return Backend.TRITON


def lm_head_reference(x: torch.Tensor, weight: QuantizedTensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = s_w · (x · deq(Wq)ᵀ) (+ bias), the reference of the weight-only quantized lm_head.

    x (M, K) float32 / bfloat16 / float16, taken exactly into FP32; deq(Wq) the (N, K) weight in
    the scaled domain (E2M1 value · E4M3 block scale, exact in FP32); the products summed in FP32,
    multiplied by the FP32 s_w once, the bias added in FP32; returned (M, N) in x's dtype.
    """
    w = weight.dequantize(apply_global_scale=False)  # (N, K) fp32
    y = weight.global_scale * (x.float() @ w.T)  # (M, N) fp32
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def lm_head_linear(
    x: torch.Tensor, weight: QuantizedTensor, bias: torch.Tensor | None, backend: Backend | str = Backend.AUTO
) -> torch.Tensor:
    """The weight-only quantized lm_head on `x` (..., K): (..., N) in x's dtype (`lm_head_reference`).

    `weight` is 2-D NVFP4 (`quantize_lm_head_weight`). Triton (`resolve_lm_head_backend`):
    `kernels.plan.plan_lm_head` picks the W4A16 GEMV (few rows) or the FP4-weight GEMM with the input
    as its one bf16 term and s_x = 1; either equals the reference up to FP32 summation order.
    """
    _check_linear_operands(x, weight, bias)
    if weight.format is not Format.NVFP4 or weight.global_scale is None:
        raise ValueError(f"the quantized lm_head takes an NVFP4 weight with its s_w, got {weight.format.value}")
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if resolve_lm_head_backend(backend, x) is Backend.REFERENCE:
        y = lm_head_reference(x2, weight, bias)
    else:
        from .kernels.plan import plan_lm_head

        x2 = x2.contiguous()
        if plan_lm_head(x2.shape[0]) == "w4a16-gemv":
            from .kernels.gemv_w4a16 import w4a16_gemv

            y = w4a16_gemv(x2, weight, bias, x.dtype)
        else:
            from .kernels.gemm_fp4 import fp4_weight_gemm

            one = torch.ones((), dtype=torch.float32, device=x.device)
            y = fp4_weight_gemm([x2], one, weight, bias, x.dtype)
    return y.reshape(*x.shape[:-1], y.shape[-1])
