"""Finetuning with fixed positions: it must improve PSNR, keep the means bit for bit, refuse bad targets."""
import argparse
import dataclasses

import numpy as np
import pytest
import torch

from ralhe_me.train.finetune import (FinetuneConfig, FinetuneError, ViewSampler, add_finetune_arguments, check_views,
                                     finetune, mean_psnr, photometric_loss, run_finetune_command, sample_orbit_cameras,
                                     ssim_torch)
from ralhe_me.gaussians import GaussianModel, read_ply, write_ply
from ralhe_me.render import orbit_cameras, render_model


def tiny_scene(n=300, seed=0) -> GaussianModel:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n, 3)) * 0.5
    sh = np.zeros((n, 4, 3), np.float32)
    sh[:, 0] = rng.uniform(-1.5, 1.5, size=(n, 3))
    sh[:, 1:] = rng.normal(size=(n, 3, 3)) * 0.1
    quats = rng.normal(size=(n, 4))
    return GaussianModel(means=means, log_scales=np.log(rng.uniform(0.05, 0.15, size=(n, 3))), quats=quats,
                         opacity_logits=rng.uniform(0.0, 3.0, size=n), sh=sh)


def perturbed(model: GaussianModel, seed=1) -> GaussianModel:
    rng = np.random.default_rng(seed)
    n = len(model)
    return GaussianModel(means=model.means.copy(),
                         log_scales=model.log_scales + rng.normal(size=(n, 3)).astype(np.float32) * 0.3,
                         quats=model.quats + rng.normal(size=(n, 4)).astype(np.float32) * 0.2,
                         opacity_logits=model.opacity_logits - 1.0,
                         sh=model.sh + rng.normal(size=model.sh.shape).astype(np.float32) * 0.4)


SMALL = dict(resolution=48, teacher_views=24, eval_views=6, seed=0, num_threads=1)


def test_teacher_finetune_improves_psnr_and_keeps_means():
    teacher = tiny_scene()
    student = perturbed(teacher)
    before = student.copy()
    out, rep = finetune(student, teacher=teacher, iters=150, config=FinetuneConfig(**SMALL), progress=False)
    assert rep.psnr_after > rep.psnr_before + 1.5, (rep.psnr_before, rep.psnr_after)  # measured: 22.3 -> 24.3
    assert np.array_equal(out.means, student.means) and out.means.dtype == np.float32
    assert len(out) == len(student) and out.sh.shape == student.sh.shape
    for name in ("log_scales", "quats", "opacity_logits", "sh"):  # input untouched, output changed
        assert np.array_equal(getattr(student, name), getattr(before, name))
        assert not np.array_equal(getattr(out, name), getattr(student, name))
    assert rep.eval_source == "teacher orbit" and rep.eval_views == 6 and rep.iters == 150
    assert rep.kept and rep.check_psnr[1] > rep.check_psnr[0]
    assert len(rep.loss_history) == 150 and rep.resolution == (48, 48)
    assert np.mean(rep.loss_history[-20:]) < 0.8 * np.mean(rep.loss_history[:20])
    # the report's PSNR is what an independent evaluation of the returned model gives
    cams = orbit_cameras(teacher.means, 6, 48, 48)
    refs = [render_model(teacher, c).numpy() for c in cams]
    assert mean_psnr(out, cams, refs) == pytest.approx(rep.psnr_after, abs=1e-9)


def test_finetune_is_deterministic_and_zero_iters_is_identity():
    teacher = tiny_scene(n=120)
    student = perturbed(teacher)
    cfg = FinetuneConfig(**{**SMALL, "teacher_views": 8, "eval_views": 2})
    a, _ = finetune(student, teacher=teacher, iters=5, config=cfg, progress=False)
    b, _ = finetune(student, teacher=teacher, iters=5, config=cfg, progress=False)
    assert np.array_equal(a.sh, b.sh) and np.array_equal(a.log_scales, b.log_scales)
    same, rep = finetune(student, teacher=teacher, iters=0, config=cfg, progress=False)
    assert np.array_equal(same.sh, student.sh) and rep.psnr_after == rep.psnr_before


