"""Digests of the images every cached backend samples, for a refactor's bitwise gate.

Issue 19 asks that a rewrite of the engines leave the images of every backend bitwise
what they were, for the same seeds, on the bench presets and the embedded models. This
script samples a fixed set of cases with each available backend and writes the SHA-256
of every result (the ``int64`` images' bytes); ``--check FILE`` samples again and
compares against a file written before the change.

    python benchmarks/engine_digests.py --out benchmarks/results/engine_digests.json
    python benchmarks/engine_digests.py --check benchmarks/results/engine_digests.json

Cases: the bench presets ``bench-32`` and ``bench-pp32`` (random init, seed 0, batch 2),
the embedded ``default`` and ``pyramid`` models (batch 2), and small models with every
input kind (a cond map, a cond vector, token inputs, known pixels) that the Triton
backend also runs under its interpreter. The same uniforms feed every backend, so the
images of different backends agree except at ties; a digest compares one backend with
itself across the change. Digests depend on the machine's kernels (C++ kernel family,
oneDNN), so compare on one machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import pixelaux  # noqa: E402
from pixelaux import bench, engines, pretrained  # noqa: E402

TINY_GATED = dict(channels=3, bits=4, hidden=16, blocks=2, dist="logistic", nr_mix=3)
TINY_PP = dict(channels=3, bits=4, hidden=8, blocks=1, scales=2, dropout=0.0, dist="logistic", nr_mix=3)


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def cases():
    """``(name, backends, make)``: ``make(backend)`` returns the sampled images."""
    out = []
    for preset in ("bench-32", "bench-pp32"):
        def make(backend, preset=preset):
            torch.manual_seed(0)
            model, size = bench.build_model(bench.PRESETS[preset])
            return pixelaux.sample(model, 2, backend=backend, generator=_seeded(), progress=False)
        out.append((preset, ("torch", "cpp"), make))
    for name in pretrained.PRETRAINED:
        def make(backend, name=name):
            model = pixelaux.load(name)
            return pixelaux.sample(model, 2, backend=backend, generator=_seeded(), progress=False)
        out.append((f"embedded-{name}", ("torch", "cpp"), make))
    every = ("torch", "cpp", "triton")
    for arch, cfg in (("gated", TINY_GATED), ("pp", TINY_PP)):
        cls = pixelaux.GatedPixelCNN if arch == "gated" else pixelaux.PixelCNNpp
        for variant in ("plain", "cond-map", "cond-vector", "tokens", "known"):
            def make(backend, cls=cls, cfg=cfg, variant=variant):
                torch.manual_seed(1)
                kw = dict(cfg)
                if variant.startswith("cond"):
                    kw["cond_channels"] = 3
                if variant == "tokens":
                    kw.update(channels=1, dist="categorical", embed_dim=4)
                model = cls(**kw, image_size=(8, 8)).eval()
                g = torch.Generator().manual_seed(2)
                cond = known = None
                if variant == "cond-map":
                    cond = torch.randn(2, 3, 8, 8, generator=g)
                elif variant == "cond-vector":
                    cond = torch.randn(2, 3, generator=g)
                elif variant == "known":
                    known = torch.randint(0, 16, (2, model.channels, 8, 8), generator=g)
                    known[torch.rand(2, 1, 8, 8, generator=g).expand_as(known) < 0.6] = -1
                return pixelaux.sample(model, 2, backend=backend, generator=_seeded(), cond=cond, known=known,
                                       progress=False)
            out.append((f"tiny-{arch}-{variant}", every, make))
    return out


def available(backend: str) -> bool:
    if backend == "triton":
        return os.environ.get("TRITON_INTERPRET") == "1" and engines.triton_status(torch.device("cpu"))[0]
    return engines.REGISTRY[backend].available(torch.device("cpu"))[0]


def measure() -> dict:
    digests = {}
    for name, backends, make in cases():
        for backend in backends:
            if not available(backend):
                continue
            t = time.perf_counter()
            digests[f"{name}/{backend}"] = _digest(make(backend))
            print(f"{name}/{backend}: {digests[f'{name}/{backend}'][:16]}  {time.perf_counter() - t:.1f} s",
                  flush=True)
    return digests


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", help="write the digests to this JSON file")
    g.add_argument("--check", help="compare with the digests in this JSON file")
    args = p.parse_args(argv)
    digests = measure()
    if args.out:
        record = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=bench.machine_name("cpu"),
                      torch=torch.__version__, cpu_kernels=os.environ.get("PIXELAUX_CPU_KERNELS", "auto"),
                      command="TRITON_INTERPRET=1 python benchmarks/engine_digests.py --out " + args.out,
                      digests=digests)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
        return 0
    with open(args.check) as f:
        want = json.load(f)["digests"]
    bad = [k for k in want if k in digests and digests[k] != want[k]]
    missing = [k for k in want if k not in digests]
    for k in bad:
        print(f"DIFFERS: {k}")
    print(f"{len(want) - len(bad) - len(missing)} equal, {len(bad)} differ, {len(missing)} not run")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
