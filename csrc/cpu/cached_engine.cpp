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
  if (n < 6) return bad + "is missing, got " + std::to_string(n) + " ints";
  for (int i = 0; i < 6; ++i)
    if (v[i] < 0 || v[i] > (int64_t(1) << 20)) return bad + "has a bad count " + std::to_string(v[i]);
  const int64_t nw = v[0], nh = v[1], nv = v[2], nr = v[3], np = v[4], ng = v[5];
  const int64_t want = 6 + 5 * nw + 2 * nh + 2 * nv + kStepInts * (nr + np) + kWeightInts * ng;
  if (n != want) return bad + "must have " + std::to_string(want) + " ints, got " + std::to_string(n);
  const int64_t S = c->scales, F = c->hidden;
  auto in = [](int64_t x, int64_t lo, int64_t hi) { return x >= lo && x < hi; };
  PackedPlan& P = c->plan;
  // The weight groups (after the steps): each block and conv numbered within its kind.
  int nblocks = 0, nconvs = 0, ninput = 0, nhead = 0, ncond = 0;
  for (const int64_t* g = v + n - kWeightInts * ng; g < v + n; g += kWeightInts) {
    PackedWeights w;
    const std::string err = bad + "has a bad weight group " + std::to_string(P.weights.size());
    if (!in(g[0], 0, kNumWeightKinds)) return err;
    w.kind = (int)g[0];
    if (w.kind == kBlock) {
      if (!in(g[1], 1, kMaxKernelSize + 1) || !in(g[2], 0, 3) || !in(g[3], 0, 2) || (g[3] && !c->cond_channels))
        return err;
      w.kw = (int)g[1];
      w.skip = (int)g[2];
      w.cond = (int)g[3];
      w.index = nblocks++;
      ncond += w.cond;
    } else {
      if (g[1] != -1 || g[2] != -1 || g[3] != -1) return err;
      ninput += w.kind == kInputLayers;
      nhead += w.kind == kHeadLayer;
      if (w.kind != kInputLayers && w.kind != kHeadLayer) w.index = nconvs++;
    }
    P.weights.push_back(w);
  }
  if (ninput != 1 || nhead != 1) return bad + "must have one weight group of the input layers and one of the head";
  P.cond_scales.assign(ncond, -1);
  // A step's weight group x of kind `kind`: its index among the blocks or convs.
  auto weights = [&](int64_t x, int kind, int* out) {
    if (!in(x, 0, ng) || P.weights[x].kind != kind) return false;
    *out = P.weights[x].index;
    return true;
  };
  const int64_t* p = v + 6;
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
             value(a[1], vkind, &st.out) && weights(a[2], st.op == kDownRow ? kDownU : kDownUl, &st.conv);
        break;
      case kFromUp:
        ok = holder(a[0], s, &st.holder) && value(a[1], vkind, &st.out);
        break;
      case kRowBlock:
      case kPixelBlock:
      case kRowTerm: {
        // a block's conditioning: by a row step, once, iff its group has cond_c1 / cond_c2
        st.cond = (int)a[1];
        ok = weights(a[0], kBlock, &st.block) && value(a[2], st.op == kRowTerm ? kRowValue : vkind, &st.x) &&
             value(a[3], st.op == kRowTerm ? kRowTermValue : vkind, &st.out) && window(a[4], s, &st.win1) &&
             window(a[5], s, &st.win2);
        const bool cond = ok && P.weights[a[0]].cond;
        if (ok && st.op == kPixelBlock) ok = st.cond == -1;
        else if (ok) ok = cond ? in(st.cond, 0, ncond) && P.cond_scales[st.cond] == -1 : st.cond == -1;
        if (ok && cond) P.cond_scales[st.cond] = s;
        if (ok && st.op != kRowTerm && a[6] != -1) ok = value(a[6], vkind, &st.skip);
        if (ok && st.op == kPixelBlock) ok = value(a[7], kRowTermValue, &st.term);
        break;
      }
      case kKeep:
        ok = value(a[0], vkind, &st.x) && window(a[1], s, &st.win) && P.windows[st.win].channels == F;
        break;
      case kUpRow:
      case kUpPixel:
        ok = s > 0 && value(a[0], vkind, &st.x) && holder(a[1], s - 1, &st.holder) &&
             weights(a[2], st.op == kUpRow ? kUpU : kUpUl, &st.conv);
        break;
      case kHead:
        ok = s == 0 && value(a[0], kPixelValue, &st.x) && i == nr + np - 1;
        break;
    }
    if (!ok) return err;
    (pixel ? P.pixel_steps : P.row_steps).push_back(st);
  }
  for (int s : P.cond_scales)
    if (s < 0) return bad + "must give every block with conditioning weights its terms in a row step";
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

