"""Compile the kernels for a GPU without one.

    python -m pixelaux.kernels.compile_check [--arch 90] [--config "dict(...)"]
    # from a source checkout (kernels/ not installed as pixelaux.kernels):
    python -c "from pixelaux.engines.cached_triton import load_kernels as k; k().compile_check()"

The interpreter checks the kernels' arithmetic and indexing but not that they
compile: this runs the real launchers (``launch_row_step``, ``launch_pixel_step``,
``launch_advance_row``) on CPU buffers with every kernel swapped for a stand-in that
compiles the launch (``triton.compile`` for ``cuda`` ``sm_<arch>``: Triton's frontend,
its optimiser, LLVM and ptxas, all shipped with triton) instead of running it, and
reports each variant's registers and spill stack (with ``cuobjdump``, when triton
ships it). No GPU, no driver: it says nothing about speed.

Needs the kernels imported *without* ``TRITON_INTERPRET`` (the variable is read when
they are decorated).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import torch
import triton

from . import pixel_step, row_step
from .layout import CachedBuffers

KERNELS = ((row_step, "row_init_kernel"), (row_step, "row_block_kernel"),
           (row_step, "advance_row_kernel"), (pixel_step, "pixel_step_kernel"))

DEFAULT_CONFIGS = [
    dict(channels=3, bits=8, hidden=64, blocks=2, kernel_size=3, nr_mix=10, dist="logistic", cond_channels=4),
    dict(channels=1, bits=4, hidden=48, blocks=1, kernel_size=5, dist="categorical"),
]


def _type(v) -> str:
    if isinstance(v, torch.Tensor):
        return {torch.float32: "*fp32", torch.int64: "*i64", torch.int32: "*i32", torch.int8: "*i8"}[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {type(v).__name__}")


def _resources(cubin: bytes) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return "(no cuobjdump)"
    path = f"/tmp/pixelaux_compile_check_{os.getpid()}.cubin"
    with open(path, "wb") as f:
        f.write(cubin)
    try:
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True).stdout
    finally:
        os.remove(path)
    lines = [ln.strip().split(" LOCAL")[0] for ln in out.splitlines() if "REG:" in ln]
    return lines[0] if lines else "(no resource line)"


class _Compile:
    """Stands in for ``kernel[grid]``: compiles the launch instead of running it."""

    def __init__(self, fn, name, target, results):
        self.fn, self.name, self.target, self.results = fn, name, target, results

    def __getitem__(self, grid):
        def launch(*args, num_warps=4, **constexprs):
            from triton.compiler import ASTSource
            sig = {n: _type(v) for n, v in zip(self.fn.arg_names, args)}
            sig.update({n: "constexpr" for n in constexprs})
            key = (self.name, num_warps, tuple(sorted(constexprs.items())))
            if key in self.results:
                return
            src = ASTSource(fn=self.fn, signature=sig, constexprs=dict(constexprs))
            compiled = triton.compile(src, target=self.target, options={"num_warps": num_warps})
            self.results[key] = _resources(compiled.asm["cubin"])
        return launch


def compile_all(configs=None, arch: int = 90, size=(4, 8), batch: int = 2) -> dict:
    """Compile every kernel variant the launchers use for each model config (with and
    without known pixels / returned parameters). Returns ``{(kernel, num_warps,
    constexprs): resource line}``; raises on the first compile error."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.interpreter import InterpretedFunction

    from pixelaux import GatedPixelCNN
    if isinstance(pixel_step.pixel_step_kernel, InterpretedFunction):
        raise RuntimeError("the kernels were imported with TRITON_INTERPRET=1: run this without it")
    target = GPUTarget("cuda", arch, 32)
    results = {}
    saved = [(mod, name, getattr(mod, name)) for mod, name in KERNELS]
    try:
        for mod, name, fn in saved:
            setattr(mod, name, _Compile(fn, name, target, results))
        for cfg in configs or DEFAULT_CONFIGS:
            model = GatedPixelCNN(**cfg).eval()
            h, w = size
            x = torch.zeros(batch, model.channels, h, w, dtype=torch.long)
            cond = torch.zeros(batch, model.cond_channels, h, w) if model.cond_channels else None
            u = torch.rand(batch, h, w, model.dist.num_uniforms)
            for known, params in ((None, False), (torch.ones(batch, h, w, dtype=torch.bool), True)):
                buf = CachedBuffers(model, x, known, cond, u, 1.0, params)
                row_step.launch_row_step(buf)
                pixel_step.launch_pixel_step(buf, 1)
                row_step.launch_advance_row(buf)
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Compile the Triton kernels for a GPU target, without a GPU.")
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90 (default 90)")
    ap.add_argument("--config", action="append", default=None,
                    help="a GatedPixelCNN config as a Python dict literal (repeatable)")
    args = ap.parse_args(argv)
    import ast
    configs = [ast.literal_eval(c) for c in args.config] if args.config else None
    results = compile_all(configs, arch=args.arch)
    spills = 0
    for (name, warps, consts), res in results.items():
        short = {k: v for k, v in consts if k in ("STAGE", "HAS_COND", "HID_P", "DIST", "C", "KH", "BLOCK_W",
                                                 "HAS_KNOWN", "RETURN_PARAMS")}
        stack = re.search(r"STACK:(\d+)", res)
        spill = bool(stack and int(stack.group(1)) > 0)
        spills += spill
        print(f"{name:18s} warps={warps} {short} {res}{'  <-- spills' if spill else ''}")
    print(f"{len(results)} variants compiled for sm_{args.arch}, {spills} with spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
