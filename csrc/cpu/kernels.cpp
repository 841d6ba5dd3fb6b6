// Small dense kernels of the CPU cached engine (see kernels.h).
//
// The file is compiled for the generic target. The AVX2+FMA kernels carry
// __attribute__((target("avx2,fma"))), the AVX-512 ones target("avx512f,..."), and they
// are only called after a cpuid check, so the same binary runs on any x86-64 CPU (and
// the portable kernels on other CPUs).
//
// Every tile (MR rows x NP panels of 16 columns) accumulates each element as two
// half-sums over k (kernels.h): small tiles (one pixel of a small batch) run both
// chains in the same loop, which doubles the independent FMAs in flight where a
// matrix-vector product would otherwise wait on the FMA latency; larger tiles, which
// already have enough accumulators, run the halves one after the other.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PIXELAUX_HAVE_X86_KERNELS 1
#include <immintrin.h>
#endif

namespace pixelaux {
namespace cpu {
namespace {

using TileFn = void (*)(int, const float*, int64_t, const float*, int64_t, float*, int64_t, int);

// ----------------------------------------------------------------------------------
// Portable kernels
// ----------------------------------------------------------------------------------

template <int MR, int NP>
void uk_generic(int K, const float* A, int64_t lda, const float* Wp, int64_t pstride,
                float* C, int64_t ldc, int ncols) {
  constexpr int NC = NP * kPanel;
  float lo[MR][NC], hi[MR][NC];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NC; ++n) lo[m][n] = hi[m][n] = 0.f;
  const int Kh = K / 2;
  auto run = [&](float (&acc)[MR][NC], int k0, int k1) {
    for (int k = k0; k < k1; ++k)
      for (int p = 0; p < NP; ++p) {
        const float* w = Wp + p * pstride + (int64_t)k * kPanel;
        for (int m = 0; m < MR; ++m) {
          const float a = A[m * lda + k];
          for (int n = 0; n < kPanel; ++n) acc[m][p * kPanel + n] += a * w[n];
        }
      }
  };
  run(lo, 0, Kh);
  run(hi, Kh, K);
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < ncols; ++n) C[m * ldc + n] += lo[m][n] + hi[m][n];
}

inline float elu1(float v) { return v > 0.f ? v : std::expm1(v); }

void concat_elu_generic(const float* x, int n, float* pos, float* neg) {
  for (int c = 0; c < n; ++c) {
    const float v = x[c];
    pos[c] = elu1(v);
    neg[c] = elu1(-v);
  }
}

void elu_generic(const float* x, int n, float* y) {
  for (int c = 0; c < n; ++c) y[c] = elu1(x[c]);
}

void gate_add_generic(float* x, const float* a, const float* b, int n) {
  for (int c = 0; c < n; ++c) x[c] += a[c] * (1.f / (1.f + std::exp(-b[c])));
}

// Tile table of the portable and AVX2 families: rows MR x panels NP.
struct TileTable {
  TileFn np1[7];  // MR = 1..6, one panel
  TileFn np2[4];  // MR = 1..3, two panels
  TileFn np4;     // MR = 1, four panels
};

#define PIXELAUX_TILES(fn)                                                              \
  TileTable {                                                                           \
    {nullptr, fn<1, 1>, fn<2, 1>, fn<3, 1>, fn<4, 1>, fn<5, 1>, fn<6, 1>},              \
        {nullptr, fn<1, 2>, fn<2, 2>, fn<3, 2>}, fn<1, 4>                               \
  }

// The driver of the 8-wide families: tall tiles over one panel where there are rows
// enough, wide tiles over the panels for the last few rows (one pixel of a small batch).
void gemm_table(const TileTable& T, int M, const float* A, int64_t lda, const PackedMat& W,
                int p0, int p1, float* C, int64_t ldc) {
  const int K = W.K;
  const int64_t pstride = (int64_t)K * kPanel;
  auto cols = [&](int p, int np) { return std::min(W.N, (p + np) * kPanel) - p * kPanel; };
  auto few_rows = [&](int rows, const float* a, float* c) {
    int p = p0;
    if (rows == 1)
      for (; p + 4 <= p1; p += 4)
        T.np4(K, a, lda, W.data + p * pstride, pstride, c + p * kPanel, ldc, cols(p, 4));
    for (; p + 2 <= p1; p += 2)
      T.np2[rows](K, a, lda, W.data + p * pstride, pstride, c + p * kPanel, ldc, cols(p, 2));
    for (; p < p1; ++p)
      T.np1[rows](K, a, lda, W.data + p * pstride, pstride, c + p * kPanel, ldc, cols(p, 1));
  };
  int m = 0;
  for (; M - m >= 4; m += 6) {
    const int mr = std::min(6, M - m);
    const float* a = A + m * lda;
    float* c = C + m * ldc;
    for (int p = p0; p < p1; ++p)
      T.np1[mr](K, a, lda, W.data + p * pstride, pstride, c + p * kPanel, ldc, cols(p, 1));
  }
  if (m < M) few_rows(M - m, A + m * lda, C + m * ldc);
}

const TileTable kGenericTiles = PIXELAUX_TILES(uk_generic);

// ----------------------------------------------------------------------------------
// AVX2 + FMA kernels
// ----------------------------------------------------------------------------------
#ifdef PIXELAUX_HAVE_X86_KERNELS

#define PIXELAUX_AVX2 __attribute__((target("avx2,fma")))

// c[0:n] += (v0, v1)[0:n] for n = min(16, ncols) (nothing when ncols <= 0).
PIXELAUX_AVX2 inline void store_add_avx2(float* c, __m256 v0, __m256 v1, int ncols) {
  if (ncols >= kPanel) {
    _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), v0));
    _mm256_storeu_ps(c + 8, _mm256_add_ps(_mm256_loadu_ps(c + 8), v1));
    return;
  }
  alignas(32) float tmp[kPanel];
  _mm256_store_ps(tmp, v0);
  _mm256_store_ps(tmp + 8, v1);
  for (int n = 0; n < ncols; ++n) c[n] += tmp[n];
}

