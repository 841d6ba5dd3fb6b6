"""Compile the kernels for a GPU without one, exactly as a launch would.

    python -m pixelaux.engines.compile_check [--preset bench-32] [--preset bench-pp32] [--arch 90]
                                             [--batch 1 16 256] [--precision ieee|tf32x3|both] [--json F]

(from a source checkout too: the kernels are found by ``cached_triton.load_kernels``,
installed as ``pixelaux.kernels`` or not).

The interpreter checks the kernels' arithmetic and indexing but not that they
compile. This runs the real launchers for a preset's models, batches and image
sizes on CPU buffers (the gated engine's ``launch_row_step``, ``launch_pixel_step``,
``launch_advance_row``; for a ``PixelCNNpp`` every launch of a row of the highest
trigger level, ``triton_buffers.PlanBuffers.row_ops``, which reaches every variant),
with Triton's active driver replaced by a stand-in that reports a CUDA
``sm_<arch>`` target, and every ``kernel[grid](...)`` turned into
``kernel.warmup(...)``: Triton's own launch path (its argument binder, so the
launch-time specialisations are the real ones: pointers 16-byte aligned, integer
arguments divisible by 16 or equal to 1, ``do_not_specialize``; the same
constexprs and options, ``num_warps`` and ``enable_fp_fusion``) compiles the variant
through its frontend, optimiser, LLVM and ptxas and returns it without launching.
Per variant it reports registers, spill stack and local memory (``cuobjdump``,
shipped with triton's NVIDIA backend), the SASS's local loads and stores
(``local_ops``: ``LDL``/``STL``) and shared memory (the compiled metadata), under the
Triton that runs it (its version and the ptxas it compiles the arch with head the
report: Triton 3.9 takes ``ptxas-blackwell`` for sm_90 too; register allocation and
spills differ between releases). A variant *spills* with a stack frame or local
memory; one whose frame no instruction touches (``local_ops=0``, ptxas's "0 bytes
spill stores") is marked as a dead stack frame. No GPU, no driver: it says nothing
about speed.

Presets: ``bench-32``, ``tiny-16`` and ``bench-pp32`` (``pixelaux.bench``; the default
is the two bench presets, ``bench-32`` and ``bench-pp32``), ``default`` (the embedded
grayscale model: its gray prior and its colour stage with conditioning) and
``pyramid`` (the embedded pyramid's levels, 8x8 to 32x32, conditioned above the
first), each at batches 1, 16 and 256 (the plans differ: channel tiles at small
batches) for sampling (no known pixels), teacher forcing (known pixels and the
returned parameters) and consistent decoding (sampling with a window of block 2, the
sampler's largest variant). ``bench-pp32`` (width 80) is minutes of ptxas.

``--precision``: the dots' ``input_precision`` of the plans compiled (``layout.LaunchPlan``;
the plan walker of a ``PixelCNNpp`` takes the plan's group and precision): ``ieee``
(the default plans, what the bench presets and every run without an override launch),
``tf32x3`` (the opt-in, ``PIXELAUX_TRITON_PLAN=precision=tf32x3``: three TF32
tensor-core products per dot, a different code path with its own register needs), or
``both``, the default: a check of the launches a user can make covers the opt-in too.
It doubles the compile time (a ``G < 16`` plan's pixel products are no dots: its
``tf32x3`` pixel variants are the ``ieee`` code under another key; its row ops are dots).

Needs the kernels imported *without* ``TRITON_INTERPRET`` (the variable is read when
they are decorated).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys

import torch
import triton

from .cached_triton import load_kernels
from .plan import plan_of
from .triton_buffers import build, gated_shape
from .triton_gated_buffers import CachedBuffers

load_kernels()   # pixelaux.kernels: the installed subpackage or a source tree's kernels/
from pixelaux.kernels import pixel_step, pp_pixel, pp_row, row_step  # noqa: E402
from pixelaux.kernels.layout import PRECISIONS, choose_launch_plan  # noqa: E402

#: Every kernel a launch can compile: the gated engine's, then the PixelCNN++ engine's.
KERNELS = ((row_step, "row_init_kernel"), (row_step, "row_block_kernel"), (row_step, "advance_row_kernel"),
           (pixel_step, "pixel_fused_kernel"), (pixel_step, "pixel_conv_kernel"),
           (pixel_step, "pixel_head_kernel"),
           (pp_row, "row_init_kernel"), (pp_row, "row_conv_kernel"), (pp_row, "row_deconv_kernel"),
           (pp_row, "advance_row_kernel"), (pp_pixel, "pixel_init_kernel"), (pp_pixel, "pixel_down_kernel"),
           (pp_pixel, "pixel_block_kernel"), (pp_pixel, "pixel_deconv_kernel"), (pp_pixel, "pixel_head_kernel"))
#: The constexprs a report names a variant by (those a launcher passes).
CONSTS = ("STAGE", "FIRST", "HAS_COND", "HID_P", "OT", "G", "DIST", "C", "E", "KH", "KW", "BLOCK_W", "HAS_KNOWN",
          "RETURN_PARAMS", "HAS_WINDOW", "BLOCK", "SH", "N", "STRIDE", "ACT", "HAS_SKIP", "GATE", "GR", "BW", "BK",
          "BN", "CUR_IN_REGS", "PREC")
PRESET_NAMES = ("bench-32", "tiny-16", "bench-pp32", "default", "pyramid")
DEFAULT_PRESETS = ("bench-32", "bench-pp32")
BATCHES = (1, 16, 256)


def preset_stages(name: str):
    """``[(label, model, (H, W), has_cond)]`` of a preset (CPU, eval mode): each model a
    ``GatedPixelCNN`` or a ``PixelCNNpp``."""
    if name in ("bench-32", "tiny-16", "bench-pp32"):
        from pixelaux.bench import PRESETS, build_model
        model, size = build_model(PRESETS[name])
        return [(name, model, (size, size), False)]
    if name == "default":
        from pixelaux import pretrained
        m = pretrained.load("default")
        h, w = m.image_size
        return [("default/prior", m.prior.eval(), (h, w), False), ("default/colour", m.colour.eval(), (h, w), True)]
    if name == "pyramid":
        from pixelaux import pretrained
        m = pretrained.load("pyramid")
        h, w = m.image_size
        n = len(m.levels)
        return [(f"pyramid/level{k}", lvl.eval(), (h >> (n - 1 - k), w >> (n - 1 - k)), k > 0)
                for k, lvl in enumerate(m.levels)]
    raise ValueError(f"unknown preset {name!r}, one of {PRESET_NAMES}")


def _resources(cubin: bytes) -> dict:
    """``reg``, ``stack``, ``shared``, ``local`` (``cuobjdump -res-usage``) and ``local_ops``:
    the local-memory loads and stores of the SASS (``LDL``/``STL``: spill traffic; a stack
    frame without them is never touched)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {}
    path = f"/tmp/pixelaux_compile_check_{os.getpid()}.cubin"
    with open(path, "wb") as f:
        f.write(cubin)
    try:
        out, sass = (subprocess.run([tool, flag, path], capture_output=True, text=True).stdout
                     for flag in ("-res-usage", "-sass"))
    finally:
        os.remove(path)
    for ln in out.splitlines():
        if "REG:" in ln:
            res = {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", ln)}
            return dict(res, local_ops=len(re.findall(r"\b(?:LDL|STL)\b", sass)))
    return {}


class _Driver:
    """Triton's active driver, for compiling only: a CUDA target, device 0, stream 0."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def __getattr__(self, name):   # anything else a launch would need is not needed by a warmup
        raise AttributeError(f"compile_check's stand-in driver has no {name!r}")


class _Warmup:
    """Stands in for ``kernel[grid]``: ``kernel.warmup`` (compile, don't launch)."""

    def __init__(self, fn, name, results, label):
        self.fn, self.name, self.results, self.label = fn, name, results, label

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            kernel = self.fn.warmup(*args, grid=grid, **kwargs)
            key = (self.name, kernel.hash)
            if key not in self.results:
                consts = {k: v for k, v in kwargs.items() if k in CONSTS}
                info = dict(kernel=self.name, label=self.label[0], grid=tuple(grid),
                            num_warps=kwargs.get("num_warps", 4), consts=consts)
                info.update(_resources(kernel.asm["cubin"]))           # reg, stack, shared, local
                info["shared"] = int(getattr(kernel.metadata, "shared", info.get("shared", 0)))
                self.results[key] = info
        return launch


def _kernel_name(mod, name: str) -> str:
    """``row_init_kernel`` (gated) or ``pp_row.row_init_kernel`` (PixelCNN++)."""
    short = mod.__name__.rsplit(".", 1)[-1]
    return f"{short}.{name}" if short.startswith("pp_") else name


@contextlib.contextmanager
def _compiling(arch, results, label):
    from triton.runtime.driver import driver
    saved = [(mod, name, getattr(mod, name)) for mod, name in KERNELS]
    old = driver._active                  # (reading .active would create a real driver: none here)
    driver.set_active(_Driver(arch))
    try:
        for mod, name, fn in saved:
            setattr(mod, name, _Warmup(fn, _kernel_name(mod, name), results, label))
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
        driver._active = old


def compile_stages(stages, arch: int = 90, batches=BATCHES, plans=None, teacher_forcing_only: bool = False,
                   precisions=("ieee",)) -> dict:
    """Compile what sampling, teacher forcing and consistent decoding launch for each
    stage and batch.
    ``stages``: ``[(label, model, (H, W), has_cond)]``, each model a ``GatedPixelCNN``
    or a ``PixelCNNpp``; ``plans``: optional ``{batch: LaunchPlan}`` (replacing the default
    plans of its batch, whatever ``precisions``; the plan walker takes its group and
    precision); ``precisions``: the default plan of each batch is compiled with each of
    these dots' precisions (``layout.PRECISIONS``). ``teacher_forcing_only``: the
    launches with known pixels and returned parameters only. Returns
    ``{(kernel, hash): info}``; raises on a compile error."""
    from triton.runtime.interpreter import InterpretedFunction
    if isinstance(pixel_step.pixel_fused_kernel, InterpretedFunction):
        raise RuntimeError("the kernels were imported with TRITON_INTERPRET=1: run this without it")
    results, label = {}, [""]
    with _compiling(arch, results, label), torch.no_grad():
        for name, model, (h, w), has_cond in stages:
            for b, prec in ((b, p) for b in batches for p in precisions):
                plan = (plans or {}).get(b) or choose_launch_plan(b, plan_of(model).hidden, w,
                                                                  override=f"precision={prec}")
                label[0] = f"{name} B={b}" + ("" if plan.precision == "ieee" else f" {plan.precision}")
                x = torch.zeros(b, model.channels, h, w, dtype=torch.long)
                cond = torch.zeros(b, model.cond_channels, h, w) if has_cond and model.cond_channels else None
                u = torch.rand(b, h, w, model.dist.num_uniforms)
                modes = ((None, False, None), (torch.ones(b, h, w, dtype=torch.bool), True, None),
                         (None, False, _window(x, model.bits)))
                for known, params, window in modes[1:2] if teacher_forcing_only else modes:
                    if not gated_shape(plan_of(model)):        # the plan walker's kernels
                        _launch_plan_row(model, x, known, cond, u, params, window, plan)
                        continue
                    buf = CachedBuffers(model, x, known, cond, u, 1.0, params, launch_plan=plan, window=window)
                    row_step.launch_row_step(buf)
                    pixel_step.launch_pixel_step(buf, min(1, w - 1))
                    row_step.launch_advance_row(buf)
    return results


def _window(x, bits):
    """A window of block 2 (consistent decoding: the sampler's block loop compiled in)."""
    from pixelaux.consistency import box_window, full_boxes
    return dataclasses.replace(box_window(*full_boxes(x.shape, bits)), block=2)


def _launch_plan_row(model, x, known, cond, u, params, window=None, launch_plan=None):
    """Every launch of a row of the plan walker's highest trigger level (row 0: every
    scale, every column, so every variant a run compiles); ``launch_plan``: its group
    and precision."""
    build(model, x, known, cond, u, 1.0, return_params=params, window=window,
          launch_plan=launch_plan).launch_row(plan_of(model).scales - 1)


def compile_all(configs=None, arch: int = 90, size=(4, 8), batches=(2,), plans=None,
                teacher_forcing_only: bool = False) -> dict:
    """``compile_stages`` for model configs (dicts) at one small size: a
    ``GatedPixelCNN``, or with ``arch="pixelcnnpp"`` a ``PixelCNNpp`` (dropout off)."""
    from pixelaux import GatedPixelCNN, PixelCNNpp
    stages = []
    for c in configs:
        c = dict(c)
        if c.pop("arch", "gated") == "pixelcnnpp":
            model = PixelCNNpp(**dict(dict(dropout=0.0, image_size=size), **c))
        else:
            model = GatedPixelCNN(**c)
        stages.append((str(c), model.eval(), size, bool(c.get("cond_channels"))))
    return compile_stages(stages, arch, batches, plans, teacher_forcing_only)


def spills(info: dict) -> bool:
    """Whether a compiled variant spills: a stack frame or local memory (``dead_stack``
    tells the frames that no instruction touches)."""
    return info.get("stack", 0) > 0 or info.get("local", 0) > 0


def dead_stack(info: dict) -> bool:
    """A stack frame and no local memory, loads or stores (``ptxas -v``: "N bytes stack
    frame, 0 bytes spill stores, 0 bytes spill loads"): nothing spills at run time."""
    return spills(info) and info.get("local", 0) == 0 and info.get("local_ops", 1) == 0


def _ptxas(arch: int) -> str:
    """The ptxas Triton compiles ``sm_<arch>`` with (3.9: ``ptxas-blackwell`` from sm_90)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except Exception:   # an older Triton
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def header(arch: int) -> str:
    """The toolchain the figures belong to: Triton's version and the ptxas it uses."""
    ptxas = _ptxas(arch)
    version = "ptxas not found"
    if os.path.exists(ptxas):
        out = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
        found = re.findall(r"release (\S+),", out)
        version = f"ptxas {found[0]}" if found else "ptxas (version unknown)"
    return f"triton {triton.__version__}, {version}, target sm_{arch}"


def report(results: dict) -> tuple[list[str], int]:
    """One line per variant (kernel, preset and batch, warps, shared memory in bytes,
    registers, spill stack and local memory in bytes, local loads and stores, its
    constexprs) and one per kernel (variants, most registers, most shared memory, how
    many spill, how many of those only by a dead stack frame); ``(lines, variants that
    spill)``."""
    lines, n_spill, per_kernel = [], 0, {}
    for info in results.values():
        spill, dead = spills(info), dead_stack(info)
        n_spill += spill
        res = " ".join(f"{k}={info[k]}" for k in ("reg", "stack", "local", "local_ops") if k in info)
        mark = "  <-- stack frame, no local loads/stores" if dead else "  <-- spills" if spill else ""
        lines.append(f"{info['kernel']:28s} {info['label']:22s} warps={info['num_warps']} smem={info['shared']:>6} "
                     f"{res or '(no cuobjdump)'} {info['consts']}{mark}")
        k = per_kernel.setdefault(info["kernel"], dict(n=0, reg=0, smem=0, spill=0, dead=0))
        k["n"] += 1
        k["reg"] = max(k["reg"], info.get("reg", 0))
        k["smem"] = max(k["smem"], info["shared"])
        k["spill"] += spill
        k["dead"] += dead
    lines.append("per kernel:")
    for name, k in per_kernel.items():
        lines.append(f"  {name:28s} {k['n']:>3} variants, registers <= {k['reg']:>3}, "
                     f"smem <= {k['smem']:>6}, {k['spill']} spill ({k['dead']} a dead stack frame only)")
    return lines, n_spill


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Compile the Triton kernels for a GPU target, without a GPU, "
                                             "exactly as the launches of a preset compile them.")
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80, 90 (default 90)")
    ap.add_argument("--preset", action="append", choices=PRESET_NAMES, default=None,
                    help=f"models to compile for (repeatable; default {' and '.join(DEFAULT_PRESETS)})")
    ap.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--precision", choices=(*PRECISIONS, "both"), default="both",
                    help="the dots' precision of the plans compiled: ieee (the default plans), tf32x3 "
                         "(the opt-in), or both (default)")
    ap.add_argument("--json", default=None, help="also write every variant's figures to this file")
    args = ap.parse_args(argv)
    precisions = PRECISIONS if args.precision == "both" else (args.precision,)
    print(header(args.arch), flush=True)
    stages = [s for p in (args.preset or DEFAULT_PRESETS) for s in preset_stages(p)]
    results = compile_stages(stages, arch=args.arch, batches=args.batch, precisions=precisions)
    lines, n_spill = report(results)
    print("\n".join(lines))
    n_dead = sum(map(dead_stack, results.values()))
    print(f"{len(results)} variants compiled for sm_{args.arch} ({', '.join(precisions)}), {n_spill} with spills, "
          f"{n_dead} of them a dead stack frame only ({header(args.arch)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(toolchain=header(args.arch), precisions=list(precisions), variants=list(results.values())), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
