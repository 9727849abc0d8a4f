"""End-to-end speed and memory of a whole model: bf16 vs fp8 vs SharQ, on one harness.

A Llama-3.1-8B-, Qwen2.5-7B- or Qwen3-30B-A3B-shaped model (real hyperparameters, random weights,
built on the GPU: no download; --layers keeps fewer decoder layers of the same shapes) is built
fresh for each provider, in bfloat16, then
  bf16   kept as it is
  fp8    `sharq.baselines.fp8_quantize_`: E4M3 weights per channel, per-token E4M3 activations
  sharq         `sharq.quantize_(model, "sharq-nvfp4")` (Triton kernels on CUDA, RMSNorm fused)
  sharq-lmhead  the same plus the opt-in weight-only NVFP4-16 lm_head (`SharqConfig.lm_head="nvfp4-w16"`)
  gemlite-int4  gemlite's A16W4_HQQ_INT (int4 weights in groups of 64, bf16 activations, its shipped
                H100 config) in place of every decoder linear: the W4A16 library a Hopper user would
                otherwise pick. Random codes (its speed does not depend on them); lm_head stays bf16.
                Needs gemlite (PyPI gemlite==0.6.0.post2); without it the provider is recorded as skipped.
  gemlite-fp8   gemlite's A8W8_fp8_dynamic (E4M3 weights per channel, per-token activations quantized in
                its kernels) in every decoder linear, from the model's weights; lm_head stays bf16. Per
                Llama layer at M = 1 it is 1.86x bf16 where `fp8` is 0.92x (linear.py, H100), so the
                ratios also hold `vs_fp8_best`: against the faster of fp8 and gemlite-fp8 per scenario.
The fp8 baseline refuses mixture-of-experts layers, so a MoE model runs sharq and bf16 by default:
bf16 with transformers' experts implementation (`grouped_mm`: sorted on the device), sharq with
`SharqExperts`, whose decode calls (up to 16 tokens) route on the device
(`kernels.plan.plan_experts`, recorded per decode batch in the JSON's `experts_plans`), so the MoE
decode step is captured in the CUDA graph too.
and measured, same code for every provider:
  prefill_1024, prefill_4096  ms for one forward of 1 × T tokens (eager forward, as transformers'
                              generate runs its prefill; logits of the last position only)
  decode_b1, decode_b8        ms per decode step at batch 1 / 8 after a --context (1024) token
                              prefill: `sharq.runtime.StaticDecoder`, transformers' StaticCache
                              and forward, the step compiled by torch.compile (inductor on CUDA;
                              --compile none: not compiled) and captured in a CUDA graph, the median over
                              --reps runs of --decode-steps steps
  serving_mix                 8 prompts × --context tokens in, --new-tokens (128) out, greedy: generated
                              tokens per second, prefill included (one batched prefill + graph steps)
  weight_bytes                bytes of every parameter and buffer the model holds (`linear_bytes`:
                              the quantized linears alone; also a `weight_bytes_linear` row)
  peak_bytes                  torch.cuda.max_memory_allocated from after the conversion to the end of
                              the provider's run (model, KV caches of batch 1 and 8, activations,
                              CUDA-graph pools); the conversion's own peak is `convert_peak_bytes`
Timing: CUDA events around the work, warm-up first (Triton JIT, cuBLAS heuristics, CUDA-graph
capture), median of --reps. On the CPU (smoke tests, `--model tiny`) wall-clock instead.

usage: PYTHONPATH=src python benchmarks/e2e.py --model llama-3.1-8b --out benchmarks/results [--profile]
       PYTHONPATH=src python benchmarks/e2e.py --model qwen3-30b-a3b --scenarios decode_b1,decode_b8 [--layers 12]
Writes <out>/e2e-<gpu>.json (Llama) or e2e-<model>-<gpu>.json, a .png of bar charts next to it, and
with --profile e2e[-<model>]-profile-<gpu>.json (time by category of one prefill per provider).
The JSON is rewritten after every measurement, so a run cut short still leaves its results.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sharq  # noqa: E402
from e2e_models import MODELS, build_model, is_moe, weight_bytes  # noqa: E402
from harness import gemlite as load_gemlite  # noqa: E402
from harness import gemlite_fp8_layer, gemlite_int4_layer, gpu_tag  # noqa: E402
from sharq.baselines import Fp8Linear, fp8_quantize_  # noqa: E402
from sharq.runtime import StaticDecoder  # noqa: E402

# run order: the ones under test first, should a run be cut short
PROVIDERS = ("sharq", "sharq-lmhead", "bf16", "fp8", "gemlite-int4", "gemlite-fp8")
SHARQ_PROVIDERS = ("sharq", "sharq-lmhead")
GEMLITE_PROVIDERS = ("gemlite-int4", "gemlite-fp8")
BASELINES = ("bf16", "fp8", "gemlite-int4", "gemlite-fp8")
FP8_PEERS = ("fp8", "gemlite-fp8")  # `vs_fp8_best`: the faster of them in each scenario
SCENARIOS = ("prefill_1024", "prefill_4096", "decode_b1", "decode_b8", "serving_mix", "weight_bytes", "peak_bytes")
SERVING_BATCH = 8
_T0 = time.perf_counter()
_BUDGET = {"s": float("inf")}  # --budget-s: no new measurement starts after this many seconds


def over_budget() -> bool:
    return time.perf_counter() - _T0 > _BUDGET["s"]


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


# --- timing ----------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, *, reps: int, warmup: int = 1, setup=None) -> list[float]:
    """Milliseconds of `reps` calls of `fn` (after `warmup` untimed ones); `setup()` runs untimed
    before each call. CUDA events on CUDA, wall clock elsewhere."""
    out = []
    for i in range(warmup + reps):
        if setup is not None:
            setup()
        _sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t) * 1e3
        if i >= warmup:
            out.append(ms)
    return out


def _stats(values: list[float]) -> dict:
    return {
        "value": statistics.median(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "samples": len(values),
    }


# --- providers -------------------------------------------------------------------------------------
def convert(model: nn.Module, provider: str) -> dict:
    """Quantize `model` in place for `provider`; return facts for the JSON."""
    if provider == "bf16":
        return {"linear": "torch.nn.Linear bf16 (cuBLAS)"}
    if provider == "fp8":
        report = fp8_quantize_(model)
        return {
            "linear": "Fp8Linear: E4M3 per-channel weight, per-token E4M3 activation, torch._scaled_mm",
            "converted": len(report.converted),
        }
    if provider in GEMLITE_PROVIDERS:
        return gemlite_swap_(model, provider)
    if provider in SHARQ_PROVIDERS:
        config = sharq.PRESETS["sharq-nvfp4"]
        if provider == "sharq-lmhead":
            config = config.replace(lm_head="nvfp4-w16")
        report = sharq.quantize_(model, config)
        device = next(model.parameters()).device
        backend = sharq.ops.resolve_backend(report.config, device).value
        facts = {
            "linear": "SharqLinear sharq-nvfp4" + (", lm_head nvfp4-w16" if provider == "sharq-lmhead" else ""),
            "backend": backend,
            "converted": len(report.converted),
            "summary": report.summary(),
        }
        plans = experts_plans(model, device)
        if plans:
            facts["experts_plans"] = plans
        return facts
    raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")


_LINEARS = (nn.Linear, Fp8Linear, sharq.SharqLinear)


def linear_types() -> tuple[type, ...]:
    """The module types whose bytes count as linear weights: _LINEARS, and gemlite's layer where installed."""
    gemlite = load_gemlite()
    return _LINEARS if gemlite is None else (*_LINEARS, gemlite.GemLiteLinearTriton)


