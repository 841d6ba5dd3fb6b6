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

import importlib
import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

logger = logging.getLogger("pixelaux")

ENGINES = ("naive", "cached")


def cpp_status() -> tuple[bool, str]:
    try:
        from .. import native
    except ImportError as e:  # pragma: no cover - native.py always ships
        return False, str(e)
    return native.available(), native.reason()


def triton_status(device: torch.device) -> tuple[bool, str]:
    from . import cached_triton
    return cached_triton.status(device)


@dataclass(frozen=True)
class Backend:
    """A cached backend: ``modules[kind]`` is the module (in this package) whose
    ``run`` samples a stage of that kind, and ``workspace[kind]`` (default: the same
    module) the one whose ``workspace_bytes`` counts what that ``run`` allocates;
    ``status(device)`` says whether
    it can run here and why not (:meth:`available` adds the device type check); ``auto_on``: the device types where ``auto`` prefers it.
    Adding a backend is one entry of :data:`REGISTRY` and its modules."""
    name: str
    label: str                  # in messages: "the C++ backend"
    modules: dict
    status: Callable[[torch.device], tuple[bool, str]]
    workspace: dict | None = None
    auto_on: tuple = ()
    devices: tuple | None = None  # the device types it runs on (None: any it says it can)

    def kinds(self) -> tuple:
        return tuple(self.modules)

    def available(self, device) -> tuple[bool, str]:
        """``(True, "")`` when it can sample on ``device`` here, else ``(False, why)``."""
        device = torch.device(device)
        if self.devices is not None and device.type not in self.devices:
            return False, f"it runs on {' or '.join(d.upper() for d in self.devices)} only, not {device.type}"
        return self.status(device)

    def module(self, kind: str, workspace: bool = False):
        if kind not in self.modules:
            raise ValueError(f"backend={self.name!r} does not run {kind} models; it runs {self.kinds()}")
        table = self.workspace if workspace and self.workspace is not None else self.modules
        return importlib.import_module(f".{table[kind]}", __name__)

    def runner(self, kind: str):
        """Its ``run`` for a stage of kind ``kind``."""
        return self.module(kind).run

    def run(self, model, x, known, cond, uniforms, temperature, **kw):
        """Samples ``x`` of one stage ``model`` (the engine contract, module docstring)."""
        return self.runner(model.kind)(model, x, known, cond, uniforms, temperature, **kw)

    def workspace_bytes(self, model, x, cond) -> int:
        """Bytes its ``run`` allocates for ``x`` ``(B, C, H, W)`` and ``cond``, beyond the weights."""
        return self.module(model.kind, workspace=True).workspace_bytes(model, x, cond)


_BOTH = ("GatedPixelCNN", "PixelCNNpp")
#: The cached backends; ``auto`` takes the first whose ``auto_on`` has the model's device
#: type and that can run here, else torch.
REGISTRY = {
    "torch": Backend("torch", "torch", dict.fromkeys(_BOTH, "cached_torch"), lambda device: (True, "")),
    "cpp": Backend("cpp", "C++", dict.fromkeys(_BOTH, "cached_cpp"),
                   lambda device: cpp_status(), auto_on=("cpu",), devices=("cpu",)),
    # one host side for both (its buffers follow the torch reference's, docs/design.md 2.6: that module counts them)
    "triton": Backend("triton", "Triton", dict.fromkeys(_BOTH, "cached_triton"),
                      triton_status, workspace=dict.fromkeys(_BOTH, "cached_torch"), auto_on=("cuda",)),
}
BACKENDS = ("auto", *REGISTRY)
#: The sampling-stage kinds (``model.kind``) each cached backend can run.
STAGE_KINDS = {name: b.kinds() for name, b in REGISTRY.items()}
_warned = set()


def _warn_once(key: str, message: str):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


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
    if backend != "auto" and backend not in REGISTRY:
        raise ValueError(f"backend must be one of {('auto', *REGISTRY)}, got {backend!r}")
    device = torch.device(device)
    if engine == "naive":
        return engine, None
    unsupported = lambda b: [k for k in kinds if k not in REGISTRY[b].kinds()]  # noqa: E731
    if backend == "auto":
        for b in REGISTRY.values():
            if device.type not in b.auto_on:
                continue
            ok, why = b.available(device)
            if ok and not unsupported(b.name):
                return engine, b.name
            if ok:
                why = f"it does not run {', '.join(unsupported(b.name))} yet"
            _warn_once(b.name, f"pixelaux: {b.label} backend unavailable ({why}); using the torch backend")
        return engine, "torch"
    if unsupported(backend):
        raise ValueError(f"backend={backend!r} does not run {', '.join(unsupported(backend))} models; "
                         f"backends that do: {[b for b in REGISTRY if not unsupported(b)]}")
    devices = REGISTRY[backend].devices
    if devices is not None and device.type not in devices:
        raise ValueError(f"backend={backend!r} runs on {' or '.join(d.upper() for d in devices)} models, "
                         f"got a model on {device}")
    ok, why = REGISTRY[backend].available(device)
    if not ok:
        raise RuntimeError(f"backend={backend!r} is not available: {why}")
    return engine, backend


def runner(engine: str, backend: str | None, kind: str = "GatedPixelCNN"):
    """The ``run`` function of an engine/backend pair (already resolved) for a stage of
    kind ``kind``."""
    if engine == "naive":
        from .naive import run
        return run
    return REGISTRY[backend].runner(kind)


def workspace_bytes(backend: str, model, x, cond) -> int:
    """Bytes a cached backend allocates to sample ``x`` ``(B, C, H, W)`` of one stage with
    ``cond``, beyond the weights, as its own allocating code counts them (each backend's
    ``workspace_bytes``; ``resources.estimate_sampling_bytes`` extrapolates from trials)."""
    return REGISTRY[backend].workspace_bytes(model, x, cond)
