"""Rate control: a target size or PSNR is reached by real encodes, what is reported is what the file
holds, and targets out of reach are refused with the reachable range."""
import dataclasses
import math

import numpy as np
import pytest

from conftest import small_codec_config
from ralhe_me.cli import main as ralhe_main
from ralhe_me.decode.decoder import decode_bytes
from ralhe_me.default_scene import make_default_scene
from ralhe_me.encode import rate_control
from ralhe_me.encode.operating_point import MAX_TIER, tier_lambda, tier_of_lambda
from ralhe_me.encode.rate_control import (PSNR, SIZE, SIZE_TOLERANCE, RateControlError, RateTarget, Trial,
                                          UnreachableTargetError, encode_to_target, parse_size, prepare_input)
from ralhe_me.encode import encoder as encoder_module
from ralhe_me.encode.encoder import SHIFT_VIEWS, encode_model
from ralhe_me.eval.evaluation import score_views
from ralhe_me.gaussians import write_ply


@pytest.mark.parametrize("text, size", [("600KB", 600_000), ("1.5 MB", 1_500_000), ("600KiB", 614_400),
                                        ("600000", 600_000), ("2e3", 2000), ("7 b", 7), ("1GB", 10 ** 9)])
def test_sizes_are_read_with_their_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["abc", "12 parsecs", "0", "-5KB", "", "KB"])
def test_unreadable_sizes_are_refused(text):
    with pytest.raises(RateControlError, match="size"):
        parse_size(text)


def test_bad_targets_are_refused():
    with pytest.raises(RateControlError, match="positive"):
        RateTarget(PSNR, float("nan"))
    with pytest.raises(RateControlError, match="size or a psnr"):
        RateTarget("bitrate", 3.0)
    with pytest.raises(RateControlError, match="max_tries"):
        RateTarget(SIZE, 1000, max_tries=0)


def _trial(lmbda, size, psnr=None, geometry=0):
    return Trial(lmbda, size, psnr, 0.0, result=None, geometry_bytes=geometry)


def test_a_bracketed_power_law_is_hit_in_one_step():
    """Attribute bytes a * lambda^-0.7 over the geometry: the log-log interpolation between two
    tries that bracket the target lands on the exact lambda."""
    geometry, a = 5000, 300.0
    size = lambda lm: geometry + a * lm ** -0.7  # noqa: E731
    target = RateTarget(SIZE, size(2.5e-3))
    trials = [_trial(1e-3, size(1e-3), geometry=geometry), _trial(1e-2, size(1e-2), geometry=geometry)]
    assert rate_control._next_lambda(trials, target) == pytest.approx(2.5e-3, rel=1e-9)
    # PSNR linear in log lambda: the same
    psnr = lambda lm: 20.0 - 1.3 * math.log(lm)  # noqa: E731
    trials = [_trial(1e-4, 0, psnr(1e-4)), _trial(1e-1, 0, psnr(1e-1))]
    assert rate_control._next_lambda(trials, RateTarget(PSNR, psnr(3e-3))) == pytest.approx(3e-3, rel=1e-9)


def test_a_misbehaving_curve_falls_back_to_bisection_inside_the_bracket():
    geometry = 1000
    target = RateTarget(SIZE, 3000)
    # bracketed, but the errors put the interpolation at the very edge of the bracket
    trials = [_trial(1e-3, 3001, geometry=geometry), _trial(1e-1, 1200, geometry=geometry)]
    nxt = rate_control._next_lambda(trials, target)
    assert nxt == pytest.approx(math.sqrt(1e-3 * 1e-1))
    # too big a file at the largest lambda already tried: nothing further to try
    trials = [_trial(rate_control.LAMBDA_RANGE[1], 9000, geometry=geometry)]
    assert rate_control._next_lambda(trials, target) is None


@pytest.fixture(scope="module")
def scene():
    model = make_default_scene(1500, seed=4)
    config = small_codec_config()
    config.training.threads = 1
    return model, config


@pytest.fixture(scope="module")
def size_input(scene):
    model, config = scene
    return prepare_input(model, config, RateTarget(SIZE, 1e9))


def _size_at(prepared, config, lmbda):
    result = encode_model(prepared.model, dataclasses.replace(config, lmbda=lmbda), voxelized=prepared.voxelized,
                          geometry=prepared.geometry)
    return len(result.data)


def test_target_size_is_reached_by_a_real_encode(scene, size_input):
    model, config = scene
    big, small = _size_at(size_input, config, 3e-4), _size_at(size_input, config, 3e-2)
    assert big > small * 1.15, "the test needs a range wider than the tolerance"
    target = RateTarget(SIZE, int(math.sqrt(big * small)))
    lines = []
    out = encode_to_target(size_input, config, target, log=lines.append)
    assert out.met and abs(out.chosen.size_bytes - target.value) <= SIZE_TOLERANCE * target.value
    assert len(lines) == len(out.trials) <= target.max_tries and "bytes" in lines[-1]
    data = out.chosen.result.data
    assert out.chosen.size_bytes == len(data)
    decoded = decode_bytes(data).model  # the file is what the search measured
    np.testing.assert_array_equal(decoded.sh, out.chosen.result.reconstruction.sh)
    assert "target met" in out.summary()


def test_target_psnr_is_met_or_exceeded_on_the_decoded_file(scene):
    model, config = scene
    target = RateTarget(PSNR, 1.0)  # only to render the views; the real target is set below
    prepared = prepare_input(model, config, target, views=3, resolution=(64, 64))
    probe = encode_model(prepared.model, dataclasses.replace(config, lmbda=6e-3), voxelized=prepared.voxelized,
                         geometry=prepared.geometry)
    wanted = score_views(probe.reconstruction, prepared.views, with_ssim=False).psnr - 0.1
    assert wanted < prepared.reference_psnr
    out = encode_to_target(prepared, config, RateTarget(PSNR, wanted), log=lambda _: None)
    assert out.met and out.chosen.psnr >= wanted
    decoded = decode_bytes(out.chosen.result.data).model
    assert score_views(decoded, prepared.views, with_ssim=False).psnr == pytest.approx(out.chosen.psnr, abs=1e-9)