def test_steps_that_make_the_check_views_worse_are_not_kept():
    """Adam moves every attribute by about its learning rate per step: a student already close to
    its teacher only gets worse from large steps, and the input must come back unchanged."""
    teacher = tiny_scene(n=150)
    rng = np.random.default_rng(4)
    student = teacher.copy()
    student.sh = student.sh + rng.normal(size=student.sh.shape).astype(np.float32) * 0.01
    cfg = FinetuneConfig(**{**SMALL, "teacher_views": 8, "eval_views": 2}).with_learning_rates_scaled(20.0)
    out, rep = finetune(student, teacher=teacher, iters=5, config=cfg, progress=False)
    assert not rep.kept and rep.check_psnr[1] < rep.check_psnr[0]
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert np.array_equal(getattr(out, name), getattr(student, name)), name
    assert rep.psnr_after == rep.psnr_before
    # without the check the same steps are kept, and they are worse on the held-out views too
    unchecked, rep2 = finetune(student, teacher=teacher, iters=5, config=dataclasses.replace(cfg, check_views=0),
                               progress=False)
    assert rep2.kept and rep2.psnr_after < rep2.psnr_before - 3.0
    assert not np.array_equal(unchecked.sh, student.sh)


def test_learning_rates_scale_together():
    base = FinetuneConfig()
    half = base.with_learning_rates_scaled(0.5)
    assert half.learning_rates() == {k: v * 0.5 for k, v in base.learning_rates().items()}
    assert half.resolution == base.resolution and half.check_views == base.check_views
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(FinetuneError, match="learning-rate factor"):
            base.with_learning_rates_scaled(bad)
    with pytest.raises(FinetuneError, match="check_views"):
        FinetuneConfig(check_views=-1)


def test_cameras_and_images_target_with_test_views():
    teacher = tiny_scene(n=200)
    student = perturbed(teacher, seed=3)
    cams = sample_orbit_cameras(teacher.means, 12, 40, 40, seed=5)
    imgs = [render_model(teacher, c).numpy() for c in cams]
    tcams = orbit_cameras(teacher.means, 3, 40, 40)
    timgs = [render_model(teacher, c).numpy() for c in tcams]
    out, rep = finetune(student, cameras=cams, images=imgs, test_cameras=tcams, test_images=timgs, iters=40,
                        config=FinetuneConfig(resolution=40, ssim_weight=0.0, num_threads=1), progress=False)
    assert rep.eval_source == "given test views" and rep.eval_views == 3
    assert rep.psnr_after > rep.psnr_before + 1.0
    assert np.array_equal(out.means, student.means)


def test_dataset_target_scores_on_the_test_split():
    from conftest import MIC, shared_path

    from ralhe_me.train.fit import random_init

    mic = shared_path(MIC)
    model = random_init(400, 1.0, 1, 0.3, seed=0)
    cfg = FinetuneConfig(resolution=32, train_views=2, eval_views=2, num_threads=1)
    out, rep = finetune(model, dataset=str(mic), iters=10, config=cfg, progress=False)
    assert rep.eval_source == "dataset test split" and rep.eval_views == 2 and rep.resolution == (32, 32)
    assert np.array_equal(out.means, model.means) and np.isfinite(rep.psnr_after)


