"""Consistent decoding (pixelaux.consistency, docs/design.md section 1.8): the ranges, the
truncated distributions, and every engine sampling them, against the naive reference."""
import importlib.util
import itertools

import pytest
import torch

from helpers import assert_same_images, one_thread, random_gated, random_pp  # noqa: F401
from pixelaux import engines
from pixelaux.consistency import box_window, gray_window, pool_window
from pixelaux.distributions import Categorical, DiscretizedLogisticMixture
from pixelaux.engines import naive
from pixelaux.transforms import avg_pool_round, to_gray

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the ranges
def _brute_ranges(values, aux_of, aux, order):
    """For every variable of one group (in ``order``), the set of values that some
    completion of the later ones maps to ``aux``, given the earlier ones: by enumeration."""
    out = []
    for t in range(len(order)):
        ok = [v for v in values if aux_of(order[:t] + [v]) == aux]
        out.append((min(ok), max(ok), len(ok)))
    return out


def test_gray_ranges_are_exactly_the_values_that_can_still_give_the_gray_bin():
    bits, gray_bits = 4, 2
    allv = torch.tensor(list(itertools.product(range(16), repeat=3)))
    gall = to_gray(allv.view(-1, 3, 1, 1), bits, gray_bits).flatten()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 16, (40, 3, 1, 1), generator=g)
    gray = to_gray(x, bits, gray_bits)
    lo, hi = gray_window(gray, 3, bits, gray_bits).ranges(x)
    for b in range(40):
        cons = allv[gall == gray[b, 0, 0, 0]]
        for c in range(3):
            vals = cons[(cons[:, :c] == x[b, :c, 0, 0]).all(1)][:, c].unique()
            assert (lo[b, c, 0, 0], hi[b, c, 0, 0]) == (vals.min(), vals.max())
            assert len(vals) == vals.max() - vals.min() + 1          # an interval


def test_pool_ranges_are_exactly_the_values_that_can_still_give_the_pooled_value():
    bits = 3
    allv = torch.tensor(list(itertools.product(range(8), repeat=4)))
    qall = avg_pool_round(allv.view(-1, 1, 2, 2), 2).flatten()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 8, (60, 1, 2, 2), generator=g)
    q = avg_pool_round(x, 2)
    lo, hi = pool_window(q, 2, bits).ranges(x)
    for b in range(60):
        cons = allv[qall == q[b, 0, 0, 0]]
        for t in range(4):
            vals = cons[(cons[:, :t] == x[b, 0].flatten()[:t]).all(1)][:, t].unique()
            i, j = divmod(t, 2)
            assert (lo[b, 0, i, j], hi[b, 0, i, j]) == (vals.min(), vals.max())
            assert len(vals) == vals.max() - vals.min() + 1


def test_known_pixels_narrow_the_ranges_through_their_boxes():
    """A block with known pixels (box lo == hi) leaves the unknown ones only what makes the
    pooled value: with three pixels known, the fourth has exactly its consistent values."""
    x = torch.tensor([[[[7, 0], [3, 5]]]])
    q = avg_pool_round(x, 2)                             # (7 + 0 + 3 + 5) / 4 = 3.75 -> 4
    box_lo, box_hi = torch.zeros_like(x), torch.full_like(x, 7)
    box_lo[0, 0, 0, 1:] = box_hi[0, 0, 0, 1:] = x[0, 0, 0, 1:]       # (0, 1) known
    box_lo[0, 0, 1] = box_hi[0, 0, 1] = x[0, 0, 1]                   # the bottom row known
    lo, hi = pool_window(q, 2, 3, (box_lo, box_hi)).ranges(x)
    # 14 <= v + 8 <= 17 (round half even: 4 <- 14..18 but 18/4 = 4.5 -> 4, 14/4 = 3.5 -> 4)
    assert (lo[0, 0, 0, 0], hi[0, 0, 0, 0]) == (6, 7)


