// The CPU cached engine (cached_engine.h): one engine for every family, the scales and
// stages of the sampling plan (pixelaux/engines/plan.py) with the config's topology. A
// GatedPixelCNN is the one-scale case (convs of kh = (k + 1) / 2 rows, the up pass only);
// a PixelCNNpp the U-net of 2-row convs. Scale s (resolution H/2**s x W/2**s) position
// (p, q) belongs to pixel (2**s p, 2**s q) and is computed once, when that pixel comes:
//
// * start_row(i), the row steps of every scale s with i % 2**s == 0 (row p = i >> s):
//   the whole row of every u value of scale s as GEMMs over the Bt*W_s positions of the
//   row (up pass, scales ascending: InputRow at scale 0, DownRow, the stride-2 conv over
//   the last two rows of the finer scale kept in last_u_win, above it; RowBlock; Keep;
//   then the down pass, scales descending: FromUp, the transposed conv's row kept in
//   u_up by row parity; RowBlock; UpRow), and every ul block's row term (RowTerm:
//   row_term_c1 / row_term_c2 = the biases, the 1x1 projection of u, the conditioning
//   and the conv taps of the rows above).
// * pixel(i, j), the pixel steps of every scale s with i, j divisible by 2**s: the ul
//   stream at (p, q) from the current-row taps only (GEMMs over the Bt images), up pass
//   ascending (InputPixel, DownPixel over the 2x2 window of last_ul_win, PixelBlock,
//   Keep), down pass descending (FromUp: ul_up, the transposed conv's 2x2 blocks kept by
//   row parity; PixelBlock; UpPixel); the head and the sampling at scale 0 (Head).
//
// Every conv input keeps a window of its last kh rows at its scale (u: pw columns of
// padding each side; ul: kh - 1 on the left), a ring indexed by row. The conditioning
// terms: computed here from cond by GEMM (GatedPixelCNN: per row for a map, once per
// image for a global cond), or given (PixelCNNpp: SampleArgs::cond_terms, in the plan's
// order). Threads as in team.h.
#include "engine_common.h"

#include <cstring>

