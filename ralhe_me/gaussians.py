"""The 3DGS model as a dataclass, and the standard INRIA ``.ply`` layout.

Values are kept exactly as the INRIA trainer stores them (log-scales, opacity logits,
unnormalized quaternions ``w, x, y, z``) so that reading then writing a file gives the same
numbers bit for bit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

SH_COEFFS_FOR_DEGREE = {0: 1, 1: 4, 2: 9, 3: 16}
_F_REST_TO_DEGREE = {3 * (k - 1): d for d, k in SH_COEFFS_FOR_DEGREE.items()}  # 0, 9, 24, 45


class GaussianPlyError(ValueError):
    """A file is not a valid INRIA 3DGS ``.ply``; the message says what is wrong."""


class GaussianModelError(ValueError):
    """Arrays given to :class:`GaussianModel` are inconsistent."""


@dataclass
class GaussianModel:
    """A set of 3D Gaussians in the INRIA parameterization (float32 arrays)."""

    means: np.ndarray  # [N, 3] world positions
    log_scales: np.ndarray  # [N, 3] log of the per-axis standard deviations
    quats: np.ndarray  # [N, 4] rotation quaternion (w, x, y, z), not necessarily normalized
    opacity_logits: np.ndarray  # [N] inverse-sigmoid of the opacity
    sh: np.ndarray  # [N, K, 3] SH coefficients, K = (degree + 1)^2; sh[:, 0] is the DC term
    normals: Optional[np.ndarray] = field(default=None)  # [N, 3] unused by rendering, kept for I/O

    def __post_init__(self) -> None:
        self.means = np.ascontiguousarray(self.means, dtype=np.float32)
        self.log_scales = np.ascontiguousarray(self.log_scales, dtype=np.float32)
        self.quats = np.ascontiguousarray(self.quats, dtype=np.float32)
        self.opacity_logits = np.ascontiguousarray(self.opacity_logits, dtype=np.float32).reshape(-1)
        self.sh = np.ascontiguousarray(self.sh, dtype=np.float32)
        if self.normals is not None:
            self.normals = np.ascontiguousarray(self.normals, dtype=np.float32)
        n = self.means.shape[0]
        expect = {
            "means": (self.means, (n, 3)),
            "log_scales": (self.log_scales, (n, 3)),
            "quats": (self.quats, (n, 4)),
            "opacity_logits": (self.opacity_logits, (n,)),
        }
        if self.normals is not None:
            expect["normals"] = (self.normals, (n, 3))
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise GaussianModelError(f"means must have shape [N, 3], got {self.means.shape}")
        for name, (arr, shape) in expect.items():
            if arr.shape != shape:
                raise GaussianModelError(f"{name} must have shape {shape}, got {arr.shape}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise GaussianModelError(f"sh must have shape [N, K, 3], got {self.sh.shape}")
        if self.sh.shape[1] not in SH_COEFFS_FOR_DEGREE.values():
            raise GaussianModelError(f"sh has {self.sh.shape[1]} coefficients; expected 1, 4, 9 or 16")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return {k: d for d, k in SH_COEFFS_FOR_DEGREE.items()}[self.sh.shape[1]]

    @property
    def opacities(self) -> np.ndarray:  # [N] in (0, 1)
        return 1.0 / (1.0 + np.exp(-self.opacity_logits.astype(np.float64)))

    def subset(self, index: np.ndarray) -> "GaussianModel":
        """The Gaussians selected by an index or boolean mask, in that order."""
        return GaussianModel(
            means=self.means[index],
            log_scales=self.log_scales[index],
            quats=self.quats[index],
            opacity_logits=self.opacity_logits[index],
            sh=self.sh[index],
            normals=None if self.normals is None else self.normals[index],
        )

    def with_sh_degree(self, degree: int) -> "GaussianModel":
        """The same model with SH truncated (or zero-padded) to ``degree``."""
        k = SH_COEFFS_FOR_DEGREE[degree]
        sh = np.zeros((len(self), k, 3), np.float32)
        m = min(k, self.sh.shape[1])
        sh[:, :m] = self.sh[:, :m]
        return replace(self, sh=sh)

    def copy(self) -> "GaussianModel":
        return self.subset(np.arange(len(self)))

    def check_finite(self) -> None:
        """Raise :class:`GaussianModelError` naming the first array that holds NaN or inf."""
        for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
            arr = getattr(self, name)
            bad = ~np.isfinite(arr)
            if bad.any():
                rows = np.unique(np.nonzero(bad)[0])
                raise GaussianModelError(
                    f"{name} holds {int(bad.sum())} NaN/infinite values (first at Gaussian {rows[0]})"
                )


# ---------------------------------------------------------------- PLY I/O

def _property_names(degree: int, with_normals: bool) -> list:
    names = ["x", "y", "z"]
    if with_normals:
        names += ["nx", "ny", "nz"]
    names += ["f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (SH_COEFFS_FOR_DEGREE[degree] - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def read_ply(path: str | os.PathLike) -> GaussianModel:
    """Read an INRIA 3DGS ``.ply`` (binary or ASCII); raise :class:`GaussianPlyError` if invalid."""
    from plyfile import PlyData, PlyParseError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GaussianPlyError(f"{path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic[:3] != b"ply":
        raise GaussianPlyError(f"{path}: not a PLY file (it does not start with 'ply')")
    try:
        ply = PlyData.read(path)
    except (PlyParseError, ValueError, IndexError, EOFError, TypeError) as exc:
        raise GaussianPlyError(f"{path}: unreadable PLY ({exc})") from exc
    if "vertex" not in [e.name for e in ply.elements]:
        raise GaussianPlyError(f"{path}: the PLY has no 'vertex' element")
    vert = ply["vertex"].data
    names = set(vert.dtype.names or ())
    if len(vert) == 0:
        raise GaussianPlyError(f"{path}: the PLY has no vertices")
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    required += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [p for p in required if p not in names]
    if missing:
        raise GaussianPlyError(f"{path}: missing vertex properties {', '.join(missing)}")
    rest = sorted((p for p in names if p.startswith("f_rest_")), key=lambda p: int(p[7:]))
    if len(rest) not in _F_REST_TO_DEGREE:
        raise GaussianPlyError(
            f"{path}: {len(rest)} f_rest_* properties; a 3DGS model has 0, 9, 24 or 45 (SH degree 0-3)"
        )
    if [int(p[7:]) for p in rest] != list(range(len(rest))):
        raise GaussianPlyError(f"{path}: f_rest_* properties are not numbered 0..{len(rest) - 1}")
    degree = _F_REST_TO_DEGREE[len(rest)]
    k = SH_COEFFS_FOR_DEGREE[degree]

    def cols(props):
        return np.stack([np.asarray(vert[p], dtype=np.float32) for p in props], axis=1)

    sh = np.zeros((len(vert), k, 3), np.float32)
    sh[:, 0, :] = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    if k > 1:
        # INRIA stores features_rest transposed: index = channel * (K - 1) + coefficient.
        sh[:, 1:, :] = cols(rest).reshape(len(vert), 3, k - 1).transpose(0, 2, 1)
    normals = cols(["nx", "ny", "nz"]) if {"nx", "ny", "nz"} <= names else None
    model = GaussianModel(
        means=cols(["x", "y", "z"]),
        log_scales=cols([f"scale_{i}" for i in range(3)]),
        quats=cols([f"rot_{i}" for i in range(4)]),
        opacity_logits=np.asarray(vert["opacity"], dtype=np.float32),
        sh=sh,
        normals=normals,
    )
    try:
        model.check_finite()
    except GaussianModelError as exc:
        raise GaussianPlyError(f"{path}: {exc}") from exc
    return model


def write_ply(model: GaussianModel, path: str | os.PathLike, with_normals: Optional[bool] = None) -> None:
    """Write ``model`` as a binary little-endian INRIA ``.ply`` (atomically: never a partial file)."""
    from plyfile import PlyData, PlyElement

    path = os.fspath(path)
    if with_normals is None:
        with_normals = model.normals is not None
    names = _property_names(model.sh_degree, with_normals)
    n = len(model)
    k = model.sh.shape[1]
    columns = [model.means]
    if with_normals:
        columns.append(model.normals if model.normals is not None else np.zeros((n, 3), np.float32))
    columns.append(model.sh[:, 0, :])
    if k > 1:
        columns.append(model.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1)))
    columns += [model.opacity_logits[:, None], model.log_scales, model.quats]
    table = np.concatenate(columns, axis=1).astype(np.float32)
    assert table.shape[1] == len(names)
    rec = np.empty(n, dtype=[(p, "<f4") for p in names])
    for i, p in enumerate(names):
        rec[p] = table[:, i]
    tmp = path + ".part"
    try:
        PlyData([PlyElement.describe(rec, "vertex")], text=False, byte_order="<").write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
