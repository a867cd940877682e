// Projection of Gaussians whose geometry needs no gradient, the SH basis of their view
// directions and their colors (forward and backward), and the stable depth order the
// compositing walks.
//
// Why: the encoder renders the same fixed geometry hundreds of times (the refinement's targets
// and steps, the weight step's and the branch pruning's choices, the finetuning's targets), and
// in torch the per-entry elementwise projection (SH basis and colors included) and the depth sort
// took 0.37 and 0.15 s of a 0.89 s render of 1M Gaussians. Geometry that needs a gradient (the finetuning's
// codewords, fitting) stays in torch (projection.py), which is also the reference these follow:
// the same formulas in the same order of operations in the input's precision, so results agree
// with torch up to its matmul's and exp's last-bit rounding.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace ralhe_render {

namespace {

constexpr int kTile = 16;

void check_points(const torch::Tensor& t, int64_t n, int64_t cols, const char* name, c10::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == cols, name, " must have shape [", n, ", ", cols,
              "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have the dtype of means");
}

// Everything one Gaussian contributes, before culling.
template <typename T>
struct Projection {
  T u, v, a, b, c, det, z;
  int64_t radius;
  int32_t rect[4];
  bool keep;
};

template <typename T>
struct View {
  T r[3][3], t[3];
  T fx, fy, cx, cy, limx, limy;
  int gx, gy;
};

// projection.py's project_gaussians for one Gaussian, operation for operation.
template <typename T>
inline void project_one(const View<T>& w, const T* mean, const T* quat, const T* log_scale, Projection<T>& out) {
  T p[3];
  for (int i = 0; i < 3; ++i) p[i] = mean[0] * w.r[i][0] + mean[1] * w.r[i][1] + mean[2] * w.r[i][2] + w.t[i];
  const T x = p[0], y = p[1];
  const bool in_front = p[2] > T(0.2);
  const T z = in_front ? p[2] : T(1);

  const T norm = std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
  const T qw = quat[0] / norm, qx = quat[1] / norm, qy = quat[2] / norm, qz = quat[3] / norm;
  const T sx = std::exp(log_scale[0]), sy = std::exp(log_scale[1]), sz = std::exp(log_scale[2]);
  const T m[3][3] = {
      {(T(1) - T(2) * (qy * qy + qz * qz)) * sx, T(2) * (qx * qy - qw * qz) * sy, T(2) * (qx * qz + qw * qy) * sz},
      {T(2) * (qx * qy + qw * qz) * sx, (T(1) - T(2) * (qx * qx + qz * qz)) * sy, T(2) * (qy * qz - qw * qx) * sz},
      {T(2) * (qx * qz - qw * qy) * sx, T(2) * (qy * qz + qw * qx) * sy, (T(1) - T(2) * (qx * qx + qy * qy)) * sz}};
  auto sig = [&](int i, int j) { return m[i][0] * m[j][0] + m[i][1] * m[j][1] + m[i][2] * m[j][2]; };
  const T s00 = sig(0, 0), s01 = sig(0, 1), s02 = sig(0, 2), s11 = sig(1, 1), s12 = sig(1, 2), s22 = sig(2, 2);

  const T inv_z = T(1) / z;
  const T jx = -w.fx * std::min(std::max(x * inv_z, -w.limx), w.limx) * inv_z;
  const T jy = -w.fy * std::min(std::max(y * inv_z, -w.limy), w.limy) * inv_z;
  T ta[3], tb[3];
  for (int k = 0; k < 3; ++k) {
    ta[k] = w.fx * inv_z * w.r[0][k] + jx * w.r[2][k];
    tb[k] = w.fy * inv_z * w.r[1][k] + jy * w.r[2][k];
  }
  const T sa[3] = {s00 * ta[0] + s01 * ta[1] + s02 * ta[2], s01 * ta[0] + s11 * ta[1] + s12 * ta[2],
                   s02 * ta[0] + s12 * ta[1] + s22 * ta[2]};
  const T sb[3] = {s00 * tb[0] + s01 * tb[1] + s02 * tb[2], s01 * tb[0] + s11 * tb[1] + s12 * tb[2],
                   s02 * tb[0] + s12 * tb[1] + s22 * tb[2]};
  out.a = ta[0] * sa[0] + ta[1] * sa[1] + ta[2] * sa[2] + T(0.3);
  out.b = ta[0] * sb[0] + ta[1] * sb[1] + ta[2] * sb[2];
  out.c = tb[0] * sb[0] + tb[1] * sb[1] + tb[2] * sb[2] + T(0.3);
  out.det = out.a * out.c - out.b * out.b;
  out.u = w.fx * x * inv_z + w.cx - T(0.5);
  out.v = w.fy * y * inv_z + w.cy - T(0.5);
  out.z = z;

  const T mid = T(0.5) * (out.a + out.c);
  const T lam = mid + std::sqrt(std::max(mid * mid - out.det, T(0.1)));
  const T radius = std::ceil(T(3) * std::sqrt(lam));
  // radii are int64 in torch; a NaN or huge radius converts as torch's .to(int64) does on x86
  out.radius = std::isfinite(radius) && std::fabs(radius) < T(9.2e18) ? int64_t(radius)
                                                                       : std::numeric_limits<int64_t>::min();
  const T r = T(out.radius);
  auto clamp_tile = [](T value, int hi) { return std::min(std::max(std::floor(value), T(0)), T(hi)); };
  const T x0 = clamp_tile((out.u - r) / T(kTile), w.gx), x1 = clamp_tile((out.u + r + T(kTile - 1)) / T(kTile), w.gx);
  const T y0 = clamp_tile((out.v - r) / T(kTile), w.gy), y1 = clamp_tile((out.v + r + T(kTile - 1)) / T(kTile), w.gy);
  out.rect[0] = int32_t(x0);
  out.rect[1] = int32_t(y0);
  out.rect[2] = int32_t(x1);
  out.rect[3] = int32_t(y1);
  out.keep = in_front && out.det > T(0) && (x1 - x0) * (y1 - y0) > T(0);
}

