// The CPU cached sampling engine of a GatedPixelCNN (see cached_engine.h).
#include "cached_engine.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PIXELAUX_PAUSE() _mm_pause()
#else
#define PIXELAUX_PAUSE() ((void)0)
#endif

namespace pixelaux {
namespace cpu {

// ------------------------------------------------------------------------------------
// Configuration, layout, packing
// ------------------------------------------------------------------------------------

std::string parse_config(const int64_t* v, int64_t n, ModelConfig* c) {
  if (n != kConfigLen)
    return "config must have " + std::to_string(kConfigLen) +
           " ints [channels, bits, hidden, blocks, kernel_size, cond_channels, dist, nr_mix], got " +
           std::to_string(n);
  const char* names[kConfigLen] = {"channels", "bits", "hidden", "blocks",
                                   "kernel_size", "cond_channels", "dist", "nr_mix"};
  const int64_t lo[kConfigLen] = {1, 1, 1, 0, 1, 0, 0, 1};
  const int64_t hi[kConfigLen] = {1024, 16, 16384, 4096, 63, 16384, 1, 4096};
  for (int i = 0; i < kConfigLen; ++i)
    if (v[i] < lo[i] || v[i] > hi[i])
      return std::string("config ") + names[i] + " must be in [" + std::to_string(lo[i]) + ", " +
             std::to_string(hi[i]) + "], got " + std::to_string(v[i]);
  c->channels = (int)v[0];
  c->bits = (int)v[1];
  c->hidden = (int)v[2];
  c->blocks = (int)v[3];
  c->kernel_size = (int)v[4];
  c->cond_channels = (int)v[5];
  c->dist = (int)v[6];
  c->nr_mix = (int)v[7];
  if (c->kernel_size % 2 != 1) return "config kernel_size must be odd, got " + std::to_string(v[4]);
  c->kw = c->kernel_size;
  c->kh = (c->kernel_size + 1) / 2;
  c->pw = (c->kernel_size - 1) / 2;
  c->cin = c->channels + 1;
  c->levels = int64_t(1) << c->bits;
  if (c->dist == 0) {
    c->num_params = c->channels * c->levels;
    c->num_uniforms = c->channels;
  } else {
    const int64_t C = c->channels;
    c->num_params = c->nr_mix * (1 + 2 * C + C * (C - 1) / 2);
    c->num_uniforms = 1 + c->channels;
  }
  if (c->num_params > (int64_t(1) << 26)) return "config gives too many distribution parameters";
  return "";
}

namespace {

int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

struct LayoutBuilder {
  int64_t total = 0;
  MatSlot mat(int K, int N) {
    MatSlot m;
    m.K = K;
    m.N = N;
    m.NP = (N + kPanel - 1) / kPanel;
    m.off = total;
    total += round16((int64_t)m.NP * K * kPanel);
    return m;
  }
  VecSlot vec(int N) {
    VecSlot v;
    v.N = N;
    v.off = total;
    total += round16(N);
    return v;
  }
};

}  // namespace

Layout make_layout(const ModelConfig& c) {
  LayoutBuilder lb;
  Layout L;
  const int F = c.hidden, kh = c.kh, k = c.kw, cin = c.cin, cc = c.cond_channels;
  for (int r = 0; r < kh; ++r) L.u0.push_back(lb.mat(k * cin, F));
  L.u0b = lb.vec(F);
  L.ulv = lb.mat(k * cin, F);
  L.ulvb = lb.vec(F);
  for (int r = 0; r < kh; ++r) L.ulh.push_back(lb.mat(cin, F));
  L.ulhb = lb.vec(F);
  for (int stream = 0; stream < 2; ++stream) {
    const int kwin = stream == 0 ? k : kh;  // u: centred k columns; ul: kh columns to the left
    for (int b = 0; b < c.blocks; ++b) {
      BlockLayout B;
      for (int r = 0; r < kh; ++r) {
        B.c1.push_back(lb.mat(kwin * 2 * F, F));
        B.c2a.push_back(lb.mat(kwin * 2 * F, F));
        B.c2b.push_back(lb.mat(kwin * 2 * F, F));
      }
      if (stream == 1) B.nin = lb.mat(2 * F, F);
      if (cc) {
        B.cc1 = lb.mat(2 * cc, F);
        B.cc2a = lb.mat(cc, F);
        B.cc2b = lb.mat(cc, F);
      }
      B.b1 = lb.vec(F);
      B.b2 = lb.vec(2 * F);
      (stream == 0 ? L.ub : L.ulb).push_back(B);
    }
  }
  L.head = lb.mat(F, (int)c.num_params);
  L.headb = lb.vec((int)c.num_params);
  L.total = lb.total;
  return L;
}

std::vector<RawSpec> raw_weight_specs(const ModelConfig& c) {
  const int64_t F = c.hidden, kh = c.kh, k = c.kw, cin = c.cin, cc = c.cond_channels;
  std::vector<RawSpec> s;
  s.push_back({"u_init.weight", {F, cin, kh, k}});
  s.push_back({"u_init.bias", {F}});
  s.push_back({"ul_init_v.weight", {F, cin, 1, k}});
  s.push_back({"ul_init_v.bias", {F}});
  s.push_back({"ul_init_h.weight", {F, cin, kh, 1}});
  s.push_back({"ul_init_h.bias", {F}});
  for (int b = 0; b < c.blocks; ++b) {
    const std::string p = "u_blocks." + std::to_string(b) + ".";
    s.push_back({p + "conv1.weight", {F, 2 * F, kh, k}});
    s.push_back({p + "conv1.bias", {F}});
    s.push_back({p + "conv2.weight", {2 * F, 2 * F, kh, k}});
    s.push_back({p + "conv2.bias", {2 * F}});
    if (cc) {
      s.push_back({p + "cond_c1.weight", {F, 2 * cc, 1, 1}});
      s.push_back({p + "cond_c2.weight", {2 * F, cc, 1, 1}});
    }
  }
  for (int b = 0; b < c.blocks; ++b) {
    const std::string p = "ul_blocks." + std::to_string(b) + ".";
    s.push_back({p + "conv1.weight", {F, 2 * F, kh, kh}});
    s.push_back({p + "conv1.bias", {F}});
    s.push_back({p + "nin_skip.weight", {F, 2 * F, 1, 1}});
    s.push_back({p + "nin_skip.bias", {F}});
    s.push_back({p + "conv2.weight", {2 * F, 2 * F, kh, kh}});
    s.push_back({p + "conv2.bias", {2 * F}});
    if (cc) {
      s.push_back({p + "cond_c1.weight", {F, 2 * cc, 1, 1}});
      s.push_back({p + "cond_c2.weight", {2 * F, cc, 1, 1}});
    }
  }
  s.push_back({"head.weight", {c.num_params, F, 1, 1}});
  s.push_back({"head.bias", {c.num_params}});
  return s;
}

namespace {

// Fills a packed matrix from get(k, n).
template <class G>
void fill_mat(float* base, const MatSlot& m, G get) {
  float* d = base + m.off;
  for (int p = 0; p < m.NP; ++p)
    for (int k = 0; k < m.K; ++k)
      for (int j = 0; j < kPanel; ++j) {
        const int n = p * kPanel + j;
        d[((int64_t)p * m.K + k) * kPanel + j] = n < m.N ? get(k, n) : 0.f;
      }
}

// Conv weight (Cout, Cin, KH, KW) as a getter of the (tap column, channel) x out matrix
// of kernel row r, output channels offset by o0.
struct ConvW {
  const float* w;
  int64_t cout, cin, kh, kw;
  float at(int64_t o, int64_t c, int64_t r, int64_t s) const {
    return w[((o * cin + c) * kh + r) * kw + s];
  }
};

void fill_row(float* base, const MatSlot& m, const ConvW& cw, int r, int o0) {
  fill_mat(base, m, [&](int k, int n) {
    const int s = k / (int)cw.cin, c = k % (int)cw.cin;
    return cw.at(o0 + n, c, r, s);
  });
}

void fill_vec(float* base, const VecSlot& v, const float* src, int n0 = 0) {
  for (int i = 0; i < v.N; ++i) base[v.off + i] = src[n0 + i];
}

}  // namespace

void pack_weights(const ModelConfig& c, const Layout& L, const std::vector<const float*>& raw,
                  float* out) {
  std::memset(out, 0, sizeof(float) * L.total);
  const int64_t F = c.hidden, kh = c.kh, k = c.kw, cin = c.cin, cc = c.cond_channels;
  size_t i = 0;
  auto next = [&]() { return raw[i++]; };
  {
    ConvW w{next(), F, cin, kh, k};
    for (int r = 0; r < kh; ++r) fill_row(out, L.u0[r], w, r, 0);
    fill_vec(out, L.u0b, next());
  }
  {
    ConvW w{next(), F, cin, 1, k};
    fill_row(out, L.ulv, w, 0, 0);
    fill_vec(out, L.ulvb, next());
  }
  {
    ConvW w{next(), F, cin, kh, 1};
    for (int r = 0; r < kh; ++r) fill_row(out, L.ulh[r], w, r, 0);
    fill_vec(out, L.ulhb, next());
  }
  for (int b = 0; b < c.blocks; ++b) {
    const BlockLayout& B = L.ub[b];
    ConvW w1{next(), F, 2 * F, kh, k};
    const float* b1 = next();
    ConvW w2{next(), 2 * F, 2 * F, kh, k};
    const float* b2 = next();
    for (int r = 0; r < kh; ++r) {
      fill_row(out, B.c1[r], w1, r, 0);
      fill_row(out, B.c2a[r], w2, r, 0);
      fill_row(out, B.c2b[r], w2, r, (int)F);
    }
    fill_vec(out, B.b1, b1);
    fill_vec(out, B.b2, b2);
    if (cc) {
      ConvW c1{next(), F, 2 * cc, 1, 1}, c2{next(), 2 * F, cc, 1, 1};
      fill_row(out, B.cc1, c1, 0, 0);
      fill_row(out, B.cc2a, c2, 0, 0);
      fill_row(out, B.cc2b, c2, 0, (int)F);
    }
  }
  for (int b = 0; b < c.blocks; ++b) {
    const BlockLayout& B = L.ulb[b];
    ConvW w1{next(), F, 2 * F, kh, kh};
    const float* b1 = next();
    ConvW wn{next(), F, 2 * F, 1, 1};
    const float* bn = next();
    ConvW w2{next(), 2 * F, 2 * F, kh, kh};
    const float* b2 = next();
    for (int r = 0; r < kh; ++r) {
      fill_row(out, B.c1[r], w1, r, 0);
      fill_row(out, B.c2a[r], w2, r, 0);
      fill_row(out, B.c2b[r], w2, r, (int)F);
    }
    fill_row(out, B.nin, wn, 0, 0);
    for (int o = 0; o < F; ++o) out[B.b1.off + o] = b1[o] + bn[o];
    fill_vec(out, B.b2, b2);
    if (cc) {
      ConvW c1{next(), F, 2 * cc, 1, 1}, c2{next(), 2 * F, cc, 1, 1};
      fill_row(out, B.cc1, c1, 0, 0);
      fill_row(out, B.cc2a, c2, 0, 0);
      fill_row(out, B.cc2b, c2, 0, (int)F);
    }
  }
  {
    ConvW w{next(), c.num_params, F, 1, 1};
    fill_row(out, L.head, w, 0, 0);
    fill_vec(out, L.headb, next());
  }
}

// ------------------------------------------------------------------------------------
// Sampling: the arithmetic of pixelaux/distributions.py, step by step
// ------------------------------------------------------------------------------------
namespace {

constexpr float kLogScaleMin = -7.0f;
constexpr double kUEps = 1e-5;

// Index k with cdf[k-1] <= u < cdf[k] of softmax(logits / t): the number of
// cumulative probabilities <= u, clamped to n-1. Softmax as torch computes it
// (max-shifted exp, times 1/sum), cumsum accumulated in double as torch does on CPU.
int64_t inverse_cdf_index(const float* logits, int64_t n, float t, float u, float* tmp) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < n; ++l) {
    const float v = logits[l] / t;
    tmp[l] = v;
    mx = std::max(mx, v);
  }
  float sum = 0.f;
  for (int64_t l = 0; l < n; ++l) {
    const float e = std::exp(tmp[l] - mx);
    tmp[l] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
  double acc = 0.0;
  int64_t count = 0;
  for (int64_t l = 0; l < n; ++l) {
    acc += (double)(tmp[l] * inv);
    if ((float)acc <= u) ++count;
  }
  return std::min(count, n - 1);
}

void sample_pixel(const ModelConfig& c, const float* prm, const float* u, float t, int64_t* pix,
                  float* tmp) {
  if (c.dist == 0) {
    for (int ch = 0; ch < c.channels; ++ch)
      pix[ch] = inverse_cdf_index(prm + ch * c.levels, c.levels, t, u[ch], tmp);
    return;
  }
  const int M = c.nr_mix, C = c.channels;
  const int64_t k = inverse_cdf_index(prm, M, t, u[0], tmp);
  const float* means = prm + M;
  const float* log_scales = prm + M + C * M;
  const float* coeffs = prm + M + 2 * C * M;
  const float top = (float)(c.levels - 1);
  const float half_top = (float)((double)(c.levels - 1) / 2.0);
  const float unit = (float)(2.0 / (double)(c.levels - 1));
  const float ulo = (float)kUEps, uhi = (float)(1.0 - kUEps);
  float xs[1024];
  int pair = 0;
  for (int ch = 0; ch < C; ++ch) {
    float mean = means[ch * M + k];
    for (int cp = 0; cp < ch; ++cp) {
      const float co = std::tanh(coeffs[pair * M + k]);
      const float prod = co * xs[cp];
      mean = mean + prod;
      ++pair;
    }
    float ls = log_scales[ch * M + k];
    ls = std::isnan(ls) ? ls : std::max(ls, kLogScaleMin);
    const float uc = std::min(std::max(u[1 + ch], ulo), uhi);
    const float scale = std::exp(ls) * t;
    const float logit = std::log(uc) - std::log1p(-uc);
    const float val = mean + scale * logit;
    float p = std::nearbyint((val + 1.0f) * half_top);
    if (std::isnan(p)) p = 0.f;
    p = std::min(std::max(p, 0.f), top);
    pix[ch] = (int64_t)p;
    xs[ch] = p * unit - 1.0f;
  }
}

// ------------------------------------------------------------------------------------
// Threads
// ------------------------------------------------------------------------------------

// A spin barrier for the threads of one team: spins for up to kSpinUs, then yields the
// CPU while it waits. wait() returns how long it waited in microseconds (0 for a short
// wait): long waits mean the other threads were late (uneven work, or threads
// descheduled on an oversubscribed machine).
struct alignas(64) Barrier {
  static constexpr double kSpinUs = 10.0;
  int size = 1;
  alignas(64) std::atomic<int> count{0};
  alignas(64) std::atomic<int> gen{0};
  alignas(64) std::atomic<int> give_up{0};  // set by rank 0: the team goes on with rank 0 alone

