// The topology of a PixelCNNpp in the CPU cached engine (cached_engine.h): a U-net over
// `scales` resolutions of 2-row convs. Scale s (resolution H/2**s x W/2**s) position
// (p, q) belongs to pixel (2**s p, 2**s q) and is computed once, when that pixel comes:
//
// * start_row(i), for every scale s with i % 2**s == 0 (row p = i >> s): the whole row
//   of every u value of scale s as GEMMs over the Bt*W_s positions of the row (up pass,
//   scales ascending, a coarser scale's input from the stride-2 conv over the last two
//   rows of the finer one, kept in last_u_win; then the down pass, scales descending, a
//   finer scale's input from the transposed conv of the coarser row, kept in u_up by row
//   parity), and the row term of every ul block (row_term_c1 / row_term_c2: biases, the
//   1x1 projections of u, the conditioning, the conv taps of row p-1).
// * pixel(i, j), for every scale s with i, j divisible by 2**s: the ul stream at (p, q)
//   from the current-row taps only (GEMMs over the Bt images), up pass ascending (the
//   stride-2 conv reads the 2x2 window of last_ul_win), down pass descending (the input
//   from ul_up, the transposed conv's 2x2 blocks kept by row parity); the head and the
//   sampling at scale 0.
//
// Every conv input keeps a window of 2 rows at its scale (u_win: 1 column of padding
// each side; ul_win: 1 on the left), indexed by row parity. The conditioning terms come
// computed by the caller (SampleArgs::cond_terms, in the plan's order).
#include "engine_common.h"

#include <cstring>