namespace pixelaux {
namespace cpu {

namespace {

// ------------------------------------------------------------------------------------
// Buffers
// ------------------------------------------------------------------------------------

// The last `rows` rows of one conv input at one scale, (Bt, rows, width, ch), row r in
// slot r % rows; column c of the scale at index left + c (zero padding around).
struct RowWindow {
  float* data = nullptr;
  int64_t rows = 0, width = 0, ch = 0, left = 0;
  int64_t img() const { return rows * width * ch; }  // floats per image
  float* at(int64_t b, int64_t row, int64_t col) const {
    return data + ((b * rows + row % rows) * width + col) * ch;
  }
};

// A block's conditioning terms [cond_c1 (F), cond_c2 (2F)] per position: given (terms:
// (B, H_s, W_s, 3F), or one row per image with a global cond, image b of the team at
// terms + (img0 + b) * img_stride), or computed by GEMM from the row's cond (gemm: the
// block's cc1 / cc2a / cc2b). None: both null.
struct BlockCond {
  const float* terms = nullptr;
  int64_t img0 = 0, img_stride = 0;
  const BlockLayout* gemm = nullptr;
};

// Per scale s (width Ws = W >> s, Ms = Bt * Ws positions in a row).
struct ScaleBuffers {
  int64_t Ws = 0;
  float* u = nullptr;                   // (Ms, F): the u stream of the current row
  std::vector<RowWindow> up_u_win1, up_u_win2, up_ul_win1, up_ul_win2;        // [block]
  std::vector<RowWindow> down_u_win1, down_u_win2, down_ul_win1, down_ul_win2;
  // [k = 0..blocks]: act(up-pass u value k), (Ms, 2F), kept for the down pass; without
  // one, act(u) goes to Workspace::uact, for the next row term only
  std::vector<float*> u_skip;
  // the row terms of the ul blocks, [block]: conv1 (Ms, F) and conv2 (Ms, 2F)
  std::vector<float*> up_row_term_c1, up_row_term_c2, down_row_term_c1, down_row_term_c2;
  RowWindow last_u_win, last_ul_win;    // s < S-1: inputs of the stride-2 convs into s+1
  float* u_up = nullptr;                // s < S-1: (Bt, 2, Ws, F), transposed conv from s+1
  float* ul_up = nullptr;               // s < S-1: (Bt, 2, Ws, F)
  float* ul = nullptr;                  // (Bt, F): the ul stream at the current position
  std::vector<float*> ul_skip;          // [k]: act(up-pass ul value k) at (p, q), (Bt, 2F)
  std::vector<BlockCond> cond_up_u, cond_up_ul, cond_down_u, cond_down_ul;  // [block]
};

// Scratch of one team: all buffers for its images (an Arena: zeroed, 64-byte aligned).
// row_term_init: the row term of ul's first layer (row_term:ul_init in the plan); c1 /
// c2 / uact: a u block's conv1, conv2 and act(u) over the row. Conditioning computed
// here: condrow / condce, cond and concat_elu(cond) per position of the row (a map) or
// per image (a global cond); gcond: a global cond's terms per image (global_cond_terms).
struct Workspace : WorkspaceBase {
  float *row_term_init = nullptr, *c1 = nullptr, *c2 = nullptr, *uact = nullptr;
  float *condrow = nullptr, *condce = nullptr, *gcond = nullptr;
  std::vector<ScaleBuffers> sc;
};

// Whether the up pass's values are kept for a down pass (a U-net).
bool keeps_skips(const Config& c) { return c.family != kGated; }
// Whether the family's conditioning terms are computed here, from SampleArgs::cond (by
// GEMM; the others' come computed, SampleArgs::cond_terms), and whether there are any.
bool computes_cond(const Config& c) { return c.family == kGated; }
bool cond_in_engine(const Config& c) { return computes_cond(c) && c.cond_channels > 0; }

// With allocate=false only the arena's requests are made (workspace_floats counts them).
void make_workspace(const SampleArgs& a, int64_t b0, int64_t Bt, int team, Workspace* ws,
                    bool allocate = true) {
  const Config& c = *a.cfg;
  const int64_t F = c.hidden, H = a.H, W = a.W, S = c.scales, nb = c.blocks, kh = c.kh,
                pw = c.pw, cc = c.cond_channels;
  const int64_t M0 = Bt * W;
  Arena& ar = ws->arena;
  ws->b0 = b0;
  ws->Bt = Bt;
  want_input(c, H, W, kh, pw, ws);
  if (computes_cond(c)) {
    const int64_t cond_rows = a.cond_global ? Bt : M0;  // a global cond: one row per image
    ar.want(&ws->condrow, cond_rows * cc);
    ar.want(&ws->condce, cond_rows * 2 * cc);
    ar.want(&ws->gcond, a.cond_global && cc ? Bt * a.lay->num_cond_blocks * 3 * F : 0);
  }
  const bool skips = keeps_skips(c);
  ws->sc.resize(S);
  for (int64_t s = 0; s < S; ++s) ar.want(&ws->sc[s].u, (Bt * (W >> s)) * F);
  ar.want(&ws->c1, M0 * F);
  ar.want(&ws->c2, M0 * 2 * F);
  ar.want(&ws->uact, M0 * 2 * F);
  ar.want(&ws->row_term_init, M0 * F);
  auto wins = [&](std::vector<RowWindow>& v, int64_t n, int64_t Ws, int64_t left, int64_t right) {
    v.resize(n);
    for (auto& w : v) {
      w.rows = kh;
      w.width = left + Ws + right;
      w.ch = 2 * F;
      w.left = left;
      ar.want(&w.data, Bt * w.img());
    }
  };
  auto bufs = [&](std::vector<float*>& v, int64_t n, int64_t size) {
    v.assign(n, nullptr);
    for (auto& p : v) ar.want(&p, size);
  };
  for (int64_t s = 0; s < S; ++s) {
    ScaleBuffers& B = ws->sc[s];
    const int64_t Ws = W >> s, Ms = Bt * Ws, nd = c.down_blocks((int)s);
    B.Ws = Ws;
    ar.want(&B.ul, Bt * F);
    wins(B.up_u_win1, nb, Ws, pw, pw);
    wins(B.up_u_win2, nb, Ws, pw, pw);
    wins(B.up_ul_win1, nb, Ws, kh - 1, 0);
    wins(B.up_ul_win2, nb, Ws, kh - 1, 0);
    wins(B.down_u_win1, nd, Ws, pw, pw);
    wins(B.down_u_win2, nd, Ws, pw, pw);
    wins(B.down_ul_win1, nd, Ws, kh - 1, 0);
    wins(B.down_ul_win2, nd, Ws, kh - 1, 0);
    bufs(B.u_skip, skips ? nb + 1 : 0, Ms * 2 * F);
    bufs(B.up_row_term_c1, nb, Ms * F);
    bufs(B.up_row_term_c2, nb, Ms * 2 * F);
    bufs(B.down_row_term_c1, nd, Ms * F);
    bufs(B.down_row_term_c2, nd, Ms * 2 * F);
    if (s + 1 < S) {
      B.last_u_win = RowWindow{nullptr, 2, Ws + 2, F, 1};
      ar.want(&B.last_u_win.data, Bt * B.last_u_win.img());
      B.last_ul_win = RowWindow{nullptr, 2, Ws + 1, F, 1};
      ar.want(&B.last_ul_win.data, Bt * B.last_ul_win.img());
      ar.want(&B.u_up, Bt * 2 * Ws * F);
      ar.want(&B.ul_up, Bt * 2 * Ws * F);
    }
    bufs(B.ul_skip, skips ? nb + 1 : 0, Bt * 2 * F);
  }
  want_head(c, team, ws);
  if (!allocate) return;
  ar.allocate();
  init_ones(c, H, W, team, ws);
}

// The conditioning terms of every block, in the plan's order (Plan.cond_blocks): the up
// pass, scales ascending, then the down pass, scales descending; per block the u then the
// ul one. Computed here: a map's from the row's cond by GEMM; a global cond's from gcond
// (block n at gcond + n * 3F, images every num_cond_blocks * 3F floats).
void assign_conds(const SampleArgs& a, Workspace* ws) {
  const Config& c = *a.cfg;
  const Layout& L = *a.lay;
  const int64_t S = c.scales, nb = c.blocks, F3 = 3 * (int64_t)c.hidden;
  const float* const* given = a.cond_terms.empty() ? nullptr : a.cond_terms.data();
  const bool here = cond_in_engine(c), any = here || given;
  int64_t n = 0;
  auto next = [&](const BlockLayout& B) {
    BlockCond bc;
    if (!any) return bc;
    if (!here) {
      bc.terms = *given++;
      bc.img0 = ws->b0;
      bc.img_stride = a.cond_global ? F3 : 0;
    } else if (a.cond_global) {
      bc.terms = ws->gcond + n * F3;
      bc.img_stride = L.num_cond_blocks * F3;
    } else {
      bc.gemm = &B;
    }
    ++n;
    return bc;
  };
  for (int64_t s = 0; s < S; ++s) {
    ScaleBuffers& sb = ws->sc[s];
    sb.cond_up_u.assign(nb, BlockCond());
    sb.cond_up_ul.assign(nb, BlockCond());
    for (int64_t k = 0; k < nb; ++k) {
      sb.cond_up_u[k] = next(L.up_u[s][k]);
      sb.cond_up_ul[k] = next(L.up_ul[s][k]);
    }
  }
  for (int64_t s = S - 1; s >= 0; --s) {
    ScaleBuffers& sb = ws->sc[s];
    const int64_t nd = c.down_blocks((int)s);
    sb.cond_down_u.assign(nd, BlockCond());
    sb.cond_down_ul.assign(nd, BlockCond());
    for (int64_t k = 0; k < nd; ++k) {
      sb.cond_down_u[k] = next(L.down_u[s][k]);
      sb.cond_down_ul[k] = next(L.down_ul[s][k]);
    }
  }
}

// The terms of a global cond (a vector v per image) computed here, once per image before
// the rows start: for image b and block n (the plan's order), the 3F floats at gcond +
// (b * num_cond_blocks + n) * 3F are [cond_c1(concat_elu(v)) (F), cond_c2(v) (2F: value
// and gate halves)]. Each is a GEMM sum from zero (kernels.h: C += lo + hi), so a row
// adding it gets bitwise the value the per-row GEMM over an expanded map gives.
void global_cond_terms(const SampleArgs& a, Workspace* ws) {
  const Config& c = *a.cfg;
  const int64_t F = c.hidden, cc = c.cond_channels, Bt = ws->Bt;
  const int64_t ld = a.lay->num_cond_blocks * 3 * F;  // floats per image
  for (int64_t b = 0; b < Bt; ++b) {
    float* row = ws->condrow + b * cc;
    std::memcpy(row, a.cond + (ws->b0 + b) * cc, sizeof(float) * cc);
    concat_elu(row, (int)cc, ws->condce + b * 2 * cc, ws->condce + b * 2 * cc + cc);
  }
  auto terms = [&](const BlockCond& bc, const BlockLayout& BL) {
    const PackedMat c1 = packed_mat(a.packed, BL.cc1), c2a = packed_mat(a.packed, BL.cc2a),
                    c2b = packed_mat(a.packed, BL.cc2b);
    float* t = const_cast<float*>(bc.terms);
    gemm_acc((int)Bt, ws->condce, 2 * cc, c1, 0, c1.NP, t, ld);
    gemm_acc((int)Bt, ws->condrow, cc, c2a, 0, c2a.NP, t + F, ld);
    gemm_acc((int)Bt, ws->condrow, cc, c2b, 0, c2b.NP, t + 2 * F, ld);
  };
  for (int64_t s = 0; s < c.scales; ++s)
    for (int64_t k = 0; k < c.blocks; ++k) {
      terms(ws->sc[s].cond_up_u[k], a.lay->up_u[s][k]);
      terms(ws->sc[s].cond_up_ul[k], a.lay->up_ul[s][k]);
    }
  for (int64_t s = 0; s < c.scales; ++s)
    for (int64_t k = 0; k < c.down_blocks((int)s); ++k) {
      terms(ws->sc[s].cond_down_u[k], a.lay->down_u[s][k]);
      terms(ws->sc[s].cond_down_ul[k], a.lay->down_ul[s][k]);
    }
}

// ------------------------------------------------------------------------------------
// The engine of one team (one or more threads sharing a group of images)
// ------------------------------------------------------------------------------------

struct Engine : EngineBase<Workspace> {
  const int64_t S, kh, cc;

