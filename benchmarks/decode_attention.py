"""One-token decode attention of a grouped-query model: which way of calling SDPA is fastest.

Llama-3.1-8B's attention (32 query heads, 8 key/value heads, head dim 128) over a StaticCache of
--slots positions with a boolean mask (the first --visible slots visible), batch 1 and 8. Variants,
each timed as a CUDA graph of 50 calls (median of 7 replays):
  repeat            transformers' masked path: K/V repeated per query head (`repeat_kv`), then SDPA
  stacked           `sharq.runtime.decode_attention`: the 4 query heads of a K/V head as 4 query rows, SDPA
                    picks its kernel
  stacked-<backend> the same with SDPA held to one backend (efficient, cudnn, math)
  stacked-bmm       the same as two batched matmuls and a softmax in FP32 (what SDPA's math does)
  flex-compiled     torch's flex_attention (enable_gqa, the mask as a score_mod) compiled: its
                    decoding kernel splits the keys across programs
  stacked-triton    sharq's split-key Triton kernel (kernels/attention_decode.py), what
                    `sharq.runtime.decode_attention` runs on CUDA
Also checks that each variant gives the "repeat" output (max |difference|).

usage: python benchmarks/decode_attention.py [--slots 1088] [--visible 1025] [--out DIR]
Writes <out>/decode-attention-<gpu>.json.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.integrations.sdpa_attention import repeat_kv

from harness import environment, graph_ms, write_json

HEADS, KV_HEADS, DIM = 32, 8, 128
GROUPS = HEADS // KV_HEADS


def variants(q, k, v, mask):
    b = q.shape[0]
    stacked = q.reshape(b, KV_HEADS, GROUPS, DIM)
    scale = DIM**-0.5

    def repeat():
        return F.scaled_dot_product_attention(
            q, repeat_kv(k, GROUPS), repeat_kv(v, GROUPS), attn_mask=mask, scale=scale
        )

    def pinned(backend):
        def run():
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(stacked, k, v, attn_mask=mask, scale=scale)
            return out.reshape(b, HEADS, 1, DIM)

        return run

    def default():
        return F.scaled_dot_product_attention(stacked, k, v, attn_mask=mask, scale=scale).reshape(b, HEADS, 1, DIM)

    def bmm():
        scores = torch.matmul(stacked.float(), k.float().transpose(-1, -2)) * scale  # (B, Hkv, g, S)
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.matmul(scores.softmax(-1), v.float()).to(q.dtype).reshape(b, HEADS, 1, DIM)

    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, fullgraph=True, dynamic=False)
    visible = mask[:, 0, 0]  # (B, S) bool

    def masked(score, b, h, q_idx, kv_idx):
        return torch.where(visible[b, kv_idx], score, -float("inf"))

    def flex_compiled():
        return flex(q, k, v, score_mod=masked, enable_gqa=True, scale=scale)

    from sharq.kernels.attention_decode import decode_attention_triton

    def triton_split():
        return decode_attention_triton(q, k, v, mask, scale).transpose(1, 2)

    return {
        "repeat": repeat,
        "stacked-triton": triton_split,
        "flex-compiled": flex_compiled,
        "stacked": default,
        "stacked-efficient": pinned(SDPBackend.EFFICIENT_ATTENTION),
        "stacked-cudnn": pinned(SDPBackend.CUDNN_ATTENTION),
        "stacked-math": pinned(SDPBackend.MATH),
        "stacked-bmm": bmm,
    }


def time_graph(fn, calls: int = 50) -> float:
    """µs per call: `calls` calls captured in one CUDA graph (linear.py's timing), median of 7 replays."""
    return graph_ms([fn] * calls, reps=7) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=1088)
    ap.add_argument("--visible", type=int, default=1025)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.manual_seed(0)
    doc = dict(
        **environment(), heads=HEADS, kv_heads=KV_HEADS, head_dim=DIM, slots=args.slots, visible=args.visible, rows=[]
    )
    for batch in (1, 8):
        q = torch.randn(batch, HEADS, 1, DIM, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(batch, KV_HEADS, args.slots, DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        mask = (torch.arange(args.slots, device="cuda") < args.visible).view(1, 1, 1, -1).expand(batch, 1, 1, -1)
        expected = None
        for name, fn in variants(q, k, v, mask).items():
            try:
                out = fn()
                expected = out if expected is None else expected
                diff = (out.float() - expected.float()).abs().max().item()
                us = time_graph(fn)
            except Exception as err:  # a backend that refuses these inputs is a result too
                doc["rows"].append(dict(batch=batch, variant=name, error=f"{type(err).__name__}: {err}"[:300]))
                print(f"batch {batch} {name:18s} FAILED {type(err).__name__}: {str(err)[:120]}")
                continue
            doc["rows"].append(dict(batch=batch, variant=name, us=us, max_abs_diff_vs_repeat=diff))
            print(f"batch {batch} {name:18s} {us:7.2f} us   max|diff| {diff:.2e}")
    print(f"wrote {write_json(doc, args.out, 'decode-attention')}")


if __name__ == "__main__":
    main()
