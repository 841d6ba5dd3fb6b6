// The CPU cached engine (cached_engine.h): one engine for every family, a walker of the
// packed sampling plan (pixelaux/engines/plan.py; cached_cpp.pack_plan, parsed into
// Config::plan). Scale s (resolution H/2**s x W/2**s) position (p, q) belongs to pixel
// (2**s p, 2**s q) and is computed once, when that pixel comes:
//
// * start_row(i): the row steps of every scale s with i % 2**s == 0 (row p = i >> s), in
//   the plan's order, as GEMMs over the Bt*W_s positions of the row: InputRow (u's and
//   ul's first layers), DownRow (the stride-2 conv over a window of the finer scale),
//   FromUp (a holder's row at the row's parity), RowBlock (a u block), RowTerm (a ul
//   block's row term: its biases, its 1x1 projection of u, its conditioning and the conv
//   taps of the rows above, for conv1 and conv2), Keep, UpRow (the transposed conv into
//   a holder).
// * pixel(i, j): the pixel steps of every scale s with i, j divisible by 2**s, from the
//   current-row taps only (GEMMs over the Bt images): InputPixel, DownPixel, FromUp,
//   PixelBlock (a ul block: its row term at q plus the current row's taps), Keep, UpPixel,
//   and Head (the head and the sampling).
//
// Every conv input is a window of its last rows at its scale (plan.Window), a ring by
// row. A GatedPixelCNN is the one-scale plan (kh-row convs, the up pass only), a
// PixelCNNpp the U-net of 2-row convs. The conditioning terms: computed here from cond by
// GEMM (GatedPixelCNN: per row for a map, once per image for a global cond), or given
// (PixelCNNpp: SampleArgs::cond_terms, in the plan's order). Threads as in team.h: a
// step writes this thread's channels of its outputs; one that reads every channel of a
// buffer written by the step before first meets the team at a barrier (a RowTerm and the
// RowBlock after it share one).
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
    const int64_t slot = rows == 2 ? row & 1 : row % rows;  // (2 rows: no division)
    return data + ((b * rows + slot) * width + col) * ch;
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

// Scratch of one team: all buffers for its images (an Arena: zeroed, 64-byte aligned):
// the plan's windows, holders ((Bt, 2, W_s, F) by row parity) and values (a row: (Bt *
// W_s, F); a row term: conv1's (Bt * W_s, F) then conv2's (Bt * W_s, 2F); a pixel: (Bt,
// F)); c1 / c2: a u block's conv1 and conv2 over the row; xact / skipact / pskip:
// concat_elu of a row term's input, of a u block's and of a ul block's skip. Conditioning
// computed here: condrow / condce, cond and concat_elu(cond) per position of the row (a
// map) or per image (a global cond); gcond: a global cond's terms per image
// (global_cond_terms); conds: every block's terms, by block.
struct Workspace : WorkspaceBase {
  std::vector<RowWindow> windows;
  std::vector<float*> holders, values;
  float *c1 = nullptr, *c2 = nullptr, *xact = nullptr, *skipact = nullptr, *pskip = nullptr;
  float *condrow = nullptr, *condce = nullptr, *gcond = nullptr;
  std::vector<BlockCond> conds;
};

// Whether the conditioning terms are computed here, from SampleArgs::cond (by GEMM; else
// they come computed, SampleArgs::cond_terms), and whether there are any.
bool computes_cond(const Config& c) { return c.cond_in_engine != 0; }
bool cond_in_engine(const Config& c) { return computes_cond(c) && c.cond_channels > 0; }

