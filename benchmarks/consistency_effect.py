"""Issue 20.6(a): what consistent decoding gives an existing model with no retraining.

Evaluates models on the held-out natural-image patches (``pixelaux.data.natural_patches("test")``)
twice: as trained (``consistent=False``: the auxiliary-variable bound) and with consistent
decoding turned on at load (``consistent=True``: each channel truncated to the values that
keep the auxiliary image, the exact likelihood), and prints a Markdown table of bits/dim per
part with the drop. Deterministic (no sampling)::

    python benchmarks/consistency_effect.py                      # the embedded models
    python benchmarks/consistency_effect.py --models runs/a/model.safetensors ...

For the pyramid, turning consistency on also changes the auxiliary images themselves (each
level pooled from the one above instead of from X), so its parts are re-scored, not only
truncated; the gray view is the same either way.
"""
from __future__ import annotations

import argparse

import torch

import pixelaux
from pixelaux.data import natural_patches


def evaluate(name: str, data: torch.Tensor, batch: int) -> list[str]:
    rows = []
    out = {}
    for consistent in (False, True):
        model = pixelaux.load(name, consistent=consistent)
        x = data if tuple(data.shape[2:]) == tuple(model.image_size) else None
        if x is None:
            x = natural_patches("test", size=model.image_size).long()
        with torch.no_grad():
            parts = pixelaux.bits_per_dim(model, x.long(), parts=True, batch_size=batch)
        out[consistent] = {k: v.mean().item() for k, v in parts.items()}
    for part in out[False]:
        a, b = out[False][part], out[True][part]
        rows.append(f"| {name} | {part} | {a:.4f} | {b:.4f} | {a - b:+.4f} |")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["default", "pyramid"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = natural_patches("test", size=32)
    print(f"held-out patches: {len(data)} (natural_patches('test'), 32x32)\n")
    print("| model | part | bound (as trained) | consistent | drop |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name in args.models:
        for row in evaluate(name, data, args.batch):
            print(row, flush=True)


if __name__ == "__main__":
    main()
