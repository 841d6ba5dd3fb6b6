"""The Triton backend on a GPU: exactness first, then timings (docs/design.md sections 2, 3).

    python benchmarks/bench_triton_gpu.py                      # bench-32, batch 1 and 16
    python benchmarks/bench_triton_gpu.py --batch 1 8 64 --preset tiny-16
    python benchmarks/bench_triton_gpu.py --check-only         # exactness checks only

Needs a CUDA GPU (no interpreter here) to run; ``tests/test_gpu_check.py`` imports its model
builder and gate (through ``gpu_check.py``) to check them on the CPU.

Models: ``build``, the model's own random init (well scaled; see there why not
N(0, 0.2^2) weights). TF32 is off (``true_fp32``) for every reference.

1. Exactness on the GPU, on a small image: teacher forcing of the Triton engine vs the
   full forward pass (parameter error relative to their scale, <= ``TF_GATE`` = 1e-5),
   the same uniforms -> the same images as the naive engine up to float ties
   (``cached_triton.tie_report``, each engine's own parameters), CUDA-graph replay vs
   eager launches (identical images).
2. Timings with CUDA events after a warm-up run (best of ``--repeat``):
   ``forward`` (one batched forward pass), ``naive`` (timed on the first
   ``--naive-pixels`` pixels and extrapolated to ``H*W``: every pixel costs the same
   forward pass), ``cached-torch``, ``triton-eager`` (no graphs) and ``triton``
   (per-row CUDA graphs). Reported: seconds per image, pixels per second,
   ``speedup = t_naive / t``, ``overhead = t / t_forward``. Rows are appended to
   ``--csv`` (default ``benchmarks/results/triton_gpu.csv``) with date and device.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pixelaux  # noqa: E402
from pixelaux.engines import cached_torch, cached_triton, naive  # noqa: E402
from pixelaux.engines.cached_triton import tf32_flags, true_fp32  # noqa: E402,F401 (gpu_check imports them here)
from pixelaux.uniforms import ImageUniforms  # noqa: E402

#: Teacher forcing: the engine's parameters against the float32 forward pass (both in
#: true fp32), max abs error relative to the forward's scale. The models of ``build``
#: are well scaled: there torch's own float32 forward is ~4e-7 of the scale off the
#: float64 one and the cached engines ~3e-7 off the float32 forward (bench-32, CPU;
#: ``tests/test_gpu_check.py`` checks the cached torch reference against this
#: gate on exactly gpu_check's model and inputs), so 1e-5 is ~30x what float32
#: arithmetic explains and still catches a weight or a tap out of place.
TF_GATE = 1e-5

def cuda_device(spec: str = "cuda") -> torch.device:
    """``cuda`` / ``cuda:k`` -> a device with an index (``cuda:{current_device()}`` for
    a bare ``cuda``): ``torch.cuda.set_device`` and the engines' device checks need one."""
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{torch.cuda.current_device()}")
    return dev


PRESETS = {
    "bench-32": dict(channels=3, bits=8, hidden=64, blocks=8, dist="logistic", nr_mix=10, size=32),
    "tiny-16": dict(channels=3, bits=8, hidden=16, blocks=2, dist="logistic", nr_mix=5, size=16),
    "gray4-32": dict(channels=1, bits=4, hidden=64, blocks=4, dist="categorical", size=32),
}


def build(cfg: dict, seed: int, device):
    """``(model, size)``: a ``GatedPixelCNN`` of a :data:`PRESETS` configuration with the
    model's own random init from ``seed`` (PyTorch's: every weight and bias uniform
    within ``1/sqrt(fan-in)``), eval mode, on ``device``. Well scaled: parameters of
    order 1, bench-32's float32 forward within ~4e-7 of its float64 one, and sampled
    images use every level (about 43% of bench-32's values inside (0, 255), the rest
    clamped at the ends by an untrained model's broad logistics). Weights drawn
    N(0, 0.2^2) instead, as before, gave a chaotic model (parameters up to 4e9, float32
    and float64 forwards 37% apart, every channel sampled at 0 or 255) on which no
    exactness gate can pass."""
    cfg = dict(cfg)
    size = cfg.pop("size")
    torch.manual_seed(seed)
    model = pixelaux.GatedPixelCNN(**cfg, image_size=(size, size))
    return model.to(device).eval(), size


