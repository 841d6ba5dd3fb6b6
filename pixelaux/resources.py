"""Memory checks before long runs: a batch that would not fit is refused up front.

``pixelaux.sample`` calls :func:`estimate_sampling_bytes` and :func:`check_memory`
right after checking its arguments, before anything is allocated, so an ``n`` that
would exhaust the machine fails at once with :class:`InsufficientMemoryError` (a
``MemoryError``) giving the estimate, the memory available and what to do about it,
instead of swapping for minutes or being killed by the OOM killer.

What is counted:

* ``cached`` engine: each backend measures its own buffers (``engines.workspace_bytes``:
  the engine builds its per-run state, the very code that ``run`` allocates with, for
  a trial batch of 1 and of 2 images on the model's device, and counts the bytes of
  every distinct tensor storage it holds; the weights are not counted). The ``cpp``
  backend asks the C++ engine, which adds up the scratch requests of its arenas
  without allocating them. Linear in the batch: the estimate is the fixed part plus
  ``n`` times the per-image part of the two trials. Temporaries of one row or pixel
  (a few hidden-wide rows) come on top and are not counted.
* ``naive`` engine: the activations of one full forward pass over the batch (the
  engine runs one per pixel and frees it before the next; PyTorch allocates them, so
  this one is a formula, kept by each model: ``forward_floats``).
* Both: the images being written and the uniforms (``ImageUniforms.draw`` stacks
  per-image blocks: twice their size while it runs).
* Composite models (any nesting of auxiliary-variable models): the maximum over the
  stages of their chain, each with what is alive while it runs (the conditioning
  network's activations and output, the image of the stage below, a consistent stage's
  window of value ranges).

Set ``PIXELAUX_MEMORY_CHECK=0`` to skip the check (e.g. with plenty of swap).
"""
from __future__ import annotations

import json
import math
import os

import torch

from .engines.footprint import held_bytes, num_threads  # noqa: F401 (this module's names, as before)

__all__ = ["InsufficientMemoryError", "estimate_sampling_bytes", "available_bytes", "check_memory",
           "format_bytes"]

_F32 = 4
_I64 = 8


class InsufficientMemoryError(MemoryError):
    """A run was refused because its memory estimate exceeds the available memory.

    Attributes: ``needed`` and ``available`` (bytes), ``device`` (``torch.device``).
    """

    def __init__(self, message: str, *, needed: int, available: int, device):
        super().__init__(message)
        self.needed, self.available, self.device = int(needed), int(available), torch.device(device)


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    n = float(n)
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    for unit in units:
        if abs(n) < 1024 or unit == units[-1]:
            break
        n /= 1024
    if unit == "B":
        return f"{n:.0f} B"
    return f"{n:.1f} {unit}" if abs(n) < 1e4 else f"{n:.3g} {unit}"


# --------------------------------------------------------------------------- estimates

def _encoder_floats(encoder, h: int, w: int) -> int:
    """Activations alive in a conditioning network whose output is ``(h, w)``, per image
    (its output map included). Other encoders than the built-in ones: counted by their
    widest conv."""
    if hasattr(encoder, "forward_floats"):
        return encoder.forward_floats(h, w)
    stem = getattr(encoder, "stem", None)
    if stem is not None and hasattr(encoder, "in_channels") and hasattr(encoder, "out_channels"):
        hid = stem.out_channels
        return (encoder.in_channels + 6 * hid + encoder.out_channels) * h * w
    widths = [m.out_channels for m in encoder.modules() if hasattr(m, "out_channels")] or [1]
    return 8 * max(widths) * h * w


def _images_bytes(channels: int, h: int, w: int) -> int:
    return 2 * _I64 * channels * h * w          # the stage's image and the engine's copy


def _window_bytes(channels: int, h: int, w: int) -> int:
    """A consistent stage's window (``consistency.Window``): four int64 maps and the
    engines' packed int32 copy of them, per image."""
    return (4 * _I64 + 4 * 4) * channels * h * w


def _trial_conds(stage, b: int, h: int, w: int, device) -> list:
    """The ``cond`` shapes a stage can be given (a map, a vector per image), for a trial
    of ``b`` images: the estimate takes the larger."""
    if not stage.cond_channels:
        return [None]
    return [torch.zeros(b, stage.cond_channels, h, w, device=device),
            torch.zeros(b, stage.cond_channels, device=device)]


