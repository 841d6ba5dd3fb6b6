"""One prepared GPU run that answers everything about the Triton engine (issues 9, 21).

    python benchmarks/gpu_check.py --out DIR [--budget 480]

On one CUDA GPU, in at most ``--budget`` seconds (8 minutes, cold Triton cache):

1. versions: torch, Triton, CUDA, driver, device, SM count, clocks, TF32 flags;
2. exactness at the timed shapes, every torch reference in true fp32 (TF32 off,
   ``float_policy.true_fp32``; the engine's own prefill runs in it too): teacher
   forcing of bench-32 (``bench32`` and ``teacher_forcing_inputs``: the model's own
   init, well scaled), cached-torch then triton, each within ``TF_GATE`` = 1e-5 of the
   parameter scale of the float32 forward (the float64 forward's distance is
   recorded beside it; ``tests/test_gpu_check.py`` checks on CPU that cached-torch
   meets this gate on exactly this model and these inputs); triton vs cached-torch
   images at batch 1 and 256 (``tie_report``: each engine's own parameters); an odd
   width, the split plan, conditioning and known pixels vs naive; the same call twice
   bitwise equal; graphs == eager;
3. timings (CUDA events, best of ``--repeat`` after a warm-up) at batches 1, 16, 64,
   256: triton with and without graphs, the split plan at batch 1, forward with
   TF32 on and off, naive on a few pixels (extrapolated), cached-torch on a few rows
   (extrapolated); speedup, overhead, fraction of the fp32 GEMM rate (measured here);
4. a breakdown: set-up, row 0 (compiles), capture, per row replay, per kernel from
   one profiled replay; achieved GFLOP/s and the weight traffic per second;
5. the gpu-marked tests compiled (``TRITON_INTERPRET=0 pytest -m gpu``), if time is left.

It continues past failures (each is recorded) and prints a one-screen summary.
Everything it writes goes under ``DIR`` (the only folder a device run hands back),
updated as each step finishes, so a run cut short keeps what it measured:

* ``gpu_check.jsonl``: one JSON line per finished step (name, ok, seconds, result or
  error), then one line for the run (date, device, timings, targets, failures);
* ``gpu_check.json``: the whole record; ``summary.txt``: the printed lines;
* ``timings.csv``: one row per (batch, provider); ``pytest_gpu.txt``: the tests' output.

Without a GPU it refuses with one line and exit status 2, writing nothing.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import torch  # noqa: E402

BATCHES = (1, 16, 64, 256)


def refuse_reason() -> str | None:
    """Why this cannot run here (one line), or None."""
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes"):
        return "gpu_check: TRITON_INTERPRET=1 is set; this measures compiled kernels (unset it)"
    if not torch.cuda.is_available():
        why = "a CPU build of torch" if torch.version.cuda is None else "no CUDA device visible"
        return f"gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False: {why}); nothing was run"
    try:
        import triton  # noqa: F401
    except Exception as e:
        return f"gpu_check: triton does not import ({type(e).__name__}: {e})"
    return None


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
            self.say(f"[skip] {name}: {self.left():.0f} s left of the budget")
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
        for name, text in (("gpu_check.json", json.dumps(self.data, indent=1, default=str)),
                           ("summary.txt", "\n".join(self.lines) + "\n")):
            tmp = self.path(name + ".tmp")
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self.path(name))

    def write_csv(self, name: str, rows: list):
        """``rows`` (dicts) as ``out/name``, the union of their keys as columns."""
        if self.out is None or not rows:
            return
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.path(name), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)


def bench32(device):
    """gpu_check's model: bench-32 (``pixelaux.bench.PRESETS``) built by
    ``bench_triton_gpu.build`` from seed 0 (the model's own init); ``(model, size)``."""
    from bench_triton_gpu import build
    from pixelaux.bench import PRESETS
    return build(dict(PRESETS["bench-32"]), 0, device)


def teacher_forcing_inputs(model, size, device, b: int = 4):
    """The teacher-forcing inputs: ``(x, known, uniforms)``, ``b`` images of random
    pixels (generator seed 1), every pixel known, the uniforms of seed 0."""
    from pixelaux.uniforms import ImageUniforms
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2 ** model.bits, (b, model.channels, size, size), generator=g).to(device)
    known = torch.ones(b, size, size, dtype=torch.bool, device=device)
    u = ImageUniforms(b, torch.Generator().manual_seed(0)).draw(size, size, model.dist.num_uniforms)
    return x, known, u


