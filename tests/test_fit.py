"""Fitting from images: density control on constructed cases, a short real fit, bit-exact resume."""
import argparse
import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import MIC, shared_path
from ralhe_me.train.densify import (DensifyConfig, DensifyError, DensityStats, GaussianParams, densify_and_prune,
                                    screen_footprint, view_space_grad_norm)
from ralhe_me.train.fit import (FitConfig, FitError, add_fit_arguments, fit, position_lr, random_init, run_fit_command,
                                scene_extent)
from ralhe_me.gaussians import GaussianModel, read_ply
from ralhe_me.render import Camera, orbit_cameras

LRS = {"means": 1e-3, "sh_dc": 1e-2, "sh_rest": 1e-3, "opacity_logits": 1e-2, "log_scales": 1e-2, "quats": 1e-2}
ROT_Z90 = np.array([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)], np.float32)  # w, x, y, z


def constructed_model() -> GaussianModel:
    """G0 small+hot (clone), G1 large+hot (split), G2 transparent (prune), G3 huge (prune if large), G4 plain."""
    means = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)
    scales = np.array([[0.005] * 3, [0.05, 0.02, 0.01], [0.005] * 3, [0.2] * 3, [0.005] * 3], np.float32)
    quats = np.tile(np.array([1, 0, 0, 0], np.float32), (5, 1))
    quats[1] = ROT_Z90
    opac = np.array([0.5, 0.5, 0.001, 0.5, 0.5])
    sh = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    return GaussianModel(means=means, log_scales=np.log(scales), quats=quats,
                         opacity_logits=np.log(opac / (1 - opac)), sh=sh)


def constructed_stats() -> DensityStats:
    stats = DensityStats(5)
    stats.grad_sum[:] = torch.tensor([2e-3, 2e-3, 0.0, 0.0, 1e-4])
    stats.count[:] = torch.tensor([2.0, 2.0, 1.0, 1.0, 1.0])
    return stats


def _params_after_one_step() -> GaussianParams:
    params = GaussianParams.from_model(constructed_model(), LRS)
    loss = sum((t * t + t).sum() for t in params.tensors.values() if t.requires_grad)
    loss.backward()
    params.optimizer.step()
    params.optimizer.zero_grad(set_to_none=True)
    return params


def test_clone_split_prune_on_a_constructed_case():
    params = _params_after_one_step()
    before = {k: v.detach().clone() for k, v in params.tensors.items()}
    moments = {k: params.optimizer.state[params[k]]["exp_avg"].clone() for k in ("means", "sh_dc")}
    gen = torch.Generator().manual_seed(5)
    res = densify_and_prune(params, constructed_stats(), DensifyConfig(), extent=1.0, prune_large=True,
                            generator=gen)
    assert (res.cloned, res.split, res.pruned, res.before, res.after) == (1, 1, 2, 5, 5)
    # rows now: G0, G4, clone of G0, two children of G1
    t = params.tensors
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert torch.equal(t[name][0], before[name][0]) and torch.equal(t[name][1], before[name][4])
        assert torch.equal(t[name][2], before[name][0])  # exact copy
        if name not in ("means", "log_scales"):
            assert torch.equal(t[name][3], before[name][1]) and torch.equal(t[name][4], before[name][1])
    parent_scale = torch.exp(before["log_scales"][1])
    assert torch.allclose(torch.exp(t["log_scales"][3:]), (parent_scale / 1.6).expand(2, 3), rtol=1e-6)
    # children positions: parent + R (noise * scale), R of the parent's quaternion (~90 degrees about z)
    from scipy.spatial.transform import Rotation

    w, x, y, z = before["quats"][1].double().tolist()
    rot = torch.tensor(Rotation.from_quat([x, y, z, w]).as_matrix(), dtype=torch.float32)
    assert torch.allclose(rot, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=0.05)
    noise = torch.randn((2, 3), generator=torch.Generator().manual_seed(5)) * parent_scale
    expect = before["means"][1] + noise @ rot.T
    assert torch.allclose(t["means"][3:], expect, atol=1e-6)
    # Adam moments: survivors keep theirs, new rows start at zero
    for name in ("means", "sh_dc"):
        m = params.optimizer.state[params[name]]["exp_avg"]
        assert m.shape[0] == 5
        assert torch.equal(m[0], moments[name][0]) and torch.equal(m[1], moments[name][4])
        assert not m[0].eq(0).all() and m[2:].eq(0).all()
    assert params.group("means")["params"][0] is params["means"]
    # an optimizer step still works on the new tensors
    sum((x * x).sum() for x in params.tensors.values() if x.requires_grad).backward()
    params.optimizer.step()


