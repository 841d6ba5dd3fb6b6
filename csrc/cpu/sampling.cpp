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
// the count stops at the first entry above u.
int64_t inverse_cdf_index(const float* logits, int64_t n, float t, float u, float* tmp) {
  const SoftmaxKernel& k = softmax_kernel();
  float mx = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (int64_t l = 0; l < n; ++l) {
    const float v = logits[l] / t;
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

}  // namespace

std::string make_dist_spec(int channels, int bits, int dist, int nr_mix, DistSpec* d) {
  d->channels = channels;
  d->bits = bits;
  d->dist = dist;
  d->nr_mix = nr_mix;
  d->levels = int64_t(1) << bits;
  if (dist == 0) {
    d->num_params = channels * d->levels;
    d->num_uniforms = channels;
  } else {
    const int64_t C = channels;
    d->num_params = nr_mix * (1 + 2 * C + C * (C - 1) / 2);
    d->num_uniforms = 1 + channels;
  }
  if (channels > kMaxChannels) return "config channels must be at most " + std::to_string(kMaxChannels);
  if (d->num_params > kMaxParams) return "config gives too many distribution parameters";
  return "";
}

void sample_pixel(const DistSpec& c, const float* prm, const float* u, float t, int64_t* pix,
                  float* tmp) {
  if (c.dist == 0) {
    for (int ch = 0; ch < c.channels; ++ch)
      pix[ch] = inverse_cdf_index(prm + ch * c.levels, c.levels, t, u[ch], tmp);
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
    const float logit = std::log(uc) - std::log1p(-uc);
    const float val = mean + scale * logit;
    float p = std::nearbyint((val + 1.0f) * half_top);
    if (std::isnan(p)) p = 0.f;
    p = std::min(std::max(p, 0.f), top);
    pix[ch] = (int64_t)p;
    xs[ch] = p * unit - 1.0f;
  }
}

const char* softmax_flavour() { return softmax_kernel().name; }

}  // namespace cpu
}  // namespace pixelaux
