"""The ``ralhe`` command line: one sub-command per user task.

Errors users can cause (bad files, bad options) print one line ``ralhe: error: ...`` and
exit with status 2; nothing is left half-written.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


class CliError(Exception):
    """A user-facing error of the command line."""


USER_ERRORS: tuple = (CliError, ValueError, FileNotFoundError, ImportError)


def _parse_resolution(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 800x800, got {text!r}")
    if w < 8 or h < 8 or w > 8192 or h > 8192:
        raise argparse.ArgumentTypeError(f"resolution {w}x{h} is outside 8..8192")
    return w, h


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


# ---------------------------------------------------------------- sub-commands

def cmd_voxelize(args) -> int:
    from .gaussians import read_ply, write_ply
    from .octree import choose_depth, voxelize

    model = read_ply(args.input)
    depth = args.depth if args.depth is not None else choose_depth(model.means, args.max_merge)
    vox = voxelize(model, depth)
    write_ply(vox.model, args.output)
    print(f"{len(model)} Gaussians -> {len(vox.model)} voxels at depth {depth} "
          f"(voxel size {vox.grid.voxel_size:.6g}); wrote {args.output}")
    return 0


def cmd_eval(args) -> int:
    from .evaluation import evaluate_model

    result = evaluate_model(args.model, reference=args.reference, dataset=args.dataset,
                            num_views=args.views, resolution=args.resolution, split=args.split,
                            progress=not args.quiet)
    print(f"mean PSNR {result.psnr:.3f} dB, SSIM {result.ssim:.4f} over {result.num_views} views "
          f"({result.width}x{result.height}, {result.seconds:.1f} s)")
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ralhe",
        description="RALHE-ME: learned hierarchical compression of 3D Gaussian Splatting models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("voxelize", help="snap Gaussians to an octree grid and merge those sharing a voxel",
                       description="Voxelize an INRIA .ply: positions snap to voxel centers at depth J; "
                                   "Gaussians in one voxel are merged (SH and opacity averaged, scale of "
                                   "the largest, rotation averaged).")
    p.add_argument("input", help="input INRIA 3DGS .ply")
    p.add_argument("output", help="output .ply (voxel centers, merged attributes, Morton order)")
    p.add_argument("--depth", type=int, default=None,
                   help="octree depth J (grid of 2^J voxels per axis); default: smallest J merging "
                        "at most --max-merge of the Gaussians")
    p.add_argument("--max-merge", type=float, default=0.05,
                   help="fraction of Gaussians the automatic depth may merge away (default 0.05)")
    p.set_defaults(func=cmd_voxelize)

    p = sub.add_parser("eval", help="render a model and report PSNR/SSIM against a reference",
                       description="Render MODEL and compare with the renders of a reference model from "
                                   "a fixed orbit of cameras, or with a NeRF-synthetic dataset's images.")
    p.add_argument("model", help="the .ply to evaluate")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference", help="reference .ply (e.g. the uncompressed model); orbit cameras")
    ref.add_argument("--dataset", help="NeRF-synthetic folder with transforms_<split>.json and images")
    p.add_argument("--split", default="test", help="dataset split to use (default test)")
    p.add_argument("--views", type=_positive_int, default=None,
                   help="number of views (default: 16 orbit views, or every view of the split)")
    p.add_argument("--resolution", type=_parse_resolution, default=None,
                   help="render size WxH (default 800x800 for orbits, the images' size for datasets)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"ralhe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("ralhe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
