// The sampling arithmetic of pixelaux/distributions.py (see sampling.h).
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pixelaux {
namespace cpu {
namespace {

constexpr float kLogScaleMin = -7.0f;  // distributions.LOG_SCALE_MIN
constexpr double kUEps = 1e-5;         // distributions.U_EPS: uniforms clamped to [eps, 1 - eps]

// Index k with cdf[k-1] <= u < cdf[k] of softmax(logits / t): the number of
// cumulative probabilities <= u, clamped to n-1. Softmax as torch computes it
// (max-shifted exp, times 1/sum), cumsum accumulated in double as torch does on CPU.
int64_t inverse_cdf_index(const float* logits, int64_t n, float t, float u, float* tmp) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < n; ++l) {
    const float v = logits[l] / t;
    tmp[l] = v;
    mx = std::max(mx, v);
  }
  float sum = 0.f;
  for (int64_t l = 0; l < n; ++l) {
    const float e = std::exp(tmp[l] - mx);
    tmp[l] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
  double acc = 0.0;
  int64_t count = 0;
  for (int64_t l = 0; l < n; ++l) {
    acc += (double)(tmp[l] * inv);
    if ((float)acc <= u) ++count;
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

}  // namespace cpu
}  // namespace pixelaux
