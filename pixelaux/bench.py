"""Sampling benchmark: naive vs cached (each backend) on the same model, batch and seed.

Figures (docs/design.md section 3), all from one run:

* ``s/img``: seconds per image of the sampler (batch time / batch size);
* ``speedup = t_naive / t_cached``;
* ``overhead = t_cached / t_forward``, with ``t_forward`` one batched forward pass of
  the model over the same batch (ideal ~1; naive sampling is ~``H*W``);
* ``GFLOP/s`` and ``of GEMM``: the FLOPs of one forward pass of the batch (torch's
  ``FlopCounterMode``; exact cached sampling performs them once, naive ``H*W`` times)
  per second of the sampler, and that rate as a fraction of the machine's own fp32
  GEMM rate (a 1024^3 ``torch.mm`` on the same threads, measured in the same run);
* ``peak MiB``: the growth of the process's peak resident memory during the run
  (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).

Each measurement runs in a fresh subprocess (so peak memory is its own), builds the
same model from the same seed, warms up, then times. The naive engine is timed on a
prefix of ``--naive-pixels`` pixels and extrapolated to ``H*W`` (every pixel costs
the same full forward pass); the table marks it ``(extrapolated)``.

Run: ``python benchmarks/bench_sampling.py`` or ``pixelaux bench`` (``--help``).
"""
from __future__ import annotations

import csv
import importlib.util
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time

PRESETS = {
    "bench-32": dict(channels=3, bits=8, hidden=64, blocks=8, dist="logistic", nr_mix=10, size=32),
    "tiny-16": dict(channels=3, bits=8, hidden=16, blocks=2, dist="logistic", nr_mix=5, size=16),
    # PixelCNN++ over 3 resolutions (32, 16, 8), the public code's topology with 80 filters
    "bench-pp32": dict(arch="pixelcnnpp", channels=3, bits=8, hidden=80, blocks=5, scales=3, dropout=0.0,
                       dist="logistic", nr_mix=10, size=32),
}
PROVIDERS = ("forward", "naive", "cached-torch", "cached-cpp", "cached-triton")
GEMM_N = 1024   # the fp32 GEMM (N x N x N) whose rate is the machine's reference


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(spec: dict) -> dict:
    """One measurement (runs in the worker process). ``spec``: provider, config, batch,
    device, seed, naive_pixels, repeat."""
    import torch

    import pixelaux
    from pixelaux.engines import runner
    from pixelaux.uniforms import ImageUniforms

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cfg = dict(spec["config"])
    size = cfg.pop("size")
    device = torch.device(spec["device"])
    torch.manual_seed(spec["seed"])
    cls = pixelaux.PixelCNNpp if cfg.pop("arch", "gated") == "pixelcnnpp" else pixelaux.GatedPixelCNN
    model = cls(**cfg, image_size=(size, size)).to(device).eval()
    b, provider = spec["batch"], spec["provider"]
    gen = torch.Generator().manual_seed(spec["seed"])
    u = ImageUniforms(b, gen).draw(size, size, model.dist.num_uniforms)
    x0 = torch.zeros(b, model.channels, size, size, dtype=torch.long, device=device)
    pixels = size * size
    flops = None
    if provider == "gemm":
        # The machine's own fp32 GEMM rate on the same threads: the roofline of the figures.
        a = torch.randn(GEMM_N, GEMM_N, device=device)
        bm = torch.randn(GEMM_N, GEMM_N, device=device)
        fn = lambda: torch.mm(a, bm)
        flops, scale = 2 * GEMM_N ** 3, 1.0
    elif provider == "forward":
        # A realistic input: random pixels, never zeros.
        xr = torch.randint(0, 2 ** model.bits, x0.shape, generator=gen).to(device)
        fn = lambda: model.forward_unchecked(xr)
        scale = 1.0
        from torch.utils.flop_counter import FlopCounterMode
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        flops = counter.get_total_flops()
    elif provider == "naive":
        k = min(spec["naive_pixels"], pixels)
        run = runner("naive", None)
        fn = lambda: run(model, x0, None, None, u, 1.0, max_pixels=k)
        scale = pixels / k
    else:
        backend = provider.split("-", 1)[1]
        pixelaux.engines.resolve("cached", backend, device, kinds=(model.kind,))  # clear error if unavailable
        run = runner("cached", backend, model.kind)
        fn = lambda: run(model, x0, None, None, u, 1.0)
        scale = 1.0
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss0 = _rss_mib()                                         # model and inputs are built
        fn()                                                      # warm-up
        _sync(device)
        times = []
        for _ in range(spec["repeat"]):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0)
    return {"seconds": min(times) * scale, "peak_mib": peak, "extrapolated": scale != 1.0, "flops": flops}


#: the worker's start: the folder that holds this very ``pixelaux`` package replaces the
#: current directory on ``sys.path``, so the worker imports the package the caller runs
#: (``python -m`` / ``-c`` would put the current directory first, and in the folder that
#: holds a clone named ``pixelaux`` that clone's top folder would be imported as a
#: namespace package instead of an editable install's package)
_WORKER_START = "import sys; sys.path[0] = sys.argv.pop(1); from pixelaux.bench import main; sys.exit(main())"


def _run_worker(spec: dict) -> dict:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _WORKER_START, here, "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def size_pixels(config: dict) -> int:
    return int(config["size"]) ** 2


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def check_arguments(preset="bench-32", batches=(1,), providers=(), naive_pixels=8, repeat=1, threads=None,
                    plot_path=None):
    """``TypeError`` / ``ValueError`` naming the argument, before any measurement runs."""
    from .checks import check_choice, check_int
    if preset is not None:
        check_choice(preset, "preset", sorted(PRESETS))
    if isinstance(batches, int) or not batches:
        raise ValueError(f"batches must be a non-empty sequence of ints >= 1, got {batches!r}")
    for b in batches:
        check_int(b, "batch size", min_value=1)
    for q in providers:
        check_choice(q, "provider", PROVIDERS)
    check_int(naive_pixels, "naive_pixels", min_value=1)
    check_int(repeat, "repeat", min_value=1)
    if threads is not None:
        check_int(threads, "threads", min_value=1)
    if plot_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise ImportError("plotting needs matplotlib: pip install matplotlib")


