"""Exploration of NVFP4 weight-scale rules on SmolLM2-135M (CPU, fake-quantized, FP32).

Each rule fake-quantizes the decoder linears' weights (y = x̃ · W̃ᵀ, W̃ = s_w · deq(Wq)), the
activations as the preset decomposes them (or not, `--part weights`), and scores wiki perplexity
over the first `--tokens` tokens. A rule is: the block-scale candidates (E4M3(amax/d) for each
divisor d, and/or E4M3 codes stepped from E4M3(amax/6)) and the per-matrix s_w multipliers
searched (s_w = m · amax(W)/2688, the one with the smallest matrix squared error kept).
The packaged SmolLM2-135M is already a 4-bit Q4_1 GGUF model: say so next to every number.

usage: python benchmarks/weight_scale_search.py --preset sharq-nvfp4 --rules amax 6,4 6,5.5,5,4.5,4 \
           [--sw 1,1.5] [--tokens 4088] [--part both|weights] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from fake_quant import FakeQuantLinear, sharq_activation
from sharq import SharqConfig
from sharq.eval.data import wiki_texts
from sharq.eval.packaged import PRETRAINED_CAVEAT, load_model
from sharq.eval.perplexity import corpus_tokens, perplexity
from sharq.formats.blocks import to_blocks
from sharq.formats.elements import decode_e2m1, round_to_e2m1_codes
from sharq.formats.ieee import div_rn
from sharq.formats.nvfp4 import nvfp4_global_scale
from sharq.formats.registry import quantize_tensor
from sharq.formats.scale_search import choose_block_scales
from sharq.formats.scales import decode_e4m3, round_e4m3
from sharq.models.convert import conversion_targets
from sharq.sparse.masks import apply_mask


def candidates(bamax: torch.Tensor, rule: str) -> list[torch.Tensor]:
    """rule "6,4": E4M3(amax/6), E4M3(amax/4); "s-1..4": E4M3(amax/6) code + j for j in -1..4."""
    if rule == "amax":
        return [round_e4m3(div_rn(bamax, 6.0))]
    if rule.startswith("s"):
        lo, hi = (int(v) for v in rule[1:].split(".."))
        base = round_e4m3(div_rn(bamax, 6.0)).to(torch.float8_e4m3fn).view(torch.uint8).to(torch.int32)
        out = [decode_e4m3(torch.clamp(base + j, 0, 126).to(torch.uint8)) for j in range(lo, hi + 1)]
        return out
    return [round_e4m3(div_rn(bamax, float(d))) for d in rule.split(",")]


def fake_weight(w: torch.Tensor, block: int, rule: str, sw_mults: list[float]) -> torch.Tensor:
    w = w.float()
    amax = w.abs().amax()
    best, best_err = None, None
    for m in sw_mults:
        s_w = torch.clamp(div_rn(amax, 2688.0) * m, min=1e-9)
        blocks = to_blocks(w / s_w, block)
        cands = candidates(blocks.abs().amax(-1), rule)
        scale = choose_block_scales(blocks, cands) if len(cands) > 1 else cands[0]
        div = torch.where(scale == 0, torch.ones_like(scale), scale).unsqueeze(-1)
        deq = decode_e2m1(round_to_e2m1_codes(blocks / div)) * scale.unsqueeze(-1)
        deq = deq.reshape(w.shape[0], -1)[:, : w.shape[1]] * s_w
        err = float(((w - deq) ** 2).double().sum())
        if best_err is None or err < best_err:
            best, best_err = deq, err
    return best


def act_search(x: torch.Tensor, cfg: SharqConfig, act_rule: str) -> torch.Tensor:
    """x̂ of SharQ-NVFP4 (SPEC §5) with the block-scale search on the residual ("res-mse") or on
    both terms ("both-mse"); an experiment, not the package's numerics."""
    s = nvfp4_global_scale(x, cfg.granularity)
    xs = x.float() / s
    first = apply_mask(xs, cfg.mask_spec) if cfg.mask is not None else xs
    rule_b = "mse" if act_rule == "both-mse" else "amax"
    b = quantize_tensor(first, "nvfp4", cfg.backbone_block, global_scale=torch.ones(()), scale_rule=rule_b).dequantize()
    r = quantize_tensor(xs - b, "nvfp4", cfg.residual_block, global_scale=torch.ones(()), scale_rule="mse").dequantize()
    return (b + r) * s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--rules", nargs="+", required=True)
    ap.add_argument("--sw", default="1", help="comma-separated s_w multipliers searched per matrix")
    ap.add_argument("--part", default="both", choices=("both", "weights", "activations"))
    ap.add_argument("--act-rule", default="amax", choices=("amax", "res-mse", "both-mse"))
    ap.add_argument(
        "--act-divisors",
        default=None,
        help="comma-separated E4M3(amax/d) candidates of the activation-side search "
        "(default: the package's NVFP4_MSE_DIVISORS)",
    )
    ap.add_argument("--tokens", type=int, default=4088)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base, tok = load_model("smollm2", dtype=torch.float32)
    tokens = corpus_tokens(tok, wiki_texts())
    targets = [n for n, kind in conversion_targets(base).items() if kind == "linear"]
    cfg = SharqConfig.from_preset(args.preset)
    sw = [float(v) for v in args.sw.split(",")]
    if args.act_divisors:
        import sharq.formats.nvfp4 as nvfp4_module

        nvfp4_module.NVFP4_MSE_DIVISORS = tuple(float(v) for v in args.act_divisors.split(","))
    rows = []
    for rule in args.rules:
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        for name in targets:
            lin = model.get_submodule(name)
            w = lin.weight.detach().float()
            if args.part != "activations":
                w = fake_weight(w, cfg.weight_block, rule, sw)
            b = None if lin.bias is None else lin.bias.detach().float()
            if args.part == "weights":
                act = None
            elif args.act_rule != "amax":
                act = lambda x, cfg=cfg: act_search(x, cfg, args.act_rule)  # noqa: E731
            else:
                act = sharq_activation(cfg)
            model.set_submodule(name, FakeQuantLinear(w, b, act))
        tq = time.perf_counter() - t0
        res = perplexity(model, tok, tokens, seq_len=args.seq_len, max_tokens=args.tokens)
        rows.append(
            dict(
                preset=args.preset,
                rule=rule,
                sw=sw,
                part=args.part,
                act_rule=args.act_rule,
                act_divisors=args.act_divisors,
                ppl=res.ppl,
                nll=res.nll,
                tokens=res.tokens,
                quantize_s=round(tq, 1),
            )
        )
        print(
            f"{args.preset} {rule:14s} sw={args.sw} {args.part} act={args.act_rule}: "
            f"ppl {res.ppl:.3f} ({res.tokens} tok, q {tq:.1f}s)",
            flush=True,
        )
    if args.out:
        doc = dict(model="SmolLM2-135M-Instruct (Q4_1 GGUF)", caveat=PRETRAINED_CAVEAT, rows=rows)
        Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
