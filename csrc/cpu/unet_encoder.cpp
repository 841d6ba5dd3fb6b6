#include "unet_encoder.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "kernels.h"

namespace pixelaux {
namespace cpu {

std::string parse_unet_config(const int64_t* v, int64_t n, UNetConfig* c) {
  std::ostringstream e;
  if (n != 4) {
    e << "config must be [in_channels, in_bits, hidden, out_channels], got " << n << " values";
    return e.str();
  }
  const char* names[4] = {"in_channels", "in_bits", "hidden", "out_channels"};
  const int64_t hi[4] = {4096, 16, 4096, 4096};
  for (int i = 0; i < 4; ++i)
    if (v[i] < 1 || v[i] > hi[i]) {
      e << "config " << names[i] << " must be in [1, " << hi[i] << "], got " << v[i];
      return e.str();
    }
  c->cin = (int)v[0];
  c->bits = (int)v[1];
  c->hidden = (int)v[2];
  c->cout = (int)v[3];
  return "";
}

namespace {

UNetConv conv3(LayoutBuilder& b, int cin, int cout) {
  UNetConv c;
  for (int r = 0; r < 3; ++r) c.row[r] = b.mat(3 * cin, cout);
  c.bias = b.vec(cout);
  return c;
}

void pack_conv3(float* out, const UNetConv& slot, const float* w, const float* bias, int cout, int cin) {
  const ConvW cw{w, cout, cin, 3, 3};
  for (int r = 0; r < 3; ++r) fill_row(out, slot.row[r], cw, r, 0);
  fill_vec(out, slot.bias, bias);
}

// A zero-bordered channels-last activation: (rows + 2) x (cols + 2) x ch floats.
struct Padded {
  float* p = nullptr;
  int64_t rows = 0, cols = 0, ch = 0;
  int64_t stride() const { return (cols + 2) * ch; }                      // one padded row
  float* at(int64_t y, int64_t x) const { return p + (y + 1) * stride() + (x + 1) * ch; }  // interior
  int64_t size() const { return (rows + 2) * stride(); }
};

// Every thread's scratch, kept between calls (page faults are slow in VMs; the buffers
// of the same shapes come back each level and batch).
struct Scratch {
  std::vector<float> mem;
  float* take(int64_t n) {
    if ((int64_t)mem.size() < n) mem.assign(n, 0.f);
    return mem.data();
  }
};
thread_local Scratch tls_scratch;
constexpr int64_t kKeepFloats = int64_t(1) << 24;  // a thread keeps up to 64 MiB of scratch

// dst interior = bias (border 0 is kept by the caller).
void fill_bias(const Padded& d, const float* bias) {
  for (int64_t y = 0; y < d.rows; ++y)
    for (int64_t x = 0; x < d.cols; ++x) std::memcpy(d.at(y, x), bias, d.ch * sizeof(float));
}

// dst interior += conv3x3(src) (same padding): one GEMM per kernel row r over every
// position p = y * (W + 2) + x of the padded rows (A row p: pixels x - 1 .. x + 1 of row
// y + r - 1, overlapping rows at stride Cin), the two border columns included: their
// sums land in dst's border columns, which are zeroed again afterwards.
void conv3x3_acc(const Padded& src, const UNetConv& cv, const float* packed, const Padded& dst) {
  const int64_t M = dst.rows * (dst.cols + 2) - 2;
  for (int r = 0; r < 3; ++r) {
    const PackedMat Wm = packed_mat(packed, cv.row[r]);
    gemm_acc((int)M, src.p + r * src.stride(), src.ch, Wm, 0, Wm.NP, dst.at(0, 0), dst.ch);
  }
  for (int64_t y = 0; y < dst.rows; ++y) {
    std::memset(dst.at(y, -1), 0, dst.ch * sizeof(float));
    std::memset(dst.at(y, dst.cols), 0, dst.ch * sizeof(float));
  }
}

// x = x + conv2(elu(conv1(elu(x)))) in place, with two scratch buffers t, u of x's shape.
void residual(const Padded& x, const UNetConv& c1, const UNetConv& c2, const float* packed,
              const Padded& t, const Padded& u) {
  const int64_t n = x.size();
  elu(x.p, (int)n, t.p);  // elu(0) = 0: the border stays zero
  std::memset(u.p, 0, n * sizeof(float));
  fill_bias(u, packed + c1.bias.off);
  conv3x3_acc(t, c1, packed, u);
  elu(u.p, (int)n, t.p);
  const float* b2 = packed + c2.bias.off;
  for (int64_t y = 0; y < x.rows; ++y)
    for (int64_t xx = 0; xx < x.cols; ++xx) {
      float* v = x.at(y, xx);
      for (int64_t k = 0; k < x.ch; ++k) v[k] += b2[k];
    }
  conv3x3_acc(t, c2, packed, x);
}

void encode_one(const UNetConfig& c, const UNetLayout& L, const float* P, const int64_t* lower,
                int64_t h, int64_t w, float* out, Scratch& s) {
  const int64_t H = 2 * h, W = 2 * w, F = c.hidden;
  Padded x0{nullptr, H, W, c.cin}, e{nullptr, H, W, F}, t{nullptr, H, W, F}, u{nullptr, H, W, F};
  Padded q{nullptr, h, w, F}, tq{nullptr, h, w, F}, uq{nullptr, h, w, F};
  const int64_t om = round16(H * W * c.cout);
  const int64_t sizes[8] = {round16(x0.size()), round16(e.size()), round16(t.size()), round16(u.size()),
                            round16(q.size()), round16(tq.size()), round16(uq.size()), om};
  int64_t total = 0;
  for (int64_t v : sizes) total += v;
  float* base = s.take(total);
  Padded* bufs[7] = {&x0, &e, &t, &u, &q, &tq, &uq};
  for (int i = 0; i < 7; ++i) {
    bufs[i]->p = base;
    base += sizes[i];
  }
  float* o = base;  // (H * W, cout) row-major
  std::memset(x0.p, 0, x0.size() * sizeof(float));
  std::memset(e.p, 0, e.size() * sizeof(float));
  std::memset(q.p, 0, q.size() * sizeof(float));

  // h = nearest-upsample(scale(lower)), as scale_pixels: v * (2 / (2**bits - 1)) - 1
  const float scale = (float)(2.0 / (double)((int64_t(1) << c.bits) - 1));
  for (int64_t ch = 0; ch < c.cin; ++ch)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x)
        x0.at(y, x)[ch] = (float)lower[(ch * h + y / 2) * w + x / 2] * scale - 1.f;

