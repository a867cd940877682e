// CPU tile rasterizer for RALHE-ME: binning, front-to-back compositing and its backward.
//
// Projection and shading happen in PyTorch (or, for geometry without gradients, in project.cpp);
// this file only turns screen-space Gaussians
// (means2d, conics, colors, opacities, depth order, tile rectangles) into an image, and
// gradients of the image back into those inputs. Tiles are independent, so OpenMP runs
// over tiles; the backward writes one gradient row per (tile, Gaussian) pair and then
// reduces them in a fixed order, so results do not depend on the thread count.
//
// Conventions (INRIA 3DGS): pixel (i, j) is centered at (i, j) in means2d coordinates;
// power = -0.5 d^T Sigma^-1 d is skipped when > 0; alpha = min(0.99, o exp(power)) is skipped
// below 1/255; a pixel stops before the Gaussian that would bring T below 1e-4.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int kTile = 16;
constexpr int kTilePixels = kTile * kTile;

template <typename T>
struct Consts {
  static constexpr T alpha_min = T(1) / T(255);
  static constexpr T alpha_max = T(0.99);
  static constexpr T t_min = T(0.0001);
};

int num_threads() { return std::max(1, at::get_num_threads()); }

void check_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Per tile, the Gaussians touching it in depth order: point_list[ranges[t] .. ranges[t + 1]).
// `order` is the depth order of all Gaussians (ties by index), computed by the caller. The
// depth-ordered list is cut into one contiguous part per thread; per-part counts give each part
// its own write offsets inside every tile, so the result is the same for any thread count.
void bin(const int32_t* rects, const int64_t* order, int64_t m, int gx, int num_tiles,
         std::vector<int32_t>& point_list, std::vector<int64_t>& ranges) {
  const int parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), m / 4096 + 1));
  const int64_t per_part = (m + parts - 1) / parts;
  std::vector<int64_t> offsets(size_t(parts) * num_tiles, 0);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int part = 0; part < parts; ++part) {
    int64_t* count = offsets.data() + size_t(part) * num_tiles;
    for (int64_t i = part * per_part; i < std::min(m, (part + 1) * per_part); ++i) {
      const int32_t* r = rects + 4 * order[i];
      for (int ty = r[1]; ty < r[3]; ++ty)
        for (int tx = r[0]; tx < r[2]; ++tx) count[ty * gx + tx]++;
    }
  }
  ranges.assign(num_tiles + 1, 0);
  int64_t running = 0;
  for (int t = 0; t < num_tiles; ++t) {
    for (int part = 0; part < parts; ++part) {
      int64_t& slot = offsets[size_t(part) * num_tiles + t];
      const int64_t c = slot;
      slot = running;  // from now on: where this part writes next in tile t
      running += c;
    }
    ranges[t + 1] = running;
  }
  point_list.resize(running);
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int part = 0; part < parts; ++part) {
    int64_t* cursor = offsets.data() + size_t(part) * num_tiles;
    for (int64_t i = part * per_part; i < std::min(m, (part + 1) * per_part); ++i) {
      const int64_t g = order[i];
      const int32_t* r = rects + 4 * g;
      for (int ty = r[1]; ty < r[3]; ++ty)
        for (int tx = r[0]; tx < r[2]; ++tx) point_list[cursor[ty * gx + tx]++] = static_cast<int32_t>(g);
    }
  }
}

// A tile's Gaussians gathered into contiguous arrays (structure of arrays), with the
// half-extents of the ellipse outside which alpha < 1/255 for sure.
template <typename T>
struct TileData {
  std::vector<T> mx, my, ca, cb, cc, op, log_thr, ex, ey, r, g, b;
  void load(const int32_t* ids, int64_t n, const T* means2d, const T* conics, const T* colors, const T* opac) {
    for (auto* v : {&mx, &my, &ca, &cb, &cc, &op, &log_thr, &ex, &ey, &r, &g, &b}) v->resize(n);
    for (int64_t k = 0; k < n; ++k) {
      const int64_t i = ids[k];
      mx[k] = means2d[2 * i];
      my[k] = means2d[2 * i + 1];
      ca[k] = conics[3 * i];
      cb[k] = conics[3 * i + 1];
      cc[k] = conics[3 * i + 2];
      op[k] = opac[i];
      r[k] = colors[3 * i];
      g[k] = colors[3 * i + 1];
      b[k] = colors[3 * i + 2];
      // alpha >= 1/255 needs power >= log(1 / (255 o)); the margin keeps this pre-test (and the
      // box below) conservative, so the exact alpha test in the loop alone decides.
      log_thr[k] = op[k] > T(0) ? std::log(Consts<T>::alpha_min / op[k]) - T(0.01) : T(1);
      const T q = T(-2) * log_thr[k];  // d^T conic d <= q inside the ellipse
      const T det = ca[k] * cc[k] - cb[k] * cb[k];
      if (q <= T(0) || !(det > T(0))) {
        ex[k] = ey[k] = T(-1);  // never visible
      } else {
        ex[k] = std::sqrt(q * cc[k] / det) + T(1e-3);
        ey[k] = std::sqrt(q * ca[k] / det) + T(1e-3);
      }
    }
  }
};