std::string parse_config(const int64_t* v, int64_t n, Config* c) {
  static const char* names[kConfigLen] = {"cond_in_engine", "channels", "bits", "hidden", "blocks", "kernel_size",
                                          "scales", "cond_channels", "dist", "nr_mix", "embed_dim"};
  if (n < kConfigLen) {
    std::string all;
    for (int i = 0; i < kConfigLen; ++i) all += std::string(i ? ", " : "") + names[i];
    return "config must have " + std::to_string(kConfigLen) + " ints [" + all + "] and the packed plan, got " +
           std::to_string(n);
  }
  const int64_t lo[kConfigLen] = {0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 0};
  const int64_t hi[kConfigLen] = {1, kMaxChannels, 16, 16384, 4096, kMaxKernelSize,
                                  kMaxScales, 16384, 255, 4096, kMaxEmbedDim};  // dist: make_dist_spec knows the kinds
  for (int i = 0; i < kConfigLen; ++i)
    if (v[i] < lo[i] || v[i] > hi[i])
      return std::string("config ") + names[i] + " must be in [" + std::to_string(lo[i]) + ", " +
             std::to_string(hi[i]) + "], got " + std::to_string(v[i]);
  c->cond_in_engine = (int)v[0];
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
  if (c->cond_in_engine && c->scales != 1)  // its cond GEMMs run at one scale
    return "config scales must be 1 when the engine computes the cond terms (cond_in_engine), got " +
           std::to_string(v[6]);
  c->per_channel = std::max(c->embed_dim, 1);
  c->cin = c->channels * c->per_channel + 1;
  c->kh = (c->kernel_size + 1) / 2;
  c->pw = (c->kernel_size - 1) / 2;
  const std::string err = make_dist_spec(c->channels, c->bits, c->dist, c->nr_mix, &c->d);
  if (!err.empty()) return err;
  return parse_plan(v + kConfigLen, n - kConfigLen, c);
}

// ------------------------------------------------------------------------------------
// Layout and packing, in the order of the plan's weight groups (PackedPlan::weights)
// ------------------------------------------------------------------------------------

namespace {

// A block of kh-row convs kw columns wide; nin: a 1x1 projection of act(skip) (split:
// of act(cat(u, ul)), in two parts); cond: its conditioning 1x1 convs.
BlockLayout block_layout(LayoutBuilder& lb, const Config& c, int kw, bool nin, bool split, bool cond) {
  const int F = c.hidden, cc = c.cond_channels;
  BlockLayout B;
  for (int r = 0; r < c.kh; ++r) {
    B.c1.push_back(lb.mat(kw * 2 * F, F));
    B.c2a.push_back(lb.mat(kw * 2 * F, F));
    B.c2b.push_back(lb.mat(kw * 2 * F, F));
  }
  if (nin) B.nin = lb.mat(2 * F, F);
  if (split) B.nin_ul = lb.mat(2 * F, F);
  if (cond) {
    B.cc1 = lb.mat(2 * cc, F);
    B.cc2a = lb.mat(cc, F);
    B.cc2b = lb.mat(cc, F);
  }
  B.b1 = lb.vec(F);
  B.b2 = lb.vec(2 * F);
  return B;
}

// The width of a stride-2 or transposed conv: 3 (u), 2 (ul).
int conv_width(int kind) { return kind == kDownU || kind == kUpU ? 3 : 2; }

}  // namespace