  Engine(const SampleArgs& args, Workspace& w, Barrier& b, int rank_, int size_, bool pixel_team_)
      : EngineBase(args, w, b, rank_, size_, pixel_team_), S(c.scales), kh(c.kh), cc(c.cond_channels) {}

  void run() { run_rows(*this, c.family == kGated ? "" : " (PixelCNNpp)"); }

  // ---- row helpers (this thread's output channels c0 .. c0+nown of share sh) --------

  // act(x) of the (Bt * Ws, F) row x into the window's row p (and into the
  // (Bt * Ws, 2F) buffer dst when given).
  void act_row(const Share& sh, const float* x, int64_t Ws, const RowWindow* win, int64_t p,
               float* dst) const {
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t q = 0; q < Ws; ++q) {
        const float* src = x + (b * Ws + q) * F + sh.c0;
        if (win) {
          float* d = win->at(b, p, win->left + q);
          concat_elu(src, sh.nown, d + sh.c0, d + F + sh.c0);
        }
        if (dst) {
          float* d = dst + (b * Ws + q) * F2;
          concat_elu(src, sh.nown, d + sh.c0, d + F + sh.c0);
        }
      }
  }
  // C (Bt * Ws, N) += the taps of rows row0 + r, r in [r0, r1), of a conv over win
  // (kernel row r: mats[r]; column stride cstride: 2 for the stride-2 convs, whose
  // window is of the finer scale and rows are given there).
  void conv_rows(const Share& sh, const RowWindow& win, int64_t row0, int r0, int r1,
                 const MatSlot* mats, int64_t Ws, int64_t cstride, float* Cp, int64_t ldc) const {
    for (int r = r0; r < r1; ++r) {
      const int64_t row = row0 + r;
      if (row < 0) continue;
      const PackedMat w = mat(mats[r]);
      for (int64_t b = 0; b < Bt; ++b)
        gemm_acc((int)Ws, win.at(b, row, 0), cstride * win.ch, w, sh.fp0, sh.fp1,
                 Cp + b * Ws * ldc, ldc);
    }
  }
  // Adds a block's conditioning terms at row p to the rows of Cp (stride ldc): conv1's
  // (c2 false, one half of F channels) or conv2's (c2 true, two halves).
  void add_cond(const Share& sh, const BlockCond& bc, int s, int64_t p, bool c2, float* Cp,
                int64_t ldc) const {
    const int64_t Ws = ws.sc[s].Ws, Ms = Bt * Ws, Hs = H >> s;
    if (bc.gemm) {  // from the row's cond (condrow / condce, one row per position)
      const BlockLayout& B = *bc.gemm;
      if (!c2) {
        gemm_acc((int)Ms, ws.condce, 2 * cc, mat(B.cc1), sh.fp0, sh.fp1, Cp, ldc);
      } else {
        gemm_acc((int)Ms, ws.condrow, cc, mat(B.cc2a), sh.fp0, sh.fp1, Cp, ldc);
        gemm_acc((int)Ms, ws.condrow, cc, mat(B.cc2b), sh.fp0, sh.fp1, Cp + F, ldc);
      }
      return;
    }
    if (!bc.terms) return;
    const int64_t o = c2 ? F : 0;
    const int halves = c2 ? 2 : 1;
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t q = 0; q < Ws; ++q) {
        const float* src = bc.img_stride ? bc.terms + (bc.img0 + b) * bc.img_stride + o
                                         : bc.terms + (((ws.b0 + b) * Hs + p) * Ws + q) * 3 * F + o;
        float* d = Cp + (b * Ws + q) * ldc;
        for (int h = 0; h < halves; ++h)
          for (int ch = sh.c0; ch < sh.c0 + sh.nown; ++ch) d[h * F + ch] += src[h * F + ch];
      }
  }