  double wait() {
    if (size <= 1) return 0;
    const int g = gen.load(std::memory_order_acquire);
    if (count.fetch_add(1, std::memory_order_acq_rel) == size - 1) {
      count.store(0, std::memory_order_relaxed);
      gen.store(g + 1, std::memory_order_release);
      return 0;
    }
    for (int spins = 0; spins < 256; ++spins) {  // the usual case: a short wait
      if (gen.load(std::memory_order_acquire) != g) return 0;
      PIXELAUX_PAUSE();
    }
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    double us = 0;
    for (int spins = 0; gen.load(std::memory_order_acquire) == g; ++spins) {
      if (us < kSpinUs) {
        PIXELAUX_PAUSE();
      } else {
        std::this_thread::yield();
      }
      if ((spins & 15) == 0) us = std::chrono::duration<double, std::micro>(clock::now() - t0).count();
    }
    return std::chrono::duration<double, std::micro>(clock::now() - t0).count();
  }
};

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

// Scratch of one team: all buffers for its images, zero-initialised, 64-byte aligned.
struct Workspace {
  int64_t b0 = 0, Bt = 0;
  std::unique_ptr<float, FreeDeleter> mem;
  float *xin, *condrow, *condce, *u, *c1u, *c2u, *uact, *pre0, *ul, *eh, *hp, *tmp;
  std::vector<float*> U1, U2, A1, A2, pre1, pre2;  // rings: [blk * kh + slot]
};

void make_workspace(const ModelConfig& c, int64_t H, int64_t W, int64_t b0, int64_t Bt, int team,
                    Workspace* ws) {
  const int64_t F = c.hidden, kh = c.kh, pw = c.pw, cin = c.cin, cc = c.cond_channels,
                nb = c.blocks, P = c.num_params;
  const int64_t M = Bt * W;
  int64_t total = 0;
  std::vector<std::pair<float**, int64_t>> req;
  auto want = [&](float** p, int64_t n) { req.push_back({p, round16(std::max<int64_t>(n, 1))}); };
  ws->b0 = b0;
  ws->Bt = Bt;
  ws->U1.assign(nb * kh, nullptr);
  ws->U2.assign(nb * kh, nullptr);
  ws->A1.assign(nb * kh, nullptr);
  ws->A2.assign(nb * kh, nullptr);
  ws->pre1.assign(nb, nullptr);
  ws->pre2.assign(nb, nullptr);
  want(&ws->xin, Bt * (H + kh) * (W + 2 * pw) * cin);
  want(&ws->condrow, M * cc);
  want(&ws->condce, M * 2 * cc);
  want(&ws->u, M * F);
  want(&ws->c1u, M * F);
  want(&ws->c2u, M * 2 * F);
  want(&ws->uact, M * 2 * F);
  want(&ws->pre0, M * F);
  want(&ws->ul, Bt * F);
  want(&ws->eh, Bt * F);
  want(&ws->hp, Bt * P);
  want(&ws->tmp, (int64_t)team * std::max<int64_t>(c.levels, c.nr_mix));
  for (int64_t i = 0; i < nb * kh; ++i) {
    want(&ws->U1[i], Bt * (W + 2 * pw) * 2 * F);
    want(&ws->U2[i], Bt * (W + 2 * pw) * 2 * F);
    want(&ws->A1[i], Bt * (W + kh - 1) * 2 * F);
    want(&ws->A2[i], Bt * (W + kh - 1) * 2 * F);
  }
  for (int64_t i = 0; i < nb; ++i) {
    want(&ws->pre1[i], M * F);
    want(&ws->pre2[i], M * 2 * F);
  }
  for (auto& r : req) total += r.second;
  float* mem = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * total));
  if (!mem) throw std::bad_alloc();
  std::memset(mem, 0, sizeof(float) * total);
  ws->mem.reset(mem);
  int64_t off = 0;
  for (auto& r : req) {
    *r.first = mem + off;
    off += r.second;
  }
  // The input buffer: kh rows of top padding, pw columns each side; the ones channel
  // marks the image (the model's extra input channel), zeros are padding.
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j)
        ws->xin[((b * (H + kh) + kh + i) * (W + 2 * pw) + pw + j) * cin + c.channels] = 1.f;
}