def test_target_errors():
    m = tiny_scene(n=20)
    cams = orbit_cameras(m.means, 2, 16, 16)
    imgs = [np.zeros((16, 16, 3), np.float32)] * 2
    with pytest.raises(FinetuneError, match="exactly one"):
        finetune(m, progress=False)
    with pytest.raises(FinetuneError, match="exactly one"):
        finetune(m, teacher=m, dataset="/nonexistent", progress=False)
    with pytest.raises(FinetuneError, match="exactly one"):
        finetune(m, teacher=m, cameras=cams, images=imgs, progress=False)
    with pytest.raises(FinetuneError, match="together"):
        finetune(m, cameras=cams, progress=False)
    with pytest.raises(FinetuneError, match="2 training cameras but 1 training images"):
        finetune(m, cameras=cams, images=imgs[:1], progress=False)
    with pytest.raises(FinetuneError, match="shape"):
        finetune(m, cameras=cams, images=[np.zeros((16, 17, 3), np.float32)] * 2, progress=False)
    with pytest.raises(FinetuneError, match="together"):
        finetune(m, cameras=cams, images=imgs, test_cameras=cams, progress=False)
    with pytest.raises(FinetuneError, match="test image"):
        finetune(m, cameras=cams, images=imgs, test_cameras=cams, test_images=imgs[:1], progress=False)
    with pytest.raises(FinetuneError, match="iters"):
        finetune(m, teacher=m, iters=-1, progress=False)
    with pytest.raises(FinetuneError, match="empty"):
        finetune(m.subset(np.zeros(0, dtype=np.int64)), teacher=m, progress=False)
    with pytest.raises(FinetuneError, match="views_per_step"):
        FinetuneConfig(views_per_step=0)
    with pytest.raises(FinetuneError, match="ssim_weight"):
        FinetuneConfig(ssim_weight=1.5)
    with pytest.raises(FinetuneError, match="no training views"):
        check_views([], [])


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Pixel by pixel SSIM with an explicit 11x11 Gaussian window and zero padding."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    h, wd, c = x.shape
    xp, yp = (np.pad(a, ((5, 5), (5, 5), (0, 0))) for a in (x, y))
    vals = []
    for ch in range(c):
        for i in range(h):
            for j in range(wd):
                a, b = xp[i:i + 11, j:j + 11, ch], yp[i:i + 11, j:j + 11, ch]
                mx, my = (w * a).sum(), (w * b).sum()
                vx, vy, cxy = (w * a * a).sum() - mx * mx, (w * b * b).sum() - my * my, (w * a * b).sum() - mx * my
                vals.append((2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx * mx + my * my + 1e-4) * (vx + vy + 9e-4)))
    return float(np.mean(vals))


def test_ssim_matches_slow_reference_and_loss_is_differentiable():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(13, 17, 3))
    y = np.clip(x + rng.normal(size=x.shape) * 0.1, 0, 1)
    got = float(ssim_torch(torch.tensor(x), torch.tensor(y)))
    assert got == pytest.approx(_ssim_reference(x, y), abs=1e-10)
    from ralhe_me.eval.metrics import ssim

    assert got == pytest.approx(ssim(x, y), abs=1e-10)  # the evaluation metric, written separately
    assert float(ssim_torch(torch.tensor(x), torch.tensor(x))) == pytest.approx(1.0, abs=1e-12)
    img = torch.tensor(x, requires_grad=True)
    loss = photometric_loss(img, torch.tensor(y))
    loss.backward()
    assert loss.item() > 0 and img.grad.abs().sum() > 0
    assert photometric_loss(torch.tensor(y), torch.tensor(y)).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(FinetuneError):
        ssim_torch(torch.zeros(4, 4, 3), torch.zeros(4, 5, 3))


def test_random_cameras_are_deterministic_and_aimed_at_the_model():
    m = tiny_scene(n=50)
    a = sample_orbit_cameras(m.means, 5, 32, 24, seed=7)
    b = sample_orbit_cameras(m.means, 5, 32, 24, seed=7)
    c = sample_orbit_cameras(m.means, 5, 32, 24, seed=8)
    assert all(np.array_equal(x.world_to_cam, y.world_to_cam) for x, y in zip(a, b))
    assert not np.array_equal(a[0].world_to_cam, c[0].world_to_cam)
    center = np.median(m.means, axis=0)[None]
    for cam in a:
        uv, z = cam.project(center)
        assert z[0] > 0 and np.allclose(uv[0], [16.0, 12.0], atol=1e-6)


