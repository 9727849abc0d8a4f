"""Host time of sharq's Triton path per decoder layer, on the CPU, with every kernel launch stubbed.

    python benchmarks/host_overhead.py [--rows 64,1024] [--layers 8] [--reps 20]

An eager forward launches each kernel from Python; where the GPU's work per launch is short (prefill
of ~1 k tokens, eager decode), the host's time per layer — planning, checks, views, allocations and
Triton's launcher — can exceed the GPU's and then sets the speed. This measures the host side
alone: a small Llama-shaped bf16 model (hidden 64: the torch glue's own CPU compute stays small)
quantized with `sharq-nvfp4` on the Triton backend under TRITON_INTERPRET=1, every Triton launch
replaced by a no-op that only counts it, so what remains is the Python around the kernels. The
same model unquantized (plain `nn.Linear`) is the baseline: transformers' own layer code. Triton's
launcher itself (argument binding, the driver call) is not in it: it runs only on a GPU.

Reports per layer: the minimum and median over `reps` forwards of the host milliseconds, sharq and
bf16, and the launches sharq made. Writes benchmarks/results/host-overhead-cpu.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def _model(layers: int, quantized: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    import sharq

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_hidden_layers=layers,
        vocab_size=256,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    if quantized:
        sharq.quantize_(model, sharq.PRESETS["sharq-nvfp4"], backend="triton")
    return model


def _times(model, ids, reps: int) -> list[float]:
    out = []
    with torch.no_grad():
        for i in range(reps + 2):
            t = time.perf_counter()
            model(ids, use_cache=False, logits_to_keep=1)
            if i >= 2:
                out.append((time.perf_counter() - t) * 1e3)
    return out


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="64,1024")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before sharq imports triton: the kernels are Python objects
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("host_overhead.py stubs interpreted kernels: run it with TRITON_INTERPRET=1 (the default)")
    from triton.runtime import interpreter

    import sharq

    torch.set_num_threads(1)
    launches = collections.Counter()

    def stub(self, grid):
        def launch(*a, **k):
            launches[self.fn.__name__] += 1

        return launch

    interpreter.InterpretedFunction.__getitem__ = stub
    models = {"bf16": _model(args.layers, False), "sharq": _model(args.layers, True)}
    rows = []
    for m in (int(r) for r in args.rows.split(",")):
        ids = torch.randint(0, 256, (1, m), generator=torch.Generator().manual_seed(m))
        for name, model in models.items():
            launches.clear()
            t = _times(model, ids, args.reps)
            count = sum(launches.values()) / ((args.reps + 2) * args.layers)
            row = {
                "model": name,
                "rows": m,
                "min_ms_per_layer": min(t) / args.layers,
                "median_ms_per_layer": statistics.median(t) / args.layers,
                "launches_per_layer": count,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "sharq": sharq.__version__,
        "layers": args.layers,
        "reps": args.reps,
        "what": "host ms per decoder layer of an eager forward, Triton launches stubbed (counted only), one thread",
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "host-overhead-cpu.json"
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