def test_size_pruning_only_when_asked():
    params = GaussianParams.from_model(constructed_model(), LRS)
    res = densify_and_prune(params, constructed_stats(), DensifyConfig(), 1.0, prune_large=False,
                            generator=torch.Generator().manual_seed(0))
    assert (res.pruned, res.after) == (1, 6)  # only the transparent one
    stats = constructed_stats()
    stats.max_radius[:] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5])  # G4 covers half the image width
    params = GaussianParams.from_model(constructed_model(), LRS)
    res = densify_and_prune(params, stats, DensifyConfig(max_screen_fraction=0.1), 1.0, prune_large=True,
                            generator=torch.Generator().manual_seed(0))
    assert (res.pruned, res.after) == (3, 4)
    with pytest.raises(DensifyError, match="statistics"):
        densify_and_prune(params, DensityStats(3), DensifyConfig(), 1.0, True)


def test_opacity_reset_and_row_edits():
    params = _params_after_one_step()
    before = torch.sigmoid(params["opacity_logits"].detach())
    params.reset_opacity(0.01)
    op = torch.sigmoid(params["opacity_logits"].detach())
    assert torch.allclose(op, torch.clamp_max(before, 0.01), rtol=1e-4) and op[2] < 0.002
    assert params.optimizer.state[params["opacity_logits"]]["exp_avg"].eq(0).all()
    params.keep(torch.tensor([True, False, True, False, True]))
    assert len(params) == 3 and params.optimizer.state[params["quats"]]["exp_avg_sq"].shape == (3, 4)
    with pytest.raises(DensifyError, match="row counts"):
        params.append({k: v[:1] if k != "sh_dc" else v[:2] for k, v in params.tensors.items()})


def test_view_space_gradient_is_exact_for_a_loss_on_projected_centers():
    cloud = np.random.default_rng(0).normal(size=(100, 3))
    cam = orbit_cameras(cloud, 3, 64, 48)[1]
    means = torch.tensor([[0.1, 0.2, 0.3], [-0.2, 0.1, 0.0]], dtype=torch.float64, requires_grad=True)
    w2c = torch.as_tensor(cam.world_to_cam)
    p = means @ w2c[:3, :3].T + w2c[:3, 3]
    u = cam.fx * p[:, 0] / p[:, 2] + cam.cx
    v = cam.fy * p[:, 1] / p[:, 2] + cam.cy
    a, b = torch.tensor([0.3, -1.2], dtype=torch.float64), torch.tensor([0.7, 0.4], dtype=torch.float64)
    (a * u + b * v).sum().backward()
    got = view_space_grad_norm(means.grad, p[:, 2].detach(), cam)
    expect = torch.sqrt((a * cam.width / 2) ** 2 + (b * cam.height / 2) ** 2)
    assert (p[:, 2] > 1.0).all() and torch.allclose(got, expect, rtol=1e-10)
    vis, radius, depth = screen_footprint(means.detach(), torch.full((2, 3), math.log(0.01), dtype=torch.float64),
                                          cam)
    assert vis.all() and torch.allclose(radius, 3 * 0.01 * cam.fx / depth)


def test_schedule_helpers():
    assert position_lr(0, 100, 1e-2, 1e-4) == pytest.approx(1e-2)
    assert position_lr(50, 100, 1e-2, 1e-4) == pytest.approx(1e-3)
    assert position_lr(100, 100, 1e-2, 1e-4) == pytest.approx(1e-4)
    cfg = FitConfig.for_iterations(30_000)
    assert (cfg.sh_increase_every, cfg.densify_from, cfg.densify_until, cfg.densify_every,
            cfg.opacity_reset_every) == (1000, 500, 15_000, 100, 3000)
    cams = [Camera.look_at(4 * np.array(d, float), (0, 0, 0), (0, 0, 1), 16, 16, 40.0)
            for d in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0))]
    assert scene_extent(cams) == pytest.approx(4.4)
    m = random_init(500, 1.3, 3, 0.1, seed=0)
    assert m.sh.shape == (500, 16, 3) and np.abs(m.means).max() <= 1.3
    assert np.allclose(m.opacities, 0.1) and np.all(np.isfinite(m.log_scales)) and np.all(m.sh[:, 1:] == 0)
    with pytest.raises(FitError):
        FitConfig(sh_degree=4)
    with pytest.raises(FitError):
        FitConfig(densify_every=0)


def _tiny_cfg(iters, **kw):
    base = dict(init_points=1500, densify_from=1, densify_every=2, densify_until=iters, opacity_reset_every=3,
                eval_views=2, num_threads=1, checkpoint_every=1000)
    base.update(kw)
    return FitConfig.for_iterations(iters, **base)


def test_fit_runs_on_three_mic_views(tmp_path):
    mic = shared_path(MIC)
    out = tmp_path / "mic.ply"
    res = fit(str(mic), str(out), resolution=32, iters=10, config=_tiny_cfg(10), train_limit=3, progress=False)
    assert res.finished and res.iteration == 10 and res.resolution == (32, 32)
    assert res.eval_views == 2 and 5.0 < res.psnr < 60.0
    model = read_ply(out)
    assert model.sh_degree == 3 and len(model) == res.num_gaussians
    assert [e["step"] for e in res.events] == [2, 4, 6, 8]
    n = 1500
    for e in res.events:
        assert e["before"] == n and e["after"] == n + e["cloned"] + e["split"] - e["pruned"]
        n = e["after"]
    assert n == res.num_gaussians and any(e["cloned"] + e["split"] > 0 for e in res.events)


