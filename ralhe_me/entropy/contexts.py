"""Causal contexts of the latents: the K latents before each one in Morton order at its level,
zero before the start of its segment.  Levels are cut into segments of ``segment_length`` so that
the decoder can advance every segment in lockstep; training uses the same rule so that the rate
estimate is the rate the coder achieves."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor


class LayoutError(ValueError):
    """Level sizes or segment length that do not define a segment layout."""


@dataclass(frozen=True)
class SegmentLayout:
    """Segments of all levels, in coding order (level 0 first, then by position).  Positions are
    given in the concatenation of all levels (level l occupies ``level_offsets[l] : + n_l``)."""

    level_sizes: tuple
    segment_length: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_sizes", tuple(int(n) for n in self.level_sizes))
        if int(self.segment_length) < 1:
            raise LayoutError(f"segment_length must be >= 1, got {self.segment_length}")
        object.__setattr__(self, "segment_length", int(self.segment_length))
        if any(n < 0 for n in self.level_sizes):
            raise LayoutError(f"level sizes must be >= 0, got {self.level_sizes}")

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @cached_property
    def num_segments(self) -> tuple:
        """Per level: ceil(n_l / segment_length)."""
        s = self.segment_length
        return tuple(-(-n // s) for n in self.level_sizes)

    @property
    def total_segments(self) -> int:
        return sum(self.num_segments)

    @property
    def total_size(self) -> int:
        return sum(self.level_sizes)

    @cached_property
    def level_offsets(self) -> np.ndarray:  # int64 [L + 1]
        return np.concatenate([[0], np.cumsum(self.level_sizes, dtype=np.int64)]).astype(np.int64)

    @cached_property
    def segment_levels(self) -> np.ndarray:  # int64 [G]
        return np.repeat(np.arange(self.num_levels, dtype=np.int64), self.num_segments)

    @cached_property
    def segment_lengths(self) -> np.ndarray:  # int64 [G]
        out = []
        for n, g in zip(self.level_sizes, self.num_segments):
            lens = np.full(g, self.segment_length, dtype=np.int64)
            if g:
                lens[-1] = n - (g - 1) * self.segment_length
            out.append(lens)
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    @cached_property
    def segment_starts(self) -> np.ndarray:  # int64 [G], in the concatenation of all levels
        out = [
            off + self.segment_length * np.arange(g, dtype=np.int64)
            for off, g in zip(self.level_offsets[:-1], self.num_segments)
        ]
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    @cached_property
    def coding_order(self) -> np.ndarray:  # int64 [G]
        """Segments in coding order: by decreasing length, ties in layout order (so full segments
        come first in layout order).  The segments still active at any step form a prefix."""
        return np.argsort(-self.segment_lengths, kind="stable").astype(np.int64)

    @cached_property
    def active_counts(self) -> np.ndarray:  # int64 [num_steps]
        """Number of segments longer than t, for each step t."""
        lens = np.sort(self.segment_lengths)
        return (lens.size - np.searchsorted(lens, np.arange(self.num_steps), side="right")).astype(np.int64)

    @property
    def num_steps(self) -> int:
        """Lockstep decoding steps: the longest segment."""
        return int(self.segment_lengths.max()) if self.total_segments else 0


def gather_contexts(values: Tensor, context_size: int, segment_length: int) -> Tensor:
    """values: [..., n] (one level; any dtype, differentiable) -> contexts [..., n, K] where
    ``contexts[..., i, j] = values[..., i - K + j]`` if that index lies in i's segment, else 0."""
    if context_size < 1 or segment_length < 1:
        raise LayoutError(f"context_size and segment_length must be >= 1, got {context_size}, {segment_length}")
    n = values.shape[-1]
    device = values.device
    pos = torch.arange(n, device=device)
    src = pos[:, None] - context_size + torch.arange(context_size, device=device)[None, :]  # [n, K]
    seg_start = torch.div(pos, segment_length, rounding_mode="floor") * segment_length
    valid = src >= seg_start[:, None]
    gathered = values[..., src.clamp(min=0)]  # [..., n, K]
    return torch.where(valid, gathered, torch.zeros((), dtype=values.dtype, device=device))