@pytest.mark.parametrize("which", ["pool2", "pool3", "gray1", "gray3"])
def test_windows_without_known_pixels_equal_those_with_full_boxes(which):
    """With no pixel known the windows are built from per-block (pool) or per-channel
    (gray) sums and broadcast boxes; they equal the general construction's with boxes
    that allow every value."""
    from pixelaux.consistency import full_boxes
    g = torch.Generator().manual_seed(0)
    if which.startswith("pool"):
        f = int(which[-1])
        q = torch.randint(0, 256, (2, 3, 4, 5), generator=g)
        fast, slow = pool_window(q, f, 8), pool_window(q, f, 8, full_boxes((2, 3, 4 * f, 5 * f), 8))
    else:
        c = int(which[-1])
        gray = torch.randint(0, 16, (2, 1, 5, 6), generator=g)
        fast, slow = gray_window(gray, c, 8, 4), gray_window(gray, c, 8, 4, full_boxes((2, c, 5, 6), 8))
    assert torch.equal(fast.packed(), slow.packed()) and (fast.coef, fast.div, fast.block) == \
        (slow.coef, slow.div, slow.block)


def test_packed_window_refuses_bounds_that_do_not_fit_int32():
    q = torch.full((1, 1, 2, 2), 3)
    w = pool_window(q, 2, 3)
    assert w.packed().dtype == torch.int32 and torch.equal(w.packed().long(), w.packed(torch.int64))
    w.hi_base = w.hi_base + 2 ** 31
    with pytest.raises(ValueError, match="do not fit torch.int32"):
        w.packed()


def test_memory_estimate_counts_a_consistent_stage_window():
    """A consistent pyramid's estimate is its inconsistent twin's plus the window (four
    int64 maps and the int32 copy) of its largest stage, per image."""
    from pixelaux import resources
    from pixelaux.pyramid import PyramidPixelCNN
    m = PyramidPixelCNN(channels=3, image_size=16, seed_size=4, hidden=8, blocks=1, nr_mix=2, consistent=True)
    est = lambda: [resources.estimate_sampling_bytes(m, k, None, "cached", "torch") for k in (1, 2)]  # noqa: E731
    on = est()
    m.consistent = False
    off = est()
    assert (on[1] - on[0]) - (off[1] - off[0]) == 48 * 3 * 16 * 16


# ------------------------------------------------------------------ the distributions
@pytest.mark.parametrize("dist", [DiscretizedLogisticMixture(1, 4, 3), Categorical(1, 4)])
@pytest.mark.parametrize("rng", [(0, 15), (3, 9), (0, 2), (14, 15), (5, 5)])
def test_truncated_probabilities_sum_to_one_over_the_range(dist, rng):
    g = torch.Generator().manual_seed(3)
    params = torch.randn(6, dist.num_params, generator=g) * 3
    lo, hi = (torch.full((6, 1), v) for v in rng)
    lp = torch.stack([dist.log_prob_flat(params, torch.full((6, 1), v), lo, hi) for v in range(rng[0], rng[1] + 1)])
    assert torch.allclose(lp.exp().sum(0), torch.ones(6), atol=1e-5)
    whole = torch.zeros(6, 1, dtype=torch.long), torch.full((6, 1), dist.levels - 1)
    full = torch.stack([dist.log_prob_flat(params, torch.full((6, 1), v), *whole) for v in range(rng[0], rng[1] + 1)])
    assert (lp >= full - 1e-5).all()               # truncation only moves mass onto the range
    plain = torch.stack([dist.log_prob_flat(params, torch.full((6, 1), v)) for v in range(rng[0], rng[1] + 1)])
    assert (full.exp() - plain.exp()).abs().max() < 1e-4   # exact bin masses; PixelCNN++'s tail rule aside