// Pixel range [lo, hi] of a tile covered by [center - extent, center + extent]; empty if lo > hi.
template <typename T>
inline void span(T center, T extent, int tile_lo, int tile_hi, int& lo, int& hi) {
  const T l = std::ceil(center - extent), h = std::floor(center + extent);
  if (!(l <= T(tile_hi) && h >= T(tile_lo))) {  // disjoint (or NaN)
    lo = 1;
    hi = 0;
    return;
  }
  lo = l > T(tile_lo) ? int(l) : tile_lo;
  hi = h < T(tile_hi) ? int(h) : tile_hi;
}

// Pixels [lo, hi] of row offset dy (within [xa, xb]) inside the ellipse d^T conic d <= q of
// Gaussian k, q = -2 log_thr: the roots of a dx^2 + 2 b dy dx + c dy^2 - q, widened slightly.
template <typename T>
inline void row_span(const TileData<T>& d, int64_t k, T dy, int xa, int xb, int& lo, int& hi) {
  const T a = d.ca[k], b = d.cb[k], q = T(-2) * d.log_thr[k];
  const T disc = (b * b - a * d.cc[k]) * dy * dy + a * q;
  if (!(disc >= T(0))) {
    lo = 1;
    hi = 0;
    return;
  }
  const T half = std::sqrt(disc) / a + T(1e-3), mid = d.mx[k] + b * dy / a;  // x = mx - dx
  span(mid, half, xa, xb, lo, hi);
}

template <typename T>
void forward_impl(const T* means2d, const T* conics, const T* colors, const T* opac, const int32_t* point_list,
                  const int64_t* ranges, int width, int height, T* out, T* t_final, int32_t* n_contrib) {
  const int gx = (width + kTile - 1) / kTile, gy = (height + kTile - 1) / kTile;
  const int num_tiles = gx * gy;
#pragma omp parallel num_threads(num_threads())
  {
    TileData<T> d;
    T trans[kTilePixels], cr[kTilePixels], cg[kTilePixels], cb[kTilePixels];
    int32_t last[kTilePixels];
    bool done[kTilePixels];
#pragma omp for schedule(dynamic, 1)
    for (int tile = 0; tile < num_tiles; ++tile) {
      const int64_t start = ranges[tile], n = ranges[tile + 1] - start;
      const int x0 = (tile % gx) * kTile, y0 = (tile / gx) * kTile;
      const int x1 = std::min(x0 + kTile, width) - 1, y1 = std::min(y0 + kTile, height) - 1;
      for (int p = 0; p < kTilePixels; ++p) {
        trans[p] = T(1);
        cr[p] = cg[p] = cb[p] = T(0);
        last[p] = 0;
        done[p] = false;
      }
      int remaining = (x1 - x0 + 1) * (y1 - y0 + 1);
      d.load(point_list + start, n, means2d, conics, colors, opac);
      // Gaussian-major: each pixel still sees the list front to back, but a Gaussian only
      // visits the pixels of its ellipse box.
      for (int64_t k = 0; k < n && remaining > 0; ++k) {
        if (d.ex[k] < T(0)) continue;
        int xa, xb, ya, yb;
        span(d.mx[k], d.ex[k], x0, x1, xa, xb);
        span(d.my[k], d.ey[k], y0, y1, ya, yb);
        const T a = d.ca[k], bb = d.cb[k], c = d.cc[k], o = d.op[k], thr = d.log_thr[k];
        for (int y = ya; y <= yb; ++y) {
          const T dy = d.my[k] - T(y);
          int ra, rb;
          row_span(d, k, dy, xa, xb, ra, rb);
          int p = (y - y0) * kTile + (ra - x0);
          for (int x = ra; x <= rb; ++x, ++p) {
            if (done[p]) continue;
            const T dx = d.mx[k] - T(x);
            const T power = T(-0.5) * (a * dx * dx + c * dy * dy) - bb * dx * dy;
            if (power > T(0) || power < thr) continue;
            const T alpha = std::min(Consts<T>::alpha_max, o * std::exp(power));
            if (alpha < Consts<T>::alpha_min) continue;
            const T test_t = trans[p] * (T(1) - alpha);
            if (test_t < Consts<T>::t_min) {
              done[p] = true;
              --remaining;
              continue;
            }
            const T w = alpha * trans[p];
            cr[p] += w * d.r[k];
            cg[p] += w * d.g[k];
            cb[p] += w * d.b[k];
            trans[p] = test_t;
            last[p] = int32_t(k + 1);
          }
        }
      }
      for (int y = y0; y <= y1; ++y) {
        for (int x = x0; x <= x1; ++x) {
          const int p = (y - y0) * kTile + (x - x0);
          const int64_t q = int64_t(y) * width + x;
          out[3 * q] = cr[p];
          out[3 * q + 1] = cg[p];
          out[3 * q + 2] = cb[p];
          t_final[q] = trans[p];
          n_contrib[q] = last[p];
        }
      }
    }
  }
}

