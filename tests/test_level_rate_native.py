"""The native level rate (train/csrc/level_rate.cpp through LevelRate.bits) against its torch
reference (LevelRate.bits_reference through autograd): the same bits and the same gradients in
the latents, the scales and the mixture logits, with both Laplace branches, both clamps of the
log-scales and the 16-bit cap exercised, with and without the noise drawn for the samples;
results that do not depend on the thread count; named errors on bad input."""
import numpy as np
import pytest
import torch

from ralhe_me.train import level_rate
from ralhe_me.train.level_rate import LOG_SCALE_MAX, LOG_SCALE_MIN, LevelRate

pytestmark = pytest.mark.skipif(level_rate.native_module() is None, reason="_level_rate_cpu is not built")

A, M, GROUPS = 3, 4000, 9


def planes_and_model(seed: int):
    """Three latent planes, mostly small and sparse like trained ones, a few far out (past the
    16-bit cap), some exactly at |x| = 0 and 1/2; scales pushed past both clamps."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, GROUPS, (M,), generator=g).numpy()
    planes = []
    for _ in range(3):
        v = torch.randn(A, M, generator=g) * 3 * (torch.rand(A, M, generator=g) < 0.4)
        v += torch.rand(A, M, generator=g) - 0.5
        far = torch.rand(A, M, generator=g) < 0.01
        v[far] = (torch.rand(int(far.sum()), generator=g) - 0.5) * 4000
        v[:, :40] = torch.tensor([0.0, 0.5, -0.5, 0.25])[torch.arange(40) % 4]
        planes.append(v)
    model = LevelRate(levels, planes)
    with torch.no_grad():
        model.log_scale.add_(torch.randn(model.log_scale.shape, generator=g) * 3)
        model.log_scale[0, 0, 0, 0] = LOG_SCALE_MIN - 1.0  # past the lower clamp
        model.log_scale[1, 1, 1, 1] = LOG_SCALE_MAX + 2.0  # past the upper clamp
        model.log_scale[2, 2, 2, 0] = LOG_SCALE_MIN  # at a clamp's end: torch passes no gradient there
        model.mix_logit.add_(torch.randn(model.mix_logit.shape, generator=g) * 2)
    return planes, model


def rate_and_grads(model: LevelRate, planes, native: bool, noise: bool, subsample: float = 0.3, seed: int = 7):
    planes = [p.clone().requires_grad_(True) for p in planes]
    model.zero_grad(set_to_none=True)
    bits = model.bits(planes, subsample=subsample, generator=torch.Generator().manual_seed(seed), noise=noise,
                      native=native)
    (2.5 * bits).backward()  # a non-unit incoming gradient
    return bits.detach(), [p.grad for p in planes], model.log_scale.grad.clone(), model.mix_logit.grad.clone()


@pytest.mark.parametrize("noise", [False, True])
def test_bits_and_gradients_match_the_torch_reference(noise):
    planes, model = planes_and_model(1)
    ref = rate_and_grads(model, planes, native=False, noise=noise)
    got = rate_and_grads(model, planes, native=True, noise=noise)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=0)
    for plane, g, r in zip(planes, got[1], ref[1]):
        if not noise:  # at |x| = 1/2 exactly torch's clamps (ends excluded) pass no gradient; the
            # kernel gives the derivative there (both branches have the same, -1/b per unit of bits)
            edge = plane.abs() == 0.5
            assert bool(edge.any()) and bool((r[edge] == 0).all())
            g, r = g[~edge], r[~edge]
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
        assert int((r != 0).sum()) > 0.25 * r.numel()  # the sampled latents (30%) got gradients
    torch.testing.assert_close(got[2], ref[2], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got[3], ref[3], rtol=1e-4, atol=1e-3)
    # the clamps: no gradient past them nor at their end, one just inside
    assert got[2][0, 0, 0, 0] == 0 and got[2][1, 1, 1, 1] == 0 and got[2][2, 2, 2, 0] == 0
    assert got[2][2, 2, 2, 1] != 0


def test_noise_is_added_to_the_samples():
    """With noise, the bits are those of the sampled latents plus the noise drawn for them: not
    those of the latents alone, and the same as the reference's for the same draw."""
    planes, model = planes_and_model(2)
    rounded = [torch.round(p) for p in planes]
    plain = rate_and_grads(model, rounded, native=True, noise=False)[0]
    noisy = rate_and_grads(model, rounded, native=True, noise=True)[0]
    assert abs(float(noisy - plain)) > 1e-3 * float(plain)
    samples = model.sample(rounded, 0.3, torch.Generator().manual_seed(7), True)
    assert all(float(u.min()) >= -0.5 and float(u.max()) < 0.5 and u.shape == (A, len(pos))
               for pos, _, u in samples)
    assert all(torch.equal(pos, torch.sort(pos).values) for pos, _, _ in samples)


