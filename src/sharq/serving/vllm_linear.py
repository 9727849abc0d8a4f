"""`SharqLinearMethod`: vLLM's linear layers holding sharq's packed FP4 weights (imports vLLM).

Parameters created on each vLLM linear (N_local = Σ output_partition_sizes, K_local = the layer's
input size on this rank, padded to the weight block when not split):

  weight_codes         uint8   (N_local, K_local / 2)           packed E2M1, low nibble first
  weight_scales        uint8   (N_local, K_local / weight_block) E4M3 block-scale bits
  weight_global_scale  float32 (len(output_partition_sizes),)   s_w of each logical matrix

A fused layer (q/k/v, gate/up) stacks its logical matrices' rows in the order of
`output_partition_sizes`; each keeps its own s_w. The checkpoint's tensors are whole matrices; the
weight loaders below cut this rank's rows (column-parallel: q/k/v, gate/up) or K columns
(row-parallel: o, down), the latter only on whole blocks and mask groups
(`tensor_parallel.row_parallel_k_slice`).

`apply` prepares the activation once per layer (`sharq.ops.prepare`, Triton on CUDA, the reference
on the CPU) and multiplies each logical matrix with `sharq.ops.linear_from_prepared` — the
functions `SharqLinear` calls, so each logical matrix's output is `SharqLinear`'s bit for bit. A
row-parallel rank under tensor parallelism quantizes its K slice with the whole row's scale (MAX
all-reduce of the row amax, SPEC §3), through the same preparation (`tensor_parallel.row_parallel_prepare`).
"""

from __future__ import annotations

from functools import partial

import torch
from vllm.distributed import get_tp_group
from vllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    LinearBase,
    LinearMethodBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.utils import set_weight_attrs

from ..config import SharqConfig
from ..formats.blocks import padded_length
from ..formats.quantized import QuantizedTensor
from ..ops import grouped_linear_from_prepared, linear_from_prepared, prepare
from .tensor_parallel import row_parallel_k_slice, row_parallel_prepare

__all__ = ["SharqLinearMethod"]

_QKV_INDEX = {"q": 0, "k": 1, "v": 2}


