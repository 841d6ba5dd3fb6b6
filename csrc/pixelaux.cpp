// pixelaux._C: the ahead-of-time ops of pixelaux, registered with TORCH_LIBRARY so
// that they are schema'd and trace under torch.compile (torch.ops.pixelaux.*).
//
//   pixelaux::pack_weights(Tensor[] weights, int[] config, str[]? names=None) -> Tensor
//   pixelaux::cached_sample(Tensor x, Tensor? known, Tensor? cond, Tensor[] cond_terms,
//       Tensor uniforms, Tensor packed, Tensor table, int[] config, float temperature,
//       bool return_params=False, int mode=0, Tensor(a!)? progress=None, Tensor? window=None,
//       int[] window_consts=[]) -> (Tensor, Tensor)
//   pixelaux::cached_workspace_floats(int[] config, int B, int H, int W, int mode=0,
//       bool global_cond=False) -> int
//   pixelaux::pack_unet_encoder(Tensor[] weights, int[] config) -> Tensor
//   pixelaux::unet_encode(Tensor lower, Tensor packed, int[] config) -> Tensor
//       the pyramid's UNetEncoder (cpu/unet_encoder.h), config = [in_channels, in_bits,
//       hidden, out_channels]: lower int64 (B, in_channels, h, w) -> float32 (B, out, 2h, 2w)
//   pixelaux::build_info() -> str
//
// config = [cond_in_engine (1: the engine computes the cond terms from cond, one scale;
//           0: the caller gives them), channels, bits, hidden, blocks, kernel_size, scales,
//           cond_channels, dist (0: categorical, 1: logistic), nr_mix, embed_dim]
// (cpu/cached_engine.h; no model family: the plan says the topology), then the packed sampling plan the engine walks (cached_cpp.pack_plan:
// its steps and its weight groups). weights: the sampling plan's, in its order
// (Plan.weight_tensors, the cond modules included), their shapes from the plan's weight
// groups; names: theirs (Plan.weight_names), for the messages, or None (generic names).
// The first convs read channels * max(embed_dim, 1) + 1 input channels. table: the
// model's input encoding (PixelInput.table), float32 (channels, 2**bits, max(embed_dim,
// 1)): a pixel, sampled or known, writes its rows into the input buffer (the scaled
// encoding is the table of v * 2/(K-1) - 1).
// The conditioning (cpu/cached_engine.h, SampleArgs): with cond_in_engine (the
// GatedPixelCNN, cached_cpp.COND_IN_ENGINE) the op takes
// cond, float32, a map (B, cc, H, W), or a vector per image (B, cc) (global conditioning,
// broadcast over the positions: each block's terms are then computed once per image, not
// per row; the images equal those of its expanded map), and cond_terms []; without it
// (the PixelCNNpp) cond None and cond_terms, the conditioning terms of every block computed once per
// image by the caller, in the plan's order (Plan.cond_blocks); [] without cond. Each
// (B, H_s, W_s, 3F), or all of them (B, 1, 1, 3F): the terms of a global cond, broadcast.
// mode (thread split, for benchmarks): 0 auto, 1 images over threads, 2 a team over
// the output channels, 3 a team over the row starts with the pixels on one thread.
// progress: None or a contiguous int64 CPU tensor of 2 elements, [rows done, stop]: the
// op adds every finished row of every image to progress[0] while it runs, and stops at
// the next row start once progress[1] != 0 (set from another thread; the op releases
// the GIL), returning the images as far as they got. The caller polls it.
// window (consistent decoding, pixelaux/consistency.py): None, or Window.packed(), int32
// (4, B, C, H, W) = lo_base, hi_base, box_lo, box_hi with 0 <= box_lo <= box_hi <= 2**bits - 1,
// and window_consts = coef (C ints), div (C ints > 0), block (>= 1, dividing H and W):
// every sampled channel is drawn from the model's distribution truncated to its range.
// Categorical sampling follows torch's CPU softmax kernel for its capability
// (ATEN_CPU_CAPABILITY included; build_info names it).
// Environment: PIXELAUX_CPU_KERNELS=generic (no AVX2 kernels), PIXELAUX_PROFILE=1
// (row/pixel times on stderr), PIXELAUX_TEAM_GIVE_UP=0 (teams never shrink).
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/cached_engine.h"
#include "cpu/team.h"
#include "cpu/unet_encoder.h"

