"""Reproducibility: the same seed gives the same images across engines and backends,
batch sizes, chunked calls and processes with other thread counts.
"""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

import pixelaux
from pixelaux.engines import cached_triton
from reliability_helpers import (  # noqa: F401 (fixtures)
    BACKENDS, FILES, KINDS, files, gen, models, one_thread_and_report)

pytestmark = pytest.mark.usefixtures("one_thread_and_report")


# --------------------------------------------------------------------------- reproducibility

@pytest.mark.parametrize("kind", KINDS)
def test_backends_and_naive_engine_give_the_same_images(models, kind):
    """Same seed -> same images through ``pixelaux.sample`` for the naive engine and every
    backend (torch, cpp if built, triton under the interpreter on tiny shapes)."""
    m = models[kind]
    size = (4, 4) if kind == "pyramid" else (4, 5)
    ref = pixelaux.sample(m, 4, size=size, engine="naive", generator=gen(21), progress=False)
    for backend in BACKENDS:
        if backend == "triton":
            s = (2, 2) if kind != "gated" else (2, 3)
            r = pixelaux.sample(m, 2, size=s, engine="naive", generator=gen(22), progress=False)
            got = pixelaux.sample(m, 2, size=s, backend="triton", generator=gen(22), progress=False)
        else:
            r, got = ref, pixelaux.sample(m, 4, size=size, backend=backend, generator=gen(21), progress=False)
        differ = (got != r).sum().item()
        assert differ == 0, f"{kind} backend={backend}: {differ} of {r.numel()} pixel values differ from naive"
    assert ref.float().std() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["naive"] + [b for b in BACKENDS if b != "triton"])
def test_image_k_is_the_same_in_a_batch_of_8_and_of_16(models, kind, backend):
    m = models[kind]
    eng = dict(engine="naive") if backend == "naive" else dict(backend=backend)
    size = (4, 4) if kind == "pyramid" else (3, 4)
    a = pixelaux.sample(m, 8, size=size, generator=gen(5), progress=False, **eng)
    b = pixelaux.sample(m, 16, size=size, generator=gen(5), progress=False, **eng)
    assert torch.equal(a, b[:8])
    # and in chunks: two calls sharing one generator give the images of one call
    g = gen(5)
    c = torch.cat([pixelaux.sample(m, k, size=size, generator=g, progress=False, **eng) for k in (3, 5, 8)])
    assert torch.equal(c, b)


def test_triton_batch_size_invariance_tiny(models):
    """The batch test above for the interpreted Triton backend, on 2x2 images; where
    triton cannot run, its status must say why."""
    ok, why = cached_triton.status(torch.device("cpu"))
    if not ok:
        assert why
        return
    m = models["gated"]
    a = pixelaux.sample(m, 2, size=(2, 2), backend="triton", generator=gen(5), progress=False)
    b = pixelaux.sample(m, 3, size=(2, 2), backend="triton", generator=gen(5), progress=False)
    assert torch.equal(a, b[:2])


_SUBPROCESS_SAMPLER = """
import hashlib, sys, torch
torch.set_num_threads(2)
import pixelaux
for path in sys.argv[1:]:
    m = pixelaux.load(path)
    for backend in ("auto", "torch"):
        x = pixelaux.sample(m, 3, backend=backend, generator=torch.Generator().manual_seed(17), progress=False)
        print(hashlib.sha256(x.numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow                    # a fresh Python process
@pytest.mark.usefixtures("files")
def test_same_seed_same_images_in_another_process_with_other_threads():
    """A fresh process with 2 intra-op threads (default and torch backends) draws the
    images this one draws with 1 thread (default backend)."""
    paths = [str(FILES[k]) for k in KINDS]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _SUBPROCESS_SAMPLER, *paths], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    here = []
    for p in paths:
        x = pixelaux.sample(pixelaux.load(p), 3, generator=gen(17), progress=False)
        here += [hashlib.sha256(x.numpy().tobytes()).hexdigest()] * 2
    assert out.stdout.split() == here
