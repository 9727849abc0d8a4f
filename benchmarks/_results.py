"""Where the benchmark scripts write their JSON: benchmarks/results/<stem>-<gpu tag>.json."""

from __future__ import annotations

import json
from pathlib import Path


def gpu_tag(gpu: str) -> str:
    """'h100' for an H100, else the last word of the device name, lower-case ('cpu' stays 'cpu')."""
    return "h100" if "H100" in gpu else gpu.split()[-1].lower()


def write_json(doc: dict, out_dir: str | Path, stem: str) -> Path:
    """Write `doc` (which names its "gpu") to <out_dir>/<stem>-<gpu tag>.json and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}-{gpu_tag(doc['gpu'])}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path
