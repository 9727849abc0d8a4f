"""`sharq inspect`: where a preset's error comes from, layer by layer.

The float model runs on a slice of real text; a hook on every linear that `quantize_` would convert
takes that layer's real input x (N tokens × K) and measures, for the preset:

  act_sqnr_db     x against its quantized form s_x·(deq(B) + deq(R))
  weight_sqnr_db  W against s_w·deq(Wq)
  out_sqnr_db     the float layer's output against the SharqLinear output, on the same x
  kept_energy     Σ b² / Σ xs²: the share of x's energy the sparse backbone keeps before it is
                  quantized (1 for masks=None)
  crest           max|x| / rms(x) — how outlier-heavy the activation is
  kurtosis        E[(x−μ)⁴] / σ⁴ of all of x's values (3 for a Gaussian)
  top1pct_energy  share of Σ x² in the 1% of channels (columns) with most energy

Errors are local: every layer sees the float model's input, so the numbers don't compound.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import nn

from ..config import SharqConfig
from ..metrics import sqnr_db
from ..models.convert import conversion_targets
from ..nn.linear import SharqLinear
from ..sparse.decompose import decompose
from ..sparse.masks import apply_mask

__all__ = ["LayerReport", "inspect_layers", "outlier_stats", "format_inspect_table", "plot_inspect", "inspect_model"]


@dataclasses.dataclass
class LayerReport:
    name: str
    k: int
    n: int
    tokens: int
    act_sqnr_db: float
    weight_sqnr_db: float
    out_sqnr_db: float
    kept_energy: float
    crest: float
    kurtosis: float
    top1pct_energy: float


def outlier_stats(x: torch.Tensor) -> tuple[float, float, float]:
    """(crest factor, kurtosis, top-1%-channel energy share) of x (M, K), FP64."""
    v = x.double()
    rms = float(v.pow(2).mean().sqrt())
    crest = float(v.abs().max()) / rms if rms > 0 else math.nan
    centered = v - v.mean()
    var = float(centered.pow(2).mean())
    kurt = float(centered.pow(4).mean()) / var**2 if var > 0 else math.nan
    channel_energy = v.pow(2).sum(dim=0)
    top = max(1, int(round(0.01 * v.shape[1])))
    total = float(channel_energy.sum())
    share = float(channel_energy.topk(top).values.sum()) / total if total > 0 else math.nan
    return crest, kurt, share


def _kept_energy(x: torch.Tensor, config: SharqConfig) -> float:
    if config.mask is None:
        return 1.0
    xs = x.float()  # the share is scale-free: s_x cancels
    b = apply_mask(xs, config.mask_spec)
    total = float(xs.double().pow(2).sum())
    return float(b.double().pow(2).sum()) / total if total > 0 else math.nan


@torch.no_grad()
def inspect_layers(model: nn.Module, input_ids: torch.Tensor, config: SharqConfig) -> list[LayerReport]:
    """Per-layer error report of `config` on the float `model` fed `input_ids` (B, L)."""
    if not config.quantizes:
        raise ValueError("inspect needs a quantizing preset (not 'bf16')")
    targets = [n for n, kind in conversion_targets(model).items() if kind == "linear"]
    if not targets:
        raise ValueError("the model has no linear that quantize_ would convert")
    reports: list[LayerReport] = []
    handles = []

    def hook(name):
        def run(module: nn.Linear, args, output):
            x = args[0].reshape(-1, module.in_features)
            d = decompose(x, config)
            layer = SharqLinear.from_float(module, config, name=name)
            w = module.weight.float()
            crest, kurt, top = outlier_stats(x)
            reports.append(
                LayerReport(
                    name=name,
                    k=module.in_features,
                    n=module.out_features,
                    tokens=x.shape[0],
                    act_sqnr_db=sqnr_db(x.float(), d.backbone + d.residual),
                    weight_sqnr_db=sqnr_db(w, layer.dequantized_weight()),
                    out_sqnr_db=sqnr_db(output.reshape(-1, module.out_features).float(), layer(x).float()),
                    kept_energy=_kept_energy(x, config),
                    crest=crest,
                    kurtosis=kurt,
                    top1pct_energy=top,
                )
            )

        return run

    modules = dict(model.named_modules())
    try:
        for name in targets:
            handles.append(modules[name].register_forward_hook(hook(name)))
        device = next(model.parameters()).device
        model(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    order = {n: i for i, n in enumerate(targets)}
    return sorted(reports, key=lambda r: order[r.name])


def format_inspect_table(reports: list[LayerReport]) -> str:
    head = (
        f"{'layer':44s} {'K':>5s} {'N':>5s} {'act dB':>7s} {'W dB':>6s} {'out dB':>7s} {'kept':>6s} "
        f"{'crest':>7s} {'kurt':>8s} {'top1%':>6s}"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        lines.append(
            f"{r.name:44s} {r.k:5d} {r.n:5d} {r.act_sqnr_db:7.2f} {r.weight_sqnr_db:6.2f} {r.out_sqnr_db:7.2f} "
            f"{r.kept_energy:6.3f} {r.crest:7.1f} {r.kurtosis:8.1f} {r.top1pct_energy:6.3f}"
        )
    worst = sorted(reports, key=lambda r: r.out_sqnr_db)[:3]
    lines.append("")
    lines.append(
        "lowest output SQNR: " + ", ".join(f"{r.name} ({r.out_sqnr_db:.1f} dB, crest {r.crest:.0f})" for r in worst)
    )
    return "\n".join(lines)


def plot_inspect(reports: list[LayerReport], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r.name.rsplit(".", 1)[-1] for r in reports})
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for kind in kinds:
        sel = [(i, r) for i, r in enumerate(reports) if r.name.endswith("." + kind) or r.name == kind]
        idx = [i for i, _ in sel]
        axes[0].plot(idx, [r.act_sqnr_db for _, r in sel], "o-", ms=3, label=kind)
        axes[1].plot(idx, [r.out_sqnr_db for _, r in sel], "o-", ms=3, label=kind)
        axes[2].semilogy(idx, [r.crest for _, r in sel], "o-", ms=3, label=kind)
    for ax, t in zip(axes, ("activation SQNR (dB)", "layer output SQNR (dB)", "activation crest factor max|x|/rms")):
        ax.set_title(t)
        ax.set_xlabel("linear (model order)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def inspect_model(
    model_source: str = "smollm2",
    preset: str = "sharq-nvfp4",
    *,
    granularity: str = "tensor",
    tokens: int = 2048,
    seq_len: int = 512,
    device: str | None = None,
    dtype: str | None = None,
    out_dir: str | Path = "results",
    name: str | None = None,
) -> tuple[list[LayerReport], dict]:
    """Load the model, run `inspect_layers` on the first `tokens` Wikipedia tokens, write JSON + PNG."""
    from .data import wiki_texts
    from .packaged import load_model, model_caveat
    from .perplexity import corpus_tokens
    from .scoring import prefix_token_id

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    config = SharqConfig.from_preset(preset, granularity=granularity)
    model, tokenizer = load_model(model_source, dtype=getattr(torch, dtype), device=device)
    stream = corpus_tokens(tokenizer, wiki_texts())
    step = seq_len - 1
    rows = max(1, min(tokens, len(stream)) // step)
    ids = torch.tensor(stream[: rows * step]).reshape(rows, step)
    ids = torch.cat([torch.full((rows, 1), prefix_token_id(tokenizer)), ids], dim=1)
    reports = inspect_layers(model, ids, config)
    doc = {
        "model": model_source,
        "preset": preset,
        "granularity": granularity,
        "tokens": int(ids.numel()),
        "device": device,
        "dtype": dtype,
        "torch": torch.__version__,
        "caveat": model_caveat(model_source),
        "layers": [dataclasses.asdict(r) for r in reports],
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or f"inspect-{Path(str(model_source)).stem}-{preset}-{granularity}"
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    plot_inspect(
        reports, out_dir / f"{stem}.png", f"{model_source}: {preset} ({granularity}), {ids.numel()} wiki tokens"
    )
    doc["paths"] = [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.png")]
    return reports, doc
