"""Run a sweep: skip the jobs already done, prepare each scene that has work left once, run its
jobs (one after the other here, or as Ray tasks with ``ray_runner``), record each outcome as it
arrives, show progress, and rebuild the tables and figures from the rows."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..gaussians import write_ply
from .jobs import JobOutcome, failed, run_job
from .report import write_sweep_report
from .scene import prepare_scene, preparation_record
from .spec import Job, Sweep
from .store import finished_row, record_outcome, record_preparation


def log(msg: str) -> None:
    print(f"[sweep] {msg}", flush=True)


@dataclass
class SweepResult:
    """What a sweep did: jobs run now, jobs skipped as already done, failures with their errors."""

    done: List[Job] = field(default_factory=list)
    skipped: List[Job] = field(default_factory=list)
    failures: List[JobOutcome] = field(default_factory=list)
    summaries: Dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


def pending_jobs(sweep: Sweep, resume: bool = True) -> Dict[str, List[Job]]:
    """Per scene, the jobs still to run (all of them unless ``resume``)."""
    pending = {}
    for settings in sweep.scenes:
        jobs = [j for j in settings.jobs() if not (resume and finished_row(settings, j) is not None)]
        if jobs:
            pending[settings.name] = jobs
    return pending


class SweepProgress:
    """One bar for the sweep (jobs done, failed, running) and a line per finished job."""

    def __init__(self, total: int, enabled: bool = True):
        self.done = self.failed = self.running = 0
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="sweep", unit="job", dynamic_ncols=True)
            self._postfix()

    def started(self, count: int = 1) -> None:
        self.set_running(self.running + count)

    def set_running(self, count: int) -> None:
        self.running = count
        self._postfix()

    def finished(self, outcome: JobOutcome, was_running: bool = True) -> None:
        if was_running:
            self.running = max(0, self.running - 1)
        if outcome.ok:
            self.done += 1
            r = outcome.row
            self._write(f"{outcome.job.id}: {r['total_bytes']} bytes, PSNR {r['psnr']:.2f} dB, "
                        f"encode {r['encode_seconds']:.1f} s, decode {r['decode_seconds']:.3f} s")
        else:
            self.failed += 1
            self._write(f"{outcome.job.id}: FAILED: {outcome.error}")
        if self.bar is not None:
            self.bar.update(1)
        self._postfix()

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(f"[sweep] {line}")
        else:
            log(line)

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(done=self.done, failed=self.failed, running=self.running, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_generated_scenes(sweep: Sweep, pending: Dict[str, List[Job]]) -> None:
    """A generated scene's .ply beside its results, so other tools (and peers) can read it."""
    from .scene import load_scene

    for name in pending:
        settings = sweep.scene(name)
        if not settings.scene:
            path = Path(settings.out) / "scene.ply"
            if not path.is_file():
                Path(settings.out).mkdir(parents=True, exist_ok=True)
                write_ply(load_scene(settings), path)


def run_sweep(sweep: Sweep, *, ray: bool = False, address: Optional[str] = None, workers: Optional[int] = None,
              resume: bool = True, progress: bool = True) -> SweepResult:
    """Run every job of ``sweep`` not already done, serially or on Ray, then report."""
    t0 = time.perf_counter()
    if any(s.peers for s in sweep.scenes):
        from ..eval.peers import peers_available

        why = peers_available()
        if why:
            log(f"peers (SPZ, SOG, compressed PLY) skipped: {why}")
            sweep = sweep.without_peers()
    pending = pending_jobs(sweep, resume)
    result = SweepResult()
    for settings in sweep.scenes:
        todo = set(pending.get(settings.name, []))
        result.skipped += [j for j in settings.jobs() if j not in todo]
    total = sum(len(v) for v in pending.values())
    log(f"{len(sweep.scenes)} scene(s), {total + len(result.skipped)} job(s): {total} to run, "
        f"{len(result.skipped)} already done" + (" (on Ray)" if ray and total else ""))
    write_generated_scenes(sweep, pending)
    bar = SweepProgress(total, progress)
    try:
        if total:
            if ray:
                from .ray_runner import run_on_ray

                outcomes = run_on_ray(sweep, pending, bar, address=address, workers=workers)
            else:
                outcomes = _run_serial(sweep, pending, bar, progress)
            for outcome in outcomes:
                if outcome.ok:
                    result.done.append(outcome.job)
                else:
                    result.failures.append(outcome)
    finally:
        bar.close()
    result.summaries = write_sweep_report(sweep, log)
    result.seconds = time.perf_counter() - t0
    log(f"finished in {result.seconds:.0f} s: {len(result.done)} done, {len(result.failures)} failed, "
        f"{len(result.skipped)} skipped as already done; results in {sweep.out}")
    for outcome in result.failures:
        log(f"failed: {outcome.job.id}: {outcome.error}")
    return result


def _run_serial(sweep: Sweep, pending: Dict[str, List[Job]], bar: SweepProgress, progress: bool):
    outcomes = []
    for name, scene_jobs in pending.items():
        settings = sweep.scene(name)
        for tier, jobs in settings.jobs_by_tier(scene_jobs).items():
            try:
                prepared = prepare_scene(settings, tier, log=log, progress=progress)
            except Exception as exc:  # noqa: BLE001 - the scene's jobs fail, the sweep goes on
                for job in jobs:
                    outcome = failed(job, exc)
                    outcome.error = f"preparing {name} (geometry tier {tier}) failed: {outcome.error}"
                    record_outcome(settings, outcome)
                    bar.finished(outcome, was_running=False)
                    outcomes.append(outcome)
                continue
            record_preparation(settings, preparation_record(prepared))
            for job in jobs:
                bar.started()
                outcome = run_job(prepared, job)
                record_outcome(settings, outcome)
                bar.finished(outcome)
                outcomes.append(outcome)
            del prepared  # a tier's voxels, views and targets: free before the next tier's
    return outcomes
