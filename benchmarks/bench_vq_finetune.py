#!/usr/bin/env python
"""What covariance coding costs in rendering PSNR, with and without finetuning after it.

Per codebook size and residual step: the bits per Gaussian of the covariance section, the
PSNR of the quantized model (other attributes as voxelized) and the PSNR after finetuning
with indices and residuals fixed (codewords, opacity and SH trained together), next to the
unquantized model finetuned for as many iterations. PSNR is against the original model's
renders on the evaluation orbit.

    python benchmarks/bench_vq_finetune.py [--model donut] [--sizes 256,1024,4096]
        [--steps 0,0.2,0.1] [--iters 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.shared_data import model_path  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="donut", help="a name from benchmarks/shared_data.py or a .ply path")
    p.add_argument("--sizes", default="256,1024,4096", help="codebook sizes, comma-separated")
    p.add_argument("--iters", type=int, default=200, help="finetuning iterations per run")
    p.add_argument("--views", type=int, default=8, help="evaluation orbit views")
    p.add_argument("--resolution", type=int, default=400, help="evaluation render size (px)")
    p.add_argument("--steps", default="0,0.2,0.1", help="residual log-scale steps (0: plain VQ; the quaternion "
                   "step is a fifth of it), comma-separated")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from ralhe_me.config import CodecConfig
    from ralhe_me.encode.encoder import prepare
    from ralhe_me.eval.evaluation import orbit_views, score_views
    from ralhe_me.train.finetune import finetune
    from ralhe_me.gaussians import read_ply
    from ralhe_me.geometry.covariance_code import ResidualSteps, encode_shapes, quantize_shapes
    from ralhe_me.geometry.covariance_vq import fit_codebook

    original = read_ply(str(model_path(args.model)))
    vox = prepare(original, CodecConfig())
    target = vox.model
    n = len(target)
    views = orbit_views(original, args.views, (args.resolution, args.resolution))
    base = score_views(target, views).psnr
    print(f"{args.model}: {len(original)} Gaussians -> {n} voxels (J={vox.depth}); voxelized PSNR {base:.2f} dB")
    t0 = time.perf_counter()
    tuned, _ = finetune(target, teacher=original, iters=args.iters, progress=False)
    print(f"unquantized + finetune {args.iters}: {score_views(tuned, views).psnr:.2f} dB "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'size':>6} {'step':>6} {'bits/G':>7} {'coded':>7} {'coded+ft':>8} {'seconds':>8}")
    for size in [int(s) for s in args.sizes.split(",")]:
        book = fit_codebook(target.log_scales, target.quats, size)
        for step in [float(s) for s in args.steps.split(",")]:
            t0 = time.perf_counter()
            code = quantize_shapes(target.log_scales, target.quats, book, ResidualSteps.from_ratio(step))
            log_scales, quats = code.shapes()
            coded_psnr = score_views(replace(target, log_scales=log_scales, quats=quats), views).psnr
            ft_model, report = finetune(target, teacher=original, iters=args.iters, covariance=code, progress=False)
            bits = 8 * len(encode_shapes(report.covariance)) / n
            ft_psnr = score_views(ft_model, views).psnr
            print(f"{size:>6} {step:>6g} {bits:>7.2f} {coded_psnr:>7.2f} {ft_psnr:>8.2f} "
                  f"{time.perf_counter() - t0:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