def test_view_sampler_covers_each_view_once_per_pass_and_resumes():
    s = ViewSampler(7, seed=3)
    first = s.take(7)
    assert sorted(first) == list(range(7))
    state = s.state_dict()
    ahead = s.take(10)
    s2 = ViewSampler(7, seed=99)
    s2.load_state_dict(state)
    assert s2.take(10) == ahead


def test_cli_teacher(tmp_path, capsys):
    teacher = tiny_scene(n=150)
    student = perturbed(teacher)
    write_ply(teacher, tmp_path / "teacher.ply")
    write_ply(student, tmp_path / "student.ply")
    parser = argparse.ArgumentParser(prog="ralhe finetune")
    add_finetune_arguments(parser)
    args = parser.parse_args([str(tmp_path / "student.ply"), str(tmp_path / "out.ply"), "--teacher",
                              str(tmp_path / "teacher.ply"), "--iters", "20", "--resolution", "32",
                              "--eval-views", "2", "--teacher-views", "8", "--threads", "1", "--quiet"])
    assert run_finetune_command(args) == 0
    text = capsys.readouterr().out
    assert "PSNR before" in text and "after" in text
    out = read_ply(tmp_path / "out.ply")
    assert np.array_equal(out.means, student.means) and len(out) == len(student)
    with pytest.raises(SystemExit):  # both targets
        parser.parse_args(["a.ply", "b.ply", "--teacher", "t.ply", "--dataset", "d"])
    with pytest.raises(SystemExit):  # neither
        parser.parse_args(["a.ply", "b.ply"])


def test_random_cameras_keep_a_small_model_beyond_the_near_plane():
    m = tiny_scene(n=200)
    small = m.means * 0.05  # radius ~0.05: the orbit distance would fall inside the 0.2 near plane
    for cam in sample_orbit_cameras(small, 10, 32, 32, seed=1):
        _, z = cam.project(small)
        assert z.min() > 0.2


def test_cosine_factor_matches_the_inline_schedules_it_replaced():
    """The stages' schedules came from one helper; each must give the rates they gave before,
    bit for bit (a changed rate changes every coded file)."""
    import math

    from ralhe_me.train.optimizer import cosine_factor

    rng = np.random.default_rng(0)
    for steps in (1, 7, 500):
        for step in range(steps):
            f = step / steps
            lr = float(rng.uniform(1e-4, 1e-1))
            assert lr * cosine_factor(f) == lr * 0.5 * (1 + math.cos(math.pi * f))  # refit_arm's
            floor = 0.02
            decay = 0.5 * (1 + math.cos(math.pi * f))
            assert lr * cosine_factor(f, floor) == lr * (floor + (1 - floor) * decay)  # render_refine's
    assert cosine_factor(0.0, 0.05) == 1.0 and cosine_factor(1.0, 0.05) == pytest.approx(0.05, abs=1e-15)
    values = [cosine_factor(i / 50, 0.05) for i in range(51)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_decaying_learning_rates_change_the_steps_after_the_first():
    """final_lr_fraction < 1 scales every group's rate from the second step on: one step gives the
    constant schedule's result exactly, three steps do not."""
    teacher = tiny_scene(n=120)
    student = perturbed(teacher)
    runs = {}
    for iters in (1, 3):
        for fraction in (1.0, 0.05):
            cfg = FinetuneConfig(**dict(SMALL, teacher_views=4, eval_views=2), check_views=0,
                                 final_lr_fraction=fraction)
            runs[iters, fraction], _ = finetune(student, teacher=teacher, iters=iters, config=cfg, progress=False)
    for name in ("log_scales", "quats", "opacity_logits", "sh"):
        assert np.array_equal(getattr(runs[1, 1.0], name), getattr(runs[1, 0.05], name))
        assert not np.array_equal(getattr(runs[3, 1.0], name), getattr(runs[3, 0.05], name))
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(FinetuneError, match="final_lr_fraction"):
            FinetuneConfig(final_lr_fraction=bad)
