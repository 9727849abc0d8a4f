"""Tables and plots of an evaluation document (the JSON `runner.evaluate` writes).

table_rows(doc)        one row per run: every metric, the zero-shot average, and the share of
                       the plain-FP4 → bf16 gap recovered on that average
gap_recovery(doc)      (m_sharq − m_fp4) / (m_bf16 − m_fp4) for every quantized run against the
                       plain preset of its format and granularity, per metric
markdown(doc)          both as Markdown, with the machine and token counts
plot(doc, path)        PNG: zero-shot average, ppl_wiki and recovered share per run
merge_docs(base, ...)  one document from evaluations run in parallel (same model and settings)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config import PRESETS, Format

__all__ = [
    "table_rows",
    "gap_recovery",
    "gap_within_noise",
    "markdown",
    "plot",
    "write_report",
    "plain_baseline",
    "merge_docs",
]

SHORT = {
    "ppl_wiki": "wiki ppl",
    "ppl_lambada": "lambada ppl",
    "arc_easy": "ARC-e",
    "arc_challenge": "ARC-c",
    "hellaswag": "HellaSwag",
    "piqa": "PIQA",
    "winogrande": "WinoGr.",
    "boolq": "BoolQ",
    "lambada": "LAMBADA",
}
PPL = ("ppl_wiki", "ppl_lambada")


def plain_baseline(preset: str) -> str | None:
    """The plain W4A4 preset a run is compared with: the one of its format (None for bf16)."""
    fmt = PRESETS[preset].format
    return None if fmt is Format.NONE else fmt.value


def _run_order(run: tuple[str, str]) -> tuple:
    """Table order: by format (bf16, NVFP4, MXFP4, HiF4), then granularity, then PRESETS order."""
    preset, granularity = run
    formats = [Format.NONE, Format.NVFP4, Format.MXFP4, Format.HIF4]
    fmt = PRESETS[preset].format
    return (
        formats.index(fmt) if fmt in formats else len(formats),
        granularity != "tensor",
        list(PRESETS).index(preset),
    )


def _values(doc: dict) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for row in doc["rows"]:
        out.setdefault((row["preset"], row["granularity"]), {})[row["metric"]] = row["value"]
    return dict(sorted(out.items(), key=lambda item: _run_order(item[0])))


def _zero_shot(metrics: dict[str, float]) -> list[str]:
    return [m for m in metrics if m not in PPL]


def _with_average(values: dict[tuple[str, str], dict[str, float]]) -> dict[tuple[str, str], dict[str, float]]:
    tasks = None
    for metrics in values.values():
        zs = set(_zero_shot(metrics))
        tasks = zs if tasks is None else tasks & zs
    for metrics in values.values():
        if tasks:
            metrics["avg"] = sum(metrics[t] for t in tasks) / len(tasks)
    return values


def _avg_stderr(doc: dict) -> dict[tuple[str, str], float]:
    """Standard error of each run's zero-shot average (independent tasks: root-sum-square / T)."""
    errs: dict[tuple[str, str], list[float]] = {}
    for row in doc["rows"]:
        if row["metric"] not in PPL and row.get("stderr") is not None:
            errs.setdefault((row["preset"], row["granularity"]), []).append(float(row["stderr"]))
    return {k: math.sqrt(sum(e * e for e in v)) / len(v) for k, v in errs.items() if v}


def gap_within_noise(doc: dict, run: tuple[str, str]) -> bool:
    """True when the plain-FP4 → bf16 gap of the zero-shot average is under 2 standard errors of the
    difference: then a recovered share means nothing and is not printed."""
    values = _with_average(_values(doc))
    base = plain_baseline(run[0])
    plain_key = (base, run[1]) if (base, run[1]) in values else (base, "tensor")
    se = _avg_stderr(doc)
    if plain_key not in values or ("bf16", "tensor") not in values:
        return True
    if plain_key not in se or ("bf16", "tensor") not in se:
        return False
    gap = abs(values[("bf16", "tensor")].get("avg", 0.0) - values[plain_key].get("avg", 0.0))
    return gap < 2.0 * math.sqrt(se[plain_key] ** 2 + se[("bf16", "tensor")] ** 2)


def gap_recovery(doc: dict) -> dict[tuple[str, str], dict[str, float]]:
    """{(preset, granularity): {metric: recovered share}} for runs that have a plain baseline."""
    values = _with_average(_values(doc))
    out = {}
    for (preset, gran), metrics in values.items():
        base = plain_baseline(preset)
        if base is None or base == preset:
            continue
        plain = values.get((base, gran)) or values.get((base, "tensor"))
        ref = values.get(("bf16", "tensor"))  # bf16 has no granularity: one reference row
        if plain is None or ref is None:
            continue
        shares = {}
        for metric, value in metrics.items():
            if metric in plain and metric in ref and plain[metric] != ref[metric]:
                shares[metric] = (value - plain[metric]) / (ref[metric] - plain[metric])
        out[(preset, gran)] = shares
    return out


