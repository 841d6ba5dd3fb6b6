"""Sampling engines for one ``GatedPixelCNN`` stage (docs/design.md section 2).

Every engine has the same contract, ``run(model, x, known, cond, uniforms,
temperature, progress)`` -> completed ``x``, and consumes the same uniforms in the
same order, so the same seed gives the same images whichever is used.

* ``naive``: a full forward pass per pixel (the reference).
* ``cached``: per-layer row caches, about one forward pass per image, with the
  backends ``torch`` (readable, any device), ``cpp`` (CPU, C++ extension) and
  ``triton`` (CUDA GPUs). ``auto`` picks the fastest available one.
"""
from __future__ import annotations

import logging
import warnings

import torch

logger = logging.getLogger("pixelaux")

ENGINES = ("naive", "cached")
BACKENDS = ("auto", "torch", "cpp", "triton")
#: The sampling-stage kinds (``model.kind``) each cached backend can run.
STAGE_KINDS = {
    "torch": ("GatedPixelCNN", "PixelCNNpp"),
    "cpp": ("GatedPixelCNN", "PixelCNNpp"),
    "triton": ("GatedPixelCNN", "PixelCNNpp"),
}
_warned = set()


def _warn_once(key: str, message: str):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def cpp_status() -> tuple[bool, str]:
    try:
        from .. import native
    except ImportError as e:  # pragma: no cover - native.py always ships
        return False, str(e)
    return native.available(), native.reason()


def triton_status(device: torch.device) -> tuple[bool, str]:
    from . import cached_triton
    return cached_triton.status(device)


def resolve(engine: str, backend: str, device, kinds=("GatedPixelCNN",)) -> tuple[str, str | None]:
    """Check ``engine``/``backend`` and return ``(engine, backend)`` with ``auto``
    replaced by the backend that will run (``None`` for the naive engine). ``kinds``:
    the stage kinds the model samples with (``auto`` skips a backend that cannot run
    one of them; an explicit backend that cannot is a ``ValueError``)."""
    if not isinstance(engine, str):
        raise TypeError(f"engine must be a str, one of {ENGINES}, got {type(engine).__name__}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {BACKENDS}, got {type(backend).__name__}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if engine == "naive":
        return engine, None
    unsupported = lambda b: [k for k in kinds if k not in STAGE_KINDS[b]]  # noqa: E731
    if backend == "auto":
        if device.type == "cuda":
            ok, why = triton_status(device)
            if ok and not unsupported("triton"):
                return engine, "triton"
            if ok:
                why = f"it does not run {', '.join(unsupported('triton'))} yet"
            _warn_once("triton", f"pixelaux: Triton backend unavailable ({why}); using the torch backend")
            return engine, "torch"
        if device.type == "cpu":
            ok, why = cpp_status()
            if ok and not unsupported("cpp"):
                return engine, "cpp"
            if not ok:
                _warn_once("cpp", f"pixelaux: C++ backend unavailable ({why}); using the torch backend")
        return engine, "torch"
    if unsupported(backend):
        raise ValueError(f"backend={backend!r} does not run {', '.join(unsupported(backend))} models; "
                         f"backends that do: {[b for b in STAGE_KINDS if not unsupported(b)]}")
    if backend == "cpp":
        ok, why = cpp_status()
        if not ok:
            raise RuntimeError(f"backend='cpp' is not available: {why}")
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU models, got a model on {device}")
    if backend == "triton":
        ok, why = triton_status(device)
        if not ok:
            raise RuntimeError(f"backend='triton' is not available: {why}")
    return engine, backend


def runner(engine: str, backend: str | None, kind: str = "GatedPixelCNN"):
    """The ``run`` function of an engine/backend pair (already resolved) for a stage of
    kind ``kind``."""
    if engine == "naive":
        from .naive import run
    elif backend == "torch":
        from .cached_torch import run
    elif backend == "cpp" and kind == "PixelCNNpp":
        from .cached_cpp_pp import run
    elif backend == "cpp":
        from .cached_cpp import run
    elif backend == "triton" and kind == "PixelCNNpp":
        from .cached_triton_pp import run
    elif backend == "triton":
        from .cached_triton import run
    else:  # pragma: no cover - resolve() rejects these
        raise ValueError(f"unknown backend {backend!r}")
    return run


def workspace_bytes(backend: str, model, x, cond) -> int:
    """Bytes a cached backend allocates to sample ``x`` ``(B, C, H, W)`` of one stage with
    ``cond``, beyond the weights, as its own allocating code counts them (each backend's
    ``workspace_bytes``; ``resources.estimate_sampling_bytes`` extrapolates from trials)."""
    if backend == "cpp" and model.kind == "PixelCNNpp":
        from .cached_cpp_pp import workspace_bytes as count
    elif backend == "cpp":
        from .cached_cpp import workspace_bytes as count
    else:           # triton: its buffers follow the torch reference's (docs/design.md 2.6)
        from .cached_torch import workspace_bytes as count
    return count(model, x, cond)
