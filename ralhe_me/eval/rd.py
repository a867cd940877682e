"""Rate-distortion curve comparisons: Bjontegaard delta rate and delta PSNR, and PSNR at a rate.

Conventions: curve ``b`` is the anchor (reference) and curve ``a`` the codec under test.
``bd_psnr`` is the mean PSNR of ``a`` minus that of ``b`` over the overlapping log-rate interval
(positive: ``a`` is better); ``bd_rate`` is the mean rate change of ``a`` relative to ``b`` at equal
PSNR over the overlapping PSNR interval, in percent (negative: ``a`` needs fewer bits, ``a`` is
better).  Rates may be in any unit (bytes, bits per point), the same for both curves.

Interpolation, ``method``:

* ``"pchip"`` (default): piecewise cubic Hermite interpolation (monotone, as in the JVET/VCEG
  revision of the Bjontegaard metric), integrated exactly; needs >= 2 points per curve and a
  curve whose PSNR strictly increases with the rate (for ``bd_rate``, which interpolates log-rate
  as a function of PSNR);
* ``"cubic"``: the original Bjontegaard metric (VCEG-M33), a least-squares cubic polynomial fitted
  to all points; needs >= 4 points per curve.

Both integrate only over the interval where the curves overlap; curves that do not overlap raise.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

METHODS = ("pchip", "cubic")


class RDCurveError(ValueError):
    """An RD curve that cannot be compared: too few points, non-finite or non-positive rates,
    non-monotone where required, or no overlap with the other curve."""


def _curve(rates: Sequence[float], psnrs: Sequence[float], name: str, min_points: int
           ) -> Tuple[np.ndarray, np.ndarray]:
    """(log rates, PSNRs) float64, sorted by rate."""
    r = np.asarray(rates, dtype=np.float64).ravel()
    p = np.asarray(psnrs, dtype=np.float64).ravel()
    if r.shape != p.shape:
        raise RDCurveError(f"curve {name}: {r.size} rates but {p.size} PSNRs")
    if r.size < min_points:
        raise RDCurveError(f"curve {name} has {r.size} points; this method needs at least {min_points}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(p))):
        raise RDCurveError(f"curve {name} has non-finite values")
    if np.any(r <= 0):
        raise RDCurveError(f"curve {name} has a rate <= 0 (rates are compared in log scale)")
    order = np.argsort(r, kind="stable")
    lr, p = np.log(r[order]), p[order]
    if np.any(np.diff(lr) <= 0):
        raise RDCurveError(f"curve {name} has two points with the same rate")
    return lr, p


def _check_method(method: str) -> int:
    if method not in METHODS:
        raise RDCurveError(f"method must be one of {METHODS}, got {method!r}")
    return 2 if method == "pchip" else 4


def _mean_over(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Mean of the interpolant y(x) over [lo, hi] (x strictly increasing)."""
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator

        f = PchipInterpolator(x, y, extrapolate=False)
        return float(f.integrate(lo, hi)) / (hi - lo)
    coeffs = np.polyfit(x, y, 3)
    integral = np.polyint(coeffs)
    return float(np.polyval(integral, hi) - np.polyval(integral, lo)) / (hi - lo)


def _overlap(xa: np.ndarray, xb: np.ndarray, what: str) -> Tuple[float, float]:
    lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
    if not hi > lo:
        raise RDCurveError(f"the curves do not overlap in {what}")
    return float(lo), float(hi)


def bd_psnr(rates_a: Sequence[float], psnr_a: Sequence[float], rates_b: Sequence[float],
            psnr_b: Sequence[float], method: str = "pchip") -> float:
    """Mean PSNR difference (dB) of curve a over anchor b on their common log-rate interval
    (positive: a is better)."""
    n = _check_method(method)
    xa, ya = _curve(rates_a, psnr_a, "a", n)
    xb, yb = _curve(rates_b, psnr_b, "b", n)
    lo, hi = _overlap(xa, xb, "rate")
    return _mean_over(xa, ya, lo, hi, method) - _mean_over(xb, yb, lo, hi, method)


def _by_psnr(lr: np.ndarray, p: np.ndarray, name: str, method: str) -> Tuple[np.ndarray, np.ndarray]:
    """(PSNRs ascending, log rates) for interpolating log-rate as a function of PSNR."""
    if method == "pchip" and np.any(np.diff(p) <= 0):  # lr ascending: p must ascend with it
        raise RDCurveError(f"curve {name}: PSNR must strictly increase with the rate for pchip bd_rate")
    order = np.argsort(p, kind="stable")
    return p[order], lr[order]


def bd_rate(rates_a: Sequence[float], psnr_a: Sequence[float], rates_b: Sequence[float],
            psnr_b: Sequence[float], method: str = "pchip") -> float:
    """Mean rate difference (percent) of curve a relative to anchor b at equal PSNR on their common
    PSNR interval (negative: a needs fewer bits)."""
    n = _check_method(method)
    xa, ya = _by_psnr(*_curve(rates_a, psnr_a, "a", n), "a", method)
    xb, yb = _by_psnr(*_curve(rates_b, psnr_b, "b", n), "b", method)
    lo, hi = _overlap(xa, xb, "PSNR")
    diff = _mean_over(xa, ya, lo, hi, method) - _mean_over(xb, yb, lo, hi, method)
    return float((np.exp(diff) - 1.0) * 100.0)


def psnr_at_rate(rates: Sequence[float], psnrs: Sequence[float], target: float,
                 method: str = "pchip") -> float:
    """PSNR of the curve at rate ``target``, interpolated in log-rate (pchip, or linear with
    ``method="linear"``); NaN outside the curve's rate range.  Needs >= 2 points."""
    if method not in ("pchip", "linear"):
        raise RDCurveError(f"method must be pchip or linear, got {method!r}")
    x, y = _curve(rates, psnrs, "curve", 2)
    if not (np.isfinite(target) and target > 0):
        raise RDCurveError(f"target rate must be finite and > 0, got {target}")
    t = float(np.log(target))
    if t < x[0] or t > x[-1]:
        return float("nan")
    if method == "linear":
        return float(np.interp(t, x, y))
    from scipy.interpolate import PchipInterpolator

    return float(PchipInterpolator(x, y)(t))
