// The CPU cached sampling engine (see cached_engine.h): its config and its packed layout
// in the plan's weight order. The engine itself: engine.cpp.
#include "cached_engine.h"

#include <algorithm>
#include <cstring>

namespace pixelaux {
namespace cpu {

// ------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------

namespace {

// The packed plan after the model's ints (cached_cpp.pack_plan), its indices checked.
std::string parse_plan(const int64_t* v, int64_t n, Config* c) {
  const std::string bad = "config: the packed plan (cached_cpp.pack_plan) ";
  if (n < 5) return bad + "is missing, got " + std::to_string(n) + " ints";
  for (int i = 0; i < 5; ++i)
    if (v[i] < 0 || v[i] > (int64_t(1) << 20)) return bad + "has a bad count " + std::to_string(v[i]);
  const int64_t nw = v[0], nh = v[1], nv = v[2], nr = v[3], np = v[4];
  const int64_t want = 5 + 5 * nw + 2 * nh + 2 * nv + kStepInts * (nr + np);
  if (n != want) return bad + "must have " + std::to_string(want) + " ints, got " + std::to_string(n);
  const int64_t S = c->scales, F = c->hidden;
  const int64_t* p = v + 5;
  auto in = [](int64_t x, int64_t lo, int64_t hi) { return x >= lo && x < hi; };
  PackedPlan& P = c->plan;
  for (int64_t i = 0; i < nw; ++i, p += 5) {
    if (!in(p[0], 0, S) || (p[1] != F && p[1] != 2 * F) || !in(p[2], 1, 64) || !in(p[3], 0, 64) || !in(p[4], 0, 64))
      return bad + "has a bad window " + std::to_string(i);
    P.windows.push_back({(int)p[0], (int)p[1], (int)p[2], (int)p[3], (int)p[4]});
  }
  for (int64_t i = 0; i < nh; ++i, p += 2) {
    if (!in(p[0], 0, S - 1) || p[1] != F) return bad + "has a bad holder " + std::to_string(i);
    P.holders.push_back({(int)p[0], (int)p[1]});
  }
  for (int64_t i = 0; i < nv; ++i, p += 2) {
    if (!in(p[0], 0, 3) || !in(p[1], 0, S)) return bad + "has a bad value " + std::to_string(i);
    P.values.push_back({(int)p[0], (int)p[1]});
  }
  for (int64_t i = 0; i < nr + np; ++i, p += kStepInts) {
    const bool pixel = i >= nr;
    Step st;
    st.op = (int)p[0];
    st.scale = (int)p[1];
    const int64_t* a = p + 2;
    const std::string err = bad + "has a bad step " + std::to_string(i);
    const bool both = st.op == kFromUp || st.op == kKeep;  // steps of either phase
    if (!in(st.op, 0, kNumOps) || !in(st.scale, 0, S) || (!both && (st.op >= kInputPixel) != pixel)) return err;
    const int s = st.scale;
    const int vkind = pixel ? kPixelValue : kRowValue;
    auto value = [&](int64_t x, int kind, int* out) {
      if (!in(x, 0, nv) || P.values[x].kind != kind || P.values[x].scale != s) return false;
      *out = (int)x;
      return true;
    };
    auto window = [&](int64_t x, int scale, int* out) {
      if (!in(x, 0, nw) || P.windows[x].scale != scale) return false;
      *out = (int)x;
      return true;
    };
    auto holder = [&](int64_t x, int scale, int* out) {
      if (!in(x, 0, nh) || P.holders[x].scale != scale) return false;
      *out = (int)x;
      return true;
    };
    bool ok = true;
    switch (st.op) {
      case kInputRow:
        ok = s == 0 && value(a[0], kRowValue, &st.out) && value(a[1], kRowValue, &st.out2);
        break;
      case kInputPixel:
        ok = s == 0 && value(a[0], kRowValue, &st.x) && value(a[1], kPixelValue, &st.out);
        break;
      case kDownRow:
      case kDownPixel:
        ok = s > 0 && window(a[0], s - 1, &st.win) && P.windows[st.win].channels == F && P.windows[st.win].rows == 2 &&
             P.windows[st.win].left == 1 && P.windows[st.win].right == (st.op == kDownRow ? 1 : 0) &&
             value(a[1], vkind, &st.out);
        break;
      case kFromUp:
        ok = holder(a[0], s, &st.holder) && value(a[1], vkind, &st.out);
        break;
      case kRowBlock:
      case kPixelBlock:
      case kRowTerm:
        st.block = (int)a[0];
        st.cond = (int)a[1];
        ok = st.cond >= -1 && value(a[2], st.op == kRowTerm ? kRowValue : vkind, &st.x) &&
             value(a[3], st.op == kRowTerm ? kRowTermValue : vkind, &st.out) && window(a[4], s, &st.win1) &&
             window(a[5], s, &st.win2);
        if (ok && st.op != kRowTerm && a[6] != -1) ok = value(a[6], vkind, &st.skip);
        if (ok && st.op == kPixelBlock) ok = value(a[7], kRowTermValue, &st.term);
        break;
      case kKeep:
        ok = value(a[0], vkind, &st.x) && window(a[1], s, &st.win) && P.windows[st.win].channels == F;
        break;
      case kUpRow:
      case kUpPixel:
        ok = s > 0 && value(a[0], vkind, &st.x) && holder(a[1], s - 1, &st.holder);
        break;
      case kHead:
        ok = s == 0 && value(a[0], kPixelValue, &st.x) && i == nr + np - 1;
        break;
    }
    if (!ok) return err;
    (pixel ? P.pixel_steps : P.row_steps).push_back(st);
  }
  return "";
}

}  // namespace

std::string check_plan(const Config& c, const Layout& L) {
  const int64_t F2 = 2 * (int64_t)c.hidden;
  for (const auto* steps : {&c.plan.row_steps, &c.plan.pixel_steps})
    for (size_t i = 0; i < steps->size(); ++i) {
      const Step& st = (*steps)[i];
      if (st.op != kRowBlock && st.op != kRowTerm && st.op != kPixelBlock) continue;
      const std::string err = "config: the packed plan (cached_cpp.pack_plan) has a bad block step " + std::to_string(i);
      if (st.block < 0 || st.block >= (int)L.blocks.size() || st.cond >= L.num_cond_blocks) return err;
      const BlockLayout& B = L.blocks[st.block];
      const int64_t kw = B.c1[0].K / F2;  // the convs' width
      for (int w : {st.win1, st.win2}) {
        const PackedWindow& pw = c.plan.windows[w];
        if (pw.channels != F2 || pw.rows != c.kh || pw.left + pw.right + 1 != kw) return err;
      }
      const bool nin = B.nin.K > 0, split = B.nin_ul.K > 0;
      if (st.op == kRowBlock && (st.skip >= 0) != nin) return err;
      if (st.op == kRowTerm && !nin) return err;
      if (st.op == kPixelBlock && (st.skip >= 0) != split) return err;
    }
  return "";
}

std::string parse_config(const int64_t* v, int64_t n, Config* c, bool model_only) {
  static const char* names[kConfigLen] = {"family", "channels", "bits", "hidden", "blocks", "kernel_size",
                                          "scales", "cond_channels", "dist", "nr_mix", "embed_dim"};
  if (n < kConfigLen) {
    std::string all;
    for (int i = 0; i < kConfigLen; ++i) all += std::string(i ? ", " : "") + names[i];
    return "config must have " + std::to_string(kConfigLen) + " ints [" + all + "] and the packed plan, got " +
           std::to_string(n);
  }
  const int64_t lo[kConfigLen] = {0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 0};
  const int64_t hi[kConfigLen] = {kUNet, kMaxChannels, 16, 16384, 4096, kMaxKernelSize,
                                  kMaxScales, 16384, 255, 4096, kMaxEmbedDim};  // dist: make_dist_spec knows the kinds
  for (int i = 0; i < kConfigLen; ++i)
    if (v[i] < lo[i] || v[i] > hi[i])
      return std::string("config ") + names[i] + " must be in [" + std::to_string(lo[i]) + ", " +
             std::to_string(hi[i]) + "], got " + std::to_string(v[i]);
  c->family = (int)v[0];
  c->channels = (int)v[1];
  c->bits = (int)v[2];
  c->hidden = (int)v[3];
  c->blocks = (int)v[4];
  c->kernel_size = (int)v[5];
  c->scales = (int)v[6];
  c->cond_channels = (int)v[7];
  c->dist = (int)v[8];
  c->nr_mix = (int)v[9];
  c->embed_dim = (int)v[10];
  if (c->kernel_size % 2 != 1) return "config kernel_size must be odd, got " + std::to_string(v[5]);
  if (c->family == kGated && c->scales != 1)
    return "config scales must be 1 for a GatedPixelCNN, got " + std::to_string(v[6]);
  if (c->family == kUNet && c->kernel_size != 3)
    return "config kernel_size must be 3 for a PixelCNNpp, got " + std::to_string(v[5]);
  c->per_channel = std::max(c->embed_dim, 1);
  c->cin = c->channels * c->per_channel + 1;
  c->kh = (c->kernel_size + 1) / 2;
  c->pw = (c->kernel_size - 1) / 2;
  const std::string err = make_dist_spec(c->channels, c->bits, c->dist, c->nr_mix, &c->d);
  if (!err.empty() || model_only) return err;
  return parse_plan(v + kConfigLen, n - kConfigLen, c);
}

// ------------------------------------------------------------------------------------
// Layout and packing, in the plan's weight order (plan.py: gated_plan, pixelcnnpp_plan)
// ------------------------------------------------------------------------------------

namespace {

// A block of kh-row convs kw columns wide; nin: a 1x1 projection of act(skip) (split:
// of act(cat(u, ul)), in two parts).
BlockLayout block_layout(LayoutBuilder& lb, const Config& c, int kw, bool nin, bool split) {
  const int F = c.hidden, cc = c.cond_channels;
  BlockLayout B;
  for (int r = 0; r < c.kh; ++r) {
    B.c1.push_back(lb.mat(kw * 2 * F, F));
    B.c2a.push_back(lb.mat(kw * 2 * F, F));
    B.c2b.push_back(lb.mat(kw * 2 * F, F));
  }
  if (nin) B.nin = lb.mat(2 * F, F);
  if (split) B.nin_ul = lb.mat(2 * F, F);
  if (cc) {
    B.cc1 = lb.mat(2 * cc, F);
    B.cc2a = lb.mat(cc, F);
    B.cc2b = lb.mat(cc, F);
  }
  B.b1 = lb.vec(F);
  B.b2 = lb.vec(2 * F);
  return B;
}

// The block kinds of the plan: (u stream: k columns centred; ul: kh to the left) x
// (skip: none, act(x) of F channels, or split act(cat(u, ul))).
enum Skip { kNoSkip = 0, kSkip = 1, kSplit = 2 };

}  // namespace

namespace {

// Calls block(name prefix, s, k, u stream?, skip) for every block, and conv(name, cout,
// cin, kh, kw) for every other module with weights, in the plan's weight order.
template <class Block, class Conv>
void walk_weights(const Config& c, Block block, Conv conv) {
  const int64_t F = c.hidden, cin = c.cin, k = c.kernel_size, kh = c.kh, S = c.scales, nb = c.blocks;
  const bool gated = c.family == kGated;
  conv("u_init", F, cin, kh, k);
  conv("ul_init_v", F, cin, 1, k);
  conv("ul_init_h", F, cin, kh, 1);
  for (int64_t s = 0; s < S; ++s) {
    const std::string p = gated ? "" : "up_layers." + std::to_string(s) + ".";
    for (int64_t b = 0; b < nb; ++b)
      block(p + (gated ? "u_blocks." : "u_stream.") + std::to_string(b) + ".", (int)s, (int)b, true, kNoSkip);
    for (int64_t b = 0; b < nb; ++b)
      block(p + (gated ? "ul_blocks." : "ul_stream.") + std::to_string(b) + ".", (int)s, (int)b, false, kSkip);
  }
  if (gated) return;
  for (int64_t t = 0; t < S; ++t) {  // down_layers[t] runs at scale S-1-t
    const std::string p = "down_layers." + std::to_string(t) + ".";
    const int s = (int)(S - 1 - t);
    for (int b = 0; b < c.down_blocks(s); ++b) block(p + "u_stream." + std::to_string(b) + ".", s, b, true, kSkip);
    for (int b = 0; b < c.down_blocks(s); ++b) block(p + "ul_stream." + std::to_string(b) + ".", s, b, false, kSplit);
  }
  for (int64_t t = 0; t + 1 < S; ++t) {
    conv("downsize_u." + std::to_string(t), F, F, 2, 3);
    conv("downsize_ul." + std::to_string(t), F, F, 2, 2);
  }
  for (int64_t t = 0; t + 1 < S; ++t) {
    conv("upsize_u." + std::to_string(t), F, F, 2, 3);  // ConvTranspose2d: (cin, cout, 2, 3)
    conv("upsize_ul." + std::to_string(t), F, F, 2, 2);
  }
}

}  // namespace

Layout make_layout(const Config& c) {
  LayoutBuilder lb;
  Layout L;
  const int F = c.hidden, cin = c.cin, k = c.kernel_size, kh = c.kh, S = c.scales, nb = c.blocks;
  for (int r = 0; r < kh; ++r) L.u0.push_back(lb.mat(k * cin, F));
  L.u0b = lb.vec(F);
  L.ulv = lb.mat(k * cin, F);
  L.ulvb = lb.vec(F);
  for (int r = 0; r < kh; ++r) L.ulh.push_back(lb.mat(cin, F));
  L.ulhb = lb.vec(F);
  walk_weights(
      c,
      [&](const std::string&, int, int, bool u, int skip) {
        L.blocks.push_back(block_layout(lb, c, u ? k : kh, skip != kNoSkip, skip == kSplit));
      },
      [](const std::string&, int64_t, int64_t, int64_t, int64_t) {});
  L.down_u_conv.resize(S);
  L.down_ul_conv.resize(S);
  L.down_u_bias.resize(S);
  L.down_ul_bias.resize(S);
  L.up_u_conv.resize(S);
  L.up_ul_conv.resize(S);
  L.up_u_bias.resize(S);
  L.up_ul_bias.resize(S);
  for (int s = 1; s < S; ++s) {
    for (int r = 0; r < 2; ++r) L.down_u_conv[s].push_back(lb.mat(3 * F, F));
    L.down_u_bias[s] = lb.vec(F);
    for (int r = 0; r < 2; ++r) L.down_ul_conv[s].push_back(lb.mat(2 * F, F));
    L.down_ul_bias[s] = lb.vec(F);
    for (int t = 0; t < 6; ++t) L.up_u_conv[s].push_back(lb.mat(F, F));
    L.up_u_bias[s] = lb.vec(F);
    for (int t = 0; t < 4; ++t) L.up_ul_conv[s].push_back(lb.mat(F, F));
    L.up_ul_bias[s] = lb.vec(F);
  }
  L.head = lb.mat(F, (int)c.d.num_params);
  L.headb = lb.vec((int)c.d.num_params);
  int n = 0;
  for (int s = 0; s < S; ++s) n += 2 * nb + 2 * c.down_blocks(s);
  L.num_cond_blocks = c.cond_channels ? n : 0;
  L.total = lb.total;
  return L;
}


std::vector<RawSpec> raw_weight_specs(const Config& c) {
  const int64_t F = c.hidden, kh = c.kh, cc = c.cond_channels;
  std::vector<RawSpec> out;
  auto conv = [&](const std::string& name, int64_t cout, int64_t ci, int64_t h, int64_t w) {
    out.push_back({name + ".weight", {cout, ci, h, w}});
    out.push_back({name + ".bias", {cout}});
  };
  walk_weights(
      c,
      [&](const std::string& p, int, int, bool u, int skip) {
        const int64_t kw = u ? c.kernel_size : kh;
        conv(p + "conv1", F, 2 * F, kh, kw);
        if (skip) conv(p + "nin_skip", F, skip == kSplit ? 4 * F : 2 * F, 1, 1);
        conv(p + "conv2", 2 * F, 2 * F, kh, kw);
        if (cc) {
          out.push_back({p + "cond_c1.weight", {F, 2 * cc, 1, 1}});
          out.push_back({p + "cond_c2.weight", {2 * F, cc, 1, 1}});
        }
      },
      conv);
  conv("head", c.d.num_params, F, 1, 1);
  return out;
}

void pack_weights(const Config& c, const Layout& L, const std::vector<const float*>& raw, float* out) {
  std::memset(out, 0, sizeof(float) * L.total);
  const int64_t F = c.hidden, cin = c.cin, kh = c.kh, cc = c.cond_channels;
  const float* const* next = raw.data();
  size_t n = 0;  // the blocks, in the plan's order
  auto block = [&](const std::string&, int, int, bool u, int skip) {
    const BlockLayout& B = L.blocks[n++];
    const int64_t kw = u ? c.kernel_size : kh;
    ConvW w1{*next++, F, 2 * F, kh, kw};
    const float* b1 = *next++;
    const float* wn = skip ? *next++ : nullptr;
    const float* bn = skip ? *next++ : nullptr;
    ConvW w2{*next++, 2 * F, 2 * F, kh, kw};
    const float* b2 = *next++;
    for (int r = 0; r < kh; ++r) {
      fill_row(out, B.c1[r], w1, r, 0);
      fill_row(out, B.c2a[r], w2, r, 0);
      fill_row(out, B.c2b[r], w2, r, (int)F);
    }
    for (int64_t o = 0; o < F; ++o) out[B.b1.off + o] = bn ? b1[o] + bn[o] : b1[o];
    fill_vec(out, B.b2, b2);
    if (skip == kSkip) {
      fill_mat(out, B.nin, [&](int k, int n) { return wn[n * 2 * F + k]; });
    } else if (skip == kSplit) {
      // concat_elu(cat(u, ul)) = [u, ul, -u, -ul]: the u part is columns [0, F) + [2F, 3F)
      fill_mat(out, B.nin, [&](int k, int n) { return wn[n * 4 * F + (k < F ? k : F + k)]; });
      fill_mat(out, B.nin_ul, [&](int k, int n) { return wn[n * 4 * F + (k < F ? F + k : 2 * F + k)]; });
    }
    if (cc) {
      ConvW c1{*next++, F, 2 * cc, 1, 1}, c2{*next++, 2 * F, cc, 1, 1};
      fill_row(out, B.cc1, c1, 0, 0);
      fill_row(out, B.cc2a, c2, 0, 0);
      fill_row(out, B.cc2b, c2, 0, (int)F);
    }
  };
  auto conv = [&](const std::string& name, int64_t, int64_t, int64_t, int64_t) {
    if (name == "u_init") {
      ConvW w{*next++, F, cin, kh, c.kernel_size};
      for (int r = 0; r < kh; ++r) fill_row(out, L.u0[r], w, r, 0);
      fill_vec(out, L.u0b, *next++);
    } else if (name == "ul_init_v") {
      ConvW w{*next++, F, cin, 1, c.kernel_size};
      fill_row(out, L.ulv, w, 0, 0);
      fill_vec(out, L.ulvb, *next++);
    } else if (name == "ul_init_h") {
      ConvW w{*next++, F, cin, kh, 1};
      for (int r = 0; r < kh; ++r) fill_row(out, L.ulh[r], w, r, 0);
      fill_vec(out, L.ulhb, *next++);
    } else if (name.rfind("downsize_", 0) == 0) {  // downsize_*[t]: scale t -> t+1
      const bool u = name[9] == 'u' && name[10] == '.';
      const int s = std::stoi(name.substr(name.find('.') + 1)) + 1;
      ConvW w{*next++, F, F, 2, u ? 3 : 2};
      for (int r = 0; r < 2; ++r) fill_row(out, (u ? L.down_u_conv : L.down_ul_conv)[s][r], w, r, 0);
      fill_vec(out, (u ? L.down_u_bias : L.down_ul_bias)[s], *next++);
    } else {  // upsize_*[t]: scale S-1-t -> S-2-t; weight (F_in, F_out, 2, kw)
      const bool u = name[7] == 'u' && name[8] == '.';
      const int s = c.scales - 1 - std::stoi(name.substr(name.find('.') + 1));
      const float* w = *next++;
      if (u) {
        for (int r = 0; r < 2; ++r)
          for (int tap = 0; tap < 3; ++tap)
            fill_mat(out, L.up_u_conv[s][r * 3 + tap], [&](int k, int n) { return w[((k * F + n) * 2 + r) * 3 + tap]; });
      } else {
        for (int a = 0; a < 2; ++a)
          for (int b = 0; b < 2; ++b)
            fill_mat(out, L.up_ul_conv[s][a * 2 + b], [&](int k, int n) { return w[((k * F + n) * 2 + a) * 2 + b]; });
      }
      fill_vec(out, (u ? L.up_u_bias : L.up_ul_bias)[s], *next++);
    }
  };
  walk_weights(c, block, conv);
  ConvW w{*next++, c.d.num_params, F, 1, 1};
  fill_row(out, L.head, w, 0, 0);
  fill_vec(out, L.headb, *next++);
}

}  // namespace cpu
}  // namespace pixelaux
