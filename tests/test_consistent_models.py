"""Consistent auxiliary-variable models (issue 20.3-5): exact likelihoods, samples whose
auxiliary image is always the one they were given, old checkpoints unchanged."""
import itertools

import pytest
import torch

import pixelaux
from helpers import one_thread, randomize  # noqa: F401
from pixelaux import checkpoint
from pixelaux.transforms import avg_pool_round, to_gray

pytestmark = pytest.mark.usefixtures("one_thread")


def _gray(arch="gated", **kw):
    cfg = dict(hidden=8, blocks=1, image_size=(4, 4), nr_mix=2, encoder_blocks=1)
    if arch == "pixelcnnpp":
        cfg.update(arch=arch, scales=2)
    return randomize(pixelaux.GrayscalePixelCNN(**cfg, **kw), std=0.3, seed=1)


def _pyramid(channels=3, bits=8, **kw):
    cfg = dict(channels=channels, bits=bits, image_size=(8, 8), seed_size=(2, 2), hidden=8, blocks=1, nr_mix=2)
    if channels == 1:
        cfg.update(dist="categorical")
        cfg.pop("nr_mix")
    return randomize(pixelaux.PyramidPixelCNN(**cfg, **kw), std=0.3, seed=2)


def _combined():
    prior = pixelaux.PyramidPixelCNN(channels=1, bits=4, dist="categorical", image_size=(4, 4), seed_size=(2, 2),
                                     hidden=8, blocks=1)
    return randomize(pixelaux.GrayscalePixelCNN(hidden=8, blocks=1, image_size=(4, 4), nr_mix=2, encoder_blocks=1,
                                                prior=prior), std=0.3, seed=3)


MODELS = {"gray": _gray, "gray-pp": lambda: _gray("pixelcnnpp"), "pyramid": _pyramid,
          "pyramid-gray-levels": lambda: _pyramid(1, 4), "gray+pyramid": _combined}


def test_new_models_are_consistent_and_old_configs_are_not(tmp_path):
    model = _gray()
    assert model.consistent and model.config["consistent"] is True
    legacy = _gray(consistent=False)
    assert not legacy.consistent and "consistent" not in legacy.config      # as every earlier config
    checkpoint.save(legacy, tmp_path / "old.safetensors")
    assert not checkpoint.load(tmp_path / "old.safetensors").consistent
    assert checkpoint.load(tmp_path / "old.safetensors", consistent=True).consistent
    checkpoint.save(model, tmp_path / "new.safetensors")
    assert checkpoint.load(tmp_path / "new.safetensors").consistent
    combined = checkpoint.set_consistent(_combined(), False)
    assert not combined.consistent and not combined.prior.consistent
    checkpoint.save(combined, tmp_path / "c.safetensors")
    back = checkpoint.load(tmp_path / "c.safetensors", consistent=True)
    assert back.consistent and back.prior.consistent


def test_a_consistent_pyramid_pools_each_level_from_the_one_above():
    model = _pyramid()
    x = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    views = model.views(x)
    for k in range(1, len(views)):
        assert torch.equal(views[k], avg_pool_round(views[k - 1], 2))
    model.consistent = False
    assert torch.equal(model.views(x)[2], avg_pool_round(x, 4))


@pytest.mark.parametrize("name", ["gray", "pyramid-gray-levels"])
def test_the_consistent_likelihood_is_normalised_over_every_image(name):
    """Exact, not a bound: the probabilities of all images sum to 1 (enumerated on a tiny
    model: 1x2 gray-level images of 2 bits for the gray model, 2x2 levels of 2 bits for the
    pyramid), while the inconsistent model's bound sums to less."""
    if name == "gray":
        model = randomize(pixelaux.GrayscalePixelCNN(channels=1, bits=2, gray_bits=1, hidden=6, blocks=1,
                                                     image_size=(1, 2), nr_mix=2, encoder_blocks=1), std=0.5)
        shape, levels = (1, 1, 2), 4
    else:
        model = randomize(pixelaux.PyramidPixelCNN(channels=1, bits=2, image_size=(2, 2), seed_size=(1, 1),
                                                   hidden=6, blocks=1, dist="categorical"), std=0.5)
        shape, levels = (1, 2, 2), 4
    n = 1
    for d in shape:
        n *= d
    x = torch.tensor(list(itertools.product(range(levels), repeat=n))).reshape(-1, *shape)
    with torch.no_grad():
        total = model.log_prob(x).exp().sum().item()
        model.consistent = False
        bound = model.log_prob(x).exp().sum().item()
    assert abs(total - 1.0) < 1e-4
    assert bound < 1.0 - 1e-3


