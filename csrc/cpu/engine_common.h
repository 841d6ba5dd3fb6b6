// The parts of the CPU cached engine (engine.cpp) that do not depend on the model's
// topology: the input buffer and the head's buffers, the input layers, the last step of
// every pixel (head, sampling, write-back), the row loop of a team, and the split of a
// batch into teams (docs/design.md section 2.3).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cached_engine.h"
#include "packing.h"
#include "sampling.h"
#include "team.h"

namespace pixelaux {
namespace cpu {

// The buffers of a team every engine has (an engine's Workspace derives from it).
struct WorkspaceBase {
  int64_t b0 = 0, Bt = 0;  // the team's images: b0 .. b0 + Bt - 1
  Arena arena;
  // xin: the padded input images, (Bt, H + pad_top, W + 2 * pad_side, cin)
  float* xin = nullptr;
  int64_t pad_top = 0, pad_side = 0;
  float *eh = nullptr, *hp = nullptr, *xcur = nullptr, *tmp = nullptr;  // see want_head
};

// Requests xin: pad_top rows above the image, pad_side columns each side.
void want_input(const Config& c, int64_t H, int64_t W, int64_t pad_top, int64_t pad_side,
                WorkspaceBase* ws);
// Requests the head's buffers: eh (act of the last hidden layer, by pixel parity: the
// head of one pixel may still read it), and per thread of a team of `team` (every
// thread runs the head): hp (the head's output), xcur (the pixel just sampled, as in
// xin) and tmp (the sampler's scratch).
void want_head(const Config& c, int team, WorkspaceBase* ws);
// After allocation: the ones channel (the last input channel) of xin at every image
// position and of every xcur; it marks the image, zeros are padding.
void init_ones(const Config& c, int64_t H, int64_t W, int team, WorkspaceBase* ws);

// The part of an engine's team member that does not depend on the topology: sizes, the
// packed weights, xin, the input layers and the last step of a pixel.
template <class Workspace>
struct EngineBase : TeamMember {
  const SampleArgs& a;
  const Config& c;
  const Layout& L;
  Workspace& ws;
  const int64_t H, W, Bt, F, F2, nb, P, C, cin;
  const int64_t xrow, xstride;  // floats per xin row / per image
  float* tmp;       // this thread's sampler scratch
  float* hp;        // this thread's head output (Bt, P)
  float* xcur;      // this thread's copy of the pixel just sampled, (Bt, cin) as in xin
  int64_t npix = 0; // pixels run (the parity of the head's input buffer)

  EngineBase(const SampleArgs& args, Workspace& w, Barrier& b, int rank_, int size_, bool pixel_team_)
      : TeamMember(b, rank_, size_, pixel_team_, args.cfg->hidden, args.cfg->d.num_params, w.Bt,
                   args.W),
        a(args), c(*args.cfg), L(*args.lay), ws(w), H(args.H), W(args.W), Bt(w.Bt),
        F(c.hidden), F2(2 * c.hidden), nb(c.blocks), P(c.d.num_params), C(c.channels),
        cin(c.cin), xrow((args.W + 2 * w.pad_side) * c.cin), xstride((args.H + w.pad_top) * xrow) {
    tmp = ws.tmp + (int64_t)rank * sample_scratch(c.d);
    hp = ws.hp + (int64_t)rank * Bt * P;
    xcur = ws.xcur + (int64_t)rank * Bt * cin;
    progress = args.progress;
  }

  PackedMat mat(const MatSlot& m) const { return packed_mat(a.packed, m); }
  const float* vec(const VecSlot& v) const { return a.packed + v.off; }
  // xin at padded row xr, padded column xc of image b of the team.
  float* xin(int64_t b, int64_t xr, int64_t xc) const {
    return ws.xin + b * xstride + xr * xrow + xc * cin;
  }

  // C[m, c0:c0+nown] = bias[c0:...] (or 0) for m in [0, M), row stride ldc.
  static void init_rows(const Share& sh, float* Cp, int64_t M, int64_t ldc, const float* bias) {
    for (int64_t m = 0; m < M; ++m) {
      float* d = Cp + m * ldc + sh.c0;
      if (bias)
        std::memcpy(d, bias + sh.c0, sizeof(float) * sh.nown);
      else
        std::memset(d, 0, sizeof(float) * sh.nown);
    }
  }
  // Both halves of (M, 2F) rows from a 2F bias (this thread's channels of each).
  void init_rows2(const Share& sh, float* Cp, int64_t M, const float* bias) const {
    for (int64_t m = 0; m < M; ++m) {
      float* d = Cp + m * F2;
      std::memcpy(d + sh.c0, bias + sh.c0, sizeof(float) * sh.nown);
      std::memcpy(d + F + sh.c0, bias + F + sh.c0, sizeof(float) * sh.nown);
    }
  }

