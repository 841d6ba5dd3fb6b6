// What the CPU cached engines share (see engine_common.h).
#include "engine_common.h"

namespace pixelaux {
namespace cpu {

void want_input(const Config& c, int64_t H, int64_t W, int64_t pad_top, int64_t pad_side,
                WorkspaceBase* ws) {
  ws->pad_top = pad_top;
  ws->pad_side = pad_side;
  ws->arena.want(&ws->xin, ws->Bt * (H + pad_top) * (W + 2 * pad_side) * c.cin);
}

void want_head(const Config& c, int team, WorkspaceBase* ws) {
  const int64_t Bt = ws->Bt;
  ws->arena.want(&ws->eh, 2 * Bt * c.hidden);
  ws->arena.want(&ws->hp, (int64_t)team * Bt * c.d.num_params);
  ws->arena.want(&ws->xcur, (int64_t)team * Bt * c.cin);
  ws->arena.want(&ws->tmp, (int64_t)team * sample_scratch(c.d));
}

void init_ones(const Config& c, int64_t H, int64_t W, int team, WorkspaceBase* ws) {
  const int64_t cin = c.cin, Bt = ws->Bt, top = ws->pad_top, side = ws->pad_side;
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j)
        ws->xin[((b * (H + top) + top + i) * (W + 2 * side) + side + j) * cin + cin - 1] = 1.f;
  for (int64_t r = 0; r < (int64_t)team * Bt; ++r) ws->xcur[r * cin + cin - 1] = 1.f;
}

}  // namespace cpu
}  // namespace pixelaux