// ------------------------------------------------------------------------------------
// The engine of one team (one or more threads sharing a group of images)
// ------------------------------------------------------------------------------------

// One thread's share of a team's work: output-channel panels of the hidden layers and
// of the head, the images it samples, the positions of the cond rows it prepares.
struct Share {
  int fp0 = 0, fp1 = 0, c0 = 0, nown = 0;
  int hp0 = 0, hp1 = 0;
  int64_t sb0 = 0, sb1 = 0, m0 = 0, m1 = 0;

  Share() = default;
  Share(int rank, int size, int64_t F, int64_t P, int64_t Bt, int64_t W) {
    const int NPF = (int)((F + kPanel - 1) / kPanel);
    fp0 = NPF * rank / size;
    fp1 = NPF * (rank + 1) / size;
    c0 = fp0 * kPanel;
    nown = (int)std::max<int64_t>(0, std::min<int64_t>(F, (int64_t)fp1 * kPanel) - c0);
    const int NPP = (int)((P + kPanel - 1) / kPanel);
    hp0 = NPP * rank / size;
    hp1 = NPP * (rank + 1) / size;
    sb0 = Bt * rank / size;
    sb1 = Bt * (rank + 1) / size;
    m0 = Bt * W * rank / size;
    m1 = Bt * W * (rank + 1) / size;
  }
};