Layout make_layout(const Config& c) {
  LayoutBuilder lb;
  Layout L;
  const int F = c.hidden, cin = c.cin, k = c.kernel_size, kh = c.kh;
  for (const PackedWeights& w : c.plan.weights) {
    switch (w.kind) {
      case kInputLayers:
        for (int r = 0; r < kh; ++r) L.u0.push_back(lb.mat(k * cin, F));
        L.u0b = lb.vec(F);
        L.ulv = lb.mat(k * cin, F);
        L.ulvb = lb.vec(F);
        for (int r = 0; r < kh; ++r) L.ulh.push_back(lb.mat(cin, F));
        L.ulhb = lb.vec(F);
        break;
      case kBlock:
        L.blocks.push_back(block_layout(lb, c, w.kw, w.skip != kNoSkip, w.skip == kSplit, w.cond));
        break;
      case kDownU:
      case kDownUl: {  // per kernel row
        ConvLayout cv;
        for (int r = 0; r < 2; ++r) cv.mats.push_back(lb.mat(conv_width(w.kind) * F, F));
        cv.bias = lb.vec(F);
        L.convs.push_back(cv);
        break;
      }
      case kUpU:
      case kUpUl: {  // per (row parity, tap / column parity)
        ConvLayout cv;
        for (int t = 0; t < 2 * conv_width(w.kind); ++t) cv.mats.push_back(lb.mat(F, F));
        cv.bias = lb.vec(F);
        L.convs.push_back(cv);
        break;
      }
      case kHeadLayer:
        L.head = lb.mat(F, (int)c.d.num_params);
        L.headb = lb.vec((int)c.d.num_params);
        break;
    }
  }
  L.num_cond_blocks = (int)c.plan.cond_scales.size();
  L.total = lb.total;
  return L;
}

std::vector<RawSpec> raw_weight_specs(const Config& c) {
  const int64_t F = c.hidden, cin = c.cin, k = c.kernel_size, kh = c.kh, cc = c.cond_channels;
  static const char* kinds[kNumWeightKinds] = {"input layers", "block", "stride-2 conv u", "stride-2 conv ul",
                                               "transposed conv u", "transposed conv ul", "head"};
  std::vector<RawSpec> out;
  for (size_t g = 0; g < c.plan.weights.size(); ++g) {
    const PackedWeights& w = c.plan.weights[g];
    auto add = [&](const std::string& part, std::vector<int64_t> shape) {
      out.push_back({"weight " + std::to_string(out.size()) + " (group " + std::to_string(g) + ", " + kinds[w.kind] +
                         ": " + part + ")",
                     std::move(shape)});
    };
    auto conv = [&](const std::string& part, int64_t cout, int64_t ci, int64_t h, int64_t wd) {
      add(part + ".weight", {cout, ci, h, wd});
      add(part + ".bias", {cout});
    };
    switch (w.kind) {
      case kInputLayers:
        conv("u", F, cin, kh, k);
        conv("ul_v", F, cin, 1, k);
        conv("ul_h", F, cin, kh, 1);
        break;
      case kBlock:
        conv("conv1", F, 2 * F, kh, w.kw);
        if (w.skip != kNoSkip) conv("nin_skip", F, w.skip == kSplit ? 4 * F : 2 * F, 1, 1);
        conv("conv2", 2 * F, 2 * F, kh, w.kw);
        if (w.cond) {
          add("cond_c1.weight", {F, 2 * cc, 1, 1});
          add("cond_c2.weight", {2 * F, cc, 1, 1});
        }
        break;
      case kDownU:
      case kDownUl:
      case kUpU:
      case kUpUl:  // a ConvTranspose2d's weight is (cin, cout, 2, kw)
        conv("conv", F, F, 2, conv_width(w.kind));
        break;
      case kHeadLayer:
        conv("conv", c.d.num_params, F, 1, 1);
        break;
    }
  }
  return out;
}