  // RowBlock: a u block over the whole row p of scale s: u += gate(conv2(act(conv1(act(u))
  // + nin(skip) + cond) + cond)); win1 already holds act(u). skip: act(skip) for the nin
  // (or null). Leaves act(u) in next_win (row p) and in dst (when given).
  void u_block(const Share& sh, int s, int64_t p, const BlockLayout& B, const RowWindow& win1,
               const RowWindow& win2, const float* skip, const BlockCond& cond,
               const RowWindow* next_win, float* dst) {
    ScaleBuffers& sb = ws.sc[s];
    const int64_t Ws = sb.Ws, Ms = Bt * Ws;
    init_rows(sh, ws.c1, Ms, F, vec(B.b1));
    if (skip) gemm_acc((int)Ms, skip, F2, mat(B.nin), sh.fp0, sh.fp1, ws.c1, F);
    add_cond(sh, cond, s, p, false, ws.c1, F);
    conv_rows(sh, win1, p - kh + 1, 0, (int)kh, B.c1.data(), Ws, 1, ws.c1, F);
    act_row(sh, ws.c1, Ws, &win2, p, nullptr);
    sync();
    init_rows2(sh, ws.c2, Ms, vec(B.b2));
    add_cond(sh, cond, s, p, true, ws.c2, F2);
    conv_rows(sh, win2, p - kh + 1, 0, (int)kh, B.c2a.data(), Ws, 1, ws.c2, F2);
    conv_rows(sh, win2, p - kh + 1, 0, (int)kh, B.c2b.data(), Ws, 1, ws.c2 + F, F2);
    for (int64_t m = 0; m < Ms; ++m)
      gate_add(sb.u + m * F + sh.c0, ws.c2 + m * F2 + sh.c0, ws.c2 + m * F2 + F + sh.c0, sh.nown);
    act_row(sh, sb.u, Ws, next_win, p, dst);
    sync();
  }

