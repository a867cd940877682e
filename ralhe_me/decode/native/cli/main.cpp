// ralhe-decode IN.ralhe OUT.ply: the native `ralhe decode`.  Errors print one line
// "ralhe-decode: error: <ErrorName>: <message>" and exit with status 2; the output is written to
// OUT.ply.part and renamed, so a failed run never leaves a partial OUT.ply.
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "../src/common.h"
#include "../src/container.h"
#include "../src/decoder.h"
#include "../src/ply.h"

namespace {

const char* kUsage = "usage: ralhe-decode [-h] [--version] [--timing] input output\n";
const char* kHelp =
    "\n"
    "Decode a .ralhe file into a standard INRIA 3DGS .ply (the native decoder: the same\n"
    "Gaussians as `ralhe decode`, bit for bit on every CPU).\n"
    "\n"
    "positional arguments:\n"
    "  input       input .ralhe file\n"
    "  output      output .ply (written atomically: never a partial file)\n"
    "\n"
    "options:\n"
    "  -h, --help  show this help message and exit\n"
    "  --version   show the decoder's and the file format's versions and exit\n"
    "  --timing    print the seconds of each decoding stage to stderr\n"
    "\n"
    "Exit status: 0 on success, 2 on any error (a bad or unreadable file, bad arguments).\n";

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<uint8_t> read_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    int err = errno;
    if (err == ENOENT) ralhe::fail(ralhe::ErrorKind::kIO, path + ": no such file");
    ralhe::fail(ralhe::ErrorKind::kIO, path + ": cannot open (" + std::strerror(err) + ")");
  }
  std::vector<uint8_t> data;
  uint8_t chunk[1 << 16];
  for (;;) {
    size_t got = std::fread(chunk, 1, sizeof(chunk), f);
    data.insert(data.end(), chunk, chunk + got);
    if (got < sizeof(chunk)) break;
  }
  bool failed = std::ferror(f) != 0;
  int err = errno;
  std::fclose(f);
  if (failed) ralhe::fail(ralhe::ErrorKind::kIO, path + ": read failed (" + std::strerror(err) + ")");
  return data;
}

// The .ply to path + ".part", then renamed over path; the part file is removed on any failure.
void write_ply_atomically(const ralhe::DecodedModel& m, const std::string& path) {
  const std::string tmp = path + ".part";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) ralhe::fail(ralhe::ErrorKind::kIO, path + ": cannot write (" + std::strerror(errno) + ")");
  bool ok = true;
  int err = 0;
  try {
    ralhe::PlyModel pm = m.ply();
    std::string header = ralhe::ply_header(pm.n, pm.num_sh);
    ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
    const int64_t rows = 1 << 14;
    std::vector<uint8_t> buf(ralhe::ply_row_bytes(pm.num_sh) * size_t(rows));
    for (int64_t i = 0; ok && i < pm.n; i += rows) {
      int64_t end = i + rows < pm.n ? i + rows : pm.n;
      ralhe::ply_rows(pm, i, end, buf.data());
      size_t bytes = ralhe::ply_row_bytes(pm.num_sh) * size_t(end - i);
      ok = std::fwrite(buf.data(), 1, bytes, f) == bytes;
    }
    if (!ok) err = errno;
    if (std::fclose(f) != 0 && ok) {
      ok = false;
      err = errno;
    }
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    ralhe::fail(ralhe::ErrorKind::kIO, path + ": write failed (" + std::strerror(err) + ")");
  }
}

int usage_error(const std::string& message) {
  std::fputs(kUsage, stderr);
  std::fprintf(stderr, "ralhe-decode: error: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  bool timing = false, options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (!options_done && (a == "-h" || a == "--help")) {
      std::fputs(kUsage, stdout);
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (!options_done && a == "--version") {
      std::printf("ralhe-decode %s (RALHE format version %d)\n", ralhe::kDecoderVersion, int(ralhe::kFormatVersion));
      return 0;
    }
    if (!options_done && a == "--timing") {
      timing = true;
    } else if (!options_done && a == "--") {
      options_done = true;
    } else if (!options_done && a.size() > 1 && a[0] == '-') {
      return usage_error("unrecognized arguments: " + a);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() < 2)
    return usage_error(std::string("the following arguments are required: ") +
                       (positional.empty() ? "input, output" : "output"));
  if (positional.size() > 2) return usage_error("unrecognized arguments: " + positional[2]);
  const std::string& in = positional[0];
  const std::string& out = positional[1];

  try {
    auto start = Clock::now();
    auto t0 = Clock::now();
    std::vector<uint8_t> data = read_file(in);
    double read_s = since(t0);
    ralhe::DecodedModel m = ralhe::decode(ralhe::Bytes(data));
    std::vector<uint8_t>().swap(data);
    t0 = Clock::now();
    write_ply_atomically(m, out);
    double write_s = since(t0);
    double total = since(start);
    std::printf("wrote %s: %lld Gaussians, SH degree %d, decoded in %.2f s\n", out.c_str(), (long long)m.n,
                m.sh_degree, total);
    if (timing) {
      std::fprintf(stderr, "%-12s %9.4f s\n", "read", read_s);
      for (const auto& s : m.seconds) std::fprintf(stderr, "%-12s %9.4f s\n", s.first.c_str(), s.second);
      std::fprintf(stderr, "%-12s %9.4f s\n", "write", write_s);
      std::fprintf(stderr, "%-12s %9.4f s\n", "total", total);
    }
    return 0;
  } catch (const ralhe::Error& e) {
    std::fprintf(stderr, "ralhe-decode: error: %s: %s\n", ralhe::error_name(e.kind()), e.what());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "ralhe-decode: error: OutOfMemoryError: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ralhe-decode: error: CorruptDataError: inconsistent file content (%s)\n", e.what());
  }
  return 2;
}
