"""The per-level rate model of training (train/level_rate.py): its initial scales, its bits
against a plain loop, its sampled estimate, the schedule that trains with it, and its estimate
against the static section the encoder then writes."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from ralhe_me.attributes import extract_signals
from ralhe_me.config import load_preset
from ralhe_me.default_scene import make_default_scene
from ralhe_me.encode.encoder import prepare
from ralhe_me.entropy.static_latents import coefficient_levels, encode_static_latents
from ralhe_me.geometry.octree import OctreeLevels
from ralhe_me.train.level_rate import LOG_SCALE_MIN, NARROW_INIT, LevelRate, LevelRateError
from ralhe_me.train.schedule import train_attributes


def laplace_bits_reference(x: float, b: float) -> float:
    """-log2 of the Laplace(0, b) mass on [x - 1/2, x + 1/2], from its tail function (symmetric,
    so the mass of a far bin does not cancel), clamped at 16 bits as training's rate is."""
    x = abs(x)

    def tail(t):  # P(X > t)
        return 0.5 * math.exp(-t / b) if t >= 0 else 1.0 - 0.5 * math.exp(t / b)
    mass = tail(x - 0.5) - tail(x + 0.5)
    return min(16.0, -math.log2(mass)) if mass > 0 else 16.0


@pytest.fixture(scope="module")
def planes():
    rng = np.random.default_rng(4)
    levels = rng.integers(3, 9, size=300)
    # each level its own spread; one level all zeros
    spread = {3: 0.0, 4: 0.4, 5: 1.5, 6: 3.0, 7: 8.0, 8: 0.2}
    planes = [torch.as_tensor(np.round(rng.laplace(size=(2, 300)) * np.array([spread[l] for l in levels]) * (p + 1)),
                              dtype=torch.float32) for p in range(3)]
    return levels, planes


def test_initial_state_is_each_groups_zero_share_and_nonzero_magnitude(planes):
    levels, latents = planes
    model = LevelRate(levels, latents)
    assert model.log_scale.shape == (3, 2, 6, 2) and model.mix_logit.shape == (3, 2, 6)
    for p, plane in enumerate(latents):
        for a in range(2):
            for j, level in enumerate(np.unique(levels)):
                x = plane[a, levels == level]
                zero_share = min(max(float((x == 0).float().mean()), 0.05), 0.95)
                nonzero = x[x != 0].abs()
                wide = max(float(nonzero.mean()) if len(nonzero) else 0.0, 0.5)
                assert math.isclose(float(torch.sigmoid(model.mix_logit[p, a, j]).detach()), zero_share, rel_tol=1e-5)
                assert math.isclose(float(model.log_scale[p, a, j, 0].detach().exp()), NARROW_INIT, rel_tol=1e-5)
                assert math.isclose(float(model.log_scale[p, a, j, 1].detach().exp()), wide, rel_tol=1e-5)


def test_bits_equal_a_loop_over_the_latents(planes):
    levels, latents = planes
    model = LevelRate(levels, latents)
    with torch.no_grad():
        model.log_scale.add_(torch.linspace(-0.5, 0.5, model.log_scale.numel()).reshape(model.log_scale.shape))
        model.mix_logit.add_(torch.linspace(-1, 1, model.mix_logit.numel()).reshape(model.mix_logit.shape))
    got = float(model.bits(latents).detach())
    index = {level: j for j, level in enumerate(np.unique(levels))}
    expected = 0.0
    for p, plane in enumerate(latents):
        for a in range(2):
            for m in range(plane.shape[1]):
                j = index[levels[m]]
                share = float(torch.sigmoid(model.mix_logit[p, a, j]).detach())
                b = [math.exp(float(model.log_scale[p, a, j, c].detach().clamp(LOG_SCALE_MIN, 12.0))) for c in (0, 1)]
                x = float(plane[a, m])
                mass = share * 2 ** -laplace_bits_reference(x, b[0]) + (1 - share) * 2 ** -laplace_bits_reference(x, b[1])
                expected += -math.log2(mass)
    assert math.isclose(got, expected, rel_tol=1e-4)


def test_a_sample_estimates_the_whole(planes):
    levels, latents = planes
    model = LevelRate(levels, latents)
    full = float(model.bits(latents).detach())
    gen = torch.Generator().manual_seed(0)
    estimates = [float(model.bits(latents, subsample=0.2, generator=gen).detach()) for _ in range(400)]
    assert abs(np.mean(estimates) - full) < 0.02 * full
    assert np.std(estimates) > 0  # a real sample, not the whole every time


def test_gradients_reach_the_latents_and_the_scales(planes):
    levels, latents = planes
    model = LevelRate(levels, latents)
    x = [torch.nn.Parameter(p.clone() + 0.3) for p in latents]
    model.bits(x).backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in x)
    assert torch.isfinite(model.log_scale.grad).all() and model.log_scale.grad.abs().sum() > 0
    assert torch.isfinite(model.mix_logit.grad).all() and model.mix_logit.grad.abs().sum() > 0


