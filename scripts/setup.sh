#!/usr/bin/env bash
# Set up RALHE-ME on a fresh Debian/Ubuntu x86_64 machine with Python 3.11 and pip.
# Creates ./.venv (override with RALHE_VENV) and installs everything into it.
# Idempotent: a second run only checks what is there. Conda users: see environment.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RALHE_VENV:-.venv}"
PY="${PYTHON:-python3}"

say() { printf '\n==> %s\n' "$*"; }

# 1. System libraries: OpenBLAS (MinkowskiEngine build) and libusb (open3d import).
need_apt=()
dpkg -s libopenblas-dev >/dev/null 2>&1 || need_apt+=(libopenblas-dev)
dpkg -s libusb-1.0-0 >/dev/null 2>&1 || need_apt+=(libusb-1.0-0)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP="$VPY -m pip"
$PIP install -q --upgrade "pip<24.1" wheel  # MinkowskiEngine 0.5.4 needs --global-option (removed in pip 24.1)

# 3. torch first (MinkowskiEngine and the renderer extension compile against it).
$VPY -c "import torch, torchvision" 2>/dev/null || {
  say "installing torch + torchvision"
  $PIP install -q "torch==2.14.1" "torchvision==0.29.1"
}

# 4. The rest of the stack, then the project itself (editable; compiles the CPU rasterizer).
say "installing compressai, open3d, plyfile, pytest and ralhe_me"
$PIP install -q "numpy<2" "setuptools>=68,<80" "compressai==1.2.8" "open3d>=0.18" plyfile pytest tqdm pyyaml matplotlib scipy
$PIP install -q --no-build-isolation -e .
# Ray: the optional extra behind `experiments/run.py --ray` (its tests run here too).
$VPY -c "import ray" 2>/dev/null || { say "installing ray"; $PIP install -q "ray>=2.9,<3"; }

# 5. MinkowskiEngine 0.5.4, CPU only, from the PyPI sdist (about 5 minutes once; pip caches the wheel).
$VPY -m ralhe_me.install_minkowski
$VPY -c "from ralhe_me.compat import check_stack; check_stack()"

# 6. The native decoder (ralhe_me/decode/native: the ralhe-decode command and the C library;
#    g++ and make only), then its WebAssembly build and the web viewer (Emscripten, Chromium and
#    npm packages; one line and no failure where they cannot be installed).
bash scripts/build_native.sh
bash scripts/setup_wasm.sh

# 7. The formats people ship (SPZ, SOG, compressed PLY) for the main job's comparison: Node.js and
#    splat-transform into .peers/ (one line and no failure where they cannot be installed).
bash scripts/setup_peers.sh
say "ready: $VENV"
