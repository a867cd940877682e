"""Build and install MinkowskiEngine 0.5.4 (CPU only) into the running interpreter.

MinkowskiEngine has no wheel for current PyTorch, so it is compiled from the PyPI sdist
(about 5 minutes on 2 cores; pip caches the wheel). Its ``setup.py`` imports torch and
``numpy.distutils`` and reads ``--global-option`` flags, hence the pins applied around the
build: ``setuptools<60``, ``numpy<2``, ``pip<24.1``, no build isolation. Used by
``scripts/setup.sh`` and, when the package is missing, by ``experiments/run.py``.

    python -m ralhe_me.install_minkowski
"""
from __future__ import annotations

import os
import subprocess
import sys


def _have_minkowski() -> bool:
    probe = "from ralhe_me.compat import import_minkowski; import_minkowski()"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def install_minkowski(jobs: int | None = None) -> None:
    """Compile MinkowskiEngine unless it already imports; raise CalledProcessError on failure."""
    if _have_minkowski():
        print("MinkowskiEngine is already installed.")
        return
    print("Building MinkowskiEngine 0.5.4 (CPU only, OpenBLAS); this takes about 5 minutes once.", flush=True)
    _pip("pip<24.1", "setuptools<60", "numpy<2", "ninja", "wheel")
    env = dict(os.environ, MAX_JOBS=str(jobs or os.cpu_count() or 2))
    try:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "minkowskiengine==0.5.4",
               "--global-option=--cpu_only", "--global-option=--blas=openblas"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
    finally:
        _pip("setuptools>=68,<80")  # the project's own editable install needs a modern setuptools
    if not _have_minkowski():
        raise RuntimeError("MinkowskiEngine was built but does not import; see the build log above")


if __name__ == "__main__":
    install_minkowski()
