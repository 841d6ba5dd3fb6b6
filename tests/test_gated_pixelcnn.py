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


TOL = 1e-6


@pytest.mark.parametrize("cfg", CAUSAL_CONFIGS)
def test_outputs_depend_only_on_earlier_pixels(cfg):
    """Perturbing pixel p changes no output at or before p in raster order (any
    channel of p included), and does change the outputs right of and below p. The
    unperturbed images and every perturbation (position, channel) go through one
    batched forward pass; images at different places of a batch may round differently
    (~3e-8), so "no change" is below TOL and "a change" above it (a leak through random
    weights moves an output by ~1e-2 or more)."""
    model = random_gated(seed=3, **cfg)
    h, w, n = 6, 5, 2
    x = random_images(model, n, h, w, seed=1)
    cond = random_cond(model, n, h, w)
    cases = list(itertools.product(range(h), range(w), range(model.channels)))
    y = x.repeat(len(cases) + 1, 1, 1, 1)                               # case-major, x last
    for k, (a, b, ch) in enumerate(cases):
        part = y[k * n:(k + 1) * n]
        part[:, ch, a, b] = (part[:, ch, a, b] + 2 ** (model.bits - 1)) % 2 ** model.bits
    big_cond = None if cond is None else cond.repeat(len(cases) + 1, *([1] * (cond.dim() - 1)))
    out = model(y, big_cond)
    out = out.reshape(len(cases) + 1, n, *out.shape[1:])
    base = out[-1]
    order = torch.arange(h * w).reshape(h, w)
    for k, (a, b, ch) in enumerate(cases):
        diff = (out[k] - base).abs().amax(dim=(0, 1))                   # (H, W)
        p = a * w + b
        assert diff[order <= p].max() < TOL, f"output at/before {(a, b)} channel {ch} changed"
        if b + 1 < w:
            assert diff[a, b + 1] > TOL, f"pixel right of {(a, b)} channel {ch} unaffected"
        if a + 1 < h:
            assert diff[a + 1, b] > TOL, f"pixel below {(a, b)} channel {ch} unaffected"


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
