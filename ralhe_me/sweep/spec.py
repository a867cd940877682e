"""What a sweep runs: scenes, each with its settings and its (codec, rate) jobs.

A sweep file (YAML, e.g. ``experiments/sweep.yaml``) lists scenes and the codecs with their rate
parameters (lambdas for RALHE, quantizer steps for the baselines). Every (scene, codec, rate)
is one :class:`Job`; a job's key hashes every setting that changes its bytes or its score, so a
resumed sweep redoes a job whose settings changed and skips the others.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

RALHE = "ralhe"
BASELINES = ("raht", "scalar")
CODECS = (RALHE,) + BASELINES
# The formats people ship, made by splat-transform from the uncoded input (no rate parameter).
PEERS = {"spz": ".spz", "sog": ".sog", "cply": ".compressed.ply"}
# SOG is opt-in: its encoder's SH k-means on the CPU grows with the square of the Gaussian count
# (50k SH3 Gaussians: 160 s at 1 iteration, over 15 minutes at its default 10, on 2 cores).
DEFAULT_PEERS = ("spz", "cply")
# from the low-rate end to near-lossless: 3e-4 is geometry tier 0, 1e-4 tier 1, 2.5e-5 tier 2,
# 6e-6 tier 3 (encode/operating_point.py), so the curve reaches past the peers' qualities (tier 3
# put kacytran at 55.2 dB in 182 kB, past SOG (51.0 dB) and compressed PLY (53.1 dB))
DEFAULT_LAMBDAS = (6e-6, 2.5e-5, 1e-4, 3e-4, 1.5e-3, 6e-3)
DEFAULT_BASELINE_STEPS = (0.4, 0.2, 0.1, 0.05, 0.025)


class SweepSpecError(ValueError):
    """A sweep file or scene setting is invalid; the message names the key."""


@dataclass
class SceneSettings:
    """One scene of a sweep: where it comes from, how it is prepared and evaluated, and the
    rates each codec codes it at. ``out`` is the folder of its files and rows."""

    name: Optional[str] = None  # label and folder name; default: the .ply's stem or "default_scene"
    scene: Optional[str] = None  # an INRIA .ply; None: the generated default scene
    dataset: Optional[str] = None  # NeRF-synthetic folder: its test views score, its train views tune
    preset: str = "fast"
    codecs: Dict[str, List[float]] = field(default_factory=lambda: {
        RALHE: list(DEFAULT_LAMBDAS), "raht": list(DEFAULT_BASELINE_STEPS), "scalar": list(DEFAULT_BASELINE_STEPS)})
    peers: List[str] = field(default_factory=lambda: list(DEFAULT_PEERS))  # skipped where splat-transform cannot run
    sog_iterations: Optional[int] = None  # SOG's SH k-means iterations; None: splat-transform's default (10)
    out: str = "outputs/default"
    num_gaussians: int = 50_000  # size of the generated default scene
    seed: int = 0  # of the generated default scene
    views: int = 8
    resolution: int = 400
    depth: Optional[int] = None
    steps: Optional[int] = None  # None: the preset's
    render_steps: Optional[int] = None  # None: the preset's
    finetune_iters: Optional[int] = None  # None: the preset's
    codebook: Optional[int] = None
    covariance_step: Optional[float] = None
    importance_views: Optional[int] = None
    shape_sensitivity_views: Optional[int] = None  # None: the preset's (per-Gaussian covariance steps)
    keep_undrawn: bool = False  # code the Gaussians of opacity below 1/255 too (no rasterizer draws them)
    target_kb: Optional[float] = None  # size of the Table-2 comparison (None: middle of RALHE's curve)
    threads: int = 2  # torch intra-op threads of the preparation and of every job

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = Path(self.scene).stem if self.scene else "default_scene"
        for codec, rates in self.codecs.items():
            if codec not in CODECS:
                raise SweepSpecError(f"scene {self.name}: unknown codec {codec!r} (known: {', '.join(CODECS)})")
            if not isinstance(rates, (list, tuple)) or not all(_is_number(r) and r > 0 for r in rates):
                raise SweepSpecError(f"scene {self.name}: {codec} needs a list of positive numbers, got {rates!r}")
            if len(set(rates)) != len(rates):
                raise SweepSpecError(f"scene {self.name}: {codec} lists a rate twice: {rates!r}")
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown:
            raise SweepSpecError(f"scene {self.name}: unknown peer format(s) {', '.join(map(repr, unknown))} "
                                 f"(known: {', '.join(PEERS)})")
        for key in ("views", "resolution", "threads", "num_gaussians"):
            if int(getattr(self, key)) < 1:
                raise SweepSpecError(f"scene {self.name}: {key} must be >= 1, got {getattr(self, key)}")
        if self.finetune_iters is not None and (not isinstance(self.finetune_iters, int)
                                                or isinstance(self.finetune_iters, bool) or self.finetune_iters < 0):
            raise SweepSpecError(f"scene {self.name}: finetune_iters must be a whole number >= 0, "
                                 f"got {self.finetune_iters!r}")
        for key in ("importance_views", "shape_sensitivity_views"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise SweepSpecError(f"scene {self.name}: {key} must be a whole number >= 0, got {v!r}")
        if self.sog_iterations is not None and (not isinstance(self.sog_iterations, int)
                                                or isinstance(self.sog_iterations, bool) or self.sog_iterations < 1):
            raise SweepSpecError(f"scene {self.name}: sog_iterations must be a whole number >= 1, "
                                 f"got {self.sog_iterations!r}")
        if not isinstance(self.keep_undrawn, bool):
            raise SweepSpecError(f"scene {self.name}: keep_undrawn must be true or false, got {self.keep_undrawn!r}")
        if self.render_steps is not None and self.render_steps < 0:
            raise SweepSpecError(f"scene {self.name}: render_steps must be >= 0, got {self.render_steps}")

    def jobs(self) -> List["Job"]:
        coded = [Job(self.name, codec, float(rate)) for codec in CODECS for rate in sorted(self.codecs.get(codec, []))]
        return coded + [Job(self.name, peer, 0.0) for peer in PEERS if peer in self.peers]

    def job_tier(self, job: "Job") -> int:
        """The geometry tier of the preparation ``job`` codes (encode/operating_point.py): a RALHE
        job's follows its lambda, the baselines code the preset's (tier 0 unless it fixes one); 0
        when the depth and the covariance step are both fixed (every tier would prepare the same)."""
        from ..config import load_preset
        from ..encode.operating_point import geometry_follows_lambda, geometry_tier

        config = load_preset(self.preset)
        config.depth, config.covariance_step = self.depth, self.covariance_step
        if not geometry_follows_lambda(config):
            return config.geometry_tier or 0
        if job.codec == RALHE:
            return geometry_tier(dataclasses.replace(config, lmbda=job.parameter)).index
        return 0

    def jobs_by_tier(self, jobs: List["Job"]) -> Dict[int, List["Job"]]:
        """``jobs`` grouped by the geometry tier of their preparation, lowest tier first."""
        groups: Dict[int, List[Job]] = {}
        for job in jobs:
            groups.setdefault(self.job_tier(job), []).append(job)
        return dict(sorted(groups.items()))

    def preparation_key(self, tier: int = 0) -> str:
        """Hash of what the shared preparation (voxels, coded shapes, finetuning, views) of geometry
        tier ``tier`` depends on."""
        fields = {k: getattr(self, k) for k in ("scene", "dataset", "preset", "num_gaussians", "seed", "views",
                                                "resolution", "depth", "finetune_iters", "codebook",
                                                "covariance_step", "importance_views", "threads",
                                                "keep_undrawn", "shape_sensitivity_views")}
        fields["scene_file"] = _file_identity(self.scene)
        fields["dataset_dir"] = _file_identity(self.dataset)
        fields["preset_file"] = _file_identity(_preset_path(self.preset))
        fields["code"] = code_version()
        fields["geometry_tier"] = tier
        return _digest(fields)

    def job_key(self, job: "Job") -> str:
        """Hash of everything a job's bytes and score depend on (its preparation included)."""
        fields = {"preparation": self.preparation_key(self.job_tier(job)), "codec": job.codec,
                  "parameter": job.parameter}
        if job.codec == RALHE:
            fields.update(steps=self.steps, render_steps=self.render_steps)
        if job.codec == "sog" and self.sog_iterations is not None:
            fields.update(sog_iterations=self.sog_iterations)
        return _digest(fields)