def test_targets_beyond_the_proxies_are_refused_before_any_encode(scene, size_input, monkeypatch):
    model, config = scene
    monkeypatch.setattr(rate_control, "encode_model", lambda *a, **k: pytest.fail("encoded"))
    with pytest.raises(UnreachableTargetError, match=f"alone take {size_input.geometry_bytes:,} bytes"):
        encode_to_target(size_input, config, RateTarget(SIZE, size_input.geometry_bytes))
    psnr_input = dataclasses.replace(size_input, reference_psnr=31.0, prepare_tier=None)  # no finer tier
    with pytest.raises(UnreachableTargetError, match="gives 31.00 dB"):
        encode_to_target(psnr_input, config, RateTarget(PSNR, 33.0))


class _Encoded(Exception):
    pass


def test_a_psnr_target_above_the_geometry_climbs_the_tiers(scene, size_input, monkeypatch):
    """A target the coded geometry cannot hold starts the search on the first geometry tier whose
    finetuned reference allows it, at that tier's largest lambda; beyond the last tier it is refused."""
    model, config = scene
    asked = []

    def at_tier(tier):
        asked.append(tier)
        return dataclasses.replace(size_input, tier=tier, reference_psnr=31.0 + 3.0 * tier, prepare_tier=at_tier)

    def encode(_model, cfg, voxelized, **_):
        assert voxelized is size_input.voxelized
        raise _Encoded(cfg.lmbda)

    monkeypatch.setattr(rate_control, "encode_model", encode)
    start = dataclasses.replace(size_input, reference_psnr=31.0, prepare_tier=at_tier)
    with pytest.raises(_Encoded) as first:
        encode_to_target(start, config, RateTarget(PSNR, 36.5), log=lambda _: None)
    assert asked == [1, 2] and first.value.args[0] == pytest.approx(tier_lambda(2))
    assert tier_of_lambda(first.value.args[0]) == 2
    asked.clear()
    with pytest.raises(UnreachableTargetError, match=f"geometry tier {MAX_TIER}"):
        encode_to_target(start, config, RateTarget(PSNR, 31.0 + 3.0 * MAX_TIER + 2.0), log=lambda _: None)
    assert asked == list(range(1, MAX_TIER + 1))
    # a fixed tier is never left
    asked.clear()
    with pytest.raises(UnreachableTargetError, match="geometry tier 0"):
        encode_to_target(start, dataclasses.replace(config, geometry_tier=0), RateTarget(PSNR, 36.5))
    assert asked == []


def test_the_tries_measure_the_weight_step_on_views_rendered_once(scene, size_input, monkeypatch):
    """Without image-domain refinement (the fast preset) an encode still renders a few views to
    choose the decoder weight step: the prepared input holds them, and no try renders them again."""
    model, config = scene
    assert config.training.render_steps == 0
    views = size_input.render_target
    assert views is not None and len(views.cameras) == SHIFT_VIEWS
    seen = []
    real = encoder_module._choose_decoder_weights

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    target = RateTarget(SIZE, int(0.9 * _size_at(size_input, config, config.lmbda)), max_tries=3)
    monkeypatch.setattr(encoder_module, "_choose_decoder_weights", spy)
    monkeypatch.setattr(encoder_module, "make_render_target", lambda *a, **k: pytest.fail("views rendered again"))
    out = encode_to_target(size_input, config, target, log=lambda _: None)
    assert len(seen) == len(out.trials) >= 2 and all(v is views for v in seen)


def test_a_size_below_the_smallest_file_gives_the_range_tried(scene, size_input):
    model, config = scene
    smallest = _size_at(size_input, config, rate_control.LAMBDA_RANGE[1])
    target = RateTarget(SIZE, int(0.5 * (smallest + size_input.geometry_bytes * (1 + SIZE_TOLERANCE))))
    assert target.value < smallest * (1 - SIZE_TOLERANCE)
    with pytest.raises(UnreachableTargetError, match=f"from about {smallest:,} to"):
        encode_to_target(size_input, config, target, log=lambda _: None)


def test_cli_target_size(tmp_path, scene, capsys):
    model, _ = scene
    src = tmp_path / "in.ply"
    write_ply(model, src)
    common = [str(src), str(tmp_path / "out.ralhe"), "--preset", "fast", "--steps", "5", "--codebook", "64",
              "--finetune-iters", "0", "--quiet"]
    assert ralhe_main(["encode", *common, "--lambda", "1e-3", "--target-size", "20KB"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert ralhe_main(["encode", *common, "--target-size", "20 parsecs"]) == 2
    assert "cannot read '20 parsecs' as a size" in capsys.readouterr().err
    assert ralhe_main(["encode", *common, "--target-size", "1KB"]) == 2
    assert "out of reach" in capsys.readouterr().err and not (tmp_path / "out.ralhe").exists()
    # one try, far from the target: the closest file is written, the exit status says "not met"
    assert ralhe_main(["encode", *common, "--target-size", "1MB", "--max-tries", "1"]) == 1
    out = capsys.readouterr().out
    assert "target NOT met in 1 tries" in out
    data = (tmp_path / "out.ralhe").read_bytes()
    assert f"wrote {tmp_path / 'out.ralhe'}: target NOT met" in out and f"{len(data):,} bytes" in out
    assert len(decode_bytes(data).model) > 0
