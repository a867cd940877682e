"""One sweep job: code a prepared scene with one codec at one rate, decode the file from its
bytes, score the decode, and record the file and its row.

The same function runs in the serial loop and in a Ray worker, with the scene's thread count, so
both produce the same bytes for the same settings and seeds. It writes nothing: the bytes and
the row travel back to the process that runs the sweep, which records them (see ``store``), so
workers on other machines need no shared output folder.
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..decode.decoder import decode_bytes
from ..eval.evaluation import score_views
from ..threads import intra_op_threads
from .scene import PreparedScene
from .spec import BASELINES, PEERS, RALHE, Job

FIELDS = ["codec", "parameter", "total_bytes", "positions_bytes", "covariance_bytes", "attribute_bytes",
          "bits_per_gaussian", "psnr", "ssim", "encode_seconds", "decode_seconds"]
DECODE_REPEATS = 3


class JobError(RuntimeError):
    """A job's output is inconsistent (e.g. the decoder disagrees with the encoder)."""


@dataclass
class JobOutcome:
    """What a job reports back: its row, file and latent planes, or its error and traceback."""

    job: Job
    row: Optional[dict] = None
    data: Optional[bytes] = None  # the coded file
    planes: Optional[np.ndarray] = None  # [L, N] latent_planes() of a RALHE job
    preview: Optional[np.ndarray] = None  # [H, W, 3] uint8: the first evaluation view of the decode
    error: Optional[str] = None
    traceback: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.row is not None


def run_job(prepared: PreparedScene, job: Job) -> JobOutcome:
    """Run ``job``; a failure of the job itself comes back as an outcome, never as an exception."""
    try:
        with intra_op_threads(prepared.settings.threads):
            return _run(prepared, job)
    except Exception as exc:  # noqa: BLE001 - a failed job is reported, the sweep goes on
        return failed(job, exc)


def failed(job: Job, exc: BaseException) -> JobOutcome:
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return JobOutcome(job, error=f"{type(exc).__name__}: {exc}", traceback=trace)


def _run(prepared: PreparedScene, job: Job) -> JobOutcome:
    planes = None
    t0 = time.perf_counter()
    if job.codec == RALHE:
        from ..encode.encoder import encode_model

        config = dataclasses.replace(prepared.config, lmbda=job.parameter)
        result = encode_model(None, config, voxelized=prepared.voxelized, geometry=prepared.geometry,
                              render_target=prepared.render_target)
        data, sections, expected = result.data, result.section_bytes, result.reconstruction
        planes = latent_planes(result.training, prepared.voxelized)
    elif job.codec in BASELINES:
        from ..encode.baseline_codec import encode_baseline

        data, sections = encode_baseline(job.codec, prepared.voxelized, job.parameter, prepared.config,
                                         prepared.geometry)
        expected = None
    elif job.codec in PEERS:
        return _run_peer(prepared, job)
    else:
        raise JobError(f"unknown codec {job.codec!r}")
    encode_seconds = time.perf_counter() - t0
    decoded, decode_seconds = timed_decode(data)
    if expected is not None and not (np.array_equal(decoded.model.sh, expected.sh)
                                     and np.array_equal(decoded.model.opacity_logits, expected.opacity_logits)):
        raise JobError(f"{job.id}: the decoded attributes differ from the encoder's reconstruction")
    return _scored(prepared, job, decoded.model, data, sections, encode_seconds, decode_seconds, planes)


def _scored(prepared: PreparedScene, job: Job, model, data: bytes, sections, encode_seconds: float,
            decode_seconds: float, planes=None) -> JobOutcome:
    score = score_views(model, prepared.views)
    row = make_row(job.codec, job.parameter, len(data), sections, score, encode_seconds, decode_seconds,
                   len(prepared.voxelized.model))
    row.update(scene=job.scene, file=job.file_name, job_key=prepared.settings.job_key(job))
    return JobOutcome(job, row=row, data=data, planes=planes, preview=preview(model, prepared.views))


def _run_peer(prepared: PreparedScene, job: Job) -> JobOutcome:
    """A format people ship, made by splat-transform from the uncoded input; its decode time is
    the whole decoding process (median of 3), as its users pay it."""
    import tempfile

    from ..eval.peers import encode_peer
    from ..gaussians import write_ply
    from .scene import load_scene

    settings = prepared.settings
    with tempfile.TemporaryDirectory(prefix="ralhe_peer_") as tmp:
        source = settings.scene
        if not source:  # a generated scene: its .ply, as a user would have it
            source = str(Path(tmp) / f"{settings.name}.ply")
            write_ply(load_scene(settings), source)
        result = encode_peer(job.codec, source, Path(tmp) / "coded", decode_repeats=DECODE_REPEATS,
                             sog_iterations=settings.sog_iterations)
        data = Path(result.path).read_bytes()
    return _scored(prepared, job, result.model, data, {}, result.encode_s, result.decode_s)


def preview(model, views) -> np.ndarray:  # [H, W, 3] uint8
    """The first evaluation view of ``model``, for the side-by-side figure (views.png)."""
    import torch

    from ..render import render_model

    with torch.no_grad():
        image = render_model(model, views.cameras[0]).numpy()
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_row(codec, parameter, total, section_bytes, score, enc_s, dec_s, n) -> dict:
    attribute = total - section_bytes.get("positions", 0) - section_bytes.get("covariance", 0)
    return {"codec": codec, "parameter": parameter, "total_bytes": total,
            "positions_bytes": section_bytes.get("positions", 0),
            "covariance_bytes": section_bytes.get("covariance", 0), "attribute_bytes": attribute,
            "bits_per_gaussian": 8 * total / n, "psnr": score.psnr, "ssim": score.ssim,
            "encode_seconds": enc_s, "decode_seconds": dec_s}


def timed_decode(data: bytes):
    """(decode result, median seconds of ``DECODE_REPEATS`` decodes): one decode of a file this
    small is at the mercy of the scheduler, and RALHE's and the baselines' times are compared."""
    times = []
    for _ in range(DECODE_REPEATS):
        t0 = time.perf_counter()
        decoded = decode_bytes(data)
        times.append(time.perf_counter() - t0)
    return decoded, float(np.median(times))


def latent_planes(training, vox) -> np.ndarray:  # [L, N]
    """What each octree level's latents of the DC color attribute (first channel) add to the
    points: the paper's Figure 4, one row of it per rate. For the RAHT transform, the inverse
    transform of that level's coefficients (the last level: every coarser one too); for the
    pyramid, the level's latents copied down to the voxels."""
    synthesis = training.synthesis
    levels = synthesis.arch.num_levels
    if synthesis.arch.transform != "raht":
        return np.stack([training.latents[level][0][synthesis._plane_p2v[level]].numpy().astype(np.float64)
                         for level in range(levels)])
    from ..baselines.raht import build_plan, raht_inverse_plan

    plan = build_plan(vox.coords, vox.depth)
    band = np.minimum(plan.coeff_levels, levels - 1)
    lat = training.latents[0][0].numpy().astype(np.float64)
    return np.stack([raht_inverse_plan(plan, np.where(band == level, lat, 0.0)) for level in range(levels)])
