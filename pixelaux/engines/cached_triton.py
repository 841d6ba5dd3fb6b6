"""Triton backend of the cached engine (docs/design.md section 2): ``backend="triton"``,
one host side for every model family.

The sampling plan (``plan.plan_of``; ``cached_torch`` is its readable executor), with
the per-row and per-pixel work fused into Triton kernels (``pixelaux.kernels``, shipped
from the top-level ``kernels/`` folder; each kernel file has a PyTorch reference beside
it). ``triton_buffers.build`` makes the device buffers of one (model, batch, size) from
the plan and chooses the launches by its shape:

* the gated shape (``GatedPixelCNN``): the fused gated path, ``triton_gated_buffers.py``'s
  ``CachedBuffers`` (weights re-laid out as per-tap matrices over the interleaved
  concat-ELU channels, ring buffers, the ``LaunchPlan``: ``G`` images per program,
  output-channel tiles for small batches); per row the row op
  (``kernels/row_step.py``), ``W`` pixel ops (``kernels/pixel_step.py``: one launch per
  pixel in the fused launch plan, ``2 * blocks + 1`` in the split one), a one-thread
  launch that advances the row counter;
* any other plan (``PixelCNNpp``): ``triton_buffers.PlanBuffers``, one launch per step
  of the plan (``kernels/pp_row.py``, ``kernels/pp_pixel.py``), the scales a row or a
  pixel triggers.

Per call, the inputs, uniforms, temperature and conditioning terms (the prefill) are
copied into those buffers in place. The row index lives on the device (``buf.row``)
and every kernel reads it, so the launch sequence of a row depends only on its *row
key* (``buf.row_key(i)``: one key for the gated path, the trigger level for the plan
walker) and nothing on the host waits for the device inside the loop.

**CUDA graphs, captured once per key.** The buffers and the graphs of a row, one per
row key, are kept in a small cache (``RUNS``, a ``RunCache``) keyed by the model
(identity and the version counters of its weights), the batch, the image size and the
options (which optional inputs are present, the launch plan, the window's block). The
first call runs row 0 eagerly (it launches, and compiles, every kernel variant: no
compilation may happen during a capture), captures each key's row at its first row
and replays it; every later call with the same cache entry replays every row, with no
capture, no allocation and no synchronisation before the last row. The progress bar
counts rows that finished on the device (an event per row), not rows enqueued.
``PIXELAUX_TRITON_GRAPHS=0`` (or ``USE_CUDA_GRAPHS = False``) launches eagerly instead;
``clear_cache()`` frees the buffers. On the CPU (the interpreter) there are no graphs:
the reuse of the buffers is what the tests check.

Float policy (``kernels/pixel_step.py``): every launch passes
``enable_fp_fusion=FP_FUSION`` (default off: no FMA contraction outside the dots;
``PIXELAUX_TRITON_FP_FUSION=1`` turns it on), round-to-nearest division in the
sampling, NaN-propagating clamps; exactness against PyTorch is judged by the
tie-explained comparison (``tie_report``).

Where it runs: CUDA tensors with triton installed; CPU tensors only under Triton's
interpreter (``TRITON_INTERPRET=1`` set before the kernels are first imported), which
is how the tests run it, slowly, on tiny shapes.

**Consistent decoding** (``window``, a ``pixelaux.consistency.Window``): the sampling
truncates each channel to the range the window's rule gives (``head_sample``); the
window is loaded into a ``kernels.layout.WindowBuffer`` in place per call like the other inputs, and
the cache key says whether there is one (and its ``block``, a constexpr).

Also here: ``triton_error``, ``interpreter_enabled``, ``device_status``, ``RunCache`` /
``weights_version``, ``capture_cuda_graph``, ``RowProgress``, ``true_fp32``
(``float_policy``; TF32 off: the prefill's conditioning convolutions and every
exactness reference run inside it), ``tie_report`` and ``compile_for_gpu``.

UNTESTED ON HARDWARE (no GPU was available when this was written): everything under
``x.device.type == "cuda"`` below (the graph capture and replay, the device guard),
the kernels' behaviour on a GPU (memory ordering around ``tl.debug_barrier``, speed,
the block sizes and ``num_warps``). What was checked without a GPU: the interpreter
runs exactly these kernels and the same launch sequence as the eager CUDA path (the
tests); every kernel variant a launch of the benchmark presets compiles builds for
sm_90 through Triton, LLVM and ptxas (``engines/compile_check.py``). On a GPU,
``benchmarks/gpu_check.py`` answers the rest in one run.
"""
from __future__ import annotations