// The outputs of a projection for ``rows`` Gaussians, and where to write them.
template <typename T>
struct ProjectedRows {
  torch::Tensor means2d, conics, depths, radii, rects;
  T *m2, *cp, *dp;
  int64_t* rp;
  int32_t* rc;
  ProjectedRows(int64_t rows, const torch::TensorOptions& f)
      : means2d(torch::empty({rows, 2}, f)), conics(torch::empty({rows, 3}, f)), depths(torch::empty({rows}, f)),
        radii(torch::empty({rows}, f.dtype(torch::kInt64))), rects(torch::empty({rows, 4}, f.dtype(torch::kInt32))),
        m2(means2d.data_ptr<T>()), cp(conics.data_ptr<T>()), dp(depths.data_ptr<T>()),
        rp(radii.data_ptr<int64_t>()), rc(rects.data_ptr<int32_t>()) {}
  void set(int64_t i, const Projection<T>& p) {
    m2[2 * i] = p.u;
    m2[2 * i + 1] = p.v;
    cp[3 * i] = p.c / p.det;
    cp[3 * i + 1] = -p.b / p.det;
    cp[3 * i + 2] = p.a / p.det;
    dp[i] = p.z;
    rp[i] = p.radius;
    std::memcpy(rc + 4 * i, p.rect, sizeof(p.rect));
  }
  void copy(int64_t o, const ProjectedRows& from, int64_t i) {
    std::memcpy(m2 + 2 * o, from.m2 + 2 * i, 2 * sizeof(T));
    std::memcpy(cp + 3 * o, from.cp + 3 * i, 3 * sizeof(T));
    dp[o] = from.dp[i];
    rp[o] = from.rp[i];
    std::memcpy(rc + 4 * o, from.rc + 4 * i, 4 * sizeof(int32_t));
  }
  std::vector<torch::Tensor> with_index(const torch::Tensor& index) const {
    return {index, means2d, conics, depths, radii, rects};
  }
};

