"""Triton backend of the cached engine (DESIGN.md section 2): ``backend="triton"``.

The algorithm of ``cached_torch`` (its readable reference), with the per-row and
per-pixel work fused into Triton kernels (``pixelaux.kernels``, shipped from the
top-level ``kernels/`` folder; each kernel file has a PyTorch reference beside it):

* once per run (``kernels/layout.py``, ``CachedBuffers``): the weights re-laid out as
  per-tap matrices over the interleaved concat-ELU channels, the conditioning terms
  of every block computed (the prefill), the ring buffers allocated;
* per row ``i``: the row op (``kernels/row_step.py``; ``1 + 2 * blocks`` launches,
  grid ``(B, column tiles)``) computes the vertical stream of the whole row and the
  per-row terms of the horizontal one; then ``W`` launches of the pixel op
  (``kernels/pixel_step.py``; grid ``(B,)``, one program per image) each run every
  horizontal block at one pixel, the head, the sampling from the shared uniforms
  and the write-back; a one-thread launch advances the row counter.

The row index lives on the device (``buf.row``) and every kernel reads it, so the
launch sequence of a row is the same for every row and nothing on the host waits for
the device inside the loop (no ``.item()``, no synchronisation).

**CUDA graphs: per row.** On CUDA, row 0 runs eagerly (it compiles every kernel
variant, which must not happen during a capture); then the ``W + 2 + 2 * blocks``
launches of one row are captured once into a ``torch.cuda.CUDAGraph`` and the graph
is replayed for rows ``1 .. H-1``. Per row rather than per image because the row
index is read from device memory, so one small graph serves every row: capturing it
costs one row of launches and pays off within a single call, with no cache of graphs
keyed on shapes, buffers and temperature; a whole-image graph would cost a whole
image of launches to capture, hold ``H`` times the nodes and only pay off if cached
across calls; the ``H - 1`` extra replay calls of the per-row graph cost a few
microseconds each. ``PIXELAUX_TRITON_GRAPHS=0`` (or ``USE_CUDA_GRAPHS = False``)
launches eagerly instead.

Where it runs: CUDA tensors with triton installed; CPU tensors only under Triton's
interpreter (``TRITON_INTERPRET=1`` set before the kernels are first imported), which
is how the tests run it, slowly, on tiny shapes.

UNTESTED ON HARDWARE (no GPU was available when this was written): everything under
``x.device.type == "cuda"`` below (the graph capture and replay, the device guard),
the kernels' behaviour on a GPU (memory ordering around ``tl.debug_barrier``, speed,
the block sizes and ``num_warps``). What was checked without a GPU: the interpreter
runs exactly these kernels and the same launch sequence as the eager CUDA path (the
tests); every kernel variant compiles for sm_90 through Triton, LLVM and ptxas with
no register spills (``kernels/compile_check.py``, also a test). On a GPU,
``benchmarks/bench_triton_gpu.py`` checks exactness (teacher forcing, naive images,
graphs == eager) before it times anything.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch

from ..distributions import _check_temperature
from .progress import pixel_progress

USE_CUDA_GRAPHS = os.environ.get("PIXELAUX_TRITON_GRAPHS", "1").strip().lower() not in ("0", "false", "off", "no")

_MISSING_TRITON = "triton is not installed (pip install triton)"


def _triton_error() -> str | None:
    """``None`` if triton imports, else why not."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError as e:
        return f"{_MISSING_TRITON}: {e}" if "triton" not in str(e) else _MISSING_TRITON
    except Exception as e:  # a broken install
        return f"triton failed to import ({type(e).__name__}: {e})"
    return None


def _interpreter_enabled() -> bool:
    """Whether Triton's CPU interpreter is on for our kernels.

    Once ``pixelaux.kernels`` is imported its kernels are fixed one way or the other,
    so that decides; before, ``TRITON_INTERPRET`` as triton reads it."""
    mod = sys.modules.get("pixelaux.kernels")
    if mod is not None and hasattr(mod, "interpreted"):
        return mod.interpreted()
    try:
        from triton import knobs
        return bool(knobs.runtime.interpret)
    except Exception:
        return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def status(device) -> tuple[bool, str]:
    """``(available, reason)`` of the Triton backend for tensors on ``device``."""
    device = torch.device(device)
    why = _triton_error()
    if why is not None:
        return False, why
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "needs a CUDA device: torch reports CUDA unavailable (CPU build of torch or no GPU)"
        return True, "triton on CUDA"
    if device.type == "cpu":
        if _interpreter_enabled():
            return True, "triton interpreter on CPU (TRITON_INTERPRET=1; slow, meant for tests)"
        return False, ("needs a CUDA device or TRITON_INTERPRET=1 (Triton's CPU interpreter, "
                       "set before pixelaux.kernels is imported) for tensors on the CPU")
    return False, f"needs a CUDA device or TRITON_INTERPRET=1 on the CPU, got tensors on {device.type}"