namespace pixelaux {
namespace {

constexpr int64_t kMaxRowPositions = int64_t(1) << 30;  // B * W and H (int GEMM sizes)

// The checked config of the engine: the model's ints and the packed plan.
cpu::Config get_config(at::IntArrayRef config) {
  cpu::Config c;
  const std::string err = parse_config(config.data(), (int64_t)config.size(), &c);
  TORCH_CHECK_VALUE(err.empty(), "pixelaux: ", err);
  return c;
}

// The layout of a config with its plan, the plan checked against it.
cpu::Layout get_layout(const cpu::Config& c) {
  cpu::Layout lay = cpu::make_layout(c);
  const std::string err = cpu::check_plan(c, lay);
  TORCH_CHECK_VALUE(err.empty(), "pixelaux: ", err);
  return lay;
}

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  if (s.size() == 1) o << ",";
  o << ")";
  return o.str();
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "pixelaux: ", name, " must be a CPU tensor, got one on ",
              t.device());
}

// Checks a list of raw weights against specs; returns contiguous float32 pointers (kept in keep).
std::vector<const float*> check_raw(const char* op, at::TensorList weights,
                                    const std::vector<cpu::RawSpec>& specs,
                                    std::vector<at::Tensor>* keep) {
  TORCH_CHECK_VALUE(weights.size() == specs.size(), op, "expected ", specs.size(),
                    " weight tensors for this config (", specs.front().name, " ... ",
                    specs.back().name, "), got ", weights.size());
  std::vector<const float*> ptrs;
  for (size_t i = 0; i < specs.size(); ++i) {
    const at::Tensor& w = weights[i];
    const std::string& name = specs[i].name;
    TORCH_CHECK_TYPE(w.defined(), op, name, " is undefined");
    check_cpu(w, name.c_str());
    TORCH_CHECK_TYPE(w.scalar_type() == at::kFloat, op, name, " must be float32, got ",
                     w.scalar_type());
    TORCH_CHECK_VALUE(w.sizes() == at::IntArrayRef(specs[i].shape), op, name,
                      " must have shape ", shape_str(specs[i].shape), ", got ",
                      shape_str(w.sizes()));
    keep->push_back(w.detach().contiguous());
    ptrs.push_back(keep->back().data_ptr<float>());
  }
  return ptrs;
}

// The packed weights of a model: its raw weights checked against raw_weight_specs (named
// by names when given), packed into its layout.
at::Tensor pack_weights(at::TensorList weights, at::IntArrayRef config,
                        const std::optional<std::vector<std::string>>& names) {
  const char* op = "pixelaux.pack_weights: ";
  const cpu::Config c = get_config(config);
  std::vector<cpu::RawSpec> specs = cpu::raw_weight_specs(c);
  if (names) {
    TORCH_CHECK_VALUE(names->size() == specs.size(), op, "expected ", specs.size(),
                      " weight names for this config, got ", names->size());
    for (size_t i = 0; i < specs.size(); ++i) specs[i].name = (*names)[i];
  }
  std::vector<at::Tensor> keep;
  const auto ptrs = check_raw(op, weights, specs, &keep);
  const cpu::Layout lay = cpu::make_layout(c);
  at::Tensor out = at::empty({lay.total}, at::TensorOptions().dtype(at::kFloat));
  cpu::pack_weights(c, lay, ptrs, out.data_ptr<float>());
  return out;
}

// The checked inputs shared by the sampling ops.
struct SampleInputs {
  int64_t B = 0, H = 0, W = 0;
  at::Tensor x, known, uniforms;  // x: a contiguous copy (the output)
};

