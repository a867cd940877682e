#!/usr/bin/env bash
# Install what the WebAssembly build of the native decoder and the web viewer need, then build:
# Emscripten (em++), Node.js + npm and Chromium from the distribution (Debian/Ubuntu apt, with
# sudo when not root), the viewer's pinned npm packages into web/node_modules (three.js,
# @mkkellogg/gaussian-splats-3d, playwright-core for the headless screenshot; never committed),
# then ralhe_me/decode/native/wasm/build.sh.
# Idempotent: a second run only checks (and rebuilds what changed).  Where something cannot be
# installed it prints one line and exits 0: the WebAssembly tests and benchmark then skip.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${TMPDIR:-/tmp}/ralhe_setup_wasm.log"
: >"$LOG"

skip() { echo "WebAssembly setup skipped: $* (details: $LOG)"; exit 0; }
node_cmd() { command -v node || command -v nodejs; }

# 1. System packages, only what is missing (a NodeSource nodejs already ships npm; Debian's npm
#    beside it would conflict).
need_apt=()
command -v em++ >/dev/null || need_apt+=(emscripten)
node_cmd >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || skip "no ${need_apt[*]}, and no root or sudo to install it"
    SUDO="sudo"
  fi
  echo "==> apt-get install ${need_apt[*]}"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"; } \
    >>"$LOG" 2>&1 || skip "apt-get could not install ${need_apt[*]}"
fi
command -v em++ >/dev/null || skip "no em++ after installing emscripten"
NODE="$(node_cmd)" || skip "no node command after installing nodejs"
major="$("$NODE" --version 2>>"$LOG")"; major="${major#v}"; major="${major%%.*}"
# wasm exceptions and SIMD128 need Node.js >= 17 (build.sh's smoke test runs the module)
[ "${major:-0}" -ge 18 ] 2>/dev/null || skip "Node.js $("$NODE" --version 2>/dev/null) is too old (>= 18 needed)"

# 2. The viewer's npm packages, at the versions package-lock.json pins.
if ! (cd web && "$NODE" -e "for (const p of ['three', '@mkkellogg/gaussian-splats-3d', 'playwright-core'])
        if (require('./node_modules/' + p + '/package.json').version !== require('./package.json')[p === 'playwright-core' ? 'devDependencies' : 'dependencies'][p]) process.exit(1)" 2>>"$LOG"); then
  echo "==> npm ci in web/"
  # --ignore-scripts: none of the three needs an install script (playwright-core downloads no
  # browser; the screenshot uses the system Chromium)
  (cd web && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >>"$LOG" 2>&1 \
    || skip "npm ci in web/ failed"
fi

# 3. The build (incremental).
bash ralhe_me/decode/native/wasm/build.sh >>"$LOG" 2>&1 || skip "ralhe_me/decode/native/wasm/build.sh failed"
echo "WebAssembly ready: $(tail -1 "$LOG")"
