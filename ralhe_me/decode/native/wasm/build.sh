#!/usr/bin/env bash
# Build the native decoder to WebAssembly: every src/*.cpp plus wasm/exports.cpp into
# build/wasm/ralhe_decode.mjs + ralhe_decode.wasm + warmup.mjs (an ES module exporting the factory
# `createRalheDecodeModule`; it runs in Node.js >= 16 and in browsers).  wasm/ralhe_decode.js is
# the JavaScript API over it.
#
#   bash ralhe_me/decode/native/wasm/build.sh           # incremental (objects in build/wasm/obj-*)
#   RALHE_WASM_CLEAN=1 bash .../build.sh                # rebuild everything
#   RALHE_WASM_EH=js bash .../build.sh                  # JavaScript-based C++ exceptions
#                                                       # (engines without wasm exceptions)
#   RALHE_WASM_LDFLAGS=--profiling-funcs bash .../build.sh  # extra link flags (names in profiles)
#
# Same float rules as every build (README.md): -ffp-contract=off, no -ffast-math; SIMD128 for
# the GCC/clang vector extensions.  Without em++ it prints one line and exits 0.
#
# Cold start (a decode in a fresh process, the usual case in a browser) is set by how engines
# tier up: a function runs from baseline code until it returns, and only later calls use its
# optimized code.  So the decoder keeps each stage's hot loop in an out-of-line function called
# many times (RALHE_NOINLINE), and the link tells Binaryen not to inline functions that have one
# caller (its default inlines all of them, whatever LLVM was told): guitar file, first decode in
# a fresh Node.js 20 process 294 -> 244 ms (median of 11).  -mbulk-memory makes memset and memcpy
# single memory.fill / memory.copy instructions instead of C loops that run in baseline code.

set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"  # ralhe_me/decode/native
OUT="$ROOT/build/wasm"
EMXX="${EMXX:-em++}"

if ! command -v "$EMXX" >/dev/null 2>&1; then
  echo "WebAssembly build skipped: emscripten not installed (apt-get install emscripten)"
  exit 0
fi
# Debian's emscripten runs its JavaScript tools with the node on PATH; a Node.js not from Debian
# (NodeSource) does not look in /usr/share/nodejs, where Debian's acorn (a dependency) lives.
if [ -d /usr/share/nodejs ]; then export NODE_PATH="/usr/share/nodejs${NODE_PATH:+:$NODE_PATH}"; fi

# Wasm exceptions (no JavaScript trampoline around every call that may throw: faster than
# Emscripten's JavaScript-based exceptions); Node.js >= 17, Chrome >= 95, Firefox >= 100 and
# Safari >= 15.2 run them.  The build checks that a bad file comes back as an error status (LLVM 14,
# Emscripten 3.1.6, traps when a thread_local with a constructor is first touched inside a catch
# block under wasm exceptions) and falls back to JavaScript exceptions where it does not.
EH_MODE="${RALHE_WASM_EH:-wasm}"
case "$EH_MODE" in wasm | js) ;; *) echo "RALHE_WASM_EH must be wasm or js" >&2; exit 2 ;; esac