// With allocate=false only the arena's requests are made (workspace_floats counts them).
void make_workspace(const SampleArgs& a, int64_t b0, int64_t Bt, int team, Workspace* ws,
                    bool allocate = true) {
  const Config& c = *a.cfg;
  const PackedPlan& P = c.plan;
  const int64_t F = c.hidden, H = a.H, W = a.W, kh = c.kh, pw = c.pw, cc = c.cond_channels;
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
  ws->windows.resize(P.windows.size());
  for (size_t n = 0; n < P.windows.size(); ++n) {
    const PackedWindow& w = P.windows[n];
    RowWindow& r = ws->windows[n];
    r.rows = w.rows;
    r.width = w.left + (W >> w.scale) + w.right;
    r.ch = w.channels;
    r.left = w.left;
    ar.want(&r.data, Bt * r.img());
  }
  ws->holders.assign(P.holders.size(), nullptr);
  for (size_t n = 0; n < P.holders.size(); ++n) ar.want(&ws->holders[n], Bt * 2 * (W >> P.holders[n].scale) * F);
  ws->values.assign(P.values.size(), nullptr);
  for (size_t n = 0; n < P.values.size(); ++n) {
    const PackedValue& v = P.values[n];
    const int64_t Ms = Bt * (W >> v.scale);
    ar.want(&ws->values[n], v.kind == kPixelValue ? Bt * F : v.kind == kRowTermValue ? Ms * 3 * F : Ms * F);
  }
  ar.want(&ws->c1, M0 * F);
  ar.want(&ws->c2, M0 * 2 * F);
  ar.want(&ws->xact, M0 * 2 * F);
  ar.want(&ws->skipact, M0 * 2 * F);
  ar.want(&ws->pskip, Bt * 2 * F);
  want_head(c, team, ws);
  if (!allocate) return;
  ar.allocate();
  init_ones(c, H, W, team, ws);
}

