"""The peer formats (SPZ, SOG, SuperSplat's compressed PLY), made and read back by PlayCanvas'
``splat-transform`` command, so that RALHE is compared with what people actually ship.

The tool is a Node.js program installed by ``scripts/setup_peers.sh`` into ``.peers/``; when it
or Node.js is missing, :func:`peers_available` says why in one line and the caller skips the
peers. Every step runs ``splat-transform`` as a subprocess on the CPU (``-g cpu``); the decode
time is the wall clock of the whole process (Node start-up, reading the coded file, writing the
decoded ``.ply``), because that is what a user of the format pays.
"""
from __future__ import annotations

import os
import shlex
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple


from ..gaussians import GaussianModel, GaussianPlyError, read_ply

#: Peer format name -> file extension splat-transform recognises. SOG is written as one
#: bundled zip (``.sog``); the unbundled form (``meta.json`` + images) is not used here.
PEER_FORMATS = {"spz": ".spz", "sog": ".sog", "cply": ".compressed.ply"}

#: Environment variable naming a splat-transform command (a path or a name on PATH).
SPLAT_TRANSFORM_ENV = "RALHE_SPLAT_TRANSFORM"

#: Where scripts/setup_peers.sh installs the pinned splat-transform.
PEERS_DIR = Path(__file__).resolve().parents[2] / ".peers"

#: Seconds one splat-transform call may take before it is stopped (SOG's SH k-means is slowest).
DEFAULT_TIMEOUT_S = 900.0

_STDERR_TAIL_LINES = 15


class PeerError(RuntimeError):
    """splat-transform (or Node.js) is missing, failed, or left no usable output."""


class PeerInputError(ValueError):
    """A peer was asked for an unknown format or a missing input file."""


@dataclass(frozen=True)
class SplatTransform:
    """How to start splat-transform: the argv prefix and where it was found."""

    argv: Tuple[str, ...]  # e.g. ("/usr/bin/node", ".../bin/cli.mjs")
    source: str  # "RALHE_SPLAT_TRANSFORM", ".peers" or "PATH"

    def command(self, *args: str) -> List[str]:
        return [*self.argv, *args]


@dataclass
class PeerResult:
    """One peer encoding of one model, decoded back."""

    format: str  # a key of PEER_FORMATS
    path: str  # the coded file
    size_bytes: int  # every byte shipped (all files, if the format writes a folder)
    model: GaussianModel  # what the format decodes to
    encode_s: float  # wall clock of the encoding process
    decode_s: float  # median wall clock of the decoding process over decode_runs_s
    decode_runs_s: Tuple[float, ...]
    decoded_path: str  # the decoded .ply
    tool_version: str  # e.g. "splat-transform v2.7.1"


def find_node() -> Optional[str]:
    """The Node.js executable on PATH (``node``, or Debian's old name ``nodejs``), or None."""
    return shutil.which("node") or shutil.which("nodejs")


def _needs_node(path: str) -> bool:
    """True when ``path`` is a JavaScript file (by extension or a ``#!... node`` line)."""
    if path.endswith((".js", ".mjs", ".cjs")):
        return True
    try:
        with open(path, "rb") as fh:
            first = fh.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"node" in first


def find_splat_transform() -> SplatTransform:
    """Locate splat-transform: $RALHE_SPLAT_TRANSFORM, then ``.peers/``, then PATH.

    A JavaScript entry point is run through the Node.js found on PATH rather than its
    ``#!/usr/bin/env node`` line, so a missing Node.js is reported by name.
    """
    setting = os.environ.get(SPLAT_TRANSFORM_ENV, "").strip()
    if setting:
        found = setting if os.path.isfile(setting) else shutil.which(setting)
        if not found:
            raise PeerError(f"{SPLAT_TRANSFORM_ENV}={setting!r} is neither a file nor a command on PATH")
        source = SPLAT_TRANSFORM_ENV
    else:
        local = PEERS_DIR / "node_modules" / ".bin" / "splat-transform"
        if local.exists():
            found, source = str(local), ".peers"
        else:
            found, source = shutil.which("splat-transform"), "PATH"
        if not found:
            raise PeerError(
                f"splat-transform not found (not in {PEERS_DIR}, not on PATH, {SPLAT_TRANSFORM_ENV} unset); "
                "run scripts/setup_peers.sh"
            )
    path = os.path.realpath(found)
    if not _needs_node(path):
        return SplatTransform((path,), source)
    node = find_node()
    if node is None:
        raise PeerError(f"Node.js not found (no node or nodejs on PATH) to run {path}; run scripts/setup_peers.sh")
    return SplatTransform((node, path), source)


