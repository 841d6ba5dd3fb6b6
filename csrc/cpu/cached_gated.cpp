// The topology of a GatedPixelCNN in the CPU cached engine (cached_engine.h): one scale,
// convs of kh = (k + 1) / 2 rows (u: (kh, k), ul: (kh, kh)), the up pass only. The
// conditioning terms are computed here from cond, by GEMM: per row for a map, once per
// image for a global cond.
#include "engine_common.h"

#include <cstring>

namespace pixelaux {
namespace cpu {

namespace {

// Scratch of one team: all buffers for its images (an Arena: zeroed, 64-byte aligned).
// Names as in cached_torch.py: u_win1 / u_win2 the rings of the u blocks' conv inputs,
// ul_win1 / ul_win2 those of the ul blocks, row_term_init the row term of ul's first layer
// (row_term:ul_init in the plan), row_term_c1 / row_term_c2 the row terms of the ul
// blocks' conv1 / conv2 (row_term:{block}).
// condrow / condce: cond and concat_elu(cond) per position of the row (a map cond) or
// per image (a global cond); gcond: a global cond's terms per image, see global_cond_terms.
struct Workspace : WorkspaceBase {
  float *condrow, *condce, *gcond, *u, *c1u, *c2u, *uact, *row_term_init, *ul;
  std::vector<float*> u_win1, u_win2, ul_win1, ul_win2;  // rings: [blk * kh + slot]
  std::vector<float*> row_term_c1, row_term_c2;         // [blk]
};

// With allocate=false only the arena's requests are made (workspace_floats counts them).
void make_workspace(const Config& c, int64_t H, int64_t W, int64_t b0, int64_t Bt, int team,
                    bool cond_global, Workspace* ws, bool allocate = true) {
  const int64_t F = c.hidden, kh = c.kh, pw = c.pw, cc = c.cond_channels, nb = c.blocks;
  const int64_t M = Bt * W;
  Arena& ar = ws->arena;
  auto want = [&](float** p, int64_t n) { ar.want(p, n); };
  ws->b0 = b0;
  ws->Bt = Bt;
  ws->u_win1.assign(nb * kh, nullptr);
  ws->u_win2.assign(nb * kh, nullptr);
  ws->ul_win1.assign(nb * kh, nullptr);
  ws->ul_win2.assign(nb * kh, nullptr);
  ws->row_term_c1.assign(nb, nullptr);
  ws->row_term_c2.assign(nb, nullptr);
  want_input(c, H, W, kh, pw, ws);
  const int64_t cond_rows = cond_global ? Bt : M;  // a global cond: one row per image
  want(&ws->condrow, cond_rows * cc);
  want(&ws->condce, cond_rows * 2 * cc);
  want(&ws->gcond, cond_global && cc ? Bt * 2 * nb * 3 * F : 0);
  want(&ws->u, M * F);
  want(&ws->c1u, M * F);
  want(&ws->c2u, M * 2 * F);
  want(&ws->uact, M * 2 * F);
  want(&ws->row_term_init, M * F);
  want(&ws->ul, Bt * F);
  want_head(c, team, ws);
  for (int64_t i = 0; i < nb * kh; ++i) {
    want(&ws->u_win1[i], Bt * (W + 2 * pw) * 2 * F);
    want(&ws->u_win2[i], Bt * (W + 2 * pw) * 2 * F);
    want(&ws->ul_win1[i], Bt * (W + kh - 1) * 2 * F);
    want(&ws->ul_win2[i], Bt * (W + kh - 1) * 2 * F);
  }
  for (int64_t i = 0; i < nb; ++i) {
    want(&ws->row_term_c1[i], M * F);
    want(&ws->row_term_c2[i], M * 2 * F);
  }
  if (!allocate) return;
  ar.allocate();
  init_ones(c, H, W, team, ws);
}

// The conditioning terms of a global cond (a vector v per image), once per image, before
// the rows start: for image b, stream s (0: u, 1: ul) and block k, the 3F floats at
// gcond + ((b * 2 + s) * nb + k) * 3F are [cond_c1(concat_elu(v)) (F), cond_c2(v) (2F:
// value and gate halves)]. Each is a GEMM sum from zero (kernels.h: C += lo + hi), so a
// row adding it gets bitwise the value the per-row GEMM over an expanded map gives.
void global_cond_terms(const SampleArgs& a, Workspace* ws) {
  const Config& c = *a.cfg;
  const int64_t F = c.hidden, cc = c.cond_channels, nb = c.blocks, Bt = ws->Bt;
  const int64_t ld = 2 * nb * 3 * F;  // floats per image
  for (int64_t b = 0; b < Bt; ++b) {
    float* row = ws->condrow + b * cc;
    std::memcpy(row, a.cond + (ws->b0 + b) * cc, sizeof(float) * cc);
    concat_elu(row, (int)cc, ws->condce + b * 2 * cc, ws->condce + b * 2 * cc + cc);
  }
  for (int s = 0; s < 2; ++s)
    for (int64_t k = 0; k < nb; ++k) {
      const BlockLayout& BL = (s == 0 ? a.lay->up_u[0] : a.lay->up_ul[0])[k];
      const PackedMat c1 = packed_mat(a.packed, BL.cc1), c2a = packed_mat(a.packed, BL.cc2a),
                      c2b = packed_mat(a.packed, BL.cc2b);
      float* t = ws->gcond + (s * nb + k) * 3 * F;
      gemm_acc((int)Bt, ws->condce, 2 * cc, c1, 0, c1.NP, t, ld);
      gemm_acc((int)Bt, ws->condrow, cc, c2a, 0, c2a.NP, t + F, ld);
      gemm_acc((int)Bt, ws->condrow, cc, c2b, 0, c2b.NP, t + 2 * F, ld);
    }
}

// ------------------------------------------------------------------------------------
// The engine of one team (one or more threads sharing a group of images)
// ------------------------------------------------------------------------------------

struct Engine : EngineBase<Workspace> {
  const int64_t kh, kw, pw, cc;
  const int64_t urow, arow;  // floats per u_win row / ul_win row (one image)