class SharqLinearMethod(LinearMethodBase):
    """One vLLM linear layer (maybe fused) whose logical matrices `names` are sharq NVFP4 weights.

    config:  the serving SharqConfig (token granularity).
    names:   checkpoint module names, in the layer's output order (`…q_proj`, `…k_proj`, `…v_proj`).
    records: their `quantization_config.modules` entries ({"shape": [N, K], "bias": ...}).
    """

    def __init__(self, config: SharqConfig, names: list[str], records: list[dict]) -> None:
        super().__init__()
        self.config = config
        self.names = names
        self.records = records

    # --- parameters ------------------------------------------------------------------------------
    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs,
    ) -> None:
        label = " + ".join(self.names)
        if len(output_partition_sizes) != len(self.names):
            raise ValueError(
                f"sharq: vLLM layer {layer.prefix} has {len(output_partition_sizes)} logical "
                f"matrices, the checkpoint records {len(self.names)} ({label})"
            )
        recorded_k = {r["shape"][1] for r in self.records}
        recorded_n = sum(r["shape"][0] for r in self.records)
        if recorded_k != {input_size} or recorded_n != output_size:
            raise ValueError(
                f"sharq: vLLM layer {layer.prefix} is {output_size}x{input_size}, the checkpoint "
                f"records {[r['shape'] for r in self.records]} for {label}"
            )
        block = self.config.weight_block
        row_parallel = isinstance(layer, RowParallelLinear) and getattr(layer, "tp_size", 1) > 1
        if row_parallel:
            tp = layer.tp_size
            k_local = row_parallel_k_slice(input_size, tp, self.config, layer.prefix)
        else:
            if input_size_per_partition != input_size:
                raise ValueError(
                    f"sharq: vLLM layer {layer.prefix} splits K ({input_size} -> "
                    f"{input_size_per_partition}) but is not a row-parallel linear"
                )
            k_local = padded_length(input_size, block)
        n_local = sum(output_partition_sizes)
        u8 = dict(dtype=torch.uint8)
        params = {
            "codes": torch.zeros(n_local, k_local // 2, **u8),
            "scales": torch.zeros(n_local, k_local // block, **u8),
            "global_scale": torch.ones(len(output_partition_sizes), dtype=torch.float32),
        }
        for field, data in params.items():
            param = torch.nn.Parameter(data, requires_grad=False)
            layer.register_parameter(f"weight_{field}", param)
            set_weight_attrs(param, {"weight_loader": partial(_load, layer, field, row_parallel)})
        layer.sharq_partition_sizes = list(output_partition_sizes)
        layer.sharq_in_features = input_size_per_partition
        layer.sharq_row_parallel = row_parallel

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Build each logical matrix's `QuantizedTensor` (views of the parameters, no copy)."""
        k = layer.sharq_in_features
        weights, start = [], 0
        for i, n in enumerate(layer.sharq_partition_sizes):
            weights.append(
                QuantizedTensor(
                    format=self.config.format,
                    codes=layer.weight_codes.data[start : start + n],
                    scales=layer.weight_scales.data[start : start + n],
                    shape=(n, k),
                    block=self.config.weight_block,
                    global_scale=layer.weight_global_scale.data[i],
                )
            )
            start += n
        layer.sharq_weights = weights

    # --- forward ---------------------------------------------------------------------------------
    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., K_local) in the model dtype -> (..., N_local), the logical outputs side by side."""
        k = layer.sharq_in_features
        weights: list[QuantizedTensor] = layer.sharq_weights
        n_total = sum(layer.sharq_partition_sizes)
        rows = x.reshape(-1, k)  # (M, K_local)
        if rows.shape[0] == 0:
            return x.new_zeros(*x.shape[:-1], n_total)
        if layer.sharq_row_parallel:  # the whole row's s_x (max all-reduce of the row amax)
            prepared = row_parallel_prepare(rows, self.config, _all_reduce_max)
        else:
            prepared = prepare(rows, self.config)
        biases = _split(bias, layer.sharq_partition_sizes)
        out = None
        if len(weights) > 1:
            out = grouped_linear_from_prepared(prepared, weights, biases, x.dtype)  # one launch, or None
        if out is None:
            outs = [linear_from_prepared(prepared, w, b, x.dtype, one_gemm=True) for w, b in zip(weights, biases)]
            out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (M, N_local)
        return out.reshape(*x.shape[:-1], n_total)


def _split(bias: torch.Tensor | None, sizes: list[int]) -> list[torch.Tensor | None]:
    if bias is None:
        return [None] * len(sizes)
    return list(torch.split(bias, sizes))


def _all_reduce_max(t: torch.Tensor) -> None:
    """In-place elementwise max of `t` over the tensor-parallel group."""
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=get_tp_group().device_group)


# --- weight loaders ----------------------------------------------------------------------------------
def _shard(layer: LinearBase, shard_id) -> tuple[int, int, int]:
    """(index of the logical matrix in the layer, which block of its rows this rank holds, into how
    many blocks the checkpoint's matrix is cut)."""
    tp = getattr(layer, "tp_size", 1)
    if isinstance(layer, QKVParallelLinear):
        if shard_id not in _QKV_INDEX:
            raise ValueError(f"sharq: {layer.prefix} takes shard ids q, k, v; got {shard_id!r}")
        index = _QKV_INDEX[shard_id]
        if index == 0:
            return index, layer.tp_rank, tp
        replicas = layer.num_kv_head_replicas  # k/v heads shared by this many ranks
        return index, layer.tp_rank // replicas, tp // replicas
    if isinstance(layer, MergedColumnParallelLinear):
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(layer.sharq_partition_sizes):
            raise ValueError(f"sharq: {layer.prefix} takes integer shard ids; got {shard_id!r}")
        return shard_id, layer.tp_rank, tp
    if shard_id is not None:
        raise ValueError(f"sharq: {layer.prefix} is not a fused layer; got shard id {shard_id!r}")
    if isinstance(layer, ColumnParallelLinear):
        return 0, layer.tp_rank, tp
    return 0, 0, 1  # row-parallel (whole rows, K cut in _load) or replicated


def _load(
    layer: LinearBase, field: str, row_parallel: bool, param: torch.nn.Parameter, loaded: torch.Tensor, shard_id=None
) -> None:
    """Copy this rank's part of one checkpoint tensor (a whole logical matrix's `field`) into `param`."""
    index, block, blocks = _shard(layer, shard_id)
    what = f"sharq: checkpoint tensor {field} of {layer.prefix} (shard {shard_id!r})"
    if loaded.dtype != param.dtype:
        raise ValueError(f"{what} is {loaded.dtype}, expected {param.dtype}")
    if field == "global_scale":
        if loaded.numel() != 1:
            raise ValueError(f"{what} has shape {tuple(loaded.shape)}, expected one FP32 s_w")
        param.data[index] = loaded.reshape(())
        return
    sizes = layer.sharq_partition_sizes
    n = sizes[index]
    offset = sum(sizes[:index])
    if loaded.dim() != 2 or loaded.shape[0] != blocks * n:
        raise ValueError(f"{what} has shape {tuple(loaded.shape)}; expected {blocks * n} rows ({blocks} x {n})")
    part = loaded[block * n : (block + 1) * n]
    width = param.shape[1]
    if row_parallel:  # this rank's K columns; whole blocks (checked when the layer was built)
        if part.shape[1] != width * layer.tp_size:
            raise ValueError(f"{what} has shape {tuple(loaded.shape)}; expected {width * layer.tp_size} columns")
        part = part[:, layer.tp_rank * width : (layer.tp_rank + 1) * width]
    if part.shape[1] != width:
        raise ValueError(f"{what} has shape {tuple(loaded.shape)}; expected {width} columns on this rank")
    param.data[offset : offset + n].copy_(part)
