"""The compiled extension ``pixelaux._C`` (C++ CPU engine), if it was built.

Importing ``pixelaux._C`` registers the ops ``torch.ops.pixelaux.*`` (docs/design.md
section 4). This module never raises when the extension is missing:
``available()`` says whether it loaded and ``reason()`` why not.

Ops (schemas; ``config`` = ``[cond_in_engine, channels, bits, hidden, blocks, kernel_size, scales,
cond_channels, dist (0 categorical, 1 logistic), nr_mix, embed_dim]`` and the packed
sampling plan, see ``pixelaux.engines.cached_cpp.config_of``; ``table`` = the model's input encoding
``model.input.table()``, float32 ``(channels, 2**bits, max(embed_dim, 1))``, what a pixel
writes into the engine's input buffer):

* ``pack_weights(Tensor[] weights, int[] config, str[]? names=None) -> Tensor``: the model's
  weights in its sampling plan's order (``pixelaux.engines.cached_cpp.raw_weights``; their
  shapes from the packed plan's weight groups) packed for the engine; ``names``
  (``cached_cpp.weight_names``) name them in the messages.
* ``cached_sample(Tensor x, Tensor? known, Tensor? cond, Tensor[] cond_terms, Tensor uniforms,
  Tensor packed, Tensor table, int[] config, float temperature, bool return_params=False,
  int mode=0, Tensor(a!)? progress=None, Tensor? window=None, int[] window_consts=[]) ->
  (Tensor, Tensor)``: the cached engine over a whole batch, every family (see
  ``cached_cpp.run``). The conditioning: with ``cond_in_engine`` (a ``GatedPixelCNN``) it takes ``cond``, a
  map ``(B, cond_channels, H, W)`` or a vector per image ``(B, cond_channels)`` (global:
  its terms computed once per image), and ``cond_terms`` ``[]``; without (a ``PixelCNNpp``) it takes
  ``cond`` None and ``cond_terms``, per block of the plan ``(B, H_s, W_s, 3F)``, or all
  ``(B, 1, 1, 3F)`` for a global cond, broadcast (``cached_cpp.cond_terms``).
  ``progress``: an int64 tensor ``[rows done, stop]`` the op updates row by row and
  reads at every row start (it stops once ``stop != 0``); the op releases the GIL, so
  another thread polls it (``engines.progress.run_native``). ``window``: consistent
  decoding, ``Window.packed()`` (int32 ``(4, B, C, H, W)``) with ``window_consts`` = its
  ``coef``, ``div`` and ``block`` (``engines.cached_cpp.window_args``).
* ``cached_workspace_floats(int[] config, int B, int H, int W, int mode=0,
  bool global_cond=False) -> int``: the scratch floats ``cached_sample`` allocates.
* ``build_info() -> str``: the kernel family in use (``avx512f``, ``avx2+fma`` or
  ``generic``; ``PIXELAUX_CPU_KERNELS=generic|avx2`` caps it), the torch softmax kernel
  the categorical sampling reproduces (``avx2/sleef``, ``avx512/sleef`` or
  ``default/libm``) and the threads.
"""
from __future__ import annotations

import torch

_C = None
_reason = "not loaded yet"


def _load():
    global _C, _reason
    try:
        from . import _C as ext  # noqa: F401 - loading registers torch.ops.pixelaux
    except ImportError as e:
        _reason = (f"pixelaux._C is not built or does not load ({e}); reinstall with "
                   "'pip install --no-build-isolation -e .' and read the build notice")
        return
    except OSError as e:  # a library it needs is missing
        _reason = f"pixelaux._C failed to load: {e}"
        return
    _C = ext
    _reason = ""
    try:
        _register_fakes()
    except RuntimeError:  # already registered (this module was reloaded)
        pass


def available() -> bool:
    """Whether the C++ extension is loaded (its ops are in ``torch.ops.pixelaux``)."""
    return _C is not None


def reason() -> str:
    """Why the extension is unavailable (empty when it is available)."""
    return _reason


def info() -> str:
    """The kernel flavour and threads of the loaded extension, or why it is missing."""
    return torch.ops.pixelaux.build_info() if available() else f"unavailable: {_reason}"


def num_params(config) -> int:
    _, channels, bits, _, _, _, _, _, dist, nr_mix = (int(v) for v in config[:10])
    if dist == 0:
        return channels * 2 ** bits
    return nr_mix * (1 + 2 * channels + channels * (channels - 1) // 2)


def _register_fakes():
    """Shape functions so the ops trace under ``torch.compile`` (FakeTensor / meta)."""
    try:
        register = torch.library.register_fake
    except AttributeError:  # torch < 2.4
        register = torch.library.impl_abstract

    @register("pixelaux::cached_sample")
    def _cached_sample_fake(x, known, cond, cond_terms, uniforms, packed, table, config, temperature,
                            return_params=False, mode=0, progress=None, window=None, window_consts=()):
        b, _, h, w = x.shape
        shape = (b, num_params(config), h, w) if return_params else (0,)
        return torch.empty_like(x), x.new_empty(shape, dtype=torch.float32)

    @register("pixelaux::pack_weights")
    def _pack_fake(weights, config, names=None):
        ctx = torch.library.get_ctx()
        return weights[0].new_empty((ctx.new_dynamic_size(),), dtype=torch.float32)

    @register("pixelaux::pack_unet_encoder")
    def _pack_unet_fake(weights, config):
        ctx = torch.library.get_ctx()
        return weights[0].new_empty((ctx.new_dynamic_size(),), dtype=torch.float32)

    @register("pixelaux::unet_encode")
    def _unet_encode_fake(lower, packed, config):
        b, _, h, w = lower.shape
        return lower.new_empty((b, int(config[3]), 2 * h, 2 * w), dtype=torch.float32)


_load()