constexpr double kGiveUpFraction = 0.5;

struct Engine {
  const SampleArgs& a;
  const ModelConfig& c;
  const Layout& L;
  Workspace& ws;
  Barrier& team;             // the team's barrier
  const int rank;
  int size;
  bool pixel_team;           // pixels split over the team too (else rank 0 alone)
  double waited_us = 0;      // rank 0: time spent waiting for the team since the last check
  std::chrono::steady_clock::time_point since;  // rank 0: the last check
  bool may_give_up = true;   // PIXELAUX_TEAM_GIVE_UP=0: never (for tests and benchmarks)
  bool gave_up = false;      // rank 0: the team gave up, it works alone
  bool quit = false;         // rank > 0: the team gave up, it is done
  // sizes
  const int64_t H, W, Bt, F, F2, kh, kw, pw, cin, cc, nb, P, C;
  const int64_t xrow, xstride;  // floats per xin row / per image
  const int64_t urow, arow;     // floats per u ring row / ul ring row (one image)
  Share rs, ps;                 // this thread's share of the row starts / of the pixels
  float* tmp;

  Engine(const SampleArgs& args, Workspace& w, Barrier& b, int rank_, int size_, bool pixel_team_)
      : a(args), c(*args.cfg), L(*args.lay), ws(w), team(b), rank(rank_), size(size_),
        pixel_team(pixel_team_ || size_ == 1),
        H(args.H), W(args.W), Bt(w.Bt), F(c.hidden), F2(2 * c.hidden), kh(c.kh), kw(c.kw),
        pw(c.pw), cin(c.cin), cc(c.cond_channels), nb(c.blocks), P(c.num_params),
        C(c.channels), xrow((args.W + 2 * c.pw) * c.cin), xstride((args.H + c.kh) * xrow),
        urow((args.W + 2 * c.pw) * 2 * c.hidden), arow((args.W + c.kh - 1) * 2 * c.hidden) {
    const char* env = std::getenv("PIXELAUX_TEAM_GIVE_UP");
    may_give_up = !(env && std::strcmp(env, "0") == 0);
    rs = Share(rank, size, F, P, Bt, W);
    ps = pixel_team ? rs : Share(0, 1, F, P, Bt, W);
    tmp = ws.tmp + (int64_t)rank * std::max<int64_t>(c.levels, c.nr_mix);
  }