// Gradient row per (tile, Gaussian) pair: mean x, y; conic a, b, c; color r, g, b; opacity.
constexpr int kGradWidth = 9;

template <typename T>
void backward_impl(const T* means2d, const T* conics, const T* colors, const T* opac, const int32_t* point_list,
                   const int64_t* ranges, const int32_t* n_contrib, const T* t_final, const T* grad_color,
                   const T* grad_t, int width, int height, T* pair_grad) {
  const int gx = (width + kTile - 1) / kTile, gy = (height + kTile - 1) / kTile;
  const int num_tiles = gx * gy;
#pragma omp parallel num_threads(num_threads())
  {
    TileData<T> d;
    // per pixel: transmittance before the current Gaussian, dL/dC, the tail term dL/dT_final * T_final,
    // and `after` = sum over later contributors j of w_j (c_j . dL/dC)
    T trans[kTilePixels], gr[kTilePixels], gg[kTilePixels], gb[kTilePixels], tail[kTilePixels],
        after[kTilePixels];
    int32_t ncon[kTilePixels];
#pragma omp for schedule(dynamic, 1)
    for (int tile = 0; tile < num_tiles; ++tile) {
      const int64_t start = ranges[tile], n = ranges[tile + 1] - start;
      if (n == 0) continue;
      const int x0 = (tile % gx) * kTile, y0 = (tile / gx) * kTile;
      const int x1 = std::min(x0 + kTile, width) - 1, y1 = std::min(y0 + kTile, height) - 1;
      int32_t max_con = 0;
      for (int p = 0; p < kTilePixels; ++p) ncon[p] = 0;
      for (int y = y0; y <= y1; ++y) {
        for (int x = x0; x <= x1; ++x) {
          const int p = (y - y0) * kTile + (x - x0);
          const int64_t q = int64_t(y) * width + x;
          trans[p] = t_final[q];
          gr[p] = grad_color[3 * q];
          gg[p] = grad_color[3 * q + 1];
          gb[p] = grad_color[3 * q + 2];
          tail[p] = grad_t[q] * t_final[q];
          after[p] = T(0);
          ncon[p] = n_contrib[q];
          max_con = std::max(max_con, ncon[p]);
        }
      }
      d.load(point_list + start, std::min<int64_t>(n, max_con), means2d, conics, colors, opac);
      // back to front over the list (the INRIA recurrence): T before k = T after k / (1 - alpha_k)
      for (int64_t k = std::min<int64_t>(n, max_con) - 1; k >= 0; --k) {
        if (d.ex[k] < T(0)) continue;
        int xa, xb, ya, yb;
        span(d.mx[k], d.ex[k], x0, x1, xa, xb);
        span(d.my[k], d.ey[k], y0, y1, ya, yb);
        const T a = d.ca[k], bb = d.cb[k], c = d.cc[k], o = d.op[k], thr = d.log_thr[k];
        const T cr = d.r[k], cg = d.g[k], cb = d.b[k];
        T g_mx = 0, g_my = 0, g_a = 0, g_b = 0, g_c = 0, g_r = 0, g_g = 0, g_bl = 0, g_o = 0;
        for (int y = ya; y <= yb; ++y) {
          const T dy = d.my[k] - T(y);
          int ra, rb;
          row_span(d, k, dy, xa, xb, ra, rb);
          int p = (y - y0) * kTile + (ra - x0);
          for (int x = ra; x <= rb; ++x, ++p) {
            if (k >= ncon[p]) continue;
            const T dx = d.mx[k] - T(x);
            const T power = T(-0.5) * (a * dx * dx + c * dy * dy) - bb * dx * dy;
            if (power > T(0) || power < thr) continue;
            const T gauss = std::exp(power);
            const T raw = o * gauss;
            const T alpha = std::min(Consts<T>::alpha_max, raw);
            if (alpha < Consts<T>::alpha_min) continue;
            const T one_minus = T(1) - alpha;
            const T t_before = trans[p] / one_minus;
            trans[p] = t_before;
            const T w = alpha * t_before;
            const T cdot = cr * gr[p] + cg * gg[p] + cb * gb[p];
            g_r += w * gr[p];
            g_g += w * gg[p];
            g_bl += w * gb[p];
            const T d_alpha = t_before * cdot - (after[p] + tail[p]) / one_minus;
            after[p] += w * cdot;
            if (!(raw < Consts<T>::alpha_max)) continue;  // alpha = 0.99 depends on neither o nor the conic
            g_o += d_alpha * gauss;
            const T d_power = d_alpha * raw;
            const T dxp = dx * d_power, dyp = dy * d_power;
            g_mx -= a * dxp + bb * dyp;
            g_my -= c * dyp + bb * dxp;
            g_a -= T(0.5) * dx * dxp;
            g_b -= dx * dyp;
            g_c -= T(0.5) * dy * dyp;
          }
        }
        T* row = pair_grad + (start + k) * kGradWidth;  // this tile's rows, touched by this thread only
        row[0] = g_mx;
        row[1] = g_my;
        row[2] = g_a;
        row[3] = g_b;
        row[4] = g_c;
        row[5] = g_r;
        row[6] = g_g;
        row[7] = g_bl;
        row[8] = g_o;
      }
    }
  }
}

