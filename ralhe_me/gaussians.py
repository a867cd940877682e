"""The 3DGS model as a dataclass, and the standard INRIA ``.ply`` layout.

Values are kept exactly as the INRIA trainer stores them (log-scales, opacity logits,
unnormalized quaternions ``w, x, y, z``) so that reading then writing a file gives the same
numbers bit for bit.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

SH_COEFFS_FOR_DEGREE = {0: 1, 1: 4, 2: 9, 3: 16}
_F_REST_TO_DEGREE = {3 * (k - 1): d for d, k in SH_COEFFS_FOR_DEGREE.items()}  # 0, 9, 24, 45


class GaussianPlyError(ValueError):
    """A file is not a valid INRIA 3DGS ``.ply``; the message says what is wrong."""


class GaussianModelError(ValueError):
    """Arrays given to :class:`GaussianModel` are inconsistent, or hold values the codec cannot
    represent; the message names the property, the Gaussian and why."""


class ClampWarning(UserWarning):
    """Values with no other meaning than a saturated one were clamped to what the codec and the
    renderer represent; the message names the property, how many and the bounds."""


# Opacities are clipped to [p, 1 - p] with p = OPACITY_EPS wherever a probability becomes a
# logit again (octree.voxelize merges voxels that way), so +-OPACITY_LOGIT_LIMIT is "alpha 1" /
# "alpha 0": the renderer caps alpha at 0.99 and skips alpha below 1/255, so a logit beyond the
# limit renders as one at it (alpha within 1e-7). Decoded SPZ / compressed PLY store alpha 0 and
# 255 as -inf / +inf logits; they are clamped to this limit.
OPACITY_EPS = 1e-7
OPACITY_LOGIT_LIMIT = float(np.float32(np.log1p(-OPACITY_EPS) - np.log(OPACITY_EPS)))  # 16.118095

# Log standard deviations the encoder keeps. Below -30 (9e-14 scene units) a Gaussian is far
# under any pixel: the renderer's 0.3 px low-pass filter alone sets its footprint, so it renders
# as at -30. Above 20 (4.9e8 units, a million times any captured scene) it is a uniform haze or
# band across every view; much larger values overflow the float32 renderer (the covariance is
# exp(2 s)), the float16 codebook, and finetuning's gradients (log-scale 50 did). Real models
# hold -19.4 to 5.6.
LOG_SCALE_MIN, LOG_SCALE_MAX = -30.0, 20.0

# SH coefficients beyond this give colors a million times the white level: no sensible model
# holds them (real ones stay within 15), and their squared render errors overflow float32.
SH_LIMIT = 1e6

# Positions beyond this are refused: the encoder renders the model in float32 (covariance step
# choice, finetuning), where squared camera-space coordinates and their gradients overflow from
# about 1e19 on (measured with one far-out Gaussian and with whole scenes scaled up); 1e16 keeps
# a margin (real scenes span 0.2 to 1e3 units).
POSITION_LIMIT = 1e16

# Quaternions are normalized by the renderer in float32; norms outside this range over- or
# underflow there, so such rows are normalized on input (the rotation is unchanged).
QUAT_NORM_RANGE = (1e-8, 1e8)


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
                flat = np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))
                first = arr.reshape(len(arr), -1)[flat[0]]
                value = first[~np.isfinite(first)][0]
                raise GaussianModelError(
                    f"{name} holds {int(bad.sum())} NaN/infinite values (first at Gaussian {flat[0]}: {value})"
                )


def clamp_infinite_opacities(model: GaussianModel, where: str = "") -> GaussianModel:
    """``model`` with +-inf opacity logits (alpha exactly 1 or 0, as decoded SPZ and compressed
    PLY files hold) set to +-:data:`OPACITY_LOGIT_LIMIT`, with a :class:`ClampWarning` saying how
    many; ``model`` itself if there are none. NaN is left for :meth:`GaussianModel.check_finite`."""
    inf = np.isinf(model.opacity_logits)
    count = int(inf.sum())
    if not count:
        return model
    logits = np.where(inf, np.sign(model.opacity_logits) * np.float32(OPACITY_LOGIT_LIMIT), model.opacity_logits)
    warnings.warn(f"{where}opacity_logits: clamped {count} infinite opacity logits to +-{OPACITY_LOGIT_LIMIT:.6g} "
                  f"(alpha 1 - {OPACITY_EPS:g} / {OPACITY_EPS:g}, which render as opaque / transparent)",
                  ClampWarning, stacklevel=3)
    return replace(model, opacity_logits=logits)


def _first_rows(mask: np.ndarray) -> np.ndarray:  # mask [N, ...] -> rows holding a True
    return np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))


def _refuse_beyond(name: str, arr: np.ndarray, limit: float, why: str) -> None:
    """Raise naming the first Gaussian of ``arr`` [N, ...] with a value beyond +-``limit``."""
    rows = _first_rows(np.abs(arr) > limit)
    if not len(rows):
        return
    row = arr[rows[0]]
    at = np.unravel_index(int(np.flatnonzero(np.abs(row) > limit)[0]), row.shape)
    what = f"{'xyz'[at[0]]} = " if name == "means" else f"coefficient {at[0]}, channel {at[1]}: " if name == "sh" else ""
    raise GaussianModelError(f"{name}: Gaussian {rows[0]} holds {what}{float(row[at]):.6g}, beyond +-{limit:g} "
                             f"({len(rows)} such Gaussians): {why}")


#: the rasterizers (INRIA's, gsplat, this package's) skip a Gaussian at a pixel where its alpha,
#: at most its opacity, is below 1/255; the margin keeps float32 rounding of the sigmoid clear of it
NEVER_DRAWN_OPACITY = (1.0 / 255.0) * (1.0 - 1e-4)


def drawn_mask(model: GaussianModel) -> np.ndarray:  # -> [N] bool
    """Which Gaussians some pixel of some view can draw: those whose opacity reaches 1/255. The
    others leave every render exactly as it is, so coding them buys nothing (the donut holds 1,473
    of 45,624, 3.2%), and merged into a voxel they would lower its averaged opacity."""
    return model.opacities >= NEVER_DRAWN_OPACITY


def codable_model(model: GaussianModel) -> GaussianModel:
    """The one gate between a user's model and the encoder: the model to code, or a
    :class:`GaussianModelError` naming the property, the Gaussian and why.

    Values with a saturated meaning are clamped: +-inf opacity logits (with a
    :class:`ClampWarning`) and finite ones beyond +-:data:`OPACITY_LOGIT_LIMIT` (silently: the
    voxel merge maps them there anyway); log-scales outside [:data:`LOG_SCALE_MIN`,
    :data:`LOG_SCALE_MAX`] (with a :class:`ClampWarning`). Quaternions with a norm outside
    :data:`QUAT_NORM_RANGE` are normalized (same rotation). Values with no meaning are refused:
    NaN anywhere, inf anywhere but the opacities, a zero quaternion, SH coefficients beyond
    +-:data:`SH_LIMIT`, positions beyond +-:data:`POSITION_LIMIT`. A model needing none of this
    is returned as is (so codes bit for bit as before); applying the gate twice changes nothing
    more (no second warning)."""
    model = clamp_infinite_opacities(model)
    model.check_finite()
    _refuse_beyond("means", model.means, POSITION_LIMIT,
                   "the encoder's float32 renders overflow that far out (a broken export?)")
    _refuse_beyond("sh", model.sh, SH_LIMIT,
                   "a color that many times the white level has no meaning (a broken export?)")
    norm = np.linalg.norm(model.quats.astype(np.float64), axis=1)
    zero = np.flatnonzero(norm == 0)
    if len(zero):
        raise GaussianModelError(f"quats: Gaussian {zero[0]} is the zero quaternion ({len(zero)} Gaussians): "
                                 "it names no rotation")
    changes = {}
    odd = (norm < QUAT_NORM_RANGE[0]) | (norm > QUAT_NORM_RANGE[1])
    if odd.any():
        quats = model.quats.copy()
        quats[odd] = (model.quats[odd].astype(np.float64) / norm[odd, None]).astype(np.float32)
        changes["quats"] = quats
    logits = model.opacity_logits
    if np.any(np.abs(logits) > OPACITY_LOGIT_LIMIT):
        changes["opacity_logits"] = np.clip(logits, -OPACITY_LOGIT_LIMIT, OPACITY_LOGIT_LIMIT).astype(np.float32)
    s = model.log_scales
    outside = (s < LOG_SCALE_MIN) | (s > LOG_SCALE_MAX)
    if outside.any():
        rows = _first_rows(outside)
        warnings.warn(f"log_scales: clamped {int(outside.sum())} log-scales of {len(rows)} Gaussians (first: "
                      f"Gaussian {rows[0]}) to [{LOG_SCALE_MIN:g}, {LOG_SCALE_MAX:g}]: smaller is below any pixel, "
                      "larger beyond any scene and the float32 renderer", ClampWarning, stacklevel=2)
        changes["log_scales"] = np.clip(s, LOG_SCALE_MIN, LOG_SCALE_MAX).astype(np.float32)
    return replace(model, **changes) if changes else model


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
    model = clamp_infinite_opacities(model, where=f"{path}: ")
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