@pytest.mark.parametrize("dist", [DiscretizedLogisticMixture(1, 4, 3), Categorical(1, 4)])
def test_truncated_sampling_follows_the_truncated_probabilities(dist):
    """Including a component whose mass lies far outside the range (deep in a tail)."""
    g = torch.Generator().manual_seed(0)
    params = torch.randn(1, dist.num_params, generator=g) * 2
    if isinstance(dist, DiscretizedLogisticMixture):
        params[0, 3 + 1] = 1.7                      # component 1's mean far above [3, 9] ...
        params[0, 6 + 1] = -4.2                     # ... with a narrow scale
    n, lo, hi = 100_000, 3, 9
    u = torch.rand(n, dist.num_uniforms, generator=g)
    bounds = lambda c, chosen: (torch.full((n,), lo), torch.full((n,), hi))  # noqa: E731
    got = dist.sample_flat(params.expand(n, -1), u, 1.0, bounds)[:, 0]
    emp = torch.bincount(got, minlength=16).double() / n
    want = torch.stack([dist.log_prob_flat(params, torch.tensor([[v]]), torch.tensor([[lo]]), torch.tensor([[hi]]))
                        for v in range(16)]).exp().flatten().double()
    assert emp[:lo].sum() == 0 and emp[hi + 1:].sum() == 0
    assert (emp - want).abs().max() < 0.01


@pytest.mark.parametrize("dist", [DiscretizedLogisticMixture(3, 8, 4), Categorical(2, 4)])
def test_full_ranges_sample_bit_for_bit_as_without_truncation(dist):
    g = torch.Generator().manual_seed(5)
    params = torch.randn(300, dist.num_params, generator=g) * 2
    u = torch.rand(300, dist.num_uniforms, generator=g)
    full = lambda c, chosen: (torch.zeros(300, dtype=torch.long), torch.full((300,), dist.levels - 1))  # noqa: E731
    assert torch.equal(dist.sample_flat(params, u, 0.8), dist.sample_flat(params, u, 0.8, full))


# ------------------------------------------------------------------ every engine
def _backends():
    out = ["torch"]
    if engines.cpp_status()[0]:
        out.append("cpp")
    if importlib.util.find_spec("triton") is not None and engines.triton_status(torch.device("cpu"))[0]:
        out.append("triton")                       # under the interpreter (conftest.py)
    return out


# (family, stage config, window kind)
STAGE_CASES = [
    ("gated", dict(channels=3, bits=8, hidden=10, blocks=2, nr_mix=3, cond_channels=2), "gray"),
    ("gated", dict(channels=3, bits=5, hidden=8, blocks=1, nr_mix=2), "pool"),
    ("gated", dict(channels=1, bits=4, hidden=8, blocks=2, kernel_size=5, dist="categorical"), "pool"),
    ("pp", dict(channels=3, bits=8, hidden=8, blocks=1, scales=2, nr_mix=2, cond_channels=3), "gray"),
    ("pp", dict(channels=1, bits=4, hidden=8, blocks=1, scales=2, dist="categorical"), "pool"),
    ("pp", dict(channels=3, bits=6, hidden=8, blocks=1, scales=2, nr_mix=2), "box"),
]