  // ---- the input layers (u_init, ul_init_v, ul_init_h), read from xin -----------------

  // ul's input layer at every position of row i, all but the current row's tap: its row
  // term row_term_init (Bt * W, F) = the down-shifted (1, k) conv of image row i-1 + the
  // rows above of the right-shifted (kh, 1) conv (column j-1). This thread's share rs.
  void input_ul_row(int64_t i, float* row_term_init) const {
    const int64_t kh = c.kh, pw = ws.pad_side;
    const float* bv = vec(L.ulvb);
    const float* bh = vec(L.ulhb);
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t j = 0; j < W; ++j) {
        float* d = row_term_init + (b * W + j) * F;
        for (int q = rs.c0; q < rs.c0 + rs.nown; ++q)
          d[q] = (i > 0 ? bv[q] : 0.f) + (j > 0 ? bh[q] : 0.f);
      }
    const PackedMat ulv = mat(L.ulv);
    for (int64_t b = 0; b < Bt; ++b) {
      if (i > 0) gemm_acc((int)W, xin(b, kh + i - 1, 0), cin, ulv, rs.fp0, rs.fp1, row_term_init + b * W * F, F);
      if (W > 1)
        for (int64_t r = 0; r + 1 < kh; ++r)
          gemm_acc((int)W - 1, xin(b, i + 1 + r, pw), cin, mat(L.ulh[r]), rs.fp0, rs.fp1,
                   row_term_init + (b * W + 1) * F, F);
    }
  }

  // u's input layer at row i into u (Bt * W, F): the (kh, k) conv over image rows
  // i-kh .. i-1 (zero at row 0). This thread's share rs.
  void input_u_row(int64_t i, float* u) const {
    init_rows(rs, u, Bt * W, F, i > 0 ? vec(L.u0b) : nullptr);
    if (i > 0)
      for (int64_t b = 0; b < Bt; ++b)
        for (int64_t r = 0; r < c.kh; ++r)
          gemm_acc((int)W, xin(b, i + r, 0), cin, mat(L.u0[r]), rs.fp0, rs.fp1, u + b * W * F, F);
  }

  // ul's input layer at pixel (i, j) into ul (Bt, F): its row term plus the current row's
  // tap of the right-shifted (kh, 1) conv, the pixel at column j-1 (xcur). Share ps.
  void input_ul_pixel(int64_t j, const float* row_term_init, float* ul) const {
    for (int64_t b = 0; b < Bt; ++b)
      std::memcpy(ul + b * F + ps.c0, row_term_init + (b * W + j) * F + ps.c0, sizeof(float) * ps.nown);
    if (j > 0) gemm_acc((int)Bt, xcur, cin, mat(L.ulh[c.kh - 1]), ps.fp0, ps.fp1, ul, F);
  }

  // ---- the head -----------------------------------------------------------------------

