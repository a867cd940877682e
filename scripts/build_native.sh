#!/usr/bin/env bash
# Build the native decoder (ralhe_me/decode/native: the ralhe-decode command and the C library
# libralhe_decode.a / .so) and put ralhe-decode into the virtual environment's bin/ (symlink).
# Needs only g++ (or CXX=...) and make. Venv: ./.venv, or RALHE_VENV as scripts/setup.sh.
# Idempotent: make rebuilds only what changed. Extra arguments go to make (e.g. -j4, BUILD=...).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RALHE_VENV:-.venv}"
NATIVE=ralhe_me/decode/native
BUILD="${BUILD:-build}"

printf '\n==> building the native decoder (%s/%s)\n' "$NATIVE" "$BUILD"
make -C "$NATIVE" BUILD="$BUILD" "$@"
case "$BUILD" in /*) BIN="$BUILD/ralhe-decode" ;; *) BIN="$PWD/$NATIVE/$BUILD/ralhe-decode" ;; esac
"$BIN" --version >/dev/null

if [ -d "$VENV/bin" ]; then
  ln -sf "$BIN" "$VENV/bin/ralhe-decode"
  printf '==> %s -> %s\n' "$VENV/bin/ralhe-decode" "$BIN"
else
  printf '==> no virtual environment at %s: run %s directly\n' "$VENV" "$BIN"
fi