// Checks x (int64 (B, C, H, W)), known ((B, H, W) bool or None, known pixels in range)
// and uniforms ((B, H, W, U) float32), temperature and mode.
SampleInputs check_sample_inputs(const char* op, const at::Tensor& x,
                                 const std::optional<at::Tensor>& known,
                                 const at::Tensor& uniforms, const cpu::DistSpec& d,
                                 double temperature, int64_t mode) {
  SampleInputs in;
  // x: the images, known pixels filled in
  check_cpu(x, "x");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kLong, op, "x must be int64 (torch.long) pixels, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == d.channels, op, "x must have shape (B, ",
                    d.channels, ", H, W), got ", shape_str(x.sizes()));
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(B > 0 && H > 0 && W > 0, op, "x must be non-empty, got shape ",
                    shape_str(x.sizes()));
  TORCH_CHECK_VALUE(B * W < kMaxRowPositions && H < kMaxRowPositions, op,
                    "x is too large, got shape ", shape_str(x.sizes()));
  in.B = B;
  in.H = H;
  in.W = W;
  in.x = x.contiguous().clone();
  // known: which pixels of x are given
  if (known.has_value() && known->defined()) {
    at::Tensor kn = *known;
    check_cpu(kn, "known");
    TORCH_CHECK_TYPE(kn.scalar_type() == at::kBool, op, "known must be a bool tensor, got ",
                     kn.scalar_type());
    TORCH_CHECK_VALUE(kn.sizes() == at::IntArrayRef({B, H, W}), op, "known must have shape ",
                      shape_str({B, H, W}), ", got ", shape_str(kn.sizes()));
    kn = kn.contiguous();
    const bool* k = kn.data_ptr<bool>();
    const int64_t* xp = in.x.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t ch = 0; ch < d.channels; ++ch)
        for (int64_t p = 0; p < H * W; ++p) {
          if (!k[b * H * W + p]) continue;
          const int64_t v = xp[(b * d.channels + ch) * H * W + p];
          TORCH_CHECK_VALUE(v >= 0 && v < d.levels, op, "known pixels of x must be in [0, ",
                            d.levels - 1, "] (", d.bits, "-bit), got ", v);
        }
    in.known = kn;
  }
  // uniforms
  check_cpu(uniforms, "uniforms");
  TORCH_CHECK_TYPE(uniforms.scalar_type() == at::kFloat, op, "uniforms must be float32, got ",
                   uniforms.scalar_type());
  TORCH_CHECK_VALUE(uniforms.sizes() == at::IntArrayRef({B, H, W, d.num_uniforms}), op,
                    "uniforms must have shape ", shape_str({B, H, W, d.num_uniforms}), ", got ",
                    shape_str(uniforms.sizes()));
  in.uniforms = uniforms.contiguous();
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, op,
                    "temperature must be a finite number > 0, got ", temperature);
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 3, op,
                    "mode must be 0 (auto), 1 (images), 2 (channels) or 3 (rows), got ", mode);
  return in;
}

at::Tensor check_packed(const char* op, const char* pack_op, const at::Tensor& packed, int64_t total) {
  check_cpu(packed, "packed");
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kFloat, op, "packed must be float32, got ",
                   packed.scalar_type());
  TORCH_CHECK_VALUE(packed.dim() == 1 && packed.numel() == total, op, "packed must be the 1-D output of ",
                    pack_op, " for this config (", total, " floats), got shape ",
                    shape_str(packed.sizes()));
  return packed.contiguous();
}

// The input table (C, K, per_channel) float32 of a model (PixelInput.table).
cpu::PixelTable check_table(const char* op, const at::Tensor& table, int64_t C, int64_t K,
                            int per_channel, std::vector<at::Tensor>* keep) {
  check_cpu(table, "table");
  TORCH_CHECK_TYPE(table.scalar_type() == at::kFloat, op, "table must be float32, got ",
                   table.scalar_type());
  TORCH_CHECK_VALUE(table.sizes() == at::IntArrayRef({C, K, per_channel}), op,
                    "table must have shape ", shape_str({C, K, per_channel}),
                    " (channels, 2**bits, max(embed_dim, 1)), got ", shape_str(table.sizes()));
  keep->push_back(table.contiguous());
  cpu::PixelTable t;
  t.data = keep->back().data_ptr<float>();
  t.levels = K;
  t.per_channel = per_channel;
  return t;
}