  // RowTerm: the row terms of a ul block at row p: row_term_c1 = b1 + nin(uact) + cond +
  // conv1 taps of the rows above; row_term_c2 = b2 + cond + conv2 taps of the rows above.
  void row_terms(const Share& sh, int s, int64_t p, const BlockLayout& B, const RowWindow& win1,
                 const RowWindow& win2, const float* uact, const BlockCond& cond, float* c1,
                 float* c2) {
    const int64_t Ws = ws.sc[s].Ws, Ms = Bt * Ws;
    init_rows(sh, c1, Ms, F, vec(B.b1));
    gemm_acc((int)Ms, uact, F2, mat(B.nin), sh.fp0, sh.fp1, c1, F);
    add_cond(sh, cond, s, p, false, c1, F);
    conv_rows(sh, win1, p - kh + 1, 0, (int)kh - 1, B.c1.data(), Ws, 1, c1, F);
    init_rows2(sh, c2, Ms, vec(B.b2));
    add_cond(sh, cond, s, p, true, c2, F2);
    conv_rows(sh, win2, p - kh + 1, 0, (int)kh - 1, B.c2a.data(), Ws, 1, c2, F2);
    conv_rows(sh, win2, p - kh + 1, 0, (int)kh - 1, B.c2b.data(), Ws, 1, c2 + F, F2);
  }

  // u row (Bt * Ws, F) -> the window's row p (own channels).
  void copy_row(const Share& sh, const float* x, int64_t Ws, const RowWindow& win, int64_t p) const {
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t q = 0; q < Ws; ++q)
        std::memcpy(win.at(b, p, win.left + q) + sh.c0, x + (b * Ws + q) * F + sh.c0, sizeof(float) * sh.nown);
  }

  // The row's cond and concat_elu(cond) per position (conditioning computed here, a map).
  void cond_row(int64_t i) const {
    for (int64_t m = rs.m0; m < rs.m1; ++m) {
      const int64_t b = m / W, j = m % W;
      const float* src = a.cond + ((ws.b0 + b) * cc * H + i) * W + j;
      float* row = ws.condrow + m * cc;
      for (int64_t ch = 0; ch < cc; ++ch) row[ch] = src[ch * H * W];
      concat_elu(row, (int)cc, ws.condce + m * 2 * cc, ws.condce + m * 2 * cc + cc);
    }
  }