// acc[m][p] += A[m, k] W[k, p] for k in [k0, k1).
template <int MR, int NP>
PIXELAUX_AVX2 inline void acc_avx2(__m256 (&acc)[MR][NP][2], int k0, int k1, const float* A,
                                   int64_t lda, const float* Wp, int64_t pstride) {
  for (int k = k0; k < k1; ++k) {
    __m256 w[NP][2];
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) {
      const float* wp = Wp + p * pstride + (int64_t)k * kPanel;
      w[p][0] = _mm256_loadu_ps(wp);
      w[p][1] = _mm256_loadu_ps(wp + 8);
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 a = _mm256_broadcast_ss(A + m * lda + k);
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) {
        acc[m][p][0] = _mm256_fmadd_ps(a, w[p][0], acc[m][p][0]);
        acc[m][p][1] = _mm256_fmadd_ps(a, w[p][1], acc[m][p][1]);
      }
    }
  }
}

template <int MR, int NP>
PIXELAUX_AVX2 void uk_avx2(int K, const float* A, int64_t lda, const float* Wp, int64_t pstride,
                           float* C, int64_t ldc, int ncols) {
  constexpr bool kDual = MR * NP <= 2;  // both half-sums in one loop (<= 8 accumulators)
  __m256 lo[MR][NP][2], hi[MR][NP][2];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p)
      lo[m][p][0] = lo[m][p][1] = hi[m][p][0] = hi[m][p][1] = _mm256_setzero_ps();
  const int Kh = K / 2;
  if (kDual) {
    for (int t = 0; t < Kh; ++t) {
      __m256 wl[NP][2], wh[NP][2];
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) {
        const float* wp = Wp + p * pstride + (int64_t)t * kPanel;
        const float* wq = Wp + p * pstride + (int64_t)(Kh + t) * kPanel;
        wl[p][0] = _mm256_loadu_ps(wp);
        wl[p][1] = _mm256_loadu_ps(wp + 8);
        wh[p][0] = _mm256_loadu_ps(wq);
        wh[p][1] = _mm256_loadu_ps(wq + 8);
      }
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m256 al = _mm256_broadcast_ss(A + m * lda + t);
        const __m256 ah = _mm256_broadcast_ss(A + m * lda + Kh + t);
#pragma GCC unroll 4
        for (int p = 0; p < NP; ++p) {
          lo[m][p][0] = _mm256_fmadd_ps(al, wl[p][0], lo[m][p][0]);
          lo[m][p][1] = _mm256_fmadd_ps(al, wl[p][1], lo[m][p][1]);
          hi[m][p][0] = _mm256_fmadd_ps(ah, wh[p][0], hi[m][p][0]);
          hi[m][p][1] = _mm256_fmadd_ps(ah, wh[p][1], hi[m][p][1]);
        }
      }
    }
    if (K - Kh > Kh) acc_avx2<MR, NP>(hi, K - 1, K, A, lda, Wp, pstride);
  } else {
    acc_avx2<MR, NP>(lo, 0, Kh, A, lda, Wp, pstride);
    acc_avx2<MR, NP>(hi, Kh, K, A, lda, Wp, pstride);
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p)
      store_add_avx2(C + m * ldc + p * kPanel, _mm256_add_ps(lo[m][p][0], hi[m][p][0]),
                     _mm256_add_ps(lo[m][p][1], hi[m][p][1]), ncols - p * kPanel);
}

