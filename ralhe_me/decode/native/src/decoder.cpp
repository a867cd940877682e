// decoder.py _decode step by step; each stage names the Python function it mirrors.
#include "decoder.h"

#include <chrono>
#include <cmath>
#include <cstdint>

#include "attributes.h"
#include "covariance.h"
#include "gain_map.h"
#include "integer_arm.h"
#include "json.h"
#include "laplace_tables.h"
#include "latents.h"
#include "raht.h"
#include "static_latents.h"
#include "occupancy.h"
#include "octree.h"
#include "synthesis.h"
#include "weights.h"

namespace ralhe {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// What the header of a "ralhe" file says (decoder._checked and the reconstruction.py readers).
struct Header {
  int64_t num_points = 0;
  int depth = 0;
  int sh_degree = 0;
  VoxelGrid grid;
  bool has_gain = false;
  int64_t gain_level = 0;
  Architecture arch;
  LaplaceTableConfig table_config;
  std::vector<int64_t> level_sizes;
  std::vector<double> signal_mean;  // [K + 1, 3]
  std::vector<double> signal_std;   // [K + 1]
  int64_t decoder_shift = 0;
};

// A string field of the header, `fallback` where absent; "<not a string>" where it is not one.
std::string string_or(const Json& h, const char* key, const char* fallback) {
  const Json* v = h.find(key);
  if (!v) return fallback;
  return v->type == Json::Type::kString ? v->string : std::string("<not a string>");
}

std::string attribute_codec(const Json& h) { return string_or(h, "attribute_codec", "ralhe"); }

// grid_from_header; failures are "invalid voxel grid in the header: ..." as in _checked.
VoxelGrid grid_from_header(const Json& h, int depth) {
  VoxelGrid g;
  try {
    // np.asarray(origin, float64): null is NaN, and one value broadcasts to the three axes
    const Json& o = require(h, "origin", "origin");
    std::vector<double> origin = o.type == Json::Type::kArray ? json_doubles(o, "origin", size_t(-1), true)
                                 : std::vector<double>{o.is_null() ? std::nan("") : json_double(o, "origin")};
    if (origin.size() == 1) origin.assign(3, origin[0]);
    if (origin.size() != 3) corrupt("invalid origin: " + std::to_string(origin.size()) + " values, expected 3");
    for (int i = 0; i < 3; ++i) g.origin[i] = origin[i];
    g.extent = json_double(require(h, "extent", "extent"), "extent");
    g.depth = depth;
    const Json* c = h.find("contraction");
    if (c && !c->is_null()) {
      g.contracted = true;
      std::vector<double> center =
          json_doubles(require(*c, "center", "contraction.center"), "contraction.center", 3);
      for (int i = 0; i < 3; ++i) g.contraction.center[i] = center[i];
      g.contraction.radius = json_double(require(*c, "radius", "contraction.radius"), "contraction.radius");
      g.contraction.log_range =
          json_double(require(*c, "log_range", "contraction.log_range"), "contraction.log_range");
    }
    check_grid(g);
  } catch (const Error& e) {
    corrupt(std::string("invalid voxel grid in the header: ") + e.what());
  }
  return g;
}

// An int field of the architecture (Python's are unbounded; these fit an int).
int arch_int(const Json& v, const std::string& name) {
  int64_t x = json_int(v, name);
  if (x < -(int64_t(1) << 30) || x > (int64_t(1) << 30)) corrupt("invalid " + name + " " + std::to_string(x));
  return int(x);
}

// codec.architecture_from_header: ArchitectureConfig(**values), so absent keys take the defaults
// and unknown ones are an error.
Architecture architecture_from_header(const Json& h) {
  const Json& a = require(h, "architecture", "architecture");
  if (a.type != Json::Type::kObject) corrupt("invalid architecture: not a dictionary");
  Architecture arch;
  // decoder_linear and num_levels have no default here: reconstruction.py reads them directly
  require(a, "num_levels", "architecture.num_levels");
  require(a, "decoder_linear", "architecture.decoder_linear");
  for (const auto& kv : a.members) {
    const std::string& k = kv.first;
    const Json& v = kv.second;
    const std::string name = "architecture." + k;
    if (k == "transform") arch.transform = json_string(v, name);
    else if (k == "num_levels") arch.num_levels = arch_int(v, name);
    else if (k == "latent_channels") arch.latent_channels = arch_int(v, name);
    else if (k == "skip") arch.skip = json_bool(v, name);
    else if (k == "decoder_linear") {
      if (v.type != Json::Type::kArray || v.items.size() != 2) corrupt("invalid " + name + ": expected 2 widths");
      arch.decoder_linear[0] = arch_int(v.items[0], name);
      arch.decoder_linear[1] = arch_int(v.items[1], name);
    } else if (k == "decoder_conv") arch.decoder_conv = arch_int(v, name);
    else if (k == "arm_context") arch.arm_context = arch_int(v, name);
    else if (k == "arm_hidden") arch.arm_hidden = arch_int(v, name);
    else if (k == "segment_length") arch.segment_length = arch_int(v, name);
    else corrupt("invalid architecture: unknown key '" + k + "'");
  }
  return arch;
}

LaplaceTableConfig table_config_from_header(const Json& h) {
  const Json& t = require(h, "table_config", "table_config");
  if (t.type != Json::Type::kObject) corrupt("invalid table_config: not a dictionary");
  LaplaceTableConfig c;
  for (const auto& kv : t.members) {
    const std::string& k = kv.first;
    const std::string name = "table_config." + k;
    if (k == "log_scale_min") c.log_scale_min = json_double(kv.second, name);
    else if (k == "log_scale_step_log2") c.log_scale_step_log2 = json_int(kv.second, name);
    else if (k == "num_scale_bins") c.num_scale_bins = json_int(kv.second, name);
    else if (k == "mean_bins_log2") c.mean_bins_log2 = json_int(kv.second, name);
    else if (k == "tail_log2") c.tail_log2 = json_int(kv.second, name);
    else if (k == "max_half_width") c.max_half_width = json_int(kv.second, name);
    else corrupt("invalid table_config: unknown key '" + k + "'");
  }
  c.validate();
  return c;
}

// decoder._checked (plus, for "ralhe" files, everything else the decode reads from the header).
Header checked_header(const Json& h) {
  const bool ralhe = attribute_codec(h) == "ralhe";
  std::vector<const char*> required = {"num_points", "depth", "origin", "extent", "sh_degree"};
  if (ralhe)
    for (const char* k : {"attributes", "architecture", "table_config", "level_sizes", "signal_mean", "signal_std",
                          "decoder_shift"})
      required.push_back(k);
  std::string missing;
  for (const char* k : required)
    if (!h.find(k)) missing += (missing.empty() ? "" : ", ") + std::string(k);
  if (!missing.empty()) corrupt("header lacks " + missing);

  Header out;
  int64_t sh = json_int(*h.find("sh_degree"), "sh_degree");
  if (sh < 0 || sh > 3) corrupt("invalid SH degree " + std::to_string(sh));
  out.sh_degree = int(sh);
  int64_t depth = json_int(*h.find("depth"), "depth");
  if (depth < 1 || depth > 21) corrupt("invalid depth " + std::to_string(depth));
  out.depth = int(depth);
  out.grid = grid_from_header(h, out.depth);
  out.num_points = json_int(*h.find("num_points"), "num_points");
  const Json* gain = h.find("gain_level");
  if (gain && !gain->is_null()) {
    out.has_gain = true;
    out.gain_level = json_int(*gain, "gain_level");
  }
  return out;
}

// The rest of the header of a "ralhe" file, read where _decode reads it (after the geometry).
void read_attribute_header(const Json& h, Header& out) {
  out.arch = architecture_from_header(h);
  out.table_config = table_config_from_header(h);
  const Json& sizes = *h.find("level_sizes");
  if (sizes.type != Json::Type::kArray) corrupt("invalid level_sizes: not a list");
  for (size_t i = 0; i < sizes.items.size(); ++i) out.level_sizes.push_back(json_int(sizes.items[i], "level_sizes"));
  const int k = (out.sh_degree + 1) * (out.sh_degree + 1);
  const Json& mean = *h.find("signal_mean");
  if (mean.type != Json::Type::kArray || mean.items.size() != size_t(k + 1))
    corrupt("invalid signal_mean: expected " + std::to_string(k + 1) + " rows of 3 values");
  for (const Json& row : mean.items) {
    std::vector<double> v = json_doubles(row, "signal_mean", 3, true);
    out.signal_mean.insert(out.signal_mean.end(), v.begin(), v.end());
  }
  out.signal_std = json_doubles(*h.find("signal_std"), "signal_std", size_t(k + 1), true);
  out.decoder_shift = json_int(*h.find("decoder_shift"), "decoder_shift");
}

// synthesis.plane_sizes: C * L level planes (pyramid) or C planes of the finest level (raht).
std::vector<int64_t> plane_sizes(const std::vector<int64_t>& level_sizes, const Architecture& arch) {
  std::vector<int64_t> out;
  if (arch.transform != "raht" && arch.transform != "pyramid")
    corrupt("unknown transform '" + arch.transform + "' (choose from raht, pyramid)");
  if (arch.latent_channels < 0 || arch.latent_channels > 1024)
    corrupt("invalid architecture.latent_channels " + std::to_string(arch.latent_channels));
  for (int64_t c = 0; c < arch.latent_channels; ++c) {
    if (arch.transform == "raht") out.push_back(level_sizes.at(0));
    else out.insert(out.end(), level_sizes.begin(), level_sizes.end());
  }
  return out;
}

}  // namespace