def _tail(text: str, lines: int = _STDERR_TAIL_LINES) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def _run(cmd: Sequence[str], timeout_s: float) -> Tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd``; return it and its wall-clock seconds, or raise :class:`PeerError`."""
    shown = shlex.join(cmd)
    start = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise PeerError(f"`{shown}` timed out after {timeout_s:g} s\n{_tail(err)}") from None
    except OSError as exc:
        raise PeerError(f"`{shown}` could not start: {exc}") from None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise PeerError(f"`{shown}` failed (exit {proc.returncode}):\n{_tail(proc.stderr or proc.stdout)}")
    return proc, seconds


def splat_transform_version(tool: Optional[SplatTransform] = None, timeout_s: float = 120.0) -> str:
    """The tool's version line, e.g. ``splat-transform v2.7.1``; proves that it starts."""
    tool = tool or find_splat_transform()
    proc, _ = _run(tool.command("--version"), timeout_s)
    text = (proc.stdout + "\n" + proc.stderr).strip()  # 2.7.1 prints it on stderr
    line = next((ln for ln in text.splitlines() if "splat-transform" in ln), text.splitlines()[0] if text else "")
    return line.split(" (")[0].strip() or "splat-transform (unknown version)"


def peers_available() -> Optional[str]:
    """None when the peers can run here, else a one-line reason (for ``peers skipped: ...``)."""
    try:
        splat_transform_version()
    except PeerError as exc:
        return str(exc).splitlines()[0]
    return None


def shipped_bytes(path: str | os.PathLike) -> int:
    """Bytes a user ships for a coded output: the file, or every file under a folder."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise PeerError(f"{p}: splat-transform reported success but wrote nothing there")


def _stem(ply_path: Path) -> str:
    name = ply_path.name
    for ext in (".compressed.ply", ".ply"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return ply_path.stem


def _read_decoded(path: Path) -> GaussianModel:
    """The decoded .ply; read_ply clamps the infinite opacity logits SPZ and compressed PLY
    decode to (8-bit alpha 0 or 255), with a ClampWarning."""
    try:
        return read_ply(path)
    except GaussianPlyError as exc:
        raise PeerError(f"{path}: splat-transform's output is not a readable 3DGS .ply: {exc}") from exc


def encode_peer(fmt: str, ply_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                timeout_s: float = DEFAULT_TIMEOUT_S, decode_repeats: int = 3,
                sog_iterations: Optional[int] = None) -> PeerResult:
    """Code ``ply_path`` (an INRIA 3DGS .ply) as peer format ``fmt`` into ``out_dir``, decode it back.

    Writes ``<stem><ext>`` (the coded file) and ``<stem>.<fmt>.decoded.ply``. ``sog_iterations``
    sets SOG's SH k-means iterations (None: splat-transform's default, 10); their CPU cost grows with
    the square of the Gaussian count for SH degree >= 1 (2 cores: a 50k SH3 scene took 160 s at 1
    iteration, over 900 s at 10). Raises
    :class:`PeerInputError` for an unknown format or missing input and :class:`PeerError` when
    the tool is missing or fails (the message holds the command and the end of its stderr).
    """
    if fmt not in PEER_FORMATS:
        raise PeerInputError(f"unknown peer format {fmt!r}; expected one of {', '.join(PEER_FORMATS)}")
    if decode_repeats < 1:
        raise PeerInputError(f"decode_repeats must be at least 1, got {decode_repeats}")
    if sog_iterations is not None and (isinstance(sog_iterations, bool) or int(sog_iterations) != sog_iterations
                                       or sog_iterations < 1):
        raise PeerInputError(f"sog_iterations must be a whole number >= 1, got {sog_iterations!r}")
    src = Path(ply_path)
    if not src.is_file():
        raise PeerInputError(f"{src}: no such .ply file")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tool = find_splat_transform()
    version = splat_transform_version(tool, timeout_s)
    coded = out / f"{_stem(src)}{PEER_FORMATS[fmt]}"
    decoded = out / f"{_stem(src)}.{fmt}.decoded.ply"
    # -g cpu: never touch a GPU (SOG's k-means runs on the CPU); -w: replace earlier outputs.
    base = ("-g", "cpu", "-w", "-q")
    options = ("-i", str(int(sog_iterations))) if fmt == "sog" and sog_iterations is not None else ()
    _, encode_s = _run(tool.command(*base, *options, str(src), str(coded)), timeout_s)
    size = shipped_bytes(coded)
    runs = []
    for _ in range(decode_repeats):
        _, seconds = _run(tool.command(*base, str(coded), str(decoded)), timeout_s)
        runs.append(seconds)
    if not decoded.is_file():
        raise PeerError(f"{decoded}: splat-transform reported success but wrote no decoded .ply")
    return PeerResult(format=fmt, path=str(coded), size_bytes=size, model=_read_decoded(decoded),
                      encode_s=encode_s, decode_s=float(statistics.median(runs)), decode_runs_s=tuple(runs),
                      decoded_path=str(decoded), tool_version=version)
