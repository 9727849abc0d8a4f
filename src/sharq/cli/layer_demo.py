"""`sharq demo`: every preset on one synthetic outlier-heavy layer — SQNR and bits per value.

The data imitates what enters an LLM linear layer (no download, seeded):
  activations (M, K): Laplace-tailed values, a log-normal scale per token, a few systematic
                      outlier channels (x20–x60) and one "massive activation" token (x300 on two
                      channels, the BOS-sink pattern);
  weight (N, K):      Gaussian / sqrt(K) with a log-normal scale per output channel and rare
                      x8 outlier entries.
This is a stand-in until the real-model evaluation replaces it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from ..config import PRESETS, SharqConfig
from ..metrics import sqnr_db
from ..nn.linear import SharqLinear
from ..sparse.compressed import prepared_nbytes
from ..sparse.decompose import dequantize_prepared, prepare_activation

__all__ = ["synthetic_layer", "DemoRow", "run_demo", "format_table"]


def _laplace(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=g) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs().clamp(max=0.4999999))


def synthetic_layer(tokens: int = 512, k: int = 2048, n: int = 2048, *, seed: int = 0):
    """(x (tokens, K), weight (N, K), bias (N,)) as FP32, deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    x = _laplace((tokens, k), g) * torch.exp(0.5 * torch.randn(tokens, 1, generator=g))
    outlier_channels = torch.randperm(k, generator=g)[: max(1, k // 200)]
    x[:, outlier_channels] *= 20 + 40 * torch.rand(len(outlier_channels), generator=g)
    x[0, outlier_channels[:2]] *= 300.0 / 40.0  # massive activation on the first token
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    w *= torch.exp(0.3 * torch.randn(n, 1, generator=g))
    w[torch.rand(n, k, generator=g) < 1e-3] *= 8.0
    bias = 0.01 * torch.randn(n, generator=g)
    return x, w, bias


@dataclass
class DemoRow:
    preset: str
    granularity: str
    act_sqnr_db: float
    weight_sqnr_db: float
    output_sqnr_db: float
    act_only_output_sqnr_db: float
    act_bits: float
    weight_bits: float


def _row(name: str, cfg: SharqConfig, x: torch.Tensor, linear: torch.nn.Linear, y_ref: torch.Tensor) -> DemoRow:
    if not cfg.quantizes:
        inf = float("inf")
        return DemoRow(name, "-", inf, inf, inf, inf, 16.0, 16.0)
    layer = SharqLinear.from_float(linear, cfg, name=name)
    prepared = prepare_activation(x, cfg)
    parts = dequantize_prepared(prepared)
    x_hat = parts.backbone + parts.residual
    act_bytes = prepared_nbytes(prepared, cfg)  # N:M-masked terms in compressed storage
    return DemoRow(
        preset=name,
        granularity=cfg.granularity.value if cfg.has_global_scale else "-",
        act_sqnr_db=sqnr_db(x, x_hat),
        weight_sqnr_db=sqnr_db(linear.weight, layer.dequantized_weight()),
        output_sqnr_db=sqnr_db(y_ref, layer(x)),
        act_only_output_sqnr_db=sqnr_db(y_ref, linear(x_hat)),
        act_bits=8.0 * act_bytes / x.numel(),
        weight_bits=layer.weight_bits_per_value,
    )


def run_demo(tokens: int = 512, k: int = 2048, n: int = 2048, *, seed: int = 0) -> list[DemoRow]:
    """Every preset (tensor granularity) plus SharQ-NVFP4 at token granularity."""
    x, w, bias = synthetic_layer(tokens, k, n, seed=seed)
    linear = torch.nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
        y_ref = linear(x)
    configs = list(PRESETS.items()) + [("sharq-nvfp4", PRESETS["sharq-nvfp4"].replace(granularity="token"))]
    with torch.no_grad():
        return [_row(name, cfg, x, linear, y_ref) for name, cfg in configs]


def format_table(rows: list[DemoRow]) -> str:
    head = (
        "| preset | granularity | act SQNR dB | weight SQNR dB | output SQNR dB | output SQNR dB, fp32 W "
        "| act bits/value | weight bits/value |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r.preset} | {r.granularity} | {r.act_sqnr_db:.2f} | {r.weight_sqnr_db:.2f} | "
            f"{r.output_sqnr_db:.2f} | {r.act_only_output_sqnr_db:.2f} | {r.act_bits:.3f} | {r.weight_bits:.3f} |"
        )
    return "\n".join(lines)


def rows_to_json(rows: list[DemoRow], **meta) -> str:
    def clean(v):
        return None if isinstance(v, float) and math.isinf(v) else v

    return json.dumps({**meta, "rows": [{k: clean(v) for k, v in vars(r).items()} for r in rows]}, indent=2)
