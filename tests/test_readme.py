"""The README's Python example runs as written, on a tiny local model and the CPU (its model path,
output folder and `.cuda()` are the only substitutions), and its layer comment holds."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .tiny_models import tiny_folder

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python") :]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_readme_python_example_runs(tmp_path, capsys):
    code = _python_block()
    assert '"path/to/model"' in code and '"model-sharq"' in code  # what the substitution relies on
    folder = tiny_folder(tmp_path / "model")
    code = (
        code.replace('"path/to/model"', repr(str(folder)))
        .replace('"model-sharq"', repr(str(tmp_path / "model-sharq")))
        .replace(".cuda()", "")
    )
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    out = capsys.readouterr().out
    assert "sharq: sharq-nvfp4" in out  # the quantize_ summary line
    y = scope["y"]
    assert y.shape == (8, 1024) and y.dtype == torch.bfloat16  # the comment in the example
    assert (tmp_path / "model-sharq" / "config.json").is_file()
    import sharq

    again = sharq.load_quantized(tmp_path / "model-sharq")
    ids = torch.tensor([[5, 9, 17, 33]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, scope["model"](ids).logits)
