"""Which backends give bitwise the images of the naive engine, on this machine.

    python benchmarks/engine_agreement.py [--model default] [--n 2] [--seed 0] [--threads 1 2]

For each intra-op thread count (each in a fresh process, so the setting is clean) the
script samples ``--n`` images with the same seed from the naive engine and from every
available cached backend, and prints, per backend, how many pixel values differ from
the naive engine of the same thread count and from the naive engine of the first
thread count, with the first few differences as ``(image, channel, row, column):
naive -> backend``. It writes nothing.

A difference is a float tie: the backends add the same products in different orders,
so a value that lands within rounding error of a bin boundary of the output
distribution can fall on the other side (docs/design.md section 3).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

WORKER = """
import json, sys, torch
import pixelaux
from pixelaux.engines import cpp_status
model_name, n, seed, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = pixelaux.load(model_name)
runs = {"naive": dict(engine="naive"), "torch": dict(backend="torch")}
if cpp_status()[0]:
    runs["cpp"] = dict(backend="cpp")
out = {k: pixelaux.sample(model, n, generator=torch.Generator().manual_seed(seed), progress=False, **kw).tolist()
       for k, kw in runs.items()}
print(json.dumps(out))
"""


def _differences(ref, got, limit=4):
    import torch
    ref, got = torch.tensor(ref), torch.tensor(got)
    where = (ref != got).nonzero().tolist()
    shown = [f"{tuple(i)}: {ref[tuple(i)].item()} -> {got[tuple(i)].item()}" for i in where[:limit]]
    return len(where), ref.numel(), shown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    results = {}
    for t in args.threads:
        proc = subprocess.run([sys.executable, "-c", WORKER, args.model, str(args.n), str(args.seed), str(t)],
                              capture_output=True, text=True, check=True)
        results[t] = json.loads(proc.stdout.strip().splitlines()[-1])
    first = args.threads[0]
    print(f"model {args.model!r}, n={args.n}, seed={args.seed}: pixel values that differ")
    for t, runs in results.items():
        for name, images in runs.items():
            same_t, total, shown = _differences(runs["naive"], images)
            vs_first, _, _ = _differences(results[first]["naive"], images)
            print(f"  threads={t} {name:<6} vs naive (threads={t}): {same_t} of {total}"
                  + (f" [{'; '.join(shown)}]" if shown else "")
                  + (f"; vs naive (threads={first}): {vs_first}" if t != first else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
