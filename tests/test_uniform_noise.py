"""The rounding's stand-in noise (train/quantization.py, train/csrc/uniform_noise.cpp): the native
kernel gives exactly its numpy reference's numbers on any thread count; the numbers are uniform on
[-1/2, 1/2) without correlation between neighbours; the seed comes from the generator; the
gradient passes unchanged."""
import numpy as np
import pytest
import torch

from ralhe_me.train import quantization
from ralhe_me.train.quantization import counter_uniform, noisy

needs_native = pytest.mark.skipif(quantization.native_module() is None, reason="_uniform_noise_cpu is not built")


@needs_native
def test_the_kernel_gives_the_references_numbers_on_any_thread_count():
    x = torch.randn(5, 70001)  # not a multiple of the kernel's chunk
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(noisy(x, torch.Generator().manual_seed(3), native=True))
    finally:
        torch.set_num_threads(before)
    reference = noisy(x, torch.Generator().manual_seed(3), native=False)
    assert all(torch.equal(r, reference) for r in runs)


def test_the_reference_formula_for_known_values():
    """SplitMix64 of seed 0's first counter (0x9E3779B97F4A7C15) is 0xE220A8397B1DCDAF: its top
    24 bits 0xE220A8 over 2**24, less 1/2."""
    assert counter_uniform(0, 1)[0] == np.float32(0xE220A8 / 2 ** 24 - 0.5)


def test_the_noise_is_uniform_and_uncorrelated():
    u = counter_uniform(12345, 1_000_000).astype(np.float64)
    assert u.min() >= -0.5 and u.max() < 0.5
    assert abs(u.mean()) < 5 * np.sqrt(1 / 12 / len(u))
    assert abs(u.var() - 1 / 12) < 0.002
    counts = np.histogram(u, bins=64, range=(-0.5, 0.5))[0]
    expected = len(u) / 64
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 120, chi2  # 63 degrees of freedom: above 120 has probability below 1e-5
    for lag in (1, 2, 64, 4096):
        assert abs(np.corrcoef(u[:-lag], u[lag:])[0, 1]) < 0.005


def test_the_seed_comes_from_the_generator():
    x = torch.zeros(3, 1000)
    a = noisy(x, torch.Generator().manual_seed(1))
    b = noisy(x, torch.Generator().manual_seed(1))
    c = noisy(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(1)
    assert not torch.equal(noisy(x, gen), noisy(x, gen))  # each call draws a new seed


def test_the_gradient_passes_unchanged():
    x = torch.randn(4, 300, requires_grad=True)
    w = torch.randn(4, 300)
    (noisy(x, torch.Generator().manual_seed(0)) * w).sum().backward()
    assert torch.equal(x.grad, w)


def test_other_dtypes_take_torchs_generator():
    x = torch.zeros(2, 500, dtype=torch.float64)
    y = noisy(x, torch.Generator().manual_seed(0))
    assert y.dtype == torch.float64 and float(y.min()) >= -0.5 and float(y.max()) < 0.5
    with pytest.raises(ValueError, match="float32"):
        noisy(x, torch.Generator().manual_seed(0), native=True)


def test_straight_through_rounding_rounds_forward_and_passes_the_gradient():
    """ste_round: torch.round's values (halves to even, signed zeros kept) and the incoming
    gradient unchanged, as the former x + (round(x) - x).detach() gave (values equal numerically)."""
    from ralhe_me.train.quantization import ste_round

    x = torch.tensor([-2.5, -1.5, -0.5, -0.2, 0.0, 0.49, 0.5, 1.5, 2.5, 1e7 + 0.5, -3.7], requires_grad=True)
    y = ste_round(x)
    assert torch.equal(y.detach(), torch.round(x.detach()))
    assert torch.equal(y.detach(), (x + (torch.round(x) - x).detach()).detach())  # numerically, -0 == 0
    g = torch.linspace(-1, 1, len(x))
    (y * g).sum().backward()
    assert torch.equal(x.grad, g)
