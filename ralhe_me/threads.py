"""Torch intra-op thread control shared by the encoder, the decoder and finetuning.

A neutral home: decoding runs its float networks with a fixed thread count (so its outputs equal
the encoder's reconstruction), and the latent coder, the decoder and finetuning all need the same
switch without importing one another.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch


@contextmanager
def intra_op_threads(num_threads: Optional[int]) -> Iterator[None]:
    """Run with ``num_threads`` torch intra-op threads (None: leave as is), then restore."""
    old = torch.get_num_threads()
    if num_threads is not None and num_threads != old:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
