"""`SharqExperts`: the experts of a mixture-of-experts layer, every expert matrix in packed FP4.

Recent transformers store a MoE layer's experts as 3-D parameters in one module (Qwen3-MoE,
Mixtral: `gate_up_proj` (E, 2I, H), `down_proj` (E, H, I), flags `is_transposed` /
`is_concatenated` / `has_bias`). `SharqExperts.from_experts` quantizes each expert's gate, up and
down matrix separately (one s_w per matrix, SPEC §6 — the same numerics as the older layout of one
`nn.Linear` per projection) and replaces that module; the router stays in the model dtype.

Buffers, for p in (gate, up, down), with E experts, (N, K) the projection's shape:

  {p}_codes         uint8 (E, N, Kp // 2)   packed E2M1 / S1P2 codes
  {p}_scales        uint8 (E, N, nb)        block-scale bits
  {p}_global_scale  int32 (E,)              bits of each expert's FP32 s_w (NVFP4 only)
  {p}_exponents8/4  uint8 (E, N, nb[, 2])   HiF4 only
  {p}_bias          (E, N) in the model dtype, when the experts have biases

Forward: the layer input (T, H) is prepared once — by the fused pre-MLP norm, shared with every
expert's gate and up — and each expert reads its routed rows of that preparation. With "tensor"
granularity the rows keep the layer-wide s_x; "token" is exact per row. Each expert's down
projection prepares its own intermediate activation (with "tensor" granularity, one s over that
expert's rows). `kernels.plan.plan_experts` decides how a call runs (`routing`: "auto", "device",
"host"):

  experts GEMV (up to 16 tokens, exact operand, NVFP4 on the Triton backend — decode): the input is
    prepared as the decode GEMV's operand, and gate+up, then down, run the experts GEMV
    (`kernels.gemv_experts`) on tiles of 1-2 rows of one expert, with one tiling.
      device routing (the default there): `kernels.moe_route` buckets the pairs on the GPU, one
        gate+up launch over every tile, SiLU·mul, one preparation of all pairs' intermediate rows
        (each expert's rows scaled by their own amax: `segment_amax`), one down launch, one combine.
        No host synchronisation: a decode step with MoE layers captures in a CUDA graph.
      host routing: the hit experts are found on the host; per expert one gate+up launch over its
        tiles, its down preparation and launch, `index_add_` of its weighted rows.
    Both compute the same bits: the same preparations per expert input, the same kernel and tiling
    per row, and the same combine — for each token, over its experts in ascending order, each product
    (y · w) rounded as torch rounds it and each sum rounded to the model dtype, from zero.
  per-call (longer calls, other formats, the reference backend): host routing, each expert's rows as
    plain linears (`ops.linear_from_prepared`, planned by `plan_linear` for the expert's row count);
    down's input act(gate) · up is computed inside its preparation's kernel on the Triton backend
    (`ops.prepare_act_mul`, nn/fused_mlp.py), else in torch — the same bits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Format, Granularity, Operand, SharqConfig
from ..formats.blocks import padded_length
from ..formats.quantized import QuantizedTensor
from ..kernels.plan import ROUTINGS, ExpertsPlan, LinearPlan, experts_input_plan, plan_experts
from ..ops import linear_from_prepared, prepare, prepare_act_mul, quantize_weight, resolve_backend
from ..options import DEFAULT_OPTIONS, RuntimeOptions
from ..sparse.decompose import PreparedActivation, check_activation, select_rows
from .fused_mlp import ActivationTables, act_mul_reference
from .shared_input import SharedPreparation, prepare_rows
from .weight_storage import buffers, store_weight, weight_view

__all__ = ["SharqExperts", "expert_projections"]

_PROJECTIONS = ("gate", "up", "down")


def expert_projections(experts: nn.Module) -> dict[str, torch.Tensor]:
    """The (E, N, K) gate, up and down weights of a fused-experts module, in F.linear layout.

    Raises a ValueError naming what is not understood (another gating, post-expert norms, …).
    """
    name = type(experts).__name__
    if not getattr(experts, "has_gate", True):
        raise ValueError(f"{name}: experts without a gate projection are not supported")
    if getattr(experts, "has_post_expert_norm", False):
        raise ValueError(f"{name}: experts with a post-expert norm are not supported")
    apply_gate = getattr(type(experts), "_apply_gate", None)
    if apply_gate is not None and apply_gate.__name__ != "_default_apply_gate":
        raise ValueError(f"{name}: a custom expert gating (`_apply_gate`) is not supported")
    gate_up, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
    if (
        not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor))
        or gate_up.dim() != 3
        or down.dim() != 3
    ):
        raise ValueError(f"{name}: expected 3-D `gate_up_proj` and `down_proj` parameters")
    if getattr(experts, "is_transposed", False):  # stored (E, K, N)
        gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
    if gate_up.shape[1] % 2:
        raise ValueError(f"{name}: gate_up_proj has an odd output size {gate_up.shape[1]}")
    if getattr(experts, "is_concatenated", True):  # [gate; up]
        gate, up = gate_up.chunk(2, dim=1)
    else:  # interleaved gate0, up0, gate1, up1, …
        gate, up = gate_up[:, 0::2], gate_up[:, 1::2]
    out = {"gate": gate, "up": up, "down": down}
    if getattr(experts, "has_bias", False):
        gu_bias, d_bias = experts.gate_up_proj_bias, experts.down_proj_bias  # (E, 2I), (E, H)
        if getattr(experts, "is_concatenated", True):
            g_bias, u_bias = gu_bias.chunk(2, dim=1)
        else:
            g_bias, u_bias = gu_bias[:, 0::2], gu_bias[:, 1::2]
        out.update(gate_bias=g_bias, up_bias=u_bias, down_bias=d_bias)
    return {k: v.detach() for k, v in out.items()}


class SharqExperts(nn.Module):
    """E experts (gate, up, down) with SharQ activations and packed FP4 weights.

    forward(hidden_states (T, H), top_k_index (T, k) int, top_k_weights (T, k)) -> (T, H) in the
    input dtype — the signature of transformers' fused-experts modules. `options` (`RuntimeOptions`)
    is set by `sharq.quantize_` / `load_quantized` / `set_runtime_options`.
    routing: "auto" | "device" | "host" (module docstring; `plan_experts`), settable.
    """

    options: RuntimeOptions = DEFAULT_OPTIONS

    def __init__(
        self,
        num_experts: int,
        hidden: int,
        intermediate: int,
        *,
        config: SharqConfig,
        act_fn: nn.Module,
        bias: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not config.quantizes:
            raise ValueError("SharqExperts needs a quantizing config")
        self.num_experts, self.hidden, self.intermediate = num_experts, hidden, intermediate
        self.config = config
        self.act_fn = act_fn
        self.act_tables = ActivationTables(act_fn)  # act·mul fused into down's preparation (nn/fused_mlp.py)
        self.name = name
        self.shared_input = None  # a SharedPreparation, set by quantize_ (its planner: `input_plan`)
        self.routing = "auto"
        self.down_prepare_count = 0
        # the down projection's preparation in the experts GEMV: the exact operand's GEMV operand for
        # any number of rows (each expert's rows are at most 16 there, where every operand is exact)
        self._gemv_config = config.replace(operand=Operand.EXACT) if config.format is Format.NVFP4 else config
        block = config.weight_block
        u8 = dict(dtype=torch.uint8, device=device)
        for proj, (n, k) in self._shapes().items():
            kp = padded_length(k, block)
            self.register_buffer(f"{proj}_codes", torch.zeros(num_experts, n, kp // 2, **u8))
            self.register_buffer(f"{proj}_scales", torch.zeros(num_experts, n, kp // block, **u8))
            if config.format is Format.NVFP4:
                one = torch.ones(num_experts, dtype=torch.float32).view(torch.int32)
                self.register_buffer(f"{proj}_global_scale", one.to(device))
            if config.format is Format.HIF4:
                self.register_buffer(f"{proj}_exponents8", torch.zeros(num_experts, n, kp // block, **u8))
                self.register_buffer(f"{proj}_exponents4", torch.zeros(num_experts, n, kp // block, 2, **u8))
            if bias:
                b = torch.zeros(num_experts, n, dtype=dtype or torch.get_default_dtype(), device=device)
                setattr(self, f"{proj}_bias", nn.Parameter(b, requires_grad=False))
            else:
                self.register_parameter(f"{proj}_bias", None)

    def _shapes(self) -> dict[str, tuple[int, int]]:
        h, i = self.hidden, self.intermediate
        return {"gate": (i, h), "up": (i, h), "down": (h, i)}

    @classmethod
    def empty_like(
        cls,
        experts: nn.Module,
        config: SharqConfig,
        *,
        name: str | None = None,
        device: torch.device | str | None = None,
    ) -> SharqExperts:
        """Zero storage of `experts`' sizes, bias and dtype on `device` (default: the experts' device,
        "meta" allowed); the weights are not read. A checkpoint loader fills it."""
        return cls._empty(expert_projections(experts), experts, config, name, device)

    @classmethod
    def _empty(
        cls,
        weights: dict[str, torch.Tensor],
        experts: nn.Module,
        config: SharqConfig,
        name: str | None,
        device: torch.device | str | None,
    ) -> SharqExperts:
        act_fn = getattr(experts, "act_fn", None)
        if not isinstance(act_fn, nn.Module):
            raise ValueError(f"{name or type(experts).__name__}: experts module has no `act_fn` module")
        e, i, h = weights["gate"].shape
        return cls(
            e,
            h,
            i,
            config=config,
            act_fn=act_fn,
            bias="gate_bias" in weights,
            dtype=weights["gate"].dtype,
            device=weights["gate"].device if device is None else device,
            name=name,
        )

    @classmethod
    def from_experts(cls, experts: nn.Module, config: SharqConfig, *, name: str | None = None) -> SharqExperts:
        """Quantize a transformers fused-experts module (see `expert_projections`), no calibration."""
        weights = expert_projections(experts)
        module = cls._empty(weights, experts, config, name, None)
        e = module.num_experts
        for proj in _PROJECTIONS:
            for idx in range(e):
                label = f"{name or 'experts'}.{idx}.{proj}"
                try:
                    qt = quantize_weight(weights[proj][idx], config)
                except ValueError as err:
                    raise ValueError(f"{label}: {err}") from None
                store_weight(buffers(module, proj, idx), qt)
            if f"{proj}_bias" in weights:
                getattr(module, f"{proj}_bias").data.copy_(weights[f"{proj}_bias"])
        return module

    def expert_weight(self, proj: str, idx: int) -> QuantizedTensor:
        """Expert `idx`'s packed `proj` weight ("gate" | "up" | "down") as a QuantizedTensor (views)."""
        return weight_view(buffers(self, proj, idx), self.config.format, self._shapes()[proj], self.config.weight_block)

    @property
    def shared_input(self) -> SharedPreparation | None:
        """The shared preparation of the layer input (from the fused pre-MLP norm), or None."""
        return self._shared_input

    @shared_input.setter
    def shared_input(self, shared: SharedPreparation | None) -> None:
        if shared is not None:
            shared.planner = self.input_plan  # the norm prepares what the experts read
        self._shared_input = shared

    def input_plan(self, rows: int, device: torch.device) -> LinearPlan:
        """The preparation plan of an input of `rows` tokens (`kernels.plan.experts_input_plan`)."""
        return experts_input_plan(rows, self.config, device, self.intermediate, self.options)

    def plan(
        self, tokens: int, top_k: int, device: torch.device, weights_dtype: torch.dtype | None = None
    ) -> ExpertsPlan:
        """How a call of `tokens` rows with `top_k` experts each runs on `device` (`plan_experts`)."""
        if self.routing not in ROUTINGS:
            raise ValueError(f"{self.name or 'SharqExperts'}: routing must be one of {ROUTINGS}, got {self.routing!r}")
        return plan_experts(
            tokens,
            top_k,
            self.num_experts,
            self.config,
            device,
            intermediate=self.intermediate,
            routing=self.routing,
            weights_dtype=weights_dtype,
            options=self.options,
        )

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        label = self.name or "SharqExperts"
        check_activation(hidden_states, f"{label} input")
        if hidden_states.dim() != 2 or hidden_states.shape[-1] != self.hidden:
            raise ValueError(f"{label}: expected hidden_states (T, {self.hidden}), got {tuple(hidden_states.shape)}")
        resolve_backend(self.config, hidden_states.device, self.options)
        tokens = hidden_states.shape[0]
        if tokens == 0:
            return torch.zeros_like(hidden_states)
        plan = self.plan(tokens, top_k_index.shape[-1], hidden_states.device, top_k_weights.dtype)
        prepared = self.shared_input.take(hidden_states) if self.shared_input is not None else None
        if prepared is None or (plan.expert_gemm == "experts-gemv" and prepared.layout != "gemv"):
            prepared = prepare_rows(hidden_states, self.config, self.options, self.input_plan)
        if plan.routing == "device":
            return self._forward_device(prepared, top_k_index, top_k_weights, plan, hidden_states.dtype)
        return self._forward_host(prepared, top_k_index, top_k_weights, plan, hidden_states)

    def _forward_host(
        self,
        prepared: PreparedActivation,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
        plan: ExpertsPlan,
        hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        """Host routing: the hit experts found on the host, one after the other (ascending index)."""
        final = torch.zeros_like(hidden_states)
        dtype = hidden_states.dtype
        with torch.no_grad():
            expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
            expert_mask = expert_mask.permute(2, 1, 0)  # (E + 1, k, T)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for hit in expert_hit:
            idx = int(hit[0])
            if idx == self.num_experts:  # tokens routed nowhere (expert parallelism)
                continue
            top_k_pos, token_idx = torch.where(expert_mask[idx])
            if plan.expert_gemm == "experts-gemv":
                out = self._expert_gemv(prepared, token_idx, idx, plan, dtype)
            else:
                out = self._expert_linears(prepared, token_idx, idx, dtype)
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final

    def _expert_linears(
        self, prepared: PreparedActivation, token_idx: torch.Tensor, idx: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """Expert `idx` on its rows `token_idx` as plain linears (per-call plans): (t, H) in `dtype`."""
        rows = select_rows(prepared, token_idx)
        gate = linear_from_prepared(
            rows, self.expert_weight("gate", idx), self._bias("gate", idx), dtype, one_gemm=True
        )
        up = linear_from_prepared(rows, self.expert_weight("up", idx), self._bias("up", idx), dtype, one_gemm=True)
        # down's input act(gate) · up (t, I) in the model dtype: computed in its preparation's kernel
        # where the plan fuses it, else in torch (the same bits)
        inner = prepare_act_mul(gate, up, self.config, self.options, table=self.act_tables.get(gate))
        if inner is None:
            inner = prepare_rows(act_mul_reference(gate, up, self.act_fn), self.config, self.options)
        if not torch.compiler.is_compiling():  # eager calls only: a traced counter would be a guard
            self.down_prepare_count += 1
        return linear_from_prepared(
            inner,
            self.expert_weight("down", idx),
            self._bias("down", idx),
            dtype,
            one_gemm=True,
        )

    def _expert_gemv(
        self, prepared: PreparedActivation, token_idx: torch.Tensor, idx: int, plan: ExpertsPlan, dtype: torch.dtype
    ) -> torch.Tensor:
        """Expert `idx` on its rows `token_idx` through the experts GEMV, its tiles alone: (t, H)."""
        from ..kernels.gemv_experts import experts_gemv, host_tiles

        t = token_idx.numel()
        tiles = host_tiles(idx, t, plan.tile_rows, token_idx.device)
        gate_up = experts_gemv(
            prepared.terms,
            prepared.global_scale,
            token_idx.to(torch.int32),
            tiles,
            self._members("gate", "up"),
            t,
            dtype,
            plan.tiles,
        )  # (t, 2I)
        inner = self.act_fn(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]  # (t, I)
        if not torch.compiler.is_compiling():
            self.down_prepare_count += 1
        down_plan = LinearPlan(t, plan.backend, Operand.EXACT, "gemv", "experts-gemv")
        down_in = prepare(
            inner, self._gemv_config, self.options, plan=down_plan
        )  # s over this expert's rows ("tensor")
        return experts_gemv(
            down_in.terms, down_in.global_scale, None, tiles, self._members("down"), t, dtype, plan.tiles
        )

    def _forward_device(
        self,
        prepared: PreparedActivation,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
        plan: ExpertsPlan,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """Device routing: every (token, expert) pair in a fixed number of launches, no host sync."""
        from ..kernels.gemv_experts import experts_gemv
        from ..kernels.moe_route import combine_experts, route_experts, segment_amax
        from ..kernels.prepare_fp4 import prepare_activation_triton

        route = route_experts(top_k_index, self.num_experts, plan.tile_rows, plan.max_tiles)
        pairs = plan.pairs
        gate_up = experts_gemv(
            prepared.terms,
            prepared.global_scale,
            route.sorted_token,
            route.tiles,
            self._members("gate", "up"),
            pairs,
            dtype,
            plan.tiles,
        )  # (P, 2I), sorted pairs
        inner = self.act_fn(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]  # (P, I)
        if not torch.compiler.is_compiling():
            self.down_prepare_count += 1
        row_amax = None
        if self.config.granularity is Granularity.TENSOR:  # each expert's rows: the amax of all of them
            row_amax = segment_amax(inner, route.sorted_expert)
        down_in = prepare_activation_triton(
            inner, self._gemv_config, with_terms=True, terms_layout="gemv", gemv_rows=pairs, row_amax=row_amax
        )
        down = experts_gemv(
            down_in.terms, down_in.global_scale, None, route.tiles, self._members("down"), pairs, dtype, plan.tiles
        )  # (P, H)
        return combine_experts(down, top_k_weights, route, self.num_experts, dtype)

    def _members(self, *projs: str) -> list[dict]:
        """The stacked weights of `projs` as the experts GEMV takes them."""
        return [
            {
                "codes": getattr(self, f"{p}_codes"),
                "scales": getattr(self, f"{p}_scales"),
                "global_scale": getattr(self, f"{p}_global_scale").view(torch.float32),
                "bias": getattr(self, f"{p}_bias"),
                "block": self.config.weight_block,
            }
            for p in projs
        ]

    def _bias(self, proj: str, idx: int) -> torch.Tensor | None:
        bias = getattr(self, f"{proj}_bias")
        return None if bias is None else bias[idx]

    def extra_repr(self) -> str:
        parts = [
            f"num_experts={self.num_experts}",
            f"hidden={self.hidden}",
            f"intermediate={self.intermediate}",
            f"format={self.config.format.value}",
            f"mask={self.config.mask}",
            f"granularity={self.config.granularity.value}",
        ]
        if self.routing != "auto":
            parts.append(f"routing={self.routing}")
        if self.shared_input is not None:
            parts.append(f"shared_input={self.shared_input.name}")
        return ", ".join(parts)