PlyModel DecodedModel::ply() const {
  PlyModel m;
  m.n = n;
  m.num_sh = num_sh;
  m.means = means.data();
  m.log_scales = log_scales.data();
  m.quats = quats.data();
  m.opacity_logits = opacity_logits.data();
  m.sh = sh.data();
  return m;
}

DecodedModel decode(Bytes data) {
  auto t0 = Clock::now();
  Container c = unpack(data);
  double unpack_s = since(t0);
  DecodedModel m = decode(c);
  m.seconds.insert(m.seconds.begin(), {"container", unpack_s});
  return m;
}

DecodedModel decode(const Container& container) {
  const Json& h = container.header;
  Header header = checked_header(h);
  DecodedModel m;
  m.sh_degree = header.sh_degree;
  m.num_sh = (header.sh_degree + 1) * (header.sh_degree + 1);

  // A baseline coder's attributes: this decoder does not read them (the Python one does).
  const std::string kind = attribute_codec(h);
  if (kind != "ralhe") {
    if (kind == "raht" || kind == "scalar")
      fail(ErrorKind::kUnsupported, "the attributes of this file were written by the '" + kind +
                                        "' baseline coder, which the native decoder does not read; decode it with "
                                        "`ralhe decode` (Python)");
    corrupt("unknown attribute codec '" + kind + "'");
  }

  auto t0 = Clock::now();
  DecodedPositions pos = decode_positions(container.section("positions"), header.depth);
  const int64_t n = pos.num_points;
  if (n != header.num_points)
    corrupt("positions hold " + std::to_string(n) + " points, the header says " + std::to_string(header.num_points));
  m.n = n;
  m.seconds.emplace_back("positions", since(t0));

  t0 = Clock::now();
  std::vector<double> gain;  // [n] per-point gains of the gain map, empty without one
  if (header.has_gain) {
    if (header.gain_level < 0 || header.gain_level > header.depth)
      corrupt("invalid gain level " + std::to_string(header.gain_level));
    gain = decode_point_gains(container.section("gains"), pos.codes.data(), n, int(header.gain_level));
  }
  m.seconds.emplace_back("gains", since(t0));

  t0 = Clock::now();
  decode_shapes(container.section("covariance"), gain.empty() ? nullptr : gain.data(), n, m.log_scales, m.quats);
  if (int64_t(m.log_scales.size()) != 3 * n || int64_t(m.quats.size()) != 4 * n)
    corrupt("covariance holds " + std::to_string(m.log_scales.size() / 3) + " entries, the header says " +
            std::to_string(n));
  m.seconds.emplace_back("covariance", since(t0));

  t0 = Clock::now();
  const Json* levels_json = require(h, "architecture", "architecture").find("num_levels");
  if (!levels_json) corrupt("header lacks architecture.num_levels");
  const int64_t num_levels = json_int(*levels_json, "architecture.num_levels");
  if (num_levels < 1 || num_levels > header.depth + 1)
    corrupt("invalid architecture.num_levels " + std::to_string(num_levels) + " (depth " +
            std::to_string(header.depth) + ")");
  OctreeLevels levels = build_octree_levels(pos.codes.data(), n, int(num_levels), header.depth);
  read_attribute_header(h, header);
  const Architecture& arch = header.arch;
  std::vector<int64_t> planes = plane_sizes(levels.sizes, arch);
  if (planes != header.level_sizes) corrupt("latent plane sizes differ from the header");
  decltype(pos.codes)().swap(pos.codes);  // the peak memory is at the synthesis: free what it does not read
  if (arch.transform == "raht") std::vector<std::vector<int32_t>>().swap(levels.point_to_voxel);
  const int num_sh = m.num_sh;
  // An architecture this decoder does not support (decoder widths above kMaxDecoderWidth) is
  // reported after the weights are read: a corrupt section is a CorruptDataError, as in Python.
  std::string unsupported;
  try {
    check_architecture(arch);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kUnsupported) throw;
    unsupported = e.what();
  }
  std::vector<int64_t> counts;
  for (const auto& shape : decoder_weight_shapes(arch, num_sh)) {
    int64_t count = 1;  // saturating: absurd shapes then fail as a section too short for them
    for (int64_t d : shape) count = d != 0 && count > INT64_MAX / d ? INT64_MAX : count * d;
    counts.push_back(count);
  }
  std::vector<std::vector<int64_t>> ints = decode_int_tensors(container.section("decoders"), counts);
  if (!unsupported.empty()) fail(ErrorKind::kUnsupported, unsupported);
  SynthesisWeights weights = dequantize_weights(arch, num_sh, ints, header.decoder_shift);
  std::vector<std::vector<int64_t>>().swap(ints);
  const std::string latent_coder = string_or(h, "latent_coder", "arm");
  RahtPlan plan;  // static latents: their contexts come from it, and the synthesis reuses it
  LatentPlanes latents;
  if (latent_coder == "static") {
    if (arch.transform != "raht")
      corrupt("static latents need the raht transform, the header has '" + arch.transform + "'");
    if (container.section("arms").size) corrupt("a file with static latents has a non-empty arms section");
    plan = raht_plan(pos.coords.data(), n, header.depth);
    latents = decode_static_latents(container.section("latents"), int(planes.size()), num_sh + 1,
                                    coefficient_levels(plan, header.depth));
  } else if (latent_coder == "arm") {
    QuantizedArm arms = parse_arm(container.section("arms"));
    if (arms.num_attributes() != num_sh + 1)
      corrupt(std::to_string(arms.num_attributes()) + " ARMs for " + std::to_string(num_sh + 1) + " attributes");
    latents =
        decode_latents(container.section("latents"), planes, num_sh + 1, arms, arch.segment_length, header.table_config);
  } else {
    corrupt("unknown latent coder '" + latent_coder + "' (choose from arm, static)");
  }
  m.seconds.emplace_back("latents", since(t0));

  t0 = Clock::now();
  std::vector<const int32_t*> point_to_voxel;
  for (const auto& p2v : levels.point_to_voxel) point_to_voxel.push_back(p2v.data());
  m.sh.resize(size_t(n) * size_t(num_sh) * 3);
  m.opacity_logits.resize(size_t(n));
  // the SH come out denormalized; the opacities are denormalized in place below
  ShDenormalization denorm;
  denorm.mean = header.signal_mean.data();
  denorm.std = header.signal_std.data();
  denorm.gain = gain.empty() ? nullptr : gain.data();
  std::vector<PlaneView> latent_views;
  for (const auto& p : latents) latent_views.push_back(PlaneView{p.data(), int64_t(p.size())});
  synthesize(arch, num_sh, weights, n, pos.coords.data(), header.depth, pos.neighbours.data(), point_to_voxel,
             latent_views, m.sh.data(), m.opacity_logits.data(), &denorm, plan.num_points() ? &plan : nullptr);
  plan = RahtPlan();
  LatentPlanes().swap(latents);
  decltype(pos.neighbours)().swap(pos.neighbours);
  constexpr int64_t kChunk = 8192;  // points per call (see RALHE_NOINLINE in common.h)
  for (int64_t b = 0; b < n; b += kChunk) {
    const int64_t c = std::min(kChunk, n - b);
    float* logits = m.opacity_logits.data() + b;
    denormalize_opacity_logits(logits, c, num_sh, header.signal_mean.data(), header.signal_std.data(), logits);
  }
  m.means.resize(size_t(n) * 3);
  voxel_centers(header.grid, pos.coords.data(), n, m.means.data());
  m.seconds.emplace_back("attributes", since(t0));
  return m;
}

}  // namespace ralhe
