// The CPU cached sampling engine (docs/design.md section 2.3): one config, one packed
// weight layout in the sampling plan's weight order (pixelaux/engines/plan.py,
// Plan.weight_tensors; the packed plan's weight groups), one SampleArgs, one entry point
// for every model family.
//
// Same algorithm and buffer names as the plan's readable executor
// (pixelaux/engines/cached_torch.py), with the whole per-image loop in C++: when row i
// starts, the row steps of every scale s with i % 2**s == 0 as GEMMs over the row's
// Bt * W_s positions (the u stream, and each ul block's row term: what its convs add
// that does not read the row's own ul values); per pixel, the pixel steps from the
// current-row taps only (GEMMs over the images), then the head and the sampling.
//
// One engine (engine.cpp) for every family, the topology from the config: a
// GatedPixelCNN is one scale, convs of kh = (k+1)/2 rows (u: (kh, k), ul: (kh, kh)), the
// up pass only; a PixelCNNpp the U-net of 2-row convs. Threads as in team.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "packing.h"
#include "sampling.h"

namespace pixelaux {
namespace cpu {

constexpr int kConfigLen = 11;  // the model's ints; the packed plan follows
constexpr int kMaxKernelSize = 63;
constexpr int kMaxScales = 8;

// The steps of a packed plan (pixelaux/engines/plan.py; cached_cpp.OPS, the same order).
enum Op : int {
  kInputRow = 0, kDownRow, kFromUp, kRowBlock, kRowTerm, kKeep, kUpRow,
  kInputPixel, kDownPixel, kPixelBlock, kUpPixel, kHead, kNumOps
};
constexpr int kStepInts = 10;  // [op, scale, 8 args] (cached_cpp.STEP_INTS)

// The weight groups of a packed plan (cached_cpp.WEIGHT_KINDS, the same order), each
// [kind, kw, skip, cond] (cached_cpp.WEIGHT_INTS; -1 but for a block), in the plan's weight
// order (Plan.weights): the input layers (u_init (kh, k), ul_init_v (1, k), ul_init_h (kh,
// 1): one group), a gated residual block (conv1 and conv2 (kh, kw), its 1x1 projection
// by Skip, cond_c1 and cond_c2 when cond), the stride-2 convs (F, F, 2, 3) of kDownRow
// (u) and (F, F, 2, 2) of kDownPixel (ul), the transposed convs (F, F, 2, 3) of kUpRow
// (u) and (F, F, 2, 2) of kUpPixel (ul), the head. Steps name a block or a conv by the
// index of its group.
enum WeightKind : int { kInputLayers = 0, kBlock, kDownU, kDownUl, kUpU, kUpUl, kHeadLayer, kNumWeightKinds };
constexpr int kWeightInts = 4;
// A block's 1x1 projection: none, of act(skip) (F channels), or split (of act(cat(u, ul))).
enum Skip : int { kNoSkip = 0, kSkip = 1, kSplit = 2 };
// One weight group; index: the block's in Layout::blocks, a conv's in Layout::convs.
struct PackedWeights { int kind = 0, kw = -1, skip = -1, cond = -1, index = -1; };

// One step: its buffers by index (windows, holders, values of the PackedPlan), blocks by
// their index in Layout::blocks, stride-2 / transposed convs by theirs in Layout::convs
// (the packed steps name both by weight group), -1 for none. Fields by op:
//   kInputRow: out, out2 (u; ul's row term row_term:ul_init)
//   kInputPixel: x (the row term), out
//   kDownRow / kDownPixel: win (the finer scale's window), out, conv
//   kFromUp (either phase): holder, out
//   kRowBlock / kPixelBlock: block, cond, x, out, win1, win2, skip (and kPixelBlock: term)
//   kRowTerm: block, cond, x (its nin's input), out (the row term), win1, win2 (the
//     block's conv windows: the taps of the rows above)
//   kKeep (either phase): x, win
//   kUpRow / kUpPixel: x, holder, conv
//   kHead: x
struct Step {
  int op = 0, scale = 0;
  int block = -1, cond = -1, x = -1, out = -1, out2 = -1, win = -1, win1 = -1, win2 = -1,
      skip = -1, term = -1, holder = -1, conv = -1;
};

// The packed plan: buffers, the row and pixel steps in the order they run, the weight
// groups in the plan's weight order, and the scale of each block's conditioning terms
// (by the index the steps give them, Plan.cond_blocks).
struct PackedWindow { int scale, channels, rows, left, right; };
struct PackedHolder { int scale, channels; };
enum ValueKind : int { kRowValue = 0, kRowTermValue = 1, kPixelValue = 2 };
struct PackedValue { int kind, scale; };
struct PackedPlan {
  std::vector<PackedWindow> windows;
  std::vector<PackedHolder> holders;
  std::vector<PackedValue> values;
  std::vector<Step> row_steps, pixel_steps;
  std::vector<PackedWeights> weights;
  std::vector<int> cond_scales;
};

// The config ints the ops take: [cond_in_engine, channels, bits, hidden, blocks, kernel_size,
// scales, cond_channels, dist, nr_mix, embed_dim], then the packed plan
// (cached_cpp.config_of, pack_plan).
struct Config {
  int cond_in_engine = 0; // 1: the engine computes the blocks' cond terms from cond (one scale)
  int channels = 0;       // C
  int bits = 0;           // 1 .. 16
  int hidden = 0;         // F
  int blocks = 0;         // residual blocks per stream and stage (>= 0)
  int kernel_size = 0;    // k, odd (a PixelCNNpp: 3)
  int scales = 0;         // resolutions (a GatedPixelCNN: 1)
  int cond_channels = 0;  // cc (0: unconditional)
  int dist = 0;           // 0: categorical, 1: discretized logistic mixture
  int nr_mix = 0;         // mixture components (logistic)
  int embed_dim = 0;      // E: 0 pixels scaled to [-1, 1], else E table floats per channel
  // derived
  DistSpec d;             // the output distribution (levels, P, U)
  int per_channel = 1;    // input channels per image channel, max(E, 1)
  int cin = 0;            // input channels: channels * per_channel + the ones channel
  int kh = 0;             // rows every conv reads, (k + 1) / 2
  int pw = 0;             // the u convs' padding each side, (k - 1) / 2
  PackedPlan plan;        // the steps the engine walks and the weights it packs
};

// Parses and checks the config with its packed plan; returns an error message, empty
// when valid.
std::string parse_config(const int64_t* v, int64_t n, Config* c);

// A gated residual block: per kernel row r (0: the oldest row of the window, kh-1: the
// current row), the (tap column, channel) x out matrices of conv1 and of conv2's value /
// gate halves.
struct BlockLayout {
  std::vector<MatSlot> c1, c2a, c2b;
  MatSlot nin;              // 1x1 projection of act(skip) (a split one: its act(u) part)
  MatSlot nin_ul;           // a split projection (down-pass ul blocks): its act(ul) part
  MatSlot cc1, cc2a, cc2b;  // conditioning 1x1 convs (its group's cond)
  VecSlot b1, b2;           // b1: conv1 bias + nin bias; b2: conv2 bias (2F)
};

// A stride-2 conv (mats: per kernel row, K = kw * F) or a transposed conv (mats: [row
// parity * 3 + tap] (u, taps 0..2) or [row parity * 2 + column parity] (ul), K = F).
struct ConvLayout {
  std::vector<MatSlot> mats;
  VecSlot bias;
};

// Where each packed matrix lives in the flat packed-weight tensor, in the order of the
// plan's weight groups.
struct Layout {
  // the input layers: u_init, a (kh, k) conv over the image rows above; ul_init_v, a
  // (1, k) conv over the row above; ul_init_h, a (kh, 1) conv over the column to the
  // left. Per kernel row where there are several.
  std::vector<MatSlot> u0;   // K = k * cin
  VecSlot u0b;
  MatSlot ulv;               // K = k * cin
  VecSlot ulvb;
  std::vector<MatSlot> ulh;  // K = cin
  VecSlot ulhb;
  // the blocks and the stride-2 / transposed convs in the plan's weight order
  std::vector<BlockLayout> blocks;
  std::vector<ConvLayout> convs;
  MatSlot head;
  VecSlot headb;
  int num_cond_blocks = 0;  // blocks with conditioning terms (the plan's cond_scales)
  int64_t total = 0;        // floats
};

Layout make_layout(const Config& c);

// Checks the plan's block steps against the layout (their windows fit the convs, their
// projections exist); returns an error message, empty when valid.
std::string check_plan(const Config& c, const Layout& lay);

// The raw weights pack_weights expects, in the plan's order (Plan.weight_tensors, the
// cond modules included): shape and a generic name of each ("weight 7 (block 1:
// conv1.weight)"; the op takes the module names from the caller).
std::vector<RawSpec> raw_weight_specs(const Config& c);

// Packs the raw (checked, contiguous float32) weights into out (layout.total floats).
void pack_weights(const Config& c, const Layout& lay, const std::vector<const float*>& raw,
                  float* out);

// The arguments of a sampling call.
struct SampleArgs {
  const Config* cfg = nullptr;
  const Layout* lay = nullptr;
  const float* packed = nullptr;
  int64_t B = 0, H = 0, W = 0;
  int64_t* x = nullptr;             // (B, C, H, W): known pixels in, completed images out
  const bool* known = nullptr;      // (B, H, W) or null (nothing known)
  // The conditioning. A GatedPixelCNN computes its blocks' terms here from cond: (B, cc,
  // H, W), or (B, cc) when cond_global (then once per image, added to every row). A
  // PixelCNNpp takes them computed by the caller, cond_terms: per block in the plan's
  // order (Plan.cond_blocks), each (B, H_s, W_s, 3F) = [cond_c1 (F), cond_c2 (2F)], or
  // (B, 1, 1, 3F) when cond_global (broadcast over the positions).
  bool cond_global = false;
  const float* cond = nullptr;
  std::vector<const float*> cond_terms;
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
// only cfg, lay, B, H, W, cond_global, mode and threads are read).
int64_t workspace_floats(const SampleArgs& args);

}  // namespace cpu
}  // namespace pixelaux