// The window of a sampling op (see the top of the file); window.maps null without one.
cpu::Window check_window(const char* op, const std::optional<at::Tensor>& window,
                         at::IntArrayRef consts, const cpu::DistSpec& d, int64_t B, int64_t H,
                         int64_t W, std::vector<at::Tensor>* keep) {
  cpu::Window w;
  if (!window.has_value() || !window->defined()) {
    TORCH_CHECK_VALUE(consts.empty(), op, "window_consts given without a window");
    return w;
  }
  const int64_t C = d.channels;
  const at::Tensor& t = *window;
  check_cpu(t, "window");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, op, "window must be int32 (Window.packed()), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef({4, B, C, H, W}), op, "window must have shape ",
                    shape_str({4, B, C, H, W}), " (lo_base, hi_base, box_lo, box_hi), got ",
                    shape_str(t.sizes()));
  TORCH_CHECK_VALUE((int64_t)consts.size() == 2 * C + 1, op, "window_consts must be coef (", C,
                    " ints), div (", C, " ints) and block, got ", consts.size(), " ints");
  const int64_t block = consts[2 * C];
  TORCH_CHECK_VALUE(block >= 1 && H % block == 0 && W % block == 0, op,
                    "window block must be >= 1 and divide H and W, got ", block, " for ", H, " x ", W);
  for (int64_t c = 0; c < C; ++c)  // |coef| bounded: K stays far from int64 overflow
    TORCH_CHECK_VALUE(consts[C + c] > 0 && std::abs(consts[c]) <= (int64_t(1) << 30), op,
                      "window div must be > 0 and |coef| <= 2**30, got coef ", consts[c], " and div ",
                      consts[C + c], " for channel ", c);
  keep->push_back(t.contiguous());
  const int32_t* m = keep->back().data_ptr<int32_t>();
  const int64_t n = B * C * H * W;
  for (int64_t p = 0; p < n; ++p)  // so that every range lies in [0, 2**bits - 1]
    TORCH_CHECK_VALUE(0 <= m[2 * n + p] && m[2 * n + p] <= m[3 * n + p] && m[3 * n + p] < d.levels, op,
                      "window boxes must satisfy 0 <= box_lo <= box_hi <= ", d.levels - 1, ", got [",
                      m[2 * n + p], ", ", m[3 * n + p], "]");
  w.maps = m;
  w.B = B;
  w.C = C;
  w.H = H;
  w.W = W;
  w.coef = consts.data();
  w.div = consts.data() + C;
  w.block = block;
  return w;
}

// The progress tensor of a sampling op (see the top of the file), or null.
int64_t* progress_ptr(const char* op, const std::optional<at::Tensor>& progress) {
  if (!progress.has_value() || !progress->defined()) return nullptr;
  const at::Tensor& p = *progress;
  check_cpu(p, "progress");
  TORCH_CHECK_TYPE(p.scalar_type() == at::kLong, op, "progress must be an int64 tensor, got ",
                   p.scalar_type());
  TORCH_CHECK_VALUE(p.dim() == 1 && p.numel() == 2 && p.is_contiguous(), op,
                    "progress must be a contiguous tensor of shape (2,), got shape ",
                    shape_str(p.sizes()));
  return p.data_ptr<int64_t>();
}

at::Tensor params_tensor(bool return_params, int64_t B, int64_t P, int64_t H, int64_t W) {
  return return_params ? at::empty({B, P, H, W}, at::TensorOptions().dtype(at::kFloat))
                       : at::empty({0}, at::TensorOptions().dtype(at::kFloat));
}

