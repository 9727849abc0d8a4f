"""The terminal report and the plot of a `sharq demo` document (the JSON `demo.run_demo` writes).

format_demo(doc, elapsed)   perplexity table with intervals and recovered shares, mean per-layer SQNR,
                            the two completions side by side, where the files went, how long the
                            full evaluation takes
plot_demo(doc, path)        PNG: per-layer activation and weight SQNR, recovered shares with intervals
"""

from __future__ import annotations

import shutil
import textwrap

__all__ = ["format_demo", "plot_demo", "side_by_side", "FULL_EVAL"]

# the full `sharq eval` (default presets, tensor + token granularity): the sum of the run_seconds of
# results/accuracy-smollm2.json (5,109 s)
FULL_EVAL = (
    "`sharq eval` is the full evaluation: every Wikipedia (1.07 M) and LAMBADA (0.41 M) token and 7 zero-shot "
    "tasks, 19 preset/granularity runs; they took 85 min of H100 time in all (2026-12, bf16)."
)
FULL_PPL_TOKENS = 1_068_344 + 412_707  # the two perplexity corpora of `sharq eval`


def _caveat_tag(doc: dict) -> str:
    return " [weights already 4-bit (Q4_1 GGUF) before sharq]" if doc.get("caveat") else ""


def side_by_side(left: tuple[str, str], right: tuple[str, str], width: int) -> list[str]:
    """Two (title, text) columns of `width` characters in all, wrapped, separated by ' | '."""
    col = max(20, (width - 3) // 2)
    a = [left[0], "-" * len(left[0])] + textwrap.wrap(" ".join(left[1].split()) or "(nothing)", col)
    b = [right[0], "-" * len(right[0])] + textwrap.wrap(" ".join(right[1].split()) or "(nothing)", col)
    rows = max(len(a), len(b))
    a += [""] * (rows - len(a))
    b += [""] * (rows - len(b))
    return [f"{x:<{col}} | {y}".rstrip() for x, y in zip(a, b)]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _perplexity_lines(doc: dict, width: int) -> list[str]:
    ppl = doc["perplexity"]
    shares = {s["preset"]: s for s in ppl["recovered"]}
    against = {s["against"] for s in ppl["recovered"]}
    level = f"{100 * ppl['rows'][0]['level']:.0f}%"
    about = (
        f"First {ppl['tokens']:,} tokens in {ppl['windows']} windows of {ppl['seq_len']} positions; intervals: "
        f"{ppl['interval']}. Recovered share = (ppl_plain-ppl)/(ppl_plain-ppl_bf16), plain = the plain FP4 "
        "preset of the same format."
    )
    lines = [
        f"Wikipedia perplexity{_caveat_tag(doc)}",
        *textwrap.wrap(about, width, break_on_hyphens=False),
        "",
        f"{'preset':24s} {'wiki ppl':>9s}  {level + ' interval':18s}  recovered share [{level}]",
    ]
    for row in ppl["rows"]:
        preset = row["preset"]
        share = shares.get(preset)
        if preset == "bf16":
            note = "reference"
        elif share is not None:
            note = f"{100 * share['value']:.0f}% [{100 * share['low']:.0f}%, {100 * share['high']:.0f}%]"
        elif preset in against:
            note = "0% by definition (plain FP4)"
        else:
            note = "-"
        interval = f"[{row['low']:.2f}, {row['high']:.2f}]"
        lines.append(f"{preset:24s} {row['value']:9.2f}  {interval:18s}  {note}")
    return lines


def _sqnr_lines(doc: dict) -> list[str]:
    layers = doc["layers"]["presets"]
    if not layers:
        return []
    count = len(next(iter(layers.values())))
    lines = [
        f"Per-layer SQNR{_caveat_tag(doc)}",
        f"mean over {count} linears, {doc['layers']['tokens']} tokens, each linear fed the float model's own input",
    ]
    means = {}
    for preset, rows in layers.items():
        m = {k: sum(r[k] for r in rows) / len(rows) for k in ("act_sqnr_db", "weight_sqnr_db", "out_sqnr_db")}
        means[preset] = m
        lines.append(
            f"  {preset:22s} activation {m['act_sqnr_db']:5.1f} dB   weight {m['weight_sqnr_db']:5.1f} dB   "
            f"layer output {m['out_sqnr_db']:5.1f} dB"
        )
    if len(means) == 2:
        (p0, m0), (p1, m1) = means.items()
        d_act = m1["act_sqnr_db"] - m0["act_sqnr_db"]
        d_w = m1["weight_sqnr_db"] - m0["weight_sqnr_db"]
        lines.append(f"  {p1} vs {p0}: activation {d_act:+.1f} dB, weight {d_w:+.1f} dB")
    return lines


def _generation_lines(doc: dict, width: int) -> list[str]:
    gen = doc["generation"]
    done = list(gen["completions"].items())
    if len(done) < 2:
        return []
    (left, text_a), (right, text_b) = done[:2]
    how = "chat template" if gen["chat_template"] else "plain text"
    lines = [
        f"Greedy completion{_caveat_tag(doc)}, up to {gen['max_new_tokens']} new tokens, {how}:",
        f'prompt: "{gen["prompt"]}"',
        "",
        *side_by_side((left, text_a), (right, text_b), width),
    ]
    ids = gen["new_token_ids"]
    same = _common_prefix(ids[left], ids[right])
    if same == len(ids[left]) == len(ids[right]):
        lines.append(f"(the two completions are the same {same} tokens)")
    else:
        lines.append(f"(the two agree on their first {same} token{'s' if same != 1 else ''})")
    return lines


def _estimate_line(doc: dict) -> str:
    seconds = doc["seconds"].get("ppl", {})
    tokens = doc["perplexity"]["tokens"]
    quantized = [s for p, s in seconds.items() if p != "bf16"]
    if not quantized or not tokens:
        return ""
    hours = max(quantized) / tokens * FULL_PPL_TOKENS / 3600
    where = "this GPU" if doc["machine"].get("gpu") else "this CPU"
    return (
        f"At this run's speed its two perplexity sets alone would take ~{hours:.0f} h per quantized preset on "
        f"{where} (extrapolated); `sharq eval --ppl-tokens N --limit D` runs a slice."
    )


def format_demo(doc: dict, elapsed: float | None = None, width: int | None = None) -> str:
    width = width or min(max(shutil.get_terminal_size((100, 24)).columns, 80), 120)
    machine = doc["machine"]
    threads = machine.get("threads")
    where = machine.get("gpu") or f"{threads} thread{'s' if threads != 1 else ''}"
    load = machine.get("load_average_at_start")
    load_text = f"; load average {load[0]:.1f} on {machine.get('cpu_count')} cores at start" if load else ""
    parts = textwrap.wrap(f"{doc['model']}: {machine['device']}, {where}, {machine['dtype']}{load_text}", width)
    if doc.get("caveat"):
        parts += textwrap.wrap(f"Caveat for every number below: {doc['caveat']}", width)
    parts += [""] + _perplexity_lines(doc, width)
    sqnr = _sqnr_lines(doc)
    if sqnr:
        parts += [""] + sqnr
    gen = _generation_lines(doc, width)
    if gen:
        parts += [""] + gen
    parts += ["", f"wrote {', '.join(doc['paths'])}"]
    if elapsed is not None:
        parts.append(f"done in {elapsed:.0f} s")
    parts += [""] + textwrap.wrap(FULL_EVAL + " " + _estimate_line(doc), width)
    return "\n".join(parts)


def plot_demo(doc: dict, path) -> None:
    """Three panels: activation SQNR and weight SQNR of every inspected preset by linear (model order),
    and the recovered share of the plain-FP4 → bf16 perplexity gap of every SharQ preset with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [2, 2, 1.3]})
    for preset, rows in doc["layers"]["presets"].items():
        x = range(len(rows))
        axes[0].plot(x, [r["act_sqnr_db"] for r in rows], ".-", ms=3, lw=0.8, label=preset)
        axes[1].plot(x, [r["weight_sqnr_db"] for r in rows], ".-", ms=3, lw=0.8, label=preset)
    titles = ("activation SQNR (dB) per linear", "weight SQNR (dB) per linear")
    for ax, title in zip(axes[:2], titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("linear, model order (q k v o gate up down per decoder layer)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    shares = doc["perplexity"]["recovered"]
    values = [100 * s["value"] for s in shares]
    errors = [[100 * (s["value"] - s["low"]) for s in shares], [100 * (s["high"] - s["value"]) for s in shares]]
    axes[2].bar(range(len(shares)), values, yerr=errors, color="#4c72b0", capsize=4)
    axes[2].set_xticks(range(len(shares)))
    axes[2].set_xticklabels([s["preset"] for s in shares], rotation=20, ha="right", fontsize=8)
    for i, s in enumerate(shares):
        axes[2].annotate(f"{100 * s['value']:.0f}%", (i, 100 * s["high"]), ha="center", va="bottom", fontsize=8)
    axes[2].axhline(100, color="#55a868", lw=0.8, ls="--")
    against = sorted({s["against"] for s in shares}) or ["plain FP4"]
    level = shares[0]["level"] if shares else 0.95
    axes[2].set_title(
        f"wiki ppl: share of the {'/'.join(against)} → bf16 gap\nrecovered, {100 * level:.0f}% interval", fontsize=10
    )
    axes[2].set_ylim(min([0.0, *[100 * s["low"] for s in shares]]) - 5, 110)
    axes[2].grid(axis="y", alpha=0.3)
    caveat = " — weights already 4-bit (Q4_1 GGUF) before sharq" if doc.get("caveat") else ""
    fig.suptitle(
        f"{doc['model']}{caveat}; {doc['perplexity']['tokens']:,} wiki tokens, SQNR on {doc['layers']['tokens']} "
        "tokens",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
