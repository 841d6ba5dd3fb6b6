"""Triton kernels of the cached sampling engine, shipped as ``pixelaux.kernels``.

One file per op, each with its kernel(s), its launcher and a PyTorch reference
that performs the same buffer updates (the tests compare the two):

* ``layout``     -- the layout of the buffers and re-laid-out weights the gated
                    kernels read and write (built on the host side by
                    ``pixelaux/engines/triton_gated_buffers.py``), the launch plan
                    (``LaunchPlan``, ``choose_launch_plan``) and ``WindowBuffer``
                    (torch only, no triton).
* ``row_step``   -- the row op: the vertical ``u`` stream of a whole row and the
                    per-row terms of the horizontal stream (one launch for the first
                    layer, two per gated block), plus the device-side row counter.
* ``pixel_step`` -- the pixel op: the horizontal ``ul`` stream at one pixel of every
                    image, the head, the sampling from the shared uniforms and the
                    write-back; ``G`` images per program (``tl.dot`` with ``M = G``),
                    one launch (fused plan) or one per conv over channel tiles
                    (split plan, small batches).
* ``pp_row`` / ``pp_pixel`` -- the PixelCNN++ (plan walker's) kernels.
* ``_jitmath``   -- ``@triton.jit`` helpers (tanh, log1p, round-half-even; the
                    model's input gathered through its input table) written with
                    plain ``tl`` primitives (libdevice does not run under the
                    interpreter).

Importing this package imports triton. ``TRITON_INTERPRET`` is read when the
kernels are decorated, i.e. when this package is first imported: set it before.

Nothing here imports the rest of pixelaux. The compile check of every launch variant
for a GPU target, without a GPU, is ``python -m pixelaux.engines.compile_check``.
"""
from . import layout, pixel_step, row_step  # noqa: F401
from .layout import LaunchPlan, choose_launch_plan  # noqa: F401
from .pixel_step import pixel_step_reference, launch_pixel_step  # noqa: F401
from .row_step import launch_advance_row, launch_row_step, row_step_reference  # noqa: F401


def interpreted() -> bool:
    """Whether these kernels were decorated for Triton's CPU interpreter."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(pixel_step.pixel_fused_kernel, InterpretedFunction)
