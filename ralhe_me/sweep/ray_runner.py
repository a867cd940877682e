"""The sweep's jobs as Ray tasks: one preparation task per scene, one task per (scene, codec,
rate) that takes the preparation's result from the object store (never recomputed). Outcomes
come back to this process, which writes them (workers on other machines need no shared output
folder; they do need the scenes' and datasets' paths, and the package installed).

Ray is optional: ``pip install 'ray[default]'`` or ``pip install -e '.[ray]'``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..allocator import keep_freed_memory
from .jobs import JobOutcome, failed, run_job
from .scene import prepare_scene, preparation_record
from .spec import Job, Sweep
from .store import record_outcome, record_preparation

RAY_INSTALL_HINT = "pip install 'ray[default]>=2.9'  (or: pip install -e '.[ray]' in the project)"


class RayUnavailableError(RuntimeError):
    """``--ray`` was asked for but Ray is not installed (the message says how to install it)."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(f"Ray is not installed; install it with: {RAY_INSTALL_HINT}") from None
    return ray


@dataclass
class PreparationFailure:
    """What a scene's preparation task returns instead of raising: each of its jobs reports it."""

    error: str
    traceback: str


def _prepare_task(settings, tier: int = 0):
    """A scene's preparation at geometry tier ``tier``: (the small record the driver writes, the
    scene for the jobs)."""
    keep_freed_memory()  # a Ray worker is its own process
    try:
        prepared = prepare_scene(settings, tier, log=lambda m: print(f"[sweep] {m}", flush=True))
    except Exception as exc:  # noqa: BLE001 - reported by every job of the scene
        outcome = failed(None, exc)
        failure = PreparationFailure(outcome.error, outcome.traceback)
        return failure, failure
    return preparation_record(prepared), prepared


def _job_task(prepared, job: Job) -> JobOutcome:
    keep_freed_memory()
    if isinstance(prepared, PreparationFailure):
        return JobOutcome(job, error=f"preparing {job.scene} failed: {prepared.error}", traceback=prepared.traceback)
    return run_job(prepared, job)


def _failure_of(ray, job: Job, exc: BaseException) -> JobOutcome:
    """A job whose task raised outside the job's own code, or whose worker died."""
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    return failed(job, cause if isinstance(cause, BaseException) else exc)


def run_on_ray(sweep: Sweep, pending: Dict[str, List[Job]], bar, address: Optional[str] = None,
               workers: Optional[int] = None) -> List[JobOutcome]:
    """Run ``pending`` (jobs per scene) on a local Ray instance of ``workers`` CPUs, or on the
    cluster at ``address``; each outcome is recorded as it arrives."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, logging_level="WARNING")
    try:
        return _schedule(ray, sweep, pending, bar)
    finally:
        if started_here:
            ray.shutdown()


def _schedule(ray, sweep: Sweep, pending: Dict[str, List[Job]], bar) -> List[JobOutcome]:
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    prepare = ray.remote(num_cpus=1, num_returns=2, max_retries=1)(_prepare_task)
    run = ray.remote(num_cpus=1, max_retries=1)(_job_task)
    waiting = {}  # ref -> ("prep", scene name) or ("job", job)
    for name, scene_jobs in pending.items():
        for tier, jobs in sweep.scene(name).jobs_by_tier(scene_jobs).items():
            record_ref, prepared_ref = prepare.remote(sweep.scene(name), tier)
            waiting[record_ref] = ("prep", name)
            for job in jobs:
                waiting[run.remote(prepared_ref, job)] = ("job", job)
    outcomes = []
    bar.set_running(min(cpus, len(waiting)))
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1)
        kind, what = waiting.pop(ready[0])
        if kind == "prep":
            try:
                record = ray.get(ready[0])
            except Exception:  # noqa: BLE001 - a dead worker: its jobs report the failure
                continue
            if not isinstance(record, PreparationFailure):
                record_preparation(sweep.scene(what), record)
            continue
        try:
            outcome = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - a task error or a dead worker fails this job only
            outcome = _failure_of(ray, what, exc)
        record_outcome(sweep.scene(what.scene), outcome)
        outcomes.append(outcome)
        bar.finished(outcome, was_running=False)
        bar.set_running(min(cpus, sum(1 for k, _ in waiting.values() if k == "job")))
    return outcomes
