"""Argument types shared by the command-line tools (``ralhe``, ``ralhe finetune``, ``ralhe fit``).
Kept free of heavy imports so that ``ralhe --help`` stays fast."""
from __future__ import annotations

import argparse


def int_at_least(text: str, low: int, what: str) -> int:
    """``text`` as an integer >= ``low``, else an argparse error naming ``what`` it must be."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a {what} integer, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be a {what} integer, got {text}")
    return v


def positive_int(text: str) -> int:
    return int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    return int_at_least(text, 0, "non-negative")
