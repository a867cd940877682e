"""Rate, distortion and speed of the baseline attribute codecs on voxelized real models: RAHT (the
defaults: colour transform, dead zone with rounding 1/3), RAHT with plain rounding, RAHT without the
colour transform, scalar, scalar without the colour transform.

For each model and base step: bytes of the attribute stream, bits per point, RALHE's weighted
attribute distortion D = sum_k w_k MSE_k (SH weight 1/(4 pi), opacity weight 0.25, opacity after
the sigmoid), the "attribute PSNR" -10 log10 D (a proxy for comparing curves, not a rendering
PSNR), encode and decode wall times (best of ``--repeat``).  Then BD-rate / BD-PSNR (pchip) of
each codec against the scalar anchor on (bytes, attribute PSNR).

    .venv/bin/python benchmarks/bench_baselines.py [--models donut playbot] [--steps ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ralhe_me.baselines.attribute_codecs import (  # noqa: E402
                                                 AttributeCodingConfig,
                                                 decode_attributes,
                                                 encode_attributes_detailed,
                                                 weighted_attribute_mse,
                                                 )
from benchmarks.shared_data import GAUSSIANS  # noqa: E402
from ralhe_me.gaussians import read_ply  # noqa: E402
from ralhe_me.geometry.octree import choose_depth, voxelize  # noqa: E402
from ralhe_me.eval.rd import RDCurveError, bd_psnr, bd_rate  # noqa: E402

MODELS = {name: GAUSSIANS[name] for name in ("donut", "playbot")}
CODECS = {  # name: (kind, encoder config)
    "raht": ("raht", AttributeCodingConfig()),
    "raht-r0.5": ("raht", AttributeCodingConfig(rounding=0.5)),
    "raht-rgb": ("raht", AttributeCodingConfig(color_transform=False)),
    "scalar": ("scalar", AttributeCodingConfig()),
    "scalar-rgb": ("scalar", AttributeCodingConfig(color_transform=False)),
}


def best_time(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run_model(name, path, steps, repeat):
    model = read_ply(path)
    depth = choose_depth(model.means)
    vox = voxelize(model, depth)
    m = vox.model
    k = m.sh.shape[1]
    print(f"\n## {name}: {len(model)} Gaussians -> {len(vox.coords)} voxels at depth {depth}, "
          f"{k} SH coefficients per colour channel")
    print(f"{'codec':10s} {'base step':>9s} {'bytes':>9s} {'bpp':>7s} {'D':>10s} {'attrPSNR':>8s} "
          f"{'enc s':>6s} {'dec s':>6s}")
    rows = []
    for codec, (kind, config) in CODECS.items():
        for step in steps:
            t_enc, enc = best_time(lambda: encode_attributes_detailed(
                kind, vox.coords, depth, m.sh, m.opacity_logits, step, config=config), repeat)
            t_dec, (sh_hat, op_hat) = best_time(lambda: decode_attributes(
                kind, enc.data, vox.coords, depth, k), repeat)
            assert np.array_equal(sh_hat, enc.sh) and np.array_equal(op_hat, enc.opacity_logits)
            d, per = weighted_attribute_mse(m.sh, m.opacity_logits, sh_hat, op_hat)
            row = dict(model=name, codec=codec, base_step=step, bytes=len(enc.data),
                       bpp=8.0 * len(enc.data) / len(vox.coords), distortion=d, attr_psnr=-10 * np.log10(d),
                       per_attribute=per.tolist(), encode_s=t_enc, decode_s=t_dec,
                       points=len(vox.coords), depth=depth)
            rows.append(row)
            print(f"{codec:10s} {step:9.4g} {row['bytes']:9d} {row['bpp']:7.3f} {d:10.3e} "
                  f"{row['attr_psnr']:8.2f} {t_enc:6.2f} {t_dec:6.2f}")
    for label, keep in [("all steps", lambda r: True), ("steps <= 0.16", lambda r: r["base_step"] <= 0.16)]:
        anchor = [r for r in rows if r["codec"] == "scalar" and keep(r)]
        for codec in CODECS:
            if codec == "scalar":
                continue
            test = [r for r in rows if r["codec"] == codec and keep(r)]
            args = ([r["bytes"] for r in test], [r["attr_psnr"] for r in test],
                    [r["bytes"] for r in anchor], [r["attr_psnr"] for r in anchor])
            try:
                print(f"{label:14s} {codec:10s} vs scalar (pchip, attribute PSNR): BD-rate {bd_rate(*args):+6.1f}%, "
                      f"BD-PSNR {bd_psnr(*args):+.2f} dB")
            except RDCurveError as err:
                print(f"{label:14s} {codec:10s} vs scalar: {err}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", nargs="+", type=float, default=[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    rows = []
    for name in args.models:
        if not MODELS[name].exists():
            print(f"skipping {name}: {MODELS[name]} not found")
            continue
        rows += run_model(name, MODELS[name], args.steps, args.repeat)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
