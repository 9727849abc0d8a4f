"""Would the "-mse" block-scale search pay on the activation side? SharQ-NVFP4's decomposition error
on real activations with the amax rule vs the search on the residual's blocks ("res-mse") or on
both terms ("both-mse"), candidates E4M3(amax/d) for d in --divisors.

The inputs of every decoder linear of the packaged SmolLM2-135M (already-4-bit Q4_1 weights) are
captured on the first --tokens wiki tokens; for each, the relative error ||x̂ − x||² / ||x||² and the
output error ||(x̂ − x) Wᵀ||² / ||x Wᵀ||² are summed over layers. An experiment: the package's
activation numerics stay the amax rule.

usage: python benchmarks/residual_scale_search.py [--tokens 511] [--divisors 6,4] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import sharq.formats.nvfp4 as nvfp4_module
from sharq import PRESETS, decompose
from sharq.eval.data import wiki_texts
from sharq.eval.packaged import PRETRAINED_CAVEAT, load_model
from sharq.eval.perplexity import corpus_tokens
from sharq.formats.nvfp4 import nvfp4_global_scale
from sharq.formats.registry import quantize_tensor
from sharq.models.convert import conversion_targets
from sharq.sparse.masks import apply_mask


def x_hat(x: torch.Tensor, cfg, rule: str) -> torch.Tensor:
    if rule == "amax":
        d = decompose(x, cfg)
        return d.backbone + d.residual
    s = nvfp4_global_scale(x, cfg.granularity)
    xs = x.float() / s
    first = apply_mask(xs, cfg.mask_spec)
    one = torch.ones(())
    b = quantize_tensor(
        first, "nvfp4", cfg.backbone_block, global_scale=one, scale_rule="mse" if rule == "both-mse" else "amax"
    ).dequantize()
    r = quantize_tensor(xs - b, "nvfp4", cfg.residual_block, global_scale=one, scale_rule="mse").dequantize()
    return (b + r) * s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=511)
    ap.add_argument("--divisors", default="6,4")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    nvfp4_module.NVFP4_MSE_DIVISORS = tuple(float(v) for v in args.divisors.split(","))
    model, tok = load_model("smollm2", dtype=torch.float32)
    ids = torch.tensor([corpus_tokens(tok, wiki_texts())[: args.tokens]])
    targets = [n for n, k in conversion_targets(model).items() if k == "linear"]
    captured = {}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda m, inp, n=n: captured.__setitem__(n, inp[0].detach().reshape(-1, inp[0].shape[-1]))
        )
        for n in targets
    ]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    cfg = PRESETS["sharq-nvfp4"]
    rows = []
    for rule in ("amax", "res-mse", "both-mse"):
        ex = ey = 0.0
        for n in targets:
            x, w = captured[n], model.get_submodule(n).weight.detach().float()
            dx = x_hat(x, cfg, rule) - x
            ex += float((dx**2).sum() / (x**2).sum())
            ey += float(((dx @ w.T) ** 2).sum() / ((x @ w.T) ** 2).sum())
        rows.append(dict(rule=rule, act_rel_err=ex / len(targets), out_rel_err=ey / len(targets)))
        print(
            f"{rule:9s} mean relative activation error {ex / len(targets):.3e}, output error {ey / len(targets):.3e}",
            flush=True,
        )
    if args.out:
        doc = dict(
            model="SmolLM2-135M-Instruct (Q4_1 GGUF)",
            caveat=PRETRAINED_CAVEAT,
            tokens=args.tokens,
            divisors=args.divisors,
            layers=len(targets),
            rows=rows,
        )
        Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