// Every block's conditioning terms (BlockCond), from the row steps that name them:
// given (cond_terms, in the plan's order); or computed here, a map's from the row's cond
// by GEMM, a global cond's from gcond (block n of the plan's cond_blocks at gcond + n *
// 3F, images every num_cond_blocks * 3F floats).
void assign_conds(const SampleArgs& a, Workspace* ws) {
  const Config& c = *a.cfg;
  const Layout& L = *a.lay;
  const int64_t F3 = 3 * (int64_t)c.hidden;
  ws->conds.assign(L.blocks.size(), BlockCond());
  const bool here = cond_in_engine(c);
  if (!here && a.cond_terms.empty()) return;
  for (const Step& st : c.plan.row_steps) {
    if ((st.op != kRowBlock && st.op != kRowTerm) || st.cond < 0) continue;
    BlockCond& bc = ws->conds[st.block];
    if (!here) {
      bc.terms = a.cond_terms[st.cond];
      bc.img0 = ws->b0;
      bc.img_stride = a.cond_global ? F3 : 0;
    } else if (a.cond_global) {
      bc.terms = ws->gcond + st.cond * F3;
      bc.img_stride = L.num_cond_blocks * F3;
    } else {
      bc.gemm = &L.blocks[st.block];
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
  for (const Step& st : c.plan.row_steps) {
    if (st.op != kRowBlock && st.op != kRowTerm) continue;
    if (st.cond < 0) continue;
    const BlockLayout& BL = a.lay->blocks[st.block];
    const PackedMat c1 = packed_mat(a.packed, BL.cc1), c2a = packed_mat(a.packed, BL.cc2a),
                    c2b = packed_mat(a.packed, BL.cc2b);
    float* t = ws->gcond + st.cond * 3 * F;
    gemm_acc((int)Bt, ws->condce, 2 * cc, c1, 0, c1.NP, t, ld);
    gemm_acc((int)Bt, ws->condrow, cc, c2a, 0, c2a.NP, t + F, ld);
    gemm_acc((int)Bt, ws->condrow, cc, c2b, 0, c2b.NP, t + 2 * F, ld);
  }
}

// ------------------------------------------------------------------------------------
// The engine of one team (one or more threads sharing a group of images)
// ------------------------------------------------------------------------------------

struct Engine : EngineBase<Workspace> {
  const int64_t kh, cc;
  const PackedPlan& plan;

  Engine(const SampleArgs& args, Workspace& w, Barrier& b, int rank_, int size_, bool pixel_team_)
      : EngineBase(args, w, b, rank_, size_, pixel_team_), kh(c.kh), cc(c.cond_channels), plan(c.plan) {}

  void run() { run_rows(*this, c.scales > 1 ? " (U-net)" : ""); }

  int64_t width(int s) const { return W >> s; }
  float* value(int n) const { return ws.values[n]; }
  const RowWindow& window(int n) const { return ws.windows[n]; }

  // ---- helpers (this thread's output channels c0 .. c0+nown of share sh) ------------

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
    const int64_t Ws = width(s), Ms = Bt * Ws, Hs = H >> s;
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
  // rows (own channels) of n positions: dst[m] = src[m], F floats each.
  static void copy_own(const Share& sh, const float* src, float* dst, int64_t n, int64_t F) {
    for (int64_t m = 0; m < n; ++m)
      std::memcpy(dst + m * F + sh.c0, src + m * F + sh.c0, sizeof(float) * sh.nown);
  }

  // ---- row steps ------------------------------------------------------------------

  // What a RowBlock reads of every channel: act(x) in its conv1 window, act(skip).
  void row_block_acts(const Share& sh, const Step& st, int64_t p) {
    const int64_t Ws = width(st.scale);
    act_row(sh, value(st.x), Ws, &window(st.win1), p, nullptr);
    if (st.skip >= 0) act_row(sh, value(st.skip), Ws, nullptr, p, ws.skipact);
  }

  // RowBlock: a u block over the whole row p: out = x + gate(conv2(act(conv1(act(x)) +
  // nin(act(skip)) + cond) + cond)). acts_done: row_block_acts ran before the last barrier.
  void row_block(const Share& sh, const Step& st, int64_t p, bool acts_done) {
    const int s = st.scale;
    const int64_t Ws = width(s), Ms = Bt * Ws;
    const BlockLayout& B = L.blocks[st.block];
    const BlockCond& cond = ws.conds[st.block];
    const RowWindow &win1 = window(st.win1), &win2 = window(st.win2);
    if (!acts_done) {
      row_block_acts(sh, st, p);
      sync();
    }
    init_rows(sh, ws.c1, Ms, F, vec(B.b1));
    if (st.skip >= 0) gemm_acc((int)Ms, ws.skipact, F2, mat(B.nin), sh.fp0, sh.fp1, ws.c1, F);
    add_cond(sh, cond, s, p, false, ws.c1, F);
    conv_rows(sh, win1, p - kh + 1, 0, (int)kh, B.c1.data(), Ws, 1, ws.c1, F);
    act_row(sh, ws.c1, Ws, &win2, p, nullptr);
    sync();
    init_rows2(sh, ws.c2, Ms, vec(B.b2));
    add_cond(sh, cond, s, p, true, ws.c2, F2);
    conv_rows(sh, win2, p - kh + 1, 0, (int)kh, B.c2a.data(), Ws, 1, ws.c2, F2);
    conv_rows(sh, win2, p - kh + 1, 0, (int)kh, B.c2b.data(), Ws, 1, ws.c2 + F, F2);
    float* out = value(st.out);
    copy_own(sh, value(st.x), out, Ms, F);
    for (int64_t m = 0; m < Ms; ++m)
      gate_add(out + m * F + sh.c0, ws.c2 + m * F2 + sh.c0, ws.c2 + m * F2 + F + sh.c0, sh.nown);
  }

  // RowTerm: a ul block's row term at row p: conv1's = b1 + nin(act(x)) + cond + conv1
  // taps of the rows above; conv2's = b2 + cond + conv2 taps of the rows above. next:
  // the RowBlock that follows it, whose row_block_acts share its barrier (or null).
  void row_term(const Share& sh, const Step& st, int64_t p, const Step* next) {
    const int s = st.scale;
    const int64_t Ws = width(s), Ms = Bt * Ws;
    const BlockLayout& B = L.blocks[st.block];
    const BlockCond& cond = ws.conds[st.block];
    const RowWindow &win1 = window(st.win1), &win2 = window(st.win2);
    act_row(sh, value(st.x), Ws, nullptr, p, ws.xact);
    if (next) row_block_acts(sh, *next, p);
    sync();
    float* c1 = value(st.out);
    float* c2 = c1 + Ms * F;
    init_rows(sh, c1, Ms, F, vec(B.b1));
    gemm_acc((int)Ms, ws.xact, F2, mat(B.nin), sh.fp0, sh.fp1, c1, F);
    add_cond(sh, cond, s, p, false, c1, F);
    conv_rows(sh, win1, p - kh + 1, 0, (int)kh - 1, B.c1.data(), Ws, 1, c1, F);
    init_rows2(sh, c2, Ms, vec(B.b2));
    add_cond(sh, cond, s, p, true, c2, F2);
    conv_rows(sh, win2, p - kh + 1, 0, (int)kh - 1, B.c2a.data(), Ws, 1, c2, F2);
    conv_rows(sh, win2, p - kh + 1, 0, (int)kh - 1, B.c2b.data(), Ws, 1, c2 + F, F2);
  }

  // UpRow: the transposed conv of the row x of scale s into rows 2p, 2p+1 of scale s-1.
  void up_row(const Share& sh, const Step& st) {
    const int s = st.scale;
    const int64_t Ws = width(s), Wf = width(s - 1);
    const ConvLayout& cv = L.convs[st.conv];
    sync();
    const float* x = value(st.x);
    for (int r = 0; r < 2; ++r) {
      float* out = ws.holders[st.holder] + r * Wf * F;  // image b at + b * 2 * Wf * F
      const int64_t img = 2 * Wf * F;
      for (int64_t b = 0; b < Bt; ++b) {
        init_rows(sh, out + b * img, Wf, F, vec(cv.bias));
        const float* in = x + b * Ws * F;
        const auto& wt = cv.mats;
        // even columns 2q: tap 1 of q; odd 2q+1: tap 2 of q and tap 0 of q+1
        gemm_acc((int)Ws, in, F, mat(wt[r * 3 + 1]), sh.fp0, sh.fp1, out + b * img, 2 * F);
        gemm_acc((int)Ws, in, F, mat(wt[r * 3 + 2]), sh.fp0, sh.fp1, out + b * img + F, 2 * F);
        gemm_acc((int)Ws - 1, in + F, F, mat(wt[r * 3 + 0]), sh.fp0, sh.fp1, out + b * img + F, 2 * F);
      }
    }
  }

  void start_row(int64_t i) {
    const Share& sh = rs;
    if (cond_in_engine(c) && !a.cond_global && nb) cond_row(i);
    const std::vector<Step>& steps = plan.row_steps;
    size_t acts_done = steps.size();  // the RowBlock whose acts a RowTerm did
    for (size_t n = 0; n < steps.size(); ++n) {
      const Step& st = steps[n];
      const int s = st.scale;
      if (i & ((int64_t(1) << s) - 1)) continue;  // not a row of scale s
      const int64_t p = i >> s, Ws = width(s), Ms = Bt * Ws;
      switch (st.op) {
        case kInputRow:  // u's first layer (image rows i-kh .. i-1), ul's row term
          input_ul_row(i, value(st.out2));
          input_u_row(i, value(st.out));
          break;
        case kDownRow: {  // the stride-2 conv over rows 2p-1, 2p of scale s-1
          const ConvLayout& cv = L.convs[st.conv];
          sync();
          init_rows(sh, value(st.out), Ms, F, vec(cv.bias));
          conv_rows(sh, window(st.win), 2 * p - 1, 0, 2, cv.mats.data(), Ws, 2, value(st.out), F);
          break;
        }
        case kFromUp: {  // the holder's row of parity p & 1
          const float* h = ws.holders[st.holder];
          float* out = value(st.out);
          for (int64_t b = 0; b < Bt; ++b) copy_own(sh, h + (b * 2 + (p & 1)) * Ws * F, out + b * Ws * F, Ws, F);
          break;
        }
        case kRowBlock: row_block(sh, st, p, n == acts_done); break;
        case kRowTerm: {
          const bool next = n + 1 < steps.size() && steps[n + 1].op == kRowBlock && steps[n + 1].scale == s;
          row_term(sh, st, p, next ? &steps[n + 1] : nullptr);
          if (next) acts_done = n + 1;
          break;
        }
        case kKeep: {
          const RowWindow& w = window(st.win);
          const float* x = value(st.x);
          for (int64_t b = 0; b < Bt; ++b)
            for (int64_t q = 0; q < Ws; ++q)
              std::memcpy(w.at(b, p, w.left + q) + sh.c0, x + (b * Ws + q) * F + sh.c0, sizeof(float) * sh.nown);
          break;
        }
        case kUpRow: up_row(sh, st); break;
      }
    }
  }

  // ---- pixel steps ----------------------------------------------------------------

  // PixelBlock: a ul block at (p, q): conv1 = its row term at q + nin_ul(act(skip)) + the
  // current row's taps of act(x); out = x + gate(its conv2 row term at q + the current
  // row's taps of act(conv1)).
  void pixel_block(const Share& sh, const Step& st, int64_t p, int64_t q) {
    const int s = st.scale;
    const int64_t Ws = width(s);
    const BlockLayout& B = L.blocks[st.block];
    const RowWindow &win1 = window(st.win1), &win2 = window(st.win2);
    const float* x = value(st.x);
    for (int64_t b = 0; b < Bt; ++b) {
      float* d = win1.at(b, p, win1.left + q);
      concat_elu(x + b * F + sh.c0, sh.nown, d + sh.c0, d + F + sh.c0);
    }
    if (st.skip >= 0) {
      const float* k = value(st.skip);
      for (int64_t b = 0; b < Bt; ++b)
        concat_elu(k + b * F + sh.c0, sh.nown, ws.pskip + b * F2 + sh.c0, ws.pskip + b * F2 + F + sh.c0);
    }
    pixel_sync();
    float* c1 = value(st.term) + q * F;  // rows: stride Ws * F
    if (st.skip >= 0) gemm_acc((int)Bt, ws.pskip, F2, mat(B.nin_ul), sh.fp0, sh.fp1, c1, Ws * F);
    gemm_acc((int)Bt, win1.at(0, p, q), win1.img(), mat(B.c1[kh - 1]), sh.fp0, sh.fp1, c1, Ws * F);
    for (int64_t b = 0; b < Bt; ++b) {
      float* d = win2.at(b, p, win2.left + q);
      concat_elu(c1 + b * Ws * F + sh.c0, sh.nown, d + sh.c0, d + F + sh.c0);
    }
    pixel_sync();
    float* c2 = value(st.term) + Bt * Ws * F + q * F2;  // rows: stride Ws * 2F
    gemm_acc((int)Bt, win2.at(0, p, q), win2.img(), mat(B.c2a[kh - 1]), sh.fp0, sh.fp1, c2, Ws * F2);
    gemm_acc((int)Bt, win2.at(0, p, q), win2.img(), mat(B.c2b[kh - 1]), sh.fp0, sh.fp1, c2 + F, Ws * F2);
    float* out = value(st.out);
    copy_own(sh, x, out, Bt, F);
    for (int64_t b = 0; b < Bt; ++b)
      gate_add(out + b * F + sh.c0, c2 + b * Ws * F2 + sh.c0, c2 + b * Ws * F2 + F + sh.c0, sh.nown);
  }

  void pixel(int64_t i, int64_t j) {
    const Share& sh = ps;
    for (const Step& st : plan.pixel_steps) {
      const int s = st.scale;
      const int64_t mask = (int64_t(1) << s) - 1;
      if ((i & mask) || (j & mask)) continue;  // not a position of scale s
      const int64_t p = i >> s, q = j >> s, Ws = width(s);
      switch (st.op) {
        case kInputPixel: input_ul_pixel(j, value(st.x), value(st.out)); break;
        case kDownPixel: {  // the stride-2 conv over the 2x2 window (2p-1 .. 2p, 2q-1 .. 2q) of scale s-1
          const RowWindow& lw = window(st.win);
          const ConvLayout& cv = L.convs[st.conv];
          float* out = value(st.out);
          pixel_sync();
          init_rows(sh, out, Bt, F, vec(cv.bias));
          for (int r = 0; r < 2; ++r) {
            const int64_t row = 2 * p - 1 + r;
            if (row < 0) continue;
            gemm_acc((int)Bt, lw.at(0, row, 2 * q), lw.img(), mat(cv.mats[r]), sh.fp0, sh.fp1, out, F);
          }
          break;
        }
        case kFromUp: {  // the holder at (p, q)
          const float* h = ws.holders[st.holder];
          float* out = value(st.out);
          for (int64_t b = 0; b < Bt; ++b)
            std::memcpy(out + b * F + sh.c0, h + ((b * 2 + (p & 1)) * Ws + q) * F + sh.c0, sizeof(float) * sh.nown);
          break;
        }
        case kPixelBlock: pixel_block(sh, st, p, q); break;
        case kKeep: {
          const RowWindow& w = window(st.win);
          const float* x = value(st.x);
          for (int64_t b = 0; b < Bt; ++b)
            std::memcpy(w.at(b, p, w.left + q) + sh.c0, x + b * F + sh.c0, sizeof(float) * sh.nown);
          break;
        }
        case kUpPixel: {  // the 2x2 block (2p .. 2p+1, 2q .. 2q+1) of scale s-1 it feeds
          const int64_t Wf = width(s - 1);
          const float* x = value(st.x);
          const ConvLayout& cv = L.convs[st.conv];
          pixel_sync();
          for (int ar = 0; ar < 2; ++ar)
            for (int ac = 0; ac < 2; ++ac) {
              float* out = ws.holders[st.holder] + (ar * Wf + 2 * q + ac) * F;  // image b at + b * 2 * Wf * F
              init_rows(sh, out, Bt, 2 * Wf * F, vec(cv.bias));
              gemm_acc((int)Bt, x, F, mat(cv.mats[ar * 2 + ac]), sh.fp0, sh.fp1, out, 2 * Wf * F);
            }
          break;
        }
        case kHead: head_and_sample(i, j, value(st.x)); break;
      }
    }
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
