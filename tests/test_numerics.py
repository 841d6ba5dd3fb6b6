"""Numerics at the extremes: temperatures 1e-6 .. 1e6, saturated logits and weights x1000 give
in-range pixels on the naive engine and every backend, for every model kind; how often the
backends still agree with the naive engine is recorded and printed.
"""
import pytest
import torch

import pixelaux
from reliability_helpers import (  # noqa: F401 (fixtures)
    AGREEMENT, BACKENDS, assert_images, gen, one_thread_and_report, tiny)

pytestmark = [pytest.mark.usefixtures("one_thread_and_report"),
              pytest.mark.slow]             # 16 settings x every backend and the naive engine


# --------------------------------------------------------------------------- numerics

def _stages(model):
    if model.kind == "GatedPixelCNN":
        return [model]
    if model.kind == "GrayscalePixelCNN":
        return [model.prior, model.colour]
    return list(model.levels)


def _extreme(kind: str, setting: str):
    m = tiny(kind, seed=11)
    with torch.no_grad():
        if setting == "weights x1000":
            for p in m.parameters():
                p.mul_(1000.0)
        elif setting == "saturated logits":
            for s in _stages(m):
                s.head.weight.mul_(1e4)
                s.head.bias.copy_(torch.randn(s.head.bias.shape, generator=gen(5)) * 1e4)
    return m


SETTINGS = {"T=1e-6": 1e-6, "T=1e6": 1e6, "saturated logits": 1.0, "weights x1000": 1.0}
NUMERIC_MODELS = ("gated", "gated_categorical", "grayscale", "pyramid")


def _numeric_size(kind, backend):
    if backend != "triton":
        return (4, 4) if kind == "pyramid" else (4, 5)
    return (2, 2) if kind in ("pyramid", "grayscale") else (2, 3)   # the interpreter is slow


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")   # numpy, in Triton's interpreter
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("kind", NUMERIC_MODELS)
def test_extreme_numerics_give_valid_pixels_on_every_engine(kind, setting):
    """Never NaN-born or out-of-range pixels, on the naive engine and every backend; how
    often the backends still agree with the naive engine is recorded (not asserted:
    with saturated or exploding activations, float ties are everywhere)."""
    m = _extreme(kind, setting)
    t = SETTINGS[setting]
    for backend in ["naive"] + BACKENDS:
        size = _numeric_size(kind, backend)
        n = 2 if backend == "triton" else 3
        eng = dict(engine="naive") if backend == "naive" else dict(backend=backend)
        x = pixelaux.sample(m, n, size=size, temperature=t, generator=gen(3), progress=False, **eng)
        assert_images(x, n, m.channels, size, m.bits)
        if backend != "naive":
            ref = pixelaux.sample(m, n, size=size, temperature=t, generator=gen(3), progress=False, engine="naive")
            AGREEMENT[(kind, setting, backend)] = (x == ref).float().mean().item()
        else:
            AGREEMENT[(kind, setting, "naive")] = 1.0
    if setting == "weights x1000" and kind == "gated":       # activations really did explode
        with torch.no_grad():
            params = m(torch.zeros(1, 3, 4, 5, dtype=torch.long))
        assert params.abs().max() > 1e4 or not torch.isfinite(params).all()