def cuda_time(fn, repeat: int) -> float:
    """Best wall time of ``fn`` in seconds, CUDA events, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000.0)
    return best


@torch.no_grad()
def check_exactness(cfg: dict, device, seed: int = 0, size: int = 8, batch: int = 2) -> bool:
    cfg = dict(cfg, size=size)
    model, _ = build(cfg, seed, device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2 ** model.bits, (batch, model.channels, size, size), generator=g).to(device)
    u = ImageUniforms(batch, g).draw(size, size, model.dist.num_uniforms)
    known = torch.ones(batch, size, size, dtype=torch.bool, device=device)
    _, params = cached_triton.run(model, x, known, None, u, 1.0, return_params=True)
    with true_fp32():
        ref = model(x)
        err = ((params - ref).abs().max() / ref.abs().max().clamp(min=1e-6)).item()
        x0 = torch.zeros_like(x)
        want, want_params = naive.run(model, x0, None, None, u, 1.0, return_params=True)
    got, got_params = cached_triton.run(model, x0, None, None, u, 1.0, return_params=True)
    with true_fp32():
        explained, same, lines = cached_triton.tie_report(model, u, 1.0, want, want_params, got, got_params)
    for ln in lines[:3]:
        print(f"    {ln}")
    graphs = cached_triton.USE_CUDA_GRAPHS
    cached_triton.USE_CUDA_GRAPHS = not graphs
    try:
        other = cached_triton.run(model, x0, None, None, u, 1.0)
    finally:
        cached_triton.USE_CUDA_GRAPHS = graphs
    ok = err <= TF_GATE and explained and torch.equal(got, other)
    print(f"  exactness {cfg}: param error {err:.2e} (<= {TF_GATE:.0e}), same as naive {same:.2%} (differences tie-explained: {explained}), "
          f"graphs == eager: {torch.equal(got, other)}  -> {'OK' if ok else 'FAILED'}")
    return ok


@torch.no_grad()
def bench(cfg: dict, batch: int, device, seed: int, repeat: int, naive_pixels: int):
    model, size = build(cfg, seed, device)
    pixels = size * size
    gen = torch.Generator().manual_seed(seed)
    u = ImageUniforms(batch, gen).draw(size, size, model.dist.num_uniforms)
    x0 = torch.zeros(batch, model.channels, size, size, dtype=torch.long, device=device)
    xr = torch.randint(0, 2 ** model.bits, x0.shape, generator=gen).to(device)

    def triton_run(graphs):
        def fn():
            old = cached_triton.USE_CUDA_GRAPHS
            cached_triton.USE_CUDA_GRAPHS = graphs
            try:
                cached_triton.run(model, x0, None, None, u, 1.0)
            finally:
                cached_triton.USE_CUDA_GRAPHS = old
        return fn

    k = min(naive_pixels, pixels)
    providers = {
        "forward": (lambda: model.forward_unchecked(xr), 1.0),
        "naive": (lambda: naive.run(model, x0, None, None, u, 1.0, max_pixels=k), pixels / k),
        "cached-torch": (lambda: cached_torch.run(model, x0, None, None, u, 1.0), 1.0),
        "triton-eager": (triton_run(False), 1.0),
        "triton": (triton_run(True), 1.0),
    }
    times = {name: cuda_time(fn, repeat) * scale for name, (fn, scale) in providers.items()}
    rows = []
    for name, t in times.items():
        rows.append(dict(provider=name, batch=batch, seconds=t, s_per_img=t / batch,
                         pixels_per_s=batch * pixels / t, speedup=times["naive"] / t,
                         overhead=t / times["forward"], extrapolated=name == "naive" and k < pixels))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="bench-32", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-pixels", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cuda or cuda:k (a bare cuda is the current device)")
    ap.add_argument("--csv", default=os.path.join(ROOT, "benchmarks", "results", "triton_gpu.csv"))
    ap.add_argument("--check-only", action="store_true")
    args = ap.parse_args(argv)

    if torch.device(args.device).type != "cuda" or not torch.cuda.is_available():
        print("bench_triton_gpu: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    device = cuda_device(args.device)
    ok, why = cached_triton.status(device)
    if not ok:
        print(f"bench_triton_gpu: the Triton backend is unavailable: {why}", file=sys.stderr)
        return 2
    torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    import triton
    print(f"Triton backend on {name}  {stamp}  torch {torch.__version__}  triton {triton.__version__}")
    print(f"TF32 flags (timings run with these; every exactness reference with both off): {tf32_flags()}")

    print("exactness (small images):")
    all_ok = True
    for preset in sorted({args.preset, "tiny-16", "gray4-32"}):
        all_ok &= check_exactness(PRESETS[preset], device, seed=args.seed)
    cond_cfg = dict(PRESETS["tiny-16"], channels=1, cond_channels=3)
    # with conditioning: the naive/teacher-forcing checks need a cond map; use the engines directly
    model, _ = build(dict(cond_cfg, size=8), args.seed, device)
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(2, 3, 8, 8, generator=g).to(device)
    u = ImageUniforms(2, g).draw(8, 8, model.dist.num_uniforms)
    x0 = torch.zeros(2, 1, 8, 8, dtype=torch.long, device=device)
    with true_fp32():
        ref_cond = naive.run(model, x0, None, cond, u, 1.0)
    same = (ref_cond == cached_triton.run(model, x0, None, cond, u, 1.0))
    print(f"  exactness with cond: same as naive {same.float().mean().item():.2%}")
    all_ok &= same.float().mean().item() >= 0.999
    if not all_ok:
        print("exactness FAILED (reported above): the timings below still run", file=sys.stderr)
    if args.check_only:
        return 0 if all_ok else 1

    cfg = PRESETS[args.preset]
    print(f"\ntimings: preset {args.preset} {cfg}, CUDA events, best of {args.repeat} after warm-up")
    print(f"{'batch':>5} {'provider':<13} {'s/img':>10} {'pixels/s':>11} {'speedup':>9} {'overhead':>9}")
    rows = []
    for b in args.batch:
        for r in bench(cfg, b, device, args.seed, args.repeat, args.naive_pixels):
            rows.append(dict(date=stamp, device=name, preset=args.preset, config=str(cfg), **r))
            note = " (extrapolated)" if r["extrapolated"] else ""
            print(f"{b:>5} {r['provider']:<13} {r['s_per_img']:>10.4f} {r['pixels_per_s']:>11.0f} "
                  f"{r['speedup']:>8.1f}x {r['overhead']:>8.1f}x{note}")
    if args.csv:
        os.makedirs(os.path.dirname(args.csv), exist_ok=True)
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