  // act(up-pass u value k) of scale s: kept for the down pass, or in uact (k > 0) for the
  // next row term only.
  float* u_act(ScaleBuffers& sb, int64_t k) const {
    return !sb.u_skip.empty() ? sb.u_skip[k] : k > 0 ? ws.uact : nullptr;
  }

  // ---- per row ----------------------------------------------------------------------
  void start_row(int64_t i) {
    const Share& sh = rs;
    if (cond_in_engine(c) && !a.cond_global && nb) cond_row(i);
    input_ul_row(i, ws.row_term_init);  // InputRow: ul's first layer, rows above
    int top = 0;  // the coarsest scale of this row
    while (top + 1 < S && i % (int64_t(1) << (top + 1)) == 0) ++top;
    for (int s = 0; s <= top; ++s) {  // up pass, scales ascending
      ScaleBuffers& sb = ws.sc[s];
      const int64_t p = i >> s, Ws = sb.Ws, Ms = Bt * Ws;
      if (s == 0) {  // InputRow: u's first layer, image rows i-kh .. i-1
        input_u_row(i, sb.u);
      } else {  // DownRow: the stride-2 conv over rows 2p-1, 2p of scale s-1
        init_rows(sh, sb.u, Ms, F, vec(L.down_u_bias[s]));
        conv_rows(sh, ws.sc[s - 1].last_u_win, 2 * p - 1, 0, 2, L.down_u_conv[s].data(), Ws, 2, sb.u, F);
      }
      act_row(sh, sb.u, Ws, nb ? &sb.up_u_win1[0] : nullptr, p, u_act(sb, 0));
      if (nb == 0 && s + 1 < S) copy_row(sh, sb.u, Ws, sb.last_u_win, p);
      sync();
      for (int64_t k = 0; k < nb; ++k) {
        u_block(sh, s, p, L.up_u[s][k], sb.up_u_win1[k], sb.up_u_win2[k], nullptr, sb.cond_up_u[k],
                k + 1 < nb ? &sb.up_u_win1[k + 1] : nullptr, u_act(sb, k + 1));
        if (k + 1 == nb && s + 1 < S) {  // Keep
          copy_row(sh, sb.u, Ws, sb.last_u_win, p);
          sync();
        }
        row_terms(sh, s, p, L.up_ul[s][k], sb.up_ul_win1[k], sb.up_ul_win2[k], u_act(sb, k + 1),
                  sb.cond_up_ul[k], sb.up_row_term_c1[k], sb.up_row_term_c2[k]);
      }
    }
    for (int s = top; s >= 0; --s) {  // down pass, scales descending
      ScaleBuffers& sb = ws.sc[s];
      const int64_t p = i >> s, Ws = sb.Ws, Ms = Bt * Ws, nd = c.down_blocks(s);
      if (s + 1 < S)  // FromUp: the transposed conv's row of scale s+1 for row p
        for (int64_t m = 0; m < Ms; ++m) {
          const int64_t b = m / Ws, q = m % Ws;
          std::memcpy(sb.u + m * F + sh.c0, sb.u_up + ((b * 2 + (p & 1)) * Ws + q) * F + sh.c0,
                      sizeof(float) * sh.nown);
        }
      if (nd) {
        act_row(sh, sb.u, Ws, &sb.down_u_win1[0], p, nullptr);
        sync();
      }
      for (int64_t k = 0; k < nd; ++k) {
        const int64_t skip = s == S - 1 ? nb - 1 - k : nb - k;
        u_block(sh, s, p, L.down_u[s][k], sb.down_u_win1[k], sb.down_u_win2[k], sb.u_skip[skip],
                sb.cond_down_u[k], k + 1 < nd ? &sb.down_u_win1[k + 1] : nullptr, ws.uact);
        row_terms(sh, s, p, L.down_ul[s][k], sb.down_ul_win1[k], sb.down_ul_win2[k], ws.uact,
                  sb.cond_down_ul[k], sb.down_row_term_c1[k], sb.down_row_term_c2[k]);
      }
      if (s > 0) {  // UpRow: rows 2p, 2p+1 of scale s-1
        sync();
        ScaleBuffers& fine = ws.sc[s - 1];
        const int64_t Wf = fine.Ws;
        for (int r = 0; r < 2; ++r) {
          float* out = fine.u_up + r * Wf * F;  // image b at + b * 2 * Wf * F
          const int64_t img = 2 * Wf * F;
          for (int64_t b = 0; b < Bt; ++b) {
            init_rows(sh, out + b * img, Wf, F, vec(L.up_u_bias[s]));
            const float* in = sb.u + b * Ws * F;
            const auto& wt = L.up_u_conv[s];
            // even columns 2q: tap 1 of q; odd 2q+1: tap 2 of q and tap 0 of q+1
            gemm_acc((int)Ws, in, F, mat(wt[r * 3 + 1]), sh.fp0, sh.fp1, out + b * img, 2 * F);
            gemm_acc((int)Ws, in, F, mat(wt[r * 3 + 2]), sh.fp0, sh.fp1, out + b * img + F, 2 * F);
            gemm_acc((int)Ws - 1, in + F, F, mat(wt[r * 3 + 0]), sh.fp0, sh.fp1, out + b * img + F, 2 * F);
          }
        }
      }
    }
  }