#: below this many activations per layer and step (batch x hidden x the positions one
#: step computes), CPU work runs in one intra-op thread: too small to gain from a second
#: one, and on a machine whose cores are busy every OpenMP barrier waits for a
#: descheduled thread (training, the naive and the torch sampling engines)
SMALL_LAYER_VALUES = 2 ** 18


#: ``_cached_stage_bytes`` by (kind, config, h, w, backend, device): the buffers depend on
#: the architecture and the size only, so ``sample()`` builds its trial states once per
#: stage and size, not on every call (they cost milliseconds: ~10% of a small pyramid's
#: sampling time at batch 1)
_STAGE_BYTES: dict = {}
_STAGE_BYTES_MAX = 256


def _cached_stage_bytes(stage, h: int, w: int, backend) -> tuple[int, int]:
    """``(fixed, per image)`` bytes of a cached backend's buffers for one stage, from its
    own state built for trials of 1 and 2 images (the larger over the cond shapes);
    remembered per architecture, size, backend and device (``_STAGE_BYTES``)."""
    device = next(stage.parameters()).device
    key = (stage.kind, json.dumps(stage.config, sort_keys=True), h, w, backend, str(device))
    if key not in _STAGE_BYTES:
        if len(_STAGE_BYTES) >= _STAGE_BYTES_MAX:
            _STAGE_BYTES.clear()
        _STAGE_BYTES[key] = _trial_stage_bytes(stage, h, w, backend, device)
    return _STAGE_BYTES[key]


def _trial_stage_bytes(stage, h: int, w: int, backend, device) -> tuple[int, int]:
    from . import engines
    best = (0, 0)
    for k in range(len(_trial_conds(stage, 1, 1, 1, "cpu"))):
        trial = []
        for b in (1, 2):
            x = torch.zeros(b, stage.channels, h, w, dtype=torch.long, device=device)
            cond = _trial_conds(stage, b, h, w, device)[k]
            trial.append(engines.workspace_bytes(backend or "torch", stage, x, cond))
        per_image = max(0, trial[1] - trial[0])
        best = max(best, (max(0, trial[0] - per_image), per_image), key=lambda fp: fp[0] + 1024 * fp[1])
    return best


def _stage_bytes(stage, h: int, w: int, engine: str, backend) -> tuple[int, int]:
    """``(fixed, per image)`` bytes of sampling one stage."""
    common = _images_bytes(stage.channels, h, w) + 2 * _F32 * stage.dist.num_uniforms * h * w
    if engine == "naive":
        return 0, _F32 * stage.forward_floats(h, w) + common
    fixed, per_image = _cached_stage_bytes(stage, h, w, backend)
    return fixed, per_image + common


def _size(model, size) -> tuple[int, int]:
    if size is None:
        size = model.image_size
    if isinstance(size, int):
        size = (size, size)
    return max(1, int(size[0])), max(1, int(size[1]))