// exp for the activations: Cephes-style range reduction and polynomial (about 1 ulp
// over the clamped range; inputs below -87.3 give ~0, above 88 give exp(88)).
PIXELAUX_AVX2 inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_cvttps_epi32(fx);
  e = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

PIXELAUX_AVX2 void concat_elu_avx2(const float* x, int n, float* pos, float* neg) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 sign = _mm256_set1_ps(-0.f);
  int c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    const __m256 nabs = _mm256_or_ps(v, sign);                  // -|v|
    const __m256 e = _mm256_sub_ps(exp256(nabs), one);         // expm1(-|v|)
    const __m256 gt = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
    const __m256 negv = _mm256_xor_ps(v, sign);
    _mm256_storeu_ps(pos + c, _mm256_blendv_ps(e, v, gt));     // v > 0 ? v : e
    _mm256_storeu_ps(neg + c, _mm256_blendv_ps(negv, e, gt));  // v > 0 ? e : -v
  }
  if (c < n) concat_elu_generic(x + c, n - c, pos + c, neg + c);
}

PIXELAUX_AVX2 void elu_avx2(const float* x, int n, float* y) {
  const __m256 one = _mm256_set1_ps(1.f);
  int c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    const __m256 e = _mm256_sub_ps(exp256(_mm256_min_ps(v, _mm256_setzero_ps())), one);
    const __m256 gt = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
    _mm256_storeu_ps(y + c, _mm256_blendv_ps(e, v, gt));
  }
  if (c < n) elu_generic(x + c, n - c, y + c);
}

PIXELAUX_AVX2 void gate_add_avx2(float* x, const float* a, const float* b, int n) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 sign = _mm256_set1_ps(-0.f);
  int c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 bv = _mm256_loadu_ps(b + c);
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_xor_ps(bv, sign))));
    _mm256_storeu_ps(x + c, _mm256_fmadd_ps(_mm256_loadu_ps(a + c), s, _mm256_loadu_ps(x + c)));
  }
  if (c < n) gate_add_generic(x + c, a + c, b + c, n - c);
}

template <int MR, int NP>
void run_tile_avx2(int K, const float* A, int64_t lda, const float* Wp, int64_t pstride,
                   float* C, int64_t ldc, int ncols) {
  uk_avx2<MR, NP>(K, A, lda, Wp, pstride, C, ldc, ncols);
}

