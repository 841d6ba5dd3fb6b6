"""Issue 20, item 7: the bench pyramid against the flat PixelCNN++ at the same size, timed
alternately in one run (flat, pyramid, the pyramid without consistent decoding; ``rounds``
times per batch size), so that a noisy machine affects both alike.

    python benchmarks/pyramid_vs_flat.py 64 3      # size, rounds
    python benchmarks/pyramid_vs_flat.py 128 2

Both are the ``pixelaux bench`` presets (``flat-pp{size}``, ``pyramid-{size}``, random
weights: speed only), sampled with ``pixelaux.sample(..., backend="cpp")`` as users run it:
the whole chain for the pyramid, encoders included. Prints seconds per image and the ratio.
"""
import statistics
import sys
import time

import torch

import pixelaux
from pixelaux import bench


def per_image(model, batch: int) -> float:
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    pixelaux.sample(model, batch, backend="cpp", generator=g, progress=False)
    return (time.perf_counter() - start) / batch


def main(size: int = 64, rounds: int = 3):
    torch.manual_seed(0)
    flat = bench.build_model(bench.PRESETS[f"flat-pp{size}"])[0]
    torch.manual_seed(0)
    pyr = bench.build_model(bench.PRESETS[f"pyramid-{size}"])[0]
    for b in (1, 16):
        per_image(flat, b), per_image(pyr, b)                   # warm-up
        ratios, fs, ps = [], [], []
        for r in range(rounds):
            f, p = per_image(flat, b), per_image(pyr, b)
            pyr.consistent = False
            q = per_image(pyr, b)
            pyr.consistent = True
            fs.append(f), ps.append(p), ratios.append(f / p)
            print(f"size {size} batch {b} round {r}: flat {f:.4f} s/img  pyramid {p:.4f} (without consistency "
                  f"{q:.4f})  ratio {f / p:.1f}x", flush=True)
        print(f"size {size} batch {b}: median flat {statistics.median(fs):.4f} pyramid {statistics.median(ps):.4f} "
              f"ratio median {statistics.median(ratios):.1f}x min {min(ratios):.1f}x", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
