// Chip programming kernels: the element-wise work of sampling a chip's weights and
// putting them in their prepared form, called from Python through ctypes
// (afmc/runtime/fused/programming.py). The random draws stay numpy's (the chip's
// stream); these functions do the rest in one pass each, with the same float32
// operations in the same order as the numpy code they replace, so the results are
// bit-identical (build with -ffp-contract=off: a fused multiply-add would change the
// last bit).
//
//   afmc_program_pcm:          runtime/noise.py _pcm_block over every scaling block of a
//                              layer.
//   afmc_prepare:              ops/analog_linear_onnx.py prepare_weights.
//   afmc_program_pcm_prepared: both, 32 rows at a time through a small buffer, so the
//                              programmed layer is never held whole.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// A cubic's float32 coefficients, highest power first.
struct Cubic {
  float c0, c1, c2, c3;
  explicit Cubic(const float* c) : c0(c[0]), c1(c[1]), c2(c[2]), c3(c[3]) {}
  // numpy.polyval in float32, Horner's order: out = c0; out = out * x + c_i.
  float operator()(float x) const {
    float out = c0;
    out = out * x;
    out = out + c1;
    out = out * x;
    out = out + c2;
    out = out * x;
    return out + c3;
  }
};

// The pcm model of one layer (PcmArgs) on rows [r0, r1): `w` and `out` point at row
// r0 of row-major [., cols] arrays.
struct PcmArgs {
  const float* noise;  // the layer's N(0, 1) draws, block after block (see below)
  int64_t rows, cols;
  const int64_t* bounds;
  int64_t nblocks;
  Cubic od, td;
  float branch, gmax, scale, threshold;
};

void program_rows(const PcmArgs& a, const float* w, float* out, int64_t r0, int64_t r1) {
  // Locals, not a's members, inside the loops: stores to `out` cannot alias them, so the
  // loops vectorise.
  const Cubic od = a.od, td = a.td;
  const float branch = a.branch, gmax = a.gmax, scale = a.scale, threshold = a.threshold;
  const int64_t cols = a.cols;
  for (int64_t b = 0; b < a.nblocks; ++b) {
    const int64_t start = a.bounds[b], width = a.bounds[b + 1] - a.bounds[b];
    for (int64_t r = r0; r < r1; ++r) {
      const float* wr = w + (r - r0) * cols + start;
      const float* nr = a.noise + a.rows * start + r * width;
      float* yr = out + (r - r0) * cols + start;
      float wmax = 0.0f;
#pragma omp simd reduction(max : wmax)
      for (int64_t j = 0; j < width; ++j) wmax = std::max(wmax, std::fabs(wr[j]));
      const float divisor = wmax > 0.0f ? wmax : 1.0f;
      const float back = wmax / gmax;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) {
        float g = wr[j] / divisor;
        g = g * gmax;
        const float g_abs = std::fabs(g);
        const float low = od(g_abs), high = td(g_abs);  // both, then select: vectorises
        const float sigma = g_abs <= branch ? low : high;
        const float drawn = nr[j] * (sigma * scale);
        g = g + drawn;
        g = g_abs < threshold ? 0.0f : g;
        yr[j] = g * back;
      }
    }
  }
}

// prepare_weights on rows [r0, r1) of a [rows, cols] layer; `w` points at row r0.
void prepare_rows(const float* w, int64_t rows, int64_t cols, int64_t slices, float w_scale,
                  float tiny, float* w_eff, float* w_max, int64_t r0, int64_t r1) {
  const int64_t k = cols / slices;
  for (int64_t s = 0; s < slices; ++s) {
    float* maxima = w_max + s * rows;
    float* effective = w_eff + s * k * rows;
    for (int64_t r = r0; r < r1; ++r) {
      const float* wr = w + (r - r0) * cols + s * k;
      float m = 0.0f;
#pragma omp simd reduction(max : m)
      for (int64_t j = 0; j < k; ++j) m = std::max(m, std::fabs(wr[j]));
      maxima[r] = std::max(m, tiny);
    }
    for (int64_t j = 0; j < k; ++j) {
      float* out = effective + j * rows;
      for (int64_t r = r0; r < r1; ++r) {
        const float value = w[(r - r0) * cols + s * k + j] / maxima[r];
        out[r] = value * w_scale;
      }
    }
  }
}

constexpr int64_t kTile = 32;  // rows prepared together: 128-byte runs of each w_eff row

}  // namespace

extern "C" {

// The pcm model on a [rows, cols] layer, into `out` (row-major [rows, cols]). Scaling
// blocks are the column ranges [bounds[b], bounds[b + 1]) for b < nblocks, and `noise`
// holds the layer's N(0, 1) draws as numpy takes them: block after block, each
// [rows, bounds[b + 1] - bounds[b]] row-major. sigma_od and sigma_td are the cubics'
// float32 coefficients, highest power first; branch, gmax, scale and threshold are
// float32 as numpy uses them.
//
// Per row r of block b: wmax = max |w|; g = w / (wmax > 0 ? wmax : 1) * gmax;
// drawn = noise * (sigma(|g|) * scale); g = g + drawn; g = 0 where the target |g| <
// threshold; out = g * (wmax / gmax).
void afmc_program_pcm(const float* w, const float* noise, float* out, int64_t rows,
                      int64_t cols, const int64_t* bounds, int64_t nblocks,
                      const float* sigma_od, const float* sigma_td, float branch, float gmax,
                      float scale, float threshold) {
  const PcmArgs args{noise, rows, cols, bounds, nblocks, Cubic(sigma_od), Cubic(sigma_td),
                     branch, gmax, scale, threshold};
  program_rows(args, w, out, 0, rows);
}

// prepare_weights on a [rows, cols] layer of `slices` equal input slices (k = cols /
// slices): per slice s, w_max[s][r] = max(max_j |w[r][s k + j]|, tiny) and
// w_eff[s][j][r] = (w[r][s k + j] / w_max[s][r]) * w_scale. w_eff is slices x [k, rows]
// and w_max slices x [rows], both contiguous.
void afmc_prepare(const float* w, int64_t rows, int64_t cols, int64_t slices,
                  float w_scale, float tiny, float* w_eff, float* w_max) {
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    prepare_rows(w + r0 * cols, rows, cols, slices, w_scale, tiny, w_eff, w_max, r0,
                 std::min(rows, r0 + kTile));
  }
}

// afmc_prepare of afmc_program_pcm's output, without holding it: each tile of kTile
// rows is programmed into a buffer and prepared from there.
void afmc_program_pcm_prepared(const float* w, const float* noise, int64_t rows,
                               int64_t cols, const int64_t* bounds, int64_t nblocks,
                               const float* sigma_od, const float* sigma_td, float branch,
                               float gmax, float scale, float threshold, int64_t slices,
                               float w_scale, float tiny, float* w_eff, float* w_max) {
  const PcmArgs args{noise, rows, cols, bounds, nblocks, Cubic(sigma_od), Cubic(sigma_td),
                     branch, gmax, scale, threshold};
  std::vector<float> tile(static_cast<size_t>(kTile * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = std::min(rows, r0 + kTile);
    program_rows(args, w + r0 * cols, tile.data(), r0, r1);
    prepare_rows(tile.data(), rows, cols, slices, w_scale, tiny, w_eff, w_max, r0, r1);
  }
}

}  // extern "C"
