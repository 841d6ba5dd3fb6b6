"""Seconds per training step on CPU with 1 and 2 intra-op threads, idle and next to a busy process.

    python benchmarks/bench_train_threads.py [--sizes 8 32] [--hidden 8] [--blocks 4] [--batch 32]

For each image size and thread count, a fresh process times ``--steps`` training steps
(forward, backward, Adam) of ``GatedPixelCNN(hidden, blocks)`` on random 8-bit images and
prints the median; then the same again while one extra process spins on a core (what
another job on a shared machine does). The load average printed first says how busy
the machine already was. This is the measurement behind the one-thread
default for small models in ``pixelaux.training`` (``threads=None``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

WORKER = """
import sys, time, torch
import pixelaux
size, hidden, blocks, batch, threads, steps = (int(a) for a in sys.argv[1:7])
torch.set_num_threads(threads)
torch.manual_seed(0)
m = pixelaux.GatedPixelCNN(hidden=hidden, blocks=blocks, nr_mix=5, image_size=size)
opt = torch.optim.Adam(m.parameters())
x = torch.randint(0, 256, (batch, 3, size, size))
times = []
for i in range(steps + 2):
    t = time.perf_counter()
    loss = -m.log_prob(x).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
print(" ".join(f"{t:.5f}" for t in times[2:]))
"""


def _time(size, hidden, blocks, batch, threads, steps) -> float:
    out = subprocess.run([sys.executable, "-c", WORKER, *map(str, (size, hidden, blocks, batch, threads, steps))],
                         capture_output=True, text=True, check=True).stdout.split()
    return statistics.median(float(t) for t in out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--hidden", type=int, default=8)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args(argv)
    print(f"GatedPixelCNN(hidden={args.hidden}, blocks={args.blocks}), batch {args.batch}: "
          "median seconds per training step")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'size':>5} {'threads':>7} {'as found':>9} {'+1 busy process':>16}")
    for size in args.sizes:
        for threads in (1, 2):
            idle = _time(size, args.hidden, args.blocks, args.batch, threads, args.steps)
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                busy = _time(size, args.hidden, args.blocks, args.batch, threads, args.steps)
            finally:
                hog.kill()
                hog.wait()
            print(f"{size:>5} {threads:>7} {idle:>9.3f} {busy:>16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
