"""Triton kernels of the cached sampling engine, shipped as ``pixelaux.kernels``.

One file per op, each with its kernel(s), its launcher and a PyTorch reference
that performs the same buffer updates (the tests compare the two):

* ``layout``     -- ``CachedBuffers``: the device buffers and re-laid-out weights
                    every kernel reads and writes (torch only, no triton).
* ``row_step``   -- the row op: the vertical ``u`` stream of a whole row and the
                    per-row terms of the horizontal stream (one launch for the first
                    layer, two per gated block), plus the device-side row counter.
* ``pixel_step`` -- the pixel op: the horizontal ``ul`` stream at one pixel of every
                    image, the head, the sampling from the shared uniforms and the
                    write-back; ``G`` images per program (``tl.dot`` with ``M = G``),
                    one launch (fused plan) or one per conv over channel tiles
                    (split plan, small batches).
* ``compile_check`` -- compiles, without a GPU, exactly the variants a launch of a
                    preset model compiles (Triton's launch-time specialisation
                    included; the gated and the PixelCNN++ kernels, ``pp_row`` /
                    ``pp_pixel``) for ``sm_90`` (or another arch) and reports
                    registers, spills and shared memory per variant, with the
                    Triton and ptxas versions it ran with.
* ``_jitmath``   -- ``@triton.jit`` helpers (tanh, log1p, round-half-even; the
                    model's input gathered through its input table) written with
                    plain ``tl`` primitives (libdevice does not run under the
                    interpreter).

Importing this package imports triton. ``TRITON_INTERPRET`` is read when the
kernels are decorated, i.e. when this package is first imported: set it before.
"""
from . import layout, pixel_step, row_step  # noqa: F401
from .layout import CachedBuffers, LaunchPlan, choose_launch_plan  # noqa: F401
from .pixel_step import pixel_step_reference, launch_pixel_step  # noqa: F401
from .row_step import launch_advance_row, launch_row_step, row_step_reference  # noqa: F401


def compile_check(argv=None) -> int:
    """Compile every kernel variant for a GPU target without a GPU (see ``compile_check``)."""
    from .compile_check import main
    return main(argv)


def interpreted() -> bool:
    """Whether these kernels were decorated for Triton's CPU interpreter."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(pixel_step.pixel_fused_kernel, InterpretedFunction)
