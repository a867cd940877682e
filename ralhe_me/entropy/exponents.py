"""Half-octave exponents: signed integers ``e`` with ``|e| <= 8`` that stand for the factor
``2^(e / 2)``, coded by the static categorical coder in one context (symbols ``e + 8``).

Why one module: the gain map (one exponent per voxel, ``decode/gain_map.py``) and the covariance
section's per-Gaussian step exponents (``geometry/covariance_code.py``) share the coding and the
factor; the native decoder's ``src/exponents.{h,cpp}`` mirrors it.
"""
from __future__ import annotations

import numpy as np

from .categorical import decode_categorical, encode_categorical

EXPONENT_LIMIT = 8  # |e| <= 8: factors from 1/16 to 16
EXPONENT_SYMBOLS = 2 * EXPONENT_LIMIT + 1


def exponent_gains(exponents: np.ndarray) -> np.ndarray:  # [M] int -> [M] float64
    """``2^(e / 2)``: exact in float64 and float32 alike (the native gain_of_exponent)."""
    return np.power(2.0, np.asarray(exponents, dtype=np.int64) / 2.0)


def encode_exponents(exponents: np.ndarray) -> bytes:  # [M] int in [-8, 8]; callers check the range
    return encode_categorical(np.asarray(exponents, dtype=np.int64).ravel() + EXPONENT_LIMIT, EXPONENT_SYMBOLS)


def decode_exponents(data: bytes) -> np.ndarray:  # -> [M] int64; CategoricalError on a bad stream
    return decode_categorical(bytes(data), EXPONENT_SYMBOLS) - EXPONENT_LIMIT
