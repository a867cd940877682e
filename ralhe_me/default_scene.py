"""The embedded default scene: a deterministic synthetic 3DGS model built by code.

No large data is committed, so ``experiments/run.py`` generates its scene: a torus, a
sphere and a checkered disk covered by surface-aligned Gaussians (flat along the normal).
Colors vary smoothly and sharply (stripes, checkers), and every SH band carries
view-dependent signal (a glossy sphere, an iridescent torus), so all 17 attributes
(16 SH triplets and opacity) are worth coding.
"""
from __future__ import annotations

import numpy as np

from .gaussians import GaussianModel

SH_C0 = 0.28209479177387814


def _rotation_to_quat(rot: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z) [N, 4] of rotation matrices ``rot`` [N, 3, 3]."""
    m = rot
    w = np.sqrt(np.maximum(0.0, 1.0 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2])) / 2
    x = np.sqrt(np.maximum(0.0, 1.0 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2])) / 2
    y = np.sqrt(np.maximum(0.0, 1.0 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2])) / 2
    z = np.sqrt(np.maximum(0.0, 1.0 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2])) / 2
    x = np.copysign(x, m[:, 2, 1] - m[:, 1, 2])
    y = np.copysign(y, m[:, 0, 2] - m[:, 2, 0])
    z = np.copysign(z, m[:, 1, 0] - m[:, 0, 1])
    q = np.stack([w, x, y, z], axis=1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _frame_from_normal(normals: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] whose third column is ``normals`` [N, 3]."""
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    helper = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    t = np.cross(helper, n)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    b = np.cross(n, t)
    return np.stack([t, b, n], axis=2)


def _torus(rng, n):
    u, v = rng.uniform(0, 2 * np.pi, (2, n))
    big, small = 0.55, 0.22
    pos = np.stack([(big + small * np.cos(v)) * np.cos(u), (big + small * np.cos(v)) * np.sin(u),
                    small * np.sin(v)], axis=1) + np.array([0.0, 0.0, 0.45])
    nrm = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], axis=1)
    stripes = 0.5 + 0.5 * np.sign(np.sin(6 * u))
    rgb = np.stack([0.85 * stripes + 0.1, 0.35 + 0.3 * np.cos(3 * v) ** 2, 0.9 - 0.6 * stripes], axis=1)
    return pos, nrm, rgb, 0.8  # gloss strength


def _sphere(rng, n):
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pos = 0.35 * d + np.array([0.0, 0.0, 0.45])
    lat = np.arcsin(np.clip(d[:, 2], -1, 1))
    rgb = np.stack([0.3 + 0.5 * (np.sin(8 * lat) > 0), 0.75 + 0.2 * d[:, 0], 0.3 + 0.3 * d[:, 1]], axis=1)
    return pos, d, rgb, 1.2


def _disk(rng, n):
    r = 1.2 * np.sqrt(rng.uniform(0, 1, n))
    t = rng.uniform(0, 2 * np.pi, n)
    pos = np.stack([r * np.cos(t), r * np.sin(t), np.zeros(n)], axis=1)
    nrm = np.tile(np.array([[0.0, 0.0, 1.0]]), (n, 1))
    checker = ((np.floor(pos[:, 0] / 0.2) + np.floor(pos[:, 1] / 0.2)) % 2)
    rgb = np.stack([0.2 + 0.7 * checker, 0.2 + 0.65 * checker, 0.25 + 0.6 * checker], axis=1)
    rgb *= (1.0 - 0.35 * r / 1.2)[:, None]
    return pos, nrm, rgb, 0.25


def make_default_scene(num_gaussians: int = 50_000, seed: int = 0) -> GaussianModel:
    """Build the default scene (deterministic for a given ``num_gaussians`` and ``seed``)."""
    if num_gaussians < 30:
        raise ValueError(f"num_gaussians must be at least 30, got {num_gaussians}")
    rng = np.random.default_rng(seed)
    counts = [int(num_gaussians * 0.35), int(num_gaussians * 0.25)]
    counts.append(num_gaussians - sum(counts))
    parts = [f(rng, c) for f, c in zip((_torus, _sphere, _disk), counts)]
    pos = np.concatenate([p[0] for p in parts])
    nrm = np.concatenate([p[1] for p in parts])
    rgb = np.clip(np.concatenate([p[2] for p in parts]), 0.02, 0.98)
    gloss = np.concatenate([np.full(c, p[3]) for p, c in zip(parts, counts)])
    n = len(pos)

    # Surface splats: tangent extent from the local density, thin along the normal.
    area = np.array([4 * np.pi ** 2 * 0.55 * 0.22, 4 * np.pi * 0.35 ** 2, np.pi * 1.2 ** 2])
    spacing = np.concatenate([np.full(c, np.sqrt(a / c)) for a, c in zip(area, counts)])
    tangent = spacing * rng.uniform(0.6, 1.1, n)
    log_scales = np.log(np.stack([tangent, tangent * rng.uniform(0.5, 1.0, n), 0.1 * tangent], axis=1))
    frame = _frame_from_normal(nrm)
    spin = rng.uniform(0, 2 * np.pi, n)
    c, s = np.cos(spin), np.sin(spin)
    rz = np.zeros((n, 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = c, -s, s, c, 1.0
    quats = _rotation_to_quat(frame @ rz)

    # Opacity: mostly solid, with a smooth translucent band on the disk edge and some noise.
    radial = np.linalg.norm(pos[:, :2], axis=1)
    alpha = np.clip(0.97 - 0.5 * np.clip((radial - 0.9) / 0.3, 0, 1) * (pos[:, 2] < 1e-6)
                    - 0.15 * rng.uniform(0, 1, n), 0.05, 0.995)
    opacity_logits = np.log(alpha) - np.log1p(-alpha)

    # SH: DC from the base color; higher bands are smooth functions of position scaled by a
    # per-surface gloss, decaying with the band, so the color changes with the view.
    sh = np.zeros((n, 16, 3))
    sh[:, 0, :] = (rgb - 0.5) / SH_C0
    phase = pos @ np.array([[3.0, -2.0, 1.0], [1.5, 2.5, -2.0], [-1.0, 1.0, 3.5]])
    band_of = [0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3]
    for k in range(1, 16):
        amp = gloss * 0.35 / band_of[k]
        for ch in range(3):
            sh[:, k, ch] = amp * np.sin(phase[:, ch] * (1 + 0.3 * k) + 0.7 * k + 2.1 * ch) * (0.6 + 0.4 * nrm[:, ch % 3])
    sh += rng.normal(scale=0.01, size=sh.shape)

    order = rng.permutation(n)  # like a trained model, the file is in no spatial order
    return GaussianModel(
        means=pos[order], log_scales=log_scales[order], quats=quats[order],
        opacity_logits=opacity_logits[order], sh=sh[order],
        normals=np.zeros((n, 3), np.float32),
    )