def load_kernels():
    """``pixelaux.kernels``: the installed subpackage, or ``kernels/`` of a source tree."""
    try:
        from .. import kernels
        return kernels
    except ImportError as e:
        if "kernels" not in str(e):          # the package is there but failed to import
            raise
    root = Path(__file__).resolve().parents[2] / "kernels"
    init = root / "__init__.py"
    if not init.is_file():
        raise ImportError("pixelaux.kernels is missing: install pixelaux (pip install .) "
                          "or run from a source checkout with its kernels/ folder")
    spec = importlib.util.spec_from_file_location("pixelaux.kernels", init,
                                                  submodule_search_locations=[str(root)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pixelaux.kernels"] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop("pixelaux.kernels", None)
        raise
    import pixelaux
    pixelaux.kernels = mod
    return mod


def _launch_row(K, buf):
    """Every launch of one row, for the row ``buf.row`` points at; advances it."""
    K.launch_row_step(buf)
    for j in range(buf.W):
        K.launch_pixel_step(buf, j)
    K.launch_advance_row(buf)


def _capture_cuda_graph(fn):  # pragma: no cover - needs a GPU; UNTESTED ON HARDWARE
    """Capture the launches of ``fn`` (not run now) into a CUDA graph; returns its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):          # syncs first; records on a side stream
        fn()
    return graph.replay                    # (the bound method keeps the graph alive)


def _sample_rows(K, buf, bar, capture=None):
    """Row 0 eagerly (it compiles every kernel variant: no compilation may happen
    during a capture), then rows ``1 .. H-1`` by replaying ``capture(one_row)``, or
    eagerly when ``capture`` is None. The row counter lives on the device, so the
    same launches serve every row and nothing waits for the device."""
    one_row = lambda: _launch_row(K, buf)
    one_row()
    bar.update(buf.W)
    if buf.H == 1:
        return
    replay = capture(one_row) if capture is not None else one_row
    for _ in range(1, buf.H):
        replay()
        bar.update(buf.W)


@torch.no_grad()
def run(model, x, known, cond, uniforms, temperature, progress=False, return_params=False):
    """Sample the unknown pixels of ``x`` in raster order with the Triton kernels.

    Same contract as ``cached_torch.run``: model ``GatedPixelCNN`` (eval mode, on
    ``x``'s device); x ``(B, C, H, W)`` long holding the known pixels; known
    ``(B, H, W)`` bool or None; cond float ``(B, cond_channels, H, W)`` or None;
    uniforms ``(B, H, W, U)`` float32. Returns the completed ``x`` (a new tensor), or
    ``(x, params)`` with ``params`` ``(B, P, H, W)`` when ``return_params``.
    Raises ``RuntimeError`` when the backend cannot run here (see ``status``).
    """
    ok, why = status(x.device)
    if not ok:
        raise RuntimeError(f"backend='triton' is not available: {why}")
    temperature = _check_temperature(temperature)
    K = load_kernels()
    b, _, h, w = x.shape
    if b == 0 or h == 0 or w == 0:
        out = x.clone()
        params = torch.zeros(b, model.dist.num_params, h, w, device=x.device)
        return (out, params) if return_params else out
    if x.device.type == "cuda":  # pragma: no cover - needs a GPU; UNTESTED ON HARDWARE
        with torch.cuda.device(x.device):
            buf = K.CachedBuffers(model, x, known, cond, uniforms, temperature, return_params)
            with pixel_progress(h * w, progress, "cached[triton]") as bar:
                _sample_rows(K, buf, bar, _capture_cuda_graph if USE_CUDA_GRAPHS else None)
    else:
        buf = K.CachedBuffers(model, x, known, cond, uniforms, temperature, return_params)
        with pixel_progress(h * w, progress, "cached[triton]") as bar:
            _sample_rows(K, buf, bar)
    x_out = buf.x if buf.x.dtype == x.dtype else buf.x.to(x.dtype)
    return (x_out, buf.params) if return_params else x_out