def test_planes_that_do_not_match_the_levels_are_refused(planes):
    levels, latents = planes
    with pytest.raises(LevelRateError, match="plane 1 has shape"):
        LevelRate(levels, [latents[0], latents[1][:, :-1]])
    with pytest.raises(LevelRateError, match="at least one latent plane"):
        LevelRate(levels, [])


@pytest.fixture(scope="module")
def scene():
    config = load_preset("fast")
    vox = prepare(make_default_scene(1500, seed=3), config)
    levels = OctreeLevels.build(vox.coords, config.architecture.num_levels, vox.depth)
    return config, vox, levels


def test_the_schedule_refuses_an_unknown_or_unfit_rate_model(scene):
    config, vox, levels = scene
    signals = extract_signals(vox.model, 0.25)
    with pytest.raises(ValueError, match="rate_model must be one of arm, levels; got 'x'"):
        train_attributes(signals, levels, config.architecture, dataclasses.replace(config.training, rate_model="x"),
                         1e-3)
    pyramid = dataclasses.replace(config.architecture, transform="pyramid")
    with pytest.raises(ValueError, match="rate_model 'levels' needs the raht transform, the architecture has 'pyramid'"):
        train_attributes(signals, levels, pyramid, dataclasses.replace(config.training, rate_model="levels"), 1e-3)


def test_trained_with_levels_its_estimate_matches_the_static_section(scene):
    """After a schedule against the level model, its bits for the final integer latents are
    within 25% of the static section the encoder would write (which adds its tables: on this
    1500-voxel scene about a sixth of it)."""
    config, vox, levels = scene
    signals = extract_signals(vox.model, 0.25)
    training = dataclasses.replace(config.training, rate_model="levels", steps=30, arm_refit_steps=0)
    result = train_attributes(signals, levels, config.architecture, training, 1e-3)
    coefficient = coefficient_levels(levels.coords[0], levels.depth)
    model = LevelRate(coefficient, result.latents)  # fresh scales: the final latents' own groups
    estimate = float(model.bits(result.latents).detach()) / 8
    coded = len(encode_static_latents([l.detach().numpy().astype(np.int64) for l in result.latents], coefficient))
    assert coded > 0
    assert abs(coded - estimate) < 0.25 * coded, (coded, estimate)


def test_the_schedule_minimizes_the_level_model_and_not_the_arm(scene, monkeypatch):
    """With rate_model 'levels' every step's rate comes from LevelRate.bits and none from the
    ARM's rate (ARM refit off); its scales are among the optimized parameters."""
    from ralhe_me.train import level_rate

    config, vox, levels = scene
    signals = extract_signals(vox.model, 0.25)
    calls = {"levels": 0}
    original = level_rate.LevelRate.bits

    def counting(self, *args, **kwargs):
        calls["levels"] += 1
        calls.setdefault("start", self.log_scale.detach().clone())
        calls["model"] = self
        return original(self, *args, **kwargs)

    def no_arm(*args, **kwargs):
        raise AssertionError("the ARM's rate was used")

    monkeypatch.setattr(level_rate.LevelRate, "bits", counting)
    monkeypatch.setattr(level_rate, "rate_bits", no_arm)  # what training_rate would call for the ARM
    training = dataclasses.replace(config.training, rate_model="levels", steps=6, arm_refit_steps=0)
    train_attributes(signals, levels, config.architecture, training, 1e-3)
    assert calls["levels"] == 6
    assert not torch.equal(calls["model"].log_scale.detach(), calls["start"])  # the scales were trained


def test_the_encoder_refuses_a_bad_rate_model_before_any_work(monkeypatch):
    """Checked at the start of encode_model, before the voxelization and finetuning."""
    from ralhe_me.encode import encoder

    def no_prepare(*args, **kwargs):
        raise AssertionError("prepare ran before the settings were checked")

    monkeypatch.setattr(encoder, "prepare", no_prepare)
    model = make_default_scene(200, seed=1)
    config = load_preset("fast")
    config.training.rate_model = "entropy"
    with pytest.raises(encoder.EncodeError, match="rate_model must be one of arm, levels; got 'entropy'"):
        encoder.encode_model(model, config)
    config = load_preset("fast")
    config.training.rate_model = "levels"
    config.architecture = dataclasses.replace(config.architecture, transform="pyramid")
    with pytest.raises(encoder.EncodeError, match="rate_model 'levels' needs the raht transform"):
        encoder.encode_model(model, config)


def test_a_lone_nonzero_latent_in_a_zero_level_costs_less_than_the_cap():
    """The narrow/wide mixture: in a level of 999 zeros, one latent at 3 costs its rarity plus the
    wide component's bits (about 8), not the 16-bit cap a single collapsed Laplace charged,
    whose gradient then zeroed whole levels at high lambda."""
    levels = np.zeros(1000, dtype=np.int64)
    zeros = torch.zeros(1, 1000)
    lone = zeros.clone()
    lone[0, 500] = 3.0
    model = LevelRate(levels, [lone])
    cost = float((model.bits([lone]) - model.bits([zeros])).detach())
    assert 6.0 < cost < 11.0, cost
