"""Pinhole cameras (OpenCV axes), NeRF-synthetic loading and fixed orbits around a model.

Evaluation needs the same views on every run: a dataset's test cameras where given, else a
deterministic orbit around the model, so the orbit is a pure function of the positions.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

NERF_SPLITS = ("train", "val", "test")


class CameraError(ValueError):
    """Bad camera parameters or an unreadable camera/image set; the message says what is wrong."""


@dataclass
class Camera:
    """A pinhole camera: x right, y down, z forward (OpenCV); pixel centers at integer + 0.5."""

    world_to_cam: np.ndarray  # [4, 4] float64, rigid transform world -> camera
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    name: str = ""

    def __post_init__(self) -> None:
        m = np.asarray(self.world_to_cam, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise CameraError(f"world_to_cam must be a finite [4, 4] matrix, got shape {m.shape}")
        self.world_to_cam = m
        self.fx, self.fy, self.cx, self.cy = (float(v) for v in (self.fx, self.fy, self.cx, self.cy))
        self.width, self.height = int(self.width), int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise CameraError(f"image size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise CameraError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_fov(cls, world_to_cam: np.ndarray, width: int, height: int, fov_x_deg: float,
                 fov_y_deg: Optional[float] = None, name: str = "") -> "Camera":
        """A centered camera from horizontal (and optionally vertical) field of view in degrees."""
        if not 0.0 < fov_x_deg < 180.0:
            raise CameraError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
        fx = fov_to_focal(math.radians(fov_x_deg), width)
        fy = fx if fov_y_deg is None else fov_to_focal(math.radians(fov_y_deg), height)
        return cls(world_to_cam, fx, fy, width / 2.0, height / 2.0, width, height, name)

    @classmethod
    def look_at(cls, eye: Sequence[float], target: Sequence[float], up: Sequence[float], width: int,
                height: int, fov_x_deg: float, name: str = "") -> "Camera":
        """A centered camera at ``eye`` looking at ``target``; ``up`` is the world up direction."""
        return cls.from_fov(look_at_matrix(eye, target, up), width, height, fov_x_deg, name=name)

    # -- geometry -------------------------------------------------------------------------------
    @property
    def rotation(self) -> np.ndarray:  # [3, 3] world -> camera
        return self.world_to_cam[:3, :3]

    @property
    def translation(self) -> np.ndarray:  # [3]
        return self.world_to_cam[:3, 3]

    @property
    def center(self) -> np.ndarray:  # [3] camera position in world coordinates
        return -self.rotation.T @ self.translation

    @property
    def cam_to_world(self) -> np.ndarray:  # [4, 4]
        return np.linalg.inv(self.world_to_cam)

    @property
    def fov_x(self) -> float:  # radians
        return focal_to_fov(self.fx, self.width)

    @property
    def fov_y(self) -> float:  # radians
        return focal_to_fov(self.fy, self.height)

    @property
    def tan_half_fov_x(self) -> float:
        return self.width / (2.0 * self.fx)

    @property
    def tan_half_fov_y(self) -> float:
        return self.height / (2.0 * self.fy)

    @property
    def intrinsics(self) -> np.ndarray:  # [3, 3] K
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates [N, 2] (continuous, centers at +0.5) and depths [N] of world points [N, 3]."""
        p = np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * p[:, 0] / z + self.cx, self.fy * p[:, 1] / z + self.cy], axis=1)
        return uv, z

    def scaled(self, width: int, height: int) -> "Camera":
        """The same view at another image size (intrinsics scaled per axis)."""
        sx, sy = width / self.width, height / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                       width=width, height=height)


def fov_to_focal(fov: float, pixels: int) -> float:
    return pixels / (2.0 * math.tan(fov / 2.0))


def focal_to_fov(focal: float, pixels: int) -> float:
    return 2.0 * math.atan(pixels / (2.0 * focal))


