// Small dense kernels of the CPU cached engine (see kernels.h).
//
// The file is compiled for the generic target. The AVX2+FMA kernels carry
// __attribute__((target("avx2,fma"))) and are only called after a cpuid check, so
// the same binary runs on any x86-64 CPU (and the portable kernels on other CPUs).
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PIXELAUX_HAVE_AVX2_KERNELS 1
#include <immintrin.h>
#endif

namespace pixelaux {
namespace cpu {
namespace {

// ----------------------------------------------------------------------------------
// Portable kernels
// ----------------------------------------------------------------------------------

template <int MR, int NP>
void uk_generic(int K, const float* A, int64_t lda, const float* Wp, int64_t pstride,
                float* C, int64_t ldc, int ncols) {
  float acc[MR][NP * kPanel];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NP * kPanel; ++n) acc[m][n] = 0.f;
  for (int k = 0; k < K; ++k) {
    for (int p = 0; p < NP; ++p) {
      const float* w = Wp + p * pstride + (int64_t)k * kPanel;
      for (int m = 0; m < MR; ++m) {
        const float a = A[m * lda + k];
        for (int n = 0; n < kPanel; ++n) acc[m][p * kPanel + n] += a * w[n];
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < ncols; ++n) C[m * ldc + n] += acc[m][n];
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

template <int MR, int NP>
void run_tile_generic(int K, const float* A, int64_t lda, const float* Wp, int64_t pstride,
                      float* C, int64_t ldc, int ncols) {
  uk_generic<MR, NP>(K, A, lda, Wp, pstride, C, ldc, ncols);
}

// ----------------------------------------------------------------------------------
// AVX2 + FMA kernels
// ----------------------------------------------------------------------------------
#ifdef PIXELAUX_HAVE_AVX2_KERNELS

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

template <int MR, int NP>
PIXELAUX_AVX2 void uk_avx2(int K, const float* A, int64_t lda, const float* Wp, int64_t pstride,
                           float* C, int64_t ldc, int ncols) {
  __m256 acc[MR][NP][2];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p) {
      acc[m][p][0] = _mm256_setzero_ps();
      acc[m][p][1] = _mm256_setzero_ps();
    }
  for (int k = 0; k < K; ++k) {
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
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int p = 0; p < NP; ++p)
      store_add_avx2(C + m * ldc + p * kPanel, acc[m][p][0], acc[m][p][1], ncols - p * kPanel);
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

bool detect_avx2() {
  // PIXELAUX_CPU_KERNELS=generic forces the portable kernels (for tests and comparisons).
  const char* env = std::getenv("PIXELAUX_CPU_KERNELS");
  if (env && std::strcmp(env, "generic") == 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
bool detect_avx2() { return false; }
#endif

const bool kUseAvx2 = detect_avx2();

using TileFn = void (*)(int, const float*, int64_t, const float*, int64_t, float*, int64_t, int);

// Tile shapes: rows MR x panels NP, at most 12 accumulators of 8 floats.
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

const TileTable kTiles =
#ifdef PIXELAUX_HAVE_AVX2_KERNELS
    kUseAvx2 ? PIXELAUX_TILES(run_tile_avx2) :
#endif
             PIXELAUX_TILES(run_tile_generic);

}  // namespace

void gemm_acc(int M, const float* A, int64_t lda, const PackedMat& W, int p0, int p1,
              float* C, int64_t ldc) {
  p1 = std::min(p1, W.NP);
  if (M <= 0 || p0 >= p1 || W.K == 0) return;
  const int K = W.K;
  const int64_t pstride = (int64_t)K * kPanel;
  auto cols = [&](int p, int np) { return std::min(W.N, (p + np) * kPanel) - p * kPanel; };
  // Few rows (one pixel of a small batch, or the last rows): wide tiles over the
  // panels, so that every tile keeps at least 8 independent accumulators.
  auto few_rows = [&](int rows, const float* a, float* c) {
    int p = p0;
    if (rows == 1)
      for (; p + 4 <= p1; p += 4)
        kTiles.np4(K, a, lda, W.data + p * pstride, pstride, c + p * kPanel, ldc, cols(p, 4));
    for (; p + 2 <= p1; p += 2)
      kTiles.np2[rows](K, a, lda, W.data + p * pstride, pstride, c + p * kPanel, ldc, cols(p, 2));
    for (; p < p1; ++p)
      kTiles.np1[rows](K, a, lda, W.data + p * pstride, pstride, c + p * kPanel, ldc, cols(p, 1));
  };
  int m = 0;
  for (; M - m >= 4; m += 6) {
    const int mr = std::min(6, M - m);
    const float* a = A + m * lda;
    float* c = C + m * ldc;
    for (int p = p0; p < p1; ++p)
      kTiles.np1[mr](K, a, lda, W.data + p * pstride, pstride, c + p * kPanel, ldc, cols(p, 1));
  }
  if (m < M) few_rows(M - m, A + m * lda, C + m * ldc);
}

void concat_elu(const float* x, int n, float* pos, float* neg) {
#ifdef PIXELAUX_HAVE_AVX2_KERNELS
  if (kUseAvx2) return concat_elu_avx2(x, n, pos, neg);
#endif
  concat_elu_generic(x, n, pos, neg);
}

void elu(const float* x, int n, float* y) {
#ifdef PIXELAUX_HAVE_AVX2_KERNELS
  if (kUseAvx2) return elu_avx2(x, n, y);
#endif
  elu_generic(x, n, y);
}

void gate_add(float* x, const float* a, const float* b, int n) {
#ifdef PIXELAUX_HAVE_AVX2_KERNELS
  if (kUseAvx2) return gate_add_avx2(x, a, b, n);
#endif
  gate_add_generic(x, a, b, n);
}

const char* kernel_isa() { return kUseAvx2 ? "avx2+fma" : "generic"; }

}  // namespace cpu
}  // namespace pixelaux
