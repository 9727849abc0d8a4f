"""Every benchmark script imports on the CPU (no stale name from a refactor survives until a GPU run)
and has a `main()` when it runs as a script; the harness's pure parts compute what they say."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))


@pytest.fixture(scope="module")
def bench_path():
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_imports(bench_path, name):
    pytest.importorskip("matplotlib")
    module = importlib.import_module(name)
    if '__name__ == "__main__"' in (BENCH / f"{name}.py").read_text():
        assert callable(getattr(module, "main", None)), f"{name}.py runs as a script but has no main()"


def test_harness_rules(bench_path):
    harness = importlib.import_module("harness")
    assert harness.copies_beyond_l2(150_000_000) == 1
    assert harness.copies_beyond_l2(50_000_000) == 3 and harness.copies_beyond_l2(49_999_999) == 4
    assert harness.gpu_tag("NVIDIA H100 80GB HBM3") == "h100" and harness.gpu_tag("NVIDIA H200") == "h200"
    env = harness.environment("cpu")
    assert env["gpu"] == "cpu" and env["torch"] and env["sharq"]
    calls = []

    def run(tiles):
        calls.append(tiles["n"])
        if tiles["n"] == 2:
            raise RuntimeError("out of resources")
        return tiles["n"] * 10

    rows, best = harness.best_tiling(
        [{"n": 1}, {"n": 2}, {"n": 3}], run=run, time=lambda t: 5.0 - t["n"], check=lambda y: y / 100
    )
    assert calls == [1, 2, 3] and [r["tiles"]["n"] for r in rows] == [1, 3]
    assert best == {"tiles": {"n": 3}, "ms": 2.0, "err": 0.3}