def stage_window(model, kind, x0, known=None):
    """A window whose constraint ``x0`` satisfies: the gray view / 2x pool of ``x0``, or
    (``box``) random boxes around it; known pixels of ``x0`` as one-value boxes."""
    top = 2 ** model.bits - 1
    box_lo, box_hi = torch.zeros_like(x0), torch.full_like(x0, top)
    if known is not None:
        m = known[:, None].expand_as(x0)
        box_lo, box_hi = torch.where(m, x0, box_lo), torch.where(m, x0, box_hi)
    if kind == "gray":
        return gray_window(to_gray(x0, model.bits, 4), model.channels, model.bits, 4, (box_lo, box_hi))
    if kind == "pool":
        return pool_window(avg_pool_round(x0, 2), 2, model.bits, (box_lo, box_hi))
    g = torch.Generator().manual_seed(9)
    lo = torch.minimum(box_lo + torch.randint(0, top // 2, x0.shape, generator=g), x0)
    return box_window(lo, torch.maximum(box_hi - torch.randint(0, top // 2, x0.shape, generator=g), x0))


def _stage(family, cfg, seed=0):
    return random_pp(seed=seed, **cfg) if family == "pp" else random_gated(seed=seed, **cfg)


#: every case for the CPU backends; under Triton's interpreter (3-11 s a case) two, with known
#: pixels: a gated categorical pool window and a PixelCNN++ logistic gray window (both
#: families, both distributions, both window rules of the shared ``head_sample``); the two
#: Triton tests below cover the reference kernels and the buffers' reuse
TRITON_CASES = (2, 3)
ENGINE_CASES = [(b, c, k) for b in _backends() for c in range(len(STAGE_CASES)) for k in (False, True)
                if b != "triton" or (c in TRITON_CASES and k)]


@pytest.mark.parametrize("backend,case,with_known", ENGINE_CASES)
def test_every_engine_samples_the_window_as_naive_and_inside_it(backend, case, with_known):
    family, cfg, kind = STAGE_CASES[case]
    model = _stage(family, cfg, seed=case)
    b, h, w = 3, 6, 4
    g = torch.Generator().manual_seed(10 + case)
    x0 = torch.randint(0, 2 ** model.bits, (b, model.channels, h, w), generator=g)
    known = torch.rand(b, h, w, generator=g) < 0.3 if with_known else None
    window = stage_window(model, kind, x0, known)
    cond = None
    if model.cond_channels:
        cond = torch.randn(b, model.cond_channels, h, w, generator=g)
    u = torch.rand(b, h, w, model.dist.num_uniforms, generator=g)
    x = torch.where(known[:, None], x0, 0) if known is not None else torch.zeros_like(x0)
    ref = naive.run(model, x, known, cond, u, 1.0, window=window)
    got, params = engines.runner("cached", backend, model.kind)(model, x, known, cond, u, 1.0,
                                                              return_params=True, window=window)
    assert_same_images(model, cond, u, 1.0, ref, got, params, name=f"{backend} {family} {kind}", window=window)
    for img in (ref, got):
        lo, hi = window.ranges(img)
        assert ((img >= lo) & (img <= hi)).all()
        if kind == "gray":
            assert torch.equal(to_gray(img, model.bits, 4), to_gray(x0, model.bits, 4))
        if kind == "pool":
            assert torch.equal(avg_pool_round(img, 2), avg_pool_round(x0, 2))
        if known is not None:
            assert torch.equal(img[known[:, None].expand_as(img)], x0[known[:, None].expand_as(img)])


@pytest.mark.skipif(not engines.cpp_status()[0], reason="the C++ extension is not built")
@pytest.mark.parametrize("family", ["gated", "pp"])
def test_cpp_thread_modes_sample_the_window_as_one_thread(family, monkeypatch):
    """Every thread split of the C++ engines (1 images over threads, 2 a team over the
    channels and the pixels, 3 a team over the row starts) reads a block's earlier pixels
    as they are when a pixel samples its pool window: the images of one thread, bitwise."""
    from pixelaux.engines import cached_cpp
    from pixelaux.resources import num_threads
    monkeypatch.setenv("PIXELAUX_TEAM_GIVE_UP", "0")      # a busy machine must not shrink the team
    cfg = dict(channels=3, bits=5, hidden=32, blocks=1, nr_mix=2)  # two panels of hidden channels: teams of 2
    model = _stage(family, dict(cfg, scales=2) if family == "pp" else cfg, seed=3)
    run = cached_cpp.run
    b, h, w = 2, 8, 8
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, 2 ** model.bits, (b, model.channels, h, w), generator=g)
    known = torch.rand(b, h, w, generator=g) < 0.3
    window = stage_window(model, "pool", x0, known)
    u = torch.rand(b, h, w, model.dist.num_uniforms, generator=g)
    x = torch.where(known[:, None], x0, 0)
    ref = run(model, x, known, None, u, 1.0, mode=0, window=window)
    assert torch.equal(avg_pool_round(ref, 2), avg_pool_round(x0, 2))
    with num_threads(2):
        for mode in (1, 2, 3):
            assert torch.equal(run(model, x, known, None, u, 1.0, mode=mode, window=window), ref), f"mode {mode}"


needs_triton = pytest.mark.skipif("triton" not in _backends(), reason="triton (or its interpreter) not available")


@needs_triton
def test_triton_references_sample_the_window_as_naive():
    """The kernels' PyTorch references (``pixel_step_reference``, ``pixel_head_reference``)
    on the engines' buffers (``run(..., reference=True)``: the fused gated path's and the
    plan walker's): a window with known pixels, both families."""
    from pixelaux.engines import cached_triton
    for family, cfg, kind in (STAGE_CASES[1], STAGE_CASES[3]):
        model = _stage(family, cfg, seed=1)
        b, h, w = 2, 4, 4
        g = torch.Generator().manual_seed(20)
        x0 = torch.randint(0, 2 ** model.bits, (b, model.channels, h, w), generator=g)
        known = torch.rand(b, h, w, generator=g) < 0.3
        window = stage_window(model, kind, x0, known)
        cond = torch.randn(b, model.cond_channels, h, w, generator=g) if model.cond_channels else None
        u = torch.rand(b, h, w, model.dist.num_uniforms, generator=g)
        x = torch.where(known[:, None], x0, 0)
        got, params = cached_triton.run(model, x, known, cond, u, 1.0, return_params=True, reference=True,
                                        window=window)
        ref = naive.run(model, x, known, cond, u, 1.0, window=window)
        assert_same_images(model, cond, u, 1.0, ref, got, params, name=f"{family} references", window=window)
        lo, hi = window.ranges(got)
        assert ((got >= lo) & (got <= hi)).all()


@needs_triton
def test_triton_window_refilled_per_call_in_the_split_plan():
    """A categorical RGB stage under gray windows (channels coupled by the luma weights) in
    the split plan: the cached buffers serve a second window (refilled in place), not a
    call without a window or with another block size (each a new entry)."""
    from pixelaux.engines import cached_triton
    K = cached_triton.load_kernels()
    model = _stage("gated", dict(channels=3, bits=3, hidden=20, blocks=1, dist="categorical"), seed=2)
    b, h, w = 2, 2, 4
    plan = K.choose_launch_plan(b, model.hidden, w, override="pixel_tile=16")
    assert not plan.fused
    g = torch.Generator().manual_seed(21)
    u = torch.rand(b, h, w, model.dist.num_uniforms, generator=g)
    x = torch.zeros(b, 3, h, w, dtype=torch.long)
    cached_triton.clear_cache()
    builds0 = cached_triton.RUNS.builds
    windows = [gray_window(to_gray(x0, 3, 2), 3, 3, 2) for x0 in (torch.randint(0, 8, x.shape, generator=g)
                                                                  for _ in range(2))]
    windows += [None, pool_window(avg_pool_round(torch.randint(0, 8, x.shape, generator=g), 2), 2, 3)]
    for window, builds in zip(windows, (1, 1, 2, 3)):
        got, params = cached_triton.run(model, x, None, None, u, 1.0, return_params=True, launch_plan=plan,
                                        window=window)
        assert cached_triton.RUNS.builds == builds0 + builds and len(cached_triton.RUNS) == builds
        ref = naive.run(model, x, None, None, u, 1.0, window=window)
        assert_same_images(model, None, u, 1.0, ref, got, params, name="triton split", window=window)
        if window is not None:
            lo, hi = window.ranges(got)
            assert ((got >= lo) & (got <= hi)).all()
    cached_triton.clear_cache()
