"""Fixtures of the vLLM serving tests: the checkpoints, written once per session (serving_helpers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving_helpers import save_tiny


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory) -> Path:
    """The packaged SmolLM2-135M-Instruct, written by `sharq quantize` (default preset, tensor granularity)."""
    out = tmp_path_factory.mktemp("ckpt") / "smollm2-sharq"
    done = subprocess.run(
        [sys.executable, "-m", "sharq", "quantize", "--out", str(out), "--device", "cpu", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """A function kind -> folder of a tiny quantized model of that architecture (built once each)."""
    made: dict[str, Path] = {}

    def get(kind: str, **overrides) -> Path:
        key = kind + json.dumps(overrides, sort_keys=True)
        if key not in made:
            made[key] = save_tiny(kind, tmp_path_factory.mktemp("tiny") / kind, **overrides)
        return made[key]

    return get
