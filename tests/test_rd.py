"""Bjontegaard metrics and PSNR-at-rate on synthetic curves with known answers, sign conventions,
and errors on curves that cannot be compared."""
import numpy as np
import pytest

from ralhe_me.eval.rd import RDCurveError, bd_psnr, bd_rate, psnr_at_rate

RATES = np.array([100.0, 200.0, 400.0, 800.0, 1600.0])


def log_linear(rates, offset=30.0, slope=3.0):
    """PSNR = offset + slope * log2(rate)."""
    return offset + slope * np.log2(rates)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_psnr_shift(method):
    a = log_linear(RATES)
    b = a + 1.0  # b is 1 dB better everywhere
    assert bd_psnr(RATES, a, RATES, b, method=method) == pytest.approx(-1.0, abs=1e-9)
    assert bd_psnr(RATES, b, RATES, a, method=method) == pytest.approx(1.0, abs=1e-9)
    # on a log-linear curve, +1 dB is a rate factor 2^(-1/3): b needs that much less
    assert bd_rate(RATES, b, RATES, a, method=method) == pytest.approx((2 ** (-1 / 3) - 1) * 100, abs=1e-6)
    assert bd_rate(RATES, a, RATES, b, method=method) == pytest.approx((2 ** (1 / 3) - 1) * 100, abs=1e-6)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_rate_scaling(method):
    """b reaches the same PSNRs with 80% of a's rate: a spends 25% more than b, b 20% less than a."""
    psnr = np.array([28.0, 30.5, 32.0, 34.5, 35.0])
    assert bd_rate(RATES, psnr, 0.8 * RATES, psnr, method=method) == pytest.approx(25.0, abs=1e-9)
    assert bd_rate(0.8 * RATES, psnr, RATES, psnr, method=method) == pytest.approx(-20.0, abs=1e-9)
    assert bd_psnr(0.8 * RATES, psnr, RATES, psnr, method=method) > 0  # b better at equal rate


def test_cubic_matches_analytic_integral():
    """For exact cubics in log-rate the original Bjontegaard fit is exact; the overlap mean is
    checked against dense trapezoidal integration."""
    def fa(x):
        return 20 + 2.0 * x - 0.1 * x ** 2 + 0.004 * x ** 3

    def fb(x):
        return 21 + 1.5 * x - 0.05 * x ** 2 + 0.002 * x ** 3

    ra = np.exp(np.linspace(4.0, 8.0, 6))
    rb = np.exp(np.linspace(5.0, 9.0, 5))
    got = bd_psnr(ra, fa(np.log(ra)), rb, fb(np.log(rb)), method="cubic")
    x = np.linspace(5.0, 8.0, 200001)
    want = np.trapz(fa(x) - fb(x), x) / 3.0
    assert got == pytest.approx(want, abs=1e-6)
    # pchip interpolates rather than fits, so it is close but not equal here
    assert bd_psnr(ra, fa(np.log(ra)), rb, fb(np.log(rb))) == pytest.approx(want, abs=0.05)


def test_overlap_only_is_used():
    a = log_linear(RATES)
    wide = np.concatenate([[10.0], RATES, [1e5]])
    b = np.concatenate([[0.0], log_linear(RATES) + 2.0, [99.0]])  # wild points outside a's range
    # bd_psnr integrates over a's rate range, where only b's ends bend the pchip a little
    assert bd_psnr(RATES, a, wide, b) == pytest.approx(-2.0, abs=0.5)


def test_psnr_at_rate():
    p = log_linear(RATES)
    for r, v in zip(RATES, p):
        assert psnr_at_rate(RATES, p, r) == pytest.approx(v)
    # interpolation is in log-rate: the geometric mean of two rates lies halfway in PSNR
    mid = np.sqrt(200.0 * 400.0)
    assert psnr_at_rate(RATES, p, mid, method="linear") == pytest.approx((p[1] + p[2]) / 2)
    assert psnr_at_rate(RATES, p, mid) == pytest.approx((p[1] + p[2]) / 2)
    assert np.isnan(psnr_at_rate(RATES, p, 50.0))
    assert np.isnan(psnr_at_rate(RATES, p, 2000.0))
    # unsorted input is fine
    order = np.array([3, 0, 4, 1, 2])
    assert psnr_at_rate(RATES[order], p[order], 300.0) == pytest.approx(psnr_at_rate(RATES, p, 300.0))


def test_errors():
    p = log_linear(RATES)
    with pytest.raises(RDCurveError, match="overlap"):
        bd_psnr(RATES, p, RATES * 100, p)
    with pytest.raises(RDCurveError, match="overlap"):
        bd_rate(RATES, p, RATES, p + 50)
    with pytest.raises(RDCurveError, match="at least 4"):
        bd_psnr(RATES[:3], p[:3], RATES, p, method="cubic")
    with pytest.raises(RDCurveError, match="at least 2"):
        bd_rate(RATES[:1], p[:1], RATES, p)
    with pytest.raises(RDCurveError, match="at least 2"):
        psnr_at_rate(RATES[:1], p[:1], 100.0)
    with pytest.raises(RDCurveError, match="strictly increase"):
        bd_rate(RATES, p[[0, 2, 1, 3, 4]], RATES, p)
    with pytest.raises(RDCurveError, match="same rate"):
        bd_psnr(np.array([100, 100, 200.0]), p[:3], RATES, p)
    with pytest.raises(RDCurveError, match="<= 0"):
        bd_psnr(np.array([0, 100, 200.0]), p[:3], RATES, p)
    with pytest.raises(RDCurveError, match="non-finite"):
        bd_psnr(RATES, np.array([30, np.nan, 31, 32, 33]), RATES, p)
    with pytest.raises(RDCurveError, match="method"):
        bd_psnr(RATES, p, RATES, p, method="linear")
    with pytest.raises(RDCurveError, match="PSNRs"):
        bd_psnr(RATES, p[:4], RATES, p)


def test_pchip_integrates_the_interpolant_over_the_overlap():
    from scipy.interpolate import PchipInterpolator

    ra = np.array([50.0, 120.0, 300.0, 900.0, 2000.0])
    pa = np.array([25.0, 29.0, 31.0, 31.5, 33.0])
    rb = np.array([80.0, 150.0, 700.0, 3000.0])
    pb = np.array([24.0, 28.5, 32.5, 33.0])
    lo, hi = np.log(80.0), np.log(2000.0)
    x = np.linspace(lo, hi, 400001)
    fa = PchipInterpolator(np.log(ra), pa)
    fb = PchipInterpolator(np.log(rb), pb)
    want = np.trapz(fa(x) - fb(x), x) / (hi - lo)
    assert bd_psnr(ra, pa, rb, pb) == pytest.approx(want, abs=1e-6)
    # bd_rate: log-rate as a function of PSNR over the common PSNR range [25, 33]
    ga = PchipInterpolator(pa, np.log(ra))
    gb = PchipInterpolator(pb, np.log(rb))
    y = np.linspace(25.0, 33.0, 400001)
    want_rate = (np.exp(np.trapz(ga(y) - gb(y), y) / 8.0) - 1) * 100
    assert bd_rate(ra, pa, rb, pb) == pytest.approx(want_rate, abs=1e-5)
