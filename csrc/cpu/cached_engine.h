// The CPU cached sampling engine of a GatedPixelCNN (docs/design.md section 2).
//
// Same algorithm as pixelaux/engines/cached_torch.py, with the whole per-image loop
// in C++: at the start of row i the vertical stream of the row, and every term of
// the horizontal stream that only reads rows < i (its first layer's down-shifted
// part, each block's 1x1 projection of u, the conditioning terms, the taps of the
// previous rows), are computed as GEMMs over all B*W positions; per pixel only the
// taps of the current row remain, then the head and the sampling. A global cond (a
// vector per image) has its conditioning terms computed once per image instead.
//
// Threads: see team.h (images over threads, or a team over the output channels).
// Buffer names follow pixelaux/engines/cached_torch.py: u_win / ul_win (the row rings
// of the conv inputs), ul_row0 (the per-row part of ul's first layer), ul_c1_row /
// ul_c2_row (the per-row terms of the ul blocks).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "packing.h"
#include "sampling.h"

namespace pixelaux {
namespace cpu {

// Integer configuration of a GatedPixelCNN as passed to the ops (in this order).
struct ModelConfig {
  int channels = 0;       // C
  int bits = 0;           // 1 .. 16
  int hidden = 0;         // F
  int blocks = 0;         // residual blocks per stream (>= 0)
  int kernel_size = 0;    // odd k
  int cond_channels = 0;  // cc (0: unconditional)
  int dist = 0;           // 0: categorical, 1: discretized logistic mixture
  int nr_mix = 0;         // mixture components (logistic)
  int embed_dim = 0;      // E: 0 pixels scaled to [-1, 1], else E table floats per channel
  // derived
  int kh = 0, kw = 0, pw = 0;
  int per_channel = 1;    // input channels per image channel, max(E, 1)
  int cin = 0;            // input channels: channels * per_channel + the ones channel
  int64_t levels = 0;     // 2**bits
  int64_t num_params = 0; // P
  int num_uniforms = 0;   // U
};

constexpr int kConfigLen = 9;
constexpr int kMaxKernelSize = 63;

// Parses and checks the config; returns an error message, empty when valid.
std::string parse_config(const int64_t* v, int64_t n, ModelConfig* cfg);

// The output distribution of a config.
DistSpec dist_spec(const ModelConfig& cfg);

// Where each packed matrix lives in the flat packed-weight tensor. Matrices are
// (K x N) with K ordered (tap column s, input channel c); per-row arrays are indexed
// by the kernel row r (0 = the oldest row of the window, kh-1 = the current row).
struct BlockLayout {
  std::vector<MatSlot> c1, c2a, c2b;  // per kernel row; c2a / c2b: value / gate halves
  MatSlot nin;                        // ul blocks only: 1x1 projection of act(u)
  MatSlot cc1, cc2a, cc2b;            // conditioning 1x1 convs (cond_channels > 0)
  VecSlot b1, b2;                     // b1: conv1 bias (+ nin bias); b2: conv2 bias (2F)
};

struct Layout {
  std::vector<MatSlot> u0;   // u_init per kernel row (K = k * cin)
  VecSlot u0b;
  MatSlot ulv;               // ul_init_v (K = k * cin)
  VecSlot ulvb;
  std::vector<MatSlot> ulh;  // ul_init_h per kernel row (K = cin)
  VecSlot ulhb;
  std::vector<BlockLayout> ub, ulb;
  MatSlot head;
  VecSlot headb;
  int64_t total = 0;         // floats
};

Layout make_layout(const ModelConfig& cfg);

// The raw weights expected by pack_weights, in order: name and shape of each.
std::vector<RawSpec> raw_weight_specs(const ModelConfig& cfg);

// Packs the raw (checked, contiguous float32) weights into `out` (layout.total floats).
void pack_weights(const ModelConfig& cfg, const Layout& lay, const std::vector<const float*>& raw,
                  float* out);

struct SampleArgs {
  const ModelConfig* cfg = nullptr;
  const Layout* lay = nullptr;
  const float* packed = nullptr;
  int64_t B = 0, H = 0, W = 0;
  int64_t* x = nullptr;             // (B, C, H, W): known pixels in, completed images out
  const bool* known = nullptr;      // (B, H, W) or null (nothing known)
  const float* cond = nullptr;      // (B, cc, H, W), or (B, cc) when cond_global, or null
  // cond is a vector per image, broadcast over the positions: each block's terms are
  // computed once per image (Workspace::gcond) and added to every row, no per-row GEMM.
  bool cond_global = false;
  const float* uniforms = nullptr;  // (B, H, W, U)
  PixelTable table;                 // (C, K, per_channel): what a pixel writes into xin
  float* params = nullptr;          // (B, P, H, W) or null
  double temperature = 1.0;
  Window window;                    // consistent decoding (window.maps null: none)
  // Thread split: 0 auto; 1 images over threads; 2 one team over the output channels
  // of every layer (row starts and pixels); 3 the team splits the row starts, one
  // thread runs the pixels.
  int mode = 0;
  int threads = 0;                  // 0: at::get_num_threads()
  // [image-rows done, stop flag] or null: the engine adds each finished row of each image
  // to progress[0] and, when progress[1] != 0 at the start of a row, stops there (the
  // caller polls it from another thread).
  int64_t* progress = nullptr;
};

void cached_sample(const SampleArgs& args);
// Floats of scratch cached_sample would allocate for these args (its arenas' requests;
// only cfg, B, H, W, cond_global, mode and threads are read).
int64_t workspace_floats(const SampleArgs& args);

}  // namespace cpu
}  // namespace pixelaux
