"""Decode speed of whole ``.ralhe`` files, per stage (positions, covariance, latents, attributes).

Encodes a model once (the default scene of ``--points`` Gaussians, or ``--scene PLY``) with the
fast preset cut to a few training steps (decode speed does not depend on how well it is trained),
caches the file under ``--cache``, then times ``decode_bytes`` ``--repeat`` times and prints the
median seconds per stage and per 100k decoded Gaussians.  ``--check REF.npz`` (written beside a
cached file) also asserts the decoded model equals the encoder's reconstruction bit for bit.

    .venv/bin/python benchmarks/bench_decode.py --points 100000 --repeat 5
    .venv/bin/python benchmarks/bench_decode.py --scene playbot --threads 2
    .venv/bin/python benchmarks/bench_decode.py --file /tmp/x.ralhe --profile /tmp/decode.prof
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("positions", "covariance", "latents", "attributes")
FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")


def _encode(args) -> tuple:
    """(file bytes, path of the reference npz): from the cache when present."""
    from ralhe_me.config import load_preset
    from ralhe_me.encode.encoder import encode_model

    if args.scene:
        from benchmarks.shared_data import model_path
        from ralhe_me.gaussians import read_ply

        path = model_path(args.scene)
        name = f"{Path(path).stem}"
        load = lambda: read_ply(str(path))  # noqa: E731
    else:
        from ralhe_me.default_scene import make_default_scene

        name = f"default{args.points}"
        load = lambda: make_default_scene(args.points)  # noqa: E731
    tag = hashlib.sha1(f"{name}-{args.steps}-{args.codebook}-{args.lmbda}".encode()).hexdigest()[:8]
    os.makedirs(args.cache, exist_ok=True)
    file = Path(args.cache) / f"{name}-{tag}.ralhe"
    ref = file.with_suffix(".npz")
    if not file.is_file() or not ref.is_file():
        cfg = load_preset("fast")
        cfg.training.steps = args.steps
        cfg.covariance_codebook = args.codebook
        cfg.lmbda = args.lmbda
        t0 = time.perf_counter()
        result = encode_model(load(), cfg)
        print(f"encoded {name} in {time.perf_counter() - t0:.1f} s -> {file}")
        m = result.reconstruction
        np.savez(ref, **{f: getattr(m, f) for f in FIELDS})
        file.write_bytes(result.data)
    return file.read_bytes(), ref


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--points", type=int, default=100000, help="Gaussians of the default scene")
    p.add_argument("--scene", help="a PLY path or a shared model name (donut, playbot, ...)")
    p.add_argument("--file", help="decode this .ralhe instead of encoding")
    p.add_argument("--check", help="reference .npz to compare with (default: the cached one)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="training steps when encoding")
    p.add_argument("--codebook", type=int, default=1024, help="covariance codebook when encoding")
    p.add_argument("--lmbda", type=float, default=1e-3)
    p.add_argument("--cache", default="/tmp/ralhe_bench_cache", help="folder of encoded files")
    p.add_argument("--profile", help="write a cProfile of one decode here")
    args = p.parse_args(argv)

    import torch

    from ralhe_me.decode.decoder import decode_bytes

    torch.set_num_threads(args.threads)
    if args.file:
        data = Path(args.file).read_bytes()
        ref = Path(args.check) if args.check else Path(args.file).with_suffix(".npz")
        if not args.check and not ref.is_file():
            alt = Path(str(args.file).replace(".ralhe", "_ref.npz"))
            ref = alt if alt.is_file() else None
    else:
        data, ref = _encode(args)
        if args.check:
            ref = Path(args.check)
    torch.set_num_threads(args.threads)

    runs, result = [], None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        result = decode_bytes(data, num_threads=args.threads)
        total = time.perf_counter() - t0
        runs.append(dict(result.seconds, total=total))
    if args.profile:
        import cProfile

        cProfile.runctx("decode_bytes(data, num_threads=threads)", globals(),
                        {"decode_bytes": decode_bytes, "data": data, "threads": args.threads},
                        args.profile)
        print(f"profile written to {args.profile}")

    n = len(result.model.means)
    ok = "not checked"
    if ref is not None and Path(ref).is_file():
        exp = np.load(ref)
        same = all(np.array_equal(getattr(result.model, f), exp[f]) for f in FIELDS)
        ok = "bit-exact" if same else "MISMATCH"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{n} Gaussians, SH degree {result.header['sh_degree']}, {len(data)} bytes, threads {args.threads}, "
          f"{len(runs)} runs, load {load:.2f}, output {ok}")
    print(f"{'stage':<12}{'median s':>10}{'min s':>10}{'s/100k':>10}")
    for key in STAGES + ("total",):
        vals = [r[key] for r in runs if key in r]
        if not vals:
            continue
        med = float(np.median(vals))
        print(f"{key:<12}{med:>10.3f}{min(vals):>10.3f}{med * 1e5 / max(n, 1):>10.3f}")
    if ok == "MISMATCH":
        raise SystemExit("decoded model differs from the encoder's reconstruction")


if __name__ == "__main__":
    main()