template <typename T>
std::vector<torch::Tensor> project_typed(const torch::Tensor& means, const torch::Tensor& quats,
                                         const torch::Tensor& log_scales, const torch::Tensor& rot,
                                         const torch::Tensor& trans, double fx, double fy, double cx, double cy,
                                         double limx, double limy, int64_t width, int64_t height) {
  const int64_t n = means.size(0);
  View<T> w;
  const auto rot_a = rot.accessor<T, 2>();
  const auto trans_a = trans.accessor<T, 1>();
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) w.r[i][j] = rot_a[i][j];
    w.t[i] = trans_a[i];
  }
  w.fx = T(fx), w.fy = T(fy), w.cx = T(cx), w.cy = T(cy), w.limx = T(limx), w.limy = T(limy);
  w.gx = int((width + kTile - 1) / kTile);
  w.gy = int((height + kTile - 1) / kTile);
  const T* mp = means.data_ptr<T>();
  const T* qp = quats.data_ptr<T>();
  const T* sp = log_scales.data_ptr<T>();

  // Every Gaussian is projected into full-size outputs, in blocks that count what they keep;
  // when some are culled, each block then copies its kept ones to its offset, in input order
  // (the same output for any thread count).
  constexpr int64_t kBlock = 8192;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<int64_t> kept(blocks + 1, 0);
  std::vector<uint8_t> keep(n);
  const auto f = means.options();
  ProjectedRows<T> all(n, f);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    Projection<T> p;
    for (int64_t b = b0; b < b1; ++b) {
      int64_t count = 0;
      for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) {
        project_one(w, mp + 3 * i, qp + 4 * i, sp + 3 * i, p);
        all.set(i, p);
        keep[i] = p.keep;
        count += p.keep;
      }
      kept[b + 1] = count;
    }
  });
  for (int64_t b = 0; b < blocks; ++b) kept[b + 1] += kept[b];
  const int64_t m = kept[blocks];
  auto index = torch::empty({m}, f.dtype(torch::kInt64));
  int64_t* ip = index.data_ptr<int64_t>();
  if (m == n) {
    at::parallel_for(0, n, 65536, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) ip[i] = i;
    });
    return all.with_index(index);
  }
  ProjectedRows<T> kept_rows(m, f);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t o = kept[b];
      for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) {
        if (!keep[i]) continue;
        ip[o] = i;
        kept_rows.copy(o++, all, i);
      }
    }
  });
  return kept_rows.with_index(index);
}

// sh.py's sh_basis of the unit direction from the camera center to each mean.
template <typename T>
void basis_typed(const T* means, const int64_t* index, int64_t m, const T* center, int degree, T* out) {
  const int k = (degree + 1) * (degree + 1);
  const T c0 = T(0.28209479177387814), c1 = T(0.4886025119029199);
  const T c2[5] = {T(1.0925484305920792), T(-1.0925484305920792), T(0.31539156525252005), T(-1.0925484305920792),
                   T(0.5462742152960396)};
  const T c3[7] = {T(-0.5900435899266435), T(2.890611442640554), T(-0.4570457994644658), T(0.3731763325901154),
                   T(-0.4570457994644658), T(1.445305721320277), T(-0.5900435899266435)};
  at::parallel_for(0, m, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* p = means + 3 * (index ? index[i] : i);
      const T dx = p[0] - center[0], dy = p[1] - center[1], dz = p[2] - center[2];
      const T norm = std::sqrt(dx * dx + dy * dy + dz * dz);
      const T x = dx / norm, y = dy / norm, z = dz / norm;
      T* o = out + int64_t(k) * i;
      o[0] = c0;
      if (degree >= 1) {
        o[1] = -c1 * y;
        o[2] = c1 * z;
        o[3] = -c1 * x;
      }
      if (degree >= 2) {
        const T xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
        o[4] = c2[0] * xy;
        o[5] = c2[1] * yz;
        o[6] = c2[2] * (T(2) * zz - xx - yy);
        o[7] = c2[3] * xz;
        o[8] = c2[4] * (xx - yy);
        if (degree >= 3) {
          o[9] = c3[0] * y * (T(3) * xx - yy);
          o[10] = c3[1] * xy * z;
          o[11] = c3[2] * y * (T(4) * zz - xx - yy);
          o[12] = c3[3] * z * (T(2) * zz - T(3) * xx - T(3) * yy);
          o[13] = c3[4] * x * (T(4) * zz - xx - yy);
          o[14] = c3[5] * z * (xx - yy);
          o[15] = c3[6] * x * (xx - T(3) * yy);
        }
      }
    }
  });
}

