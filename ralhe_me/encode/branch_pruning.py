"""Which attributes keep their 4-layer decoder branch: the ones whose branch pays for its bits.

Each attribute's output is its skip path (the classical reconstruction of its latents) plus a
4-layer branch that learns what the skip path misses. Where the branch learns little (a short
schedule; a scene whose attributes hold no structure it can use) its weights still cost about a
bit each: on the 50k default scene (fast preset) the trained branches moved rendering PSNR by
0.002 dB and took 2.2-2.9 kB of 176-203 kB files. So after the weight step is chosen, an
attribute's branch is pruned (its weights set to zero) when that lowers D + lambda * bits / N,
and a pruned branch costs one bit of a slice mask in the decoders section (decode/weights.py).

The attributes' outputs are separable (each has its own slice of every stacked decoder tensor),
so the decoded attributes of any set of pruned branches are put together from two decodes: all
branches kept, all pruned. Encoder only.
"""
from __future__ import annotations

from typing import Callable, FrozenSet, List, Sequence, Tuple

import numpy as np

SKIP_SUFFIXES = (".skip", ".skip_bias")


class BranchPruningError(ValueError):
    """The decoder tensors do not match the attributes they are said to decode."""


def branch_slices(names: Sequence[str], num_sh: int) -> List[Tuple[int, int]]:
    """(tensor index, first attribute) of every 4-layer branch tensor among the decoder
    parameters ``names`` (file order): slice ``s`` of such a tensor belongs to attribute
    ``first + s`` (the SH triplets are attributes 0..num_sh-1, opacity is ``num_sh``)."""
    out = []
    for i, name in enumerate(names):
        if name.endswith(SKIP_SUFFIXES):
            continue
        group = name.split(".", 1)[0]
        if group not in ("sh", "opacity"):
            raise BranchPruningError(f"decoder tensor {name!r} belongs to no attribute group")
        out.append((i, 0 if group == "sh" else num_sh))
    return out


def pruned_ints(ints: Sequence[np.ndarray], slices: Sequence[Tuple[int, int]],
                pruned: FrozenSet[int]) -> List[np.ndarray]:
    """The integer decoder tensors with the branches of the ``pruned`` attributes set to zero."""
    out = list(ints)
    for index, first in slices:
        rows = [a - first for a in pruned if 0 <= a - first < out[index].shape[0]]
        if rows:
            out[index] = out[index].copy()
            out[index][rows] = 0
    return out


def combine(kept: Tuple[np.ndarray, np.ndarray],  # (SH [N, K, 3], opacity logits [N]), all branches
            pruned: Tuple[np.ndarray, np.ndarray],  # the same with every branch pruned
            attributes: FrozenSet[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Decoded attributes with the branches of ``attributes`` pruned (index K: opacity)."""
    sh, opacity = kept
    num_sh = sh.shape[1]
    sh_rows = sorted(a for a in attributes if a < num_sh)
    if sh_rows:
        sh = sh.copy()
        sh[:, sh_rows] = pruned[0][:, sh_rows]
    if num_sh in attributes:
        opacity = pruned[1]
    return sh, opacity


def choose_pruned(cost: Callable[[FrozenSet[int]], float], num_attributes: int) -> FrozenSet[int]:
    """The set of attributes to prune: each attribute's branch is tried alone; then no pruning,
    the set of those that lowered ``cost`` alone and the best single one are compared, the
    cheapest winning (bits are not separable: the tensors share one exp-Golomb order)."""
    none = frozenset()
    base = cost(none)
    single = {a: cost(frozenset([a])) for a in range(num_attributes)}
    paying = frozenset(a for a, c in single.items() if c < base)
    if not paying:
        return none
    best = min(paying, key=single.get)
    costs = {none: base, frozenset([best]): single[best]}
    if len(paying) > 1:
        costs[paying] = cost(paying)
    return min(costs, key=lambda c: (costs[c], len(c)))