  // The end of pixel (i, j), once ul (the last hidden layer, (Bt, F)) is complete in this
  // thread's share ps: elu(ul), the head, the sampling, the write-back.
  //
  // One barrier before the head; then every thread runs the whole head and samples every
  // image itself (the same arithmetic, so the same pixels), keeping the pixel in its own
  // xcur for the next pixel's first GEMM, and writes its share of the images to xin / x /
  // params (read after the row barrier).
  void head_and_sample(int64_t i, int64_t j, const float* ul) {
    float* eh = ws.eh + (npix++ & 1) * Bt * F;
    for (int64_t b = 0; b < Bt; ++b) elu(ul + b * F + ps.c0, ps.nown, eh + b * F + ps.c0);
    if (pixel_team) team_point();  // eh complete (and the team may shrink to rank 0 here)
    if (quit) return;
    {
      const float* hb = vec(L.headb);
      for (int64_t b = 0; b < Bt; ++b) std::memcpy(hp + b * P, hb, sizeof(float) * P);
      gemm_acc((int)Bt, eh, F, mat(L.head), 0, L.head.NP, hp, P);
    }
    const float t = (float)a.temperature;
    const int64_t HW = H * W;
    for (int64_t b = 0; b < Bt; ++b) {
      const int64_t g = ws.b0 + b;
      const float* prm = hp + b * P;
      int64_t pix[kMaxChannels];
      int64_t* xg = a.x + g * C * HW + i * W + j;
      const bool mine = b >= ps.sb0 && b < ps.sb1;
      if (a.known && a.known[g * HW + i * W + j]) {
        for (int64_t ch = 0; ch < C; ++ch) pix[ch] = xg[ch * HW];
      } else {
        // The window reads the cell's earlier pixels from a.x: the rows above were written
        // before the row barrier, this row's by their images' owners before the team point
        // of each later pixel (every thread samples every image, each writes its share).
        const PixelWindow at{&a.window, a.x, g, i, j};
        sample_pixel(c.d, prm, a.uniforms + (g * HW + i * W + j) * c.d.num_uniforms, t, pix, tmp,
                     a.window.maps ? &at : nullptr);
        if (mine)
          for (int64_t ch = 0; ch < C; ++ch) xg[ch * HW] = pix[ch];
      }
      // Known or sampled, the pixel's input channels come from the model's table, so
      // they are the very floats its forward pass reads.
      float* xc = xcur + b * cin;
      a.table.write((int)C, pix, xc);
      if (!mine) continue;
      std::memcpy(xin(b, ws.pad_top + i, ws.pad_side + j), xc, sizeof(float) * (cin - 1));
      if (a.params) {
        float* pd = a.params + g * P * HW + i * W + j;
        for (int64_t p = 0; p < P; ++p) pd[p * HW] = prm[p];
      }
    }
  }
};

// The rows of one team member e (an EngineBase with start_row(i) and pixel(i, j)): row
// barriers, the caller's stop, progress, and (PIXELAUX_PROFILE=1) the row / pixel times
// on stderr, the model named by `label` there.
template <class Engine>
void run_rows(Engine& e, const char* label) {
  double t_row = 0, t_pix = 0;
  e.since = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < e.H && !e.quit; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!e.pixel_team && i > 0) e.team_point();  // row i-1 sampled by rank 0
    if (e.pixel_team && i > 0) e.sync();  // row i-1 complete in xin
    if (e.quit || e.stop_point()) break;  // stop_point: the caller asked to stop
    e.start_row(i);
    if (!e.pixel_team) e.sync();  // every share of the row terms is ready
    const auto t1 = std::chrono::steady_clock::now();
    if (e.pixel_team || e.rank == 0)
      for (int64_t j = 0; j < e.W && !e.quit; ++j) e.pixel(i, j);
    if (!e.quit) e.row_done();
    const auto t2 = std::chrono::steady_clock::now();
    t_row += std::chrono::duration<double>(t1 - t0).count();
    t_pix += std::chrono::duration<double>(t2 - t1).count();
  }
  if (profile_enabled() && !e.quit)
    std::fprintf(stderr,
                 "pixelaux profile%s: team of %d%s, rank %d, %lld images: rows %.4f s, pixels %.4f s%s\n",
                 label, e.team.size, e.pixel_team || e.team.size == 1 ? "" : " (row starts only)",
                 e.rank, (long long)e.Bt, t_row, t_pix,
                 e.gave_up ? " (the others were late: rank 0 went on alone)" : "");
}

// The batch split into teams (team_plan) and the images b0 .. b0 + Bt - 1 of team g.
inline TeamPlan team_plan(const SampleArgs& a, int hidden) {
  return plan_teams(a.B, a.mode, hidden, a.W, a.threads);
}
inline void team_images(const SampleArgs& a, const TeamPlan& plan, int g, int64_t* b0,
                        int64_t* Bt) {
  *b0 = a.B * g / plan.G;
  *Bt = a.B * (g + 1) / plan.G - *b0;
}

// cached_sample of an engine: one Workspace per team, make_workspace(b0, Bt, team size,
// &ws) fills and allocates it, then every thread runs its Engine's rows.
template <class Engine, class Workspace, class Make>
void sample_teams(const SampleArgs& a, Make make_workspace) {
  const TeamPlan plan = team_plan(a, a.cfg->hidden);
  std::vector<Workspace> ws(plan.G);
  for (int g = 0; g < plan.G; ++g) {
    int64_t b0, Bt;
    team_images(a, plan, g, &b0, &Bt);
    make_workspace(b0, Bt, plan.S, &ws[g]);
  }
  run_teams(plan, [&](int g, int rank, int size, bool pixel_team, Barrier& bar) {
    Engine(a, ws[g], bar, rank, size, pixel_team).run();
  });
}

// workspace_floats of an engine: the arenas' requests of every team's Workspace, which
// want_workspace(b0, Bt, team size, &ws) makes without allocating.
template <class Workspace, class Want>
int64_t count_team_floats(const SampleArgs& a, Want want_workspace) {
  const TeamPlan plan = team_plan(a, a.cfg->hidden);
  int64_t total = 0;
  for (int g = 0; g < plan.G; ++g) {
    int64_t b0, Bt;
    team_images(a, plan, g, &b0, &Bt);
    Workspace ws;
    want_workspace(b0, Bt, plan.S, &ws);
    total += ws.arena.requested();
  }
  return total;
}

}  // namespace cpu
}  // namespace pixelaux
