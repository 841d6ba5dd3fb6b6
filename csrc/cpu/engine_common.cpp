// What the CPU cached engines share (see engine_common.h).
#include "engine_common.h"

#include <algorithm>

namespace pixelaux {
namespace cpu {

std::string parse_config_ints(const int64_t* v, int64_t n, const char* topology_name,
                              int64_t topology_max, EngineConfig* c, int* topology) {
  if (n != kConfigLen)
    return "config must have " + std::to_string(kConfigLen) + " ints [channels, bits, hidden, blocks, " +
           topology_name + ", cond_channels, dist, nr_mix, embed_dim], got " + std::to_string(n);
  const char* names[kConfigLen] = {"channels", "bits", "hidden", "blocks",
                                   topology_name, "cond_channels", "dist", "nr_mix", "embed_dim"};
  const int64_t lo[kConfigLen] = {1, 1, 1, 0, 1, 0, 0, 1, 0};
  const int64_t hi[kConfigLen] = {kMaxChannels, 16, 16384, 4096, topology_max, 16384, 1, 4096,
                                   kMaxEmbedDim};
  for (int i = 0; i < kConfigLen; ++i)
    if (v[i] < lo[i] || v[i] > hi[i])
      return std::string("config ") + names[i] + " must be in [" + std::to_string(lo[i]) + ", " +
             std::to_string(hi[i]) + "], got " + std::to_string(v[i]);
  c->channels = (int)v[0];
  c->bits = (int)v[1];
  c->hidden = (int)v[2];
  c->blocks = (int)v[3];
  *topology = (int)v[4];
  c->cond_channels = (int)v[5];
  c->dist = (int)v[6];
  c->nr_mix = (int)v[7];
  c->embed_dim = (int)v[8];
  c->per_channel = std::max(c->embed_dim, 1);
  c->cin = c->channels * c->per_channel + 1;
  return "";
}

void lay_out_inputs(const EngineConfig& c, int k, LayoutBuilder* lb, InputLayers* L) {
  const int F = c.hidden, cin = c.cin, kh = (k + 1) / 2;
  L->kh = kh;
  L->k = k;
  for (int r = 0; r < kh; ++r) L->u0.push_back(lb->mat(k * cin, F));
  L->u0b = lb->vec(F);
  L->ulv = lb->mat(k * cin, F);
  L->ulvb = lb->vec(F);
  for (int r = 0; r < kh; ++r) L->ulh.push_back(lb->mat(cin, F));
  L->ulhb = lb->vec(F);
}

void input_raw_specs(const EngineConfig& c, int k, std::vector<RawSpec>* s) {
  const int64_t F = c.hidden, cin = c.cin, kh = (k + 1) / 2;
  s->push_back({"u_init.weight", {F, cin, kh, k}});
  s->push_back({"u_init.bias", {F}});
  s->push_back({"ul_init_v.weight", {F, cin, 1, k}});
  s->push_back({"ul_init_v.bias", {F}});
  s->push_back({"ul_init_h.weight", {F, cin, kh, 1}});
  s->push_back({"ul_init_h.bias", {F}});
}

void pack_inputs(const EngineConfig& c, const InputLayers& L, const float* const*& next, float* out) {
  const int64_t F = c.hidden, cin = c.cin, kh = L.kh, k = L.k;
  {
    ConvW w{*next++, F, cin, kh, k};
    for (int r = 0; r < kh; ++r) fill_row(out, L.u0[r], w, r, 0);
    fill_vec(out, L.u0b, *next++);
  }
  {
    ConvW w{*next++, F, cin, 1, k};
    fill_row(out, L.ulv, w, 0, 0);
    fill_vec(out, L.ulvb, *next++);
  }
  {
    ConvW w{*next++, F, cin, kh, 1};
    for (int r = 0; r < kh; ++r) fill_row(out, L.ulh[r], w, r, 0);
    fill_vec(out, L.ulhb, *next++);
  }
}

void want_input(const EngineConfig& c, int64_t H, int64_t W, int64_t pad_top, int64_t pad_side,
                WorkspaceBase* ws) {
  ws->pad_top = pad_top;
  ws->pad_side = pad_side;
  ws->arena.want(&ws->xin, ws->Bt * (H + pad_top) * (W + 2 * pad_side) * c.cin);
}

void want_head(const EngineConfig& c, int team, WorkspaceBase* ws) {
  const int64_t Bt = ws->Bt;
  ws->arena.want(&ws->eh, 2 * Bt * c.hidden);
  ws->arena.want(&ws->hp, (int64_t)team * Bt * c.d.num_params);
  ws->arena.want(&ws->xcur, (int64_t)team * Bt * c.cin);
  ws->arena.want(&ws->tmp, (int64_t)team * sample_scratch(c.d));
}

void init_ones(const EngineConfig& c, int64_t H, int64_t W, int team, WorkspaceBase* ws) {
  const int64_t cin = c.cin, Bt = ws->Bt, top = ws->pad_top, side = ws->pad_side;
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j)
        ws->xin[((b * (H + top) + top + i) * (W + 2 * side) + side + j) * cin + cin - 1] = 1.f;
  for (int64_t r = 0; r < (int64_t)team * Bt; ++r) ws->xcur[r * cin + cin - 1] = 1.f;
}

}  // namespace cpu
}  // namespace pixelaux
