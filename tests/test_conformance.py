"""Conformance of every cached backend to the exactness contract (docs/design.md 2.7),
one grid for all of them: model family x backend x input variant.

* family: ``GatedPixelCNN``, ``PixelCNNpp``;
* backend: ``torch`` (the reference), ``cpp``, ``triton`` (Triton's CPU interpreter, set
  up by ``conftest.py``); a backend that cannot run here is skipped with its reason;
* variant (``CASES``): scaled or token inputs, no conditioning / a cond map / a cond
  vector per image, known pixels, temperatures, odd batches, and per family a spread of
  model options (1/2/3 channels, 1 to 16 bits, both distributions, kernels 1/3/5, 0 to 3
  blocks, 1 to 4 scales).

Two checks per point of the grid, through the public ``engines.runner`` (and
``pixelaux.sample`` for the ``api`` variants):

1. ``test_teacher_forcing_matches_forward``: every pixel known, the engine's parameters
   at each position are the model's forward (``helpers.assert_matches_forward``: as close
   to the float64 forward as torch's own float32 one, the tolerance every engine test
   uses), known pixels kept, input untouched.
2. ``test_same_images_as_naive``: the same uniforms (or seed) give the naive engine's
   images, except where a float tie explains the first difference of an image
   (``helpers.assert_same_images``, the one tie helper); the parameters it sampled with
   are the forward's on its own images; known pixels kept; a temperature other than 1
   gives other images than 1 does. The ``api`` cases sample through ``pixelaux.sample``
   from a seed, and run the engine on that seed's uniforms only to explain a difference
   (their parameters are checked by test 1).

Tiny models with random weights and inputs; the models, inputs and naive references are
built once per module (a module-scoped cache), the naive images shared by the
backends. The backend-specific tests (kernels against their references, op schemas and
fake tensors, progress and Ctrl-C, thread modes, graph and buffer reuse, compile checks)
stay in the per-backend files.
"""
from dataclasses import dataclass

import pytest
import torch

import pixelaux
from helpers import assert_matches_forward, assert_same_images, num_threads, random_gated, random_pp, single_thread
from pixelaux import engines
from pixelaux.engines import naive
from pixelaux.uniforms import ImageUniforms

BACKENDS = tuple(engines.REGISTRY)      # every registered backend: a new one is tested here as it lands


@dataclass(frozen=True)
class Case:
    cfg: dict
    size: tuple
    batch: int
    temperature: float = 1.0
    cond: str = "none"        # "none", "map" (B, C, H, W) or "vector" (B, C)
    known: float = 0.0        # fraction of known pixels in the image test
    api: bool = False         # the image test through pixelaux.sample from a seed
    threads: int = 1          # cpp's threads in the image test (2: images split over threads)
    std: float = 0.2          # weights ~ N(0, std^2)
    triton: bool = True       # also on the Triton backend (its interpreter costs seconds a case)


