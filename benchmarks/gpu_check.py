"""One prepared GPU run that answers everything about the Triton engine (issues 9, 21).

    python benchmarks/gpu_check.py --out DIR [--budget 480]

On one CUDA GPU, in at most ``--budget`` seconds (8 minutes with a cold Triton cache:
every kernel variant compiles on its first launch), it measures every launch plan of
issue 21 item 5 at every batch, one row of ``plans.md`` per (preset, batch, plan):

1. versions (torch, Triton, CUDA, driver, device, SM count, clocks, TF32 flags) and the
   fp32 GEMM rate; the PixelCNN++ kernels start compiling at once in background
   processes (``precompile``: ``compile_check`` into the shared Triton cache, minutes of
   ptxas on other cores), so its rows later load them instead of compiling;
2. the plan matrix (``run_order``): bench-32 (``GatedPixelCNN``, ``plan_matrix``: per
   batch 1, 16, 256 the default plan for this GPU's SM count and the alternatives named
   there, ``tf32x3`` ones included) and bench-pp32 (``PixelCNNpp``, ``pp_plans``: its
   default plan at 1, 16, 256, ``tf32x3`` at 256), the most informative rows first. Per
   (preset, batch), once: one batched forward pass (true fp32, CUDA events, best of
   ``--repeat``), naive timed on ``--naive-pixels`` pixels and extrapolated, and
   cached-torch's images and parameters (true fp32, the reference). Per row:
   * ms/image: ``cached_triton.run`` with the plan, CUDA graphs on (the default engine
     path), best of ``--repeat`` after a warm-up call (which compiles and captures);
     speedup vs naive, overhead vs the forward pass, GFLOP/s;
   * exactness: the same call with ``return_params``; teacher forcing on its own
     samples (the float32 forward of the images it sampled vs the parameters it sampled
     them from, within ``TF_GATE`` = 1e-5 of their scale; the float64 forward's distance
     recorded beside it) and ``tie_report`` of its images vs cached-torch's. Verdict
     (``row_verdict``): ``exact`` (every pixel equal), ``tie-only`` (images differ only
     at float ties) or ``fail``; an ``ieee`` plan must also meet the gate, a ``tf32x3``
     plan is judged by the ties alone (its teacher-forcing error is reported);
3. the checks no row covers: teacher forcing with known pixels (random images, every
   pixel known: bench-32 as ``tests/test_gpu_check.py`` checks it on the CPU, with
   cached-torch first to show the gate is reachable here, and bench-pp32), an odd width
   vs naive, conditioning with known pixels and a temperature vs naive, the same call
   twice bitwise equal and graphs == eager;
4. a breakdown of bench-32 at batch 256 (set-up, row 0, capture, per row replay, per
   kernel from one profiled replay);
5. the gpu-marked tests compiled (``TRITON_INTERPRET=0 pytest -m gpu``), if time is left.

Duration (estimated, not yet measured on a GPU): about 4-5 minutes on an H200. Compiling
is most of it: bench-32's variants about 45 s in this process, bench-pp32's about 75-85 s
per variant set (batch 1, batches 16/256, tf32x3), which the background compiles take off
this process (``--no-precompile``: about 4 minutes more, and the budget skips the last rows).

A step that would not fit the time left is skipped and recorded; a failing step is
recorded and the run goes on. The summary ends with the plans table and issue 21's
targets for bench-32 (``TARGETS``: batch 1 <= 25 ms/image, batch 256 <= 0.15 ms/image),
each met or missed by the best ``ieee`` plan and by the best plan overall (plans that
fail exactness excluded).

Everything it writes goes under ``DIR`` (the only folder a device run hands back),
rewritten as each step or row finishes, so a run cut short keeps what it measured:

* ``plans.csv`` and ``plans.md``: one row per (preset, batch, plan), skipped ones too;
* ``gpu_check.jsonl``: one JSON line per finished step (name, ok, seconds, result or
  error), then one line for the run (date, device, plans, targets, failures);
* ``gpu_check.json``: the whole record; ``summary.txt``: the printed lines;
* ``timings.csv``: the baselines per (preset, batch): forward (fp32, TF32), naive,
  cached-torch; ``precompile/``: the background compiles' logs; ``pytest_gpu.txt``.

Without a GPU it refuses with one line and exit status 2, writing nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import torch  # noqa: E402

GATED, PP = "bench-32", "bench-pp32"
BATCHES = (1, 16, 256)

#: Issue 21's targets for bench-32 on one H100/H200: (batch, ms per image at most).
TARGETS = ((1, 25.0), (256, 0.15))

#: The rows in the order they run: the targets' default plans, their alternatives,
#: PixelCNN++'s defaults, then the rest; the budget skips from the end.
ORDER = ((GATED, 1, "default"), (GATED, 256, "default"), (GATED, 1, "split-matvec"), (GATED, 256, "fused"),
         (GATED, 256, "default-tf32x3"), (GATED, 256, "fused-tf32x3"), (PP, 1, "default"), (PP, 256, "default"),
         (GATED, 16, "default"), (PP, 16, "default"), (GATED, 16, "fused"), (GATED, 16, "default-tf32x3"),
         (PP, 256, "tf32x3"), (GATED, 1, "padded"))

#: Seconds a row needs before it starts (its own compiles and runs; more for the first
#: row of a batch, which measures the baselines and the cached-torch reference too).
ROW_NEED = {GATED: 20, PP: 40}
BASELINE_NEED = {GATED: 15, PP: 30}
#: The longest wait for a background compile before a row (then it compiles itself).
MAX_WAIT = 240

#: ``plans.csv``'s columns.
PLAN_COLUMNS = ("preset", "batch", "label", "plan", "precision", "programs", "status", "ms_per_image",
                "predicted_ms", "speedup",
                "overhead", "gflops", "verdict", "equal", "tf_error", "tf_error_fp64", "note", "seconds",
                "first_call_s")
#: ``plans.md``'s columns.
MD_COLUMNS = ("preset", "batch", "name", "plan", "programs/launch", "ms/image", "predicted", "speedup vs naive",
              "overhead vs forward", "exactness")


def refuse_reason() -> str | None:
    """Why this cannot run here (one line), or None."""
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes"):
        return "gpu_check: TRITON_INTERPRET=1 is set; this measures compiled kernels (unset it)"
    if not torch.cuda.is_available():
        why = "a CPU build of torch" if torch.version.cuda is None else "no CUDA device visible"
        return f"gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False: {why}); nothing was run"
    try:
        importlib.import_module("triton")
    except Exception as e:
        return f"gpu_check: triton does not import ({type(e).__name__}: {e})"
    return None


# -- the plans (pure) -----------------------------------------------------------------------

def _chooser(hidden: int, width: int, sms: int | None):
    from pixelaux.engines.cached_triton import load_kernels
    K = load_kernels()
    return lambda b, override="": K.choose_launch_plan(b, hidden, width, override=override, sms=sms)


def plan_matrix(hidden: int, width: int = 32, sms: int = 132) -> list:
    """bench-32's plans: ``[(batch, label, LaunchPlan)]``, for a ``GatedPixelCNN`` of
    ``hidden`` channels, images ``width`` wide, on a GPU of ``sms`` multiprocessors.
    Batch 1: the default (fused, matrix-vector), the split matrix-vector plan and the old
    padded plan (16 rows per program, fused); batch 16: the default (split), fused, and
    the default in ``tf32x3``; batch 256: the default, fused, and both in ``tf32x3``."""
    plan = _chooser(hidden, width, sms)
    fused = f"pixel_tile={plan(1).hid_p}"
    return [(1, "default", plan(1)),
            (1, "split-matvec", plan(1, "group=1,pixel_tile=8")),
            (1, "padded", plan(1, f"group=16,{fused}")),
            (16, "default", plan(16)),
            (16, "fused", plan(16, fused)),
            (16, "default-tf32x3", plan(16, "precision=tf32x3")),
            (256, "default", plan(256)),
            (256, "fused", plan(256, fused)),
            (256, "default-tf32x3", plan(256, "precision=tf32x3")),
            (256, "fused-tf32x3", plan(256, f"{fused},precision=tf32x3"))]


def pp_plans(hidden: int, width: int = 32) -> list:
    """bench-pp32's plans: ``[(batch, label, LaunchPlan)]``: the default at batches 1, 16
    and 256 and ``tf32x3`` at 256 (the plan walker takes only ``group`` and ``precision``;
    ``PlanBuffers`` chooses its plan without the SM count, so neither does this)."""
    plan = _chooser(hidden, width, None)
    return [(b, "default", plan(b)) for b in BATCHES] + [(256, "tf32x3", plan(256, "precision=tf32x3"))]


def run_order(hidden: int, hidden_pp: int, width: int = 32, sms: int = 132) -> list:
    """Every row of the run, ``[(preset, batch, label, LaunchPlan)]`` in ``ORDER``."""
    rows = {(GATED, b, label): plan for b, label, plan in plan_matrix(hidden, width, sms)}
    rows.update({(PP, b, label): plan for b, label, plan in pp_plans(hidden_pp, width)})
    if set(rows) != set(ORDER):
        raise AssertionError(f"ORDER and the plans differ: {sorted(set(rows) ^ set(ORDER))}")
    return [(*key, rows[key]) for key in ORDER]


def pixel_programs(plan, batch: int, gated: bool = True) -> int:
    """Programs of one pixel launch: groups x channel tiles (the gated path), groups
    (the plan walker: one program per image group and step)."""
    return plan.programs(batch) if gated else -(-batch // plan.group)


# -- the cost model of docs/design.md, "Launch plans by batch size" (pure) --------------------

#: Its assumptions for one H100/H200 SM, none measured: bytes per second one SM streams from
#: L2, fp32 multiply-adds per second of its products (dot or summed; about half its FFMA
#: peak), the factor tf32x3 dots gain, seconds per dependent kernel node of a CUDA graph.
COST = dict(l2_bytes=110e9, fma=110e9, tf32x3=3.0, launch=2.5e-6)


def stream_macs(model) -> tuple:
    """``(row, pixel)``: multiply-adds per image and position of a ``GatedPixelCNN``'s row
    op (the vertical stream, the first layer's row parts, the ``nin`` row terms) and of
    its pixel op (the horizontal convs, the first layer's pixel part, the head): each
    conv weight is used once per output position."""
    pixel = row = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            n = mod.weight.numel()
            if name == "ul_init_h" or name == "head" or (name.startswith("ul_blocks.") and "nin_skip" not in name):
                pixel += n
            else:
                row += n
    return row, pixel


def predicted_ms_per_image(plan, batch: int, size: int, blocks: int, row_macs: int, pixel_macs: int,
                           sms: int = 132, cost: dict = COST) -> float:
    """The cost model's ms per image for a gated plan: per pixel, its launches (1 fused,
    ``2 * blocks + 1`` split) times a graph node's latency, plus each wave of programs'
    time, the larger of streaming its weights (``1 / tiles`` of them) and its products
    (``G / tiles`` images' worth; a dot computes all ``G`` rows); per row the same for the
    row op (grid ``(B, column tiles, channel tiles)``, ``row_step.row_block_w`` columns a
    tile, ``2 + 2 * blocks`` launches, ``+ blocks`` with channel tiles); ``H * W`` pixels
    and ``H`` rows per batch."""
    def rate(dot: bool) -> float:
        return cost["fma"] * (cost["tf32x3"] if dot and plan.precision == "tf32x3" else 1.0)

    def wave_time(programs, weights, macs_per_program, dot):
        waves = -(-programs // sms)
        return waves * max(4.0 * weights / cost["l2_bytes"], macs_per_program / rate(dot))

    from pixelaux.engines.cached_triton import load_kernels
    tiles = -(-plan.hid_p // plan.pixel_tile)
    launches = 1 if plan.fused else 2 * blocks + 1
    g = plan.group if plan.group >= 16 else min(plan.group, batch)      # a dot computes all G rows
    t_pixel = launches * cost["launch"] + wave_time(plan.programs(batch), pixel_macs / tiles,
                                                    g * pixel_macs / tiles, plan.group >= 16)
    row_tiles = -(-plan.hid_p // plan.row_tile)
    programs = batch * -(-size // load_kernels().row_step.row_block_w(batch, size, plan.row_tile, plan.hid_p)) * row_tiles
    row_launches = 2 + 2 * blocks + (blocks if row_tiles > 1 else 0)
    t_row = row_launches * cost["launch"] + wave_time(programs, row_macs / row_tiles,
                                                      batch * size * row_macs / programs, True)
    return 1e3 * (size * size * t_pixel + size * t_row) / batch


# -- a row's figures and verdict (pure) ------------------------------------------------------

def plan_row(preset: str, batch: int, label: str, plan, gated: bool = True, predicted=None) -> dict:
    """A row of ``plans.csv`` before it is measured (``status`` ``"pending"``);
    ``predicted``: the cost model's ms/image (gated plans), or None."""
    row = dict.fromkeys(PLAN_COLUMNS)
    row.update(preset=preset, batch=batch, label=label, plan=plan.describe(), precision=plan.precision,
               programs=pixel_programs(plan, batch, gated), status="pending", predicted_ms=predicted)
    return row


def timing_fields(seconds: float, batch: int, t_naive=None, t_forward=None, flops_per_image=None) -> dict:
    """Figures of one timed call of ``batch`` images: ms/image, speedup vs naive
    (``t_naive / t``), overhead vs one batched forward pass (``t / t_forward``), GFLOP/s
    (the forward pass's FLOPs per second); None where a baseline is missing."""
    return dict(seconds=seconds, ms_per_image=1e3 * seconds / batch,
                speedup=None if t_naive is None else t_naive / seconds,
                overhead=None if t_forward is None else seconds / t_forward,
                gflops=None if flops_per_image is None else flops_per_image * batch / seconds / 1e9)


def row_verdict(precision: str, tf_error, tie, gate: float) -> tuple[str, str]:
    """``(verdict, note)`` of a row's exactness. ``tie``: ``tie_report``'s ``(ok,
    fraction equal, lines)`` vs cached-torch, or None (no reference); ``tf_error``:
    teacher forcing's error (None: not measured). ``"exact"``: every pixel equal;
    ``"tie-only"``: images differ only at float ties; ``"fail"``: anything else, or for
    an ``ieee`` plan a teacher-forcing error over ``gate``; ``"unchecked"``: a check
    missing. A ``tf32x3`` plan is judged by the ties alone: its error is noted."""
    tf = "TF n/a" if tf_error is None else f"TF {tf_error:.1e}"
    if tie is None or (precision == "ieee" and tf_error is None):
        return "unchecked", f"{'no reference' if tie is None else 'no teacher forcing'}; {tf}"
    ok, equal, lines = tie
    tf_ok = tf_error is not None and tf_error <= gate           # (a NaN error fails)
    if precision == "ieee" and not tf_ok:
        return "fail", f"{tf} > {gate:.0e}; {equal:.2%} equal"
    if not ok:
        bad = next((ln for ln in lines if "NOT a tie" in ln), lines[0] if lines else "")
        return "fail", f"not only ties differ: {bad}; {tf}"
    note = f"{equal:.2%} equal; {tf}"
    if not tf_ok:
        note += f" (over the ieee gate {gate:.0e}: reported, not judged)"
    return ("exact" if equal == 1.0 else "tie-only"), note


def _fmt(v, spec: str, suffix: str = "") -> str:
    return "" if v is None else f"{v:{spec}}{suffix}"


def _times(v) -> str:
    """A ratio: ``1234x``, ``12.3x``, ``0.0123x``; empty for None."""
    return "" if v is None else (f"{v:.0f}x" if v >= 100 else f"{v:.3g}x")


def markdown_table(rows: list) -> str:
    """``plans.md``: a markdown table, one line per row (``MD_COLUMNS``)."""
    lines = ["| " + " | ".join(MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for r in rows:
        exact = r["status"] if r["status"] not in ("ok", "error") else (r["verdict"] or "")
        if r.get("note"):
            exact += f": {r['note']}"
        cells = (r["preset"], str(r["batch"]), r["label"], f"`{r['plan']}`", str(r["programs"]),
                 _fmt(r["ms_per_image"], ".4g"), _fmt(r.get("predicted_ms"), ".3g"), _times(r["speedup"]),
                 _times(r["overhead"]),
                 exact.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def write_plans(out: str, rows: list):
    """Rewrite ``out/plans.csv`` (``PLAN_COLUMNS``; numbers as Python writes them, None
    empty) and ``out/plans.md`` (``markdown_table``)."""
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PLAN_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _write(os.path.join(out, "plans.csv"), buf.getvalue())
    _write(os.path.join(out, "plans.md"), markdown_table(rows))


def target_lines(rows: list, targets=TARGETS, preset: str = GATED) -> list:
    """One line per target ``(batch, ms/image)``: the best ``ieee`` plan's and the best
    plan's ms/image at that batch, each met or missed (rows measured, exactness not
    ``fail``)."""
    lines = []
    for b, limit in targets:
        done = [r for r in rows if r["preset"] == preset and r["batch"] == b and r["ms_per_image"] is not None
                and r["verdict"] != "fail"]
        parts = []
        for what, pool in (("best ieee plan", [r for r in done if r["precision"] == "ieee"]),
                           ("best plan overall", done)):
            if not pool:
                parts.append(f"{what}: not measured")
                continue
            r = min(pool, key=lambda r: r["ms_per_image"])
            more = "" if r["overhead"] is None else f", overhead {_times(r['overhead'])}"
            more += "" if r["speedup"] is None else f", {_times(r['speedup'])} naive"
            parts.append(f"{what} {r['label']} ({r['plan']}) {r['ms_per_image']:.4g} ms{more}, {r['verdict']} "
                         f"-> {'met' if r['ms_per_image'] <= limit else 'MISSED'}")
        lines.append(f"target {preset} batch {b} <= {limit:g} ms/image: " + "; ".join(parts))
    return lines


# -- recording ------------------------------------------------------------------------------

class Check:
    """Records results; a failing step is recorded and the run goes on. With ``out``,
    every finished step is appended to ``out/gpu_check.jsonl`` and the whole record
    rewritten (``save``), so a run killed part-way keeps what it measured."""

    def __init__(self, budget: float, out: str | None = None):
        self.t0 = time.time()
        self.budget = budget
        self.out = out
        self.data = {"steps": {}, "failures": [], "skipped": []}
        self.lines = []

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def say(self, line: str):
        print(line, flush=True)
        self.lines.append(line)

    def step(self, name, fn, *args, need: float = 0.0, **kw):
        if self.left() < need:
            self.data["skipped"].append(name)
            self.say(f"[skip] {name}: {self.left():.0f} s left of the budget, needs {need:.0f}")
            self._record(dict(step=name, skipped=True))
            return None
        t = time.time()
        try:
            out = fn(*args, **kw)
            rec = self.data["steps"][name] = dict(ok=True, seconds=round(time.time() - t, 2), result=out)
        except Exception as e:  # noqa: BLE001 - keep going, report
            rec = self.data["steps"][name] = dict(ok=False, seconds=round(time.time() - t, 2),
                                                  error=f"{type(e).__name__}: {e}",
                                                  trace=traceback.format_exc()[-3000:])
            self.data["failures"].append(f"{name}: {type(e).__name__}: {e}")
            self.say(f"[FAIL] {name}: {type(e).__name__}: {e}")
            out = None
        self._record(dict(step=name, **rec))
        return out

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def _record(self, line: dict):
        if self.out is None:
            return
        with open(self.path("gpu_check.jsonl"), "a") as f:
            f.write(json.dumps(line, default=str) + "\n")
        self.save()

    def save(self):
        """Rewrite ``gpu_check.json`` and ``summary.txt`` under ``out`` (nothing without)."""
        if self.out is None:
            return
        self.data["summary"] = self.lines
        _write(self.path("gpu_check.json"), json.dumps(self.data, indent=1, default=str))
        _write(self.path("summary.txt"), "\n".join(self.lines) + "\n")

    def write_csv(self, name: str, rows: list):
        """``rows`` (dicts) as ``out/name``, the union of their keys as columns."""
        if self.out is None or not rows:
            return
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.path(name), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)


# -- background compiles --------------------------------------------------------------------

def precompile_command(preset: str, batch: int, plan_text: str, arch: int, limit_s: float) -> list:
    """The command of one background compile: ``gpu_check.py precompile`` (``precompile_main``),
    under ``timeout`` so it cannot outlive the run."""
    return ["timeout", str(max(1, int(limit_s))), sys.executable, os.path.abspath(__file__), "precompile",
            preset, str(batch), plan_text, str(arch)]


def precompile_main(argv) -> int:
    """``precompile PRESET BATCH PLAN ARCH``: compile, without launching, every variant that
    sampling, teacher forcing and consistent decoding of ``PRESET`` at ``BATCH`` with the
    launch plan ``PLAN`` (an override string) launch, for ``sm_ARCH``
    (``compile_check.compile_stages``), into the Triton cache this process shares with
    gpu_check; a later launch with the same specialisation loads it from there. Prints a
    JSON line."""
    preset, batch, text, arch = argv[0], int(argv[1]), argv[2], int(argv[3])
    os.environ["PIXELAUX_TRITON_PLAN"] = text        # the plan walker's PlanBuffers read it
    os.environ.pop("TRITON_INTERPRET", None)
    t = time.time()
    from pixelaux.engines import compile_check
    from pixelaux.kernels.layout import choose_launch_plan
    stages = compile_check.preset_stages(preset)
    _, model, (_, w), _ = stages[0]
    plan = choose_launch_plan(batch, model.hidden, w, override=text)
    res = compile_check.compile_stages(stages, arch=arch, batches=(batch,), plans={batch: plan})
    print(json.dumps(dict(preset=preset, batch=batch, plan=plan.describe(), arch=arch, variants=len(res),
                          spills=sum(compile_check.spills(i) for i in res.values()),
                          seconds=round(time.time() - t, 1))), flush=True)
    return 0


def precompile_jobs(order: list, presets=(PP,)) -> dict:
    """The background compiles of ``run_order``'s rows of ``presets``: one per distinct
    (preset, plan, batch 1 or not) (Triton specialises an integer equal to 1; batches 16
    and 256 compile the same variants), the first row's batch: ``{(preset, plan.key(),
    batch == 1): (preset, batch, plan.describe())}``."""
    jobs = {}
    for preset, b, _, plan in order:
        if preset in presets:
            jobs.setdefault((preset, plan.key(), b == 1), (preset, b, plan.describe()))
    return jobs


class Precompile:
    """Background compiles, one process per (preset, batch, plan), each logging to
    ``out/precompile/``; ``wait`` for one before its rows launch (so gpu_check never
    compiles a variant while a worker writes it to the shared cache)."""

    def __init__(self, out: str, jobs: list, arch: int, limit_s: float):
        os.makedirs(os.path.join(out, "precompile"), exist_ok=True)
        self.t0 = time.time()
        self.procs = {}
        for preset, batch, plan_text in jobs:
            name = f"{preset}_B{batch}_{plan_text.replace(',', '_').replace('=', '-')}"
            log = open(os.path.join(out, "precompile", name + ".log"), "w")
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
            self.procs[(preset, batch, plan_text)] = (subprocess.Popen(
                precompile_command(preset, batch, plan_text, arch, limit_s), stdout=log,
                stderr=subprocess.STDOUT, cwd=ROOT, env=env), log, name)
        self.done = {}

    def wait(self, key, timeout: float) -> float:
        """Wait up to ``timeout`` seconds for the job ``key``; the seconds waited."""
        if key not in self.procs:
            return 0.0
        t = time.time()
        try:
            self.procs[key][0].wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            pass
        return time.time() - t

    def report(self) -> list:
        """Per job: its return code (None: still running) and its last log line."""
        out = []
        for proc, log, name in self.procs.values():
            with open(log.name) as f:
                tail = (f.read().strip().splitlines() or [""])[-1]
            out.append(dict(job=name, rc=proc.poll(), last=tail[-300:]))
        return out

    def stop(self):
        for proc, log, _ in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, log, _ in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


# -- measuring (a GPU, or the CPU under the interpreter) -------------------------------------

def bench32(device):
    """gpu_check's model: bench-32 (``pixelaux.bench.PRESETS``) built by
    ``bench_triton_gpu.build`` from seed 0 (the model's own init); ``(model, size)``."""
    from bench_triton_gpu import build
    from pixelaux.bench import PRESETS
    return build(dict(PRESETS["bench-32"]), 0, device)


def build_preset(name: str, device):
    """``(model, size)`` of ``bench-32`` (``bench32``) or ``bench-pp32`` (``pixelaux.bench``,
    the model's own init from seed 0)."""
    if name == GATED:
        return bench32(device)
    from pixelaux.bench import PRESETS, build_model
    torch.manual_seed(0)
    return build_model(PRESETS[name], device)


def teacher_forcing_inputs(model, size, device, b: int = 4):
    """The teacher-forcing inputs: ``(x, known, uniforms)``, ``b`` images of random
    pixels (generator seed 1), every pixel known, the uniforms of seed 0."""
    from pixelaux.uniforms import ImageUniforms
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2 ** model.bits, (b, model.channels, size, size), generator=g).to(device)
    known = torch.ones(b, size, size, dtype=torch.bool, device=device)
    u = ImageUniforms(b, torch.Generator().manual_seed(0)).draw(size, size, model.dist.num_uniforms)
    return x, known, u


def teacher_forcing_errors(params, model, x, model64=None) -> dict:
    """``params`` (an engine's, from the pixels of ``x``) against the forward pass, all
    in true fp32: ``error`` vs the float32 forward (what ``TF_GATE`` judges) and, for
    the record, ``error_fp64`` vs the float64 forward (``model64``: a float64 copy of
    ``model``, made here when None) and ``forward_fp32_vs_fp64`` (torch's own float32
    error), each max abs relative to the reference's scale."""
    from bench_triton_gpu import true_fp32
    with true_fp32(), torch.no_grad():
        ref = model(x)
        ref64 = (model64 if model64 is not None else copy.deepcopy(model).double())(x)
    rel = lambda p, r: ((p.to(r) - r).abs().max() / r.abs().max().clamp(min=1e-30)).item()  # noqa: E731
    return dict(error=rel(params, ref), error_fp64=rel(params, ref64), forward_fp32_vs_fp64=rel(ref, ref64),
                scale=ref.abs().max().item())


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, repeat: int, device) -> tuple[float, float]:
    """``(first, best)``: the wall seconds of a first call (compiles, captures) and the
    best of ``repeat`` calls after it (CUDA events on a GPU, else ``perf_counter``)."""
    t = time.perf_counter()
    fn()
    _sync(device)
    first, best = time.perf_counter() - t, float("inf")
    cuda = torch.device(device).type == "cuda"
    for _ in range(max(1, repeat)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            best = min(best, start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
    return first, best


@contextlib.contextmanager
def tf32_on():
    """TF32 allowed for matmuls and cuDNN convolutions (the forward's other figure)."""
    from bench_triton_gpu import tf32_flags
    old = tf32_flags()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old["matmul"], old["cudnn"]


def forward_flops(model, size) -> int:
    """FLOPs of one forward pass of one image (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode
    p = next(model.parameters())
    x = torch.zeros(1, model.channels, *size, dtype=torch.long, device=p.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.forward_unchecked(x)
    return int(counter.get_total_flops())


def uniforms_for(model, b, h, w, seed):
    from pixelaux.uniforms import ImageUniforms
    return ImageUniforms(b, torch.Generator().manual_seed(seed)).draw(h, w, model.dist.num_uniforms)


def batch_context(model, size, b, device, repeat: int, naive_pixels: int) -> dict:
    """What every row of one (preset, batch) shares: the inputs (zeros, the uniforms of
    seed 7), the baselines (``t_forward`` true fp32 and ``t_forward_tf32``, best of
    ``repeat``; ``t_naive`` on ``naive_pixels`` pixels extrapolated to the image;
    ``t_cached_torch``, one whole run) and cached-torch's ``(images, params)`` (true
    fp32), the reference of the rows' ``tie_report``; ``reference_error`` if it failed."""
    from bench_triton_gpu import true_fp32
    from pixelaux.engines import cached_torch, naive
    u = uniforms_for(model, b, size, size, 7)
    x0 = torch.zeros(b, model.channels, size, size, dtype=torch.long, device=device)
    xr = torch.randint(0, 2 ** model.bits, x0.shape, generator=torch.Generator().manual_seed(8)).to(device)
    ctx = dict(u=u, x0=x0)
    with true_fp32(), torch.no_grad():
        ctx["t_forward"] = time_call(lambda: model.forward_unchecked(xr), repeat, device)[1]
        k = min(naive_pixels, size * size)
        ctx["t_naive"] = time_call(lambda: naive.run(model, x0, None, None, u, 1.0, max_pixels=k), 1,
                                   device)[1] * size * size / k
    with tf32_on(), torch.no_grad():
        ctx["t_forward_tf32"] = time_call(lambda: model.forward_unchecked(xr), repeat, device)[1]
    try:
        with true_fp32():
            t = time.perf_counter()
            ctx["reference"] = cached_torch.run(model, x0, None, None, u, 1.0, return_params=True)
            _sync(device)
            ctx["t_cached_torch"] = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - the timings still stand; the rows say "no reference"
        ctx["reference_error"] = f"{type(e).__name__}: {e}"
    return ctx


def baseline_rows(preset: str, b: int, ctx: dict) -> list:
    """``timings.csv``'s rows of one (preset, batch): seconds and ms/image per provider."""
    rows = []
    for name, key in (("forward-fp32", "t_forward"), ("forward-tf32", "t_forward_tf32"), ("naive", "t_naive"),
                      ("cached-torch", "t_cached_torch")):
        if ctx.get(key) is not None:
            rows.append(dict(preset=preset, batch=b, provider=name, seconds=ctx[key],
                             ms_per_image=1e3 * ctx[key] / b, extrapolated=name == "naive"))
    return rows


def measure_plan(model, plan, ctx: dict, repeat: int, device, model64=None) -> dict:
    """One row's measurements: ``first_call_s`` and ``seconds`` (``time_call`` of
    ``cached_triton.run`` with the plan, graphs on, no parameters returned); then the same
    call with ``return_params``: ``tf`` (``teacher_forcing_errors`` on its own samples)
    and ``tie`` (``tie_report`` vs ``ctx["reference"]``, None without one). A part that
    raises is recorded in ``errors`` and the others still run."""
    from bench_triton_gpu import true_fp32
    from pixelaux.engines import cached_triton
    x0, u = ctx["x0"], ctx["u"]
    res = dict(errors=[], tf=None, tie=None)
    try:
        res["first_call_s"], res["seconds"] = time_call(
            lambda: cached_triton.run(model, x0, None, None, u, 1.0, launch_plan=plan), repeat, device)
    except Exception as e:  # noqa: BLE001
        res["errors"].append(f"timing: {type(e).__name__}: {e}")
    try:
        got, params = cached_triton.run(model, x0, None, None, u, 1.0, return_params=True, launch_plan=plan)
        res["tf"] = teacher_forcing_errors(params, model, got, model64)
        if "reference" in ctx:
            ref, ref_params = ctx["reference"]
            with true_fp32():
                res["tie"] = cached_triton.tie_report(model, u, 1.0, ref, ref_params, got, params)
    except Exception as e:  # noqa: BLE001
        res["errors"].append(f"exactness: {type(e).__name__}: {e}")
    return res


def finish_row(row: dict, res: dict, ctx: dict, flops_per_image, gate: float) -> dict:
    """``row`` (``plan_row``) filled from ``measure_plan``'s ``res`` and the batch's baselines."""
    if res.get("seconds") is not None:
        row.update(timing_fields(res["seconds"], row["batch"], ctx.get("t_naive"), ctx.get("t_forward"),
                                 flops_per_image))
    row["first_call_s"] = res.get("first_call_s")
    tf = res.get("tf") or {}
    row["tf_error"], row["tf_error_fp64"] = tf.get("error"), tf.get("error_fp64")
    tie = res.get("tie")
    row["equal"] = None if tie is None else tie[1]
    row["verdict"], row["note"] = row_verdict(row["precision"], row["tf_error"], tie, gate)
    if ctx.get("reference_error"):
        row["note"] += f"; reference failed: {ctx['reference_error']}"
    if res.get("errors"):
        row["note"] += "; " + "; ".join(res["errors"])
    row["status"] = "error" if res.get("errors") else "ok"
    return row


# -- the run --------------------------------------------------------------------------------

def versions(device):
    import triton
    p = torch.cuda.get_device_properties(device)
    info = dict(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), device=torch.cuda.get_device_name(device),
                capability=list(torch.cuda.get_device_capability(device)), sms=p.multi_processor_count,
                memory_gib=round(p.total_memory / 2 ** 30, 1))
    from bench_triton_gpu import tf32_flags
    info["tf32_default"] = tf32_flags()
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,clocks.mem,"
                            "power.limit,temperature.gpu", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20).stdout.strip()
        info["nvidia_smi"] = q
    except Exception as e:  # noqa: BLE001
        info["nvidia_smi"] = f"unavailable ({e})"
    return info


def gemm_rate(device, n=4096):
    """The machine's fp32 GEMM rate (TF32 off), GFLOP/s."""
    from bench_triton_gpu import true_fp32
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    with true_fp32():
        t = time_call(lambda: a @ b, 5, device)[1]
    return 2 * n ** 3 / t / 1e9


def _terminate(signum, frame):
    raise SystemExit(f"gpu_check: signal {signum}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["precompile"]:
        return precompile_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for everything this run writes")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds (default 480)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-pixels", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-precompile", action="store_true", help="compile PixelCNN++ on first use, in this process")
    ap.add_argument("--no-tests", action="store_true", help="skip the pytest -m gpu step")
    args = ap.parse_args(argv)
    why = refuse_reason()
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)       # (``timeout``: stop the workers, keep the record)
    ck = Check(args.budget, args.out)
    ck.workers = None
    try:
        run_all(ck, args)
    finally:
        if ck.workers is not None:
            ck.data["precompile"] = ck.workers.report()
            ck.workers.stop()
        ck.save()
    return 0 if not ck.data["failures"] else 1


def run_all(ck: Check, args):
    """Steps 1-5 of the module docstring (the background compiles in ``ck.workers``)."""
    import pixelaux
    from bench_triton_gpu import TF_GATE, build, cuda_device, tf32_flags, true_fp32
    from pixelaux.bench import PRESETS
    from pixelaux.engines import cached_torch, cached_triton, naive, triton_buffers

    device = cuda_device(args.device)
    torch.cuda.set_device(device)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ck.data["date"] = stamp
    info = ck.step("versions", versions, device) or {}
    sms = info.get("sms") or torch.cuda.get_device_properties(device).multi_processor_count
    major, minor = torch.cuda.get_device_capability(device)
    ck.say(f"gpu_check {stamp}: {info.get('device')} sm={sms} torch {info.get('torch')} "
           f"triton {info.get('triton')} | {info.get('nvidia_smi')}")
    ck.say(f"TF32 defaults {tf32_flags()}; every exactness reference below runs with both off")

    # -- 1. the background compiles, the models, the plans -----------------------------------
    presets = {}
    for name in (GATED, PP):
        model, size = build_preset(name, device)
        presets[name] = dict(model=model, size=size, model64=copy.deepcopy(model).double(),
                             gated=not isinstance(model, pixelaux.PixelCNNpp),
                             flops=forward_flops(model, (size, size)))
    g, p = presets[GATED], presets[PP]
    order = run_order(g["model"].hidden, p["model"].hidden, g["size"], sms)
    ck.data["config"] = {name: dict(PRESETS[name], init="the model's own, seed 0") for name in presets}
    ck.data["forward_flops_per_image"] = {name: v["flops"] for name, v in presets.items()}
    jobs = precompile_jobs(order)
    workers = ck.workers = None if args.no_precompile else Precompile(args.out, list(jobs.values()),
                                                                      10 * major + minor, ck.left())
    ck.say(f"background compiles: {len(jobs) if workers else 0} of "
           + ", ".join(" ".join(map(str, j)) for j in jobs.values()))
    rate = ck.step("gemm_rate_gflops", gemm_rate, device)
    ck.say(f"fp32 GEMM (TF32 off): {rate or float('nan'):.0f} GFLOP/s; forward GFLOP per image: "
           + ", ".join(f"{n} {v['flops'] / 1e9:.2f}" for n, v in presets.items()))

    # -- 2. the plan matrix -------------------------------------------------------------------
    gm = g["model"]
    macs = stream_macs(gm)
    rows = [plan_row(preset, b, label, plan, presets[preset]["gated"],
                     predicted_ms_per_image(plan, b, g["size"], len(gm.ul_blocks), *macs, sms)
                     if preset == GATED else None)
            for preset, b, label, plan in order]
    contexts, baselines = {}, []
    ck.data["plans"] = rows
    write_plans(args.out, rows)

    def one_row(row, plan):
        pr = presets[row["preset"]]
        key = (row["preset"], row["batch"])
        if key not in contexts:
            ctx = contexts[key] = batch_context(pr["model"], pr["size"], row["batch"], device, args.repeat,
                                                args.naive_pixels)
            baselines.extend(baseline_rows(*key, ctx))
            if "reference_error" in ctx:
                ck.data["failures"].append(f"reference cached-torch {key[0]} B={key[1]}: {ctx['reference_error']}")
            ck.write_csv("timings.csv", baselines)
            ck.say(f"{key[0]} B={key[1]}: forward {1e3 * ctx['t_forward'] / key[1]:.4g} ms/img (TF32 "
                   f"{1e3 * ctx['t_forward_tf32'] / key[1]:.4g}), naive {1e3 * ctx['t_naive'] / key[1]:.4g} "
                   f"(extrapolated), cached-torch {1e3 * ctx.get('t_cached_torch', float('nan')) / key[1]:.4g}"
                   + (f"; reference FAILED: {ctx['reference_error']}" if "reference_error" in ctx else ""))
        res = measure_plan(pr["model"], plan, contexts[key], args.repeat, device, pr["model64"])
        finish_row(row, res, contexts[key], pr["flops"], TF_GATE)
        ck.say(f"{row['preset']} B={row['batch']} {row['label']} [{row['plan']}, {row['programs']} programs]: "
               f"{_fmt(row['ms_per_image'], '.4g', ' ms/img')}, {_times(row['speedup'])} naive, "
               f"{_times(row['overhead'])} forward (first call {_fmt(row['first_call_s'], '.1f', ' s')})"
               f" -> {row['verdict']}: {row['note']}")
        if row["verdict"] == "fail" or row["status"] == "error":
            raise AssertionError(f"{row['verdict']}, {row['status']}: {row['note']}")
        return {k: row[k] for k in PLAN_COLUMNS}

    for row, (preset, b, label, plan) in zip(rows, order):
        need = ROW_NEED[preset] + (BASELINE_NEED[preset] if (preset, b) not in contexts else 0)
        job = jobs.get((preset, plan.key(), b == 1))
        if workers is not None and job is not None:
            waited = workers.wait(job, min(MAX_WAIT, ck.left() - need))
            if waited > 1:
                ck.say(f"waited {waited:.0f} s for the background compile of {' '.join(map(str, job))}")
        name = f"plan/{preset}/B={b}/{label}"
        ck.step(name, one_row, row, plan, need=need)
        if row["status"] == "pending":                  # skipped, or failed before its figures
            step = ck.data["steps"].get(name)
            row["status"] = "error" if step else f"skipped ({ck.left():.0f} s left, needs {need})"
            row["note"] = step["error"] if step else None
        write_plans(args.out, rows)
        ck.save()

    # -- 3. the checks no row covers -----------------------------------------------------------
    model, size = g["model"], g["size"]

    def teacher_forcing(engine, name, b=4):
        pr = presets[name]
        x, known, u = teacher_forcing_inputs(pr["model"], pr["size"], device, b)
        if engine is cached_triton:          # the engine under test: it keeps TF32 off by itself
            _, params = engine.run(pr["model"], x, known, None, u, 1.0, return_params=True)
        else:                                # a torch reference
            with true_fp32():
                _, params = engine.run(pr["model"], x, known, None, u, 1.0, return_params=True)
        res = teacher_forcing_errors(params, pr["model"], x, pr["model64"])
        err = res["error"]
        ck.say(f"teacher forcing {name} {engine.__name__.split('.')[-1]} B={b} known pixels: param error "
               f"{err:.2e} (<= {TF_GATE:.0e}) {'OK' if err <= TF_GATE else 'FAIL'}; vs float64 {res['error_fp64']:.2e},"
               f" torch's own float32 forward {res['forward_fp32_vs_fp64']:.2e}, scale {res['scale']:.2f}")
        if not err <= TF_GATE:
            raise AssertionError(f"param error {err:.2e} > {TF_GATE:.0e}")
        return res

    def vs_reference(name, m, b, h, w, ref_engine, cond=None, known=None, temperature=1.0):
        u = uniforms_for(m, b, h, w, 2)
        x0 = torch.zeros(b, m.channels, h, w, dtype=torch.long, device=device)
        if known is not None:
            x0 = torch.randint(0, 2 ** m.bits, x0.shape, generator=torch.Generator().manual_seed(3)).to(device)
        got, params = cached_triton.run(m, x0, known, cond, u, temperature, return_params=True)
        with true_fp32():
            ref, ref_params = ref_engine.run(m, x0, known, cond, u, temperature, return_params=True)
            ok, equal, lines = cached_triton.tie_report(m, u, temperature, ref, ref_params, got, params)
        ck.say(f"{name}: {equal:.4%} of pixels equal to {ref_engine.__name__.split('.')[-1]}"
               f" -> {'OK' if ok else 'FAIL'}" + "".join(f"\n    {ln}" for ln in lines[:4]))
        if not ok:
            raise AssertionError(f"{name}: unexplained differences: {lines[:3]}")
        return dict(equal=equal, report=lines[:20])

    def twice_bitwise(b=16):
        u = uniforms_for(model, b, size, size, 5)
        zeros = lambda: torch.zeros(b, model.channels, size, size, dtype=torch.long, device=device)  # noqa: E731
        a = cached_triton.run(model, zeros(), None, None, u, 1.0)
        c = cached_triton.run(model, zeros(), None, None, u, 1.0)       # graph replay, no capture
        old = cached_triton.USE_CUDA_GRAPHS
        cached_triton.USE_CUDA_GRAPHS = False
        try:
            t = time.perf_counter()
            e = cached_triton.run(model, zeros(), None, None, u, 1.0)
            _sync(device)
            eager_s = time.perf_counter() - t
        finally:
            cached_triton.USE_CUDA_GRAPHS = old
        res = dict(twice_equal=torch.equal(a, c), graphs_equal_eager=torch.equal(a, e))
        ck.say(f"same call twice bitwise equal: {res['twice_equal']}; graphs == eager: {res['graphs_equal_eager']}"
               f" (eager B={b}: {1e3 * eager_s / b:.3g} ms/img)")
        if not all(res.values()):
            raise AssertionError(str(res))
        return dict(res, eager_seconds=eager_s)

    # cached-torch first: the gate is reachable here
    ck.step("exact/teacher_forcing_cached_torch", teacher_forcing, cached_torch, GATED, need=15)
    ck.step("exact/teacher_forcing", teacher_forcing, cached_triton, GATED, need=20)
    ck.step("exact/teacher_forcing_pp", teacher_forcing, cached_triton, PP, 16, need=20)
    ck.step("exact/odd_width_vs_naive", vs_reference, "bench-32 B=5 8x37 (W > a column tile) vs naive",
            model, 5, 8, 37, naive, need=25)
    cmodel, _ = build(dict(PRESETS["tiny-16"], channels=1, cond_channels=3), 1, device)
    cond = torch.randn(19, 3, 8, 8, generator=torch.Generator().manual_seed(4)).to(device)
    known = (torch.rand(19, 8, 8, generator=torch.Generator().manual_seed(5)) < 0.3).to(device)
    ck.step("exact/cond_known_vs_naive", vs_reference, "tiny-16 gray+cond B=19 known 30% T=0.8 vs naive",
            cmodel, 19, 8, 8, naive, cond=cond, known=known, temperature=0.8, need=25)
    ck.step("exact/twice_and_eager", twice_bitwise, need=15)

    # -- 4. breakdown -------------------------------------------------------------------------
    def breakdown(b=256):
        plan = order_plan(order, GATED, b, "default")
        u = uniforms_for(model, b, size, size, 9)
        x0 = torch.zeros(b, model.channels, size, size, dtype=torch.long, device=device)
        cached_triton.clear_cache()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        buf = triton_buffers.build(model, x0, None, None, u, 1.0, launch_plan=plan)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        buf.fill(x0, None, None, u, 1.0)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        buf.launch_row(0)
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        replay = cached_triton.capture_cuda_graph(lambda: buf.launch_row(0))
        torch.cuda.synchronize()
        t4 = time.perf_counter()
        per_row = time_call(replay, 5, device)[1]
        res = dict(batch=b, plan=plan.describe(), setup_s=t1 - t0, fill_s=t2 - t1, row0_eager_s=t3 - t2,
                   capture_s=t4 - t3, per_row_replay_s=per_row, image_estimate_s=per_row * size)
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            replay()
            torch.cuda.synchronize()
        kern = {}
        for e in prof.key_averages():
            dt = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if dt:
                kern[e.key] = dict(us=round(dt, 1), calls=e.count)
        res["kernels_one_row"] = kern
        ck.say(f"breakdown bench-32 B={b} {plan.describe()}: set-up {res['setup_s']*1e3:.1f} ms, fill "
               f"{res['fill_s']*1e3:.1f} ms, row 0 eager {res['row0_eager_s']*1e3:.1f} ms, capture "
               f"{res['capture_s']*1e3:.1f} ms, row replay {per_row*1e3:.3f} ms")
        for name, v in sorted(kern.items(), key=lambda kv: -kv[1]["us"])[:6]:
            ck.say(f"    {name[:60]:60s} {v['us']:>10.1f} us  x{v['calls']}")
        return res
    ck.step("breakdown", breakdown, need=20)

    # -- 5. the gpu-marked tests, compiled ------------------------------------------------------
    def gpu_tests():
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_INTERPRET"] = "0"
        out = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-x",
                              os.path.join(ROOT, "tests", "test_cached_triton_gpu.py")],
                             capture_output=True, text=True, cwd=ROOT, env=env,
                             timeout=max(30, int(ck.left()) - 10))
        with open(ck.path("pytest_gpu.txt"), "w") as f:
            f.write(out.stdout + ("\n--- stderr ---\n" + out.stderr if out.stderr else ""))
        tail = out.stdout.strip().splitlines()[-1:] or [out.stderr[-300:]]
        ck.say(f"pytest -m gpu (compiled): {tail[0]}")
        if out.returncode != 0:
            raise AssertionError(out.stdout[-2000:])
        return tail[0]
    if not args.no_tests:
        ck.step("pytest_gpu", gpu_tests, need=60)

    # -- summary -----------------------------------------------------------------------------
    ck.say("")
    ck.say(markdown_table(rows).rstrip("\n"))
    targets = target_lines(rows)
    for t in targets:
        ck.say(t)
    ck.data["targets"] = targets
    if workers is not None:
        for w in workers.report():
            ck.say(f"background compile {w['job']}: rc {w['rc']}, {w['last'][:160]}")
    ck.say(f"{len(ck.data['failures'])} failures, skipped {ck.data['skipped'] or 'none'}; "
           f"{time.time() - ck.t0:.0f} s of {args.budget:.0f}")
    with open(ck.path("gpu_check.jsonl"), "a") as f:
        f.write(json.dumps(dict(run=stamp, device=info.get("device"), plans=rows, baselines=baselines,
                                targets=targets, failures=ck.data["failures"], skipped=ck.data["skipped"]),
                           default=str) + "\n")
    ck.say(f"written under {os.path.abspath(args.out)}: plans.md, plans.csv, gpu_check.jsonl, gpu_check.json, "
           "summary.txt, timings.csv" + (", precompile/" if workers is not None else "")
           + (", pytest_gpu.txt" if os.path.exists(ck.path("pytest_gpu.txt")) else ""))


def order_plan(order: list, preset: str, batch: int, label: str):
    """The plan of one row of ``run_order``'s list."""
    return next(plan for p, b, lab, plan in order if (p, b, lab) == (preset, batch, label))


if __name__ == "__main__":
    sys.exit(main())
