"""The ``ralhe`` command line: one sub-command per user task.

Errors users can cause (bad files, bad options) print one line ``ralhe: error: ...`` and
exit with status 2; nothing is left half-written.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Callable, List, Optional

from .argtypes import positive_int

if TYPE_CHECKING:
    from .config import CodecConfig


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


# ---------------------------------------------------------------- sub-commands

def cmd_voxelize(args) -> int:
    from .config import CodecConfig
    from .encode.encoder import left_out_note, voxelize_drawn
    from .gaussians import read_ply, write_ply

    model = read_ply(args.input)
    config = CodecConfig(depth=args.depth, max_merge_fraction=args.max_merge, far_field=args.far_field,
                         keep_undrawn=args.keep_undrawn)
    vox, _, _ = voxelize_drawn(model, config)  # what `ralhe encode` would code, on its grid
    write_ply(vox.model, args.output)
    far = " (far field contracted)" if vox.grid.contraction is not None else ""
    print(f"{len(model)} Gaussians -> {len(vox.model)} voxels at depth {vox.depth}{far} "
          f"(voxel size {vox.grid.voxel_size:.6g}); wrote {args.output}{left_out_note(vox)}")
    return 0


def cmd_eval(args) -> int:
    from .eval.evaluation import evaluate_model

    result = evaluate_model(args.model, reference=args.reference, dataset=args.dataset,
                            num_views=args.views, resolution=args.resolution, split=args.split,
                            progress=not args.quiet)
    print(f"mean PSNR {result.psnr:.3f} dB, SSIM {result.ssim:.4f} over {result.num_views} views "
          f"({result.width}x{result.height}, {result.seconds:.1f} s)")
    return 0


def _codec_config(args):
    from .config import load_preset

    config = load_preset(args.preset)
    if args.lmbda is not None:
        if not args.lmbda > 0:
            raise CliError(f"--lambda must be positive, got {args.lmbda}")
        config.lmbda = args.lmbda
    if args.depth is not None:
        config.depth = args.depth
    tier = getattr(args, "geometry_tier", "auto")
    if tier not in (None, "auto"):
        from .encode.operating_point import MAX_TIER

        if not (tier.isdigit() and 0 <= int(tier) <= MAX_TIER):
            raise CliError(f"--geometry-tier must be auto or a whole number from 0 to {MAX_TIER}, got {tier!r}")
        config.geometry_tier = int(tier)
    if getattr(args, "far_field", None) is not None:
        config.far_field = args.far_field
    if getattr(args, "keep_undrawn", False):
        config.keep_undrawn = True
    if getattr(args, "latent_coder", None) is not None:
        config.latent_coder = args.latent_coder
    if args.steps is not None:
        config.training.steps = args.steps
    if args.render_steps is not None:
        if args.render_steps < 0:
            raise CliError(f"--render-steps must be >= 0, got {args.render_steps}")
        config.training.render_steps = args.render_steps
    if args.codebook is not None:
        config.covariance_codebook = args.codebook
    if args.importance_views is not None:
        if args.importance_views < 0:
            raise CliError(f"--importance-views must be >= 0, got {args.importance_views}")
        config.importance_views = args.importance_views
    if args.shape_sensitivity_views is not None:
        if args.shape_sensitivity_views < 0:
            raise CliError(f"--shape-sensitivity-views must be >= 0, got {args.shape_sensitivity_views}")
        config.shape_sensitivity_views = args.shape_sensitivity_views
        config.shape_sensitivity_min_tier = 0  # asked for: at every tier
    if args.covariance_step is not None:
        if not 0 <= args.covariance_step <= 2.5:
            raise CliError(f"--covariance-step must be in [0, 2.5], got {args.covariance_step}")
        config.covariance_step = args.covariance_step
    return config


def _rate_target(args):
    """The --target-size / --target-psnr of ``ralhe encode``, or None (a plain --lambda encode)."""
    from .encode.rate_control import PSNR, SIZE, RateTarget, parse_size

    if args.target_size is None and args.target_psnr is None:
        return None
    if args.lmbda is not None:
        raise CliError("--lambda and --target-size / --target-psnr exclude each other: the target picks lambda")
    if args.max_tries < 1:
        raise CliError(f"--max-tries must be >= 1, got {args.max_tries}")
    if args.target_size is not None:
        return RateTarget(SIZE, parse_size(args.target_size), args.max_tries)
    return RateTarget(PSNR, args.target_psnr, args.max_tries)


def cmd_encode(args) -> int:
    from .encode.encoder import encode_file, left_out_note

    config = _codec_config(args)
    target = _rate_target(args)
    if args.finetune_iters is None:
        args.finetune_iters = config.finetune.iters
    if args.finetune_iters < 0:
        raise CliError(f"--finetune-iters must be >= 0, got {args.finetune_iters}")
    if args.dataset is not None and not os.path.isdir(args.dataset):
        raise CliError(f"--dataset {args.dataset!r} is not a folder")
    bar = None

    def progress(step, record):
        nonlocal bar
        if args.quiet:
            return
        if bar is not None and step + 1 < bar.n:  # a new try of a rate-control search
            bar.close()
            bar = None
        if bar is None:  # opened at the first step, so its rate leaves out finetuning
            from tqdm import tqdm

            bar = tqdm(total=config.training.steps + config.training.render_steps, desc="training", unit="step",
                       leave=target is None)
        bar.n = step + 1
        bar.set_postfix(bpp=f"{record['bits_per_point']:.2f}", D=f"{record['distortion']:.2e}")
        bar.refresh()

    start = time.perf_counter()
    if target is not None:
        from .encode.rate_control import encode_file_to_target

        def log(line):
            if bar is not None:
                bar.clear()
            print(line, flush=True)

        outcome = encode_file_to_target(args.input, args.output, config, target, finetune_iters=args.finetune_iters,
                                        dataset=args.dataset, views=args.views, resolution=args.resolution,
                                        log=log, progress=progress, finetune_progress=not args.quiet)
        if bar is not None:
            bar.close()
        n = outcome.chosen.result.header["num_points"]
        print(f"wrote {args.output}: {outcome.summary()}; {n} voxels, "
              f"{8 * outcome.chosen.size_bytes / n:.2f} bits/voxel, {time.perf_counter() - start:.1f} s in all"
              f"{left_out_note(outcome.chosen.result.voxelized)}")
        return 0 if outcome.met else 1
    result = encode_file(args.input, args.output, config, progress=progress, finetune_iters=args.finetune_iters,
                         dataset=args.dataset, finetune_progress=not args.quiet)
    if bar is not None:
        bar.close()
    from .encode.operating_point import geometry_tier

    n = result.header["num_points"]
    print(f"wrote {args.output}: {len(result.data)} bytes for {n} voxels "
          f"({8 * len(result.data) / n:.2f} bits/voxel), depth {result.header['depth']}, "
          f"lambda {config.lmbda:g}, {geometry_tier(config).describe()}, "
          f"encoded in {time.perf_counter() - start:.1f} s{left_out_note(result.voxelized)}")
    return 0


def cmd_decode(args) -> int:
    from .decode.decoder import decode_file

    start = time.perf_counter()
    result = decode_file(args.input, args.output, threads=args.threads, engine=args.engine)
    print(f"wrote {args.output}: {len(result.model)} Gaussians, SH degree {result.header['sh_degree']}, "
          f"decoded in {time.perf_counter() - start:.2f} s")
    return 0


def cmd_info(args) -> int:
    from .decode.bitstream import unpack
    from .decode.reconstruction import SECTION_LATENTS

    with open(args.input, "rb") as fh:
        data = fh.read()
    container = unpack(data)
    h = container.header
    n = int(h.get("num_points", 0)) or 1
    print(f"{args.input}: RALHE format v{container.version}, {len(data)} bytes, {h.get('num_points')} voxels, "
          f"depth {h.get('depth')}, SH degree {h.get('sh_degree')}, lambda {h.get('lambda')}")
    static = h.get("latent_coder") == "static"
    if h.get("attribute_codec", "ralhe") == "ralhe":
        print("latents coded with " + ("static per-level histograms (no ARM in the file)" if static
                                        else "the autoregressive model (ARM)"))
    print(f"{'section':<12}{'bytes':>10}{'bits/voxel':>12}")
    for name, size in container.section_sizes():
        print(f"{name:<12}{size:>10}{8 * size / n:>12.3f}")
    if args.per_attribute and static:  # each (plane, attribute) stream is framed by its length
        from .entropy.categorical import read_varint

        section, pos = container.section(SECTION_LATENTS), 0
        sizes = [0] * len(h["attributes"])
        for _ in range(int(h["architecture"]["latent_channels"])):
            for a in range(len(h["attributes"])):
                length, pos = read_varint(section, pos)
                sizes[a] += length
                pos += length
        print(f"{'attribute':<12}{'latent bytes':>14}{'bits/voxel':>12}")
        for name, b in zip(h["attributes"], sizes):
            print(f"{name:<12}{b:>14.0f}{8 * b / n:>12.3f}")
    elif args.per_attribute:
        from .entropy.integer_arm import QuantizedArm
        from .entropy.latent_coder import decode_latents, estimate_bits
        from .decode.reconstruction import architecture_from_header, table_config_from_header

        arch, tc = architecture_from_header(h), table_config_from_header(h)
        arms = QuantizedArm.from_bytes(container.section("arms"))
        latents = decode_latents(container.section(SECTION_LATENTS), h["level_sizes"], arms.num_attributes,
                                 arms, arch.segment_length, tc)
        bits = estimate_bits(latents, arms, arch.segment_length, tc, per_attribute=True)
        print(f"{'attribute':<12}{'latent bytes':>14}{'bits/voxel':>12}")
        for name, b in zip(h["attributes"], bits):
            print(f"{name:<12}{b / 8:>14.0f}{b / n:>12.3f}")
    return 0


# ---------------------------------------------------------------- parser

def _preset_values(describe: Callable[[CodecConfig], str]) -> str:
    """'fast 0, quality 500': ``describe`` of each preset in models/, for the help."""
    from .config import list_presets, load_preset

    try:
        return ", ".join(f"{name} {describe(load_preset(name))}" for name in list_presets())
    except Exception as exc:  # a broken preset file is reported when it is used, not in --help
        return f"presets unreadable: {exc}"


def _preset_render_steps() -> str:
    """Each preset's image-domain refinement steps."""
    return _preset_values(lambda c: str(c.training.render_steps))