def look_at_matrix(eye: Sequence[float], target: Sequence[float], up: Sequence[float]) -> np.ndarray:
    """World -> camera [4, 4] (OpenCV axes) for a camera at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(v, dtype=np.float64).reshape(3) for v in (eye, target, up))
    forward = target - eye
    if np.linalg.norm(forward) < 1e-12:
        raise CameraError("look_at: eye and target coincide")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise CameraError("look_at: the viewing direction is parallel to the up vector")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, down, forward])
    m[:3, 3] = -m[:3, :3] @ eye
    return m


# ------------------------------------------------------------------------------------------------
# NeRF-synthetic (Blender) datasets
# ------------------------------------------------------------------------------------------------
def _read_rgba(path: Path) -> np.ndarray:
    """[H, W, 4] float32 in [0, 1] (alpha 1 when the file has none)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            if im.mode not in ("RGBA", "RGB"):
                im = im.convert("RGBA")
            arr = np.asarray(im)
        scale = 255.0
    except ImportError:  # pragma: no cover - PIL ships with torchvision; matplotlib is the fallback
        import matplotlib.image as mpimg

        arr = mpimg.imread(str(path))
        scale = 1.0 if arr.dtype.kind == "f" else float(np.iinfo(arr.dtype).max)
    if arr.dtype == np.uint16:
        scale = 65535.0
    arr = arr.astype(np.float32) / np.float32(scale)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 3:
        arr = np.concatenate([arr, np.ones_like(arr[:, :, :1])], axis=2)
    return arr


def _area_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average an [H, W, C] float image to [height, width, C]."""
    h, w, c = img.shape
    if (h, w) == (height, width):
        return img
    if h % height == 0 and w % width == 0:
        fy, fx = h // height, w // width
        return img.reshape(height, fy, width, fx, c).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover
        raise CameraError(f"resizing {w}x{h} to {width}x{height} needs an integer factor without PIL") from exc
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, i], dtype=np.float32))
                        .resize((width, height), Image.BOX)) for i in range(c)]
    return np.stack(chans, axis=2).astype(np.float32)


def load_nerf_synthetic(root: str | os.PathLike, split: str = "test", resolution: Optional[int] = None,
                        limit: Optional[int] = None) -> Tuple[List[Camera], List[np.ndarray]]:
    """Cameras and white-background RGB images [H, W, 3] float32 of a Blender-format split.

    ``resolution`` is the output width (the height keeps the aspect ratio; 800x800 -> r x r);
    ``limit`` keeps the first frames only. Blender camera-to-world matrices use OpenGL axes
    (y up, z backward), so their y and z columns are negated to get OpenCV axes.
    """
    root = Path(root)
    if split not in NERF_SPLITS:
        raise CameraError(f"split must be one of {NERF_SPLITS}, got {split!r}")
    meta_path = root / f"transforms_{split}.json"
    if not meta_path.is_file():
        raise CameraError(f"no camera file {meta_path}")
    try:
        meta = json.loads(meta_path.read_text())
        fov_x = float(meta["camera_angle_x"])
        frames = list(meta["frames"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CameraError(f"{meta_path} is not a NeRF-synthetic transforms file: {exc}") from exc
    if limit is not None:
        if limit < 0:
            raise CameraError(f"limit must be >= 0, got {limit}")
        frames = frames[:limit]
    if resolution is not None and resolution <= 0:
        raise CameraError(f"resolution must be positive, got {resolution}")

    cameras, images = [], []
    for i, frame in enumerate(frames):
        try:
            rel = str(frame["file_path"])
            c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CameraError(f"{meta_path}: frame {i} lacks file_path/transform_matrix") from exc
        if c2w.shape != (4, 4):
            raise CameraError(f"{meta_path}: frame {i} transform_matrix has shape {c2w.shape}")
        img_path = root / rel
        if img_path.suffix.lower() != ".png" or not img_path.is_file():
            img_path = root / (rel + ".png")
        if not img_path.is_file():
            raise CameraError(f"image for frame {i} not found: {root / rel}[.png]")
        rgba = _read_rgba(img_path)
        rgb = rgba[:, :, :3] * rgba[:, :, 3:4] + (1.0 - rgba[:, :, 3:4])  # white background
        h, w = rgb.shape[:2]
        if resolution is not None:
            new_w, new_h = resolution, max(1, int(round(h * resolution / w)))
            rgb = _area_resize(rgb, new_w, new_h)
        else:
            new_w, new_h = w, h
        c2w = c2w.copy()
        c2w[:3, 1:3] *= -1.0
        cam = Camera(np.linalg.inv(c2w), fov_to_focal(fov_x, w), fov_to_focal(fov_x, w), w / 2.0, h / 2.0,
                     w, h, name=Path(rel).name)
        cameras.append(cam.scaled(new_w, new_h) if (new_w, new_h) != (w, h) else cam)
        images.append(np.clip(rgb, 0.0, 1.0).astype(np.float32))
    return cameras, images


# ------------------------------------------------------------------------------------------------
# Orbits for models without dataset cameras
# ------------------------------------------------------------------------------------------------
def robust_bounds(means: np.ndarray, percentile: float = 98.0) -> Tuple[np.ndarray, float]:
    """Median center [3] and the ``percentile`` distance from it: outliers do not move the view."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or means.shape[1] != 3 or len(means) == 0:
        raise CameraError(f"means must have shape [N>0, 3], got {means.shape}")
    finite = means[np.all(np.isfinite(means), axis=1)]
    if len(finite) == 0:
        raise CameraError("means has no finite position")
    center = np.median(finite, axis=0)
    radius = float(np.percentile(np.linalg.norm(finite - center, axis=1), percentile))
    return center, max(radius, 1e-6)