import collections
import contextlib
import importlib.util
import itertools
import os
import sys
import weakref
from pathlib import Path

import torch

from ..distributions import _check_temperature
from ..weight_norm import folded
from . import triton_buffers
from .progress import pixel_progress

def _env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "off", "no", "")


USE_CUDA_GRAPHS = _env_flag("PIXELAUX_TRITON_GRAPHS", "1")
FP_FUSION = _env_flag("PIXELAUX_TRITON_FP_FUSION", "0")

_MISSING_TRITON = "triton is not installed (pip install triton)"


def triton_error() -> str | None:
    """``None`` if triton imports, else why not."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError as e:
        return f"{_MISSING_TRITON}: {e}" if "triton" not in str(e) else _MISSING_TRITON
    except Exception as e:  # a broken install
        return f"triton failed to import ({type(e).__name__}: {e})"
    return None


def interpreter_enabled() -> bool:
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


from ..float_policy import tf32_flags, true_fp32  # noqa: E402,F401 (the engines' and tests' names)


# (old private names, kept for callers and tests that patch them)
_triton_error = triton_error


def _interpreter_enabled() -> bool:
    return interpreter_enabled()


def device_status(device, what: str = "triton") -> tuple[bool, str]:
    """``(available, reason)`` of Triton kernels for tensors on ``device``: triton
    importable, and a CUDA device torch can use, or the CPU interpreter. Shared by
    every Triton engine; ``what`` names it in the reasons."""
    device = torch.device(device)
    why = _triton_error()
    if why is not None:
        return False, why
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "needs a CUDA device: torch reports CUDA unavailable (CPU build of torch or no GPU)"
        return True, f"{what} on CUDA"
    if device.type == "cpu":
        if _interpreter_enabled():
            return True, f"{what} interpreter on CPU (TRITON_INTERPRET=1; slow, meant for tests)"
        return False, ("needs a CUDA device or TRITON_INTERPRET=1 (Triton's CPU interpreter, "
                       "set before pixelaux.kernels is imported) for tensors on the CPU")
    return False, f"needs a CUDA device or TRITON_INTERPRET=1 on the CPU, got tensors on {device.type}"


def status(device) -> tuple[bool, str]:
    """``(available, reason)`` of the Triton backend for tensors on ``device``."""
    return device_status(device, "triton")


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


def capture_cuda_graph(fn):  # pragma: no cover - needs a GPU; UNTESTED ON HARDWARE
    """Capture the launches of ``fn`` (not run now) into a CUDA graph; returns its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):          # syncs first; records on a side stream
        fn()
    return graph.replay                    # (the bound method keeps the graph alive)


def _row_capture(device, reference: bool):
    """How rows are captured here: CUDA graphs on a GPU (``USE_CUDA_GRAPHS``), else
    ``None`` (eager: the interpreter, the references). Tests replace it."""
    return capture_cuda_graph if device.type == "cuda" and not reference and USE_CUDA_GRAPHS else None


def weights_version(model) -> tuple:
    """Changes when a parameter or buffer of ``model`` is replaced or modified in place
    (``data_ptr`` and the autograd version counter of every tensor)."""
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))


