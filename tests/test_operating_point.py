"""The operating point: lambda sets the geometry tier, the tier sets the depth and the covariance
step, tier 0 keeps the historic rules, and a sweep prepares each tier once."""
import dataclasses

import pytest

from conftest import small_codec_config
from ralhe_me.decode.bitstream import unpack
from ralhe_me.cli import main as ralhe_main
from ralhe_me.config import load_preset
from ralhe_me.default_scene import make_default_scene
from ralhe_me.encode.operating_point import (MAX_TIER, OperatingPointError, geometry_follows_lambda, geometry_tier,
                                             tier_lambda, tier_of_lambda)
from ralhe_me.encode.encoder import (COVARIANCE_STEPS, _coded_psnr, choose_covariance_step, choose_grid,
                                     code_covariance, transparent_depth)
from ralhe_me.eval.evaluation import orbit_views, score_views
from ralhe_me.gaussians import codable_model, write_ply
from ralhe_me.geometry.octree import MIN_AUTO_DEPTH, VoxelGrid, choose_depth, voxelize
from ralhe_me.sweep.spec import RALHE, Job, SceneSettings


@pytest.mark.parametrize("lmbda, tier", [(1.0, 0), (6e-3, 0), (1e-3, 0), (3e-4, 0), (2.5e-4, 1), (1e-4, 1),
                                         (6.4e-5, 1), (6.3e-5, 2), (2.5e-5, 2), (1.5e-5, 3), (1e-9, MAX_TIER)])
def test_tiers_follow_lambda_at_6_db_per_tier(lmbda, tier):
    # 10 dB per decade of lambda: tier t starts at 1e-3 * 10**(-0.6 t)
    assert tier_of_lambda(lmbda) == tier


def test_each_tier_starts_at_its_lambda():
    for t in range(MAX_TIER + 1):
        assert tier_of_lambda(tier_lambda(t)) == t
        assert tier_of_lambda(tier_lambda(t) * 1.01) == max(0, t - 1)


@pytest.mark.parametrize("bad", [0.0, -1e-3, float("nan"), float("inf"), "1e-3"])
def test_bad_lambdas_are_refused(bad):
    with pytest.raises(OperatingPointError, match="lambda"):
        tier_of_lambda(bad)


def test_tier_targets_and_fixed_tiers():
    config = small_codec_config()
    config.lmbda = 1e-3
    base = geometry_tier(config)
    assert (base.index, base.covariance_psnr, base.depth_psnr, base.extends_depth) == (0, 42.0, 50.0, False)
    for t in range(1, MAX_TIER + 1):
        tier = geometry_tier(dataclasses.replace(config, lmbda=tier_lambda(t)))
        assert tier.index == t and tier.extends_depth
        assert tier.covariance_psnr == 42.0 + 6.0 * t and tier.depth_psnr == 50.0 + 3.0 * t
    fixed = dataclasses.replace(config, lmbda=1e-6, geometry_tier=1)
    assert geometry_tier(fixed).index == 1 and not geometry_follows_lambda(fixed)
    assert not geometry_follows_lambda(dataclasses.replace(config, depth=9, covariance_step=0.2))
    assert geometry_follows_lambda(dataclasses.replace(config, depth=9))
    with pytest.raises(OperatingPointError, match="whole number from 0 to"):
        geometry_tier(dataclasses.replace(config, geometry_tier=MAX_TIER + 1))


@pytest.fixture(scope="module")
def scene():
    return codable_model(make_default_scene(3000, seed=7))


def _voxelized_psnr(model, depth, reference):
    vox = voxelize(model, depth, VoxelGrid.bounding(model.means, depth))
    return score_views(vox.model, reference, with_ssim=False).psnr