def test_results_do_not_depend_on_the_thread_count():
    planes, model = planes_and_model(3)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(rate_and_grads(model, planes, native=True, noise=True))
    finally:
        torch.set_num_threads(before)
    for run in runs[1:]:
        assert torch.equal(run[0], runs[0][0])
        assert all(torch.equal(a, b) for a, b in zip(run[1], runs[0][1]))
        assert torch.equal(run[2], runs[0][2]) and torch.equal(run[3], runs[0][3])


def test_evaluations_without_autograd_are_the_same_bits():
    planes, model = planes_and_model(4)
    with torch.no_grad():
        plain = model.bits(planes, subsample=0.5, generator=torch.Generator().manual_seed(3))
    graded = model.bits([p.clone().requires_grad_(True) for p in planes], subsample=0.5,
                        generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, graded.detach())


def test_other_dtypes_are_refused_by_name():
    planes, model = planes_and_model(5)
    with pytest.raises(ValueError, match="float32"):
        model.bits([p.double() for p in planes], native=True)


def test_bad_arguments_are_named():
    module = level_rate.native_module()
    planes = [np.zeros((2, 50), dtype=np.float32)]
    pos = [np.array([3, 9], dtype=np.int64)]
    index = np.zeros(50, dtype=np.int64)
    ls = np.zeros((1, 2, 4, 2), dtype=np.float32)
    logit = np.zeros((1, 2, 4), dtype=np.float32)
    tail = (LOG_SCALE_MIN, LOG_SCALE_MAX, 16.0, True, True, 1)
    bits, grads, gls, glogit = module.level_rate(planes, pos, [], [1.0], index, ls, logit, *tail)
    assert bits.shape == (1, 2) and grads[0].shape == (2, 50) and gls.shape == ls.shape and glogit.shape == logit.shape
    with pytest.raises(ValueError, match="position 50 outside the 50 latents of plane 0"):
        module.level_rate(planes, [np.array([3, 50])], [], [1.0], index, ls, logit, *tail)
    with pytest.raises(ValueError, match="group 4 of latent 7 outside the 4 groups"):
        bad = index.copy()
        bad[7] = 4
        module.level_rate(planes, pos, [], [1.0], bad, ls, logit, *tail)
    with pytest.raises(ValueError, match=r"plane 0 is \[2, 49\], expected \[2, 50\]"):
        module.level_rate([planes[0][:, :49]], pos, [], [1.0], index, ls, logit, *tail)
    with pytest.raises(ValueError, match=r"noise of plane 0 must be \[A, S\] = \[2, 2\]"):
        module.level_rate(planes, pos, [np.zeros((2, 3), dtype=np.float32)], [1.0], index, ls, logit, *tail)
    with pytest.raises(ValueError, match="mix_logit must be"):
        module.level_rate(planes, pos, [], [1.0], index, ls, logit[:, :, :3], *tail)
    with pytest.raises(ValueError, match="one positions array and scale"):
        module.level_rate(planes, pos, [], [1.0, 2.0], index, ls, logit, *tail)