// Fills the engine-independent arguments of a sampling op (checking table, progress and
// window, in this order); returns the params output ((B, P, H, W), or empty).
at::Tensor fill_sample_args(const char* op, const cpu::Config& c, const SampleInputs& in,
                            const at::Tensor& packed, const at::Tensor& table, double temperature,
                            bool return_params, int64_t mode,
                            const std::optional<at::Tensor>& progress,
                            const std::optional<at::Tensor>& window, at::IntArrayRef window_consts,
                            std::vector<at::Tensor>* keep, cpu::SampleArgs* a) {
  const int64_t B = in.B, H = in.H, W = in.W;
  at::Tensor params = params_tensor(return_params, B, c.d.num_params, H, W);
  a->table = check_table(op, table, c.channels, c.d.levels, c.per_channel, keep);
  a->packed = packed.data_ptr<float>();
  a->B = B;
  a->H = H;
  a->W = W;
  a->x = in.x.data_ptr<int64_t>();
  a->known = in.known.defined() ? in.known.data_ptr<bool>() : nullptr;
  a->uniforms = in.uniforms.data_ptr<float>();
  a->params = return_params ? params.data_ptr<float>() : nullptr;
  a->temperature = temperature;
  a->mode = (int)mode;
  a->progress = progress_ptr(op, progress);
  a->window = check_window(op, window, window_consts, c.d, B, H, W, keep);
  return params;
}

// A GatedPixelCNN's cond: a map (B, cc, H, W) or a vector per image (B, cc); sets
// a->cond and a->cond_global.
void check_cond(const char* op, const cpu::Config& c, const std::optional<at::Tensor>& cond,
                int64_t B, int64_t H, int64_t W, std::vector<at::Tensor>* keep, cpu::SampleArgs* a) {
  const bool has_cond = cond.has_value() && cond->defined();
  if (c.cond_channels == 0) {
    TORCH_CHECK_VALUE(!has_cond, op, "cond must be None for a model with cond_channels=0");
    return;
  }
  TORCH_CHECK_VALUE(has_cond, op, "cond is required: the model has cond_channels=", c.cond_channels);
  at::Tensor cd = *cond;
  check_cpu(cd, "cond");
  TORCH_CHECK_TYPE(cd.scalar_type() == at::kFloat, op, "cond must be float32, got ", cd.scalar_type());
  TORCH_CHECK_VALUE(cd.sizes() == at::IntArrayRef({B, c.cond_channels, H, W}) ||
                        cd.sizes() == at::IntArrayRef({B, c.cond_channels}),
                    op, "cond must have shape ", shape_str({B, c.cond_channels, H, W}), " (a map) or ",
                    shape_str({B, c.cond_channels}), " (a vector per image), got ", shape_str(cd.sizes()));
  a->cond_global = cd.dim() == 2;
  keep->push_back(cd.contiguous());
  a->cond = keep->back().data_ptr<float>();
}

// A PixelCNNpp's cond_terms: per block in the plan's order (Plan.cond_blocks; block n at
// the scale of the row step naming it, PackedPlan::cond_scales), (B, H_s, W_s, 3F), or
// all (B, 1, 1, 3F) (a global cond's terms, broadcast); sets a->cond_terms and
// a->cond_global.
void check_cond_terms(const char* op, const cpu::Config& c, const cpu::Layout& lay,
                      at::TensorList cond_terms, int64_t B, int64_t H, int64_t W,
                      std::vector<at::Tensor>* keep, cpu::SampleArgs* a) {
  TORCH_CHECK_VALUE((int64_t)cond_terms.size() == lay.num_cond_blocks, op, "expected ",
                    lay.num_cond_blocks, " conditioning-term tensors (cond_channels=",
                    c.cond_channels, "), got ", cond_terms.size());
  const std::vector<int>& scale_of = c.plan.cond_scales;
  const int64_t F3 = 3 * (int64_t)c.hidden;
  a->cond_global = !cond_terms.empty() && cond_terms[0].sizes() == at::IntArrayRef({B, 1, 1, F3});
  for (size_t n = 0; n < cond_terms.size(); ++n) {
    const at::Tensor& t = cond_terms[n];
    const int64_t s = scale_of[n];
    check_cpu(t, "cond_terms");
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, op, "cond_terms must be float32, got ",
                     t.scalar_type());
    const std::vector<int64_t> want = a->cond_global ? std::vector<int64_t>{B, 1, 1, F3}
                                                     : std::vector<int64_t>{B, H >> s, W >> s, F3};
    TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(want), op, "cond_terms[", n, "] must have shape ",
                      shape_str(want), ", got ", shape_str(t.sizes()));
    keep->push_back(t.contiguous());
    a->cond_terms.push_back(keep->back().data_ptr<float>());
  }
}

