"""Renderer speed: forward and forward+backward at 800x800 for 100k and 300k random Gaussians.

Forward+backward is timed twice: with gradients for every input (projection in torch, as when
fitting or finetuning shapes) and for SH and opacities only (fixed geometry, projected by the
compiled renderer, as in the encoder's image-domain refinement); the projection alone is
timed both ways too.

The scene is a ball of Gaussians (uniform in a unit ball, SH degree 3, scales about half the
mean spacing, mixed opacities) seen from a distance at which it fills most of the image, a
load like a trained NeRF-synthetic model. Prints the best of ``--repeat`` runs per backend.

    .venv/bin/python benchmarks/bench_render.py [--sizes 100000 300000] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from ralhe_me.render import Camera, available_backends, render
from ralhe_me.render import rasterizer
from ralhe_me.render.projection import project_gaussians


def ball_scene(n: int, sh_degree: int = 3, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n, 3, generator=g, dtype=dtype)
    direction /= direction.norm(dim=1, keepdim=True)
    means = direction * torch.rand(n, 1, generator=g, dtype=dtype) ** (1 / 3)
    spacing = (4.19 / n) ** (1 / 3)
    log_scales = torch.log(torch.tensor(0.5 * spacing, dtype=dtype)) + 0.5 * torch.randn(n, 3, generator=g, dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    opacity_logits = 2.5 * torch.randn(n, generator=g, dtype=dtype)
    sh = 0.15 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype)
    sh[:, 0] = 1.2 * torch.randn(n, 3, generator=g, dtype=dtype)
    return [means, quats, log_scales, opacity_logits, sh]


def timed(fn, repeat: int) -> tuple:
    """Best (wall seconds, process CPU seconds) over ``repeat`` runs. On a shared machine the CPU
    time (summed over threads) shows the work itself; wall time also shows waiting for cores."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--resolution", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", nargs="+", default=None, help="default: every available CPU backend")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backends = args.backends or [b for b in available_backends() if b in ("cpp", "torch")]
    res = args.resolution
    cam = Camera.look_at([0.0, -2.6, 0.9], [0.0, 0.0, 0.0], [0, 0, 1], res, res, fov_x_deg=50.0)
    print(f"threads={torch.get_num_threads()} resolution={res}x{res} backends={backends}; "
          f"wall seconds (process CPU seconds, all threads), best of {args.repeat}")
    for n in args.sizes:
        params = ball_scene(n)
        with torch.no_grad():
            proj = project_gaussians(*params, cam)
            pairs = int(((proj.rects[:, 2] - proj.rects[:, 0]) * (proj.rects[:, 3] - proj.rects[:, 1])).sum())
            t_proj = timed(lambda: project_gaussians(*params, cam, native=False), args.repeat)
            t_native = (timed(lambda: project_gaussians(*params, cam, native=True), args.repeat)
                        if rasterizer.cpp_extension() is not None else None)
        native = "" if t_native is None else f", compiled {t_native[0]:.3f} s (cpu {t_native[1]:.3f} s)"
        print(f"N={n}: visible {len(proj.index)}, tile pairs {pairs}, median radius "
              f"{proj.radii.float().median().item():.0f} px, projection+SH: torch {t_proj[0]:.3f} s "
              f"(cpu {t_proj[1]:.3f} s){native}")
        weights = torch.rand(res, res, 3, generator=torch.Generator().manual_seed(1))
        for backend in backends:
            with torch.no_grad():
                img = render(*params, cam, backend=backend)
                t_fwd = timed(lambda: render(*params, cam, backend=backend), args.repeat)
            leaves = [p.clone().requires_grad_() for p in params]

            def fwd_bwd():
                for p in leaves:
                    p.grad = None
                (render(*leaves, cam, backend=backend) * weights).sum().backward()

            t_fb = timed(fwd_bwd, args.repeat)
            colors = [p.clone().requires_grad_() for p in params[3:]]

            def fwd_bwd_colors():
                for p in colors:
                    p.grad = None
                (render(*params[:3], *colors, cam, backend=backend) * weights).sum().backward()

            t_fbc = timed(fwd_bwd_colors, args.repeat)
            coverage = (img < 0.999).any(-1).float().mean().item()
            print(f"  {backend:5s} forward {t_fwd[0]:.3f} s (cpu {t_fwd[1]:.3f} s)   forward+backward "
                  f"{t_fb[0]:.3f} s (cpu {t_fb[1]:.3f} s), of SH and opacities only {t_fbc[0]:.3f} s "
                  f"(cpu {t_fbc[1]:.3f} s)   image covered {100 * coverage:.0f}%")


if __name__ == "__main__":
    main()