// Keys whose unsigned order is the floats' order (-0 counted as +0, as torch.sort does).
inline uint32_t sortable(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (bits == 0x80000000u) bits = 0;
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}
inline uint64_t sortable(double f) {
  uint64_t bits;
  std::memcpy(&bits, &f, 8);
  if (bits == 0x8000000000000000ull) bits = 0;
  return (bits & 0x8000000000000000ull) ? ~bits : bits | 0x8000000000000000ull;
}

// Least-significant-digit radix sort of (key, index) pairs, 11 bits a pass: stable, so ties keep
// the input order, as torch.sort(stable=True) does.
template <typename T, typename K>
torch::Tensor order_typed(const torch::Tensor& depths) {
  const int64_t n = depths.size(0);
  const T* d = depths.data_ptr<T>();
  std::vector<K> keys(n), keys_tmp(n);
  auto order = torch::empty({n}, depths.options().dtype(torch::kInt64));
  std::vector<int64_t> idx_tmp(n);
  int64_t* idx = order.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(!std::isnan(d[i]), "depth_order: depth ", i, " is NaN");
    keys[i] = sortable(d[i]);
    idx[i] = i;
  }
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  constexpr int kPasses = (8 * int(sizeof(K)) + kBits - 1) / kBits;
  K* src_k = keys.data();
  K* dst_k = keys_tmp.data();
  int64_t* src_i = idx;
  int64_t* dst_i = idx_tmp.data();
  std::vector<int64_t> count(kBuckets);
  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = pass * kBits;
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < n; ++i) ++count[(src_k[i] >> shift) & (kBuckets - 1)];
    if (count[(src_k[0] >> shift) & (kBuckets - 1)] == n) continue;  // one digit only: nothing moves
    int64_t running = 0;
    for (auto& c : count) {
      const int64_t here = c;
      c = running;
      running += here;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t slot = count[(src_k[i] >> shift) & (kBuckets - 1)]++;
      dst_k[slot] = src_k[i];
      dst_i[slot] = src_i[i];
    }
    std::swap(src_k, dst_k);
    std::swap(src_i, dst_i);
  }
  if (src_i != idx) std::memcpy(idx, src_i, sizeof(int64_t) * n);
  return order;
}

// Rows of the SH read through their strides: the image-domain refinement hands over a permuted
// view of the decoders' [K, N, 3] output, which a copy to [N, K, 3] would cost 25-66 ms at 483k.
struct ShLayout {
  int64_t row, coeff, channel;
};

template <typename T>
void shade_forward_typed(const T* basis, const T* sh, ShLayout st, const int64_t* index, int64_t m, int k, T* colors) {
  at::parallel_for(0, m, 2048, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* b = basis + int64_t(k) * i;
      const T* row = sh + st.row * (index ? index[i] : i);
      for (int c = 0; c < 3; ++c) {
        T sum = b[0] * row[c * st.channel];
        for (int j = 1; j < k; ++j) sum += b[j] * row[j * st.coeff + c * st.channel];
        const T raw = sum + T(0.5);
        colors[3 * i + c] = raw < T(0) ? T(0) : raw;  // clamp_min(raw, 0), NaN kept
      }
    }
  });
}

template <typename T>
void shade_backward_typed(const T* basis, const T* colors, const T* grad, ShLayout st, const int64_t* index,
                          int64_t m, int k, T* grad_sh) {
  at::parallel_for(0, m, 2048, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* b = basis + int64_t(k) * i;
      T* row = grad_sh + st.row * (index ? index[i] : i);
      for (int c = 0; c < 3; ++c) {
        const T g = colors[3 * i + c] > T(0) ? grad[3 * i + c] : T(0);  // clamp_min's gradient
        for (int j = 0; j < k; ++j) row[j * st.coeff + c * st.channel] = b[j] * g;
      }
    }
  });
}

}  // namespace

