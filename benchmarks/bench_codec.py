#!/usr/bin/env python
"""Whole-codec figures: per model and lambda, encode and decode seconds, bytes per section,
bits per attribute, and the attribute PSNR (-10 log10 of the weighted attribute MSE), next
to the RAHT baseline at several steps for reference.

    python benchmarks/bench_codec.py [--models donut playbot] [--lambdas 3e-4,1.5e-3,6e-3]
        [--preset fast] [--steps N] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.shared_data import GAUSSIANS as MODELS  # noqa: E402


def attr_psnr(target, sh, logits) -> float:
    from ralhe_me.baselines.attribute_codecs import weighted_attribute_mse

    d, _ = weighted_attribute_mse(target.sh, target.opacity_logits, sh, logits)
    return float(-10 * np.log10(max(d, 1e-12)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["donut", "playbot"], help="names or .ply paths")
    p.add_argument("--lambdas", default="3e-4,1.5e-3,6e-3")
    p.add_argument("--preset", default="fast")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--codebook", type=int, default=1024)
    p.add_argument("--raht-steps", default="0.02,0.04,0.08,0.16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from ralhe_me.baselines.attribute_codecs import encode_attributes_detailed
    from ralhe_me.decode.bitstream import unpack
    from ralhe_me.config import load_preset
    from ralhe_me.decode.decoder import decode_bytes
    from ralhe_me.encode.encoder import encode_geometry, encode_model, prepare
    from ralhe_me.entropy.integer_arm import QuantizedArm
    from ralhe_me.entropy.latent_coder import estimate_bits
    from ralhe_me.gaussians import read_ply

    rows = []
    for name in args.models:
        path = Path(MODELS.get(name, name))
        if not path.exists():
            print(f"skip {name}: {path} not found")
            continue
        model = read_ply(path)
        config = load_preset(args.preset)
        config.covariance_codebook = args.codebook
        if args.steps:
            config.training.steps = args.steps
        vox = prepare(model, config)
        target = vox.model
        n = len(target)
        geometry = encode_geometry(vox, config)
        print(f"\n{name}: {len(model)} Gaussians -> {n} voxels (depth {vox.depth}), SH degree {target.sh_degree}; "
              f"positions {8 * len(geometry.positions) / n:.2f} bits/voxel, covariance "
              f"{8 * len(geometry.covariance) / n:.2f} bits/voxel (codebook {geometry.codebook_size})")
        for step in (float(s) for s in args.raht_steps.split(",")):
            t0 = time.perf_counter()
            enc = encode_attributes_detailed("raht", vox.coords, vox.depth, target.sh, target.opacity_logits, step)
            rows.append({"model": name, "codec": "raht", "param": step, "attr_bits_per_voxel": 8 * len(enc.data) / n,
                         "attr_psnr": attr_psnr(target, enc.sh, enc.opacity_logits),
                         "encode_s": time.perf_counter() - t0})
            print(f"  RAHT step {step:g}: {rows[-1]['attr_bits_per_voxel']:.3f} bits/voxel, "
                  f"attribute PSNR {rows[-1]['attr_psnr']:.2f} dB")
        for lmbda in (float(v) for v in args.lambdas.split(",")):
            config.lmbda = lmbda
            t0 = time.perf_counter()
            result = encode_model(model, config, voxelized=vox, geometry=geometry)
            enc_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            decoded = decode_bytes(result.data)
            dec_s = time.perf_counter() - t0
            sb = result.section_bytes
            attr = sb["decoders"] + sb["arms"] + sb["latents"]
            c = unpack(result.data)
            arms = QuantizedArm.from_bytes(c.section("arms"))
            per_attr = estimate_bits([l.numpy().astype(np.int64) for l in result.training.latents], arms,
                                     config.architecture.segment_length, per_attribute=True)
            row = {"model": name, "codec": "ralhe", "param": lmbda, "total_bytes": len(result.data),
                   "sections": sb, "attr_bits_per_voxel": 8 * attr / n,
                   "attr_psnr": attr_psnr(target, decoded.model.sh, decoded.model.opacity_logits),
                   "latent_bits_per_attribute_per_voxel": (np.asarray(per_attr) / n).round(4).tolist(),
                   "encode_s": enc_s, "decode_s": dec_s, "decode_breakdown_s": decoded.seconds,
                   "train_s": result.seconds.get("train")}
            rows.append(row)
            print(f"  RALHE lambda {lmbda:g}: {len(result.data)} bytes; attributes {row['attr_bits_per_voxel']:.3f} "
                  f"bits/voxel (decoders {8 * sb['decoders'] / n:.3f}, arms {8 * sb['arms'] / n:.3f}, latents "
                  f"{8 * sb['latents'] / n:.3f}); attribute PSNR {row['attr_psnr']:.2f} dB; encode {enc_s:.1f} s; "
                  f"decode {dec_s:.2f} s {({k: round(v, 2) for k, v in decoded.seconds.items()})}")
            print(f"    latent bits/voxel per attribute: {row['latent_bits_per_attribute_per_voxel']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
