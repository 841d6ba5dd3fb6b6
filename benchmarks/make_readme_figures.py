"""The pictures in README.md, from the embedded models and held-out photographs.

    python benchmarks/make_readme_figures.py --out docs/images

Writes samples of each embedded model, a colorization, an upscaling and a completion
of test patches (photographs never seen in training), each a small PNG grid, and
prints the bits/dim of the embedded models on the test patches.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import pixelaux
from pixelaux.data import natural_patches
from pixelaux.images import save_grid


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gen = lambda: torch.Generator().manual_seed(args.seed)   # noqa: E731
    default, pyramid = pixelaux.load("default"), pixelaux.load("pyramid")
    test = natural_patches("test", 32)
    pick = test[torch.randperm(len(test), generator=gen())[:4]]

    for name, model in (("default", default), ("pyramid", pyramid)):
        t0 = time.perf_counter()
        x = pixelaux.sample(model, 16, generator=gen(), progress=False)
        print(f"{name}: 16 samples in {time.perf_counter() - t0:.2f} s")
        save_grid(x, f"{args.out}/samples_{name}.png", nrow=8, scale=3)
    x = pixelaux.sample(default, 16, generator=gen(), temperature=0.8, progress=False)
    save_grid(x, f"{args.out}/samples_default_t08.png", nrow=8, scale=3)

    # Colorization: the gray view of each test patch, then 3 colourings, then the original.
    col = pixelaux.colorize(default, pick, samples=3, generator=gen(), progress=False)
    gray = (default.gray(pick) * 17).expand(-1, 3, -1, -1)
    rows = torch.cat([gray.unsqueeze(1), col, pick.long().unsqueeze(1)], dim=1)    # (4, 5, 3, 32, 32)
    save_grid(rows.flatten(0, 1), f"{args.out}/colorize.png", nrow=5, scale=3)

    # Super-resolution: 16x16 level of each test patch (shown enlarged), 3 upscalings, original.
    low = pixelaux.build_pyramid(pick.long(), 2)[1]
    up = pixelaux.upscale(pyramid, low, samples=3, generator=gen(), progress=False)
    big = low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    rows = torch.cat([big.unsqueeze(1), up, pick.long().unsqueeze(1)], dim=1)
    save_grid(rows.flatten(0, 1), f"{args.out}/upscale.png", nrow=5, scale=3)

    # Completion: the top half kept, the bottom half sampled; masked input, 3 completions, original.
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[16:] = True
    comp = pixelaux.complete(default, pick, mask, samples=3, generator=gen(), progress=False)
    shown = pick.long().clone()
    shown[:, :, 16:] = 0
    rows = torch.cat([shown.unsqueeze(1), comp, pick.long().unsqueeze(1)], dim=1)
    save_grid(rows.flatten(0, 1), f"{args.out}/complete.png", nrow=5, scale=3)

    for name, model in (("default", default), ("pyramid", pyramid)):
        parts = pixelaux.bits_per_dim(model, test, parts=True)
        print(f"{name}: test bits/dim " + ", ".join(f"{k}={v.mean():.3f}" for k, v in parts.items()))
    print(f"wrote {args.out}/*.png")


if __name__ == "__main__":
    main()