std::tuple<at::Tensor, at::Tensor> cached_sample(const at::Tensor& x,
                                                 const std::optional<at::Tensor>& known,
                                                 const std::optional<at::Tensor>& cond,
                                                 at::TensorList cond_terms,
                                                 const at::Tensor& uniforms,
                                                 const at::Tensor& packed, const at::Tensor& table,
                                                 at::IntArrayRef config, double temperature,
                                                 bool return_params, int64_t mode,
                                                 const std::optional<at::Tensor>& progress,
                                                 const std::optional<at::Tensor>& window,
                                                 at::IntArrayRef window_consts) {
  const char* op = "pixelaux.cached_sample: ";
  const cpu::Config c = get_config(config);
  SampleInputs in = check_sample_inputs(op, x, known, uniforms, c.d, temperature, mode);
  const int64_t B = in.B, H = in.H, W = in.W;
  const cpu::Layout lay = get_layout(c);
  std::vector<at::Tensor> keep;
  cpu::SampleArgs a;
  const int64_t f = int64_t(1) << (c.scales - 1);
  TORCH_CHECK_VALUE(H % f == 0 && W % f == 0, op, "a model with scales=", c.scales,
                    " needs H and W divisible by 2**(scales-1) = ", f, ", got ", H, " x ", W, " (H x W)");
  if (c.cond_in_engine) {
    TORCH_CHECK_VALUE(cond_terms.empty(), op,
                      "cond_terms must be [] when the engine computes the cond terms (cond_in_engine: it takes cond)");
    check_cond(op, c, cond, B, H, W, &keep, &a);
  } else {
    TORCH_CHECK_VALUE(!(cond.has_value() && cond->defined()), op,
                      "cond must be None when the caller gives the cond terms (cond_in_engine 0: it takes cond_terms)");
    check_cond_terms(op, c, lay, cond_terms, B, H, W, &keep, &a);
  }
  const at::Tensor pk = check_packed(op, "pack_weights", packed, lay.total);
  a.cfg = &c;
  a.lay = &lay;
  at::Tensor params = fill_sample_args(op, c, in, pk, table, temperature, return_params, mode,
                                       progress, window, window_consts, &keep, &a);
  cpu::cached_sample(a);
  return {in.x, params};
}

// Scratch floats of cached_sample for B images of H x W (thread split `mode`, the current
// thread count): the arenas' requests, counted without allocating. global_cond: cond is a
// vector per image (its terms once per image, smaller scratch).
int64_t cached_workspace_floats(at::IntArrayRef config, int64_t B, int64_t H, int64_t W, int64_t mode,
                                bool global_cond) {
  const cpu::Config c = get_config(config);
  const cpu::Layout lay = get_layout(c);
  cpu::SampleArgs a;
  a.cfg = &c;
  a.lay = &lay;
  a.B = B;
  a.H = H;
  a.W = W;
  a.mode = (int)mode;
  a.cond_global = global_cond;
  return cpu::workspace_floats(a);
}

cpu::UNetConfig get_unet_config(at::IntArrayRef config) {
  cpu::UNetConfig c;
  const std::string err = cpu::parse_unet_config(config.data(), (int64_t)config.size(), &c);
  TORCH_CHECK_VALUE(err.empty(), "pixelaux: ", err);
  return c;
}

at::Tensor pack_unet_encoder(at::TensorList weights, at::IntArrayRef config) {
  const cpu::UNetConfig c = get_unet_config(config);
  std::vector<at::Tensor> keep;
  const auto ptrs = check_raw("pixelaux.pack_unet_encoder: ", weights, cpu::unet_raw_specs(c), &keep);
  const cpu::UNetLayout lay = cpu::make_unet_layout(c);
  at::Tensor out = at::empty({lay.total}, at::TensorOptions().dtype(at::kFloat));
  cpu::pack_unet(c, lay, ptrs, out.data_ptr<float>());
  return out;
}

