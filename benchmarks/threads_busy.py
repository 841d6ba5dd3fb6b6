"""Issue 19, item 6: does the C++ engine's default thread setting pick what is fast, on a
quiet machine and with one other busy process?

    python benchmarks/threads_busy.py [reps]

For the embedded models (``default``, ``pyramid``) and the bench presets (``bench-32``,
``bench-pp32``, ``pyramid-64``), at batch 1 and 16, whole ``pixelaux.sample(...,
backend="cpp")`` calls (every stage, encoders included) are timed under three settings,
alternately, best of ``reps`` each:

* ``default``: torch's threads (2 here) and the engine's auto mode, what users get;
* ``1 thread``: ``torch.set_num_threads(1)``;
* ``2 threads``: torch's threads with the split forced: at batch 1 a team over the output
  channels (mode 2), at batch 16 the images over the threads (mode 1).

then again with one other process spinning on a core (``python -c "while True: pass"``).
Prints a markdown table, ms per image, and the default's ratio to the better fixed choice
(item 6: at most 1.1 quiet, at most 1.5 busy).
"""
import contextlib
import subprocess
import sys
import time

import torch

import pixelaux
from pixelaux import bench, resources, sampling


@contextlib.contextmanager
def forced_mode(mode):
    """Every cached C++ stage run with ``mode`` (0 auto, 1 images, 2 team)."""
    runner = sampling.engines.runner

    def with_mode(engine, backend, kind="GatedPixelCNN"):
        run = runner(engine, backend, kind)
        if backend != "cpp" or not mode:
            return run
        return lambda *a, **k: run(*a, mode=mode, **k)
    sampling.engines.runner = with_mode
    try:
        yield
    finally:
        sampling.engines.runner = runner


def per_image_ms(model, batch, setting):
    threads, mode = {"default": (None, 0), "1 thread": (1, 0), "2 threads": (None, 2 if batch == 1 else 1)}[setting]
    with contextlib.ExitStack() as stack:
        if threads:
            stack.enter_context(resources.num_threads(threads))
        stack.enter_context(forced_mode(mode))
        g = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        pixelaux.sample(model, batch, backend="cpp", generator=g, progress=False)
        return (time.perf_counter() - start) / batch * 1e3


def table(models, reps, busy):
    rows = []
    for name, model in models.items():
        for batch in (1, 16):
            per_image_ms(model, batch, "default")                    # warm-up
            best = {s: float("inf") for s in ("default", "1 thread", "2 threads")}
            for _ in range(reps):
                for s in best:
                    best[s] = min(best[s], per_image_ms(model, batch, s))
            fixed = min(best["1 thread"], best["2 threads"])
            rows.append(f"| {name} | {'busy' if busy else 'quiet'} | {batch} | {best['default']:.1f} | "
                        f"{best['1 thread']:.1f} | {best['2 threads']:.1f} | {best['default'] / fixed:.2f} |")
            print(rows[-1], flush=True)
    return rows


def main(reps=3):
    torch.manual_seed(0)
    models = {"default": pixelaux.load("default"), "pyramid": pixelaux.load("pyramid")}
    for preset in ("bench-32", "bench-pp32", "pyramid-64"):
        torch.manual_seed(0)
        models[preset] = bench.build_model(bench.PRESETS[preset])[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {pixelaux.native.info()}")
    print("| model | machine | batch | default, ms/image | 1 thread | 2 threads (forced split) | default / best fixed |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    table(models, reps, busy=False)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        table(models, reps, busy=True)
    finally:
        spinner.kill()
        spinner.wait()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