@dataclass(frozen=True)
class Job:
    """One (scene, codec, rate): an encode, a decode of its bytes and a render score."""

    scene: str
    codec: str
    parameter: float  # lambda for RALHE, quantizer step for a baseline, 0 for a peer

    @property
    def file_name(self) -> str:
        if self.codec == RALHE:
            return f"ralhe_lambda{self.parameter:g}.ralhe"
        if self.codec in PEERS:
            return f"peer_{self.codec}{PEERS[self.codec]}"
        return f"{self.codec}_step{self.parameter:g}.ralhe"

    @property
    def id(self) -> str:
        return f"{self.scene}/{self.file_name}"


@dataclass
class Sweep:
    """Scenes with their jobs; each scene's files go to its ``out`` folder."""

    scenes: List[SceneSettings]
    out: str

    def __post_init__(self) -> None:
        names = [s.name for s in self.scenes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SweepSpecError(f"scene names must be unique; repeated: {', '.join(dup)}")
        if not self.scenes:
            raise SweepSpecError("a sweep needs at least one scene")

    def jobs(self) -> List[Job]:
        return [job for scene in self.scenes for job in scene.jobs()]

    def without_peers(self) -> "Sweep":
        """The same sweep with no peer jobs (where splat-transform cannot run)."""
        return Sweep([dataclasses.replace(s, peers=[]) for s in self.scenes], self.out)

    def scene(self, name: str) -> SceneSettings:
        return next(s for s in self.scenes if s.name == name)


def single_scene(settings: SceneSettings) -> Sweep:
    """The main job's sweep: one scene whose files go straight into ``settings.out``."""
    return Sweep([settings], settings.out)


SCENE_KEYS = {f.name for f in dataclasses.fields(SceneSettings)} - {"out"}


def load_sweep(path: str, out: Optional[str] = None) -> Sweep:
    """A :class:`Sweep` from a YAML sweep file (relative paths are relative to the file's folder)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweepSpecError(f"no sweep file {path}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SweepSpecError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(spec, dict):
        raise SweepSpecError(f"{path}: a sweep file must be a mapping")
    unknown = set(spec) - {"out", "defaults", "codecs", "scenes", "description"}
    if unknown:
        raise SweepSpecError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} "
                             "(known: out, defaults, codecs, scenes, description)")
    base = path.resolve().parent
    defaults = _mapping(spec.get("defaults"), f"{path}: defaults")
    codecs = _mapping(spec.get("codecs"), f"{path}: codecs") or None
    scenes = spec.get("scenes")
    if not isinstance(scenes, list) or not scenes:
        raise SweepSpecError(f"{path}: 'scenes' must be a non-empty list")
    out_dir = Path(out) if out else _resolve(base, spec.get("out", "outputs/sweep"))
    settings = []
    for i, entry in enumerate(scenes):
        entry = _mapping(entry, f"{path}: scenes[{i}]")
        values = {**defaults, **entry}
        if "codecs" not in values and codecs is not None:
            values["codecs"] = codecs
        bad = set(values) - SCENE_KEYS
        if bad:
            raise SweepSpecError(f"{path}: scenes[{i}]: unknown key(s) {', '.join(sorted(bad))} "
                                 f"(known: {', '.join(sorted(SCENE_KEYS))})")
        for key in ("scene", "dataset"):
            if values.get(key):
                values[key] = str(_resolve(base, values[key]))
        if isinstance(values.get("peers"), str):
            values["peers"] = [values["peers"]]
        if "codecs" in values:
            values["codecs"] = {k: [float(v) for v in _rates(vs, f"{path}: scenes[{i}].codecs.{k}")]
                                for k, vs in _mapping(values["codecs"], f"{path}: scenes[{i}].codecs").items()}
        try:
            scene = SceneSettings(**values)
        except TypeError as exc:
            raise SweepSpecError(f"{path}: scenes[{i}]: {exc}") from None
        scene.out = str(out_dir / scene.name)
        settings.append(scene)
    return Sweep(settings, str(out_dir))


def _rates(values, where: str) -> list:
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
        raise SweepSpecError(f"{where} must be a list of numbers, got {values!r}")
    return values


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepSpecError(f"{where} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _resolve(base: Path, value) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else base / p


def _preset_path(preset: str) -> str:
    from ..config import PRESET_DIR

    p = Path(preset)
    return str(p if p.suffix else PRESET_DIR / f"{preset}.yaml")


def _file_identity(path: Optional[str]):
    """(size, mtime) of a file, or of a folder's files: a changed input invalidates the rows."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return [st.st_size, st.st_mtime_ns]
    if p.is_dir():
        return sorted([str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns]
                      for f in p.rglob("*.json"))
    return "missing"


_CODE_VERSION: Optional[str] = None


def code_version() -> str:
    """Hash of the package's sources (Python, C++, presets): rows made by other code are redone."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha1()
        files = [p for ext in ("*.py", "*.cpp", "*.h") for p in root.rglob(ext)]
        files += list((root.parent / "models").glob("*.yaml"))
        for p in sorted(files):
            h.update(str(p.relative_to(root.parent)).encode())
            h.update(p.read_bytes())
        _CODE_VERSION = h.hexdigest()[:16]
    return _CODE_VERSION


def _digest(fields: dict) -> str:
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