# (family, variant): Case. Sizes and widths as small as the Triton interpreter needs
# (hidden <= 12, 12-15 pixels for the gated model, 4x4 for PixelCNN++ but 8x8 at 4 scales).
CASES = {
    # -- GatedPixelCNN
    ("GatedPixelCNN", "scaled"): Case(dict(channels=3, bits=8, hidden=12, blocks=2, kernel_size=3, nr_mix=3),
                                      (3, 4), 3),
    ("GatedPixelCNN", "categorical-k5-b0"): Case(dict(channels=1, bits=4, hidden=8, blocks=0, kernel_size=5,
                                                      dist="categorical"), (5, 3), 1, temperature=2.0, std=0.3),
    ("GatedPixelCNN", "binary-k1-b3"): Case(dict(channels=2, bits=1, hidden=8, blocks=3, kernel_size=1,
                                                 dist="categorical"), (3, 5), 2, temperature=0.5, std=0.3),
    ("GatedPixelCNN", "gray16"): Case(dict(channels=1, bits=16, hidden=8, blocks=1, kernel_size=3, nr_mix=2),
                                      (3, 4), 2),
    ("GatedPixelCNN", "cond-map"): Case(dict(channels=1, bits=8, hidden=8, blocks=2, kernel_size=5, nr_mix=2,
                                             cond_channels=3), (3, 4), 3, temperature=0.5, cond="map", std=0.1,
                                        threads=2),
    ("GatedPixelCNN", "cond-vector"): Case(dict(channels=3, bits=8, hidden=10, blocks=1, kernel_size=1, nr_mix=4,
                                                cond_channels=2), (3, 4), 2, temperature=2.0, cond="vector"),
    ("GatedPixelCNN", "tokens"): Case(dict(channels=3, bits=9, hidden=8, blocks=1, kernel_size=3,
                                           dist="categorical", embed_dim=3, cond_channels=2), (3, 4), 3,
                                      cond="map", api=True, threads=2),
    ("GatedPixelCNN", "tokens-known"): Case(dict(channels=1, bits=8, hidden=8, blocks=2, kernel_size=5, nr_mix=2,
                                                 embed_dim=2, cond_channels=2), (3, 4), 1, cond="vector",
                                            known=0.4, api=True),
    ("GatedPixelCNN", "tokens16"): Case(dict(channels=1, bits=16, hidden=4, blocks=1, kernel_size=3,
                                             dist="categorical", embed_dim=2), (2, 3), 2, known=0.4, std=0.5),
    ("GatedPixelCNN", "known"): Case(dict(channels=3, bits=8, hidden=8, blocks=2, kernel_size=3, nr_mix=3),
                                     (3, 4), 3, temperature=0.7, known=0.4, api=True, threads=2),
    # -- PixelCNNpp (scales 1 to 4: sizes divisible by 2**(scales-1))
    ("PixelCNNpp", "scaled"): Case(dict(channels=3, bits=8, hidden=8, blocks=1, scales=2, nr_mix=2), (4, 4), 3),
    ("PixelCNNpp", "categorical-s1-b0"): Case(dict(channels=1, bits=4, hidden=8, blocks=0, scales=1,
                                                   dist="categorical"), (4, 4), 1, temperature=2.0),
    ("PixelCNNpp", "s4-b0"): Case(dict(channels=1, bits=8, hidden=4, blocks=0, scales=4, nr_mix=2), (8, 8), 1,
                                  triton=False),
    ("PixelCNNpp", "cond-map"): Case(dict(channels=1, bits=8, hidden=6, blocks=2, scales=3, nr_mix=2,
                                          cond_channels=2), (4, 4), 3, temperature=0.5, cond="map", threads=2),
    ("PixelCNNpp", "cond-vector"): Case(dict(channels=3, bits=8, hidden=6, blocks=1, scales=2, nr_mix=2,
                                             cond_channels=3), (4, 4), 2, cond="vector", triton=False),
    ("PixelCNNpp", "tokens"): Case(dict(channels=3, bits=9, hidden=6, blocks=1, scales=2, dist="categorical",
                                        embed_dim=3), (4, 4), 3, api=True, threads=2, triton=False),
    ("PixelCNNpp", "tokens-known"): Case(dict(channels=1, bits=8, hidden=6, blocks=1, scales=2, nr_mix=2,
                                              embed_dim=4, cond_channels=2), (4, 4), 1, cond="map", known=0.4,
                                         api=True),
    ("PixelCNNpp", "known-s3-b0"): Case(dict(channels=3, bits=5, hidden=7, blocks=0, scales=3, nr_mix=3),
                                        (4, 4), 3, temperature=0.7, known=0.4, api=True, triton=False),
}
# The Triton backend runs the PixelCNN++ cases whose kernel paths differ (logistic and
# categorical heads, 1 to 3 scales, blocks, a cond map, tokens with known pixels): a cond
# vector reaches its kernels as the same maps, tokens without known pixels and known
# pixels of scaled inputs are subsets of tokens-known, and a fourth scale adds launches
# of the same kernels; the interpreter costs 4-10 s per PixelCNN++ test.


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class Built:
    """One case's model, inputs and naive reference (computed once, shared by the backends)."""

    def __init__(self, family, variant, seed):
        c = self.case = CASES[family, variant]
        self.name = f"{family}-{variant}"
        make = random_gated if family == "GatedPixelCNN" else random_pp
        self.model = make(seed=seed, std=c.std, image_size=c.size, **c.cfg)
        m, (h, w), b = self.model, c.size, c.batch
        g = _gen(100 + seed)
        self.x = torch.randint(0, 2 ** m.bits, (b, m.channels, h, w), generator=g)   # random images
        self.cond = {"none": None, "map": lambda: torch.randn(b, m.cond_channels, h, w, generator=g),
                     "vector": lambda: torch.randn(b, m.cond_channels, generator=g)}[c.cond]
        self.cond = self.cond() if callable(self.cond) else None
        assert (self.cond is None) == (not m.cond_channels), self.name
        # the image test's inputs: the uniforms of a seed (what pixelaux.sample draws), the
        # known pixels (mask and values) or none
        self.seed = 7 + seed
        self.u = ImageUniforms(b, _gen(self.seed)).draw(h, w, m.dist.num_uniforms)
        self.mask = (torch.rand(b, h, w, generator=g) < c.known) if c.known else None
        self.x0 = self.x.clone() if c.known else torch.zeros_like(self.x)   # known values where mask
        self._naive = {}

    def naive(self, temperature):
        """The naive engine's images on the image test's inputs (through ``pixelaux.sample``
        from the seed for the ``api`` cases)."""
        if temperature not in self._naive:
            with single_thread():
                if self.case.api:
                    self._naive[temperature] = pixelaux.sample(self.model, self.case.batch, engine="naive",
                                                               **self.sample_kwargs(temperature))
                else:
                    self._naive[temperature] = naive.run(self.model, self.x0, self.mask, self.cond, self.u,
                                                         temperature)
        return self._naive[temperature]

    def sample_kwargs(self, temperature):
        known = None
        if self.mask is not None:       # (B, C, H, W), -1 where sampled
            known = self.x0.masked_fill(~self.mask[:, None].expand_as(self.x0), -1)
        return dict(size=self.case.size, cond=self.cond, known=known, temperature=temperature, progress=False,
                    generator=_gen(self.seed))


