// The pyramid's conditioning encoder (pixelaux/encoders.py, UNetEncoder) on the GEMM
// kernels: the level below (B, C, h, w) -> the map (B, out, 2h, 2w), computed once per
// batch before a level is sampled (docs/design.md section 2.5). Torch-free.
//
// The module, step by step, with every activation channels-last in a zero-bordered
// buffer ((rows + 2) x (cols + 2) x hidden), so that a 3x3 "same" conv is three GEMMs
// (one per kernel row) over every padded position, whose A rows overlap: a pixel and its
// two right neighbours are 3 * Cin contiguous floats (gemm_acc's lda < K):
//
//   h = nearest-upsample(scale(lower))          (scaled as scale_pixels)
//   e = res(stem(h))                            res(x) = x + conv2(elu(conv1(elu(x))))
//   d = res_mid(avgpool2(e))                    at (h, w)
//   map = out(elu(res_dec(e + nearest-upsample(d))))
//
// Each output element is a different sum order than oneDNN's, so the map equals the
// module's to float rounding (tests/test_unet_encoder_cpp.py), not bitwise; every
// sampling engine reads the same map (pixelaux/sampling.py, _encode).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "packing.h"

namespace pixelaux {
namespace cpu {

struct UNetConfig {
  int cin = 0, bits = 0, hidden = 0, cout = 0;
};

// The packed weights: per 3x3 conv its three kernel rows (K = 3 * Cin, N = Cout) and its
// bias; the 1x1 out conv (K = hidden, N = out) and its bias.
struct UNetConv {
  MatSlot row[3];
  VecSlot bias;
};
struct UNetLayout {
  UNetConv stem, enc1, enc2, mid1, mid2, dec1, dec2;
  MatSlot out;
  VecSlot out_bias;
  int64_t total = 0;
};

// config = [in_channels, in_bits, hidden, out_channels]; "" or what is wrong.
std::string parse_unet_config(const int64_t* v, int64_t n, UNetConfig* c);
UNetLayout make_unet_layout(const UNetConfig& c);
// The module's parameters in order (names as in UNetEncoder.state_dict()).
std::vector<RawSpec> unet_raw_specs(const UNetConfig& c);
void pack_unet(const UNetConfig& c, const UNetLayout& lay, const std::vector<const float*>& raw,
               float* out);

// lower: int64 (B, cin, h, w) pixels in [0, 2**bits); out: float (B, cout, 2h, 2w).
// Images are split over torch's threads; each thread keeps its scratch between calls.
void unet_encode(const UNetConfig& c, const UNetLayout& lay, const float* packed,
                 const int64_t* lower, int64_t B, int64_t h, int64_t w, float* out);

}  // namespace cpu
}  // namespace pixelaux
