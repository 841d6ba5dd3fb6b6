// The CPU cached sampling engine of a PixelCNNpp (docs/design.md section 2).
//
// Same algorithm and buffer names as pixelaux/engines/cached_torch_pp.py, with the
// whole loop in C++. Scale s (resolution H/2**s x W/2**s) position (p, q) belongs to
// pixel (2**s p, 2**s q) and is computed once, when that pixel comes:
//
// * start_row(i), for every scale s with i % 2**s == 0 (row p = i >> s): the whole row
//   of every u value of scale s as GEMMs over the Bt*W_s positions of the row (up pass,
//   scales ascending, a coarser scale's input from the stride-2 conv over the last two
//   rows of the finer one, kept in last_u_win; then the down pass, scales descending, a
//   finer scale's input from the transposed conv of the coarser row, kept in u_up by row
//   parity), and every per-row term of the ul blocks (ul_c1_row / ul_c2_row: biases,
//   the 1x1 projections of u, the conditioning, the conv taps of row p-1).
// * step(i, j), for every scale s with i, j divisible by 2**s: the ul stream at (p, q)
//   from the current-row taps only (GEMMs over the Bt images), up pass ascending (the
//   stride-2 conv reads the 2x2 window of last_ul_win), down pass descending (the input
//   from ul_up, the transposed conv's 2x2 blocks kept by row parity); the head and the
//   sampling at scale 0.
//
// Every conv input keeps a window of 2 rows at its scale (u_win: 1 column of padding
// each side; ul_win: 1 on the left), indexed by row parity. Threads as in team.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine_common.h"

namespace pixelaux {
namespace cpu {
namespace pp {

constexpr int kMaxScales = 8;

// Integer configuration of a PixelCNNpp as passed to the ops: EngineConfig's, the 5th
// int the number of scales.
struct Config : EngineConfig {
  int scales = 0;
  // Blocks of the down pass at scale s (blocks at the smallest scale, blocks+1 elsewhere).
  int down_blocks(int s) const { return s == scales - 1 ? blocks : blocks + 1; }
};

std::string parse_config(const int64_t* v, int64_t n, Config* cfg);

// A gated residual block of 2-row convs: per kernel row r (0: row p-1, 1: row p), the
// (tap column, channel) x out matrices of conv1 and of conv2's value / gate halves.
struct BlockLayout {
  MatSlot c1[2], c2a[2], c2b[2];
  MatSlot nin;     // 1x1 projection of act(skip) (down-pass ul blocks: the act(u) part)
  MatSlot nin_ul;  // down-pass ul blocks: the act(up-pass ul) part
  VecSlot b1, b2;  // b1: conv1 bias + nin bias; b2: conv2 bias (2F)
};

struct Layout : InputLayers {  // the input layers (k = 3) first, then:
  // [scale][block]; a scale's down blocks in the order they run
  std::vector<std::vector<BlockLayout>> up_u, up_ul, down_u, down_ul;
  // into scale s from s-1 (index s, 1 .. S-1): stride-2 convs per kernel row
  std::vector<std::vector<MatSlot>> down_u_conv, down_ul_conv;
  std::vector<VecSlot> down_u_bias, down_ul_bias;
  // from scale s into s-1 (index s, 1 .. S-1): transposed convs, [row parity * 3 + tap]
  // (u, taps 0..2) and [row parity * 2 + column parity] (ul)
  std::vector<std::vector<MatSlot>> up_u_conv, up_ul_conv;
  std::vector<VecSlot> up_u_bias, up_ul_bias;
  MatSlot head;
  VecSlot headb;
  int num_cond_blocks = 0;  // blocks with conditioning terms (cond_channels > 0)
  int64_t total = 0;
};

Layout make_layout(const Config& cfg);

// The raw weights expected by pack_weights: the model's parameter names, in order.
std::vector<RawSpec> raw_weight_specs(const Config& cfg);

void pack_weights(const Config& cfg, const Layout& lay, const std::vector<const float*>& raw,
                  float* out);

struct SampleArgs : SampleArgsBase {
  const Config* cfg = nullptr;
  const Layout* lay = nullptr;
  // Conditioning terms of every block (cond_channels > 0), each (B, H_s, W_s, 3F) =
  // [cond_c1 (F), cond_c2 (2F)], in the order: for each scale s ascending, the up-pass
  // u blocks then ul blocks; then for each scale s ascending, its down-pass u blocks
  // then ul blocks. Empty when unconditional. With cond_global each is (B, 1, 1, 3F):
  // the terms of a global cond (a vector per image), broadcast over the positions.
  std::vector<const float*> cond_terms;
};

void cached_sample(const SampleArgs& args);
// Floats of scratch cached_sample would allocate for these args (its arenas' requests;
// only cfg, B, H, W, mode and threads are read).
int64_t workspace_floats(const SampleArgs& args);

}  // namespace pp
}  // namespace cpu
}  // namespace pixelaux