  // Team barrier of the row starts (and of the pixels when they are split too).
  void sync() {
    if (size <= 1) return;
    const double us = team.wait();
    if (rank == 0) waited_us += us;
  }
  void pixel_sync() {
    if (pixel_team) sync();
  }
  PackedMat mat(const MatSlot& m) const {
    PackedMat p;
    p.data = a.packed + m.off;
    p.K = m.K;
    p.N = m.N;
    p.NP = m.NP;
    return p;
  }
  const float* vec(const VecSlot& v) const { return a.packed + v.off; }
  float* xin(int64_t b, int64_t xr, int64_t xc) const {
    return ws.xin + b * xstride + xr * xrow + xc * cin;
  }
  int slot(int64_t row) const { return (int)(row % kh); }

  // C[m, c0:c0+nown] = bias[c0:...] (or 0) for m in [0, M), row stride ldc.
  void init_rows(float* Cp, int64_t M, int64_t ldc, const float* bias) const {
    const int c0 = rs.c0, nown = rs.nown;
    for (int64_t m = 0; m < M; ++m) {
      float* d = Cp + m * ldc + c0;
      if (bias)
        std::memcpy(d, bias + c0, sizeof(float) * nown);
      else
        std::memset(d, 0, sizeof(float) * nown);
    }
  }