  // ---- per pixel --------------------------------------------------------------------

  // act(ul) of every image into column q of the window's row p and into dst (Bt, 2F).
  void act_px(const Share& sh, const float* ul, const RowWindow* win, int64_t p, int64_t q,
              float* dst) const {
    for (int64_t b = 0; b < Bt; ++b) {
      const float* src = ul + b * F + sh.c0;
      if (win) {
        float* d = win->at(b, p, win->left + q);
        concat_elu(src, sh.nown, d + sh.c0, d + F + sh.c0);
      }
      if (dst) concat_elu(src, sh.nown, dst + b * F2 + sh.c0, dst + b * F2 + F + sh.c0);
    }
  }

  // PixelBlock: a ul block at (p, q) of scale s: win1 already holds act(ul) at (p, q);
  // c1row / c2row its row terms (Bt * Ws rows); skip: act(up-pass ul) for the down-pass
  // nin (or null).
  void ul_block(const Share& sh, int s, int64_t p, int64_t q, const BlockLayout& B,
                const RowWindow& win1, const RowWindow& win2, float* c1row, float* c2row,
                const float* skip, const RowWindow* next_win, float* dst) {
    ScaleBuffers& sb = ws.sc[s];
    const int64_t Ws = sb.Ws;
    float* c1 = c1row + q * F;  // rows: stride Ws * F
    if (skip) gemm_acc((int)Bt, skip, F2, mat(B.nin_ul), sh.fp0, sh.fp1, c1, Ws * F);
    gemm_acc((int)Bt, win1.at(0, p, q), win1.img(), mat(B.c1[kh - 1]), sh.fp0, sh.fp1, c1, Ws * F);
    for (int64_t b = 0; b < Bt; ++b) {
      float* d = win2.at(b, p, win2.left + q);
      concat_elu(c1 + b * Ws * F + sh.c0, sh.nown, d + sh.c0, d + F + sh.c0);
    }
    pixel_sync();
    float* c2 = c2row + q * F2;  // rows: stride Ws * 2F
    gemm_acc((int)Bt, win2.at(0, p, q), win2.img(), mat(B.c2a[kh - 1]), sh.fp0, sh.fp1, c2, Ws * F2);
    gemm_acc((int)Bt, win2.at(0, p, q), win2.img(), mat(B.c2b[kh - 1]), sh.fp0, sh.fp1, c2 + F, Ws * F2);
    for (int64_t b = 0; b < Bt; ++b)
      gate_add(sb.ul + b * F + sh.c0, c2 + b * Ws * F2 + sh.c0, c2 + b * Ws * F2 + F + sh.c0, sh.nown);
    act_px(sh, sb.ul, next_win, p, q, dst);
  }

  // ul (Bt, F) -> column q of the window's row p (own channels).
  void copy_px(const Share& sh, const float* ul, const RowWindow& win, int64_t p, int64_t q) const {
    for (int64_t b = 0; b < Bt; ++b)
      std::memcpy(win.at(b, p, win.left + q) + sh.c0, ul + b * F + sh.c0, sizeof(float) * sh.nown);
  }

  float* ul_act(ScaleBuffers& sb, int64_t k) const { return sb.ul_skip.empty() ? nullptr : sb.ul_skip[k]; }