at::Tensor unet_encode(const at::Tensor& lower, const at::Tensor& packed, at::IntArrayRef config) {
  const char* op = "pixelaux.unet_encode: ";
  const cpu::UNetConfig c = get_unet_config(config);
  const cpu::UNetLayout lay = cpu::make_unet_layout(c);
  check_cpu(lower, "lower");
  TORCH_CHECK_TYPE(lower.scalar_type() == at::kLong, op, "lower must be int64 (torch.long) pixels, got ",
                   lower.scalar_type());
  TORCH_CHECK_VALUE(lower.dim() == 4 && lower.size(1) == c.cin && lower.size(0) > 0 && lower.size(2) > 0 &&
                        lower.size(3) > 0,
                    op, "lower must have shape (B, ", c.cin, ", h, w), non-empty, got ",
                    shape_str(lower.sizes()));
  const int64_t B = lower.size(0), h = lower.size(2), w = lower.size(3);
  TORCH_CHECK_VALUE(h <= 16384 && w <= 16384, op, "lower is too large, got shape ", shape_str(lower.sizes()));
  const at::Tensor low = lower.contiguous();
  const int64_t levels = int64_t(1) << c.bits;
  const int64_t lo = low.min().item<int64_t>(), hi = low.max().item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < levels, op, "lower must hold pixels in [0, ", levels - 1, "] (", c.bits,
                    "-bit), got range [", lo, ", ", hi, "]");
  const at::Tensor p = check_packed(op, "pack_unet_encoder", packed, lay.total);
  // The map's memory comes from the engines' block pool (cpu/team.h) and goes back to it
  // when the tensor is freed: the next level or call of the same size faults no page in.
  int64_t capacity = 0;
  float* buf = cpu::take_block(B * c.cout * 4 * h * w, &capacity);
  at::Tensor out = at::from_blob(
      buf, {B, c.cout, 2 * h, 2 * w}, [capacity](void* q) { cpu::give_block(static_cast<float*>(q), capacity); },
      at::TensorOptions().dtype(at::kFloat));
  cpu::unet_encode(c, lay, p.data_ptr<float>(), low.data_ptr<int64_t>(), B, h, w, out.data_ptr<float>());
  return out;
}

std::string build_info() {
  std::ostringstream o;
  o << "kernels=" << cpu::kernel_isa() << " softmax=" << cpu::softmax_flavour()
    << " threads=" << at::get_num_threads()
    << " openmp=" << AT_PARALLEL_OPENMP;
  return o.str();
}

}  // namespace
}  // namespace pixelaux

TORCH_LIBRARY(pixelaux, m) {
  m.def("pack_weights(Tensor[] weights, int[] config, str[]? names=None) -> Tensor");
  m.def(
      "cached_sample(Tensor x, Tensor? known, Tensor? cond, Tensor[] cond_terms, Tensor uniforms, "
      "Tensor packed, Tensor table, int[] config, float temperature, bool return_params=False, "
      "int mode=0, Tensor(a!)? progress=None, Tensor? window=None, int[] window_consts=[]) -> "
      "(Tensor, Tensor)");
  m.def(
      "cached_workspace_floats(int[] config, int B, int H, int W, int mode=0, "
      "bool global_cond=False) -> int",
        &pixelaux::cached_workspace_floats);
  m.def("pack_unet_encoder(Tensor[] weights, int[] config) -> Tensor");
  m.def("unet_encode(Tensor lower, Tensor packed, int[] config) -> Tensor");
  m.def("build_info() -> str", &pixelaux::build_info);
}

TORCH_LIBRARY_IMPL(pixelaux, CPU, m) {
  m.impl("pack_weights", &pixelaux::pack_weights);
  m.impl("cached_sample", &pixelaux::cached_sample);
  m.impl("pack_unet_encoder", &pixelaux::pack_unet_encoder);
  m.impl("unet_encode", &pixelaux::unet_encode);
}

// A plain Python module: importing pixelaux._C loads the library, which registers the
// ops above with the dispatcher (torch.ops.pixelaux.*).
extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "pixelaux native ops (torch.ops.pixelaux.*)", -1, nullptr,
      nullptr, nullptr, nullptr, nullptr,
  };
  return PyModule_Create(&module_def);
}
}