std::vector<torch::Tensor> project_geometry(const torch::Tensor& means, const torch::Tensor& quats,
                                            const torch::Tensor& log_scales, const torch::Tensor& rot,
                                            const torch::Tensor& trans, double fx, double fy, double cx, double cy,
                                            double limx, double limy, int64_t width, int64_t height) {
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must have shape [N, 3], got ", means.sizes());
  const int64_t n = means.size(0);
  const auto dtype = means.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64, "means must be float32 or float64");
  check_points(means, n, 3, "means", dtype);
  check_points(quats, n, 4, "quats", dtype);
  check_points(log_scales, n, 3, "log_scales", dtype);
  check_points(rot, 3, 3, "rot", dtype);
  TORCH_CHECK(trans.dim() == 1 && trans.size(0) == 3 && trans.scalar_type() == dtype,
              "trans must have shape [3] and the dtype of means");
  TORCH_CHECK(width > 0 && height > 0, "the image size must be positive");
  const auto m = means.contiguous(), q = quats.contiguous(), s = log_scales.contiguous();
  if (dtype == torch::kFloat64)
    return project_typed<double>(m, q, s, rot, trans, fx, fy, cx, cy, limx, limy, width, height);
  return project_typed<float>(m, q, s, rot, trans, fx, fy, cx, cy, limx, limy, width, height);
}

torch::Tensor view_sh_basis(const torch::Tensor& means, const c10::optional<torch::Tensor>& index,
                            const torch::Tensor& center, int64_t degree) {
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3 && means.device().is_cpu(),
              "means must be a CPU tensor of shape [N, 3], got ", means.sizes());
  const auto dtype = means.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64, "means must be float32 or float64");
  TORCH_CHECK(center.numel() == 3 && center.scalar_type() == dtype, "center must hold 3 values of means' dtype");
  TORCH_CHECK(degree >= 0 && degree <= 3, "SH degree must be 0..3, got ", degree);
  const auto m = means.contiguous();
  const auto c = center.contiguous();
  torch::Tensor idx;
  int64_t rows = m.size(0);
  if (index.has_value()) {
    idx = index->contiguous();
    TORCH_CHECK(idx.scalar_type() == torch::kInt64 && idx.dim() == 1, "index must be int64 [M]");
    rows = idx.size(0);
    const int64_t* ip = idx.data_ptr<int64_t>();
    for (int64_t i = 0; i < rows; ++i)
      TORCH_CHECK(ip[i] >= 0 && ip[i] < m.size(0), "index ", i, " is outside the ", m.size(0), " means");
  }
  const int64_t k = (degree + 1) * (degree + 1);
  auto out = torch::empty({rows, k}, m.options());
  const int64_t* ip = index.has_value() ? idx.data_ptr<int64_t>() : nullptr;
  if (dtype == torch::kFloat64)
    basis_typed<double>(m.data_ptr<double>(), ip, rows, c.data_ptr<double>(), int(degree), out.data_ptr<double>());
  else
    basis_typed<float>(m.data_ptr<float>(), ip, rows, c.data_ptr<float>(), int(degree), out.data_ptr<float>());
  return out;
}

namespace {

// The rows of ``sh`` [N, K, 3] that ``index`` [M] (strictly increasing) names, or all of them.
const int64_t* checked_rows(const c10::optional<torch::Tensor>& index, int64_t n, int64_t m) {
  if (!index.has_value()) {
    TORCH_CHECK(m == n, "without an index the basis needs one row per SH row (", n, "), got ", m);
    return nullptr;
  }
  const auto& idx = *index;
  TORCH_CHECK(idx.scalar_type() == torch::kInt64 && idx.dim() == 1 && idx.size(0) == m && idx.is_contiguous(),
              "index must be contiguous int64 [M] with M the basis' rows (", m, ")");
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < m; ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < n && (i == 0 || ip[i] > ip[i - 1]),
                "index must be strictly increasing rows of the ", n, " SH rows (entry ", i, ")");
  return ip;
}