  // Vertical stream of row i and the per-row terms of the horizontal stream.
  void start_row(int64_t i) {
    const int64_t M = Bt * W;
    const int fp0 = rs.fp0, fp1 = rs.fp1, c0 = rs.c0, nown = rs.nown;
    const int64_t m0 = rs.m0, m1 = rs.m1;
    if (cc && nb) {
      for (int64_t m = m0; m < m1; ++m) {
        const int64_t b = m / W, j = m % W;
        const float* src = a.cond + ((ws.b0 + b) * cc * H + i) * W + j;
        float* row = ws.condrow + m * cc;
        for (int64_t ch = 0; ch < cc; ++ch) row[ch] = src[ch * H * W];
        concat_elu(row, (int)cc, ws.condce + m * 2 * cc, ws.condce + m * 2 * cc + cc);
      }
    }
    // First layer of the horizontal stream: down-shifted (1, k) conv of row i-1, and
    // the rows above the current one of the right-shifted (kh, 1) conv (column j-1).
    {
      const float* bv = vec(L.ulvb);
      const float* bh = vec(L.ulhb);
      for (int64_t b = 0; b < Bt; ++b)
        for (int64_t j = 0; j < W; ++j) {
          float* d = ws.pre0 + (b * W + j) * F;
          for (int q = c0; q < c0 + nown; ++q)
            d[q] = (i > 0 ? bv[q] : 0.f) + (j > 0 ? bh[q] : 0.f);
        }
      const PackedMat ulv = mat(L.ulv);
      for (int64_t b = 0; b < Bt; ++b) {
        if (i > 0) gemm_acc((int)W, xin(b, kh + i - 1, 0), cin, ulv, fp0, fp1, ws.pre0 + b * W * F, F);
        if (W > 1)
          for (int64_t r = 0; r + 1 < kh; ++r)
            gemm_acc((int)W - 1, xin(b, i + 1 + r, pw), cin, mat(L.ulh[r]), fp0, fp1,
                     ws.pre0 + (b * W + 1) * F, F);
      }
    }
    if (nb == 0) return;
    // Vertical stream, first layer: u[i] reads image rows i-kh .. i-1 (zero at row 0).
    init_rows(ws.u, M, F, i > 0 ? vec(L.u0b) : nullptr);
    if (i > 0)
      for (int64_t b = 0; b < Bt; ++b)
        for (int64_t r = 0; r < kh; ++r)
          gemm_acc((int)W, xin(b, i + r, 0), cin, mat(L.u0[r]), fp0, fp1, ws.u + b * W * F, F);
    const int s_i = slot(i);
    auto act_u_to = [&](float* ring_row) {
      for (int64_t b = 0; b < Bt; ++b)
        for (int64_t j = 0; j < W; ++j) {
          float* d = ring_row + b * urow + (pw + j) * F2;
          concat_elu(ws.u + (b * W + j) * F + c0, nown, d + c0, d + F + c0);
        }
    };
    act_u_to(ws.U1[0 * kh + s_i]);
    sync();
    for (int64_t blk = 0; blk < nb; ++blk) {
      const BlockLayout& UB = L.ub[blk];
      // conv1 over act(u) rows i-kh+1 .. i, + conditioning
      init_rows(ws.c1u, M, F, vec(UB.b1));
      if (cc) gemm_acc((int)M, ws.condce, 2 * cc, mat(UB.cc1), fp0, fp1, ws.c1u, F);
      for (int64_t r = 0; r < kh; ++r) {
        const int64_t row = i - kh + 1 + r;
        if (row < 0) continue;
        const float* ring = ws.U1[blk * kh + slot(row)];
        const PackedMat w = mat(UB.c1[r]);
        for (int64_t b = 0; b < Bt; ++b)
          gemm_acc((int)W, ring + b * urow, F2, w, fp0, fp1, ws.c1u + b * W * F, F);
      }
      {
        float* ring = ws.U2[blk * kh + s_i];
        for (int64_t b = 0; b < Bt; ++b)
          for (int64_t j = 0; j < W; ++j) {
            float* d = ring + b * urow + (pw + j) * F2;
            concat_elu(ws.c1u + (b * W + j) * F + c0, nown, d + c0, d + F + c0);
          }
      }
      sync();
      // conv2 over act(c1) rows, + conditioning, then the gate
      {
        const float* b2 = vec(UB.b2);
        for (int64_t m = 0; m < M; ++m) {
          float* d = ws.c2u + m * F2;
          std::memcpy(d + c0, b2 + c0, sizeof(float) * nown);
          std::memcpy(d + F + c0, b2 + F + c0, sizeof(float) * nown);
        }
      }
      if (cc) {
        gemm_acc((int)M, ws.condrow, cc, mat(UB.cc2a), fp0, fp1, ws.c2u, F2);
        gemm_acc((int)M, ws.condrow, cc, mat(UB.cc2b), fp0, fp1, ws.c2u + F, F2);
      }
      for (int64_t r = 0; r < kh; ++r) {
        const int64_t row = i - kh + 1 + r;
        if (row < 0) continue;
        const float* ring = ws.U2[blk * kh + slot(row)];
        const PackedMat wa = mat(UB.c2a[r]), wb = mat(UB.c2b[r]);
        for (int64_t b = 0; b < Bt; ++b) {
          gemm_acc((int)W, ring + b * urow, F2, wa, fp0, fp1, ws.c2u + b * W * F2, F2);
          gemm_acc((int)W, ring + b * urow, F2, wb, fp0, fp1, ws.c2u + b * W * F2 + F, F2);
        }
      }
      for (int64_t m = 0; m < M; ++m)
        gate_add(ws.u + m * F + c0, ws.c2u + m * F2 + c0, ws.c2u + m * F2 + F + c0, nown);
      // act(u) of this block: the 1x1 input of the horizontal block, and the next block's ring
      for (int64_t m = 0; m < M; ++m)
        concat_elu(ws.u + m * F + c0, nown, ws.uact + m * F2 + c0, ws.uact + m * F2 + F + c0);
      if (blk + 1 < nb) act_u_to(ws.U1[(blk + 1) * kh + s_i]);
      sync();
      // Horizontal block blk: everything but the current row's taps.
      const BlockLayout& HB = L.ulb[blk];
      float* p1 = ws.pre1[blk];
      float* p2 = ws.pre2[blk];
      init_rows(p1, M, F, vec(HB.b1));
      gemm_acc((int)M, ws.uact, F2, mat(HB.nin), fp0, fp1, p1, F);
      if (cc) gemm_acc((int)M, ws.condce, 2 * cc, mat(HB.cc1), fp0, fp1, p1, F);
      {
        const float* b2 = vec(HB.b2);
        for (int64_t m = 0; m < M; ++m) {
          float* d = p2 + m * F2;
          std::memcpy(d + c0, b2 + c0, sizeof(float) * nown);
          std::memcpy(d + F + c0, b2 + F + c0, sizeof(float) * nown);
        }
      }
      if (cc) {
        gemm_acc((int)M, ws.condrow, cc, mat(HB.cc2a), fp0, fp1, p2, F2);
        gemm_acc((int)M, ws.condrow, cc, mat(HB.cc2b), fp0, fp1, p2 + F, F2);
      }
      for (int64_t r = 0; r + 1 < kh; ++r) {
        const int64_t row = i - kh + 1 + r;
        if (row < 0) continue;
        const float* r1 = ws.A1[blk * kh + slot(row)];
        const float* r2 = ws.A2[blk * kh + slot(row)];
        const PackedMat w1 = mat(HB.c1[r]), wa = mat(HB.c2a[r]), wb = mat(HB.c2b[r]);
        for (int64_t b = 0; b < Bt; ++b) {
          gemm_acc((int)W, r1 + b * arow, F2, w1, fp0, fp1, p1 + b * W * F, F);
          gemm_acc((int)W, r2 + b * arow, F2, wa, fp0, fp1, p2 + b * W * F2, F2);
          gemm_acc((int)W, r2 + b * arow, F2, wb, fp0, fp1, p2 + b * W * F2 + F, F2);
        }
      }
    }
  }

