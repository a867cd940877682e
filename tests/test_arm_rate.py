"""The native training rate (train/arm_rate.py, train/csrc/arm_rate.cpp) against its torch
reference (AttributeSynthesis.positions_rate_bits through autograd): the same bits and the same
gradients in the latents and every ARM weight, with every clamp and both Laplace branches
exercised; the same sample from the same generator; results that do not depend on the thread
count; named errors on bad input."""
import pytest
import torch

from ralhe_me.config import load_preset
from ralhe_me.decode.synthesis import AttributeSynthesis
from ralhe_me.default_scene import make_default_scene
from ralhe_me.encode.encoder import prepare
from ralhe_me.geometry.octree import OctreeLevels
from ralhe_me.nn.arm import CONTEXT_CLAMP, HIDDEN_CLAMP
from ralhe_me.train import arm_rate

pytestmark = pytest.mark.skipif(arm_rate.native_module() is None, reason="_arm_rate_cpu is not built")


@pytest.fixture(scope="module")
def synthesis():
    config = load_preset("fast")
    config.architecture.num_levels = 4
    vox = prepare(make_default_scene(1200, seed=5), config)
    levels = OctreeLevels.build(vox.coords, 4, vox.depth)
    syn = AttributeSynthesis(vox.model.sh.shape[1], config.architecture)
    syn.bind(levels)
    return syn


def latent_values(syn: AttributeSynthesis, seed: int) -> torch.Tensor:  # [A, T]
    """Noisy latents, mostly small and sparse like trained ones, with a few far beyond every
    clamp (contexts past CONTEXT_CLAMP, targets whose bits hit the 16-bit cap)."""
    g = torch.Generator().manual_seed(seed)
    a, t = syn.arm.num_attributes, len(syn.segment_start)
    v = torch.randn(a, t, generator=g) * 3 * (torch.rand(a, t, generator=g) < 0.4)
    v += torch.rand(a, t, generator=g) - 0.5
    far = torch.rand(a, t, generator=g) < 0.01
    v[far] = (torch.rand(int(far.sum()), generator=g) - 0.5) * 4 * CONTEXT_CLAMP
    v[:, :40] = torch.tensor([0.0, 0.5, -0.5, 0.25])[torch.arange(40) % 4]  # d = 0 and d = 1/2 exactly
    return v


