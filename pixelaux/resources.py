"""Memory checks before long runs: a batch that would not fit is refused up front.

``pixelaux.sample`` calls :func:`estimate_sampling_bytes` and :func:`check_memory`
right after checking its arguments, before anything is allocated, so an ``n`` that
would exhaust the machine fails at once with :class:`InsufficientMemoryError` (a
``MemoryError``) giving the estimate, the memory available and what to do about it,
instead of swapping for minutes or being killed by the OOM killer.

The estimate counts the dominant allocations, in float32 (4 bytes) unless noted:

* ``naive`` engine: the activations of one full forward pass over the batch (the
  engine runs one per pixel and frees it before the next), counted as the working
  set that is alive at the widest point of the network: both streams, one gated
  block's temporaries, the conditioning maps, the input, the output parameters and
  the uniforms.
* ``cached`` engine (every backend): the row caches of every block, the conditioning
  terms of every block (computed once per image, full resolution), the padded input
  buffer, the images being written and the uniforms. This is the layout of the
  ``torch`` backend; the ``cpp`` backend computes the conditioning terms row by row
  and needs less, so the estimate is an upper bound for it.
* Composite models (any nesting of auxiliary-variable models): the maximum over the
  stages of their chain, each with what is alive while it runs (the conditioning
  network's activations and output, the image of the stage below).

Set ``PIXELAUX_MEMORY_CHECK=0`` to skip the check (e.g. with plenty of swap).
"""
from __future__ import annotations

import math
import os

import torch

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

def _stage_floats_naive(stage, h: int, w: int) -> int:
    """Floats alive at the widest point of one forward pass of a ``GatedPixelCNN``
    stage, per image."""
    c, hid, k = stage.channels, stage.hidden, stage.cond_channels
    blocks = len(stage.u_blocks)
    per_pos = (
        3 * (c + 1)                 # scaled input, its concat with ones, a padded copy
        + 2 * hid                   # the u and ul streams, alive throughout
        + (14 * hid if blocks else 2 * hid)   # one gated block: concat-ELU (cat + elu),
                                    # padded conv input, conv outputs, gate, skip input
        + (3 * hid + 5 * k if k else 0)       # cond map, its concat-ELU, the block's terms
        + stage.dist.num_params     # head output
        + stage.dist.num_uniforms   # the uniforms of the stage
    )
    return per_pos * h * w


def _stage_floats_cached(stage, h: int, w: int, cond_per_row: bool) -> int:
    """Floats of the cached engine's buffers for one stage, per image. ``cond_per_row``:
    the backend computes the blocks' conditioning terms row by row (``cpp``) instead of
    for the whole image up front (``torch``, ``triton``)."""
    c, hid, k = stage.channels, stage.hidden, stage.cond_channels
    blocks = len(stage.u_blocks)
    kh, kw = stage.kh, stage.kw
    pw = (kw - 1) // 2
    xin = (c + 1) * (kh + h) * (w + 2 * pw)                   # padded input buffer
    caches = blocks * 2 * 2 * hid * kh * ((w + 2 * pw) + (w + kh - 1))   # u and ul row windows
    rows = (4 + 2 * blocks) * hid * w                         # per-row stream values and biases
    if not k:
        cond = 0
    elif cond_per_row:
        cond = k * h * w + blocks * 2 * 3 * hid * w           # the map + one row of terms
    else:                                                     # the map, its concat-ELU while
        cond = (5 * k + blocks * 2 * 3 * hid) * h * w         # the terms are computed, (h1, h2)
    per_pixel = stage.dist.num_params + stage.dist.num_uniforms   # per block and stream
    return xin + caches + cond + rows + per_pixel * h * w


def _encoder_floats(encoder, h: int, w: int) -> int:
    """Activations alive in a conditioning network whose output is ``(h, w)``, per image
    (its output map included). Other encoders than the built-in ones: counted by their
    widest conv."""
    stem = getattr(encoder, "stem", None)
    if stem is not None and hasattr(encoder, "in_channels") and hasattr(encoder, "out_channels"):
        hid = stem.out_channels
        return (encoder.in_channels + 6 * hid + encoder.out_channels) * h * w
    widths = [m.out_channels for m in encoder.modules() if hasattr(m, "out_channels")] or [1]
    return 8 * max(widths) * h * w


def _images_bytes(channels: int, h: int, w: int) -> int:
    return 2 * _I64 * channels * h * w          # the stage's image and the engine's copy


def _pp_floats_naive(stage, h: int, w: int) -> int:
    """Floats alive at the widest point of one forward pass of a ``PixelCNNpp``, per image:
    the up-pass values kept for the down pass, one block's temporaries, the cond terms."""
    c, f, k, n = stage.channels, stage.hidden, stage.cond_channels, stage.blocks
    area = sum((h >> s) * (w >> s) for s in range(stage.scales))
    kept = 2 * (n + 1) * f * area
    per_pos = 3 * (c + 1) + 14 * f + (3 * f + 5 * k if k else 0) + stage.dist.num_params \
        + stage.dist.num_uniforms
    return kept + per_pos * h * w


