"""The `sharq` command line: `main` (entry point), `build_parser`.

main.py            the parser, `main`, and the eval / inspect / presets / layer-demo commands
model_commands.py  quantize, generate, bench (commands that open a model)
layer_demo.py      the synthetic-layer comparison `sharq layer-demo` runs
args.py            argparse types and the usage error shared by every command
"""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