class RunCache:
    """A small LRU of per-(model, key) run state: buffers, a captured graph, anything
    an engine builds once and replays. An entry is valid while its model is alive and
    its weights unchanged (``weights_version``); ``capacity`` entries at most."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._d: collections.OrderedDict = collections.OrderedDict()
        self.builds = 0                        # how many entries were built (tests)

    def get(self, model, key, build):
        """The entry for ``(model, key)``, built with ``build()`` when missing or stale."""
        k = (id(model), key)
        version = weights_version(model)
        hit = self._d.get(k)
        if hit is not None:
            ref, ver, entry = hit
            if ref() is model and ver == version:
                self._d.move_to_end(k)
                return entry
            del self._d[k]
        entry = build()
        self.builds += 1
        self._d[k] = (weakref.ref(model), version, entry)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)
        return entry

    def clear(self):
        self._d.clear()

    def __len__(self):
        return len(self._d)


RUNS = RunCache()


def clear_cache():
    """Free the cached buffers and graphs of the Triton engine."""
    RUNS.clear()


class RowProgress:
    """Counts rows on a progress bar as they *finish*: on CUDA an event is recorded
    after each row's launches and the bar moves when it completes (polled while
    enqueueing, waited at the end); elsewhere the launches ran already."""

    def __init__(self, bar, width: int, cuda: bool):
        self.bar, self.width, self.cuda = bar, width, cuda
        self.pending = collections.deque()
        self.done = 0

    def _tick(self):
        self.done += 1
        self.bar.update(self.width)

    def enqueued(self):
        if not self.cuda:
            self._tick()
            return
        ev = torch.cuda.Event()            # pragma: no cover - needs a GPU
        ev.record()
        self.pending.append(ev)
        while self.pending and self.pending[0].query():
            self.pending.popleft()
            self._tick()

    def finish(self):
        while self.pending:                # pragma: no cover - needs a GPU
            self.pending.popleft().synchronize()
            self._tick()


class _Run:
    """A cache entry: the buffers of one (model, batch, size, options) (``triton_buffers.build``)
    and the captured row graphs, one per row key."""

    def __init__(self, buf):
        self.buf = buf
        self.graphs = {}
        self.captures = 0


def sample_rows(run, bar, capture=None, reference=False, track=None):
    """Sample every row of ``run`` (a ``_Run``). Without ``capture``: every row eagerly.
    With it: on the first use (no graph yet) row 0 eagerly (it launches, and compiles,
    every kernel variant: no compilation may happen during a capture), then each row
    replays the graph of its key (``buf.row_key(i)``: the gated path has one, the plan
    walker one per trigger level), captured at the first row that needs it; later uses
    replay from row 0. The row counter lives on the device, so the same launches serve
    every row of a key and nothing waits for the device."""
    buf, graphs = run.buf, run.graphs
    track = track or RowProgress(bar, buf.W, cuda=False)
    first = not graphs
    for i in range(buf.H):
        key = buf.row_key(i)
        one_row = lambda key=key: buf.launch_row(key, reference)  # noqa: E731
        if capture is None or (i == 0 and first):
            one_row()
        else:
            if key not in graphs:
                graphs[key] = capture(one_row)
                run.captures += 1
            graphs[key]()
        track.enqueued()
    track.finish()
    return run


def _entry(model, x, known, cond, uniforms, temperature, return_params, launch_plan=None, window=None,
           reference=False):
    """The cached buffers (and graphs) for this call, filled with its inputs."""
    key = (str(x.device), tuple(x.shape), known is not None, cond is not None, bool(return_params),
           launch_plan.key() if launch_plan is not None else None, FP_FUSION,
           None if window is None else window.block, bool(reference))
    fresh = []

    def build():
        fresh.append(True)
        return _Run(triton_buffers.build(model, x, known, cond, uniforms, temperature, return_params, window,
                                         launch_plan, FP_FUSION))

    run = RUNS.get(model, key, build)
    if not fresh:
        run.buf.fill(x, known, cond, uniforms, temperature, window)
    return run


@torch.no_grad()
@folded()   # weight-normed weights computed once per call (weight_norm.py)
def run(model, x, known, cond, uniforms, temperature, progress=False, return_params=False, launch_plan=None,
        window=None, reference=False):
    """Sample the unknown pixels of ``x`` in raster order with the Triton kernels.

    Same contract as ``cached_torch.run``: model a ``GatedPixelCNN`` or a ``PixelCNNpp``
    (eval mode, on ``x``'s device); x ``(B, C, H, W)`` long holding the known pixels; known
    ``(B, H, W)`` bool or None; cond float ``(B, cond_channels, H, W)``, a vector per image
    ``(B, cond_channels)`` (its terms computed once per image) or None; uniforms
    ``(B, H, W, U)`` float32. Returns the completed ``x`` (a new tensor), or ``(x, params)``
    with ``params`` ``(B, P, H, W)`` when ``return_params``.
    ``launch_plan``: a ``kernels.layout.LaunchPlan`` (default: ``choose_launch_plan`` for
    the batch; the plan walker (``PixelCNNpp``) takes its ``group`` and ``precision``). ``window``: a ``pixelaux.consistency.Window``
    of ``x``'s shape (consistent decoding) or None. ``reference=True`` runs the same
    buffers and launch sequence with the kernels' PyTorch references (any device, tests).
    Raises ``RuntimeError`` when the backend cannot run here (see ``status``).
    """
    if not reference:
        ok, why = status(x.device)
        if not ok:
            raise RuntimeError(f"backend='triton' is not available: {why}")
    temperature = _check_temperature(temperature)
    b, _, h, w = x.shape
    if b == 0 or h == 0 or w == 0:
        out = x.clone()
        params = torch.zeros(b, model.dist.num_params, h, w, device=x.device)
        return (out, params) if return_params else out
    model.check_size((h, w), "x")
    cuda = x.device.type == "cuda" and not reference
    with torch.cuda.device(x.device) if cuda else contextlib.nullcontext():
        entry = _entry(model, x, known, cond, uniforms, temperature, return_params, launch_plan, window, reference)
        buf = entry.buf
        with pixel_progress(h * w, progress, "cached[triton]") as bar:
            track = RowProgress(bar, w, cuda=cuda and progress)
            sample_rows(entry, bar, _row_capture(x.device, reference), reference, track)
        # the buffers are reused by the next call: hand back copies
        x_out = buf.x.to(x.dtype) if buf.x.dtype != x.dtype else buf.x.clone()
        return (x_out, buf.params.clone()) if return_params else x_out


def compile_for_gpu(configs, arch: int = 90, batch: int = 3, size=(8, 8)):
    """Compile every kernel variant that one row of each ``PixelCNNpp(**config)`` launches
    with known pixels and returned parameters (the highest trigger level, so every
    kernel) for ``cuda sm_<arch>`` without a GPU, through ``engines/compile_check.py``
    (the real launchers on CPU buffers, each ``kernel[grid](...)`` replaced by
    ``kernel.warmup``: Triton's frontend, LLVM and ptxas; nothing runs). Needs the
    kernels imported without ``TRITON_INTERPRET``. Returns ``[(kernel name, info)]``,
    one per variant (``reg``, ``stack`` and ``local`` (spills), ``shared``,
    ``num_warps``, the constexprs); ``compile_check.report`` formats them."""
    from .compile_check import compile_all
    res = compile_all([dict(c, arch="pixelcnnpp") for c in configs], arch, size, (batch,), teacher_forcing_only=True)
    return [(info["kernel"], info) for info in res.values()]


@torch.no_grad()
def tie_report(model, uniforms, temperature, ref, params_ref, got, params_got, tol: float = 1e-4, window=None):
    """Tie-explained comparison of two engines' images (docs/design.md section 2.7).

    ``ref``/``got``: ``(B, C, H, W)`` images of a reference engine (``naive`` or
    ``cached_torch``: they sample with ``model.dist.sample_flat``) and of the engine
    under test from the same inputs and ``uniforms``; ``params_ref``/``params_got``:
    each engine's own parameters at every position ``(B, P, H, W)`` (``return_params``).
    Every image where they differ must first differ (raster order) at a float tie,
    judged with each engine's *own* parameters at that pixel:

    * the two parameter vectors agree to ``tol`` of their scale (the larger max abs);
    * the reference's pixel is what its parameters give there, replayed exactly as the
      reference engine sampled it (``sample_flat`` over the whole batch at that pixel,
      on the parameters' device);
    * ``got``'s pixel is what its parameters give there with torch's arithmetic, or
      what they give with one parameter moved by ``tol`` of the scale either way. The
      engine under test may sample with arithmetic of its own (the kernels' ``exp`` /
      ``log`` and tree-ordered sums differ from torch's in the last bits), and where
      its parameters sit on a bin boundary that lands its pixel on the other side:
      a tie of the sampling, not a failure.

    ``window``: the ``pixelaux.consistency.Window`` both engines sampled with (consistent
    decoding); each engine's pixel is then replayed with the bounds its own earlier
    pixels leave (``Window.bounds_at`` on its own image).

    Returns ``(ok, fraction of pixels equal, lines)``: one line per differing image."""
    if params_ref is None or params_got is None:
        raise ValueError("tie_report needs both engines' own parameters (run them with return_params=True)")
    if ref.shape != got.shape or params_ref.shape != params_got.shape or params_ref.shape[2:] != ref.shape[2:]:
        raise ValueError(f"tie_report: shapes do not match: images {tuple(ref.shape)} / {tuple(got.shape)}, "
                         f"params {tuple(params_ref.shape)} / {tuple(params_got.shape)}")
    dist = model.dist
    dev = params_ref.device
    lines, ok = [], True
    diff = (ref != got).any(1)
    for k in range(ref.shape[0]):
        pos = diff[k].flatten().nonzero()
        if len(pos) == 0:
            continue
        i, j = divmod(pos[0].item(), ref.shape[3])
        u_all = uniforms[:, i, j].to(dev)
        pa = params_ref[k:k + 1, :, i, j]
        pb = params_got[k:k + 1, :, i, j].to(dev)
        scale = max(pa.abs().max().item(), pb.abs().max().item(), 1e-30)
        err = (pa - pb).abs().max().item() / scale
        want_a, want_b = ref[k, :, i, j].to(dev), got[k, :, i, j].to(dev)
        # the reference's own sampling call at this pixel: its whole batch
        bounds = None if window is None else window.to(dev).bounds_at(ref.to(dev), i, j)
        own_a = torch.equal(dist.sample_flat(params_ref[:, :, i, j], u_all, temperature, bounds)[k], want_a)
        own_b = _reached(dist, pb, u_all[k:k + 1], temperature, want_b, tol * scale,
                         None if window is None else (window.to(dev), got.to(dev), k, i, j))
        tie = err <= tol and own_a and own_b is not None
        ok &= tie
        if tie:
            why = "a float tie" + ("" if own_b == "exact" else " (at a bin boundary of its own parameters)")
        else:
            why = "NOT a tie: " + "; ".join(filter(None, [
                f"params differ by more than {tol:.0e}" if err > tol else "",
                "the reference's pixel is not what its own parameters give" if not own_a else "",
                "the engine's pixel is not what its own parameters give, even moved by "
                f"{tol:.0e} of their scale" if own_b is None else ""]))
        lines.append(f"image {k} first differs at ({i}, {j}): {ref[k, :, i, j].tolist()} vs "
                     f"{got[k, :, i, j].tolist()}, params within {err:.1e}: {why}; "
                     f"{int(diff[k].sum())} pixels differ")
    equal = (ref == got).all(1).float().mean().item()
    return ok, equal, lines


def _reached(dist, p, u, temperature, want, step, at=None):
    """``"exact"`` when ``sample_flat(p, u)`` is ``want``, ``"boundary"`` when it is with
    one parameter of ``p`` ``(1, P)`` moved by ``step`` either way, else ``None``. ``at``:
    ``(window, image, k, i, j)``, sampling truncated as image ``k`` at ``(i, j)`` was."""
    def bounds(rows):
        if at is None:
            return None
        window, img, k, i, j = at
        return window[[k] * rows].bounds_at(img[[k] * rows], i, j)

    if torch.equal(dist.sample_flat(p, u, temperature, bounds(1))[0], want):
        return "exact"
    n = p.shape[1]
    moved = p.repeat(2 * n, 1)
    idx = torch.arange(n, device=p.device)
    moved[idx, idx] += step
    moved[n + idx, idx] -= step
    pix = dist.sample_flat(moved, u.expand(2 * n, -1), temperature, bounds(2 * n))
    return "boundary" if bool((pix == want).all(1).any()) else None
