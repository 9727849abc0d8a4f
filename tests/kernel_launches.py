"""A Triton kernel stand-in that records each launch's keyword arguments (which tiling, decode, PDL)."""

from __future__ import annotations


class RecordingKernel:
    """Wraps `kernel`; `kernel[grid](*args, **kwargs)` launches it and appends kwargs to `log`."""

    def __init__(self, kernel, log: list) -> None:
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(kwargs)
            return self.kernel[grid](*args, **kwargs)

        return launch