  // Horizontal stream at pixel (i, j), the head, the sampling.
  void pixel(int64_t i, int64_t j) {
    const int fp0 = ps.fp0, fp1 = ps.fp1, c0 = ps.c0, nown = ps.nown, hp0 = ps.hp0, hp1 = ps.hp1;
    const int64_t sb0 = ps.sb0, sb1 = ps.sb1;
    float* ul = ws.ul;
    for (int64_t b = 0; b < Bt; ++b)
      std::memcpy(ul + b * F + c0, ws.pre0 + (b * W + j) * F + c0, sizeof(float) * nown);
    if (j > 0)  // right-shifted (kh, 1) conv, current row: the pixel at column j-1
      gemm_acc((int)Bt, xin(0, kh + i, pw + j - 1), xstride, mat(L.ulh[kh - 1]), fp0, fp1, ul, F);
    const int s_i = slot(i);
    for (int64_t blk = 0; blk < nb; ++blk) {
      const BlockLayout& HB = L.ulb[blk];
      float* r1 = ws.A1[blk * kh + s_i];
      float* r2 = ws.A2[blk * kh + s_i];
      for (int64_t b = 0; b < Bt; ++b) {
        float* d = r1 + b * arow + (kh - 1 + j) * F2;
        concat_elu(ul + b * F + c0, nown, d + c0, d + F + c0);
      }
      pixel_sync();
      float* c1 = ws.pre1[blk] + j * F;  // rows: stride W * F
      gemm_acc((int)Bt, r1 + j * F2, arow, mat(HB.c1[kh - 1]), fp0, fp1, c1, W * F);
      for (int64_t b = 0; b < Bt; ++b) {
        float* d = r2 + b * arow + (kh - 1 + j) * F2;
        concat_elu(c1 + b * W * F + c0, nown, d + c0, d + F + c0);
      }
      pixel_sync();
      float* c2 = ws.pre2[blk] + j * F2;  // rows: stride W * 2F
      gemm_acc((int)Bt, r2 + j * F2, arow, mat(HB.c2a[kh - 1]), fp0, fp1, c2, W * F2);
      gemm_acc((int)Bt, r2 + j * F2, arow, mat(HB.c2b[kh - 1]), fp0, fp1, c2 + F, W * F2);
      for (int64_t b = 0; b < Bt; ++b)
        gate_add(ul + b * F + c0, c2 + b * W * F2 + c0, c2 + b * W * F2 + F + c0, nown);
    }
    for (int64_t b = 0; b < Bt; ++b) elu(ul + b * F + c0, nown, ws.eh + b * F + c0);
    pixel_sync();
    {
      const float* hb = vec(L.headb);
      const int64_t q0 = (int64_t)hp0 * kPanel, q1 = std::min<int64_t>(P, (int64_t)hp1 * kPanel);
      if (q1 > q0)
        for (int64_t b = 0; b < Bt; ++b)
          std::memcpy(ws.hp + b * P + q0, hb + q0, sizeof(float) * (q1 - q0));
      gemm_acc((int)Bt, ws.eh, F, mat(L.head), hp0, hp1, ws.hp, P);
    }
    pixel_sync();
    const float t = (float)a.temperature;
    const int64_t HW = H * W;
    for (int64_t b = sb0; b < sb1; ++b) {
      const int64_t g = ws.b0 + b;
      const float* prm = ws.hp + b * P;
      int64_t pix[1024];
      int64_t* xg = a.x + g * C * HW + i * W + j;
      if (a.known && a.known[g * HW + i * W + j]) {
        for (int64_t ch = 0; ch < C; ++ch) pix[ch] = xg[ch * HW];
      } else {
        sample_pixel(c, prm, a.uniforms + (g * HW + i * W + j) * c.num_uniforms, t, pix, tmp);
        for (int64_t ch = 0; ch < C; ++ch) xg[ch * HW] = pix[ch];
      }
      const float unit = (float)(2.0 / (double)(c.levels - 1));
      float* xd = xin(b, kh + i, pw + j);
      for (int64_t ch = 0; ch < C; ++ch) xd[ch] = (float)pix[ch] * unit - 1.0f;
      if (a.params) {
        float* pd = a.params + g * P * HW + i * W + j;
        for (int64_t p = 0; p < P; ++p) pd[p * HW] = prm[p];
      }
    }
    if (pixel_team) team_point();  // pixel (i, j) written
  }