void check_shade(const torch::Tensor& basis, const torch::Tensor& sh) {
  TORCH_CHECK(basis.device().is_cpu() && sh.device().is_cpu(), "basis and sh must be CPU tensors");
  TORCH_CHECK(sh.dim() == 3 && sh.size(2) == 3, "sh must have shape [N, K, 3], got ", sh.sizes());
  TORCH_CHECK(basis.dim() == 2 && basis.size(1) == sh.size(1) && basis.is_contiguous(),
              "basis must be contiguous [M, K] with the K of sh (", sh.size(1), "), got ", basis.sizes());
  TORCH_CHECK(basis.scalar_type() == sh.scalar_type() &&
                  (sh.scalar_type() == torch::kFloat32 || sh.scalar_type() == torch::kFloat64),
              "basis and sh must both be float32 or both float64");
}

}  // namespace

torch::Tensor shade_forward(const torch::Tensor& basis, const torch::Tensor& sh,
                            const c10::optional<torch::Tensor>& index) {
  check_shade(basis, sh);
  const int64_t m = basis.size(0);
  const int64_t* ip = checked_rows(index, sh.size(0), m);
  const ShLayout st{sh.stride(0), sh.stride(1), sh.stride(2)};
  auto colors = torch::empty({m, 3}, basis.options());
  const int k = int(basis.size(1));
  if (sh.scalar_type() == torch::kFloat64)
    shade_forward_typed<double>(basis.data_ptr<double>(), sh.data_ptr<double>(), st, ip, m, k,
                                colors.data_ptr<double>());
  else
    shade_forward_typed<float>(basis.data_ptr<float>(), sh.data_ptr<float>(), st, ip, m, k, colors.data_ptr<float>());
  return colors;
}

torch::Tensor shade_backward(const torch::Tensor& basis, const torch::Tensor& colors, const torch::Tensor& grad,
                             const c10::optional<torch::Tensor>& index, const torch::Tensor& grad_sh) {
  check_shade(basis, grad_sh);
  const int64_t m = basis.size(0);
  TORCH_CHECK(colors.sizes() == grad.sizes() && colors.dim() == 2 && colors.size(0) == m && colors.size(1) == 3 &&
                  colors.is_contiguous() && grad.is_contiguous() && colors.scalar_type() == basis.scalar_type() &&
                  grad.scalar_type() == basis.scalar_type(),
              "colors and grad must be contiguous [M, 3] of the basis' dtype");
  const int64_t* ip = checked_rows(index, grad_sh.size(0), m);
  const ShLayout st{grad_sh.stride(0), grad_sh.stride(1), grad_sh.stride(2)};
  if (ip != nullptr) grad_sh.zero_();  // rows of culled Gaussians
  const int k = int(basis.size(1));
  if (basis.scalar_type() == torch::kFloat64)
    shade_backward_typed<double>(basis.data_ptr<double>(), colors.data_ptr<double>(), grad.data_ptr<double>(), st,
                                 ip, m, k, grad_sh.data_ptr<double>());
  else
    shade_backward_typed<float>(basis.data_ptr<float>(), colors.data_ptr<float>(), grad.data_ptr<float>(), st, ip, m,
                                k, grad_sh.data_ptr<float>());
  return grad_sh;
}

torch::Tensor depth_order(const torch::Tensor& depths) {
  TORCH_CHECK(depths.dim() == 1 && depths.device().is_cpu(), "depths must be a 1-D CPU tensor, got ",
              depths.sizes());
  const auto d = depths.contiguous();
  if (d.size(0) == 0) return torch::empty({0}, d.options().dtype(torch::kInt64));
  if (d.scalar_type() == torch::kFloat64) return order_typed<double, uint64_t>(d);
  TORCH_CHECK(d.scalar_type() == torch::kFloat32, "depths must be float32 or float64");
  return order_typed<float, uint32_t>(d);
}

}  // namespace ralhe_render