def teacher_forcing_errors(params, model, x) -> dict:
    """``params`` (an engine's, every pixel of ``x`` known) against the forward pass, all
    in true fp32: ``error`` vs the float32 forward (what ``TF_GATE`` judges) and, for
    the record, ``error_fp64`` vs the float64 forward and ``forward_fp32_vs_fp64``
    (torch's own float32 error), each max abs relative to the reference's scale."""
    from bench_triton_gpu import true_fp32
    with true_fp32(), torch.no_grad():
        ref = model(x)
        ref64 = copy.deepcopy(model).double()(x)
    rel = lambda p, r: ((p.to(r) - r).abs().max() / r.abs().max().clamp(min=1e-30)).item()  # noqa: E731
    return dict(error=rel(params, ref), error_fp64=rel(params, ref64), forward_fp32_vs_fp64=rel(ref, ref64),
                scale=ref.abs().max().item())


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


def _sync_time(fn, repeat=3):
    from bench_triton_gpu import cuda_time
    return cuda_time(fn, repeat)


def forward_flops(model, size):
    """FLOPs of one forward pass of one image (2 per multiply-add of every conv)."""
    flops = []

    def hook(mod, inp, out):
        w = mod.weight
        flops.append(2 * out.numel() // out.shape[0] * w.shape[1] * w.shape[2] * w.shape[3])
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, model.channels, *size, dtype=torch.long, device=p.device))
    finally:
        for h in hs:
            h.remove()
    return int(sum(flops))