  Engine(const SampleArgs& args, Workspace& w, Barrier& b, int rank_, int size_, bool pixel_team_)
      : EngineBase(args, w, b, rank_, size_, pixel_team_), kh(c.kh), kw(c.kernel_size), pw(c.pw),
        cc(c.cond_channels), urow((args.W + 2 * c.pw) * 2 * c.hidden),
        arow((args.W + c.kh - 1) * 2 * c.hidden) {}

  void run() { run_rows(*this, ""); }

  int slot(int64_t row) const { return (int)(row % kh); }

  // Adds a global cond's term (stream, blk) of each row position's image to the rows
  // Cp[m] (stride ldc), m in [0, Bt * W): `halves` halves of F floats from offset o of
  // the term, this thread's channels (rs) of each.
  void add_gcond(float* Cp, int64_t ldc, int stream, int64_t blk, int64_t o, int halves) const {
    const int c0 = rs.c0, nown = rs.nown;
    for (int64_t m = 0; m < Bt * W; ++m) {
      const float* t = ws.gcond + ((m / W * 2 + stream) * nb + blk) * 3 * F + o;
      float* d = Cp + m * ldc;
      for (int h = 0; h < halves; ++h)
        for (int q = c0; q < c0 + nown; ++q) d[h * F + q] += t[h * F + q];
    }
  }