  // A synchronisation point of the whole team where it may shrink to rank 0 alone:
  // if rank 0 spent most of the time since the last check (at least 2 ms ago) waiting
  // for the others (they are not getting a CPU: an oversubscribed machine), the team
  // gives up and rank 0 goes on alone. The buffers are shared; only the split of the
  // work changes.
  void team_point() {
    if (size <= 1) return;
    if (rank == 0 && may_give_up) {
      const auto now = std::chrono::steady_clock::now();
      const double us = std::chrono::duration<double, std::micro>(now - since).count();
      if (us >= 2000) {
        if (waited_us > kGiveUpFraction * us) team.give_up.store(1, std::memory_order_relaxed);
        since = now;
        waited_us = 0;
      }
    }
    sync();
    if (!team.give_up.load(std::memory_order_relaxed)) return;
    if (rank != 0) {
      quit = true;
      return;
    }
    size = 1;
    pixel_team = true;
    rs = ps = Share(0, 1, F, P, Bt, W);
    gave_up = true;
  }

  void run() {
    // PIXELAUX_PROFILE=1: time of the row starts and of the pixel steps, on stderr.
    static const bool profile = [] {
      const char* e = std::getenv("PIXELAUX_PROFILE");
      return e && std::strcmp(e, "0") != 0;
    }();
    double t_row = 0, t_pix = 0;
    since = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < H && !quit; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      if (!pixel_team && i > 0) team_point();  // row i-1 sampled by rank 0
      if (quit) break;
      start_row(i);
      if (!pixel_team) sync();  // every share of the row terms is ready
      const auto t1 = std::chrono::steady_clock::now();
      if (pixel_team || rank == 0)
        for (int64_t j = 0; j < W && !quit; ++j) pixel(i, j);
      const auto t2 = std::chrono::steady_clock::now();
      t_row += std::chrono::duration<double>(t1 - t0).count();
      t_pix += std::chrono::duration<double>(t2 - t1).count();
    }
    if (profile && !quit)
      std::fprintf(stderr,
                   "pixelaux profile: team of %d%s, rank %d, %lld images: rows %.4f s, pixels %.4f s%s\n",
                   team.size, pixel_team || team.size == 1 ? "" : " (row starts only)", rank,
                   (long long)Bt, t_row, t_pix,
                   gave_up ? " (the others were late: rank 0 went on alone)" : "");
  }
};

}  // namespace

void cached_sample(const SampleArgs& a) {
  const ModelConfig& c = *a.cfg;
  int T = a.threads > 0 ? a.threads : at::get_num_threads();
#if !AT_PARALLEL_OPENMP
  T = 1;  // the team barriers need the chunks of at::parallel_for to run concurrently
#endif
  if (at::in_parallel_region()) T = 1;
  T = std::max(1, T);
  const int64_t B = a.B;
  // Teams: G groups of images, S threads each.
  int G = 1, S = 1;
  bool pixel_team = true;
  if (a.mode == 1) {
    G = (int)std::min<int64_t>(T, B);  // images over threads: no synchronisation at all
  } else if (a.mode == 2 || a.mode == 3) {
    S = T;  // one team over the output channels (of the pixels too in mode 2)
    pixel_team = a.mode == 2;
  } else if (B >= T) {
    G = T;
  } else {
    G = (int)B;  // teams of T / B threads over the output channels (each team shrinks
    S = T / G;   // to one thread if the machine is too busy for its barriers)
  }
  // No more threads in a team than it has panels of hidden channels to share.
  S = std::max(1, std::min<int>(S, (c.hidden + kPanel - 1) / kPanel));
  std::vector<Workspace> ws(G);
  for (int g = 0; g < G; ++g) {
    const int64_t b0 = B * g / G, b1 = B * (g + 1) / G;
    make_workspace(c, a.H, a.W, b0, b1 - b0, S, &ws[g]);
  }
  std::vector<Barrier> bars(G);
  for (auto& b : bars) b.size = S;
  if (G * S == 1) {
    Engine(a, ws[0], bars[0], 0, 1, true).run();
    return;
  }
  const int planned = G * S;
  std::atomic<int> tickets{0};
  std::atomic<int64_t> covered{0};
  at::parallel_for(0, planned, 1, [&](int64_t begin, int64_t end) {
    const int ticket = tickets.fetch_add(1);
    covered.fetch_add(end - begin);
    for (int spins = 0; covered.load() < planned; ++spins) {
      if (spins < 4096)
        PIXELAUX_PAUSE();
      else
        std::this_thread::yield();
    }
    const int n = tickets.load();
    if (n == planned) {
      const int g = ticket / S;
      Engine(a, ws[g], bars[g], ticket % S, S, pixel_team).run();
    } else if (ticket == 0) {
      // Fewer threads than planned (e.g. a nested call): run every team alone.
      for (int g = 0; g < G; ++g) {
        Barrier solo;
        solo.size = 1;
        Engine(a, ws[g], solo, 0, 1, true).run();
      }
    }
  });
}

}  // namespace cpu
}  // namespace pixelaux