std::vector<torch::Tensor> rasterize_forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                             torch::Tensor opacities, torch::Tensor order, torch::Tensor rects,
                                             int64_t width, int64_t height) {
  for (auto& [t, name] : std::vector<std::pair<torch::Tensor*, const char*>>{
           {&means2d, "means2d"}, {&conics, "conics"}, {&colors, "colors"}, {&opacities, "opacities"},
           {&order, "order"}, {&rects, "rects"}})
    check_cpu(*t, name);
  TORCH_CHECK(rects.scalar_type() == torch::kInt32, "rects must be int32");
  TORCH_CHECK(order.scalar_type() == torch::kInt64, "order must be int64");
  TORCH_CHECK(width > 0 && height > 0, "image size must be positive");
  const int64_t m = means2d.size(0);
  TORCH_CHECK(conics.size(0) == m && colors.size(0) == m && opacities.size(0) == m && rects.size(0) == m &&
                  order.size(0) == m,
              "inputs disagree on the number of Gaussians");
  const int gx = (width + kTile - 1) / kTile, gy = (height + kTile - 1) / kTile;
  std::vector<int32_t> plist;
  std::vector<int64_t> ranges;
  bin(rects.data_ptr<int32_t>(), order.data_ptr<int64_t>(), m, gx, gx * gy, plist, ranges);
  auto point_list = torch::from_blob(plist.data(), {int64_t(plist.size())}, torch::kInt32).clone();
  auto tile_ranges = torch::from_blob(ranges.data(), {int64_t(ranges.size())}, torch::kInt64).clone();
  auto opts = means2d.options();
  auto out = torch::empty({height, width, 3}, opts);
  auto t_final = torch::empty({height, width}, opts);
  auto n_contrib = torch::empty({height, width}, torch::kInt32);
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_forward", [&] {
    forward_impl<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>(),
                           opacities.data_ptr<scalar_t>(), point_list.data_ptr<int32_t>(),
                           tile_ranges.data_ptr<int64_t>(), int(width), int(height), out.data_ptr<scalar_t>(),
                           t_final.data_ptr<scalar_t>(), n_contrib.data_ptr<int32_t>());
  });
  return {out, t_final, n_contrib, point_list, tile_ranges};
}