namespace pixelaux {
namespace cpu {

// ------------------------------------------------------------------------------------
// Buffers
// ------------------------------------------------------------------------------------

namespace {

// The last 2 rows of one conv input at one scale, (Bt, 2, width, ch), the row of
// parity r in slot r; column c of the scale at index c + 1 (one column of zero padding
// on the left; u windows one on the right too).
struct RowWindow {
  float* data = nullptr;
  int64_t width = 0, ch = 0;
  int64_t img() const { return 2 * width * ch; }  // floats per image
  float* at(int64_t b, int64_t row, int64_t col) const {
    return data + ((b * 2 + (row & 1)) * width + col) * ch;
  }
};

// Per scale s (width Ws = W >> s, Ms = Bt * Ws positions in a row).
struct ScaleBuffers {
  int64_t Ws = 0;
  float* u = nullptr;                   // (Ms, F): the u stream of the current row
  std::vector<RowWindow> up_u_win1, up_u_win2, up_ul_win1, up_ul_win2;        // [block]
  std::vector<RowWindow> down_u_win1, down_u_win2, down_ul_win1, down_ul_win2;
  std::vector<float*> u_skip;           // [k = 0..blocks]: act(up-pass u value k), (Ms, 2F)
  // the row terms of the ul blocks, [block]: conv1 (Ms, F) and conv2 (Ms, 2F)
  std::vector<float*> up_row_term_c1, up_row_term_c2, down_row_term_c1, down_row_term_c2;
  RowWindow last_u_win, last_ul_win;    // s < S-1: inputs of the stride-2 convs into s+1
  float* u_up = nullptr;                // s < S-1: (Bt, 2, Ws, F), transposed conv from s+1
  float* ul_up = nullptr;               // s < S-1: (Bt, 2, Ws, F)
  float* ul = nullptr;                  // (Bt, F): the ul stream at the current position
  std::vector<float*> ul_skip;          // [k]: act(up-pass ul value k) at (p, q), (Bt, 2F)
  std::vector<const float*> cond_up_u, cond_up_ul, cond_down_u, cond_down_ul;  // [block]
};

struct Workspace : WorkspaceBase {
  float *row_term_init = nullptr, *c1 = nullptr, *c2 = nullptr, *uact = nullptr;
  std::vector<ScaleBuffers> sc;
};

// With allocate=false only the arena's requests are made (workspace_floats counts them).
void make_workspace(const Config& c, const SampleArgs& a, int64_t b0, int64_t Bt, int team,
                    Workspace* ws, bool allocate = true) {
  const int64_t F = c.hidden, H = a.H, W = a.W, S = c.scales, nb = c.blocks;
  const int64_t M0 = Bt * W;
  Arena& ar = ws->arena;
  ws->b0 = b0;
  ws->Bt = Bt;
  want_input(c, H, W, 2, 1, ws);  // the input convs' kernel rows 2, columns 3
  ar.want(&ws->row_term_init, M0 * F);
  ar.want(&ws->c1, M0 * F);
  ar.want(&ws->c2, M0 * 2 * F);
  ar.want(&ws->uact, M0 * 2 * F);
  want_head(c, team, ws);
  ws->sc.resize(S);
  auto wins = [&](std::vector<RowWindow>& v, int64_t n, int64_t width, int64_t ch) {
    v.resize(n);
    for (auto& w : v) {
      w.width = width;
      w.ch = ch;
      ar.want(&w.data, Bt * 2 * width * ch);
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
    ar.want(&B.u, Ms * F);
    wins(B.up_u_win1, nb, Ws + 2, 2 * F);
    wins(B.up_u_win2, nb, Ws + 2, 2 * F);
    wins(B.up_ul_win1, nb, Ws + 1, 2 * F);
    wins(B.up_ul_win2, nb, Ws + 1, 2 * F);
    wins(B.down_u_win1, nd, Ws + 2, 2 * F);
    wins(B.down_u_win2, nd, Ws + 2, 2 * F);
    wins(B.down_ul_win1, nd, Ws + 1, 2 * F);
    wins(B.down_ul_win2, nd, Ws + 1, 2 * F);
    bufs(B.u_skip, nb + 1, Ms * 2 * F);
    bufs(B.up_row_term_c1, nb, Ms * F);
    bufs(B.up_row_term_c2, nb, Ms * 2 * F);
    bufs(B.down_row_term_c1, nd, Ms * F);
    bufs(B.down_row_term_c2, nd, Ms * 2 * F);
    if (s + 1 < S) {
      B.last_u_win.width = Ws + 2;
      B.last_u_win.ch = F;
      ar.want(&B.last_u_win.data, Bt * 2 * (Ws + 2) * F);
      B.last_ul_win.width = Ws + 1;
      B.last_ul_win.ch = F;
      ar.want(&B.last_ul_win.data, Bt * 2 * (Ws + 1) * F);
      ar.want(&B.u_up, Bt * 2 * Ws * F);
      ar.want(&B.ul_up, Bt * 2 * Ws * F);
    }
    ar.want(&B.ul, Bt * F);
    bufs(B.ul_skip, nb + 1, Bt * 2 * F);
  }
  // The conditioning terms, in the plan's order (Plan.cond_blocks): the up pass, scales
  // ascending, then the down pass, scales descending; per block the u then the ul one.
  const float* const* cond = a.cond_terms.empty() ? nullptr : a.cond_terms.data();
  for (int64_t s = 0; s < S; ++s) {
    ScaleBuffers& B = ws->sc[s];
    B.cond_up_u.assign(nb, nullptr);
    B.cond_up_ul.assign(nb, nullptr);
    for (int64_t k = 0; k < nb && cond; ++k) {
      B.cond_up_u[k] = *cond++;
      B.cond_up_ul[k] = *cond++;
    }
  }
  for (int64_t s = S - 1; s >= 0; --s) {
    ScaleBuffers& B = ws->sc[s];
    const int64_t nd = c.down_blocks((int)s);
    B.cond_down_u.assign(nd, nullptr);
    B.cond_down_ul.assign(nd, nullptr);
    for (int64_t k = 0; k < nd && cond; ++k) {
      B.cond_down_u[k] = *cond++;
      B.cond_down_ul[k] = *cond++;
    }
  }
  if (!allocate) return;
  ar.allocate();
  init_ones(c, H, W, team, ws);
}

// ------------------------------------------------------------------------------------
// The engine of one team (one or more threads sharing a group of images)
// ------------------------------------------------------------------------------------

struct Engine : EngineBase<Workspace> {
  const int64_t S;

  Engine(const SampleArgs& args, Workspace& w, Barrier& b, int rank_, int size_, bool pixel_team_)
      : EngineBase(args, w, b, rank_, size_, pixel_team_), S(c.scales) {}

  void run() { run_rows(*this, " (PixelCNNpp)"); }

  // ---- row helpers (this thread's output channels c0 .. c0+nown of share sh) --------

  // act(x) of the (Bt * Ws, F) row x into column 1+q of the window's row p (and into
  // the (Bt * Ws, 2F) buffer dst when given).
  void act_row(const Share& sh, const float* x, int64_t Ws, const RowWindow* win, int64_t p,
               float* dst) const {
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t q = 0; q < Ws; ++q) {
        const float* src = x + (b * Ws + q) * F + sh.c0;
        if (win) {
          float* d = win->at(b, p, 1 + q);
          concat_elu(src, sh.nown, d + sh.c0, d + F + sh.c0);
        }
        if (dst) {
          float* d = dst + (b * Ws + q) * F2;
          concat_elu(src, sh.nown, d + sh.c0, d + F + sh.c0);
        }
      }
  }
  // C (Bt * Ws, N) += the taps of rows p-1 (r = 0) and p (r = 1), r in [r0, r1), of a
  // 2-row conv over win at output row p (column stride cstride: 2 for the stride-2 convs,
  // whose window is of the finer scale and rows are given there).
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
  // Adds the conditioning terms of row p: cond (B, Hs, Ws, 3F) part [o, o + n*F) into
  // rows of Cp (stride ldc), halves of F channels each. A global cond's terms
  // (B, 1, 1, 3F) are the same at every position of an image.
  void add_cond_row(const Share& sh, const float* cond, int64_t Hs, int64_t Ws, int64_t p,
                    int64_t o, int halves, float* Cp, int64_t ldc) const {
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t q = 0; q < Ws; ++q) {
        const int64_t pos = a.cond_global ? ws.b0 + b : ((ws.b0 + b) * Hs + p) * Ws + q;
        const float* src = cond + pos * 3 * F + o;
        float* d = Cp + (b * Ws + q) * ldc;
        for (int h = 0; h < halves; ++h)
          for (int ch = sh.c0; ch < sh.c0 + sh.nown; ++ch) d[h * F + ch] += src[h * F + ch];
      }
  }

