"""Merge evaluation documents written by parallel `sharq eval` processes into one, and rewrite its
Markdown table and PNG.

usage: python tools/merge_eval.py OUT_STEM BASE.json OTHER.json ...
       (writes OUT_STEM.json, OUT_STEM.md, OUT_STEM.png; later documents replace the same runs)
"""

from __future__ import annotations

import json
import sys

from sharq.eval.report import merge_docs, write_report


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    stem, paths = argv[0], argv[1:]
    docs = [json.load(open(p)) for p in paths]
    merged = merge_docs(docs[0], *docs[1:])
    with open(f"{stem}.json", "w") as fh:
        json.dump(merged, fh, indent=1)
    write_report(merged, f"{stem}.md", f"{stem}.png")
    print(f"{stem}.json: {len({(r['preset'], r['granularity']) for r in merged['rows']})} runs")


if __name__ == "__main__":
    main(sys.argv[1:])
