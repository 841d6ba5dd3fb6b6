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

**Composite models** (a preset with ``kind``: ``pyramid-64``, ``pyramid-128``, random
weights, the model's own init from the seed). A cached provider times
``pixelaux.sample(model, batch, backend=..., generator=..., progress=False)``: the whole
chain as users run it (every stage, every encoder, the uniforms, the memory estimate);
``forward`` times ``model.log_prob`` (one forward pass of every stage and every
encoder), so ``overhead`` and ``GFLOP/s`` mean what they mean for one stage. The naive
provider is extrapolated *per stage*: each stage is timed on a prefix of
``--naive-pixels`` of its own pixels given its encoder's map, scaled to its ``h*w``,
and the stages and encoders (run once each, timed whole) are summed; its ``GFLOP/s``
counts each stage's forward pass ``h*w`` times. One more figure, from the same timed
run:

* ``enc %`` (CSV ``encoder_fraction``): the share of the provider's time spent in the
  conditioning encoders (:class:`EncoderClock`: ``time.perf_counter`` around each
  encoder's run, the device synchronized first on CUDA; sampling may run an encoder in
  C++). The clock only reads the time, so the sampled images are those without it.
  The cond terms that a stage computes from the map (its 1x1 convs) count with the
  stage. Empty for one-stage models.

The flat/pyramid pair ``flat-pp64`` / ``pyramid-64`` (and ``flat-pp128`` / ``pyramid-128``)
is issue 20's speed claim side by side, run one after the other into the same ``--csv``
(every model writes the columns :data:`CSV_COLUMNS`): :func:`_pyramid` says why its
settings are fair.

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

#: The flat PixelCNN++ of issue 20's speed claim: the public code's topology, 80 filters,
#: 5 blocks per scale, 3 scales, 10 logistics, no dropout (sampling does not use it).
_FLAT_PP = dict(arch="pixelcnnpp", channels=3, bits=8, hidden=80, blocks=5, scales=3, dropout=0.0,
                dist="logistic", nr_mix=10)


def _pyramid(size: int) -> dict:
    """The pyramid of issue 20's speed claim, ``8 -> 16 -> ... -> size``, RGB. Why these
    settings are a fair opponent for ``_FLAT_PP`` at the same ``size``:

    * the seed level (8x8) *is* the flat model's network (PixelCNN++, 80 filters, 5 blocks,
      3 scales, 10 logistics): the level that decides the global structure keeps all of
      the flat model's capacity, and both models have about the same parameters (13.7M
      against 13.4M at 64x64), so the pyramid is not faster by being a smaller model;
    * the upper levels are small, as in the paper: given the level below, a pixel needs
      local detail only (the global context comes through the encoder), so each is one
      gated block of 32 channels (kernel 3) with the same output distribution
      (10 logistics), the smallest of the issue's "one- to three-block gated stacks";
    * each upper level reads the level below through the pyramid's default encoder, the
      plain U-net, at 16 channels (its map is 32 wide, the level's width): at 64x64 the
      encoders are about 7% of the model's forward FLOPs, where the authors' gated U-net
      at the same width would be 20%; they run once per level and batch, and ``enc %``
      reports their share of the sampling time.
    """
    upper = dict(arch="gated", hidden=32, blocks=1, kernel_size=3, nr_mix=10, dropout=0.0, encoder="unet",
                 encoder_hidden=16)
    seed = {k: _FLAT_PP[k] for k in ("arch", "hidden", "blocks", "scales", "nr_mix", "dropout")}
    levels = (size // 8).bit_length()           # 8 -> 16 -> ... -> size
    return dict(kind="PyramidPixelCNN", channels=3, bits=8, dist="logistic", seed_size=8, size=size,
                per_level=[seed] + [dict(upper) for _ in range(levels - 1)])


#: Model configurations: a stage's keyword arguments (``arch``: ``"gated"``, the default,
#: or ``"pixelcnnpp"``) or, with ``kind``, a composite model's (``PyramidPixelCNN``); and
#: ``size``, the square image side.
PRESETS = {
    "bench-32": dict(channels=3, bits=8, hidden=64, blocks=8, dist="logistic", nr_mix=10, size=32),
    "tiny-16": dict(channels=3, bits=8, hidden=16, blocks=2, dist="logistic", nr_mix=5, size=16),
    # PixelCNN++ over 3 resolutions (32, 16, 8), the public code's topology with 80 filters
    "bench-pp32": dict(arch="pixelcnnpp", channels=3, bits=8, hidden=80, blocks=5, scales=3, dropout=0.0,
                       dist="logistic", nr_mix=10, size=32),
    # issue 20's speed claim: the flat PixelCNN++ and the pyramid with small upper levels
    # (see _pyramid for why the pair is fair), at 64x64 and 128x128
    "flat-pp64": dict(_FLAT_PP, size=64),
    "pyramid-64": _pyramid(64),
    "flat-pp128": dict(_FLAT_PP, size=128),
    "pyramid-128": _pyramid(128),
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


def build_model(config: dict, device="cpu"):
    """``(model, size)`` of a bench configuration (a :data:`PRESETS` value), in eval mode on
    ``device``, with the weights of the model's own init from torch's current seed."""
    import pixelaux
    cfg = dict(config)
    size = cfg.pop("size")
    kind = cfg.pop("kind", None)
    if kind is not None:
        from .checkpoint import model_class
        return model_class(kind)(**cfg, image_size=(size, size)).to(device).eval(), size
    cls = pixelaux.PixelCNNpp if cfg.pop("arch", "gated") == "pixelcnnpp" else pixelaux.GatedPixelCNN
    return cls(**cfg, image_size=(size, size)).to(device).eval(), size


def encoder_modules(model) -> list:
    """The conditioning encoders of a composite model, each once, in the order sampling
    runs them (the encoder of the level above the seed first); ``[]`` for one stage."""
    from .auxiliary import chain, is_composite
    if not is_composite(model):
        return []
    found = {}
    for link in reversed(chain(model)):
        if link.owner is not None:
            found.setdefault(id(link.owner.encoder), link.owner.encoder)
    return list(found.values())


class EncoderClock:
    """The time spent in the conditioning encoders of ``model`` while entered: ``calls[k]``,
    how many times encoder ``k`` (of :func:`encoder_modules`) ran, and ``seconds``, the wall
    time inside them (``time.perf_counter``; on CUDA the device is synchronized first, so
    the time is the encoder's). Two clocks, never both for one call: sampling's
    ``sampling._encode`` (wrapped while entered; it may run an encoder in C++, outside its
    module), and forward hooks on the encoder modules for the calls outside it
    (``log_prob``). Both only read the clock: the model computes what it computes without
    them. ``reset()`` zeroes both figures."""

    def __init__(self, model, device="cpu"):
        import torch
        self.modules = encoder_modules(model)
        self.cuda = torch.device(device).type == "cuda"
        self._handles, self._started, self._inside, self._unwrap = [], {}, 0, None
        self.reset()

    def reset(self):
        self.seconds = 0.0
        self.calls = [0] * len(self.modules)

    def _now(self) -> float:
        if self.cuda:
            import torch
            torch.cuda.synchronize()
        return time.perf_counter()

    def _count(self, module, seconds: float):
        for k, m in enumerate(self.modules):
            if m is module:
                self.calls[k] += 1
        self.seconds += seconds

    def __enter__(self):
        from . import sampling
        encode = sampling._encode

        def timed_encode(link, image):
            start = self._now()
            self._inside += 1
            try:
                return encode(link, image)
            finally:
                self._inside -= 1
                self._count(link.owner.encoder, self._now() - start)
        sampling._encode = timed_encode
        self._unwrap = lambda: setattr(sampling, "_encode", encode)
        for k, module in enumerate(self.modules):
            def start(mod, args, k=k):
                if not self._inside:
                    self._started[k] = self._now()

            def stop(mod, args, out, k=k):
                if k in self._started:
                    self._count(mod, self._now() - self._started.pop(k))
            self._handles += [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._unwrap is not None:
            self._unwrap()
            self._unwrap = None
        return False


def _naive_chain(model, b: int, size: int, naive_pixels: int, gen, device):
    """The naive engine over a composite's chain (innermost stage first), extrapolated per
    stage: ``(fn, flops, extrapolated)``. ``fn()`` runs each encoder once (timed whole) and
    each stage on a prefix of ``min(naive_pixels, h*w)`` of its pixels given that map
    (timed and scaled to its ``h*w``) and returns the summed seconds; ``flops``: what a
    whole naive run performs (each stage's forward pass ``h*w`` times, each encoder once).
    The auxiliary images are the views of one random image (what a sample holds)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import sampling
    from .auxiliary import chain
    from .engines import runner
    from .uniforms import ImageUniforms

    links = chain(model, (size, size))
    xr = torch.randint(0, 2 ** model.bits, (b, model.channels, size, size), generator=gen).to(device)
    views = model.views(xr)
    run = runner("naive", None)
    work, flops, extrapolated = [], 0, False
    for i in reversed(range(len(links))):
        link = links[i]
        h, w = link.size
        view = views[i + 1] if link.owner is not None else None
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            cond = None if view is None else link.cond(view)
        flops += counter.get_total_flops()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            link.stage.forward_unchecked(views[i], cond)
        flops += counter.get_total_flops() * h * w
        k = min(naive_pixels, h * w)
        extrapolated |= k != h * w
        u = ImageUniforms(b, gen).draw(h, w, link.stage.dist.num_uniforms)
        x0 = torch.zeros(b, link.channels, h, w, dtype=torch.long, device=device)
        work.append((link, view, x0, u, k, h * w / k))

    def fn():
        total = 0.0
        for link, view, x0, u, k, scale in work:
            t0 = time.perf_counter()
            cond = None if view is None else sampling._encode(link, view)    # as pixelaux.sample runs it
            _sync(device)
            t1 = time.perf_counter()
            run(link.stage, x0, None, cond, u, 1.0, max_pixels=k)
            _sync(device)
            total += (t1 - t0) + (time.perf_counter() - t1) * scale
        return total
    return fn, flops, extrapolated


def measure(spec: dict) -> dict:
    """One measurement (runs in the worker process). ``spec``: provider, config, batch,
    device, seed, naive_pixels, repeat, threads. Returns ``seconds`` (the batch, the best
    repetition; extrapolated for naive), ``peak_mib``, ``extrapolated``, ``flops`` (gemm and
    forward: counted; a composite's naive: what the whole run performs; else ``None``) and
    ``encoder_seconds`` (a composite: the time inside its encoders in that repetition;
    else ``None``)."""
    import torch

    import pixelaux
    from pixelaux.auxiliary import is_composite
    from pixelaux.engines import runner
    from pixelaux.uniforms import ImageUniforms

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(spec["seed"])
    model, size = build_model(spec["config"], device)
    composite = is_composite(model)
    b, provider = spec["batch"], spec["provider"]
    gen = torch.Generator().manual_seed(spec["seed"])
    if not composite:
        u = ImageUniforms(b, gen).draw(size, size, model.dist.num_uniforms)
        x0 = torch.zeros(b, model.channels, size, size, dtype=torch.long, device=device)
    pixels = size * size
    flops = None
    self_timed = extrapolated = False     # self_timed: fn() returns its own (extrapolated) seconds
    if provider == "gemm":
        # The machine's own fp32 GEMM rate on the same threads: the roofline of the figures.
        a = torch.randn(GEMM_N, GEMM_N, device=device)
        bm = torch.randn(GEMM_N, GEMM_N, device=device)
        fn = lambda: torch.mm(a, bm)
        flops, scale = 2 * GEMM_N ** 3, 1.0
    elif provider == "forward":
        # A realistic input: random pixels, never zeros.
        xr = torch.randint(0, 2 ** model.bits, (b, model.channels, size, size), generator=gen).to(device)
        fn = (lambda: model.log_prob(xr)) if composite else (lambda: model.forward_unchecked(xr))
        scale = 1.0
        from torch.utils.flop_counter import FlopCounterMode
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        flops = counter.get_total_flops()
    elif provider == "naive" and composite:
        fn, flops, extrapolated = _naive_chain(model, b, size, spec["naive_pixels"], gen, device)
        scale, self_timed = 1.0, True
    elif provider == "naive":
        k = min(spec["naive_pixels"], pixels)
        run = runner("naive", None)
        fn = lambda: run(model, x0, None, None, u, 1.0, max_pixels=k)
        scale = pixels / k
    elif composite:
        backend = provider.split("-", 1)[1]
        pixelaux.sampling.resolve_engine(model, "cached", backend)      # clear error if unavailable
        seed = spec["seed"]
        fn = lambda: pixelaux.sample(model, b, backend=backend, generator=torch.Generator().manual_seed(seed),
                                     progress=False)
        scale = 1.0
    else:
        backend = provider.split("-", 1)[1]
        pixelaux.engines.resolve("cached", backend, device, kinds=(model.kind,))  # clear error if unavailable
        run = runner("cached", backend, model.kind)
        fn = lambda: run(model, x0, None, None, u, 1.0)
        scale = 1.0
    clock = EncoderClock(model, device)
    with torch.no_grad(), clock:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss0 = _rss_mib()                                         # model and inputs are built
        fn()                                                      # warm-up
        _sync(device)
        times, encoder_times = [], []
        for _ in range(spec["repeat"]):
            clock.reset()
            t0 = time.perf_counter()
            out = fn()
            _sync(device)
            times.append(out if self_timed else time.perf_counter() - t0)
            encoder_times.append(clock.seconds)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0)
    best = min(range(len(times)), key=times.__getitem__)
    return {"seconds": times[best] * scale, "peak_mib": peak, "extrapolated": scale != 1.0 or extrapolated,
            "flops": flops, "encoder_seconds": encoder_times[best] if composite else None}


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


#: the CSV's columns, in order, for every model (``encoder_fraction`` is empty for one stage),
#: so rows of a flat and a composite preset share one file
CSV_COLUMNS = ("date", "device", "machine", "model", "config", "batch", "provider", "seconds_per_image",
               "seconds_batch", "forward_seconds_batch", "speedup", "overhead", "gflops", "gemm_gflops",
               "fraction_of_gemm", "peak_mib", "extrapolated", "encoder_fraction")


def check_csv(path, name="csv_path"):
    """``ValueError`` naming ``name`` unless ``path`` is ``None``, new, empty, or a CSV whose
    header is :data:`CSV_COLUMNS` (rows are appended under it; a file written before a
    column was added would get rows that do not match its header)."""
    if not path or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
    except (UnicodeDecodeError, csv.Error):
        raise ValueError(f"{name} {path}: is not a CSV text file; append to a new file") from None
    if header != list(CSV_COLUMNS):
        missing = [c for c in CSV_COLUMNS if c not in header]
        extra = [c for c in header if c not in CSV_COLUMNS]
        what = "; ".join(x for x in (missing and f"lacks {', '.join(missing)}",
                                     extra and f"has {', '.join(extra)} too") if x)
        what = what or "its columns are in another order"
        raise ValueError(f"{name} {path}: its header is not this bench's columns ({what}); append to a new file")


def check_arguments(preset="bench-32", batches=(1,), providers=(), naive_pixels=8, repeat=1, threads=None,
                    plot_path=None, csv_path=None):
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
    check_csv(csv_path)


def _percent(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def run_benchmark(preset="bench-32", batches=(1, 16), providers=("naive", "cached-torch", "cached-cpp"),
                  device="cpu", seed=0, naive_pixels=8, repeat=1, csv_path=None, plot_path=None,
                  threads=None, config=None, log=print):
    """Run the table; returns the rows (dicts with the keys :data:`CSV_COLUMNS`). Appends
    them to ``csv_path`` and plots to ``plot_path`` when given (checked before anything
    runs: matplotlib must be importable for a plot, an existing CSV must have this
    bench's header). ``config`` replaces the preset's configuration. For a composite
    model (``config["kind"]``) the table has an ``enc %`` column: the share of each
    provider's time spent in the conditioning encoders (``encoder_fraction`` in the rows;
    ``None`` for one stage)."""
    check_arguments(preset if config is None else None, batches, providers, naive_pixels, repeat, threads,
                    plot_path, csv_path)
    config = dict(config or PRESETS[preset])
    composite = "kind" in config
    rows = []
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = machine_name(device)
    log(f"pixelaux sampling benchmark  {stamp}  device={device} ({machine})  model={preset} {config}")
    header = (f"{'batch':>5} {'provider':<14} {'s/img':>10} {'speedup':>9} {'overhead':>9} {'GFLOP/s':>8} "
              f"{'of GEMM':>8} {'peak MiB':>9}" + (f" {'enc %':>6}" if composite else ""))
    enc = lambda r: f" {_percent(r['encoder_seconds'] / r['seconds']):>6}" if composite else ""  # noqa: E731
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
            f"{fwd_rate / gemm_rate:>8.2f} {fwd['peak_mib']:>9.1f}{enc(fwd)}")
        for p, r in results.items():
            if "error" in r:
                log(f"{b:>5} {p:<14} unavailable: {r['error']}")
                continue
            speedup = t_naive / r["seconds"] if t_naive else float("nan")
            overhead = r["seconds"] / fwd["seconds"]
            # Exact cached sampling performs one forward pass of FLOPs; naive H*W of them (a
            # composite's naive run counts its own: each stage's forward pass h*w times).
            work = r.get("flops") or fwd["flops"] * (size_pixels(config) if p == "naive" else 1)
            rate = work / r["seconds"]
            note = (" (extrapolated per stage)" if composite else " (extrapolated)") if r["extrapolated"] else ""
            log(f"{b:>5} {p:<14} {r['seconds'] / b:>10.4f} {speedup:>9.1f} {overhead:>9.2f} {rate / 1e9:>8.1f} "
                f"{rate / gemm_rate:>8.2f} {r['peak_mib']:>9.1f}{enc(r)}{note}")
            share = r["encoder_seconds"] / r["seconds"] if r.get("encoder_seconds") is not None else None
            rows.append(dict(date=stamp, device=device, machine=machine, model=preset,
                             config=json.dumps(config, sort_keys=True), batch=b, provider=p,
                             seconds_per_image=r["seconds"] / b, seconds_batch=r["seconds"],
                             forward_seconds_batch=fwd["seconds"], speedup=speedup, overhead=overhead,
                             gflops=rate / 1e9, gemm_gflops=gemm_rate / 1e9, fraction_of_gemm=rate / gemm_rate,
                             peak_mib=r["peak_mib"], extrapolated=r["extrapolated"], encoder_fraction=share))
    if csv_path and rows:
        new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
        os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
        with open(csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
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
    :func:`run_benchmark`). The benchmark's command line is ``pixelaux bench``
    (:mod:`pixelaux.cli`, which imports this module, not the other way round)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--worker"] or len(argv) != 2:
        print("usage: python -m pixelaux.bench --worker SPEC (the benchmark's own subprocess); "
              "run the benchmark with `pixelaux bench ...`", file=sys.stderr)
        return 2
    print(json.dumps(measure(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
