// pixelaux._C: the ahead-of-time ops of pixelaux, registered with TORCH_LIBRARY so
// that they are schema'd and trace under torch.compile (torch.ops.pixelaux.*).
//
//   pixelaux::pack_gated_pixelcnn(Tensor[] weights, int[] config) -> Tensor
//   pixelaux::cached_sample(Tensor x, Tensor? known, Tensor? cond, Tensor uniforms,
//       Tensor packed, int[] config, float temperature, bool return_params=False,
//       int mode=0) -> (Tensor, Tensor)
//   pixelaux::build_info() -> str
//
// config = [channels, bits, hidden, blocks, kernel_size, cond_channels,
//           dist (0: categorical, 1: logistic), nr_mix].
// mode (thread split, for benchmarks): 0 auto, 1 images over threads, 2 a team over
// the output channels, 3 a team over the row starts with the pixels on one thread.
// Environment: PIXELAUX_CPU_KERNELS=generic (no AVX2 kernels), PIXELAUX_PROFILE=1
// (row/pixel times on stderr), PIXELAUX_TEAM_GIVE_UP=0 (teams never shrink).
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/cached_engine.h"

namespace pixelaux {
namespace {

using cpu::ModelConfig;

ModelConfig get_config(at::IntArrayRef config) {
  ModelConfig c;
  const std::string err = cpu::parse_config(config.data(), (int64_t)config.size(), &c);
  TORCH_CHECK_VALUE(err.empty(), "pixelaux: ", err);
  return c;
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

at::Tensor pack_gated_pixelcnn(at::TensorList weights, at::IntArrayRef config) {
  const ModelConfig c = get_config(config);
  const auto specs = cpu::raw_weight_specs(c);
  TORCH_CHECK_VALUE(weights.size() == specs.size(), "pixelaux.pack_gated_pixelcnn: expected ",
                    specs.size(), " weight tensors for this config (", specs.front().name, " ... ",
                    specs.back().name, "), got ", weights.size());
  std::vector<at::Tensor> keep;
  std::vector<const float*> ptrs;
  for (size_t i = 0; i < specs.size(); ++i) {
    const at::Tensor& w = weights[i];
    const std::string& name = specs[i].name;
    TORCH_CHECK_TYPE(w.defined(), "pixelaux.pack_gated_pixelcnn: ", name, " is undefined");
    check_cpu(w, name.c_str());
    TORCH_CHECK_TYPE(w.scalar_type() == at::kFloat, "pixelaux.pack_gated_pixelcnn: ", name,
                     " must be float32, got ", w.scalar_type());
    TORCH_CHECK_VALUE(w.sizes() == at::IntArrayRef(specs[i].shape),
                      "pixelaux.pack_gated_pixelcnn: ", name, " must have shape ",
                      shape_str(specs[i].shape), ", got ", shape_str(w.sizes()));
    keep.push_back(w.detach().contiguous());
    ptrs.push_back(keep.back().data_ptr<float>());
  }
  const cpu::Layout lay = cpu::make_layout(c);
  at::Tensor out = at::empty({lay.total}, at::TensorOptions().dtype(at::kFloat));
  cpu::pack_weights(c, lay, ptrs, out.data_ptr<float>());
  return out;
}

std::tuple<at::Tensor, at::Tensor> cached_sample(const at::Tensor& x,
                                                 const std::optional<at::Tensor>& known,
                                                 const std::optional<at::Tensor>& cond,
                                                 const at::Tensor& uniforms,
                                                 const at::Tensor& packed, at::IntArrayRef config,
                                                 double temperature, bool return_params,
                                                 int64_t mode) {
  const char* op = "pixelaux.cached_sample: ";
  const ModelConfig c = get_config(config);
  // x: the images, known pixels filled in
  check_cpu(x, "x");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kLong, op, "x must be int64 (torch.long) pixels, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(1) == c.channels, op, "x must have shape (B, ",
                    c.channels, ", H, W), got ", shape_str(x.sizes()));
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(B > 0 && H > 0 && W > 0, op, "x must be non-empty, got shape ",
                    shape_str(x.sizes()));
  TORCH_CHECK_VALUE(B * W < (int64_t(1) << 30) && H < (int64_t(1) << 30), op,
                    "x is too large, got shape ", shape_str(x.sizes()));
  at::Tensor xo = x.contiguous().clone();
  // known: which pixels of x are given
  at::Tensor kn;
  if (known.has_value() && known->defined()) {
    kn = *known;
    check_cpu(kn, "known");
    TORCH_CHECK_TYPE(kn.scalar_type() == at::kBool, op, "known must be a bool tensor, got ",
                     kn.scalar_type());
    TORCH_CHECK_VALUE(kn.sizes() == at::IntArrayRef({B, H, W}), op, "known must have shape ",
                      shape_str({B, H, W}), ", got ", shape_str(kn.sizes()));
    kn = kn.contiguous();
    const bool* k = kn.data_ptr<bool>();
    const int64_t* xp = xo.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t ch = 0; ch < c.channels; ++ch)
        for (int64_t p = 0; p < H * W; ++p) {
          if (!k[b * H * W + p]) continue;
          const int64_t v = xp[(b * c.channels + ch) * H * W + p];
          TORCH_CHECK_VALUE(v >= 0 && v < c.levels, op, "known pixels of x must be in [0, ",
                            c.levels - 1, "] (", c.bits, "-bit), got ", v);
        }
  }
  // cond: the conditioning map
  at::Tensor cd;
  const bool has_cond = cond.has_value() && cond->defined();
  if (c.cond_channels > 0) {
    TORCH_CHECK_VALUE(has_cond, op, "cond is required: the model has cond_channels=",
                      c.cond_channels);
    cd = *cond;
    check_cpu(cd, "cond");
    TORCH_CHECK_TYPE(cd.scalar_type() == at::kFloat, op, "cond must be float32, got ",
                     cd.scalar_type());
    TORCH_CHECK_VALUE(cd.sizes() == at::IntArrayRef({B, c.cond_channels, H, W}), op,
                      "cond must have shape ", shape_str({B, c.cond_channels, H, W}), ", got ",
                      shape_str(cd.sizes()));
    cd = cd.contiguous();
  } else {
    TORCH_CHECK_VALUE(!has_cond, op, "cond must be None for a model with cond_channels=0");
  }
  // uniforms
  check_cpu(uniforms, "uniforms");
  TORCH_CHECK_TYPE(uniforms.scalar_type() == at::kFloat, op, "uniforms must be float32, got ",
                   uniforms.scalar_type());
  TORCH_CHECK_VALUE(uniforms.sizes() == at::IntArrayRef({B, H, W, c.num_uniforms}), op,
                    "uniforms must have shape ", shape_str({B, H, W, c.num_uniforms}), ", got ",
                    shape_str(uniforms.sizes()));
  const at::Tensor un = uniforms.contiguous();
  // packed weights
  const cpu::Layout lay = cpu::make_layout(c);
  check_cpu(packed, "packed");
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kFloat, op, "packed must be float32, got ",
                   packed.scalar_type());
  TORCH_CHECK_VALUE(packed.dim() == 1 && packed.numel() == lay.total, op,
                    "packed must be the 1-D output of pack_gated_pixelcnn for this config (",
                    lay.total, " floats), got shape ", shape_str(packed.sizes()));
  const at::Tensor pk = packed.contiguous();
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, op,
                    "temperature must be a finite number > 0, got ", temperature);
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 3, op,
                    "mode must be 0 (auto), 1 (images), 2 (channels) or 3 (rows), got ", mode);

  at::Tensor params = return_params
                          ? at::empty({B, c.num_params, H, W}, at::TensorOptions().dtype(at::kFloat))
                          : at::empty({0}, at::TensorOptions().dtype(at::kFloat));
  cpu::SampleArgs a;
  a.cfg = &c;
  a.lay = &lay;
  a.packed = pk.data_ptr<float>();
  a.B = B;
  a.H = H;
  a.W = W;
  a.x = xo.data_ptr<int64_t>();
  a.known = kn.defined() ? kn.data_ptr<bool>() : nullptr;
  a.cond = cd.defined() ? cd.data_ptr<float>() : nullptr;
  a.uniforms = un.data_ptr<float>();
  a.params = return_params ? params.data_ptr<float>() : nullptr;
  a.temperature = temperature;
  a.mode = (int)mode;
  cpu::cached_sample(a);
  return {xo, params};
}

std::string build_info() {
  std::ostringstream o;
  o << "kernels=" << cpu::kernel_isa() << " threads=" << at::get_num_threads()
    << " openmp=" << AT_PARALLEL_OPENMP;
  return o.str();
}

}  // namespace
}  // namespace pixelaux

TORCH_LIBRARY(pixelaux, m) {
  m.def("pack_gated_pixelcnn(Tensor[] weights, int[] config) -> Tensor");
  m.def(
      "cached_sample(Tensor x, Tensor? known, Tensor? cond, Tensor uniforms, Tensor packed, "
      "int[] config, float temperature, bool return_params=False, int mode=0) -> (Tensor, Tensor)");
  m.def("build_info() -> str", &pixelaux::build_info);
}

TORCH_LIBRARY_IMPL(pixelaux, CPU, m) {
  m.impl("pack_gated_pixelcnn", &pixelaux::pack_gated_pixelcnn);
  m.impl("cached_sample", &pixelaux::cached_sample);
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