void pack_weights(const Config& c, const Layout& L, const std::vector<const float*>& raw, float* out) {
  std::memset(out, 0, sizeof(float) * L.total);
  const int64_t F = c.hidden, cin = c.cin, k = c.kernel_size, kh = c.kh, cc = c.cond_channels;
  const float* const* next = raw.data();
  for (const PackedWeights& g : c.plan.weights) {
    switch (g.kind) {
      case kInputLayers: {
        ConvW u{*next++, F, cin, kh, k};
        for (int r = 0; r < kh; ++r) fill_row(out, L.u0[r], u, r, 0);
        fill_vec(out, L.u0b, *next++);
        ConvW v{*next++, F, cin, 1, k};
        fill_row(out, L.ulv, v, 0, 0);
        fill_vec(out, L.ulvb, *next++);
        ConvW h{*next++, F, cin, kh, 1};
        for (int r = 0; r < kh; ++r) fill_row(out, L.ulh[r], h, r, 0);
        fill_vec(out, L.ulhb, *next++);
        break;
      }
      case kBlock: {
        const BlockLayout& B = L.blocks[g.index];
        ConvW w1{*next++, F, 2 * F, kh, g.kw};
        const float* b1 = *next++;
        const float* wn = g.skip != kNoSkip ? *next++ : nullptr;
        const float* bn = g.skip != kNoSkip ? *next++ : nullptr;
        ConvW w2{*next++, 2 * F, 2 * F, kh, g.kw};
        const float* b2 = *next++;
        for (int r = 0; r < kh; ++r) {
          fill_row(out, B.c1[r], w1, r, 0);
          fill_row(out, B.c2a[r], w2, r, 0);
          fill_row(out, B.c2b[r], w2, r, (int)F);
        }
        for (int64_t o = 0; o < F; ++o) out[B.b1.off + o] = bn ? b1[o] + bn[o] : b1[o];
        fill_vec(out, B.b2, b2);
        if (g.skip == kSkip) {
          fill_mat(out, B.nin, [&](int k, int n) { return wn[n * 2 * F + k]; });
        } else if (g.skip == kSplit) {
          // concat_elu(cat(u, ul)) = [u, ul, -u, -ul]: the u part is columns [0, F) + [2F, 3F)
          fill_mat(out, B.nin, [&](int k, int n) { return wn[n * 4 * F + (k < F ? k : F + k)]; });
          fill_mat(out, B.nin_ul, [&](int k, int n) { return wn[n * 4 * F + (k < F ? F + k : 2 * F + k)]; });
        }
        if (g.cond) {
          ConvW c1{*next++, F, 2 * cc, 1, 1}, c2{*next++, 2 * F, cc, 1, 1};
          fill_row(out, B.cc1, c1, 0, 0);
          fill_row(out, B.cc2a, c2, 0, 0);
          fill_row(out, B.cc2b, c2, 0, (int)F);
        }
        break;
      }
      case kDownU:
      case kDownUl: {
        const ConvLayout& cv = L.convs[g.index];
        ConvW w{*next++, F, F, 2, conv_width(g.kind)};
        for (int r = 0; r < 2; ++r) fill_row(out, cv.mats[r], w, r, 0);
        fill_vec(out, cv.bias, *next++);
        break;
      }
      case kUpU:
      case kUpUl: {  // weight (F_in, F_out, 2, kw): mats [row parity * kw + column tap]
        const ConvLayout& cv = L.convs[g.index];
        const int kw = conv_width(g.kind);
        const float* w = *next++;
        for (int r = 0; r < 2; ++r)
          for (int t = 0; t < kw; ++t)
            fill_mat(out, cv.mats[r * kw + t], [&](int k, int n) { return w[((k * F + n) * 2 + r) * kw + t]; });
        fill_vec(out, cv.bias, *next++);
        break;
      }
      case kHeadLayer: {
        ConvW w{*next++, c.d.num_params, F, 1, 1};
        fill_row(out, L.head, w, 0, 0);
        fill_vec(out, L.headb, *next++);
        break;
      }
    }
  }
}

}  // namespace cpu
}  // namespace pixelaux
