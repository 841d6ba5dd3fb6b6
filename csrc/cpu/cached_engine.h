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

#include "engine_common.h"

namespace pixelaux {
namespace cpu {

// Integer configuration of a GatedPixelCNN as passed to the ops: EngineConfig's, the 5th
// int the kernel size.
struct ModelConfig : EngineConfig {
  int kernel_size = 0;    // odd k
  // derived
  int kh = 0, kw = 0, pw = 0;
};

constexpr int kMaxKernelSize = 63;

// Parses and checks the config; returns an error message, empty when valid.
std::string parse_config(const int64_t* v, int64_t n, ModelConfig* cfg);

// Where each packed matrix lives in the flat packed-weight tensor. Matrices are
// (K x N) with K ordered (tap column s, input channel c); per-row arrays are indexed
// by the kernel row r (0 = the oldest row of the window, kh-1 = the current row).
struct BlockLayout {
  std::vector<MatSlot> c1, c2a, c2b;  // per kernel row; c2a / c2b: value / gate halves
  MatSlot nin;                        // ul blocks only: 1x1 projection of act(u)
  MatSlot cc1, cc2a, cc2b;            // conditioning 1x1 convs (cond_channels > 0)
  VecSlot b1, b2;                     // b1: conv1 bias (+ nin bias); b2: conv2 bias (2F)
};

struct Layout : InputLayers {  // the input layers first, then:
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

struct SampleArgs : SampleArgsBase {
  const ModelConfig* cfg = nullptr;
  const Layout* lay = nullptr;
  // (B, cc, H, W), or (B, cc) when cond_global, or null. A global cond's terms are
  // computed once per image (Workspace::gcond) and added to every row, no per-row GEMM.
  const float* cond = nullptr;
};

void cached_sample(const SampleArgs& args);
// Floats of scratch cached_sample would allocate for these args (its arenas' requests;
// only cfg, B, H, W, cond_global, mode and threads are read).
int64_t workspace_floats(const SampleArgs& args);

}  // namespace cpu
}  // namespace pixelaux
