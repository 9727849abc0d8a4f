"""Bar charts of an e2e JSON document: one panel per scenario, one bar per provider."""

from __future__ import annotations

from pathlib import Path

COLORS = {
    "bf16": "#7f7f7f",
    "fp8": "#1f77b4",
    "gemlite-int4": "#2ca02c",
    "gemlite-fp8": "#17becf",
    "sharq": "#d62728",
    "sharq-lmhead": "#ff7f0e",
}
_LABELS = {
    "prefill_1024": "prefill 1×1024 (ms, lower is better)",
    "prefill_4096": "prefill 1×4096 (ms, lower is better)",
    "decode_b1": "decode batch 1 (ms/token, lower is better)",
    "decode_b8": "decode batch 8 (ms/token, lower is better)",
    "serving_mix": "serving 8×1024→128 (tokens/s, higher is better)",
    "weight_bytes": "weights, all (GB)",
    "weight_bytes_linear": "weights, quantized linears (GB)",
    "peak_bytes": "peak GPU memory (GB)",
}


def plot(doc: dict, path: Path) -> None:
    """Write `path` (PNG): every scenario with a value, bars labelled with the value and the ratio to bf16."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if isinstance(r.get("value"), (int, float))]
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    if not scenarios:
        return
    cols = min(4, len(scenarios))
    nrows = -(-len(scenarios) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(scenarios) :]:
        ax.axis("off")
    for ax, scenario in zip(axes.flat, scenarios):
        got = {r["provider"]: r for r in rows if r["scenario"] == scenario}
        providers = [p for p in COLORS if p in got]
        scale = 1e9 if got[providers[0]].get("unit") == "bytes" else 1.0
        values = [got[p]["value"] / scale for p in providers]
        errors = [got[p].get("std", 0.0) / scale for p in providers]
        bars = ax.bar(providers, values, yerr=errors, color=[COLORS[p] for p in providers], capsize=3)
        base = got.get("bf16", {}).get("value")
        for bar, p, v in zip(bars, providers, values):
            text = f"{v:.3g}"
            if base and p != "bf16":
                ratio = (got[p]["value"] / base) if scenario == "serving_mix" else base / got[p]["value"]
                text += f"\n{ratio:.2f}×"
            ax.annotate(
                text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7
            )
        ax.set_title(_LABELS.get(scenario, scenario), fontsize=8)
        ax.margins(y=0.25)
        ax.tick_params(labelsize=8)
    fig.suptitle(
        f"{doc['model']} (random weights), {doc['gpu']}, torch {doc['torch']}; × = advantage over bf16", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