  // A u block over the whole row p of scale s: u += gate(conv2(act(conv1(act(u)) + extra)));
  // win1 already holds act(u). skip: act(skip) for the nin (or null). Leaves act(u) in
  // next_win (row p) and in dst (when given).
  void u_block(const Share& sh, int s, int64_t p, const BlockLayout& B, const RowWindow& win1,
               const RowWindow& win2, const float* skip, const float* cond, const RowWindow* next_win,
               float* dst) {
    ScaleBuffers& sb = ws.sc[s];
    const int64_t Ws = sb.Ws, Ms = Bt * Ws, Hs = H >> s;
    init_rows(sh, ws.c1, Ms, F, vec(B.b1));
    if (skip) gemm_acc((int)Ms, skip, F2, mat(B.nin), sh.fp0, sh.fp1, ws.c1, F);
    if (cond) add_cond_row(sh, cond, Hs, Ws, p, 0, 1, ws.c1, F);
    conv_rows(sh, win1, p - 1, 0, 2, B.c1.data(), Ws, 1, ws.c1, F);
    act_row(sh, ws.c1, Ws, &win2, p, nullptr);
    sync();
    init_rows2(sh, ws.c2, Ms, vec(B.b2));
    if (cond) add_cond_row(sh, cond, Hs, Ws, p, F, 2, ws.c2, F2);
    conv_rows(sh, win2, p - 1, 0, 2, B.c2a.data(), Ws, 1, ws.c2, F2);
    conv_rows(sh, win2, p - 1, 0, 2, B.c2b.data(), Ws, 1, ws.c2 + F, F2);
    for (int64_t m = 0; m < Ms; ++m)
      gate_add(sb.u + m * F + sh.c0, ws.c2 + m * F2 + sh.c0, ws.c2 + m * F2 + F + sh.c0, sh.nown);
    act_row(sh, sb.u, Ws, next_win, p, dst);
    sync();
  }

  // The row terms of a ul block at row p: c1 = b1 + nin(uact) + cond + conv1 taps of
  // row p-1; c2 = b2 + cond + conv2 taps of row p-1.
  void ul_row_terms(const Share& sh, int s, int64_t p, const BlockLayout& B, const RowWindow& win1,
                    const RowWindow& win2, const float* uact, const float* cond, float* c1,
                    float* c2) {
    const int64_t Ws = ws.sc[s].Ws, Ms = Bt * Ws, Hs = H >> s;
    init_rows(sh, c1, Ms, F, vec(B.b1));
    gemm_acc((int)Ms, uact, F2, mat(B.nin), sh.fp0, sh.fp1, c1, F);
    if (cond) add_cond_row(sh, cond, Hs, Ws, p, 0, 1, c1, F);
    conv_rows(sh, win1, p - 1, 0, 1, B.c1.data(), Ws, 1, c1, F);
    init_rows2(sh, c2, Ms, vec(B.b2));
    if (cond) add_cond_row(sh, cond, Hs, Ws, p, F, 2, c2, F2);
    conv_rows(sh, win2, p - 1, 0, 1, B.c2a.data(), Ws, 1, c2, F2);
    conv_rows(sh, win2, p - 1, 0, 1, B.c2b.data(), Ws, 1, c2 + F, F2);
  }