#: (case, backend): every case on every backend but Triton's, which runs ``case.triton`` ones
GRID = [(key, b) for key in CASES for b in BACKENDS if b != "triton" or CASES[key].triton]


@pytest.fixture(scope="module")
def built_cases():
    """The cases built so far (``Built``), once per module, shared by the backends."""
    return {}


@pytest.fixture(params=GRID, ids=[f"{f}-{v}-{b}" for (f, v), b in GRID])
def built(request, built_cases):
    key, backend = request.param
    ok, why = engines.REGISTRY[backend].available(torch.device("cpu"))
    if not ok:
        pytest.skip(f"backend={backend!r} cannot run here: {why}")
    if key not in built_cases:
        built_cases[key] = Built(*key, seed=list(CASES).index(key))
    return built_cases[key], backend


def _threads(backend, n):
    """The threads a backend runs with: tiny models gain nothing from threads (a second
    OpenMP thread only spin-waits), except the C++ engine's own splits (``case.threads``)."""
    return num_threads(n if backend == "cpp" else 1)


def test_teacher_forcing_matches_forward(built):
    built, backend = built
    m, x, cond = built.model, built.x, built.cond
    b, _, h, w = x.shape
    run = engines.runner("cached", backend, m.kind)
    before = x.clone()
    with _threads(backend, 1):
        out, params = run(m, x, torch.ones(b, h, w, dtype=torch.bool), cond, built.u, 1.0, return_params=True)
    assert torch.equal(x, before), "the input is not modified"
    assert out.dtype == torch.long and torch.equal(out, x), "known pixels must be kept"
    assert params.shape == (b, m.dist.num_params, h, w) and params.dtype == torch.float32
    assert_matches_forward(params, m, x, cond, f"{built.name} {backend}")


def test_same_images_as_naive(built):
    built, backend = built
    m, c = built.model, built.case
    name = f"{built.name} {backend} t={c.threads if backend == 'cpp' else 1}"
    ref = built.naive(c.temperature)
    run = engines.runner("cached", backend, m.kind)
    args = (m, built.x0, built.mask, built.cond, built.u, c.temperature)
    with _threads(backend, c.threads):
        if c.api:       # the public path: the images of a seed
            got, params = pixelaux.sample(m, c.batch, backend=backend, **built.sample_kwargs(c.temperature)), None
        else:
            got, params = run(*args, return_params=True)
    assert got.dtype == torch.long and got.shape == ref.shape
    assert int(got.min()) >= 0 and int(got.max()) < 2 ** m.bits
    if built.mask is not None:
        keep = built.mask[:, None].expand_as(got)
        assert torch.equal(got[keep], built.x0[keep]), f"{name}: known pixels must be kept"
    if not torch.equal(ref, got) and params is None:
        with _threads(backend, c.threads):      # the engine on the seed's uniforms: its parameters
            again, params = run(*args, return_params=True)
        assert torch.equal(again, got), f"{name}: pixelaux.sample is not the engine on the seed's uniforms"
    if params is not None:
        # the same images, or every image that differs first differs at an explained float tie
        report = assert_same_images(m, built.cond, built.u, c.temperature, ref, got, params, name)
        assert torch.equal(ref, got) or report
        if report:
            print("\n" + "\n".join(report))
        # the parameters it sampled with are the forward's on its own images
        assert_matches_forward(params, m, got, built.cond, name)
    assert ref.float().std() > 0, f"{name}: the samples are constant"
    if c.temperature != 1.0:        # the temperature is applied: other images than at 1
        assert not torch.equal(got, built.naive(1.0)), f"{name}: temperature {c.temperature} changed nothing"
