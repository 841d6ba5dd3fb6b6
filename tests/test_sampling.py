"""The public sampling/scoring API on GatedPixelCNN (the composite models have their own files)."""
import math

import pytest
import torch

import pixelaux
from helpers import random_cond, random_gated, random_images


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model():
    return random_gated(seed=1, channels=3, bits=8, hidden=8, blocks=2, nr_mix=3, image_size=(5, 6))


def test_shapes_dtype_range_and_default_size(model):
    x = pixelaux.sample(model, 2, generator=gen(), progress=False)
    assert x.shape == (2, 3, 5, 6) and x.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 255 and x.float().std() > 0


def test_same_seed_same_images_and_other_seed_differs(model):
    a = pixelaux.sample(model, 2, size=(4, 3), generator=gen(7), progress=False)
    b = pixelaux.sample(model, 2, size=(4, 3), generator=gen(7), progress=False)
    c = pixelaux.sample(model, 2, size=(4, 3), generator=gen(8), progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_image_k_does_not_depend_on_batch_size(model):
    a = pixelaux.sample(model, 3, size=(4, 5), generator=gen(3), progress=False)
    b = pixelaux.sample(model, 5, size=(4, 5), generator=gen(3), progress=False)
    assert torch.equal(a, b[:3])


def test_known_pixels_are_kept(model):
    img = random_images(model, 1, 5, 6, seed=3)[0]
    known = img.clone()
    known[:, 3:] = -1
    x = pixelaux.sample(model, 3, known=known, generator=gen(), progress=False, backend="torch")
    assert torch.equal(x[:, :, :3], img[:, :3].expand(3, -1, -1, -1))
    assert not torch.equal(x[0, :, 3:], x[1, :, 3:])


def test_conditional_model_needs_cond():
    m = random_gated(channels=1, bits=4, dist="categorical", hidden=4, blocks=1, cond_channels=2)
    cond = random_cond(m, 2, 4, 4)
    x = pixelaux.sample(m, 2, size=4, cond=cond, generator=gen(), progress=False, backend="torch")
    assert x.shape == (2, 1, 4, 4) and x.max() < 16
    with pytest.raises(ValueError, match="cond is required"):
        pixelaux.sample(m, 2, size=4, progress=False)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(n=0), ValueError, "n must be >= 1"),
    (dict(n=2.0), TypeError, "n must be an int"),
    (dict(n=1, engine="fast"), ValueError, "engine must be one of"),
    (dict(n=1, backend="cuda"), ValueError, "backend must be one of"),
    (dict(n=1, temperature=0.0), ValueError, "temperature must be > 0"),
    (dict(n=1, size=(0, 4)), ValueError, "size"),
    (dict(n=1, generator=123), TypeError, "generator"),
    (dict(n=1, known=torch.zeros(1, 1, 5, 6, dtype=torch.long)), ValueError, "known must have shape"),
    (dict(n=1, known=torch.full((3, 5, 6), 300)), ValueError, "known values"),
    (dict(n=1, known=torch.zeros(3, 5, 6)), TypeError, "known must be an integer"),
    (dict(n=1, cond=torch.zeros(1, 2, 5, 6)), ValueError, "cond must be None"),
])
def test_bad_arguments(model, kwargs, err, match):
    n = kwargs.pop("n")
    with pytest.raises(err, match=match):
        pixelaux.sample(model, n, progress=False, **kwargs)


def test_bad_model():
    with pytest.raises(TypeError, match="model must be"):
        pixelaux.sample(torch.nn.Linear(2, 2), 1)


def test_bits_per_dim_matches_log_prob(model):
    x = random_images(model, 5, 5, 6, seed=2)
    bpd = pixelaux.bits_per_dim(model, x, batch_size=2)
    ref = -model.log_prob(x) / (3 * 5 * 6 * math.log(2))
    assert bpd.shape == (5,) and torch.allclose(bpd, ref.detach(), rtol=1e-5)
    parts = pixelaux.bits_per_dim(model, x, parts=True)
    assert torch.allclose(parts["total"], bpd)
    with pytest.raises(ValueError, match="images"):
        pixelaux.bits_per_dim(model, x[:, :1])
