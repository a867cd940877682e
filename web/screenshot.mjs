// Open the viewer page in headless Chromium (software WebGL) and screenshot it once the scene is
// shown: benchmarks/bench_wasm.py's browser check.
//
//   node web/screenshot.mjs --url http://127.0.0.1:8000/?src=/data/x.ralhe --out view.png
//        [--chromium /usr/bin/chromium] [--width 960] [--height 640] [--timeout 90] [--settle 3]
//
// Prints one JSON line: the page's window.ralheViewer ({state, numPoints, decodeMs, error, ...})
// plus {status (the status line), viewerBox (where the scene is drawn), screenshot,
// consoleErrors}.  Exit 0 when the page reached "shown", 1 otherwise.
import { chromium } from "playwright-core";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const url = option("--url", null);
const out = option("--out", "web_view.png");
const executablePath = option("--chromium", process.env.CHROMIUM || "/usr/bin/chromium");
const width = parseInt(option("--width", "960"), 10);
const height = parseInt(option("--height", "640"), 10);
const timeoutMs = 1000 * parseFloat(option("--timeout", "90"));
const settleMs = 1000 * parseFloat(option("--settle", "3"));
if (!url) {
  console.error("usage: node web/screenshot.mjs --url URL [--out PNG] [--chromium PATH]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // SwiftShader: WebGL 2 on the CPU, so the check runs on machines without a GPU
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
});
let result = { state: "timeout" };
const consoleErrors = [];
try {
  const page = await browser.newPage({ viewport: { width, height } });
  page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
  page.on("pageerror", (err) => consoleErrors.push(String(err)));
  await page.goto(url);
  try {
    await page.waitForFunction(
      () => window.ralheViewer && ["shown", "error"].includes(window.ralheViewer.state),
      null, { timeout: timeoutMs, polling: 200 });
  } catch {
    // timed out: report what the page got to
  }
  // the viewer sorts the splats in a worker and renders on later frames: give it time
  if ((await page.evaluate(() => window.ralheViewer?.state)) === "shown") await page.waitForTimeout(settleMs);
  result = (await page.evaluate(() => window.ralheViewer)) || { state: "no viewer state" };
  result.status = await page.evaluate(() => document.getElementById("status")?.textContent);
  // where the scene is drawn, for the caller's blank-canvas check (CSS pixels = image pixels)
  result.viewerBox = await page.evaluate(() => {
    const r = document.getElementById("viewer")?.getBoundingClientRect();
    return r ? { x: r.x, y: r.y, width: r.width, height: r.height } : null;
  });
  await page.screenshot({ path: out });
  result.screenshot = out;
} finally {
  result.consoleErrors = consoleErrors.slice(0, 10);
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.state === "shown" ? 0 : 1);
