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

// The window of consistent decoding (pixelaux/consistency.py, Window): channel c of
// pixel (i, j) of image b takes its values in [lo, hi], by the rule there, from the four
// maps at (b, c, i, j) and K = sum_{c' < c} coef[c'] x[b, c', i, j] (the pixel's earlier
// channels) + the earlier pixels (raster order) of its block x block cell, channel c.
struct Window {
  const int32_t* maps = nullptr;  // (4, B, C, H, W): lo_base, hi_base, box_lo, box_hi; null: none
  int64_t B = 0, C = 0, H = 0, W = 0;
  const int64_t* coef = nullptr;  // C
  const int64_t* div = nullptr;   // C, all > 0
  int64_t block = 1;
};

// The window at pixel (i, j) of image b, the cell's earlier pixels read from the images x
// (B, C, H, W), where they must already be final.
struct PixelWindow {
  const Window* w = nullptr;
  const int64_t* x = nullptr;
  int64_t b = 0, i = 0, j = 0;
  // [lo, hi] of channel c given the pixel's channels pix[0 .. c).
  void range(int c, const int64_t* pix, int64_t* lo, int64_t* hi) const;
};

// Samples one pixel from its parameters prm (P floats) and uniforms u (U floats) at
// temperature t into pix (C values); tmp: sample_scratch(d) floats. With a window, each
// channel from the model's distribution truncated to its range (distributions.py: a
// categorical renormalised over [lo, hi]; a logistic channel through _truncated_channel,
// unless its range is the whole [0, levels - 1]).
void sample_pixel(const DistSpec& d, const float* prm, const float* u, float t, int64_t* pix,
                  float* tmp, const PixelWindow* win = nullptr);

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
