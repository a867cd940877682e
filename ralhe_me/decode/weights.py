"""Fixed-point decoder weights and their compact serialization.

Weights are rounded to multiples of ``2**-shift``; each tensor's integers are zigzagged and
written as exp-Golomb codes of order ``k`` (the ``k`` minimizing that tensor's length, one
byte), so a tensor of small weights costs a few bits per weight.

A tensor stacked over attributes ``[A, ...]`` whose slices are partly all zero (a decoder branch
the encoder pruned: see encode/branch_pruning.py) may instead be written masked: the order byte
with :data:`MASKED` set, a varint ``S`` (slices), ``ceil(S / 8)`` bytes of the nonzero slices'
mask (slice 0 in the first byte's top bit, padding bits zero), then the codes of the nonzero
slices only. Each tensor takes the shorter form (the plain one on a tie), so a zero slice costs
one bit of the mask instead of a bit per weight.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..entropy.categorical import (CorruptStreamError, exp_golomb_bits, exp_golomb_decode, exp_golomb_encode,
                                   read_varint, write_varint)

MAX_ORDER = 24
MASKED = 0x80  # order-byte flag: a mask of the tensor's nonzero slices follows
MAX_SLICE_VARINT_BYTES = 9  # values below 2**63
MAX_MASKED_COUNT = 1 << 28  # a masked tensor's zeros are not in the section: bound what a reader allocates


class WeightFormatError(ValueError):
    """A weight section is truncated or inconsistent with the header."""


def quantize(values: torch.Tensor, shift: int) -> np.ndarray:  # -> int64, same shape
    return torch.round(values.detach().double() * (2.0 ** shift)).to(torch.int64).numpy()


def dequantize(ints: np.ndarray, shift: int) -> torch.Tensor:
    return torch.from_numpy(ints.astype(np.float64) * (2.0 ** -shift)).float()


def _zigzag(v: np.ndarray) -> np.ndarray:
    return np.where(v >= 0, 2 * v, -2 * v - 1).astype(np.int64)


def _unzigzag(u: np.ndarray) -> np.ndarray:
    return np.where(u % 2 == 0, u // 2, -(u + 1) // 2).astype(np.int64)


def _best_order(u: np.ndarray) -> int:
    costs = [int((exp_golomb_bits(u >> k) + k).sum()) for k in range(MAX_ORDER)]
    return int(np.argmin(costs))


def _codes(u: np.ndarray) -> Tuple[int, bytes]:
    """(order k, exp-Golomb codes of ``u >> k`` then the k low bits of each) of zigzagged values ``u``."""
    k = _best_order(u) if u.size else 0
    high = exp_golomb_encode(u >> k)
    low = np.packbits(((u[:, None] >> np.arange(k - 1, -1, -1)[None, :]) & 1).astype(np.uint8).ravel()).tobytes() \
        if k else b""
    return k, high + low


def _masked(t: np.ndarray) -> Optional[bytes]:
    """The masked form of ``t`` (its slices along axis 0), or None when no slice is all zero."""
    if t.size == 0:
        return None
    slices = t.shape[0] if t.ndim >= 2 else 1
    rows = t.reshape(slices, -1)
    nonzero = rows.any(axis=1)
    if nonzero.all():
        return None
    k, codes = _codes(_zigzag(rows[nonzero].ravel()))
    return bytes([k | MASKED]) + write_varint(slices) + np.packbits(nonzero).tobytes() + codes


def encode_int_tensors(tensors: Sequence[np.ndarray]) -> bytes:
    """Serialize integer arrays (their shapes are known to the reader)."""
    out = []
    for t in tensors:
        t = np.asarray(t, dtype=np.int64)
        k, codes = _codes(_zigzag(t.ravel()))
        plain = bytes([k]) + codes
        masked = _masked(t)
        out.append(masked if masked is not None and len(masked) < len(plain) else plain)
    return b"".join(out)


def decode_int_tensors(data: bytes, shapes: Sequence[Tuple[int, ...]]) -> List[np.ndarray]:
    """Inverse of :func:`encode_int_tensors`; raise :class:`WeightFormatError` if inconsistent."""
    pos, out = 0, []
    for shape in shapes:
        count = int(np.prod(shape)) if len(shape) else 1
        if pos >= len(data):
            raise WeightFormatError("weight section ends early")
        k = data[pos] & ~MASKED
        masked = bool(data[pos] & MASKED)
        pos += 1
        if k >= MAX_ORDER:
            raise WeightFormatError(f"invalid exp-Golomb order {k}")
        nonzero, coded = None, count
        if masked:
            start = pos
            try:
                slices, pos = read_varint(data, pos)
            except CorruptStreamError as exc:
                raise WeightFormatError(f"bad slice count ({exc})") from None
            if pos - start > MAX_SLICE_VARINT_BYTES:  # (the native reader's integers stay exact)
                raise WeightFormatError("the slice count's varint is too long")
            if count > MAX_MASKED_COUNT:
                raise WeightFormatError(f"a masked tensor of {count} weights (at most {MAX_MASKED_COUNT})")
            if not 1 <= slices <= count or count % slices:
                raise WeightFormatError(f"a tensor of {count} weights cannot have {slices} slices")
            mask_bytes = (slices + 7) // 8
            if pos + mask_bytes > len(data):
                raise WeightFormatError("weight section ends early")
            bits = np.unpackbits(np.frombuffer(data[pos: pos + mask_bytes], dtype=np.uint8))
            if bits[slices:].any():
                raise WeightFormatError("the slice mask has bits set past its last slice")
            nonzero = bits[:slices].astype(bool)
            coded = int(nonzero.sum()) * (count // slices)
            pos += mask_bytes
        try:
            high, used = exp_golomb_decode(data[pos:], coded)
        except ValueError as exc:
            raise WeightFormatError(f"corrupt weight codes ({exc})") from None
        pos += used
        low_bytes = (coded * k + 7) // 8
        if pos + low_bytes > len(data):
            raise WeightFormatError("weight section ends early")
        u = high << k
        if k:
            bits = np.unpackbits(np.frombuffer(data[pos: pos + low_bytes], dtype=np.uint8))[: coded * k]
            u = u | (bits.reshape(coded, k).astype(np.int64) << np.arange(k - 1, -1, -1)[None, :]).sum(axis=1)
        pos += low_bytes
        values = _unzigzag(u)
        if nonzero is not None:
            full = np.zeros((len(nonzero), count // len(nonzero)), dtype=np.int64)
            full[nonzero] = values.reshape(-1, full.shape[1])
            values = full
        out.append(values.reshape(shape))
    if pos != len(data):
        raise WeightFormatError(f"{len(data) - pos} unexpected bytes after the weights")
    return out


def state_to_ints(state: Dict[str, torch.Tensor], shift: int) -> List[np.ndarray]:
    return [quantize(state[name], shift) for name in sorted(state)]


def ints_to_state(names: Sequence[str], ints: Sequence[np.ndarray], shift: int) -> Dict[str, torch.Tensor]:
    return {name: dequantize(v, shift) for name, v in zip(sorted(names), ints)}