def table_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    values = _with_average(_values(doc))
    gaps = gap_recovery(doc)
    metrics = [m for m in ("ppl_wiki", "ppl_lambada", *SHORT) if any(m in v for v in values.values())]
    metrics = list(dict.fromkeys(metrics))
    header = ["preset", "gran."] + [SHORT[m] for m in metrics] + ["avg", "recovered (avg)"]
    body = []
    for (preset, gran), v in values.items():
        cells = [preset, gran if PRESETS[preset].has_global_scale else "-"]
        for m in metrics:
            x = v.get(m)
            cells.append("" if x is None else (f"{x:.2f}" if m in PPL else f"{100 * x:.1f}"))
        cells.append(f"{100 * v['avg']:.1f}" if "avg" in v else "")
        share = gaps.get((preset, gran), {}).get("avg")
        if share is not None and gap_within_noise(doc, (preset, gran)):
            cells.append("gap within noise")
        else:
            cells.append("" if share is None else f"{100 * share:.0f}%")
        body.append(cells)
    return header, body


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _n_summary(doc: dict) -> str:
    seen = {}
    for row in doc["rows"]:
        seen.setdefault(row["metric"], row["n"])
    return ", ".join(f"{SHORT.get(m, m)} n={n}" for m, n in seen.items())


def merge_docs(base: dict, *others: dict) -> dict:
    """One document holding the runs of `base` and `others` (evaluations of the same model with the same
    metric settings, e.g. run as parallel processes): a run found in a later document replaces the
    same (preset, granularity) before it. Raises ValueError when model or measurement settings differ."""
    keys = ("model", "limit", "ppl_tokens", "seq_len", "tasks", "dtype", "lm_head")
    default = {"lm_head": "model-dtype"}  # documents written before the setting existed
    merged = {
        **base,
        "rows": list(base["rows"]),
        "extra_rows": list(base.get("extra_rows", [])),
        "run_seconds": dict(base.get("run_seconds", {})),
    }
    for doc in others:
        for key in keys:
            a = base.get("settings", {}).get(key, default.get(key))
            b = doc.get("settings", {}).get(key, default.get(key))
            if a != b:
                raise ValueError(f"cannot merge evaluations with different {key}: {a!r} vs {b!r}")
        runs = {(r["preset"], r["granularity"]) for r in doc["rows"]}
        for field in ("rows", "extra_rows"):
            kept = [r for r in merged[field] if (r["preset"], r["granularity"]) not in runs]
            merged[field] = kept + list(doc.get(field, []))
        merged["run_seconds"].update(doc.get("run_seconds", {}))
    return merged


def _backend_summary(doc: dict) -> str:
    runs: dict[str, list[str]] = {}
    for row in doc["rows"]:
        label = f"{row['preset']}/{row['granularity']}"
        names = runs.setdefault(row.get("backend", "unrecorded"), [])
        if label not in names:
            names.append(label)
    runs.pop("-", None)
    return "; ".join(f"{name}: {', '.join(labels)}" for name, labels in runs.items())


def markdown(doc: dict) -> str:
    header, body = table_rows(doc)
    machine = doc.get("machine", {})
    where = machine.get("gpu") or f"CPU ({machine.get('threads', '?')} threads)"
    parts = [
        f"# Accuracy: {doc['model']}",
        "",
        f"Machine: {where}; torch {machine.get('torch')}, transformers {machine.get('transformers')}, "
        f"lm_eval {machine.get('lm_eval', '-')}, sharq {machine.get('sharq')}; model dtype {machine.get('dtype')}.",
        f"Counts: {_n_summary(doc)}.",
        f"Backend (the Triton preparation is bit-exact with the reference): {_backend_summary(doc)}.",
        "Zero-shot accuracies in %; ppl lower is better. `recovered` = (m − m_fp4) / (m_bf16 − m_fp4) on the "
        "zero-shot average, against the plain preset of the same format and granularity; not given where that "
        "gap is under two standard errors (too few documents to tell).",
    ]
    if doc.get("caveat"):
        parts.append(f"Caveat: {doc['caveat']}")
    parts += ["", _md_table(header, body), ""]
    gaps = gap_recovery(doc)
    rows = []
    for run in sorted(gaps, key=_run_order):
        shares = gaps[run]
        cells = [run[0], run[1] if PRESETS[run[0]].has_global_scale else "-", plain_baseline(run[0])]
        noisy = gap_within_noise(doc, run)
        cells += [
            ("" if m not in shares else ("gap within noise" if m == "avg" and noisy else f"{100 * shares[m]:.0f}%"))
            for m in ("avg", *PPL)
        ]
        rows.append(cells)
    if rows:
        parts += [
            "Share of the plain-FP4 → bf16 gap that SharQ recovers:",
            "",
            _md_table(["run", "gran.", "against", "zero-shot avg", "wiki ppl", "lambada ppl"], rows),
            "",
        ]
    return "\n".join(parts)


def plot(doc: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = _with_average(_values(doc))
    gaps = gap_recovery(doc)
    labels = [f"{p}" + ("/tok" if g == "token" else "") for p, g in values]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    panels = [
        ("zero-shot average (%)", [100 * v.get("avg", math.nan) for v in values.values()]),
        ("wiki perplexity", [v.get("ppl_wiki", math.nan) for v in values.values()]),
        ("recovered share of FP4→bf16 gap, avg (%)", [100 * gaps.get(k, {}).get("avg", math.nan) for k in values]),
    ]
    for ax, (title, data) in zip(axes, panels):
        colors = ["#4c72b0" if "sharq" in lab else ("#55a868" if lab == "bf16" else "#c44e52") for lab in labels]
        ax.bar(range(len(data)), data, color=colors)
        ax.set_xticks(range(len(data)))
        ax.set_xticklabels(labels, rotation=70, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    machine = doc.get("machine", {})
    fig.suptitle(f"{doc['model']} — {machine.get('gpu') or 'CPU'}, {machine.get('dtype')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(doc: dict, md_path, png_path) -> None:
    with open(md_path, "w") as fh:
        fh.write(markdown(doc))
    plot(doc, png_path)