def _pp_floats_cached(stage, h: int, w: int) -> int:
    """Floats of the cached engine's buffers for a ``PixelCNNpp``, per image: the 2-row
    windows of every conv input at its scale, the transposed convs' outputs, one row of
    stream values, and the conditioning terms of every block (whole maps)."""
    c, f, k, n = stage.channels, stage.hidden, stage.cond_channels, stage.blocks
    floats = (c + 1) * (2 + h) * (w + 2)
    for s in range(stage.scales):
        ws, area = w >> s, (h >> s) * (w >> s)
        blocks = n + (n if s == stage.scales - 1 else n + 1)      # up + down, per stream
        floats += 2 * blocks * 2 * (2 * f) * 2 * (ws + 2)        # two windows per block and stream
        floats += 2 * f * 2 * (ws + 2) + 2 * f * 2 * ws          # stride-2 inputs, transposed outputs
        floats += 4 * (n + 1) * f * ws                           # per-row values and terms
        if k:
            floats += 2 * blocks * 3 * f * area + k * area
    return floats + (stage.dist.num_params + stage.dist.num_uniforms) * h * w


def _stage_bytes(stage, h: int, w: int, engine: str, backend) -> int:
    if stage.kind == "PixelCNNpp":
        floats = _pp_floats_naive(stage, h, w) if engine == "naive" else _pp_floats_cached(stage, h, w)
        return _F32 * floats + _images_bytes(stage.channels, h, w)
    if engine == "naive":
        floats = _stage_floats_naive(stage, h, w)
    else:
        floats = _stage_floats_cached(stage, h, w, cond_per_row=backend == "cpp")
    return _F32 * floats + _images_bytes(stage.channels, h, w)


def _size(model, size) -> tuple[int, int]:
    if size is None:
        size = model.image_size
    if isinstance(size, int):
        size = (size, size)
    return max(1, int(size[0])), max(1, int(size[1]))


def estimate_sampling_bytes(model, n: int, size=None, engine: str = "cached", backend: str | None = None) -> int:
    """Estimated peak memory in bytes of ``pixelaux.sample(model, n, size=size, engine=engine)``.

    ``model``: ``GatedPixelCNN``, ``PixelCNNpp`` or an auxiliary-variable model
    (``GrayscalePixelCNN``, ``PyramidPixelCNN``, any ``AuxiliaryPixelCNN``);
    ``size``: ``(H, W)``, an int, or ``None`` for ``model.image_size``; ``engine``:
    ``"naive"`` or ``"cached"``; ``backend`` (cached only): ``"cpp"`` needs less (see
    the module docstring), anything else is estimated with the ``torch`` layout.
    Linear in ``n``. The weights are not counted (they exist already). Measured against
    the peak resident memory of real runs on CPU, the estimate is within about
    0.75x - 1.8x.
    """
    if engine not in ("naive", "cached"):
        raise ValueError(f"engine must be 'naive' or 'cached', got {engine!r}")
    n = max(0, int(n))
    h, w = _size(model, size)
    kind = getattr(model, "kind", None)
    from .auxiliary import chain, is_composite
    if kind in ("GatedPixelCNN", "PixelCNNpp") and not is_composite(model):
        per_image = _stage_bytes(model, h, w, engine, backend)
    elif is_composite(model):
        # Every stage of the unrolled chain (any nesting), with what is alive while it runs:
        # the auxiliary image below it and its encoder's activations and output map.
        links = chain(model, (h, w), strict=False)
        per_image = 0
        for i, link in enumerate(links):
            hk, wk = link.size
            b = _stage_bytes(link.stage, hk, wk, engine, backend)
            if link.owner is not None:
                below = links[i + 1]
                b += _images_bytes(below.channels, *below.size)
                b += _F32 * _encoder_floats(link.owner.encoder, hk, wk)
            per_image = max(per_image, b)
    else:
        raise TypeError(f"model must be a pixelaux GatedPixelCNN, PixelCNNpp, GrayscalePixelCNN, "
                        f"PyramidPixelCNN or AuxiliaryPixelCNN, got {type(model).__name__}")
    return n * per_image


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


def check_memory(nbytes: int, device, what: str = "this run", *, n: int | None = None) -> None:
    """Raise :class:`InsufficientMemoryError` if ``nbytes`` exceed the memory available
    on ``device`` (see :func:`available_bytes`); do nothing when that is unknown or
    ``PIXELAUX_MEMORY_CHECK=0``. ``what`` names the run in the message; with ``n`` (the
    batch size the estimate is for, linear in it) the message says how many would fit."""
    if os.environ.get("PIXELAUX_MEMORY_CHECK", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    device = torch.device(device)
    avail = available_bytes(device)
    if avail is None or nbytes <= avail:
        return
    fit = ""
    if n is not None and n > 0:
        fit = f" (about {math.floor(avail / (nbytes / n))} would fit)"
    raise InsufficientMemoryError(
        f"{what} needs about {format_bytes(nbytes)} of {device.type} memory, but only "
        f"{format_bytes(avail)} is available; use a smaller n{fit} or sample in chunks "
        "(several calls with a smaller n that share one generator give the same images as "
        "one call), or a smaller size; PIXELAUX_MEMORY_CHECK=0 skips this check",
        needed=nbytes, available=avail, device=device)