def gemlite_swap_(model: nn.Module, provider: str, group: int = 64) -> dict:
    """Replace every nn.Linear of the decoder layers by gemlite's layer: "gemlite-int4" A16W4_HQQ_INT
    (`harness.gemlite_int4_layer`: random int4 codes, scales per `group` along K) or "gemlite-fp8"
    A8W8_fp8_dynamic (`harness.gemlite_fp8_layer`, from the layer's weight); lm_head stays bf16."""
    gemlite = load_gemlite()
    if gemlite is None:
        raise RuntimeError(f"{provider} needs gemlite (pip install gemlite==0.6.0.post2); not installed")
    if provider not in GEMLITE_PROVIDERS:
        raise ValueError(f"unknown gemlite provider {provider!r}; choose from {GEMLITE_PROVIDERS}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    swapped = 0
    for layer in model.model.layers:
        for name, mod in list(layer.named_modules()):
            if type(mod) is not nn.Linear:
                continue
            n, k = mod.weight.shape
            if provider == "gemlite-int4":
                new = gemlite_int4_layer(n, k, bias=mod.bias, group=group, generator=gen)
            else:
                new = gemlite_fp8_layer(mod)
            parent_name, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent_name) if parent_name else layer, child, new)
            swapped += 1
    what = (
        f"A16W4_HQQ_INT (int4, groups of {group}, bf16 activations)"
        if provider == "gemlite-int4"
        else "A8W8_fp8_dynamic (E4M3 weights per channel, per-token E4M3 activations)"
    )
    return {"linear": f"gemlite {gemlite.__version__} {what}", "converted": swapped}