@pytest.mark.parametrize("name", list(MODELS))
def test_consistent_scoring_beats_the_bound_on_every_image(name):
    model = MODELS[name]()
    x = torch.randint(0, 2 ** model.bits, (3, model.channels, *model.image_size),
                      generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        exact = model.log_prob(x)
        model.consistent = False
        model.views(x)        # (the inconsistent pyramid pools from X: a different bound)
        bound = model.log_prob(x)
    if name in ("gray", "gray-pp"):   # same auxiliary images: the truncated terms only gain
        assert (exact > bound).all()
    assert torch.isfinite(exact).all()


CPU_BACKENDS = ["torch"] + (["cpp"] if pixelaux.engines.cpp_status()[0] else [])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("with_known", [False, True])
def test_samples_keep_their_auxiliary_images_for_every_pixel(name, with_known, backend):
    """Colorization keeps the gray view, super-resolution pools back to its input, and
    completion keeps the known pixels, for 100% of pixels."""
    model = MODELS[name]()
    g = torch.Generator().manual_seed(7)
    n, (h, w) = 3, model.image_size
    x0 = torch.randint(0, 2 ** model.bits, (n, model.channels, h, w), generator=g)
    views = model.views(x0)
    known = None
    if with_known:
        mask = torch.rand(n, 1, h, w, generator=g) < 0.4
        known = torch.where(mask, x0, -1)
    # the auxiliary image one level down, given (colorization / super-resolution)
    out = pixelaux.sample(model, n, cond=views[1], known=known, backend=backend, generator=g, progress=False)
    assert torch.equal(model.views(out)[1], views[1])
    if known is not None:
        assert torch.equal(out[known >= 0], x0[known >= 0])
    # from scratch: every level consistent with the one below (checked by re-scoring: finite)
    free = pixelaux.sample(model, n, known=known, backend=backend, generator=g, progress=False)
    if known is not None:
        assert torch.equal(free[known >= 0], x0[known >= 0])
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(free)).all()


@pytest.mark.parametrize("name", ["gray+pyramid", "pyramid"])
def test_naive_and_cached_sample_the_same_consistent_images(name):
    model = MODELS[name]()
    n = 2
    a = pixelaux.sample(model, n, engine="naive", generator=torch.Generator().manual_seed(3), progress=False)
    b = pixelaux.sample(model, n, backend="torch", generator=torch.Generator().manual_seed(3), progress=False)
    assert torch.equal(a, b)


def test_colorized_samples_keep_the_gray_bin_even_at_low_temperature():
    model = _gray()
    gray = torch.randint(0, 16, (4, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    for t in (0.05, 1.0, 3.0):
        out = pixelaux.sample(model, 4, cond=gray, temperature=t, backend="torch", progress=False,
                              generator=torch.Generator().manual_seed(2))
        assert torch.equal(to_gray(out, 8, 4), gray)


@pytest.mark.parametrize("name", ["gray-pp", "pyramid", "gray+pyramid"])
def test_training_through_the_truncated_likelihood_has_finite_gradients(name):
    """Random wide-scale weights put bins deep in tails and far narrower than the scale."""
    model = MODELS[name]().train()
    x = torch.randint(0, 2 ** model.bits, (2, model.channels, *model.image_size),
                      generator=torch.Generator().manual_seed(5))
    loss = -model.log_prob(x).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_the_embedded_models_with_consistency_keep_their_inputs(backend):
    """The embedded models loaded with ``consistent=True``: colorizations keep the gray view
    and super-resolved images pool back to the given level, for every pixel."""
    if backend == "cpp" and not pixelaux.engines.cpp_status()[0]:
        pytest.skip("the C++ extension is not built")
    from pixelaux.data import natural_patches
    x = natural_patches("test", 32)[:2].long()
    default = pixelaux.load("default", consistent=True)
    gray = to_gray(x, 8, 4)
    out = pixelaux.sample(default, 2, cond=gray, backend=backend, generator=torch.Generator().manual_seed(0),
                          progress=False)
    assert torch.equal(to_gray(out, 8, 4), gray)
    pyramid = pixelaux.load("pyramid", consistent=True)
    low = avg_pool_round(avg_pool_round(x, 2), 2)                     # the 8x8 level
    up = pixelaux.sample(pyramid, 2, cond=low, backend=backend, generator=torch.Generator().manual_seed(1),
                         progress=False)
    assert torch.equal(avg_pool_round(avg_pool_round(up, 2), 2), low)
    assert torch.equal(pyramid.views(up)[2], low)