shopt -s nullglob
SOURCES=("$ROOT"/src/*.cpp "$HERE/exports.cpp")
HEADERS=("$ROOT"/src/*.h)
if [ ! -f "$ROOT/src/c_api.cpp" ]; then
  echo "WebAssembly build: $ROOT/src/c_api.cpp (the C API) is missing" >&2
  exit 1
fi
EXPORTS=(ralhe_decode ralhe_free ralhe_to_ply ralhe_free_buffer ralhe_last_error ralhe_status_name
         ralhe_wasm_new ralhe_wasm_delete ralhe_wasm_num_points ralhe_wasm_sh_degree ralhe_wasm_num_sh
         ralhe_wasm_array ralhe_wasm_alloc ralhe_wasm_free_alloc ralhe_wasm_to_ply ralhe_wasm_ply_data
         ralhe_wasm_ply_size malloc free)
exported="$(printf '_%s,' "${EXPORTS[@]}")"

# build MODE: compile (objects in build/wasm/obj-MODE, recompiled when their source, any library
# header or this script is newer: headers are few and shared) and link build/wasm/ralhe_decode.*.
build() {
  local mode="$1" eh obj_dir obj src h
  if [ "$mode" = wasm ]; then eh=-fwasm-exceptions; else eh=-fexceptions; fi
  local cxxflags=(-O2 -std=c++17 -ffp-contract=off -msimd128 -mbulk-memory "$eh" -Wall -I"$ROOT/src")
  obj_dir="$OUT/obj-$mode"
  mkdir -p "$obj_dir"
  [ "${RALHE_WASM_CLEAN:-0}" = 1 ] && rm -f "$obj_dir"/*.o
  # the compiler and flags the objects were built with: a change rebuilds everything
  echo "$("$EMXX" --version | head -1) ${cxxflags[*]}" >"$obj_dir/flags.new"
  if cmp -s "$obj_dir/flags.new" "$obj_dir/flags"; then rm -f "$obj_dir/flags.new"
  else rm -f "$obj_dir"/*.o; mv "$obj_dir/flags.new" "$obj_dir/flags"; fi
  local newest_dep="$HERE/build.sh"
  for h in "${HEADERS[@]}"; do [ "$h" -nt "$newest_dep" ] && newest_dep="$h"; done
  local objects=()
  for src in "${SOURCES[@]}"; do
    obj="$obj_dir/$(basename "${src%.cpp}").o"
    objects+=("$obj")
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$newest_dep" -nt "$obj" ]; then
      echo "em++ -c $(basename "$src") ($mode exceptions)"
      "$EMXX" "${cxxflags[@]}" -c "$src" -o "$obj"
    fi
  done
  # objects of removed sources would otherwise be linked
  for obj in "$obj_dir"/*.o; do
    case " ${objects[*]} " in *" $obj "*) ;; *) rm -f "$obj" ;; esac
  done
  echo "em++ -> $OUT/ralhe_decode.mjs ($mode exceptions)"
  "$EMXX" "${cxxflags[@]}" "${objects[@]}" -o "$OUT/ralhe_decode.mjs" \
    -sMODULARIZE=1 -sEXPORT_ES6=1 -sEXPORT_NAME=createRalheDecodeModule \
    -sENVIRONMENT=web,worker,node -sALLOW_MEMORY_GROWTH=1 -sFILESYSTEM=0 \
    -sBINARYEN_EXTRA_PASSES=--one-caller-inline-max-function-size=0 \
    -sEXPORTED_FUNCTIONS="${exported%,}" -sEXPORTED_RUNTIME_METHODS=HEAPU8,HEAPF32,UTF8ToString \
    --extern-pre-js "$HERE/node_shim_extern.js" --pre-js "$HERE/node_shim_pre.js" ${RALHE_WASM_LDFLAGS:-}
}

# smoke: 0 when a bad file gives an error status (or when there is no node to tell)
smoke() {
  command -v node >/dev/null 2>&1 || return 0
  node "$HERE/smoke_test.mjs"
}

mkdir -p "$OUT"
rm -f "$OUT/ralhe_decode.mjs" "$OUT/ralhe_decode.wasm" "$OUT/exceptions"
build "$EH_MODE"
if ! smoke; then
  if [ "$EH_MODE" = wasm ]; then
    echo "wasm exceptions trap in this build (see above): rebuilding with JavaScript exceptions"
    EH_MODE=js
    build js
    smoke || { echo "WebAssembly build: the module fails its smoke test" >&2; exit 1; }
  else
    echo "WebAssembly build: the module fails its smoke test" >&2
    exit 1
  fi
fi
# The warm-up file (scripts/make_wasm_warmup.py) as an ES module of base64 text, which Node.js and
# browsers both import (createDecoder({ warmUp: true }) decodes it three times).
{ printf 'export default "'; base64 -w0 "$HERE/warmup.ralhe"; printf '";\n'; } >"$OUT/warmup.mjs"
echo "$EH_MODE" >"$OUT/exceptions"  # which exceptions the module uses (bench_wasm.py reports it)
wasm_bytes=$(wc -c <"$OUT/ralhe_decode.wasm")
js_bytes=$(wc -c <"$OUT/ralhe_decode.mjs")
echo "built $OUT/ralhe_decode.wasm ($wasm_bytes bytes, $EH_MODE exceptions) + ralhe_decode.mjs ($js_bytes bytes)"
