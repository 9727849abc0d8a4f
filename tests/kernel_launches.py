"""A Triton kernel stand-in that records each launch's keyword arguments (which tiling, decode, PDL)."""

from __future__ import annotations


class RecordingKernel:
    """Wraps `kernel`; `kernel[grid](*args, **kwargs)` launches it and appends kwargs to `log` (and
    the grid to `grids`, when given)."""

    def __init__(self, kernel, log: list, grids: list | None = None) -> None:
        self.kernel, self.log, self.grids = kernel, log, grids

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(kwargs)
            if self.grids is not None:
                self.grids.append(tuple(grid))
            return self.kernel[grid](*args, **kwargs)

        return launch
