// The viewer page: decode a .ralhe file with the WebAssembly decoder and show it with
// @mkkellogg/gaussian-splats-3d (three.js), which reads the INRIA .ply the decoder writes.
//
// Query parameters: src=URL (a .ralhe, or a .ply shown as is), up=x,y,z (the scene's up axis;
// default 0,0,1, the project's scenes; INRIA captures are usually 0,-1,0).
// window.ralheViewer tells scripts (benchmarks/bench_wasm.py) where the page is: {state:
// "loading" | "decoding" | "shown" | "error", numPoints, shDegree, fileBytes, decodeMs, error}.
import * as GaussianSplats3D from "@mkkellogg/gaussian-splats-3d";
import { createDecoder } from "/native/wasm/ralhe_decode.js";

const statusEl = document.getElementById("status");
const viewerEl = document.getElementById("viewer");
const params = new URLSearchParams(location.search);
const state = (window.ralheViewer = { state: "loading" });
let viewer = null;

function setStatus(text, isError = false) {
  statusEl.textContent = text;
  statusEl.classList.toggle("error", isError);
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}

function parseUp(text) {
  const v = (text || "0,0,1").split(",").map(Number);
  return v.length === 3 && v.every(Number.isFinite) && v.some((x) => x !== 0) ? v : [0, 0, 1];
}

// Center and radius of the bulk of the points (2nd-98th percentile per axis, so that a few far
// points, e.g. a far-field background, do not push the camera away), from a sample of the means.
function robustBounds(means) {
  const n = means.length / 3;
  const step = Math.max(1, Math.floor(n / 20000));
  const axes = [[], [], []];
  for (let i = 0; i < n; i += step) for (let c = 0; c < 3; ++c) axes[c].push(means[3 * i + c]);
  const lo = [], hi = [];
  for (const a of axes) {
    a.sort((x, y) => x - y);
    lo.push(a[Math.floor(0.02 * (a.length - 1))]);
    hi.push(a[Math.ceil(0.98 * (a.length - 1))]);
  }
  const center = lo.map((l, c) => (l + hi[c]) / 2);
  const radius = Math.max(1e-3, Math.hypot(...lo.map((l, c) => hi[c] - l)) / 2);
  return { center, radius };
}

// A camera looking at the bulk of the scene from above and to the side of `up`.
function cameraFor(means, up) {
  const { center, radius } = robustBounds(means);
  const u = up.map((x) => x / Math.hypot(...up));
  // two directions perpendicular to up
  const helper = Math.abs(u[0]) < 0.9 ? [1, 0, 0] : [0, 1, 0];
  const dot = helper.reduce((s, h, c) => s + h * u[c], 0);
  const a = helper.map((h, c) => h - dot * u[c]);
  const na = Math.hypot(...a);
  const e1 = a.map((x) => x / na);
  const e2 = [u[1] * e1[2] - u[2] * e1[1], u[2] * e1[0] - u[0] * e1[2], u[0] * e1[1] - u[1] * e1[0]];
  const dir = [0, 1, 2].map((c) => 0.55 * e1[c] - 0.7 * e2[c] + 0.45 * u[c]);
  const nd = Math.hypot(...dir);
  const position = center.map((x, c) => x + (2.0 * radius * dir[c]) / nd);
  return { position, lookAt: center };
}

// warmUp: the decoder decodes a small built-in file while the scene downloads, so that the
// engine has compiled it by the time the scene arrives (README: first decode 1.4x native, not 4x)
const decoderPromise = createDecoder({ warmUp: true });
decoderPromise.catch(() => {});  // reported where it is awaited

async function show(name, bytes) {
  try {
    Object.assign(state, { state: "decoding", name, fileBytes: bytes.length, error: undefined });
    setStatus(`Decoding ${name} (${formatBytes(bytes.length)})…`);
    let ply, means, numPoints, shDegree, decodeMs = null;
    const isPly = bytes.length >= 4 && String.fromCharCode(...bytes.subarray(0, 4)) === "ply\n";
    if (isPly) {
      ply = bytes;
    } else {
      const decoder = await decoderPromise;
      const t0 = performance.now();
      const g = decoder.decode(bytes);
      ply = g.ply();
      decodeMs = performance.now() - t0;
      ({ means, numPoints, shDegree } = g);
    }
    Object.assign(state, { numPoints, shDegree, decodeMs });

    if (viewer) {
      await viewer.dispose();
      viewer = null;
    }
    const up = parseUp(params.get("up"));
    const camera = means ? cameraFor(means, up) : { position: [2, -2.5, 1.8], lookAt: [0, 0, 0] };
    viewer = new GaussianSplats3D.Viewer({
      rootElement: viewerEl,
      cameraUp: up,
      initialCameraPosition: camera.position,
      initialCameraLookAt: camera.lookAt,
      // shared memory needs a cross-origin isolated page (web/serve.mjs sends the headers)
      sharedMemoryForWorkers: self.crossOriginIsolated === true,
      gpuAcceleratedSort: false,
      integerBasedSort: false,  // far-field coordinates overflow the integer sort
      sphericalHarmonicsDegree: Math.min(shDegree ?? 0, 2),
      sceneRevealMode: GaussianSplats3D.SceneRevealMode.Instant,
      logLevel: GaussianSplats3D.LogLevel.None,
    });
    const url = URL.createObjectURL(new Blob([ply], { type: "application/octet-stream" }));
    try {
      await viewer.addSplatScene(url, {
        format: GaussianSplats3D.SceneFormat.Ply,
        showLoadingUI: false,
        progressiveLoad: false,
        splatAlphaRemovalThreshold: 1,
      });
    } finally {
      URL.revokeObjectURL(url);
    }
    viewer.start();
    const parts = [name];
    if (numPoints !== undefined) parts.push(`${numPoints.toLocaleString("en")} Gaussians`, `SH ${shDegree}`);
    parts.push(formatBytes(bytes.length));
    parts.push(decodeMs === null ? "a .ply, shown as is" : `WebAssembly decode ${decodeMs.toFixed(0)} ms`);
    setStatus(parts.join(" · "));
    state.state = "shown";
  } catch (e) {
    console.error(e);
    Object.assign(state, { state: "error", error: `${e.name}: ${e.detail ?? e.message}` });
    setStatus(`${name}: ${e.name}: ${e.detail ?? e.message}`, true);
  }
}

document.getElementById("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (file) await show(file.name, new Uint8Array(await file.arrayBuffer()));
});

const src = params.get("src");
if (src) {
  const name = decodeURIComponent(src.split("/").pop() || src);
  try {
    setStatus(`Fetching ${src}…`);
    const response = await fetch(src);
    if (!response.ok) throw new Error(`HTTP ${response.status} for ${src}`);
    await show(name, new Uint8Array(await response.arrayBuffer()));
  } catch (e) {
    Object.assign(state, { state: "error", error: String(e.message || e) });
    setStatus(`${src}: ${e.message || e}`, true);
  }
} else {
  decoderPromise.then(
    () => setStatus("Open a .ralhe file (or pass ?src=URL)."),
    (e) => {
      Object.assign(state, { state: "error", error: String(e) });
      setStatus(`The WebAssembly decoder did not load: ${e}`, true);
    },
  );
}