def run_benchmark(preset="bench-32", batches=(1, 16), providers=("naive", "cached-torch", "cached-cpp"),
                  device="cpu", seed=0, naive_pixels=8, repeat=1, csv_path=None, plot_path=None,
                  threads=None, config=None, log=print):
    """Run the table; returns the rows (dicts). Appends them to ``csv_path`` and plots
    to ``plot_path`` when given (checked before anything runs: matplotlib must be
    importable for a plot)."""
    check_arguments(preset if config is None else None, batches, providers, naive_pixels, repeat, threads,
                    plot_path)
    config = dict(config or PRESETS[preset])
    rows = []
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = machine_name(device)
    log(f"pixelaux sampling benchmark  {stamp}  device={device} ({machine})  model={preset} {config}")
    header = (f"{'batch':>5} {'provider':<14} {'s/img':>10} {'speedup':>9} {'overhead':>9} {'GFLOP/s':>8} "
              f"{'of GEMM':>8} {'peak MiB':>9}")
    gemm = _run_worker(dict(provider="gemm", config=config, batch=1, device=device, seed=seed,
                            naive_pixels=naive_pixels, repeat=max(3, repeat), threads=threads))
    gemm_rate = gemm["flops"] / gemm["seconds"] if "error" not in gemm else float("nan")
    log(f"fp32 GEMM {GEMM_N}^3 on this machine: {gemm_rate / 1e9:.1f} GFLOP/s; "
        f"one forward pass = the FLOPs exact cached sampling performs per batch")
    for b in batches:
        base = dict(config=config, batch=b, device=device, seed=seed, naive_pixels=naive_pixels,
                    repeat=repeat, threads=threads)
        fwd = _run_worker({**base, "provider": "forward"})
        if "error" in fwd:
            raise RuntimeError(f"forward pass failed: {fwd['error']}")
        results = {p: _run_worker({**base, "provider": p}) for p in providers}
        t_naive = results.get("naive", {}).get("seconds")
        log(header)
        fwd_rate = fwd["flops"] / fwd["seconds"]
        log(f"{b:>5} {'forward':<14} {fwd['seconds'] / b:>10.4f} {'':>9} {1.0:>9.2f} {fwd_rate / 1e9:>8.1f} "
            f"{fwd_rate / gemm_rate:>8.2f} {fwd['peak_mib']:>9.1f}")
        for p, r in results.items():
            if "error" in r:
                log(f"{b:>5} {p:<14} unavailable: {r['error']}")
                continue
            speedup = t_naive / r["seconds"] if t_naive else float("nan")
            overhead = r["seconds"] / fwd["seconds"]
            # Exact cached sampling performs one forward pass of FLOPs; naive H*W of them.
            rate = fwd["flops"] * (size_pixels(config) if p == "naive" else 1) / r["seconds"]
            note = " (extrapolated)" if r["extrapolated"] else ""
            log(f"{b:>5} {p:<14} {r['seconds'] / b:>10.4f} {speedup:>9.1f} {overhead:>9.2f} {rate / 1e9:>8.1f} "
                f"{rate / gemm_rate:>8.2f} {r['peak_mib']:>9.1f}{note}")
            rows.append(dict(date=stamp, device=device, machine=machine, model=preset,
                             config=json.dumps(config, sort_keys=True), batch=b, provider=p,
                             seconds_per_image=r["seconds"] / b, seconds_batch=r["seconds"],
                             forward_seconds_batch=fwd["seconds"], speedup=speedup, overhead=overhead,
                             gflops=rate / 1e9, gemm_gflops=gemm_rate / 1e9, fraction_of_gemm=rate / gemm_rate,
                             peak_mib=r["peak_mib"], extrapolated=r["extrapolated"]))
    if csv_path and rows:
        new = not os.path.exists(csv_path)
        os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
        with open(csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
        log(f"appended {len(rows)} rows to {csv_path}")
    if plot_path and rows:
        plot(rows, plot_path)
        log(f"wrote {plot_path}")
    return rows


def plot(rows, path):
    """Bar chart of seconds per image (log scale) per provider and batch."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from e
    batches = sorted({r["batch"] for r in rows})
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    width = 0.8 / len(providers)
    for k, p in enumerate(providers):
        xs, ys = [], []
        for i, b in enumerate(batches):
            r = [r for r in rows if r["batch"] == b and r["provider"] == p]
            if r:
                xs.append(i + k * width)
                ys.append(r[0]["seconds_per_image"])
        bars = ax.bar(xs, ys, width, label=p)
        for bar, y in zip(bars, ys):
            ax.annotate(f"{y:.3g}s", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks([i + width * (len(providers) - 1) / 2 for i in range(len(batches))])
    ax.set_xticklabels([f"batch {b}" for b in batches])
    ax.set_ylabel("seconds per image (log)")
    ax.set_title(f"{rows[0]['model']} sampling on {rows[0]['machine']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    """``python -m pixelaux.bench --worker SPEC`` runs one measurement (the subprocess of
    :func:`run_benchmark`); any other arguments are those of ``pixelaux bench``, which
    :mod:`pixelaux.cli` parses."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        print(json.dumps(measure(json.loads(argv[1]))))
        return 0
    from .cli import main as cli_main
    return cli_main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(main())