def _preset_finetune() -> str:
    """Each preset's finetuning: 'fast 60 at 256 px, quality 600 at 400 px'."""
    return _preset_values(lambda c: f"{c.finetune.iters} at {c.finetune.resolution} px")


def build_parser() -> argparse.ArgumentParser:
    from .encode.operating_point import MAX_TIER

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
                   help="octree depth J (grid of 2^J voxels per axis); default: what ralhe encode chooses, the "
                        "smallest J merging at most --max-merge of the Gaussians, or a shallower one whose "
                        "voxelized renders are within 50 dB of the input's")
    p.add_argument("--far-field", choices=("auto", "off"), default="auto",
                   help="auto (default): contract the far field as ralhe encode does; off: one plain cube")
    p.add_argument("--keep-undrawn", action="store_true",
                   help="keep the Gaussians whose opacity is below 1/255 (no rasterizer draws them; left out by "
                        "default, as ralhe encode does)")
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
    p.add_argument("--views", type=positive_int, default=None,
                   help="number of views (default: 16 orbit views, or every view of the split)")
    p.add_argument("--resolution", type=_parse_resolution, default=None,
                   help="render size WxH (default 800x800 for orbits, the images' size for datasets)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("encode", help="compress an INRIA .ply into a .ralhe file",
                       description="Voxelize, code positions losslessly and covariances by VQ plus a "
                                   "scalar residual, and train "
                                   "the RALHE attribute model at one rate-distortion trade-off.")
    p.add_argument("input", help="input INRIA 3DGS .ply")
    p.add_argument("output", help="output .ralhe file")
    p.add_argument("--lambda", dest="lmbda", type=float, default=None,
                   help="rate weight: larger gives smaller files (default: the preset's, 1e-3)")
    p.add_argument("--target-size", metavar="SIZE", default=None,
                   help="search lambda for a file of this size, within 5%% (e.g. 600KB, 1.5MB, 600KiB, 600000); "
                        "every try is a full encode, the closest one is written")
    p.add_argument("--target-psnr", metavar="DB", type=float, default=None,
                   help="search lambda for the smallest file whose rendering PSNR is at or above DB (at most "
                        "0.3 dB above), scored on --views orbit renders of the input, or --dataset's test images")
    p.add_argument("--max-tries", type=int, default=8,
                   help="encodes a --target-size / --target-psnr search may run (default 8); exit status 1 "
                        "when the target is not met in them (the closest file is still written)")
    p.add_argument("--views", type=positive_int, default=8, help="views scoring a --target-psnr (default 8)")
    p.add_argument("--resolution", type=_parse_resolution, default=(400, 400),
                   help="render size scoring a --target-psnr, WxH (default 400x400)")
    p.add_argument("--preset", default="quality", help="model preset in models/ (fast, quality; default quality)")
    p.add_argument("--depth", type=int, default=None, help="octree depth J (default: automatic)")
    p.add_argument("--geometry-tier", default="auto", metavar=f"auto|0..{MAX_TIER}",
                   help="precision of the positions and covariances: tier t aims the automatic depth and "
                        "covariance step at renders 6*t dB closer to the input than tier 0 (at most 5%% of the "
                        "Gaussians merged, covariance renders within 42 dB); auto (default) follows lambda: "
                        "tier 0 down to lambda 1e-3, one tier more for every 6 dB (a factor 4) lambda falls "
                        "below that")
    p.add_argument("--far-field", choices=("auto", "off"), default=None,
                   help="auto (default): when far Gaussians would set a bounding cube 4x the foreground's or "
                        "more, code the space outside the foreground cube (95%% of the Gaussians) on a "
                        "logarithmic grid, at the angular precision of the foreground's edge; off: one plain "
                        "cube around every Gaussian")
    p.add_argument("--keep-undrawn", action="store_true",
                   help="code the Gaussians whose opacity is below 1/255 too: the rasterizers (INRIA's, gsplat, "
                        "web viewers) skip a Gaussian wherever its alpha, at most its opacity, is below 1/255, so "
                        "they change no render and are left out by default (the count is reported)")
    p.add_argument("--latent-coder", choices=("auto", "arm", "static"), default=None,
                   help="entropy coding of the latents: auto (default) codes them both ways and keeps the "
                        "shorter; arm: the trained autoregressive model, sent in the file; static: per-level "
                        "histograms (no model in the file; raht transform only)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--render-steps", type=int, default=None,
                   help="image-domain refinement steps after training: the latents, decoders and entropy "
                        "models minimize rendered-image error plus rate against renders of the input "
                        f"(or --dataset's training images); default: the preset's ({_preset_render_steps()}), "
                        "0 to skip")
    p.add_argument("--codebook", type=positive_int, default=None,
                   help="covariance VQ codebook size (default: the one giving the fewest bytes)")
    p.add_argument("--covariance-step", type=float, default=None,
                   help="log-scale step of the covariance residual, the quaternion's is a fifth of it; 0 sends "
                        "plain VQ (default: the coarsest step keeping renders within 42 dB of unquantized, more "
                        "above geometry tier 0)")
    p.add_argument("--importance-views", type=int, default=None,
                   help="random views that weight each voxel's color errors by how much it shows in "
                        "renders, with a transmitted gain map (default 0: off)")
    p.add_argument("--shape-sensitivity-views", type=int, default=None,
                   help="random views at 400 px that measure how much each Gaussian's shape errors show in "
                        "renders; the covariance section then holds a step per Gaussian, finer where shapes "
                        "show (48 views took 11 s on a 44k-Gaussian model and 56 s on a 91k one; default 0: one step "
                        "for all)")
    p.add_argument("--finetune-iters", type=int, default=None,
                   help="finetune opacities, SH and covariance codewords with the coded shapes in the loop "
                        "for this many iterations before coding; the target is renders of the input model, "
                        f"or --dataset's training images (default: the preset's: {_preset_finetune()}; "
                        "0 to skip)")
    p.add_argument("--dataset", default=None,
                   help="NeRF-synthetic folder (transforms_train.json + images) to finetune and refine against")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decompress a .ralhe file into an INRIA .ply",
                       description="Decode a .ralhe file; the output is a standard INRIA 3DGS .ply.")
    p.add_argument("input", help="input .ralhe file")
    p.add_argument("output", help="output .ply")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads of the Python engine (default: torch's)")
    p.add_argument("--engine", choices=("native", "python"), default=None,
                   help="native: the C++ decoder (default when it is built; the same Gaussians, faster); "
                        "python: the reference decoder")
    p.set_defaults(func=cmd_decode)

    from .train.finetune import add_finetune_arguments, run_finetune_command
    from .train.fit import add_fit_arguments, run_fit_command

    p = sub.add_parser("finetune", help="optimize a voxelized model's attributes (positions fixed)",
                       description="Finetune every parameter but the positions of a voxelized model against "
                                   "a NeRF-synthetic dataset's training images or, for a model without images, "
                                   "against renders of the original model (distillation).")
    add_finetune_arguments(p)
    p.set_defaults(func=run_finetune_command)

    p = sub.add_parser("fit", help="train a 3DGS model from a NeRF-synthetic dataset",
                       description="Fit a 3DGS model (SH degree up to 3, densification, pruning, opacity "
                                   "reset) to a NeRF-synthetic dataset; resumable from a checkpoint.")
    add_fit_arguments(p)
    p.set_defaults(func=run_fit_command)

    p = sub.add_parser("info", help="print the header and the bytes of each section of a .ralhe file")
    p.add_argument("input", help=".ralhe file")
    p.add_argument("--per-attribute", action="store_true", help="also decode the latents and print "
                                                                "their bits per attribute")
    p.set_defaults(func=cmd_info)
    return parser


def _warning_printer(default):
    """``warnings.showwarning`` printing the codec's own warnings (e.g. clamped input values) as
    one ``ralhe: warning: ...`` line, and others as ``default`` does."""
    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("ralhe_me"):
            print(f"ralhe: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def main(argv: Optional[List[str]] = None) -> int:
    from .allocator import keep_freed_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(warnings.showwarning)
        try:
            status = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe fails here, inside the handler below
            return status
        except USER_ERRORS as exc:
            print(f"ralhe: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # pragma: no cover
            print("ralhe: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # stdout closed early (`ralhe info F | head -1`): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail
            return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
