// Small dense kernels of the CPU cached engine: a packed-panel GEMM and the
// element-wise activations of the Gated PixelCNN. Torch-free (raw pointers only).
//
// Every kernel has a portable version and, on x86-64, an AVX2+FMA and an AVX-512F
// version, one family chosen once at run time (cpuid), so the library is built for the
// generic target (no -march) and still runs the wide kernels where the CPU has them.
// PIXELAUX_CPU_KERNELS=generic|avx2|avx512 caps the family (tests, comparisons).
//
// Accumulation order (the same in every tile shape of a family, so that any split of
// rows or output panels over threads gives bitwise the same results): each element
//   C[m, n] += lo + hi,  lo = sum_{k < K/2} A[m, k] W[k, n],  hi = sum_{k >= K/2} ...
// each sum a chain of FMAs (plain multiply-adds in the portable family) from 0 in
// ascending k. The two half-sums are independent chains, so a one-row (batch 1) tile
// runs two of them side by side and hides the FMA latency.
#pragma once

#include <cstdint>

namespace pixelaux {
namespace cpu {

constexpr int kPanel = 16;  // columns per packed weight panel

// A weight matrix (K x N) packed for the GEMM kernels: NP = ceil(N / 16) panels, panel
// p holds columns [16p, 16p+16) as K rows of 16 floats (zero-padded past N), so the
// element (k, n) sits at data[(n / 16) * K * 16 + k * 16 + n % 16].
struct PackedMat {
  const float* data = nullptr;
  int K = 0;
  int N = 0;
  int NP = 0;
};

// C[m, n] += sum_k A[m * lda + k] * W[k, n] for m in [0, M) and the columns
// n in [16 * p0, min(N, 16 * p1)) of panels p0 .. p1-1. C points at column 0
// of row 0 (row stride ldc). A's rows may overlap (lda < K): it is only read.
void gemm_acc(int M, const float* A, int64_t lda, const PackedMat& W, int p0, int p1,
              float* C, int64_t ldc);

// concat-ELU of x[0..n): pos[c] = elu(x[c]), neg[c] = elu(-x[c]).
void concat_elu(const float* x, int n, float* pos, float* neg);
// y[c] = elu(x[c]).
void elu(const float* x, int n, float* y);
// x[c] += a[c] * sigmoid(b[c]).
void gate_add(float* x, const float* a, const float* b, int n);

// Name of the kernel family in use ("avx512f", "avx2+fma" or "generic").
const char* kernel_isa();

}  // namespace cpu
}  // namespace pixelaux