  // e = res_enc(stem(h))
  fill_bias(e, P + L.stem.bias.off);
  conv3x3_acc(x0, L.stem, P, e);
  residual(e, L.enc1, L.enc2, P, t, u);

  // d = res_mid(avgpool2(e)), at (h, w)
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      const float *a = e.at(2 * y, 2 * x), *b = e.at(2 * y, 2 * x + 1);
      const float *cc = e.at(2 * y + 1, 2 * x), *d = e.at(2 * y + 1, 2 * x + 1);
      float* v = q.at(y, x);
      for (int64_t k = 0; k < F; ++k) v[k] = (a[k] + b[k] + cc[k] + d[k]) / 4.f;
    }
  residual(q, L.mid1, L.mid2, P, tq, uq);

  // map = out(elu(res_dec(e + nearest-upsample(d))))
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) {
      float* v = e.at(y, x);
      const float* d = q.at(y / 2, x / 2);
      for (int64_t k = 0; k < F; ++k) v[k] += d[k];
    }
  residual(e, L.dec1, L.dec2, P, t, u);
  elu(e.p, (int)e.size(), t.p);
  const float* ob = P + L.out_bias.off;
  for (int64_t p = 0; p < H * W; ++p) std::memcpy(o + p * c.cout, ob, c.cout * sizeof(float));
  const PackedMat Wo = packed_mat(P, L.out);
  for (int64_t y = 0; y < H; ++y)
    gemm_acc((int)W, t.at(y, 0), F, Wo, 0, Wo.NP, o + y * W * c.cout, c.cout);
  // (H * W, cout) -> (cout, H, W)
  for (int64_t p = 0; p < H * W; ++p)
    for (int64_t k = 0; k < c.cout; ++k) out[k * H * W + p] = o[p * c.cout + k];
}

}  // namespace

UNetLayout make_unet_layout(const UNetConfig& c) {
  LayoutBuilder b;
  UNetLayout L;
  L.stem = conv3(b, c.cin, c.hidden);
  L.enc1 = conv3(b, c.hidden, c.hidden);
  L.enc2 = conv3(b, c.hidden, c.hidden);
  L.mid1 = conv3(b, c.hidden, c.hidden);
  L.mid2 = conv3(b, c.hidden, c.hidden);
  L.dec1 = conv3(b, c.hidden, c.hidden);
  L.dec2 = conv3(b, c.hidden, c.hidden);
  L.out = b.mat(c.hidden, c.cout);
  L.out_bias = b.vec(c.cout);
  L.total = b.total;
  return L;
}

std::vector<RawSpec> unet_raw_specs(const UNetConfig& c) {
  const int64_t F = c.hidden;
  std::vector<RawSpec> s = {{"stem.weight", {F, c.cin, 3, 3}}, {"stem.bias", {F}}};
  for (const char* blk : {"enc", "mid", "dec"})
    for (const char* conv : {"conv1", "conv2"}) {
      const std::string n = std::string(blk) + "." + conv;
      s.push_back({n + ".weight", {F, F, 3, 3}});
      s.push_back({n + ".bias", {F}});
    }
  s.push_back({"out.weight", {c.cout, F, 1, 1}});
  s.push_back({"out.bias", {c.cout}});
  return s;
}

void pack_unet(const UNetConfig& c, const UNetLayout& L, const std::vector<const float*>& raw, float* out) {
  std::memset(out, 0, L.total * sizeof(float));
  pack_conv3(out, L.stem, raw[0], raw[1], c.hidden, c.cin);
  const UNetConv* convs[6] = {&L.enc1, &L.enc2, &L.mid1, &L.mid2, &L.dec1, &L.dec2};
  for (int i = 0; i < 6; ++i) pack_conv3(out, *convs[i], raw[2 + 2 * i], raw[3 + 2 * i], c.hidden, c.hidden);
  const ConvW ow{raw[14], c.cout, c.hidden, 1, 1};
  fill_mat(out, L.out, [&](int k, int n) { return ow.at(n, k, 0, 0); });
  fill_vec(out, L.out_bias, raw[15]);
}

void unet_encode(const UNetConfig& c, const UNetLayout& L, const float* packed, const int64_t* lower,
                 int64_t B, int64_t h, int64_t w, float* out) {
  const int64_t in_img = (int64_t)c.cin * h * w, out_img = (int64_t)c.cout * 4 * h * w;
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      encode_one(c, L, packed, lower + b * in_img, h, w, out + b * out_img, tls_scratch);
    if ((int64_t)tls_scratch.mem.size() > kKeepFloats) std::vector<float>().swap(tls_scratch.mem);
  });
}

}  // namespace cpu
}  // namespace pixelaux