const TileTable kAvx2Tiles = PIXELAUX_TILES(run_tile_avx2);

// ----------------------------------------------------------------------------------
// AVX-512F kernels: a panel of 16 columns is one register; 32 registers hold tiles of
// up to 24 accumulators (6 rows x 4 panels, 8 x 3, 12 x 2 or 12 x 1).
// ----------------------------------------------------------------------------------

#define PIXELAUX_AVX512 __attribute__((target("avx512f,avx2,fma")))
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_ps(): a false -Wmaybe-uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

constexpr int kMaxNp512 = 4;
constexpr int kMaxMr512 = 12;
constexpr int kMr512[kMaxNp512 + 1] = {0, 12, 12, 8, 6};  // rows per tile, by panels

PIXELAUX_AVX512 inline __mmask16 mask16(int n) {
  return n >= kPanel ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

template <int MR, int NP>
PIXELAUX_AVX512 inline void acc_avx512(__m512 (&acc)[MR][NP], int k0, int k1, const float* A,
                                       int64_t lda, const float* Wp, int64_t pstride) {
  for (int k = k0; k < k1; ++k) {
    __m512 w[NP];
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) w[p] = _mm512_loadu_ps(Wp + p * pstride + (int64_t)k * kPanel);
#pragma GCC unroll 12
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_set1_ps(A[m * lda + k]);
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) acc[m][p] = _mm512_fmadd_ps(a, w[p], acc[m][p]);
    }
  }
}

template <int MR, int NP>
PIXELAUX_AVX512 void uk_avx512(int K, const float* A, int64_t lda, const float* Wp,
                               int64_t pstride, float* C, int64_t ldc, int ncols) {
  constexpr bool kDual = MR * NP <= 8 && MR <= 4;  // both half-sums in one loop
  __m512 lo[MR][NP], hi[MR][NP];
#pragma GCC unroll 12
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) lo[m][p] = hi[m][p] = _mm512_setzero_ps();
  const int Kh = K / 2;
  if (kDual) {
    for (int t = 0; t < Kh; ++t) {
      __m512 wl[NP], wh[NP];
#pragma GCC unroll 4
      for (int p = 0; p < NP; ++p) {
        wl[p] = _mm512_loadu_ps(Wp + p * pstride + (int64_t)t * kPanel);
        wh[p] = _mm512_loadu_ps(Wp + p * pstride + (int64_t)(Kh + t) * kPanel);
      }
#pragma GCC unroll 4
      for (int m = 0; m < MR; ++m) {
        const __m512 al = _mm512_set1_ps(A[m * lda + t]);
        const __m512 ah = _mm512_set1_ps(A[m * lda + Kh + t]);
#pragma GCC unroll 4
        for (int p = 0; p < NP; ++p) {
          lo[m][p] = _mm512_fmadd_ps(al, wl[p], lo[m][p]);
          hi[m][p] = _mm512_fmadd_ps(ah, wh[p], hi[m][p]);
        }
      }
    }
    if (K - Kh > Kh) acc_avx512<MR, NP>(hi, K - 1, K, A, lda, Wp, pstride);
  } else {
    acc_avx512<MR, NP>(lo, 0, Kh, A, lda, Wp, pstride);
    acc_avx512<MR, NP>(hi, Kh, K, A, lda, Wp, pstride);
  }
#pragma GCC unroll 12
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) {
      float* c = C + m * ldc + p * kPanel;
      const __m512 s = _mm512_add_ps(lo[m][p], hi[m][p]);
      const int n = ncols - p * kPanel;
      if (n >= kPanel) {
        _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), s));
      } else if (n > 0) {
        const __mmask16 k = mask16(n);
        _mm512_mask_storeu_ps(c, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, c), s));
      }
    }
}

