"""Which backends give bitwise the images of the naive engine on this machine, and why
the others do not (the tie report).

    python benchmarks/engine_agreement.py [--model default] [--n 2] [--seed 0] [--threads 1 2]
                                          [--families generic avx2 avx512f]

For each intra-op thread count, each in a fresh process (so the setting is clean), the
script samples ``--n`` images with the same seed from the naive engine, the ``torch``
backend and, once per C++ kernel family (``PIXELAUX_CPU_KERNELS``: read once per
process; a family this CPU lacks is skipped), the ``cpp`` backend. It prints, per
backend, how many pixel values differ from the naive engine of the same thread count,
and for every image that differs the tie report of its first difference (raster order,
in the stage sampled first): the two engines' parameters there, how far apart they are
(relative to their scale) and whether each engine's value is what its own parameters
give with the shared uniform. Both true: a float tie, the uniform fell within rounding
error of a bin boundary, and the pixels sampled after it may follow the other value.
Last, per engine, how many values differ between the thread counts. It writes nothing.

The backends add the same products in different orders (docs/design.md section 2.7),
so such ties are expected; a difference that is not a tie is a bug.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

FAMILIES = ("generic", "avx2", "avx512f")

WORKER = """
import sys, torch
import pixelaux
from pixelaux import engines, native
model_name, n, seed, threads, backend, out = sys.argv[1:7]
n, seed, threads = int(n), int(seed), int(threads)
torch.set_num_threads(threads)
model = pixelaux.load(model_name)
stages, runner = [], engines.runner

def recording(engine, backend, kind):
    run = runner(engine, backend, kind)
    def go(stage, x, known, cond, u, temperature, progress=False):
        if engine == "naive":           # the naive engine's own parameters at each pixel
            w, rows, forward = x.shape[3], [], stage.forward_unchecked
            def step(x_, cond_=None):
                p = forward(x_, cond_)
                i, j = divmod(len(rows), w)
                rows.append(p[:, :, i, j].clone())
                return p
            stage.forward_unchecked = step
            try:
                got = run(stage, x, known, cond, u, temperature, progress=progress)
            finally:
                del stage.forward_unchecked
            params = torch.stack(rows, -1).reshape(*rows[0].shape, x.shape[2], w)
        else:
            got, params = run(stage, x, known, cond, u, temperature, progress=progress, return_params=True)
        stages.append(dict(images=got.cpu(), params=params.cpu(), uniforms=u.cpu(), temperature=temperature))
        return got
    return go

engines.runner = recording
kw = dict(engine="naive") if backend == "naive" else dict(backend=backend)
images = pixelaux.sample(model, n, generator=torch.Generator().manual_seed(seed), progress=False, **kw)
info = native.info().split()[0].split("=")[-1] if backend == "cpp" else ""
torch.save(dict(images=images, stages=stages, family=info), out)
"""


def _tie(dist, a, b, k, i, j):
    """The tie report of image ``k``'s first difference, at ``(i, j)`` of a stage."""
    import torch
    pa, pb = a["params"][k:k + 1, :, i, j], b["params"][k:k + 1, :, i, j]
    err = ((pa - pb).abs().max() / pa.abs().max().clamp(min=1e-30)).item()
    u, t = a["uniforms"][k:k + 1, i, j], a["temperature"]
    own_a = torch.equal(dist.sample_flat(pa, u, t)[0], a["images"][k, :, i, j])
    own_b = torch.equal(dist.sample_flat(pb, u, t)[0], b["images"][k, :, i, j])
    tie = err <= 1e-4 and own_a and own_b
    return (f"params within {err:.1e} of their scale, each value its own params' "
            f"({own_a and own_b}): {'a float tie' if tie else 'NOT A TIE'}")


def _report(model, ref, got):
    """Differing values (final images) and a tie report per differing image."""
    total = ref["images"].numel()
    count = int((ref["images"] != got["images"]).sum())
    lines = []
    dists = [s.dist for s in _sampled_stages(model)]
    for k in range(ref["images"].shape[0]):
        for s, (a, b) in enumerate(zip(ref["stages"], got["stages"])):
            diff = (a["images"][k] != b["images"][k]).any(0)
            if diff.any():
                i, j = divmod(int(diff.flatten().nonzero()[0]), diff.shape[1])
                lines.append(f"image {k}, stage {s} (of {len(ref['stages'])}, in sampling order), "
                             f"first at (row {i}, column {j}): naive {a['images'][k, :, i, j].tolist()} vs "
                             f"{b['images'][k, :, i, j].tolist()}; {_tie(dists[s], a, b, k, i, j)}")
                break
    return count, total, lines


def _sampled_stages(model):
    """The stages in the order ``pixelaux.sample`` runs them (innermost first)."""
    from pixelaux.sampling import check_chain_size, is_composite
    if not is_composite(model):
        return [model]
    return [link.stage for link in reversed(check_chain_size(model, model.image_size))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES,
                   help="C++ kernel families to run the cpp backend with (default: all this CPU has)")
    args = p.parse_args(argv)
    import torch
    import pixelaux
    from pixelaux.engines import cpp_status
    model = pixelaux.load(args.model)
    runs = [("naive", None), ("torch", None)] + ([("cpp", f) for f in args.families] if cpp_status()[0] else [])
    print(f"model {args.model!r}, n={args.n}, seed={args.seed}: pixel values that differ from naive "
          f"(same thread count)")
    runs_at = {}                                     # thread count -> {name: final images}
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.threads:
            seen, ref = set(), None
            runs_at[t] = {}
            for backend, family in runs:
                out = os.path.join(tmp, f"{t}-{backend}-{family}.pt")
                env = dict(os.environ)
                if family:
                    env["PIXELAUX_CPU_KERNELS"] = family
                subprocess.run([sys.executable, "-c", WORKER, args.model, str(args.n), str(args.seed), str(t),
                                backend, out], env=env, check=True)
                got = torch.load(out)
                if backend == "naive":
                    ref = got
                    runs_at[t]["naive"] = got["images"]
                    continue
                name = backend if not family else f"cpp/{got['family']}"
                if name in seen:             # the CPU lacks this family: the run fell back to one shown
                    continue
                seen.add(name)
                runs_at[t][name] = got["images"]
                count, total, lines = _report(model, ref, got)
                print(f"  threads={t} {name:<13} {count} of {total}")
                for line in lines:
                    print(f"      {line}")
    first = args.threads[0]
    for t in args.threads[1:]:
        print(f"pixel values that differ between threads={first} and threads={t}, same engine: " + ", ".join(
            f"{name} {int((images != runs_at[first][name]).sum())}" for name, images in runs_at[t].items()
            if name in runs_at[first]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
