// Packing of conv weights into the panels of the GEMM kernels (kernels.h), shared by
// the engines: a flat float tensor holds every matrix and bias vector of a model at
// offsets given by the engine's layout (MatSlot / VecSlot).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"

namespace pixelaux {
namespace cpu {

struct MatSlot {
  int64_t off = 0;
  int K = 0, N = 0, NP = 0;
};
struct VecSlot {
  int64_t off = 0;
  int N = 0;
};

inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// Hands out the slots of a layout one after the other (each 16-float aligned).
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

// The raw weights expected by a pack function, in order: name and shape of each.
struct RawSpec {
  std::string name;
  std::vector<int64_t> shape;
};

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

// Conv weight (Cout, Cin, KH, KW).
struct ConvW {
  const float* w;
  int64_t cout, cin, kh, kw;
  float at(int64_t o, int64_t c, int64_t r, int64_t s) const {
    return w[((o * cin + c) * kh + r) * kw + s];
  }
};

// Kernel row r of a conv as the (tap column s, input channel c) x (output o0 + n) matrix.
inline void fill_row(float* base, const MatSlot& m, const ConvW& cw, int r, int o0) {
  fill_mat(base, m, [&](int k, int n) {
    const int s = k / (int)cw.cin, c = k % (int)cw.cin;
    return cw.at(o0 + n, c, r, s);
  });
}

inline void fill_vec(float* base, const VecSlot& v, const float* src, int n0 = 0) {
  for (int i = 0; i < v.N; ++i) base[v.off + i] = src[n0 + i];
}

inline PackedMat packed_mat(const float* packed, const MatSlot& m) {
  PackedMat p;
  p.data = packed + m.off;
  p.K = m.K;
  p.N = m.N;
  p.NP = m.NP;
  return p;
}

}  // namespace cpu
}  // namespace pixelaux
