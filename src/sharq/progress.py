"""Progress bars on long loops (quantizing a model, writing and reading a checkpoint).

`with_progress(items, enabled=None)` shows a tqdm bar on stderr only when stderr is a terminal;
`enabled=True` forces it, `enabled=False` turns it off. Without tqdm installed it shows nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["with_progress"]

T = TypeVar("T")


def with_progress(
    items: Iterable[T], *, enabled: bool | None, desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[T] | Iterable[T]:
    """`items`, wrapped in a progress bar when `enabled` (None: when stderr is a terminal)."""
    if enabled is False:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar
        return items
    # tqdm's disable=None turns the bar off when the output is not a terminal
    return tqdm(
        items,
        desc=desc,
        total=total,
        unit=unit,
        disable=None if enabled is None else False,
        leave=False,
        dynamic_ncols=True,
    )