template <int MR, int NP>
void run_tile_avx512(int K, const float* A, int64_t lda, const float* Wp, int64_t pstride,
                     float* C, int64_t ldc, int ncols) {
  uk_avx512<MR, NP>(K, A, lda, Wp, pstride, C, ldc, ncols);
}

#define PIXELAUX_ROW512(NP)                                                                   \
  {nullptr,                 run_tile_avx512<1, NP>,  run_tile_avx512<2, NP>,                  \
   run_tile_avx512<3, NP>,  run_tile_avx512<4, NP>,  run_tile_avx512<5, NP>,                  \
   run_tile_avx512<6, NP>,  run_tile_avx512<7, NP>,  run_tile_avx512<8, NP>,                  \
   run_tile_avx512<9, NP>,  run_tile_avx512<10, NP>, run_tile_avx512<11, NP>,                 \
   run_tile_avx512<12, NP>}

// [NP][MR]; entries with MR > kMr512[NP] are never called.
const TileFn kAvx512Tiles[kMaxNp512 + 1][kMaxMr512 + 1] = {
    {}, PIXELAUX_ROW512(1), PIXELAUX_ROW512(2), PIXELAUX_ROW512(3), PIXELAUX_ROW512(4)};

// Panels in groups of up to four (one register each per row), rows in tiles of up to
// kMr512[np]: every weight loaded from L1/L2 feeds MR FMAs, every broadcast NP.
void gemm_avx512(int M, const float* A, int64_t lda, const PackedMat& W, int p0, int p1,
                 float* C, int64_t ldc) {
  const int K = W.K;
  const int64_t pstride = (int64_t)K * kPanel;
  for (int p = p0; p < p1;) {
    const int np = std::min(kMaxNp512, p1 - p);
    const int ncols = std::min(W.N, (p + np) * kPanel) - p * kPanel;
    const float* w = W.data + p * pstride;
    // rows: tiles of equal size (no short last tile where it can be avoided)
    const int mrmax = kMr512[np];
    const int tiles = (M + mrmax - 1) / mrmax;
    int m = 0;
    for (int t = 0; t < tiles; ++t) {
      const int end = (int)((int64_t)M * (t + 1) / tiles);
      const int mr = end - m;
      kAvx512Tiles[np][mr](K, A + m * lda, lda, w, pstride, C + m * ldc + p * kPanel, ldc, ncols);
      m = end;
    }
    p += np;
  }
}

PIXELAUX_AVX512 inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.0f));
  __m512 fx = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f));
  fx = _mm512_roundscale_ps(fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 y = _mm512_set1_ps(1.9875691500E-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
  y = _mm512_fmadd_ps(y, z, _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  __m512i e = _mm512_cvttps_epi32(fx);
  e = _mm512_slli_epi32(_mm512_add_epi32(e, _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

PIXELAUX_AVX512 inline __m512 or_sign(__m512 v) {  // -|v|
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN)));
}
PIXELAUX_AVX512 inline __m512 flip_sign(__m512 v) {  // -v
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN)));
}

// The element-wise kernels run every element through the same vector code (the last
// partial vector masked), so a value never depends on where a thread's range starts.
PIXELAUX_AVX512 void concat_elu_avx512(const float* x, int n, float* pos, float* neg) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int c = 0; c < n; c += kPanel) {
    const __mmask16 k = mask16(n - c);
    const __m512 v = _mm512_maskz_loadu_ps(k, x + c);
    const __m512 e = _mm512_sub_ps(exp512(or_sign(v)), one);  // expm1(-|v|)
    const __mmask16 gt = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    _mm512_mask_storeu_ps(pos + c, k, _mm512_mask_blend_ps(gt, e, v));            // v > 0 ? v : e
    _mm512_mask_storeu_ps(neg + c, k, _mm512_mask_blend_ps(gt, flip_sign(v), e));  // v > 0 ? e : -v
  }
}