std::vector<torch::Tensor> rasterize_backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                              torch::Tensor opacities, torch::Tensor point_list,
                                              torch::Tensor tile_ranges, torch::Tensor n_contrib,
                                              torch::Tensor t_final, torch::Tensor grad_color, torch::Tensor grad_t,
                                              int64_t width, int64_t height) {
  for (auto& [t, name] : std::vector<std::pair<torch::Tensor*, const char*>>{
           {&means2d, "means2d"}, {&conics, "conics"}, {&colors, "colors"}, {&opacities, "opacities"},
           {&point_list, "point_list"}, {&tile_ranges, "tile_ranges"}, {&n_contrib, "n_contrib"},
           {&t_final, "t_final"}, {&grad_color, "grad_color"}, {&grad_t, "grad_t"}})
    check_cpu(*t, name);
  const int64_t m = means2d.size(0), pairs = point_list.size(0);
  auto opts = means2d.options();
  auto pair_grad = torch::zeros({pairs, kGradWidth}, opts);
  auto grad = torch::zeros({m, kGradWidth}, opts);
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_backward", [&] {
    backward_impl<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>(),
                            opacities.data_ptr<scalar_t>(), point_list.data_ptr<int32_t>(),
                            tile_ranges.data_ptr<int64_t>(), n_contrib.data_ptr<int32_t>(),
                            t_final.data_ptr<scalar_t>(), grad_color.data_ptr<scalar_t>(),
                            grad_t.data_ptr<scalar_t>(), int(width), int(height), pair_grad.data_ptr<scalar_t>());
    // fixed-order reduction of the pair rows into per-Gaussian rows
    const int32_t* ids = point_list.data_ptr<int32_t>();
    const scalar_t* src = pair_grad.data_ptr<scalar_t>();
    scalar_t* dst = grad.data_ptr<scalar_t>();
    for (int64_t i = 0; i < pairs; ++i) {
      scalar_t* row = dst + int64_t(ids[i]) * kGradWidth;
      const scalar_t* s = src + i * kGradWidth;
      for (int j = 0; j < kGradWidth; ++j) row[j] += s[j];
    }
  });
  return {grad.slice(1, 0, 2), grad.slice(1, 2, 5), grad.slice(1, 5, 8), grad.select(1, 8)};
}

}  // namespace

namespace ralhe_render {  // project.cpp
std::vector<torch::Tensor> project_geometry(const torch::Tensor& means, const torch::Tensor& quats,
                                            const torch::Tensor& log_scales, const torch::Tensor& rot,
                                            const torch::Tensor& trans, double fx, double fy, double cx, double cy,
                                            double limx, double limy, int64_t width, int64_t height);
torch::Tensor view_sh_basis(const torch::Tensor& means, const c10::optional<torch::Tensor>& index,
                            const torch::Tensor& center, int64_t degree);
torch::Tensor depth_order(const torch::Tensor& depths);
torch::Tensor shade_forward(const torch::Tensor& basis, const torch::Tensor& sh,
                            const c10::optional<torch::Tensor>& index);
torch::Tensor shade_backward(const torch::Tensor& basis, const torch::Tensor& colors, const torch::Tensor& grad,
                             const c10::optional<torch::Tensor>& index, const torch::Tensor& grad_sh);
}  // namespace ralhe_render

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.attr("API_VERSION") = 2;  // extension.py's: bump both when an interface changes
  module.doc() = "RALHE-ME CPU renderer: tile compositing (forward and backward), fixed-geometry projection";
  module.def("rasterize_forward", &rasterize_forward,
             "(means2d, conics, colors, opacities, depth order, rects int32, width, height) -> "
             "(color [H,W,3], T_final [H,W], n_contrib [H,W], point_list [P], tile_ranges [T+1])");
  module.def("rasterize_backward", &rasterize_backward,
             "(means2d, conics, colors, opacities, point_list, tile_ranges, n_contrib, T_final, dL/dcolor, "
             "dL/dT_final, width, height) -> (d means2d, d conics, d colors, d opacities)");
  module.def("project_geometry", &ralhe_render::project_geometry,
             "(means, quats, log_scales, rot [3,3], trans [3], fx, fy, cx, cy, lim_x, lim_y, width, height) -> "
             "(index [M], means2d [M,2], conics [M,3], depths [M], radii int64 [M], rects int32 [M,4]) of the "
             "Gaussians kept, in input order (no gradients)");
  module.def("view_sh_basis", &ralhe_render::view_sh_basis,
             "(means [N,3], index [M] or None, camera center [3], degree) -> SH basis [M, (degree+1)^2] of the "
             "unit directions from the center to the (indexed) means");
  module.def("depth_order", &ralhe_render::depth_order,
             "(depths [M]) -> int64 [M]: the stable ascending order (torch.sort(stable=True).indices)");
  module.def("shade_forward", &ralhe_render::shade_forward,
             "(basis [M,K], sh [N,K,3] any strides, index [M] increasing or None) -> colors [M,3] = "
             "max(sum_k basis sh[index] + 0.5, 0)");
  module.def("shade_backward", &ralhe_render::shade_backward,
             "(basis, colors, dL/dcolors [M,3], index or None, out [N,K,3] any dense strides) -> out = dL/dsh "
             "(zero on rows not indexed)");
}