def perturb_arm(syn: AttributeSynthesis, seed: int) -> None:
    """Weights that drive hidden units below 0 and above HIDDEN_CLAMP and the log-scale past
    both ends of the table range, so every clamp's gradient mask matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w, b in zip(syn.arm.weights, syn.arm.biases):
            w.copy_(torch.randn(w.shape, generator=g) * 0.6)
            b.copy_(torch.randn(b.shape, generator=g) * 2)
        syn.arm.weights[0][0].mul_(HIDDEN_CLAMP / 8)  # attribute 0: saturated hidden units
        syn.arm.biases[-1][:, 1] += torch.linspace(-12, 12, syn.arm.num_attributes)  # scale clamps


def rate_and_grads(syn, values, positions, native: bool):
    values = values.clone().requires_grad_(True)
    for p in syn.arm.parameters():
        p.grad = None
    bits = arm_rate.positions_rate_bits(syn, values, positions, native=native)
    (2.5 * bits).backward()  # a non-unit incoming gradient
    return bits.detach(), values.grad, [p.grad.clone() for p in syn.arm.parameters()]


def test_bits_and_gradients_match_the_torch_reference(synthesis):
    perturb_arm(synthesis, 1)
    values = latent_values(synthesis, 2)
    t = values.shape[1]
    positions = torch.cat([torch.arange(0, 40), torch.randperm(t, generator=torch.Generator().manual_seed(3))[:t // 3]])
    ref = rate_and_grads(synthesis, values, positions, native=False)
    nat = rate_and_grads(synthesis, values, positions, native=True)
    assert torch.allclose(nat[0], ref[0], rtol=1e-5), (float(nat[0]), float(ref[0]))
    for got, want in zip([nat[1]] + nat[2], [ref[1]] + ref[2]):
        scale = float(want.abs().max())
        assert scale > 0
        assert float((got - want).abs().max()) <= 1e-4 * scale + 1e-5, (float((got - want).abs().max()), scale)
    # the clamps were active: some contexts, hidden units and log-scales had a zero gradient
    contexts = synthesis.contexts(values, positions)
    assert bool((contexts.abs() > CONTEXT_CLAMP).any())


def test_repeated_positions_add_up(synthesis):
    """The ARM refit draws positions with replacement: a repeated position counts each time."""
    perturb_arm(synthesis, 4)
    values = latent_values(synthesis, 5)
    positions = torch.tensor([700, 700, 700, 12, 12, 900])
    ref = rate_and_grads(synthesis, values, positions, native=False)
    nat = rate_and_grads(synthesis, values, positions, native=True)
    assert torch.allclose(nat[0], ref[0], rtol=1e-5)
    assert torch.allclose(nat[1], ref[1], rtol=1e-4, atol=1e-5)


def test_the_same_sample_from_the_same_generator(synthesis):
    perturb_arm(synthesis, 6)
    values = latent_values(synthesis, 7)
    planes = list(values.split(len(synthesis.segment_start) // 3, dim=1))
    got = [arm_rate.rate_bits(synthesis, planes, subsample=0.2, generator=torch.Generator().manual_seed(8),
                              native=n) for n in (True, False)]
    assert torch.allclose(got[0], got[1], rtol=1e-5)
    other = arm_rate.rate_bits(synthesis, planes, subsample=0.2, generator=torch.Generator().manual_seed(9))
    assert not torch.allclose(other, got[0], rtol=1e-5)  # a different sample: a different estimate


def test_results_do_not_depend_on_the_thread_count(synthesis):
    perturb_arm(synthesis, 10)
    values = latent_values(synthesis, 11)
    positions = torch.randperm(values.shape[1], generator=torch.Generator().manual_seed(12))[:2000]
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(rate_and_grads(synthesis, values, positions, native=True))
    finally:
        torch.set_num_threads(before)
    for run in runs[1:]:
        assert torch.equal(run[0], runs[0][0]) and torch.equal(run[1], runs[0][1])
        assert all(torch.equal(a, b) for a, b in zip(run[2], runs[0][2]))


def test_other_dtypes_are_refused_by_name(synthesis):
    values = latent_values(synthesis, 13).double()
    with pytest.raises(ValueError, match="float32"):
        arm_rate.positions_rate_bits(synthesis, values, torch.arange(100), native=True)


def test_bad_arguments_are_named():
    module = arm_rate.native_module()
    values = torch.zeros(2, 50).numpy()
    w = [torch.zeros(2, 4, 3).numpy(), torch.zeros(2, 3, 2).numpy()]
    b = [torch.zeros(2, 3).numpy(), torch.zeros(2, 2).numpy()]
    pos = torch.tensor([10, 20]).numpy()
    starts = torch.tensor([0, 0]).numpy()
    args = (CONTEXT_CLAMP, HIDDEN_CLAMP, -4.0, 5.0, 16.0, True, True, 1)
    bits, _, _, _ = module.arm_rate(values, pos, starts, w, b, *args)
    assert bits.shape == (2,)
    with pytest.raises(ValueError, match="outside the 50 latents"):
        module.arm_rate(values, torch.tensor([10, 50]).numpy(), starts, w, b, *args)
    with pytest.raises(ValueError, match="segment start 21"):
        module.arm_rate(values, pos, torch.tensor([0, 21]).numpy(), w, b, *args)
    with pytest.raises(ValueError, match="takes 4 inputs"):
        module.arm_rate(values, pos, starts, [w[0], torch.zeros(2, 4, 2).numpy()], b, *args)
    with pytest.raises(ValueError, match="2 outputs"):
        module.arm_rate(values, pos, starts, [w[0], torch.zeros(2, 3, 3).numpy()],
                        [b[0], torch.zeros(2, 3).numpy()], *args)
    with pytest.raises(ValueError, match=r"values must be \[A, T\]"):
        module.arm_rate(values[0], pos, starts, w, b, *args)


def test_evaluations_without_autograd_compute_no_gradients(synthesis, monkeypatch):
    """Under torch.no_grad (the refinement's cost, the refit's record) the kernel is asked for
    the bits alone, and they are the bits computed with gradients."""
    perturb_arm(synthesis, 14)
    values = latent_values(synthesis, 15)
    positions = torch.randperm(values.shape[1], generator=torch.Generator().manual_seed(16))[:1500]
    module = arm_rate.native_module()
    asked = []

    class Recording:
        def arm_rate(self, *args):
            asked.append(args[10:12])  # (grad_values, grad_params)
            return module.arm_rate(*args)

    monkeypatch.setattr(arm_rate, "native_module", lambda: Recording())
    with torch.no_grad():
        plain = arm_rate.positions_rate_bits(synthesis, values, positions)
    graded = arm_rate.positions_rate_bits(synthesis, values.clone().requires_grad_(True), positions)
    assert asked == [(False, False), (True, True)]
    assert torch.equal(plain, graded.detach())