  void pixel(int64_t i, int64_t j) {
    const Share& sh = ps;
    int top = 0;
    while (top + 1 < S && i % (int64_t(1) << (top + 1)) == 0 && j % (int64_t(1) << (top + 1)) == 0) ++top;
    for (int s = 0; s <= top; ++s) {  // up pass, scales ascending
      ScaleBuffers& sb = ws.sc[s];
      const int64_t p = i >> s, q = j >> s;
      if (s == 0) {  // InputPixel: ul's first layer
        input_ul_pixel(j, ws.row_term_init, sb.ul);
      } else {  // DownPixel: the stride-2 conv over the 2x2 window (2p-1 .. 2p, 2q-1 .. 2q) of scale s-1
        const RowWindow& lw = ws.sc[s - 1].last_ul_win;
        init_rows(sh, sb.ul, Bt, F, vec(L.down_ul_bias[s]));
        for (int r = 0; r < 2; ++r) {
          const int64_t row = 2 * p - 1 + r;
          if (row < 0) continue;
          gemm_acc((int)Bt, lw.at(0, row, 2 * q), lw.img(), mat(L.down_ul_conv[s][r]), sh.fp0,
                   sh.fp1, sb.ul, F);
        }
      }
      act_px(sh, sb.ul, nb ? &sb.up_ul_win1[0] : nullptr, p, q, ul_act(sb, 0));
      if (nb == 0 && s + 1 < S) copy_px(sh, sb.ul, sb.last_ul_win, p, q);
      pixel_sync();
      for (int64_t k = 0; k < nb; ++k) {
        ul_block(sh, s, p, q, L.up_ul[s][k], sb.up_ul_win1[k], sb.up_ul_win2[k], sb.up_row_term_c1[k],
                 sb.up_row_term_c2[k], nullptr, k + 1 < nb ? &sb.up_ul_win1[k + 1] : nullptr, ul_act(sb, k + 1));
        if (k + 1 == nb && s + 1 < S) copy_px(sh, sb.ul, sb.last_ul_win, p, q);  // Keep
        if (k + 1 < nb || keeps_skips(c)) pixel_sync();  // (the head has a team point)
      }
    }
    for (int s = top; s >= 0; --s) {  // down pass, scales descending
      ScaleBuffers& sb = ws.sc[s];
      const int64_t p = i >> s, q = j >> s, nd = c.down_blocks(s);
      if (s + 1 < S)  // FromUp
        for (int64_t b = 0; b < Bt; ++b)
          std::memcpy(sb.ul + b * F + sh.c0, sb.ul_up + ((b * 2 + (p & 1)) * sb.Ws + q) * F + sh.c0,
                      sizeof(float) * sh.nown);
      if (nd) {
        act_px(sh, sb.ul, &sb.down_ul_win1[0], p, q, nullptr);
        pixel_sync();
      }
      for (int64_t k = 0; k < nd; ++k) {
        const int64_t skip = s == S - 1 ? nb - 1 - k : nb - k;
        ul_block(sh, s, p, q, L.down_ul[s][k], sb.down_ul_win1[k], sb.down_ul_win2[k],
                 sb.down_row_term_c1[k], sb.down_row_term_c2[k], sb.ul_skip[skip],
                 k + 1 < nd ? &sb.down_ul_win1[k + 1] : nullptr, nullptr);
        pixel_sync();
      }
      if (s > 0) {  // UpPixel: the 2x2 block (2p .. 2p+1, 2q .. 2q+1) of scale s-1 it feeds
        ScaleBuffers& fine = ws.sc[s - 1];
        const int64_t Wf = fine.Ws;
        for (int ar = 0; ar < 2; ++ar)
          for (int ac = 0; ac < 2; ++ac) {
            float* out = fine.ul_up + (ar * Wf + 2 * q + ac) * F;  // image b at + b * 2 * Wf * F
            init_rows(sh, out, Bt, 2 * Wf * F, vec(L.up_ul_bias[s]));
            gemm_acc((int)Bt, sb.ul, F, mat(L.up_ul_conv[s][ar * 2 + ac]), sh.fp0, sh.fp1, out, 2 * Wf * F);
          }
      }
    }
    head_and_sample(i, j, ws.sc[0].ul);  // Head
  }
};

}  // namespace

void cached_sample(const SampleArgs& a) {
  sample_teams<Engine, Workspace>(a, [&](int64_t b0, int64_t Bt, int team, Workspace* ws) {
    make_workspace(a, b0, Bt, team, ws);
    assign_conds(a, ws);
    if (cond_in_engine(*a.cfg) && a.cond_global) global_cond_terms(a, ws);
  });
}

int64_t workspace_floats(const SampleArgs& a) {
  return count_team_floats<Workspace>(a, [&](int64_t b0, int64_t Bt, int team, Workspace* ws) {
    make_workspace(a, b0, Bt, team, ws, /*allocate=*/false);
  });
}

}  // namespace cpu
}  // namespace pixelaux
