"""Timings of the cached engine's hot paths (pytest-benchmark; not part of CI, whose
testpaths are tests/):

    python -m pytest benchmarks/ --benchmark-only

* ``rows``: the first two rows of a bench-32 image (two row starts and 64 pixel steps):
  the row GEMMs over the 32 positions and the per-pixel matrix-vector work;
* ``image``: a whole small image (tiny-16), batch 1 and 16 (torch: batch 1), and a
  whole bench-32 image at batch 1 (cpp);
* the same for a ``PixelCNNpp`` (bench-pp32 shape), the cpp backend.

Per backend: ``cpp`` (the C++ engine, its kernel family in extra_info) and ``torch``
(the readable reference). Each benchmark records GFLOP/s of one forward pass of the
timed rows in extra_info. The machine's figures of record come from
``benchmarks/bench_sampling.py`` (ratios to its GEMM rate, in one run).
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pixelaux
from pixelaux import native
from pixelaux.bench import PRESETS

BACKENDS = ["cpp", "torch"]


def build(preset):
    cfg = dict(PRESETS[preset])
    size = cfg.pop("size")
    arch = cfg.pop("arch", "gated")
    torch.manual_seed(0)
    cls = pixelaux.PixelCNNpp if arch == "pixelcnnpp" else pixelaux.GatedPixelCNN
    return cls(**cfg, image_size=(size, size)).eval(), size


def runner(model, backend):
    if backend == "cpp" and not native.available():
        pytest.skip(f"pixelaux._C is not built: {native.reason()}")
    from pixelaux import engines
    kind = type(model).__name__
    return engines.runner("cached", backend, kind)


def forward_flops(model, b, h, w):
    x = torch.zeros(b, model.channels, h, w, dtype=torch.long)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops()


def time_sampling(benchmark, model, backend, b, h, w, rounds):
    run = runner(model, backend)
    x = torch.zeros(b, model.channels, h, w, dtype=torch.long)
    u = torch.rand(b, h, w, model.dist.num_uniforms, generator=torch.Generator().manual_seed(0))
    run(model, x, None, None, u, 1.0)  # warm-up (packs the weights once)
    benchmark.extra_info["kernels"] = native.info() if backend == "cpp" else "torch"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.pedantic(run, args=(model, x, None, None, u, 1.0), rounds=rounds, warmup_rounds=1)
    flops = forward_flops(model, b, h, w)
    best = benchmark.stats.stats.min
    benchmark.extra_info["gflops_per_s"] = round(flops / best / 1e9, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_bench32(benchmark, backend):
    model, size = build("bench-32")
    time_sampling(benchmark, model, backend, 1, 2, size, rounds=10 if backend == "cpp" else 2)


@pytest.mark.parametrize("backend,batch", [("cpp", 1), ("cpp", 16), ("torch", 1)])
def test_image_tiny16(benchmark, backend, batch):
    # (the torch reference at batch 16 takes ~30 s a round: left out)
    model, size = build("tiny-16")
    time_sampling(benchmark, model, backend, batch, size, size, rounds=10 if backend == "cpp" else 1)


def test_image_bench32_batch1_cpp(benchmark):
    model, size = build("bench-32")
    time_sampling(benchmark, model, "cpp", 1, size, size, rounds=5)


def test_rows_bench_pp32_cpp(benchmark):
    model, size = build("bench-pp32")
    time_sampling(benchmark, model, "cpp", 1, 4, size, rounds=5)
