"""Wall time of a sweep run serially and on a local Ray instance, and whether the files agree.

Runs the sweep file (default ``experiments/sweep.yaml``) from scratch twice, into
``--out``/serial and ``--out``/ray, and prints both wall times, their ratio, and whether every
coded file is the same bytes in both runs. ``--threads`` overrides every scene's torch threads
per job (both runs use the same, so the bytes can agree); ``--serial-threads`` runs the serial
sweep with another thread count as well, to see what more threads per job give one process.

    .venv/bin/python benchmarks/bench_sweep.py --workers 2
    .venv/bin/python benchmarks/bench_sweep.py --sweep my_sweep.yaml --ray-only
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _files(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.ralhe"))}


def _run(sweep_file: str, out: Path, threads, ray: bool, workers: int) -> float:
    from ralhe_me.sweep.runner import run_sweep
    from ralhe_me.sweep.spec import load_sweep

    if out.exists():
        shutil.rmtree(out)
    sweep = load_sweep(sweep_file, out=str(out))
    for s in sweep.scenes:
        s.out = str(out / s.name)
        if threads is not None:
            s.threads = threads
    t0 = time.perf_counter()
    result = run_sweep(sweep, ray=ray, workers=workers, resume=False, progress=False)
    seconds = time.perf_counter() - t0
    if not result.ok:
        raise SystemExit(f"the {'Ray' if ray else 'serial'} sweep had failures: "
                         + "; ".join(f"{f.job.id}: {f.error}" for f in result.failures))
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default=str(ROOT / "experiments" / "sweep.yaml"), help="sweep file")
    p.add_argument("--out", default="/tmp/ralhe_bench_sweep", help="scratch folder (emptied)")
    p.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per job in both runs")
    p.add_argument("--serial-threads", type=int, default=None,
                   help="also time a serial run with this many threads per job")
    p.add_argument("--ray-only", action="store_true", help="skip the serial run")
    args = p.parse_args(argv)
    out = Path(args.out)
    times = {}
    times["ray"] = _run(args.sweep, out / "ray", args.threads, True, args.workers)
    if not args.ray_only:
        times["serial"] = _run(args.sweep, out / "serial", args.threads, False, args.workers)
    if args.serial_threads:
        times[f"serial, {args.serial_threads} threads per job"] = _run(args.sweep, out / "serial_t", args.serial_threads,
                                                                      False, args.workers)
    print("\nsweep wall time (s):")
    for name, seconds in times.items():
        print(f"  {name:32s} {seconds:8.1f}")
    if args.serial_threads and "serial" in times:
        same = _files(out / "serial") == _files(out / "serial_t")
        print(f"  serial files with {args.serial_threads} threads per job identical to the others: "
              f"{'yes' if same else 'no'} (threads are part of every job key)")
    if "serial" in times:
        a, b = _files(out / "ray"), _files(out / "serial")
        same = a == b
        print(f"  Ray / serial ratio: {times['ray'] / times['serial']:.2f}")
        print(f"  files: {len(a)} (Ray) vs {len(b)} (serial); identical bytes: {'yes' if same else 'NO'}")
        if not same:
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    print(f"    differs: {name}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