def test_tier_0_keeps_the_historic_depth_and_higher_tiers_reach_their_target(scene):
    config = small_codec_config()
    config.lmbda = 1e-3
    grid0, _ = choose_grid(scene, config)
    # the historic rule, computed here: merge rule, then the 50 dB transparency stop
    merge = choose_depth(scene.means, config.max_merge_fraction)
    legacy = transparent_depth(scene, merge, 50.0, None, min_depth=max(MIN_AUTO_DEPTH,
                                                                     config.architecture.num_levels - 1))
    assert grid0.depth == legacy
    reference = orbit_views(scene, 6, (192, 192))
    for t in (1, 2):
        grid, merge_rule = choose_grid(scene, dataclasses.replace(config, lmbda=tier_lambda(t)))
        want = 50.0 + 3.0 * t
        psnrs = {d: _voxelized_psnr(scene, d, reference) for d in range(grid0.depth, grid.depth + 1)}
        assert not merge_rule and grid.depth >= grid0.depth
        # the first depth from tier 0's up whose voxelized renders reach the target
        assert psnrs[grid.depth] >= want and all(psnrs[d] < want for d in range(grid0.depth, grid.depth))
    fixed = dataclasses.replace(config, lmbda=tier_lambda(2), depth=grid0.depth)
    assert choose_grid(scene, fixed)[0].depth == grid0.depth  # a fixed depth stays


def test_higher_tiers_code_finer_covariances(scene):
    config = small_codec_config()
    vox = voxelize(scene, 9, VoxelGrid.bounding(scene.means, 9)).model
    reference = orbit_views(vox, 6, (192, 192))
    steps = []
    for t in range(3):
        cfg = dataclasses.replace(config, lmbda=tier_lambda(t))
        code = code_covariance(vox, cfg)
        steps.append(code.steps.log_scale)
        want = 42.0 + 6.0 * t
        assert steps[-1] == pytest.approx(choose_covariance_step(vox, want), rel=1e-6)
        if steps[-1] > COVARIANCE_STEPS[-1]:
            assert _coded_psnr(vox, code.shapes(), reference) >= want - 1.0  # codebook differs from the rule's
    assert steps[0] > steps[1] > steps[2]


def test_sweep_jobs_prepare_once_per_tier():
    settings = SceneSettings(codecs={RALHE: [6e-3, 3e-4, 1e-4, 2.5e-5], "raht": [0.1]}, peers=["spz"])
    jobs = settings.jobs()
    tiers = {(j.codec, j.parameter): settings.job_tier(j) for j in jobs}
    assert tiers == {(RALHE, 6e-3): 0, (RALHE, 3e-4): 0, (RALHE, 1e-4): 1, (RALHE, 2.5e-5): 2, ("raht", 0.1): 0,
                     ("spz", 0.0): 0}
    groups = settings.jobs_by_tier(jobs)
    assert list(groups) == [0, 1, 2] and [j.parameter for j in groups[1]] == [1e-4]
    assert settings.job_key(Job(settings.name, RALHE, 1e-4)) != settings.job_key(Job(settings.name, RALHE, 3e-4))
    assert settings.preparation_key(0) != settings.preparation_key(1)
    # depth and covariance step both fixed: one preparation serves every lambda
    fixed = dataclasses.replace(settings, depth=9, covariance_step=0.2)
    assert list(fixed.jobs_by_tier(fixed.jobs())) == [0]


def test_cli_refuses_a_bad_tier(tmp_path, capsys, scene):
    src = tmp_path / "in.ply"
    write_ply(scene, src)
    args = ["encode", str(src), str(tmp_path / "out.ralhe"), "--preset", "fast", "--quiet"]
    assert ralhe_main([*args, "--geometry-tier", str(MAX_TIER + 1)]) == 2
    assert f"--geometry-tier must be auto or a whole number from 0 to {MAX_TIER}" in capsys.readouterr().err
    assert ralhe_main([*args, "--geometry-tier", "fine"]) == 2
    assert not (tmp_path / "out.ralhe").exists()


