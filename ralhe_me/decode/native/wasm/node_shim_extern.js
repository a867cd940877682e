// Emscripten 3.1.6's ES-module output still calls require() and reads __dirname under Node.js,
// which an ES module lacks: define both (module scope, before the factory; browsers skip this).
var require, __dirname;
if (typeof process == "object" && process.versions && process.versions.node) {
  const { createRequire } = await import("module");
  require = createRequire(import.meta.url);
  __dirname = require("path").dirname(require("url").fileURLToPath(import.meta.url));
}
