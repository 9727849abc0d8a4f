"""Argument helpers shared by every `sharq` command: argparse types, help text wrapping, and the
error a command line that cannot work raises."""

from __future__ import annotations

import argparse
import textwrap

__all__ = ["UsageError", "paragraphs", "positive_int", "csv_list", "csv_or_empty"]


class UsageError(Exception):
    """A command line that cannot work as given: exit code 2, like argparse's own errors."""


def paragraphs(text: str, width: int = 96) -> str:
    """`text` wrapped to `width`, paragraphs (separated by blank lines) kept — for help descriptions."""
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in text.split("\n\n"))


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def csv_or_empty(text: str) -> tuple[str, ...]:
    """argparse type: a comma-separated list, blanks dropped; "" is the empty list."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def csv_list(text: str) -> tuple[str, ...]:
    """argparse type: a non-empty comma-separated list."""
    items = csv_or_empty(text)
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items
