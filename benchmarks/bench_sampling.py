"""Naive vs cached sampling, every backend, one run: see ``pixelaux.bench``.

    python benchmarks/bench_sampling.py --batch 1 16 \
        --csv benchmarks/results/sampling.csv --plot benchmarks/results/sampling.png
"""
import sys

from pixelaux.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