PIXELAUX_AVX512 void elu_avx512(const float* x, int n, float* y) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int c = 0; c < n; c += kPanel) {
    const __mmask16 k = mask16(n - c);
    const __m512 v = _mm512_maskz_loadu_ps(k, x + c);
    const __m512 e = _mm512_sub_ps(exp512(_mm512_min_ps(v, _mm512_setzero_ps())), one);
    const __mmask16 gt = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    _mm512_mask_storeu_ps(y + c, k, _mm512_mask_blend_ps(gt, e, v));
  }
}

PIXELAUX_AVX512 void gate_add_avx512(float* x, const float* a, const float* b, int n) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int c = 0; c < n; c += kPanel) {
    const __mmask16 k = mask16(n - c);
    const __m512 bv = _mm512_maskz_loadu_ps(k, b + c);
    const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp512(flip_sign(bv))));
    const __m512 r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + c), s, _mm512_maskz_loadu_ps(k, x + c));
    _mm512_mask_storeu_ps(x + c, k, r);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // PIXELAUX_HAVE_X86_KERNELS

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

Isa detect_isa() {
  // PIXELAUX_CPU_KERNELS=generic|avx2|avx512 caps the family (for tests and comparisons).
  Isa cap = Isa::kAvx512;
  if (const char* env = std::getenv("PIXELAUX_CPU_KERNELS")) {
    if (std::strcmp(env, "generic") == 0) cap = Isa::kGeneric;
    if (std::strcmp(env, "avx2") == 0) cap = Isa::kAvx2;
  }
#ifdef PIXELAUX_HAVE_X86_KERNELS
  __builtin_cpu_init();
  if (cap >= Isa::kAvx512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
  if (cap >= Isa::kAvx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Isa::kAvx2;
#endif
  (void)cap;
  return Isa::kGeneric;
}

const Isa kIsa = detect_isa();

}  // namespace

void gemm_acc(int M, const float* A, int64_t lda, const PackedMat& W, int p0, int p1,
              float* C, int64_t ldc) {
  p1 = std::min(p1, W.NP);
  if (M <= 0 || p0 >= p1 || W.K == 0) return;
#ifdef PIXELAUX_HAVE_X86_KERNELS
  if (kIsa == Isa::kAvx512) return gemm_avx512(M, A, lda, W, p0, p1, C, ldc);
  if (kIsa == Isa::kAvx2) return gemm_table(kAvx2Tiles, M, A, lda, W, p0, p1, C, ldc);
#endif
  gemm_table(kGenericTiles, M, A, lda, W, p0, p1, C, ldc);
}

void concat_elu(const float* x, int n, float* pos, float* neg) {
#ifdef PIXELAUX_HAVE_X86_KERNELS
  if (kIsa == Isa::kAvx512) return concat_elu_avx512(x, n, pos, neg);
  if (kIsa == Isa::kAvx2) return concat_elu_avx2(x, n, pos, neg);
#endif
  concat_elu_generic(x, n, pos, neg);
}

void elu(const float* x, int n, float* y) {
#ifdef PIXELAUX_HAVE_X86_KERNELS
  if (kIsa == Isa::kAvx512) return elu_avx512(x, n, y);
  if (kIsa == Isa::kAvx2) return elu_avx2(x, n, y);
#endif
  elu_generic(x, n, y);
}

void gate_add(float* x, const float* a, const float* b, int n) {
#ifdef PIXELAUX_HAVE_X86_KERNELS
  if (kIsa == Isa::kAvx512) return gate_add_avx512(x, a, b, n);
  if (kIsa == Isa::kAvx2) return gate_add_avx2(x, a, b, n);
#endif
  gate_add_generic(x, a, b, n);
}

const char* kernel_isa() {
  switch (kIsa) {
    case Isa::kAvx512: return "avx512f";
    case Isa::kAvx2: return "avx2+fma";
    default: return "generic";
  }
}

}  // namespace cpu
}  // namespace pixelaux
