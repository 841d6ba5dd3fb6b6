import itertools

import pytest
import torch

import pixelaux
from helpers import random_cond, random_gated, random_images

CAUSAL_CONFIGS = [
    dict(channels=3, bits=8, hidden=8, blocks=2, nr_mix=2),
    dict(channels=1, bits=4, hidden=8, blocks=2, kernel_size=5, dist="categorical"),
    dict(channels=3, bits=6, hidden=6, blocks=1, kernel_size=1, nr_mix=1, cond_channels=2),
    dict(channels=2, bits=3, hidden=5, blocks=3, kernel_size=3, dist="categorical"),
]


@pytest.mark.parametrize("cfg", CAUSAL_CONFIGS)
def test_outputs_depend_only_on_earlier_pixels(cfg):
    """Perturbing pixel p changes no output at or before p in raster order (any
    channel of p included), and does change the outputs right of and below p."""
    model = random_gated(seed=3, **cfg)
    h, w = 6, 5
    x = random_images(model, 2, h, w, seed=1)
    cond = random_cond(model, 2, h, w)
    base = model(x, cond)
    for a, b in itertools.product(range(h), range(w)):
        for ch in range(model.channels):
            y = x.clone()
            y[:, ch, a, b] = (y[:, ch, a, b] + 2 ** (model.bits - 1)) % 2 ** model.bits
            diff = (model(y, cond) - base).abs().amax(dim=(0, 1))          # (H, W)
            order = torch.arange(h * w).reshape(h, w)
            p = a * w + b
            assert diff[order <= p].max() == 0, f"output at/before {(a, b)} changed"
            if b + 1 < w:
                assert diff[a, b + 1] > 0, f"pixel right of {(a, b)} unaffected"
            if a + 1 < h:
                assert diff[a + 1, b] > 0, f"pixel below {(a, b)} unaffected"


def test_forward_shapes_and_log_prob():
    model = random_gated(channels=3, hidden=8, blocks=1, nr_mix=4)
    x = random_images(model, 3, 7, 9)
    params = model(x)
    assert params.shape == (3, 4 * 10, 7, 9)
    lp = model.log_prob(x)
    assert lp.shape == (3,) and torch.isfinite(lp).all() and (lp < 0).all()


def test_log_prob_is_differentiable_and_trains():
    model = random_gated(channels=1, bits=4, dist="categorical", hidden=8, blocks=1, std=0.1)
    model.train()
    x = random_images(model, 4, 6, 6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        loss = -model.log_prob(x).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.9


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=4), "kernel_size"),
    (dict(channels=0), "channels"),
    (dict(bits=0), "bits"),
    (dict(dist="gauss"), "dist"),
    (dict(hidden=2.5), "hidden"),
    (dict(image_size=(0, 3)), "image_size"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pixelaux.GatedPixelCNN(**kwargs)


def test_bad_forward_inputs():
    model = random_gated(channels=3, bits=8, hidden=4, blocks=1, nr_mix=1)
    with pytest.raises(TypeError, match="x"):
        model(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        model(torch.full((1, 3, 4, 4), 256))
    with pytest.raises(ValueError, match="cond"):
        model(torch.zeros(1, 3, 4, 4, dtype=torch.long), cond=torch.zeros(1, 2, 4, 4))
    cm = random_gated(channels=3, hidden=4, blocks=1, nr_mix=1, cond_channels=2)
    with pytest.raises(ValueError, match="cond is required"):
        cm(torch.zeros(1, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"cond must have shape \(1, 2, 4, 4\)"):
        cm(torch.zeros(1, 3, 4, 4, dtype=torch.long), cond=torch.zeros(1, 2, 5, 4))
