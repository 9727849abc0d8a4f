"""Runs vLLM on a sharq checkpoint folder in its own process and prints one JSON document.

The tests start it with `python tests_vllm/runner.py MODE FOLDER [options]` (one engine per
process: vLLM's global state is not meant to host several engines one after another).

  layers   in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0): every sharq layer of vLLM's model
           is fed a fixed input, and its output compared bit for bit with the checkpoint's
           `SharqLinear` modules (sharq.load_quantized, served with token granularity), side by
           side for a fused layer; with --prompts, the last-position top-20 logprobs of vLLM and
           of load_quantized's model (each prompt alone and all prompts in one call to vLLM;
           load_quantized's with the checkpoint's operand and with "bf16-sum"); with --generate N,
           N greedy tokens (and text).
  logprobs the last-position top-20 logprobs of --prompts, with --tp ranks.
  load     build the engine only; a refusal is reported as {"error": type, "message": str}.
  refusals FOLDER is a JSON list of {"folder", "quantization"}: each is built in turn (refusals
           happen while vLLM validates its config, before any engine exists) and reported as
           `load` does; the first one that builds an engine ends the run ({"loaded": folder}).

Prompts are token ids (a tiny random model has no tokenizer): --prompts '[[1, 5, 9], [3, 4]]'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("layers", "logprobs", "load", "refusals"))
    p.add_argument("folder")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--prompts", default="[]")
    p.add_argument("--generate", type=int, default=0)
    p.add_argument("--tokenizer", action="store_true", help="the folder has a tokenizer (decode text)")
    p.add_argument("--quantization", default=None, help="vLLM's quantization argument (default: config.json's)")
    return p.parse_args()


def _sharq_layers(model) -> dict:
    """vLLM's layers that run sharq's method, by name (runs inside the worker)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "sharq_weights")}


def _as_token_granularity(model, **changes) -> None:
    """Serve `model` (sharq.load_quantized) as vLLM does: token granularity in every SharqLinear
    and in the preparations they share (plus any other `SharqConfig` field in `changes`)."""
    from sharq import SharqLinear

    for m in model.modules():
        if isinstance(m, SharqLinear):
            m.config = m.config.replace(granularity="token", **changes)
            if m.shared_input is not None:
                m.shared_input.config = m.config


def _top_logprobs(outputs) -> list[dict[str, float]]:
    return [{str(t): lp.logprob for t, lp in o.outputs[0].logprobs[0].items()} for o in outputs]


def _hf_logprobs(model, prompts, dtype) -> list[dict[str, float]]:
    import torch

    out = []
    for ids in prompts:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float()
        lp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(lp, 20)
        out.append({str(int(i)): float(v) for v, i in zip(top.values, top.indices)})
    return out


def layers(args, llm) -> dict:
    import torch

    import sharq

    found = llm.apply_model(_sharq_layers)[0]
    hf = sharq.load_quantized(args.folder, dtype=llm.llm_engine.model_config.dtype)
    _as_token_granularity(hf)
    modules = dict(hf.named_modules())
    g = torch.Generator().manual_seed(0)
    report = {}
    for name, layer in found.items():
        x = (torch.randn(5, layer.sharq_in_features, generator=g) * 2).to(hf.dtype)  # (M, K)
        x[:, 3] *= 30.0  # an outlier column
        with torch.no_grad():
            got = layer.quant_method.apply(layer, x, getattr(layer, "bias", None))
            want = torch.cat([modules[n](x) for n in layer.quant_method.names], dim=-1)
        report[name] = {
            "logical": layer.quant_method.names,
            "shape": list(got.shape),
            "equal": bool(torch.equal(got, want)),
            "max_abs_diff": float((got.float() - want.float()).abs().max()),
        }
    result = {"layers": report}
    prompts = json.loads(args.prompts)
    if prompts:
        # one prompt per call: operand auto gives exact for a prompt of <= 16 tokens
        result["hf_logprobs"] = _hf_logprobs(hf, prompts, hf.dtype)
        # what a batched vLLM step of > 16 rows computes under auto
        _as_token_granularity(hf, operand="bf16-sum")
        result["hf_logprobs_bf16_sum"] = _hf_logprobs(hf, prompts, hf.dtype)
    return result


def refusals(args) -> None:
    from vllm import LLM

    report = []
    for case in json.loads(open(args.folder).read()):
        kwargs = dict(model=case["folder"], enforce_eager=True, skip_tokenizer_init=True, max_model_len=256)
        if case.get("quantization"):
            kwargs["quantization"] = case["quantization"]
        try:
            LLM(**kwargs)
        except Exception as err:  # what the user sees
            report.append({"folder": case["folder"], "error": type(err).__name__, "message": str(err)})
            continue
        report.append({"folder": case["folder"], "loaded": True})
        break
    print("RESULT " + json.dumps(report), flush=True)
    os._exit(0)


def main() -> None:
    args = _args()
    if args.mode == "refusals":
        refusals(args)
    from vllm import LLM, SamplingParams

    kwargs = dict(
        model=args.folder,
        enforce_eager=True,
        skip_tokenizer_init=not args.tokenizer,
        max_model_len=256,
        tensor_parallel_size=args.tp,
        dtype=args.dtype,
        seed=0,
    )
    if args.quantization:
        kwargs["quantization"] = args.quantization
    try:
        llm = LLM(**kwargs)
    except Exception as err:  # a refusal: what the user sees
        if args.mode != "load":
            raise
        print("RESULT " + json.dumps({"error": type(err).__name__, "message": str(err)}), flush=True)
        os._exit(0)
    result = layers(args, llm) if args.mode == "layers" else {}
    prompts = [{"prompt_token_ids": ids} for ids in json.loads(args.prompts)]
    if prompts:
        params = SamplingParams(max_tokens=1, temperature=0, logprobs=20, detokenize=False)
        # each prompt alone (a step of its own tokens), then all of them submitted together (one
        # step over every prompt's tokens: under operand auto the row count picks the operand)
        result["vllm_logprobs"] = [_top_logprobs(llm.generate([p], params, use_tqdm=False))[0] for p in prompts]
        result["vllm_logprobs_batched"] = _top_logprobs(llm.generate(prompts, params, use_tqdm=False))
    if args.generate:
        params = SamplingParams(max_tokens=args.generate, temperature=0, detokenize=args.tokenizer)
        outs = llm.generate(prompts[:1], params, use_tqdm=False)
        result["generated"] = {"token_ids": list(outs[0].outputs[0].token_ids), "text": outs[0].outputs[0].text}
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip vLLM's teardown (seconds of worker shutdown); the result is out


if __name__ == "__main__":
    main()