def experts_plans(model: nn.Module, device: torch.device) -> dict:
    """How the first `SharqExperts` of `model` runs a call of each decode batch and of a prefill
    (`kernels.plan.plan_experts`, printed): {scenario: description}; empty without experts."""
    from sharq.nn.experts import SharqExperts

    experts = next((m for m in model.modules() if isinstance(m, SharqExperts)), None)
    if experts is None:
        return {}
    top_k = model.config.num_experts_per_tok
    return {
        name: experts.plan(tokens, top_k, device).describe()
        for name, tokens in (("decode_b1", 1), (f"decode_b{SERVING_BATCH}", SERVING_BATCH), ("prefill_1024", 1024))
    }


# --- scenarios -------------------------------------------------------------------------------------
def _ids(batch: int, length: int, vocab: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g).to(device)


def prefill_ms(model, tokens: int, vocab: int, device, reps: int) -> dict:
    ids = _ids(1, tokens, vocab, device, seed=tokens)
    with torch.no_grad():
        times = time_ms(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), device, reps=reps, warmup=2)
    return {**_stats(times), "unit": "ms", "tokens": tokens}


def decode_ms(decoder: StaticDecoder, context: int, steps: int, reps: int, device) -> dict:
    """ms per decode step at `context` cached tokens (after a prefill of `context`; the cache is
    rewound to it before each run)."""
    times = time_ms(
        lambda: decoder.decode(steps, keep=False), device, reps=reps, warmup=1, setup=lambda: decoder.rewind(context)
    )
    per_token = [t / steps for t in times]
    return {
        **_stats(per_token),
        "unit": "ms/token",
        "batch": decoder.batch_size,
        "context": context,
        "steps": steps,
        "cuda_graph": decoder.graph_enabled,
        "compiled": decoder.compile_backend,
    }


def serving_tokens_per_s(decoder: StaticDecoder, prompts: torch.Tensor, new_tokens: int, reps: int, device) -> dict:
    batch = prompts.shape[0]

    def run():
        decoder.prefill(prompts)
        decoder.decode(new_tokens - 1, keep=False)

    times = time_ms(run, device, reps=reps, warmup=1)
    rates = [batch * new_tokens / (t / 1e3) for t in times]
    return {
        **_stats(rates),
        "unit": "tokens/s",
        "batch": batch,
        "input_tokens": prompts.shape[1],
        "new_tokens": new_tokens,
        "ms": statistics.median(times),
    }


# --- the run -------------------------------------------------------------------------------------
class Results:
    """The JSON document, rewritten after every row."""

    def __init__(self, path: Path, doc: dict) -> None:
        self.path, self.doc = path, doc
        self.write()

    def add(self, scenario: str, provider: str, fields: dict) -> None:
        row = {"scenario": scenario, "provider": provider, **fields}
        self.doc["rows"].append(row)
        self.write()
        value = row.get("value")
        shown = f"{value:.4g}" if isinstance(value, float) else value
        log(f"  {provider:5s} {scenario:20s} {shown} {row.get('unit', '')}")

    def write(self) -> None:
        self.doc["ratios"] = ratios(self.doc["rows"])
        self.doc["ratios_sharq_lmhead"] = ratios(self.doc["rows"], "sharq-lmhead")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.doc, indent=1))


