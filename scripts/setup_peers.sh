#!/usr/bin/env bash
# Install the "peer" codecs RALHE-ME is compared with: SPZ, SOG and SuperSplat's compressed
# PLY, all written by PlayCanvas' splat-transform (an npm package, run on the CPU with -g cpu).
# Puts it in ./.peers (override with RALHE_PEERS_DIR), pinned to one version so that sizes
# and timings are reproducible. Needs Node.js >= 18 (Debian 12's nodejs 18.20 works).
# Idempotent: a second run only checks. When Node.js cannot be had, prints one line and
# exits 0: the experiments then skip the peers.
set -uo pipefail
cd "$(dirname "$0")/.."
PREFIX="${RALHE_PEERS_DIR:-.peers}"
VERSION="${RALHE_SPLAT_TRANSFORM_VERSION:-2.7.1}"
LOG="${TMPDIR:-/tmp}/ralhe_setup_peers.log"
CLI="$PREFIX/node_modules/@playcanvas/splat-transform/bin/cli.mjs"

skip() { echo "peers skipped: $* (details: $LOG)"; exit 0; }
: >"$LOG"

node_cmd() { command -v node || command -v nodejs; }

# 1. Node.js and npm from the distribution, only what is missing (a NodeSource nodejs
#    already ships npm; installing Debian's npm beside it would conflict).
need_apt=()
node_cmd >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || skip "no ${need_apt[*]}, and no root or sudo to install it"
    SUDO="sudo"
  fi
  echo "==> apt-get install ${need_apt[*]}" >>"$LOG"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"; } \
    >>"$LOG" 2>&1 || skip "apt-get could not install ${need_apt[*]}"
fi
NODE="$(node_cmd)" || skip "no node command after installing nodejs"
NODE_VERSION="$("$NODE" --version 2>>"$LOG")" || skip "$NODE does not run"
major="${NODE_VERSION#v}"; major="${major%%.*}"
[ "$major" -ge 18 ] 2>/dev/null || skip "Node.js $NODE_VERSION is too old; splat-transform needs >= 18"

installed() {
  [ -f "$CLI" ] && "$NODE" -e "process.exit(require('./$PREFIX/node_modules/@playcanvas/splat-transform/package.json').version === '$VERSION' ? 0 : 1)" 2>>"$LOG"
}

# 2. splat-transform, pinned. --ignore-scripts: the only install script (webgpu's) only
#    clears a macOS quarantine flag; the CPU path (-g cpu) needs no GPU driver.
if ! installed; then
  mkdir -p "$PREFIX"
  echo "==> npm install @playcanvas/splat-transform@$VERSION into $PREFIX" >>"$LOG"
  npm install --prefix "$PREFIX" "@playcanvas/splat-transform@$VERSION" \
    --no-audit --no-fund --ignore-scripts --loglevel=error >>"$LOG" 2>&1 \
    || skip "npm install @playcanvas/splat-transform@$VERSION failed"
  installed || skip "npm install did not leave splat-transform $VERSION in $PREFIX"
fi

# 3. It must run here.
out="$("$NODE" "$CLI" --version 2>&1)" || { echo "$out" >>"$LOG"; skip "splat-transform $VERSION does not start on Node.js $NODE_VERSION"; }
echo "peers ready: ${out%% (*} on Node.js $NODE_VERSION in $PREFIX"