def estimate_sampling_bytes(model, n: int, size=None, engine: str = "cached", backend: str | None = None) -> int:
    """Estimated peak memory in bytes of ``pixelaux.sample(model, n, size=size, engine=engine,
    backend=backend)`` (see the module docstring for what is counted and how).

    ``model``: ``GatedPixelCNN``, ``PixelCNNpp`` or an auxiliary-variable model
    (``GrayscalePixelCNN``, ``PyramidPixelCNN``, any ``AuxiliaryPixelCNN``);
    ``size``: ``(H, W)``, an int, or ``None`` for ``model.image_size``; ``engine``:
    ``"naive"`` or ``"cached"``; ``backend`` (cached only, resolved: ``"torch"``,
    ``"cpp"`` or ``"triton"``; ``None`` means ``"torch"``). A fixed part plus ``n`` times
    the bytes per image. The weights are not counted (they exist already).
    """
    if engine not in ("naive", "cached"):
        raise ValueError(f"engine must be 'naive' or 'cached', got {engine!r}")
    n = max(0, int(n))
    h, w = _size(model, size)
    kind = getattr(model, "kind", None)
    from .auxiliary import chain, is_composite
    # The images alone are a lower bound. When the trials' own images (2 of them) would
    # not fit, that bound is the estimate: building the trials would fail or swap.
    lower = _images_bytes(getattr(model, "channels", 1), h, w)
    avail = available_bytes(next(model.parameters()).device) if isinstance(model, torch.nn.Module) else None
    if avail is not None and 2 * lower > avail:
        return n * lower
    if kind in ("GatedPixelCNN", "PixelCNNpp") and not is_composite(model):
        fixed, per_image = _stage_bytes(model, h, w, engine, backend)
    elif is_composite(model):
        # Every stage of the unrolled chain (any nesting), with what is alive while it runs:
        # the auxiliary image below it and its encoder's activations and output map.
        fixed = per_image = 0
        links = chain(model, (h, w), strict=False)
        for i, link in enumerate(links):
            hk, wk = link.size
            f, b = _stage_bytes(link.stage, hk, wk, engine, backend)
            if link.owner is not None:
                below = links[i + 1]
                b += _images_bytes(below.channels, *below.size)
                b += _F32 * _encoder_floats(link.owner.encoder, hk, wk)
                if getattr(link.owner, "consistent", False):
                    b += _window_bytes(link.channels, hk, wk)
            if f + n * b > fixed + n * per_image:
                fixed, per_image = f, b
    else:
        raise TypeError(f"model must be a pixelaux GatedPixelCNN, PixelCNNpp, GrayscalePixelCNN, "
                        f"PyramidPixelCNN or AuxiliaryPixelCNN, got {type(model).__name__}")
    return fixed + n * per_image if n else 0


# --------------------------------------------------------------------------- available memory

def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


_MEMINFO = "/proc/meminfo"
#: (directory, limit file, usage file, reclaimable-cache key of memory.stat): cgroup v2, v1
_CGROUPS = (("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))


def _cpu_available() -> int | None:
    avail = None
    try:
        with open(_MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            avail = None
    # A container's memory limit (cgroup v2, then v1) can be below what the host has free;
    # its usage counts the page cache, of which the inactive part is reclaimable.
    for d, limit_file, usage_file, cache_key in _CGROUPS:
        limit, usage = _read_int(f"{d}/{limit_file}"), _read_int(f"{d}/{usage_file}")
        if limit is not None and usage is not None and limit < 2 ** 60:
            left = max(0, limit - usage + _stat(f"{d}/memory.stat", cache_key))
            avail = left if avail is None else min(avail, left)
            break
    return avail


def _stat(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key and v.strip().isdigit():
                    return int(v)
    except OSError:
        pass
    return 0


def available_bytes(device) -> int | None:
    """Memory that can still be allocated on ``device``, in bytes, or ``None`` when it
    cannot be told (devices other than CPU and CUDA).

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (else ``os.sysconf``), capped by a
    cgroup memory limit. CUDA: free device memory plus what torch's caching allocator
    holds unused (``torch.cuda.mem_get_info`` + reserved - allocated).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return _cpu_available()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    return None


def check_memory(nbytes: int, device, what: str = "this run", *, n: int | None = None,
                 advice: str | None = None) -> None:
    """Raise :class:`InsufficientMemoryError` if ``nbytes`` exceed the memory available
    on ``device`` (see :func:`available_bytes`); do nothing when that is unknown or
    ``PIXELAUX_MEMORY_CHECK=0``. ``what`` names the run in the message; with ``n`` (the
    batch size the estimate is for, linear in it) the message says how many would fit;
    ``advice`` replaces the message's advice (smaller n, chunks, smaller size)."""
    if os.environ.get("PIXELAUX_MEMORY_CHECK", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    device = torch.device(device)
    avail = available_bytes(device)
    if avail is None or nbytes <= avail:
        return
    fit = ""
    if n is not None and n > 0:
        fit = f" (about {math.floor(avail / (nbytes / n))} would fit)"
    if advice is None:
        advice = (f"use a smaller n{fit} or sample in chunks (several calls with a smaller n that share one "
                  "generator give the same images as one call), or a smaller size")
    raise InsufficientMemoryError(
        f"{what} needs about {format_bytes(nbytes)} of {device.type} memory, but only "
        f"{format_bytes(avail)} is available; {advice}; PIXELAUX_MEMORY_CHECK=0 skips this check",
        needed=nbytes, available=avail, device=device)