def ratios(rows: list[dict], provider: str = "sharq") -> dict:
    """`provider`'s advantage per scenario: {scenario: {"vs_<baseline>" for each of BASELINES,
    "vs_fp8_best" (against the faster of FP8_PEERS)}} (> 1: `provider` better; a baseline without a
    value is left out)."""
    value = {(r["scenario"], r["provider"]): r.get("value") for r in rows}
    out = {}
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        mine = value.get((scenario, provider))
        if not mine:
            continue
        higher_is_better = scenario == "serving_mix"
        entry = {}
        for base in BASELINES:
            theirs = value.get((scenario, base))
            if theirs:
                entry[f"vs_{base}"] = mine / theirs if higher_is_better else theirs / mine
        peers = [entry[f"vs_{p}"] for p in FP8_PEERS if f"vs_{p}" in entry]
        if peers:
            entry["vs_fp8_best"] = min(peers)  # the stronger peer leaves the smaller advantage
        out[scenario] = entry
    return out


def _guarded(results: Results, scenario: str, provider: str, measure) -> None:
    """Add the row `measure()` returns; a failure becomes a row with value None and the error."""
    if over_budget():
        results.add(scenario, provider, {"value": None, "error": "skipped: --budget-s reached"})
        return
    try:
        results.add(scenario, provider, measure())
    except Exception as err:  # one scenario failing must not cost the others
        log(f"  {provider:5s} {scenario:20s} FAILED: {type(err).__name__}: {err}")
        results.add(scenario, provider, {"value": None, "error": f"{type(err).__name__}: {err}"[:500]})


