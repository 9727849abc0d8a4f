"""Forward throughput of a SmolLM2-135M-shaped model (random weights) per preset and backend.

Tells how long an accuracy evaluation takes on this machine (the reference backend runs SPEC
numerics as plain torch ops: many small kernels per linear). bf16 is measured in the same run.
Writes benchmarks/results/<backend>-throughput-<gpu>.json.

usage: python benchmarks/reference_throughput.py [--tokens 32768] [--seq 2048] [--backend reference|triton]
"""

from __future__ import annotations

import argparse
import time

import torch

import sharq
from harness import write_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--presets", default="bf16,nvfp4,sharq-nvfp4,sharq-mxfp4,sharq-hif4,sparse-sparse")
    ap.add_argument("--backend", default="reference", choices=("reference", "triton"))
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).to(dtype).eval()
    batch = max(1, args.tokens // args.seq)
    ids = torch.randint(0, cfg.vocab_size, (batch, args.seq), device=device)
    rows = []
    for preset in args.presets.split(","):
        import copy

        model = copy.deepcopy(base).to(device)
        config = sharq.SharqConfig.from_preset(preset)
        sharq.quantize_(model, config, backend=args.backend)
        with torch.no_grad():
            model(input_ids=ids[:1, :128], logits_to_keep=1)
            if device == "cuda":
                torch.cuda.synchronize()
            reps = 3
            t = time.perf_counter()
            for _ in range(reps):
                model(input_ids=ids, logits_to_keep=1, use_cache=False)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t) / reps
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
        rows.append(
            dict(preset=preset, tokens=int(ids.numel()), seconds=dt, tokens_per_s=ids.numel() / dt, peak_bytes=peak)
        )
        print(f"{preset:16s} {ids.numel()} tokens in {dt * 1e3:8.1f} ms -> {ids.numel() / dt:10.0f} tok/s", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    doc = dict(
        gpu=gpu, torch=torch.__version__, model="SmolLM2-135M shape, random weights", backend=args.backend, rows=rows
    )
    print(f"wrote {write_json(doc, args.out, f'{args.backend}-throughput')}")


if __name__ == "__main__":
    main()