def test_checkpoint_resume_matches_an_uninterrupted_run(tmp_path):
    mic = shared_path(MIC)
    cfg = _tiny_cfg(8, eval_views=0)
    full = fit(str(mic), None, resolution=32, iters=8, config=cfg, train_limit=3, progress=False)
    ck = str(tmp_path / "fit.ckpt")
    half = fit(str(mic), None, resolution=32, iters=8, config=cfg, train_limit=3, checkpoint=ck, stop_after=4,
               progress=False)
    assert not half.finished and half.iteration == 4
    runtime_change = dataclasses.replace(cfg, eval_views=1, checkpoint_every=3)  # allowed on resume
    rest = fit(str(mic), str(tmp_path / "out.ply"), resolution=32, iters=8, config=runtime_change, train_limit=3,
               checkpoint=ck, resume=True, progress=False)
    assert rest.eval_views == 1
    assert rest.finished and rest.iteration == 8 and rest.events == full.events
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert np.array_equal(getattr(rest.model, name), getattr(full.model, name)), name
    # a checkpoint refuses a run with other settings, and resuming needs a file
    with pytest.raises(FitError, match="iters"):
        fit(str(mic), None, resolution=32, iters=9, config=cfg, train_limit=3, checkpoint=ck, resume=True,
            progress=False)
    with pytest.raises(FitError, match="other settings: init_points"):
        fit(str(mic), None, resolution=32, iters=8, config=_tiny_cfg(8, eval_views=0, init_points=100),
            train_limit=3, checkpoint=ck, resume=True, progress=False)
    with pytest.raises(FitError, match="no checkpoint"):
        fit(str(mic), None, resolution=32, iters=8, config=cfg, checkpoint=str(tmp_path / "none"), resume=True,
            progress=False)
    with pytest.raises(FitError, match="needs a checkpoint"):
        fit(str(mic), None, resolution=32, iters=8, config=cfg, resume=True, progress=False)


def test_cli(tmp_path, capsys):
    mic = shared_path(MIC)
    parser = argparse.ArgumentParser(prog="ralhe fit")
    add_fit_arguments(parser)
    args = parser.parse_args([str(mic), str(tmp_path / "m.ply"), "--resolution", "24", "--iters", "4",
                              "--train-views", "2", "--eval-views", "1", "--init-points", "300", "--threads", "1",
                              "--checkpoint", str(tmp_path / "c.ckpt"), "--quiet"])
    assert run_fit_command(args) == 0
    assert "test PSNR" in capsys.readouterr().out
    assert (tmp_path / "m.ply").is_file() and (tmp_path / "c.ckpt").is_file()
    with pytest.raises(SystemExit):
        parser.parse_args([str(mic), "x.ply", "--iters", "0"])


def test_view_space_gradient_estimate_matches_the_exact_2d_gradient_in_a_render():
    """Beside the renderer's own 2D-mean gradient (read through its internals) on a random scene."""
    try:
        from ralhe_me.render.projection import project_gaussians
        from ralhe_me.render.rasterizer import composite
    except ImportError:  # pragma: no cover - internals renamed: the estimate is still tested above
        pytest.skip("renderer internals not available")
    from ralhe_me.train.finetune import photometric_loss

    model = random_init(400, 0.8, 1, 0.5, seed=2)
    cam = orbit_cameras(model.means, 4, 48, 48)[1]
    target = torch.rand(48, 48, 3, generator=torch.Generator().manual_seed(0))
    t = [torch.tensor(a, dtype=torch.float64, requires_grad=True)
         for a in (model.means, model.quats, model.log_scales, model.opacity_logits, model.sh)]
    proj = project_gaussians(*t, cam)
    proj.means2d.retain_grad()
    color, t_final = composite(proj, proj.colors, cam, backend="torch")
    photometric_loss(color + t_final[..., None], target.double()).backward()
    g2 = proj.means2d.grad
    exact = torch.zeros(len(model), dtype=torch.float64)
    exact[proj.index] = torch.sqrt((g2[:, 0] * cam.width / 2) ** 2 + (g2[:, 1] * cam.height / 2) ** 2)
    vis, _, depth = screen_footprint(t[0].detach(), t[2].detach(), cam)
    est = view_space_grad_norm(t[0].grad, depth, cam)
    sel = exact > 1e-8
    assert sel.sum() > 100 and vis[proj.index].all()
    ratio = est[sel] / exact[sel]
    assert abs(float(ratio.median()) - 1.0) < 0.05  # measured 1.019 here; 1.000 on a fitted mic model
    assert np.corrcoef(est[sel].numpy(), exact[sel].numpy())[0, 1] > 0.99