def _decode_rows(model, provider, args, device, results: Results, vocab: int) -> None:
    """decode_b1, decode_b8 and serving_mix, on a CUDA-graph StaticDecoder (uncaptured if capture fails)."""
    scenarios, context, new = args.scenarios, args.context, args.new_tokens
    plans = []
    if "decode_b1" in scenarios:
        plans.append((1, context + args.decode_steps + 2, ["decode_b1"]))
    wanted = [s for s in ("decode_b8", "serving_mix") if s in scenarios]
    if wanted:
        plans.append((SERVING_BATCH, context + max(new, args.decode_steps) + 2, wanted))
    for batch, length, names in plans:
        if over_budget():
            for name in names:
                results.add(name, provider, {"value": None, "error": "skipped: --budget-s reached"})
            continue
        prompts = _ids(batch, context, vocab, device, seed=batch)
        decoder = None
        compile_ = False if args.compile == "none" else args.compile
        # a CUDA graph first (compiled, else of the eager step), then uncaptured steps
        graphs = (True, False) if device.type == "cuda" else (False,)
        attempts = list(dict.fromkeys((g, c) for g in graphs for c in (compile_, False)))
        for graph, step_compile in attempts:
            try:
                decoder = StaticDecoder(model, batch, length, graph=graph, compile=step_compile)
                decoder.prefill(prompts)
                decoder.decode(2, keep=False)  # captures the step (graph=True)
                break
            except Exception as err:
                log(
                    f"  {provider:5s} StaticDecoder(batch {batch}, graph={graph}, compile={step_compile}) failed: "
                    f"{type(err).__name__}: {err}"
                )
                decoder = None
                gc.collect()
        if decoder is None:
            for name in names:
                results.add(name, provider, {"value": None, "error": "the decoder could not run (see the log)"})
            continue
        notes = []
        if decoder.graph_enabled != (device.type == "cuda"):
            notes.append("CUDA-graph capture failed: eager steps")
        if decoder.compile_backend is None and compile_:
            notes.append("torch.compile of the step failed: uncompiled step")
        note = {"note": "; ".join(notes)} if notes else {}
        for name in names:
            if name == "serving_mix":
                _guarded(
                    results,
                    name,
                    provider,
                    lambda: {**serving_tokens_per_s(decoder, prompts, new, max(1, args.reps // 2), device), **note},
                )
            else:
                decoder.prefill(prompts)
                _guarded(
                    results,
                    name,
                    provider,
                    lambda: {**decode_ms(decoder, context, args.decode_steps, args.reps, device), **note},
                )
        decoder = None  # (not del: the timed lambdas above close over the name)
        gc.collect()


def run_provider(provider: str, args, device: torch.device, results: Results, profiles: dict) -> None:
    scenarios = args.scenarios
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    model = build_model(args.model, device, layers=args.layers)
    vocab = model.config.vocab_size
    _sync(device)
    log(f"{provider}: model built in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    facts = convert(model, provider)
    _sync(device)
    gc.collect()
    facts["convert_s"] = time.perf_counter() - t
    if cuda:  # the peak that matters is the one serving sees: measured from here on
        facts["convert_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    results.doc.setdefault("providers", {})[provider] = facts
    log(f"{provider}: converted in {facts['convert_s']:.1f} s")

    if "weight_bytes" in scenarios:
        total, linear = weight_bytes(model, linear_types())
        results.add("weight_bytes", provider, {"value": total, "unit": "bytes", "linear_bytes": linear})
        results.add(
            "weight_bytes_linear",
            provider,
            {"value": linear, "unit": "bytes", "note": "quantized linears only (no embeddings, lm_head, norms)"},
        )
    for tokens in (1024, 4096):
        if f"prefill_{tokens}" in scenarios:
            _guarded(
                results, f"prefill_{tokens}", provider, lambda: prefill_ms(model, tokens, vocab, device, args.reps)
            )
    if args.profile:
        try:
            ids = _ids(1, args.profile_tokens, vocab, device, seed=7)
            with torch.no_grad():
                forward = lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1)  # noqa: E731
                forward()
                from e2e_profile import profile_forward

                profiles[provider] = {"tokens": args.profile_tokens, **profile_forward(forward, device)}
            log(
                f"  {provider:5s} profile of prefill {args.profile_tokens}: "
                + ", ".join(f"{c} {100 * v:.0f}%" for c, v in profiles[provider]["share"].items())
            )
        except Exception as err:
            log(f"  {provider:5s} profile FAILED: {type(err).__name__}: {err}")
    _decode_rows(model, provider, args, device, results, vocab)
    if "peak_bytes" in scenarios:
        if cuda:
            results.add(
                "peak_bytes",
                provider,
                {
                    "value": torch.cuda.max_memory_allocated(device),
                    "unit": "bytes",
                    "note": "after conversion: model, KV caches (batch 1 and 8), activations, CUDA-graph pools",
                },
            )
        else:
            results.add("peak_bytes", provider, {"value": None, "unit": "bytes", "note": "not measured on the CPU"})
    model = None  # (not del: the timed lambdas above close over the name)
    gc.collect()


def output_stem(model: str, device: torch.device) -> tuple[str, str]:
    """(device name, file stem): e2e-h100 for Llama-3.1-8B on an H100, e2e-qwen2.5-7b-h100, e2e-tiny-cpu-smoke."""
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        tag = gpu_tag(gpu)
    else:
        gpu, tag = "cpu", "cpu-smoke"
    name = "e2e" if model == "llama-3.1-8b" else f"e2e-{model}"
    return gpu, f"{name}-{tag}"


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {bad or 'empty list'}; choose from {','.join(choices)}")
        return items

    return parse


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="llama-3.1-8b")
    ap.add_argument(
        "--providers",
        type=_csv(PROVIDERS),
        default=None,
        help="default: all six (the gemlite ones where gemlite is installed); sharq,sharq-lmhead,bf16 for a MoE "
        "model (the fp8 and gemlite baselines swap nn.Linear only)",
    )
    ap.add_argument("--scenarios", type=_csv(SCENARIOS), default=list(SCENARIOS))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--context", type=int, default=1024, help="prompt tokens for decode and serving (default 1024)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated per prompt in serving_mix (128)")
    ap.add_argument("--decode-steps", type=int, default=32, help="decode steps per timed decode run (32)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions, median reported (5)")
    ap.add_argument(
        "--compile",
        default=None,
        choices=["inductor", "none"],
        help="torch.compile backend of the decode step before the CUDA graph captures it "
        "(default: inductor on CUDA, none on the CPU; none: the eager step is captured)",
    )
    ap.add_argument(
        "--layers",
        type=int,
        default=None,
        help="decoder layers to build (default: the model's; fewer run the same layer shapes faster)",
    )
    ap.add_argument(
        "--merge",
        default=None,
        help="an earlier JSON of this run (same model and GPU, e.g. the first of two calls on one warm machine): "
        "its rows are kept, and providers it already has are not run again",
    )
    ap.add_argument("--profile", action="store_true", help="profile one prefill per provider (time by category)")
    ap.add_argument("--profile-tokens", type=int, default=1024)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=float("inf"),
        help="start no new measurement after this many seconds (the JSON and charts are still written)",
    )
    args = ap.parse_args(argv)
    if args.context < 1 or args.new_tokens < 2 or args.decode_steps < 1 or args.reps < 1:
        ap.error("--context, --decode-steps and --reps must be >= 1 and --new-tokens >= 2")
    if args.layers is not None and args.layers < 1:
        ap.error("--layers must be >= 1")
    if args.providers is None:
        dense_only = ("fp8", *GEMLITE_PROVIDERS)
        args.providers = [
            p
            for p in PROVIDERS
            if not (p in dense_only and is_moe(args.model)) and not (p in GEMLITE_PROVIDERS and load_gemlite() is None)
        ]
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.compile is None:
        args.compile = "inductor" if device.type == "cuda" else "none"
    gpu, stem = output_stem(args.model, device)
    out = Path(args.out)
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    doc = {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton_version,
        "transformers": transformers.__version__,
        "sharq": sharq.__version__,
        "model": args.model,
        "config": {k: v for k, v in MODELS[args.model].items()},
        "settings": {
            "context": args.context,
            "new_tokens": args.new_tokens,
            "decode_steps": args.decode_steps,
            "reps": args.reps,
            "serving_batch": SERVING_BATCH,
            "decode_compile": args.compile,
            "layers": args.layers or MODELS[args.model]["num_hidden_layers"],
        },
        "timing": "CUDA events, warm-up excluded, median; prefill: eager forward (logits of the last token); "
        "decode/serving: StaticCache + decode step (torch.compile unless decode_compile is none) in a "
        "CUDA graph, greedy on device",
        "rows": [],
    }
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        for key in ("gpu", "model", "torch", "triton"):
            if earlier.get(key) != doc[key]:
                raise SystemExit(f"--merge {args.merge}: its {key} is {earlier.get(key)!r}, this run's {doc[key]!r}")
        doc["rows"] = list(earlier["rows"])
        doc["merged_from"] = args.merge
        done = {r["provider"] for r in doc["rows"]}
        args.providers = [p for p in args.providers if p not in done]
    results = Results(out / f"{stem}.json", doc)
    log(f"{args.model} on {gpu}: providers {args.providers}, scenarios {args.scenarios}")
    profiles: dict = {}
    _BUDGET["s"] = args.budget_s
    for provider in args.providers:
        if over_budget():
            log(f"{provider}: skipped, --budget-s {args.budget_s:.0f} reached")
            results.doc.setdefault("errors", {})[provider] = "skipped: --budget-s reached"
            results.write()
            continue
        try:
            run_provider(provider, args, device, results, profiles)
        except Exception as err:  # keep the other providers' results; record what failed
            log(f"{provider}: FAILED: {type(err).__name__}: {err}")
            results.doc.setdefault("errors", {})[provider] = f"{type(err).__name__}: {err}"
            results.write()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if profiles:
            prof_doc = {k: doc[k] for k in ("gpu", "torch", "triton", "transformers", "sharq", "model")}
            (out / f"{stem.replace('e2e', 'e2e-profile', 1)}.json").write_text(
                json.dumps({**prof_doc, "providers": profiles}, indent=1)
            )
    try:
        from e2e_plot import plot

        plot(doc, results.path.with_suffix(".png"))
    except Exception as err:  # a chart must never cost the numbers
        log(f"plot failed: {type(err).__name__}: {err}")
    log(f"wrote {results.path}; sharq ratios: {json.dumps(doc['ratios'])}")
    return results.path


if __name__ == "__main__":
    main()
