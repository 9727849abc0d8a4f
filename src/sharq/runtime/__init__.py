"""Decode-time code: the CUDA-graph static decoder, its decode attention, text generation and the
quick timings of `sharq bench`.

  static_decode.py     StaticDecoder: prefill + greedy decode steps in one captured CUDA graph
  decode_attention.py  one-token grouped-query attention without per-head K/V copies
  generation.py        generate_text: tokenizer + model.generate / StaticDecoder, what `sharq generate` runs
  timing.py            bench_linear / bench_model: the wall-clock medians of `sharq bench`
"""

from .static_decode import StaticDecoder

__all__ = ["StaticDecoder"]