  // Vertical stream of row i and the row terms of the horizontal stream.
  void start_row(int64_t i) {
    const int64_t M = Bt * W;
    const int fp0 = rs.fp0, fp1 = rs.fp1, c0 = rs.c0, nown = rs.nown;
    const int64_t m0 = rs.m0, m1 = rs.m1;
    const bool gc = cc && a.cond_global;  // terms per image, in ws.gcond
    if (cc && nb && !gc) {
      for (int64_t m = m0; m < m1; ++m) {
        const int64_t b = m / W, j = m % W;
        const float* src = a.cond + ((ws.b0 + b) * cc * H + i) * W + j;
        float* row = ws.condrow + m * cc;
        for (int64_t ch = 0; ch < cc; ++ch) row[ch] = src[ch * H * W];
        concat_elu(row, (int)cc, ws.condce + m * 2 * cc, ws.condce + m * 2 * cc + cc);
      }
    }
    input_ul_row(i, ws.row_term_init);  // the horizontal stream's first layer, rows above
    if (nb == 0) return;
    input_u_row(i, ws.u);  // the vertical stream's first layer
    const int s_i = slot(i);
    auto act_u_to = [&](float* ring_row) {
      for (int64_t b = 0; b < Bt; ++b)
        for (int64_t j = 0; j < W; ++j) {
          float* d = ring_row + b * urow + (pw + j) * F2;
          concat_elu(ws.u + (b * W + j) * F + c0, nown, d + c0, d + F + c0);
        }
    };
    act_u_to(ws.u_win1[0 * kh + s_i]);
    sync();
    for (int64_t blk = 0; blk < nb; ++blk) {
      const BlockLayout& UB = L.up_u[0][blk];
      // conv1 over act(u) rows i-kh+1 .. i, + conditioning
      init_rows(rs, ws.c1u, M, F, vec(UB.b1));
      if (gc)
        add_gcond(ws.c1u, F, 0, blk, 0, 1);
      else if (cc)
        gemm_acc((int)M, ws.condce, 2 * cc, mat(UB.cc1), fp0, fp1, ws.c1u, F);
      for (int64_t r = 0; r < kh; ++r) {
        const int64_t row = i - kh + 1 + r;
        if (row < 0) continue;
        const float* ring = ws.u_win1[blk * kh + slot(row)];
        const PackedMat w = mat(UB.c1[r]);
        for (int64_t b = 0; b < Bt; ++b)
          gemm_acc((int)W, ring + b * urow, F2, w, fp0, fp1, ws.c1u + b * W * F, F);
      }
      {
        float* ring = ws.u_win2[blk * kh + s_i];
        for (int64_t b = 0; b < Bt; ++b)
          for (int64_t j = 0; j < W; ++j) {
            float* d = ring + b * urow + (pw + j) * F2;
            concat_elu(ws.c1u + (b * W + j) * F + c0, nown, d + c0, d + F + c0);
          }
      }
      sync();
      // conv2 over act(c1) rows, + conditioning, then the gate
      init_rows2(rs, ws.c2u, M, vec(UB.b2));
      if (gc) {
        add_gcond(ws.c2u, F2, 0, blk, F, 2);
      } else if (cc) {
        gemm_acc((int)M, ws.condrow, cc, mat(UB.cc2a), fp0, fp1, ws.c2u, F2);
        gemm_acc((int)M, ws.condrow, cc, mat(UB.cc2b), fp0, fp1, ws.c2u + F, F2);
      }
      for (int64_t r = 0; r < kh; ++r) {
        const int64_t row = i - kh + 1 + r;
        if (row < 0) continue;
        const float* ring = ws.u_win2[blk * kh + slot(row)];
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
      if (blk + 1 < nb) act_u_to(ws.u_win1[(blk + 1) * kh + s_i]);
      sync();
      // Horizontal block blk: everything but the current row's taps.
      const BlockLayout& HB = L.up_ul[0][blk];
      float* p1 = ws.row_term_c1[blk];
      float* p2 = ws.row_term_c2[blk];
      init_rows(rs, p1, M, F, vec(HB.b1));
      gemm_acc((int)M, ws.uact, F2, mat(HB.nin), fp0, fp1, p1, F);
      if (gc)
        add_gcond(p1, F, 1, blk, 0, 1);
      else if (cc)
        gemm_acc((int)M, ws.condce, 2 * cc, mat(HB.cc1), fp0, fp1, p1, F);
      init_rows2(rs, p2, M, vec(HB.b2));
      if (gc) {
        add_gcond(p2, F2, 1, blk, F, 2);
      } else if (cc) {
        gemm_acc((int)M, ws.condrow, cc, mat(HB.cc2a), fp0, fp1, p2, F2);
        gemm_acc((int)M, ws.condrow, cc, mat(HB.cc2b), fp0, fp1, p2 + F, F2);
      }
      for (int64_t r = 0; r + 1 < kh; ++r) {
        const int64_t row = i - kh + 1 + r;
        if (row < 0) continue;
        const float* r1 = ws.ul_win1[blk * kh + slot(row)];
        const float* r2 = ws.ul_win2[blk * kh + slot(row)];
        const PackedMat w1 = mat(HB.c1[r]), wa = mat(HB.c2a[r]), wb = mat(HB.c2b[r]);
        for (int64_t b = 0; b < Bt; ++b) {
          gemm_acc((int)W, r1 + b * arow, F2, w1, fp0, fp1, p1 + b * W * F, F);
          gemm_acc((int)W, r2 + b * arow, F2, wa, fp0, fp1, p2 + b * W * F2, F2);
          gemm_acc((int)W, r2 + b * arow, F2, wb, fp0, fp1, p2 + b * W * F2 + F, F2);
        }
      }
    }
  }

  // Horizontal stream at pixel (i, j), then the head and the sampling (head_and_sample).
  //
  // Team synchronisation: two barriers per block (act(ul) and act(c1) complete before
  // the GEMMs that read every channel), one before the head.
  void pixel(int64_t i, int64_t j) {
    const int fp0 = ps.fp0, fp1 = ps.fp1, c0 = ps.c0, nown = ps.nown;
    float* ul = ws.ul;
    input_ul_pixel(j, ws.row_term_init, ul);
    const int s_i = slot(i);
    for (int64_t blk = 0; blk < nb; ++blk) {
      const BlockLayout& HB = L.up_ul[0][blk];
      float* r1 = ws.ul_win1[blk * kh + s_i];
      float* r2 = ws.ul_win2[blk * kh + s_i];
      for (int64_t b = 0; b < Bt; ++b) {
        float* d = r1 + b * arow + (kh - 1 + j) * F2;
        concat_elu(ul + b * F + c0, nown, d + c0, d + F + c0);
      }
      pixel_sync();
      float* c1 = ws.row_term_c1[blk] + j * F;  // rows: stride W * F
      gemm_acc((int)Bt, r1 + j * F2, arow, mat(HB.c1[kh - 1]), fp0, fp1, c1, W * F);
      for (int64_t b = 0; b < Bt; ++b) {
        float* d = r2 + b * arow + (kh - 1 + j) * F2;
        concat_elu(c1 + b * W * F + c0, nown, d + c0, d + F + c0);
      }
      pixel_sync();
      float* c2 = ws.row_term_c2[blk] + j * F2;  // rows: stride W * 2F
      gemm_acc((int)Bt, r2 + j * F2, arow, mat(HB.c2a[kh - 1]), fp0, fp1, c2, W * F2);
      gemm_acc((int)Bt, r2 + j * F2, arow, mat(HB.c2b[kh - 1]), fp0, fp1, c2 + F, W * F2);
      for (int64_t b = 0; b < Bt; ++b)
        gate_add(ul + b * F + c0, c2 + b * W * F2 + c0, c2 + b * W * F2 + F + c0, nown);
    }
    head_and_sample(i, j, ul);
  }
};

}  // namespace

void sample_gated(const SampleArgs& a) {
  sample_teams<Engine, Workspace>(a, [&](int64_t b0, int64_t Bt, int team, Workspace* ws) {
    make_workspace(*a.cfg, a.H, a.W, b0, Bt, team, a.cond_global, ws);
    if (a.cond_global && a.cfg->cond_channels && a.cfg->blocks) global_cond_terms(a, ws);
  });
}

int64_t gated_workspace_floats(const SampleArgs& a) {
  return count_team_floats<Workspace>(a, [&](int64_t b0, int64_t Bt, int team, Workspace* ws) {
    make_workspace(*a.cfg, a.H, a.W, b0, Bt, team, a.cond_global, ws, /*allocate=*/false);
  });
}

}  // namespace cpu
}  // namespace pixelaux