def orbit_cameras(means: np.ndarray, num_views: int, width: int, height: int, fov_deg: float = 50.0,
                  elevation_deg: Tuple[float, float] = (-15.0, 45.0), up: Sequence[float] = (0.0, 0.0, 1.0),
                  percentile: float = 98.0, margin: float = 1.05, near_plane: float = 0.2) -> List[Camera]:
    """A deterministic spiral of ``num_views`` cameras around the model's robust center.

    Azimuths are evenly spaced over 360 degrees; elevations (above the plane orthogonal to
    ``up``) go linearly from ``elevation_deg[0]`` to ``elevation_deg[1]``. The distance puts the
    robust bounding sphere (``percentile`` radius, times ``margin``) just inside the narrower
    field of view; ``fov_deg`` is the widest horizontal field of view. The rasterizer culls
    Gaussians closer than ``near_plane`` (0.2 world units, as INRIA's), so a small model is seen
    from farther away (the 99th-percentile radius + 2.5 x near_plane) with a narrower field of
    view that keeps the same framing; otherwise its near side would be cut away.
    """
    if num_views <= 0:
        raise CameraError(f"num_views must be positive, got {num_views}")
    if not 0.0 < fov_deg < 180.0:
        raise CameraError(f"fov_deg must be in (0, 180), got {fov_deg}")
    if width <= 0 or height <= 0:
        raise CameraError(f"image size must be positive, got {width}x{height}")
    up = np.asarray(up, dtype=np.float64).reshape(3)
    if np.linalg.norm(up) < 1e-12:
        raise CameraError("up must be a non-zero vector")
    up = up / np.linalg.norm(up)
    center, radius = robust_bounds(means, percentile)
    _, far_radius = robust_bounds(means, 99.0)

    fx = fov_to_focal(math.radians(fov_deg), width)
    half = min(math.atan(width / (2 * fx)), math.atan(height / (2 * fx)))
    distance = margin * radius / math.sin(half)
    min_distance = max(far_radius, margin * radius) + 2.5 * near_plane
    if distance < min_distance:  # narrow the view instead of letting the near plane cut the model
        distance = min_distance
        half = math.asin(margin * radius / distance)
        fx = min(width, height) / (2.0 * math.tan(half))

    # an orthonormal basis (e1, e2) of the plane orthogonal to up
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(up, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)

    lo, hi = (max(-89.0, min(89.0, float(e))) for e in elevation_deg)
    cams = []
    for i in range(num_views):
        azim = 2.0 * math.pi * i / num_views
        elev = math.radians(lo if num_views == 1 else lo + (hi - lo) * i / (num_views - 1))
        direction = math.cos(elev) * (math.cos(azim) * e1 + math.sin(azim) * e2) + math.sin(elev) * up
        eye = center + distance * direction
        w2c = look_at_matrix(eye, center, up)
        cams.append(Camera(w2c, fx, fx, width / 2.0, height / 2.0, width, height, name=f"orbit_{i:03d}"))
    return cams