def test_cli_reports_the_tier(tmp_path, capsys, scene):
    src = tmp_path / "in.ply"
    write_ply(scene, src)
    out = tmp_path / "out.ralhe"
    assert ralhe_main(["encode", str(src), str(out), "--preset", "fast", "--steps", "3", "--render-steps", "0",
                       "--finetune-iters", "0", "--codebook", "64", "--lambda", "1e-4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "geometry tier 1 (covariance 48 dB, depth 53 dB)" in printed
    # the file is coded on tier 1's grid, not tier 0's
    config = load_preset("fast")
    config.lmbda = 1e-4
    depth = choose_grid(scene, config)[0].depth
    assert depth > choose_grid(scene, dataclasses.replace(config, lmbda=1e-3))[0].depth
    assert unpack(out.read_bytes()).header["depth"] == depth and f"depth {depth}," in printed


def test_the_finetune_steps_shrink_with_the_geometry_tier(monkeypatch, scene):
    """Finer geometry leaves smaller errors: the attribute finetuning's learning rates are the
    tier-0 ones times finetune_lr_per_tier per tier (the guitar's tier 5 lost 2 dB at tier 0's)."""
    import ralhe_me.train.finetune as finetune_module
    from ralhe_me.encode.encoder import finetune_geometry, prepare
    from ralhe_me.train.finetune import FinetuneConfig

    seen = []

    def fake_finetune(model, *, config, covariance, **_):
        seen.append(config)
        return model, finetune_module.FinetuneReport(0.0, 0.0, 0.0, 0.0, 1, len(model), 1, "teacher orbit",
                                                     (8, 8), covariance=covariance)

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    base = FinetuneConfig().learning_rates()
    for tier in (0, 2):
        config = dataclasses.replace(small_codec_config(), geometry_tier=tier, depth=8, covariance_step=0.2)
        finetune_geometry(prepare(scene, config), scene, config, iters=3)
        factor = config.finetune_lr_per_tier ** tier
        assert seen[-1].learning_rates() == pytest.approx({k: v * factor for k, v in base.items()})
    assert seen[0].lr_sh_dc > seen[1].lr_sh_dc


def test_the_finetune_stage_follows_the_preset(monkeypatch, scene, tmp_path):
    """The finetuning's steps (when the caller gives none), render size, views and decay are the
    preset's ``finetune`` block; a bad one is an EncodeError before any work, and the CLI's
    default steps are the preset's."""
    import ralhe_me.encode.encoder as encoder_module
    import ralhe_me.train.finetune as finetune_module
    from ralhe_me.encode.encoder import EncodeError, finetune_geometry, prepare

    seen = []

    def fake_finetune(model, *, config, covariance, iters, **_):
        seen.append((iters, config))
        return model, finetune_module.FinetuneReport(0.0, 0.0, 0.0, 0.0, iters, len(model), 1, "teacher orbit",
                                                     (8, 8), covariance=covariance)

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    config = dataclasses.replace(small_codec_config(), geometry_tier=0, depth=8, covariance_step=0.2)
    config.finetune = dataclasses.replace(config.finetune, iters=7, resolution=40, views=9, final_lr_fraction=0.25)
    vox = prepare(scene, config)
    finetune_geometry(vox, scene, config, None)
    finetune_geometry(vox, scene, config, 3)
    assert [i for i, _ in seen] == [7, 3]
    cfg = seen[0][1]
    assert (cfg.resolution, cfg.teacher_views, cfg.final_lr_fraction) == (40, 9, 0.25)
    assert finetune_geometry(vox, scene, config, 0)[2] is None and len(seen) == 2
    for bad, message in ((dict(resolution=0), "resolution must be >= 1"),
                         (dict(final_lr_fraction=0.0), "final_lr_fraction"), (dict(views="many"), "finetune settings")):
        broken = dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, **bad))
        with pytest.raises(EncodeError, match=message):
            finetune_geometry(None, None, broken, None)  # refused before the model is touched
    with pytest.raises(EncodeError, match="whole number >= 0"):
        finetune_geometry(None, None, config, -1)

    calls = []

    def fake_encode_file(path_in, path_out, config, *, finetune_iters, **_):
        calls.append(finetune_iters)
        raise EncodeError("stop here")

    monkeypatch.setattr(encoder_module, "encode_file", fake_encode_file)
    src = tmp_path / "in.ply"
    write_ply(scene, src)
    args = ["encode", str(src), str(tmp_path / "out.ralhe"), "--quiet"]
    for extra in (["--preset", "fast"], ["--preset", "quality"], ["--preset", "quality", "--finetune-iters", "5"]):
        assert ralhe_main([*args, *extra]) == 2
    assert calls == [load_preset("fast").finetune.iters, load_preset("quality").finetune.iters, 5]
    assert calls[:2] == [60, 600]
