// The sampling arithmetic of pixelaux/distributions.py (see sampling.h).
#include "sampling.h"

#include <ATen/Version.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PIXELAUX_X86_SOFTMAX 1
#include <immintrin.h>

// The SLEEF functions torch's Vectorized<float>::exp calls (exported by libtorch_cpu);
// weak, so that a torch build without them still loads (libm's expf is used then).
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
extern "C" __m256 Sleef_expf8_u10(__m256) __attribute__((weak));
extern "C" __m512 Sleef_expf16_u10(__m512) __attribute__((weak));
#pragma GCC pop_options

#endif

namespace pixelaux {
namespace cpu {
namespace {

constexpr float kLogScaleMin = -7.0f;  // distributions.LOG_SCALE_MIN
constexpr double kUEps = 1e-5;         // distributions.U_EPS: uniforms clamped to [eps, 1 - eps]

// torch.softmax over the last axis, as the kernel torch dispatches to on this CPU
// computes it (ATen's softmax_lastdim_kernel: the max, exp(x - max) with
// Vectorized<float>::exp, a float sum in the lane order of vec::reduce_all, times 1/sum).
// The order matters: with 2**16 values a plain running sum is off by more than a bin
// of the CDF (one pixel in seven came out different from torch's).
struct SoftmaxKernel {
  int lanes = 8;      // Vectorized<float>::size() of that kernel
  bool tree = false;  // lanes folded pairwise (AVX2, AVX-512) or one by one (DEFAULT)
  int exp_width = 0;  // 8 or 16: SLEEF's expf of that width, as torch's; 0: libm's expf
  const char* name = "default/libm";
};

#ifdef PIXELAUX_X86_SOFTMAX
__attribute__((target("avx2,fma"))) void exp_sleef8(float* x, int64_t n) {
  int64_t l = 0;
  for (; l + 8 <= n; l += 8) _mm256_storeu_ps(x + l, Sleef_expf8_u10(_mm256_loadu_ps(x + l)));
  if (l < n) {  // the tail lane by lane as torch's masked load does (zeros past it)
    float buf[8] = {0};
    std::memcpy(buf, x + l, sizeof(float) * (n - l));
    _mm256_storeu_ps(buf, Sleef_expf8_u10(_mm256_loadu_ps(buf)));
    std::memcpy(x + l, buf, sizeof(float) * (n - l));
  }
}

__attribute__((target("avx512f,avx2,fma"))) void exp_sleef16(float* x, int64_t n) {
  int64_t l = 0;
  for (; l + 16 <= n; l += 16) _mm512_storeu_ps(x + l, Sleef_expf16_u10(_mm512_loadu_ps(x + l)));
  if (l < n) {
    float buf[16] = {0};
    std::memcpy(buf, x + l, sizeof(float) * (n - l));
    _mm512_storeu_ps(buf, Sleef_expf16_u10(_mm512_loadu_ps(buf)));
    std::memcpy(x + l, buf, sizeof(float) * (n - l));
  }
}
#endif

SoftmaxKernel find_softmax_kernel() {
  SoftmaxKernel k;
  const std::string cap = at::get_cpu_capability();  // honours ATEN_CPU_CAPABILITY
#ifdef PIXELAUX_X86_SOFTMAX
  if (cap == "AVX2") {
    k.tree = true;
    k.exp_width = Sleef_expf8_u10 ? 8 : 0;
    k.name = k.exp_width ? "avx2/sleef" : "avx2/libm";
  } else if (cap == "AVX512") {
    k.lanes = 16;
    k.tree = true;
    k.exp_width = Sleef_expf16_u10 ? 16 : 0;
    k.name = k.exp_width ? "avx512/sleef" : "avx512/libm";
  }
#endif
  (void)cap;  // other CPUs: the DEFAULT kernel's order (exact there only if torch runs it)
  return k;
}

const SoftmaxKernel& softmax_kernel() {
  static const SoftmaxKernel k = find_softmax_kernel();
  return k;
}

// vec::reduce_all(+) of x[0..n): below one vector a running sum; else one accumulator
// per lane over the full vectors, the tail added to the first lanes, then the lanes
// folded (pairwise halves, or into lane 0 one by one).
float reduce_sum(const SoftmaxKernel& k, const float* x, int64_t n) {
  const int L = k.lanes;
  if (n < L) {
    float s = x[0];
    for (int64_t l = 1; l < n; ++l) s += x[l];
    return s;
  }
  float acc[16];
  std::memcpy(acc, x, sizeof(float) * L);
  int64_t d = L;
  for (; d + L <= n; d += L)
    for (int i = 0; i < L; ++i) acc[i] += x[d + i];
  for (int i = 0; d + i < n; ++i) acc[i] += x[d + i];
  if (!k.tree) {
    float s = acc[0];
    for (int i = 1; i < L; ++i) s += acc[i];
    return s;
  }
  for (int w = L / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) acc[i] += acc[i + w];
  return acc[0];
}

// Index k with cdf[k-1] <= u < cdf[k] of softmax(logits / t): the number of
// cumulative probabilities <= u, clamped to n-1, with torch's softmax (above) and
// cumsum (accumulated in double, stored as float). Linear in n: the CDF only grows, so
// the count stops at the first entry above u. The logits outside [lo, hi] are -inf, as
// distributions._truncated_cdf_index masks them: their exp is exactly 0, so the sum
// (same lanes, same order) and the CDF are the masked softmax's.
int64_t inverse_cdf_index(const float* logits, int64_t n, float t, float u, float* tmp,
                          int64_t lo = 0, int64_t hi = std::numeric_limits<int64_t>::max()) {
  const SoftmaxKernel& k = softmax_kernel();
  float mx = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (int64_t l = 0; l < n; ++l) {
    const float v = l < lo || l > hi ? -std::numeric_limits<float>::infinity() : logits[l] / t;
    tmp[l] = v;
    nan |= std::isnan(v);
    mx = std::max(mx, v);
  }
  if (nan) return 0;  // torch: every probability NaN, no cdf entry <= u
  for (int64_t l = 0; l < n; ++l) tmp[l] -= mx;
#ifdef PIXELAUX_X86_SOFTMAX
  if (k.exp_width == 8)
    exp_sleef8(tmp, n);
  else if (k.exp_width == 16)
    exp_sleef16(tmp, n);
  else
#endif
    for (int64_t l = 0; l < n; ++l) tmp[l] = std::exp(tmp[l]);
  const float inv = 1.f / reduce_sum(k, tmp, n);
  double acc = 0.0;
  int64_t count = 0;
  for (; count < n; ++count) {
    acc += (double)(tmp[count] * inv);
    if (!((float)acc <= u)) break;
  }
  return std::min(count, n - 1);
}

// log(sigmoid(z)) as distributions._logsig computes it (NaN stays NaN, as in torch.clamp).
float logsig(float z) { return std::min(z, 0.f) - std::log1p(std::exp(-std::fabs(z))); }

// log(1 - exp(d)) for d <= 0 (distributions._log1mexp; the float threshold compares as
// the double one for every float d).
float log1mexp(float d) {
  return d > -0.6931471805599453f ? std::log(-std::expm1(d)) : std::log1p(-std::exp(d));
}

// DiscretizedLogisticMixture._truncated_channel: one channel of the component's logistic
// (mean, scale) restricted to the bins [lo, hi] of [0, top], by the inverse CDF of uc
// mapped into the interval, in log space; the pixel value as float.
float truncated_logistic(float mean, float scale, float uc, int64_t lo, int64_t hi, int64_t top) {
  const float inf = std::numeric_limits<float>::infinity();
  const float unit = (float)(2.0 / (double)top), half = (float)(1.0 / (double)top);
  const float half_top = (float)((double)top / 2.0);
  const float loF = (float)lo, hiF = (float)hi;
  const float za = lo == 0 ? -inf : ((loF * unit - 1.0f) - half - mean) / scale;
  const float zb = hi == top ? inf : ((hiF * unit - 1.0f) + half - mean) / scale;
  const bool upper = za > 0;  // the interval above the mean: through the survival function
  const float small = logsig(upper ? -zb : za);  // log of the smaller end's cdf
  const float big = logsig(upper ? -za : zb);    // and of the larger's
  const float ed = std::exp(small - big);
  const float lq = big + std::log(upper ? (1.0f - uc) + uc * ed : uc + ed - uc * ed);
  const float z = lq - log1mexp(lq);  // logit of the cdf (survival) value
  const float val = mean + scale * (upper ? -z : z);
  float p = std::nearbyint((val + 1.0f) * half_top);
  if (std::isnan(p)) p = loF;
  return std::min(std::max(p, loF), hiF);
}

// Floor and ceiling of a / d for d > 0 (torch.div(..., rounding_mode="floor")).
int64_t floor_div(int64_t a, int64_t d) { return a >= 0 ? a / d : -((-a + d - 1) / d); }
int64_t ceil_div(int64_t a, int64_t d) { return -floor_div(-a, d); }

}  // namespace

void PixelWindow::range(int c, const int64_t* pix, int64_t* lo, int64_t* hi) const {
  const int64_t C = w->C, H = w->H, W = w->W, f = w->block;
  int64_t k = 0;
  for (int cp = 0; cp < c; ++cp) k += w->coef[cp] * pix[cp];
  if (f > 1) {  // the cell's earlier pixels: its rows above, then the row's columns left of j
    const int64_t* xc = x + (b * C + c) * H * W;
    const int64_t i0 = i - i % f, j0 = j - j % f;
    for (int64_t ii = i0; ii <= i; ++ii)
      for (int64_t jj = j0; jj < (ii < i ? j0 + f : j); ++jj) k += xc[ii * W + jj];
  }
  const int64_t plane = w->B * C * H * W;
  const int32_t* m = w->maps + ((b * C + c) * H + i) * W + j;
  const int64_t box_lo = m[2 * plane], box_hi = m[3 * plane];
  const int64_t l = std::min(std::max(box_lo, ceil_div(m[0] - k, w->div[c])), box_hi);
  *lo = l;
  *hi = std::max(std::min(box_hi, floor_div(m[plane] - k, w->div[c])), l);
}

std::string make_dist_spec(int channels, int bits, int dist, int nr_mix, DistSpec* d) {
  d->channels = channels;
  d->bits = bits;
  d->dist = dist;
  d->nr_mix = nr_mix;
  d->levels = int64_t(1) << bits;
  if (dist == 0) {  // categorical
    d->num_params = channels * d->levels;
    d->num_uniforms = channels;
  } else if (dist == 1) {  // discretized logistic mixture
    const int64_t C = channels;
    d->num_params = nr_mix * (1 + 2 * C + C * (C - 1) / 2);
    d->num_uniforms = 1 + channels;
  } else {  // the one place a kind is known: a new one is added here and in sample_pixel
    return "config dist: the C++ engine samples kinds 0 (categorical) and 1 (logistic mixture), got " +
           std::to_string(dist) + "; use backend='torch'";
  }
  if (channels > kMaxChannels) return "config channels must be at most " + std::to_string(kMaxChannels);
  if (d->num_params > kMaxParams) return "config gives too many distribution parameters";
  return "";
}

void sample_pixel(const DistSpec& c, const float* prm, const float* u, float t, int64_t* pix,
                  float* tmp, const PixelWindow* win) {
  int64_t lo = 0, hi = c.levels - 1;  // the channel's range: all values without a window
  if (c.dist == 0) {
    for (int ch = 0; ch < c.channels; ++ch) {
      if (win) win->range(ch, pix, &lo, &hi);
      const int64_t k = inverse_cdf_index(prm + ch * c.levels, c.levels, t, u[ch], tmp, lo, hi);
      pix[ch] = std::min(std::max(k, lo), hi);
    }
    return;
  }
  const int M = c.nr_mix, C = c.channels;
  const int64_t k = inverse_cdf_index(prm, M, t, u[0], tmp);
  const float* means = prm + M;
  const float* log_scales = prm + M + C * M;
  const float* coeffs = prm + M + 2 * C * M;
  const float top = (float)(c.levels - 1);
  const float half_top = (float)((double)(c.levels - 1) / 2.0);
  const float unit = (float)(2.0 / (double)(c.levels - 1));
  const float ulo = (float)kUEps, uhi = (float)(1.0 - kUEps);
  float xs[kMaxChannels];
  int pair = 0;
  for (int ch = 0; ch < C; ++ch) {
    float mean = means[ch * M + k];
    for (int cp = 0; cp < ch; ++cp) {
      const float co = std::tanh(coeffs[pair * M + k]);
      const float prod = co * xs[cp];
      mean = mean + prod;
      ++pair;
    }
    float ls = log_scales[ch * M + k];
    ls = std::isnan(ls) ? ls : std::max(ls, kLogScaleMin);
    const float uc = std::min(std::max(u[1 + ch], ulo), uhi);
    const float scale = std::exp(ls) * t;
    if (win) win->range(ch, pix, &lo, &hi);
    float p;
    if (lo == 0 && hi == c.levels - 1) {  // a full range: the untruncated arithmetic
      const float logit = std::log(uc) - std::log1p(-uc);
      const float val = mean + scale * logit;
      p = std::nearbyint((val + 1.0f) * half_top);
      if (std::isnan(p)) p = 0.f;
      p = std::min(std::max(p, 0.f), top);
    } else {
      p = truncated_logistic(mean, scale, uc, lo, hi, c.levels - 1);
    }
    pix[ch] = (int64_t)p;
    xs[ch] = p * unit - 1.0f;
  }
}

const char* softmax_flavour() { return softmax_kernel().name; }

}  // namespace cpu
}  // namespace pixelaux
