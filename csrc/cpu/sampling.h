// The sampling arithmetic of pixelaux/distributions.py, shared by the engines: the
// inverse-CDF of the categorical and of the discretized logistic mixture, step by step
// as torch computes them (same uniforms -> same pixels as ``dist.sample_flat``), and
// the encoding of a pixel into the input buffer (pixelaux/inputs.py).
#pragma once

#include <cstdint>
#include <string>

namespace pixelaux {
namespace cpu {

constexpr int kMaxChannels = 1024;          // image channels (per-pixel stack arrays)
constexpr int kMaxEmbedDim = 4096;          // table floats per channel (inputs.PixelInput)
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
// (The categorical's softmax follows the kernel torch runs on this CPU: see sampling.cpp.)
inline int64_t sample_scratch(const DistSpec& d) { return d.levels > d.nr_mix ? d.levels : d.nr_mix; }

// Samples one pixel from its parameters prm (P floats) and uniforms u (U floats) at
// temperature t into pix (C values); tmp: sample_scratch(d) floats.
void sample_pixel(const DistSpec& d, const float* prm, const float* u, float t, int64_t* pix,
                  float* tmp);

// Which of torch's CPU softmax kernels the sampler reproduces ("avx2", "avx512" or
// "default"), and with which exp ("sleef" or "libm"), e.g. "avx2/sleef".
const char* softmax_flavour();

// The input encoding of a model (PixelInput.table): table[(c * K + v) * E + e] is what
// value v of image channel c writes into input channel c * E + e (E = max(embed_dim, 1);
// the scaled encoding is the table of v * 2/(K-1) - 1, E = 1).
struct PixelTable {
  const float* data = nullptr;
  int64_t levels = 0;  // K
  int per_channel = 1; // E
  // Writes the C * E input channels of the pixel pix (C values in [0, K)) to dst.
  void write(int channels, const int64_t* pix, float* dst) const {
    for (int ch = 0; ch < channels; ++ch) {
      const float* row = data + (ch * levels + pix[ch]) * per_channel;
      for (int e = 0; e < per_channel; ++e) dst[ch * per_channel + e] = row[e];
    }
  }
};

}  // namespace cpu
}  // namespace pixelaux
