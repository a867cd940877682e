"""A sweep's results on disk: each job's coded file and its result row, written as it finishes.

Rows live in ``<scene folder>/rows/<file name>.json``; a failed job leaves
``<file name>.failed.json`` with its error instead. A job counts as done when its row carries
the job's current key and its coded file has the row's size, so an interrupted sweep resumes
where it stopped and a changed setting redoes exactly the jobs it affects. Every write is atomic
(a temporary file renamed into place): a sweep killed mid-write leaves no half row or file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from .spec import Job, SceneSettings

ROWS = "rows"
SCENE_SUMMARY = "scene.json"
VOXELS = "voxels.npz"
LATENTS_SUFFIX = ".latents.npy"  # a RALHE job's latent planes, for the latent figure
PREVIEW_SUFFIX = ".view.npy"  # a job's render of the first evaluation view, for views.png
REFERENCE_VIEW = "reference_view.npy"  # the target of that view


def write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, value) -> None:
    write_bytes(path, json.dumps(value, indent=2).encode())


def row_path(settings: SceneSettings, job: Job) -> Path:
    return Path(settings.out) / ROWS / f"{job.file_name}.json"


def failure_path(settings: SceneSettings, job: Job) -> Path:
    return Path(settings.out) / ROWS / f"{job.file_name}.failed.json"


def finished_row(settings: SceneSettings, job: Job) -> Optional[dict]:
    """The job's row if it is done with the current settings (and its file is intact), else None."""
    path = row_path(settings, job)
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if row.get("job_key") != settings.job_key(job):
        return None
    coded = Path(settings.out) / job.file_name
    if not coded.is_file() or coded.stat().st_size != row.get("total_bytes"):
        return None
    return row


def record_outcome(settings: SceneSettings, outcome) -> None:
    """Write a finished job's file, latent planes and row (the row last: it marks the job done),
    or its failure."""
    job = outcome.job
    if not outcome.ok:
        record_failure(settings, job, outcome.error, outcome.traceback)
        return
    out = Path(settings.out)
    (out / ROWS).mkdir(parents=True, exist_ok=True)
    write_bytes(out / job.file_name, outcome.data)
    if outcome.planes is not None:
        save_array(out / ROWS / (job.file_name + LATENTS_SUFFIX), outcome.planes)
    if outcome.preview is not None:
        save_array(out / ROWS / (job.file_name + PREVIEW_SUFFIX), outcome.preview)
    write_json(row_path(settings, job), outcome.row)
    failure = failure_path(settings, job)
    if failure.exists():
        failure.unlink()


def record_preparation(settings: SceneSettings, record) -> None:
    """``scene.json`` and the voxel coordinates of a prepared scene (a PreparationRecord) from its
    lowest geometry tier (the latent figure's voxels); every tier's summary in ``rows/``."""
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ROWS).mkdir(exist_ok=True)
    write_json(out / ROWS / f"scene_tier{record.tier}.json", record.summary)
    if record.tier != min(settings.job_tier(job) for job in settings.jobs()):
        return
    tmp = out / ROWS / (VOXELS + ".part.npz")
    np.savez(tmp, coords=record.coords, depth=record.depth)
    os.replace(tmp, out / ROWS / VOXELS)
    (out / ROWS).mkdir(exist_ok=True)
    save_array(out / ROWS / REFERENCE_VIEW, record.reference_view)
    write_json(out / SCENE_SUMMARY, record.summary)


def save_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".part.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def record_failure(settings: SceneSettings, job: Job, error: str, trace: str) -> None:
    (Path(settings.out) / ROWS).mkdir(parents=True, exist_ok=True)
    write_json(failure_path(settings, job), {"job": job.id, "error": error, "traceback": trace})


def scene_rows(settings: SceneSettings) -> List[dict]:
    """The finished rows of a scene, in job order (jobs not done are left out)."""
    rows = []
    for job in settings.jobs():
        row = finished_row(settings, job)
        if row is not None:
            rows.append(row)
    return rows
