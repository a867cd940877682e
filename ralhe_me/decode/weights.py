"""Fixed-point decoder weights and their compact serialization.

Weights are rounded to multiples of ``2**-shift``; each tensor's integers are zigzagged and
written as exp-Golomb codes of order ``k`` (the ``k`` minimizing that tensor's length, one
byte), so a tensor of small weights costs a few bits per weight.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..entropy.categorical import exp_golomb_bits, exp_golomb_decode, exp_golomb_encode

MAX_ORDER = 24


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


def encode_int_tensors(tensors: Sequence[np.ndarray]) -> bytes:
    """Serialize integer arrays (their shapes are known to the reader)."""
    out = []
    for t in tensors:
        u = _zigzag(np.asarray(t, dtype=np.int64).ravel())
        k = _best_order(u) if u.size else 0
        high = exp_golomb_encode(u >> k)
        low = np.packbits(((u[:, None] >> np.arange(k - 1, -1, -1)[None, :]) & 1).astype(np.uint8).ravel()).tobytes() \
            if k else b""
        out += [bytes([k]), high, low]
    return b"".join(out)


def decode_int_tensors(data: bytes, shapes: Sequence[Tuple[int, ...]]) -> List[np.ndarray]:
    """Inverse of :func:`encode_int_tensors`; raise :class:`WeightFormatError` if inconsistent."""
    pos, out = 0, []
    for shape in shapes:
        count = int(np.prod(shape)) if len(shape) else 1
        if pos >= len(data):
            raise WeightFormatError("weight section ends early")
        k = data[pos]
        pos += 1
        if k >= MAX_ORDER:
            raise WeightFormatError(f"invalid exp-Golomb order {k}")
        try:
            high, used = exp_golomb_decode(data[pos:], count)
        except ValueError as exc:
            raise WeightFormatError(f"corrupt weight codes ({exc})") from None
        pos += used
        low_bytes = (count * k + 7) // 8
        if pos + low_bytes > len(data):
            raise WeightFormatError("weight section ends early")
        u = high << k
        if k:
            bits = np.unpackbits(np.frombuffer(data[pos: pos + low_bytes], dtype=np.uint8))[: count * k]
            u = u | (bits.reshape(count, k).astype(np.int64) << np.arange(k - 1, -1, -1)[None, :]).sum(axis=1)
        pos += low_bytes
        out.append(_unzigzag(u).reshape(shape))
    if pos != len(data):
        raise WeightFormatError(f"{len(data) - pos} unexpected bytes after the weights")
    return out


def state_to_ints(state: Dict[str, torch.Tensor], shift: int) -> List[np.ndarray]:
    return [quantize(state[name], shift) for name in sorted(state)]


def ints_to_state(names: Sequence[str], ints: Sequence[np.ndarray], shift: int) -> Dict[str, torch.Tensor]:
    return {name: dequantize(v, shift) for name, v in zip(sorted(names), ints)}