  // ---- per row ----------------------------------------------------------------------
  void start_row(int64_t i) {
    const Share& sh = rs;
    input_ul_row(i, ws.row_term_init);  // ul's first layer, rows above
    int top = 0;  // the coarsest scale of this row
    while (top + 1 < S && i % (int64_t(1) << (top + 1)) == 0) ++top;
    for (int s = 0; s <= top; ++s) {  // up pass, scales ascending
      ScaleBuffers& sb = ws.sc[s];
      const int64_t p = i >> s, Ws = sb.Ws, Ms = Bt * Ws;
      if (s == 0) {  // u's first layer: image rows i-2, i-1
        input_u_row(i, sb.u);
      } else {  // stride-2 conv over rows 2p-1, 2p of scale s-1
        init_rows(sh, sb.u, Ms, F, vec(L.down_u_bias[s]));
        conv_rows(sh, ws.sc[s - 1].last_u_win, 2 * p - 1, 0, 2, L.down_u_conv[s].data(), Ws, 2, sb.u, F);
      }
      act_row(sh, sb.u, Ws, nb ? &sb.up_u_win1[0] : nullptr, p, sb.u_skip[0]);
      if (nb == 0 && s + 1 < S) copy_row(sh, sb.u, Ws, sb.last_u_win, p);
      sync();
      for (int64_t k = 0; k < nb; ++k) {
        u_block(sh, s, p, L.up_u[s][k], sb.up_u_win1[k], sb.up_u_win2[k], nullptr,
                sb.cond_up_u[k], k + 1 < nb ? &sb.up_u_win1[k + 1] : nullptr, sb.u_skip[k + 1]);
        if (k + 1 == nb && s + 1 < S) {
          copy_row(sh, sb.u, Ws, sb.last_u_win, p);
          sync();
        }
        ul_row_terms(sh, s, p, L.up_ul[s][k], sb.up_ul_win1[k], sb.up_ul_win2[k], sb.u_skip[k + 1],
                     sb.cond_up_ul[k], sb.up_row_term_c1[k], sb.up_row_term_c2[k]);
      }
    }
    for (int s = top; s >= 0; --s) {  // down pass, scales descending
      ScaleBuffers& sb = ws.sc[s];
      const int64_t p = i >> s, Ws = sb.Ws, Ms = Bt * Ws, nd = c.down_blocks(s);
      if (s + 1 < S)  // the transposed conv's row of scale s+1 for row p
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
        ul_row_terms(sh, s, p, L.down_ul[s][k], sb.down_ul_win1[k], sb.down_ul_win2[k], ws.uact,
                     sb.cond_down_ul[k], sb.down_row_term_c1[k], sb.down_row_term_c2[k]);
      }
      if (s > 0) {  // rows 2p, 2p+1 of scale s-1
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

  // u row (Bt * Ws, F) -> the window's row p (own channels).
  void copy_row(const Share& sh, const float* x, int64_t Ws, const RowWindow& win, int64_t p) const {
    for (int64_t b = 0; b < Bt; ++b)
      for (int64_t q = 0; q < Ws; ++q)
        std::memcpy(win.at(b, p, 1 + q) + sh.c0, x + (b * Ws + q) * F + sh.c0, sizeof(float) * sh.nown);
  }

  // ---- per pixel --------------------------------------------------------------------

  // act(ul) of every image into column 1+q of the window's row p and into dst (Bt, 2F).
  void act_px(const Share& sh, const float* ul, const RowWindow* win, int64_t p, int64_t q,
              float* dst) const {
    for (int64_t b = 0; b < Bt; ++b) {
      const float* src = ul + b * F + sh.c0;
      if (win) {
        float* d = win->at(b, p, 1 + q);
        concat_elu(src, sh.nown, d + sh.c0, d + F + sh.c0);
      }
      if (dst) concat_elu(src, sh.nown, dst + b * F2 + sh.c0, dst + b * F2 + F + sh.c0);
    }
  }

  // A ul block at (p, q) of scale s: win1 already holds act(ul) at (p, q); c1 / c2 the
  // row terms (Bt * Ws rows); skip: act(up-pass ul) for the down-pass nin (or null).
  void ul_block(const Share& sh, int s, int64_t p, int64_t q, const BlockLayout& B,
                const RowWindow& win1, const RowWindow& win2, float* c1row, float* c2row,
                const float* skip, const RowWindow* next_win, float* dst) {
    ScaleBuffers& sb = ws.sc[s];
    const int64_t Ws = sb.Ws;
    float* c1 = c1row + q * F;  // rows: stride Ws * F
    if (skip) gemm_acc((int)Bt, skip, F2, mat(B.nin_ul), sh.fp0, sh.fp1, c1, Ws * F);
    gemm_acc((int)Bt, win1.at(0, p, q), win1.img(), mat(B.c1[1]), sh.fp0, sh.fp1, c1, Ws * F);
    for (int64_t b = 0; b < Bt; ++b) {
      float* d = win2.at(b, p, 1 + q);
      concat_elu(c1 + b * Ws * F + sh.c0, sh.nown, d + sh.c0, d + F + sh.c0);
    }
    pixel_sync();
    float* c2 = c2row + q * F2;  // rows: stride Ws * 2F
    gemm_acc((int)Bt, win2.at(0, p, q), win2.img(), mat(B.c2a[1]), sh.fp0, sh.fp1, c2, Ws * F2);
    gemm_acc((int)Bt, win2.at(0, p, q), win2.img(), mat(B.c2b[1]), sh.fp0, sh.fp1, c2 + F, Ws * F2);
    for (int64_t b = 0; b < Bt; ++b)
      gate_add(sb.ul + b * F + sh.c0, c2 + b * Ws * F2 + sh.c0, c2 + b * Ws * F2 + F + sh.c0, sh.nown);
    act_px(sh, sb.ul, next_win, p, q, dst);
  }

  // ul (Bt, F) -> column 1+q of the window's row p (own channels).
  void copy_px(const Share& sh, const float* ul, const RowWindow& win, int64_t p, int64_t q) const {
    for (int64_t b = 0; b < Bt; ++b)
      std::memcpy(win.at(b, p, 1 + q) + sh.c0, ul + b * F + sh.c0, sizeof(float) * sh.nown);
  }

  void pixel(int64_t i, int64_t j) {
    const Share& sh = ps;
    int top = 0;
    while (top + 1 < S && i % (int64_t(1) << (top + 1)) == 0 && j % (int64_t(1) << (top + 1)) == 0) ++top;
    for (int s = 0; s <= top; ++s) {  // up pass, scales ascending
      ScaleBuffers& sb = ws.sc[s];
      const int64_t p = i >> s, q = j >> s;
      if (s == 0) {  // ul's first layer
        input_ul_pixel(j, ws.row_term_init, sb.ul);
      } else {  // stride-2 conv over the 2x2 window (2p-1 .. 2p, 2q-1 .. 2q) of scale s-1
        const RowWindow& lw = ws.sc[s - 1].last_ul_win;
        init_rows(sh, sb.ul, Bt, F, vec(L.down_ul_bias[s]));
        for (int r = 0; r < 2; ++r) {
          const int64_t row = 2 * p - 1 + r;
          if (row < 0) continue;
          gemm_acc((int)Bt, lw.at(0, row, 2 * q), lw.img(), mat(L.down_ul_conv[s][r]), sh.fp0,
                   sh.fp1, sb.ul, F);
        }
      }
      act_px(sh, sb.ul, nb ? &sb.up_ul_win1[0] : nullptr, p, q, sb.ul_skip[0]);
      if (nb == 0 && s + 1 < S) copy_px(sh, sb.ul, sb.last_ul_win, p, q);
      pixel_sync();
      for (int64_t k = 0; k < nb; ++k) {
        ul_block(sh, s, p, q, L.up_ul[s][k], sb.up_ul_win1[k], sb.up_ul_win2[k], sb.up_row_term_c1[k],
                 sb.up_row_term_c2[k], nullptr, k + 1 < nb ? &sb.up_ul_win1[k + 1] : nullptr, sb.ul_skip[k + 1]);
        if (k + 1 == nb && s + 1 < S) copy_px(sh, sb.ul, sb.last_ul_win, p, q);
        pixel_sync();
      }
    }
    for (int s = top; s >= 0; --s) {  // down pass, scales descending
      ScaleBuffers& sb = ws.sc[s];
      const int64_t p = i >> s, q = j >> s, nd = c.down_blocks(s);
      if (s + 1 < S)
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
      if (s > 0) {  // the 2x2 block (2p .. 2p+1, 2q .. 2q+1) of scale s-1 it feeds
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
    head_and_sample(i, j, ws.sc[0].ul);
  }
};

}  // namespace

void sample_unet(const SampleArgs& a) {
  sample_teams<Engine, Workspace>(a, [&](int64_t b0, int64_t Bt, int team, Workspace* ws) {
    make_workspace(*a.cfg, a, b0, Bt, team, ws);
  });
}

int64_t unet_workspace_floats(const SampleArgs& a) {
  return count_team_floats<Workspace>(a, [&](int64_t b0, int64_t Bt, int team, Workspace* ws) {
    make_workspace(*a.cfg, a, b0, Bt, team, ws, /*allocate=*/false);
  });
}

}  // namespace cpu
}  // namespace pixelaux
