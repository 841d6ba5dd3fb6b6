// The sampling arithmetic of pixelaux/distributions.py, shared by the engines: the
// inverse-CDF of the categorical and of the discretized logistic mixture, step by step
// as torch computes them (same uniforms -> same pixels as ``dist.sample_flat``).
#pragma once

#include <cstdint>
#include <string>

namespace pixelaux {
namespace cpu {

constexpr int kMaxChannels = 1024;          // image channels (per-pixel stack arrays)
constexpr int64_t kMaxParams = int64_t(1) << 26;  // distribution parameters per pixel

// The output distribution of a model.
struct DistSpec {
  int channels = 0;       // C
  int bits = 0;           // 1 .. 16
  int dist = 0;           // 0: categorical, 1: discretized logistic mixture
  int nr_mix = 0;         // mixture components (logistic)
  int64_t levels = 0;     // 2**bits
  int64_t num_params = 0; // P
  int num_uniforms = 0;   // U
};

// Fills the derived fields; returns an error message, empty when valid.
std::string make_dist_spec(int channels, int bits, int dist, int nr_mix, DistSpec* d);

// Floats of scratch sample_pixel needs.
inline int64_t sample_scratch(const DistSpec& d) { return d.levels > d.nr_mix ? d.levels : d.nr_mix; }

// Samples one pixel from its parameters prm (P floats) and uniforms u (U floats) at
// temperature t into pix (C values); tmp: sample_scratch(d) floats.
void sample_pixel(const DistSpec& d, const float* prm, const float* u, float t, int64_t* pix,
                  float* tmp);

}  // namespace cpu
}  // namespace pixelaux