def gemm_rate(device, n=4096):
    """The machine's fp32 GEMM rate (TF32 off), GFLOP/s."""
    from bench_triton_gpu import true_fp32
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    with true_fp32():
        t = _sync_time(lambda: a @ b, 5)
    return 2 * n ** 3 / t / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and summary.txt")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds (default 480)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--no-tests", action="store_true", help="skip the pytest -m gpu step")
    args = ap.parse_args(argv)
    why = refuse_reason()
    if why is not None:
        print(why, file=sys.stderr)
        return 2

    from bench_triton_gpu import TF_GATE, build, cuda_device, tf32_flags, true_fp32
    from pixelaux.bench import PRESETS
    from pixelaux.engines import cached_torch, cached_triton, naive, triton_buffers
    from pixelaux.uniforms import ImageUniforms

    os.makedirs(args.out, exist_ok=True)
    ck = Check(args.budget, args.out)
    device = cuda_device(args.device)
    torch.cuda.set_device(device)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ck.data["date"] = stamp
    info = ck.step("versions", versions, device) or {}
    ck.say(f"gpu_check {stamp}: {info.get('device')} sm={info.get('sms')} torch {info.get('torch')} "
           f"triton {info.get('triton')} | {info.get('nvidia_smi')}")
    ck.say(f"TF32 defaults {tf32_flags()}; every exactness reference below runs with both off")
    K = cached_triton.load_kernels()
    cfg = dict(PRESETS["bench-32"])
    model, size = bench32(device)
    hw = (size, size)
    ck.data["config"] = dict(cfg, init="the model's own (bench_triton_gpu.build, seed 0)")

    def uniforms(b, h, w, seed=0, m=model):
        return ImageUniforms(b, torch.Generator().manual_seed(seed)).draw(h, w, m.dist.num_uniforms)

    def zeros(b, h=size, w=size, m=model):
        return torch.zeros(b, m.channels, h, w, dtype=torch.long, device=device)

    # -- 2. exactness -------------------------------------------------------------------
    def teacher_forcing(engine):
        x, known, u = teacher_forcing_inputs(model, size, device)
        if engine is cached_triton:          # the engine under test: it keeps TF32 off by itself
            _, params = engine.run(model, x, known, None, u, 1.0, return_params=True)
        else:                                # a torch reference
            with true_fp32():
                _, params = engine.run(model, x, known, None, u, 1.0, return_params=True)
        res = teacher_forcing_errors(params, model, x)
        err, name = res["error"], engine.__name__.split(".")[-1]
        ck.say(f"teacher forcing bench-32 {name} B={x.shape[0]} {hw}: param error {err:.2e} (<= {TF_GATE:.0e}) "
               f"{'OK' if err <= TF_GATE else 'FAIL'}; vs float64 {res['error_fp64']:.2e}, torch's own float32 "
               f"forward {res['forward_fp32_vs_fp64']:.2e}, scale {res['scale']:.2f}")
        if not err <= TF_GATE:
            raise AssertionError(f"param error {err:.2e} > {TF_GATE:.0e}")
        return res

    def vs_reference(name, m, b, h, w, ref_engine, cond=None, known=None, plan=None, temperature=1.0):
        u = uniforms(b, h, w, 2, m)
        x0 = zeros(b, h, w, m)
        if known is not None:
            x0 = torch.randint(0, 2 ** m.bits, x0.shape, generator=torch.Generator().manual_seed(3)).to(device)
        got, params = cached_triton.run(m, x0, known, cond, u, temperature, return_params=True, launch_plan=plan)
        with true_fp32():
            ref, ref_params = ref_engine.run(m, x0, known, cond, u, temperature, return_params=True)
            ok, equal, lines = cached_triton.tie_report(m, u, temperature, ref, ref_params, got, params)
        ck.say(f"{name}: {equal:.4%} of pixels equal to {ref_engine.__name__.split('.')[-1]}"
               f" -> {'OK' if ok else 'FAIL'}" + "".join(f"\n    {ln}" for ln in lines[:4]))
        if not ok:
            raise AssertionError(f"{name}: unexplained differences: {lines[:3]}")
        return dict(equal=equal, report=lines[:20])

    def twice_bitwise(b=16):
        u = uniforms(b, *hw, 5)
        a = cached_triton.run(model, zeros(b), None, None, u, 1.0)
        c = cached_triton.run(model, zeros(b), None, None, u, 1.0)       # graph replay, no capture
        old = cached_triton.USE_CUDA_GRAPHS
        cached_triton.USE_CUDA_GRAPHS = False
        try:
            e = cached_triton.run(model, zeros(b), None, None, u, 1.0)
        finally:
            cached_triton.USE_CUDA_GRAPHS = old
        res = dict(twice_equal=torch.equal(a, c), graphs_equal_eager=torch.equal(a, e))
        ck.say(f"same call twice bitwise equal: {res['twice_equal']}; graphs == eager: {res['graphs_equal_eager']}")
        if not all(res.values()):
            raise AssertionError(str(res))
        return res

    ck.step("exact/teacher_forcing_cached_torch", teacher_forcing, cached_torch)   # the gate is reachable here
    ck.step("exact/teacher_forcing", teacher_forcing, cached_triton)
    ck.step("exact/b1_vs_cached_torch", vs_reference, "bench-32 B=1 vs cached-torch", model, 1, *hw, cached_torch)
    ck.step("exact/b256_vs_cached_torch", vs_reference, "bench-32 B=256 vs cached-torch", model, 256, *hw,
            cached_torch, need=60)
    ck.step("exact/odd_width_vs_naive", vs_reference, "bench-32 B=5 8x37 (W > a column tile) vs naive",
            model, 5, 8, 37, naive)
    split = K.choose_launch_plan(1, model.hidden, size, override="pixel_tile=16,row_tile=16")
    ck.step("exact/split_plan_vs_cached_torch", vs_reference, "bench-32 B=1 split plan vs cached-torch",
            model, 1, *hw, cached_torch, plan=split)
    cmodel, _ = build(dict(PRESETS["tiny-16"], channels=1, cond_channels=3), 1, device)
    cond = torch.randn(19, 3, 8, 8, generator=torch.Generator().manual_seed(4)).to(device)
    known = (torch.rand(19, 8, 8, generator=torch.Generator().manual_seed(5)) < 0.3).to(device)
    ck.step("exact/cond_known_vs_naive", vs_reference, "tiny-16 gray+cond B=19 known 30% T=0.8 vs naive",
            cmodel, 19, 8, 8, naive, cond=cond, known=known, temperature=0.8)
    ck.step("exact/twice_and_eager", twice_bitwise)

    # -- 3. timings ---------------------------------------------------------------------
    flops1 = forward_flops(model, hw)
    rate = ck.step("gemm_rate_gflops", gemm_rate, device) or float("nan")
    weight_bytes = 4 * sum(p.numel() for p in model.parameters())
    ck.data["forward_flops_per_image"] = flops1
    rows = []

    def time_batch(b):
        u = uniforms(b, *hw, 7)
        x0 = zeros(b)
        xr = torch.randint(0, 256, x0.shape, generator=torch.Generator().manual_seed(8)).to(device)
        t = {}

        def tri(graphs, plan=None):
            def fn():
                old = cached_triton.USE_CUDA_GRAPHS
                cached_triton.USE_CUDA_GRAPHS = graphs
                try:
                    cached_triton.run(model, x0, None, None, u, 1.0, launch_plan=plan)
                finally:
                    cached_triton.USE_CUDA_GRAPHS = old
            return fn
        t["triton"] = _sync_time(tri(True), args.repeat)
        t["triton-eager"] = _sync_time(tri(False), 1)
        if b == 1:
            t["triton-split"] = _sync_time(tri(True, split), args.repeat)
        with true_fp32():
            t["forward-fp32"] = _sync_time(lambda: model.forward_unchecked(xr), args.repeat)
        old = tf32_flags()
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        try:
            t["forward-tf32"] = _sync_time(lambda: model.forward_unchecked(xr), args.repeat)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old["matmul"], old["cudnn"]
        k = 8
        with true_fp32():
            t["naive"] = _sync_time(lambda: naive.run(model, x0, None, None, u, 1.0, max_pixels=k), 1) * (size * size / k)
            r = 2                                      # cached-torch on 2 rows, extrapolated
            t["cached-torch"] = _sync_time(lambda: cached_torch.run(model, x0[:, :, :r], None, None, u[:, :r], 1.0),
                                           1) * (size / r)
        out = []
        for name, sec in t.items():
            row = dict(batch=b, provider=name, seconds=sec, ms_per_image=1e3 * sec / b,
                       speedup=t["naive"] / sec, overhead=sec / t["forward-fp32"],
                       gflops=flops1 * b / sec / 1e9, fraction_of_gemm=flops1 * b / sec / 1e9 / rate,
                       extrapolated=name in ("naive", "cached-torch"))
            if name.startswith("triton"):
                groups = -(-b // 16)
                row["weight_traffic_gbs"] = weight_bytes * groups * size * size / sec / 1e9
            out.append(row)
        return out

    for b in args.batches:
        res = ck.step(f"time/B={b}", time_batch, b, need=45 if b <= 64 else 90)
        rows += res or []
        ck.data["timings"] = rows
        ck.write_csv("timings.csv", rows)

    # -- 4. breakdown -------------------------------------------------------------------
    def breakdown(b=256 if 256 in args.batches else args.batches[-1]):
        u = uniforms(b, *hw, 9)
        x0 = zeros(b)
        cached_triton.clear_cache()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        buf = triton_buffers.build(model, x0, None, None, u, 1.0)
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
        per_row = _sync_time(replay, 5)
        res = dict(batch=b, setup_s=t1 - t0, fill_s=t2 - t1, row0_eager_s=t3 - t2, capture_s=t4 - t3,
                   per_row_replay_s=per_row, image_estimate_s=per_row * size)
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
        ck.say(f"breakdown B={b}: set-up {res['setup_s']*1e3:.1f} ms, fill {res['fill_s']*1e3:.1f} ms, "
               f"row 0 eager {res['row0_eager_s']*1e3:.1f} ms, capture {res['capture_s']*1e3:.1f} ms, "
               f"row replay {per_row*1e3:.3f} ms")
        for name, v in sorted(kern.items(), key=lambda kv: -kv[1]["us"])[:6]:
            ck.say(f"    {name[:60]:60s} {v['us']:>10.1f} us  x{v['calls']}")
        return res
    ck.step("breakdown", breakdown, need=40)

    # -- 5. the gpu-marked tests, compiled -----------------------------------------------
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

    # -- summary ------------------------------------------------------------------------
    ck.say("")
    ck.say(f"{'batch':>5} {'provider':<14} {'ms/img':>10} {'speedup':>9} {'overhead':>9} {'GFLOP/s':>9} {'%GEMM':>6}")
    for r in rows:
        ck.say(f"{r['batch']:>5} {r['provider']:<14} {r['ms_per_image']:>10.4f} {r['speedup']:>8.1f}x "
               f"{r['overhead']:>8.2f}x {r['gflops']:>9.1f} {100 * r['fraction_of_gemm']:>5.1f}%"
               f"{' (extrapolated)' if r['extrapolated'] else ''}")
    tri = {r["batch"]: r for r in rows if r["provider"] == "triton"}
    targets = []
    if 1 in tri:
        targets.append(f"batch 1 <= 10 ms/img: {tri[1]['ms_per_image']:.2f} ms")
    if 256 in tri:
        targets.append(f"batch 256 <= 0.15 ms/img: {tri[256]['ms_per_image']:.4f} ms; overhead <= 1.5: "
                       f"{tri[256]['overhead']:.2f}; >= 1000x naive: {tri[256]['speedup']:.0f}x")
    for t in targets:
        ck.say("target " + t)
    ck.data["targets"] = targets
    ck.say(f"{len(ck.data['failures'])} failures, skipped {ck.data['skipped'] or 'none'}; "
           f"{time.time() - ck.t0:.0f} s of {args.budget:.0f}")
    ck.write_csv("timings.csv", rows)
    with open(ck.path("gpu_check.jsonl"), "a") as f:
        f.write(json.dumps(dict(run=stamp, device=info.get("device"), timings=rows, targets=targets,
                                failures=ck.data["failures"], skipped=ck.data["skipped"]), default=str) + "\n")
    ck.say(f"written under {os.path.abspath(args.out)}: gpu_check.jsonl, gpu_check.json, summary.txt, timings.csv"
           + (", pytest_gpu.txt" if os.path.exists(ck.path("pytest_gpu.txt")) else ""))
    ck.save()
    return 0 if not ck.data["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
