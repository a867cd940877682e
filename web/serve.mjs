// A tiny static server for the viewer (Node.js, no dependencies): web/ at /, the WebAssembly
// decoder at /native/wasm/ and /native/build/wasm/, and optionally a folder of .ralhe files at
// /data/ (open http://HOST:PORT/?src=/data/NAME.ralhe).
//
//   node web/serve.mjs [--port 8000] [--host 127.0.0.1] [--data DIR]
//
// --port 0 picks a free port.  Prints "serving http://HOST:PORT/" once listening.  Sends the
// cross-origin isolation headers, so the viewer's sort worker may use shared memory.
import { createServer } from "node:http";
import { createReadStream, statSync } from "node:fs";
import { dirname, extname, join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const WEB = dirname(fileURLToPath(import.meta.url));
const NATIVE = resolve(WEB, "..", "ralhe_me", "decode", "native");

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const port = parseInt(option("--port", "8000"), 10);
const host = option("--host", "127.0.0.1");
const data = option("--data", null);

// URL prefix -> folder; the first prefix that matches wins (only these folders are served).
const ROUTES = [
  ["/native/wasm/", join(NATIVE, "wasm")],
  ["/native/build/wasm/", join(NATIVE, "build", "wasm")],
  ...(data ? [["/data/", resolve(data)]] : []),
  ["/", WEB],
];

const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8", ".json": "application/json", ".map": "application/json",
  ".wasm": "application/wasm", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml",
};

function locate(urlPath) {
  for (const [prefix, folder] of ROUTES) {
    if (!urlPath.startsWith(prefix)) continue;
    const path = resolve(folder, "." + sep + urlPath.slice(prefix.length));
    if (path !== folder && !path.startsWith(folder + sep)) return null;  // ../ out of the folder
    return path;
  }
  return null;
}

const server = createServer((req, res) => {
  let urlPath;
  try {
    urlPath = decodeURIComponent(new URL(req.url, "http://x").pathname);
  } catch {
    res.writeHead(400).end("bad request");
    return;
  }
  let path = locate(urlPath);
  let stat = null;
  try {
    stat = path && statSync(path);
    if (stat && stat.isDirectory()) {
      path = join(path, "index.html");
      stat = statSync(path);
    }
  } catch {
    stat = null;
  }
  if (!stat || !stat.isFile() || (req.method !== "GET" && req.method !== "HEAD")) {
    res.writeHead(404, { "Content-Type": "text/plain" }).end(`not found: ${urlPath}`);
    return;
  }
  res.writeHead(200, {
    "Content-Type": TYPES[extname(path)] || "application/octet-stream",
    "Content-Length": stat.size,
    "Cache-Control": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
  });
  if (req.method === "HEAD") res.end();
  else createReadStream(path).pipe(res);
});

server.listen(port, host, () => {
  const { port: actual } = server.address();
  console.log(`serving http://${host}:${actual}/`);
});
