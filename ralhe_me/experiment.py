"""The rate-distortion experiment behind ``experiments/run.py``.

One scene, voxelized (and finetuned when available) once, then coded by RALHE at several
lambdas and by the baselines at several steps, every file decoded from its bytes and
rendered; the results go to CSV/JSON, an RD plot, a Table-2 style line and the latent
visualization of the paper's Figure 4.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .config import load_preset
from .decoder import decode_bytes
from .encoder import encode_model, finetune_geometry, make_render_target, prepare
from .evaluation import dataset_views, orbit_views, score_views
from .gaussians import read_ply, write_ply


@dataclass
class ExperimentSettings:
    scene: Optional[str] = None
    dataset: Optional[str] = None
    preset: str = "fast"
    lambdas: List[float] = field(default_factory=lambda: [3e-4, 1.5e-3, 6e-3])
    out: str = "outputs/default"
    num_gaussians: int = 50_000
    views: int = 8
    resolution: int = 400
    depth: Optional[int] = None
    steps: Optional[int] = None
    render_steps: Optional[int] = None  # None: the preset's
    finetune_iters: int = 200
    baselines: List[str] = field(default_factory=lambda: ["raht", "scalar"])
    baseline_steps: List[float] = field(default_factory=lambda: [0.4, 0.2, 0.1, 0.05, 0.025])
    codebook: Optional[int] = None
    covariance_step: Optional[float] = None
    importance_views: Optional[int] = None
    target_kb: Optional[float] = None
    threads: int = 2


FIELDS = ["codec", "parameter", "total_bytes", "positions_bytes", "covariance_bytes", "attribute_bytes",
          "bits_per_gaussian", "psnr", "ssim", "encode_seconds", "decode_seconds"]


def _log(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


def run_experiment(settings: ExperimentSettings) -> dict:
    torch.set_num_threads(settings.threads)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    if settings.scene:
        original = read_ply(settings.scene)
        scene_name = Path(settings.scene).stem
    else:
        from .default_scene import make_default_scene

        original = make_default_scene(settings.num_gaussians)
        write_ply(original, out / "scene.ply")
        scene_name = "default_scene"
    _log(f"scene {scene_name}: {len(original)} Gaussians, SH degree {original.sh_degree}")

    config = load_preset(settings.preset)
    config.depth = settings.depth
    config.covariance_codebook = settings.codebook
    config.covariance_step = settings.covariance_step
    if settings.importance_views is not None:
        config.importance_views = settings.importance_views
    if settings.steps:
        config.training.steps = settings.steps
    if settings.render_steps is not None:
        if settings.render_steps < 0:
            raise ValueError(f"render_steps must be >= 0, got {settings.render_steps}")
        config.training.render_steps = settings.render_steps

    if settings.dataset:
        views = dataset_views(settings.dataset, "test", settings.views, (settings.resolution, settings.resolution))
    else:
        views = orbit_views(original, settings.views, (settings.resolution, settings.resolution), progress=True)

    t0 = time.perf_counter()
    vox = prepare(original, config)
    vox_score = score_views(vox.model, views)
    _log(f"voxelized at depth {vox.depth}: {len(vox.model)} voxels, PSNR {vox_score.psnr:.2f} dB")
    coded_psnr = None

    def on_coded(coded, covariance):
        nonlocal coded_psnr
        coded_psnr = score_views(coded.model, views).psnr
        _log(f"covariance coded (codebook {covariance.codebook.size}, residual step {covariance.steps.log_scale:g}): "
             f"PSNR {coded_psnr:.2f} dB")

    vox, geometry, ft_report = finetune_geometry(vox, original, config, settings.finetune_iters, settings.dataset,
                                                 progress=True, on_coded=on_coded)
    if geometry.gain_map is not None:
        _log(f"gain map at level {geometry.gain_map.level}: {len(geometry.gain_map.exponents)} voxels, "
             f"{len(geometry.gain_map.data)} bytes")
    reference_psnr = coded_psnr if ft_report is None else score_views(vox.model, views).psnr
    if ft_report is not None:
        _log(f"finetuned: PSNR {reference_psnr:.2f} dB")
    prep_seconds = time.perf_counter() - t0

    _log(f"geometry: positions {len(geometry.positions)} bytes, covariance {len(geometry.covariance)} bytes "
         f"(codebook {geometry.codebook_size})")
    render_target = None
    if config.training.render_steps > 0 and settings.lambdas:
        render_target = make_render_target(vox, geometry, original, config, settings.dataset)
    rows, ralhe_results = [], []
    for lmbda in sorted(settings.lambdas):
        cfg = dataclasses.replace(config, lmbda=lmbda)
        refine = f" + {cfg.training.render_steps} image-domain" if render_target is not None else ""
        _log(f"RALHE lambda={lmbda:g}: training {cfg.training.steps}{refine} steps")
        t0 = time.perf_counter()
        result = encode_model(original, cfg, voxelized=vox, geometry=geometry, render_target=render_target)
        enc_s = time.perf_counter() - t0
        path = out / f"ralhe_lambda{lmbda:g}.ralhe"
        path.write_bytes(result.data)
        decoded, dec_s = _timed_decode(path.read_bytes())
        if not np.array_equal(decoded.model.sh, result.reconstruction.sh):
            raise RuntimeError("decoded attributes differ from the encoder's reconstruction")
        score = score_views(decoded.model, views)
        sb = result.section_bytes
        rows.append(_row("ralhe", lmbda, len(result.data), sb, score, enc_s, dec_s, len(vox.model)))
        ralhe_results.append((lmbda, result))
        _log(f"  {len(result.data)} bytes, PSNR {score.psnr:.2f} dB, encode {enc_s:.1f} s, decode {dec_s:.2f} s")

    for kind in settings.baselines:
        rows += _run_baseline(kind, vox, settings, views, config, geometry)

    _write_tables(out, rows)
    summary = _summaries(out, rows, settings, reference_psnr, scene_name)
    _plot_rd(out / "rd.png", rows, scene_name, reference_psnr)
    if ralhe_results:
        _plot_latents(out / "latents.png", vox, [ralhe_results[0], ralhe_results[-1]])
    summary["preprocess_seconds"] = prep_seconds
    summary["voxelized_psnr"] = vox_score.psnr
    summary["covariance_coded_psnr"] = coded_psnr
    summary["finetuned_psnr"] = reference_psnr
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _log(f"wrote results to {out}")
    return summary


def _row(codec, parameter, total, section_bytes, score, enc_s, dec_s, n):
    attribute = total - section_bytes.get("positions", 0) - section_bytes.get("covariance", 0)
    return {"codec": codec, "parameter": parameter, "total_bytes": total,
            "positions_bytes": section_bytes.get("positions", 0),
            "covariance_bytes": section_bytes.get("covariance", 0), "attribute_bytes": attribute,
            "bits_per_gaussian": 8 * total / n, "psnr": score.psnr, "ssim": score.ssim,
            "encode_seconds": enc_s, "decode_seconds": dec_s}


DECODE_REPEATS = 3


def _timed_decode(data: bytes):
    """(decode result, median seconds of ``DECODE_REPEATS`` decodes): one decode of a file this
    small is at the mercy of the scheduler, and RALHE's and the baselines' times are compared."""
    times = []
    for _ in range(DECODE_REPEATS):
        t0 = time.perf_counter()
        decoded = decode_bytes(data)
        times.append(time.perf_counter() - t0)
    return decoded, float(np.median(times))


def _run_baseline(kind, vox, settings, views, config, geometry):
    try:
        from .baseline_codec import encode_baseline  # noqa: F401
    except ImportError:
        _log(f"baseline {kind} is not available in this version; skipped")
        return []
    rows = []
    for step in settings.baseline_steps:
        t0 = time.perf_counter()
        data, section_bytes = encode_baseline(kind, vox, step, config, geometry)
        enc_s = time.perf_counter() - t0
        (Path(settings.out) / f"{kind}_step{step:g}.ralhe").write_bytes(data)
        decoded, dec_s = _timed_decode(data)
        model = decoded.model
        score = score_views(model, views)
        rows.append(_row(kind, step, len(data), section_bytes, score, enc_s, dec_s, len(vox.model)))
        _log(f"{kind} step {step:g}: {len(data)} bytes, PSNR {score.psnr:.2f} dB")
    return rows


def _write_tables(out: Path, rows):
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    (out / "results.json").write_text(json.dumps(rows, indent=2))


def _curve(rows, codec):
    pts = sorted((r["total_bytes"], r["psnr"], r["decode_seconds"]) for r in rows if r["codec"] == codec)
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def _summaries(out: Path, rows, settings, reference_psnr, scene_name) -> dict:
    from .rd_summary import table2_line

    codecs = sorted({r["codec"] for r in rows}, key=lambda c: (c != "ralhe", c))
    curves = {c: _curve(rows, c) for c in codecs}
    line, summary = table2_line(scene_name, curves, settings.target_kb)
    (out / "table2.txt").write_text(line + "\n")
    _log(line)
    summary["reference_psnr"] = reference_psnr
    return summary


def _plot_rd(path: Path, rows, scene_name, reference_psnr):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for codec in sorted({r["codec"] for r in rows}):
        size, psnr, _ = _curve(rows, codec)
        ax.plot(np.array(size) / 1024, psnr, "o-", label=codec.upper() if codec != "ralhe" else "RALHE")
    ax.axhline(reference_psnr, color="gray", ls="--", lw=1, label="uncoded attributes, coded shapes")
    ax.set_xscale("log")
    ax.set_xlabel("file size (KiB)")
    ax.set_ylabel("rendering PSNR (dB)")
    ax.set_title(f"Rate-distortion: {scene_name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_latents(path: Path, vox, results):
    """Figure 4: the upsampled latents of the DC color attribute, per level, at two rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coords = vox.coords
    levels = results[0][1].training.synthesis.arch.num_levels
    fig, axes = plt.subplots(len(results), levels, figsize=(2.2 * levels, 2.4 * len(results)), squeeze=False)
    # view from the +x/+y diagonal, looking down a little
    proj = coords @ np.array([[0.7071, -0.4082], [-0.7071, -0.4082], [0.0, 0.8165]])
    raht_plan = None
    if results[0][1].training.synthesis.arch.transform == "raht":
        from .baselines.raht import build_plan, raht_inverse_plan

        raht_plan = build_plan(coords, vox.depth)
        band = np.minimum(raht_plan.coeff_levels, levels - 1)  # the last band: every coarser level
    for row, (lmbda, result) in enumerate(results):
        synthesis = result.training.synthesis
        for level in range(levels):
            if raht_plan is None:  # the level's latents copied down to the voxels
                up = result.training.latents[level][0][synthesis._plane_p2v[level]].numpy()
            else:  # what the coefficients of that octree level add to the points
                lat = result.training.latents[0][0].numpy().astype(np.float64)
                up = raht_inverse_plan(raht_plan, np.where(band == level, lat, 0.0))
            ax = axes[row][level]
            lim = max(1.0, np.abs(up).max())
            ax.scatter(proj[:, 0], proj[:, 1], c=up, s=0.3, cmap="coolwarm", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            if row == 0:
                ax.set_title(f"level {level}" + ("+" if raht_plan is not None and level == levels - 1 else ""))
            if level == 0:
                ax.set_ylabel(f"lambda {lmbda:g}\n{len(result.data) / 1024:.0f} KiB")
    fig.suptitle("Latents of the DC color attribute (sh0), first channel, per octree level"
                 + (" (inverse RAHT of that level's coefficients)" if raht_plan is not None else " (upsampled)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
