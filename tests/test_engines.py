"""The teacher-forcing gate itself, and the backend registry. (Every backend's exactness
against the naive engine and the forward, the torch reference's included: ``test_conformance.py``.)"""
import copy

import pytest
import torch

from helpers import (ENGINE_CONFIGS, FORWARD_FACTOR, FORWARD_FLOOR, assert_matches_forward,  # noqa: F401
                     one_thread, random_cond, random_gated, random_images)
from pixelaux.engines import cached_torch

# Tiny models, one small op after another: a second OpenMP thread only spin-waits (on a
# busy 2-core machine this file took 12-50 s with two threads, 6 s with one).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_teacher_forcing_gate_fails_a_slightly_wrong_engine():
    """The gate can fail: ``assert_matches_forward`` takes the engine's parameters and
    rejects them moved by 1e-5 of their scale at one position (the fixed 1e-4 gate it
    replaced took 10x that), and the parameters of the same model with one weight 0.1%
    off (an engine that packs a stale or rounded weight)."""
    model = random_gated(seed=2, **ENGINE_CONFIGS[2])
    x = random_images(model, 3, 7, 5, seed=5)
    cond = random_cond(model, 3, 7, 5)
    known = torch.ones(3, 7, 5, dtype=torch.bool)
    u = torch.rand(3, 7, 5, model.dist.num_uniforms)
    _, params = cached_torch.run(model, x, known, cond, u, 1.0, return_params=True)
    err, own = assert_matches_forward(params, model, x, cond)
    assert max(FORWARD_FACTOR * own, FORWARD_FLOOR) < 5e-6
    moved = params.clone()
    moved[1, 3, 4, 2] += 1e-5 * params.abs().max()
    with pytest.raises(AssertionError, match="off the float64 forward"):
        assert_matches_forward(moved, model, x, cond)
    stale = copy.deepcopy(model)
    with torch.no_grad():
        stale.ul_blocks[0].conv2.weight[0, 0, 0, 0] *= 1.001
    _, wrong = cached_torch.run(stale, x, known, cond, u, 1.0, return_params=True)
    with pytest.raises(AssertionError, match="off the float64 forward"):
        assert_matches_forward(wrong, model, x, cond)


def test_a_backend_is_one_registry_entry(monkeypatch):
    """``resolve``, ``runner`` and ``workspace_bytes`` find a backend in ``engines.REGISTRY``
    alone: a new entry is selectable, its stage kinds and status are honoured, and the
    entry itself answers ``available``, ``run`` and ``workspace_bytes``."""
    import dataclasses

    from pixelaux import engines
    fake = engines.Backend("fake", "Fake", {"GatedPixelCNN": "cached_torch"}, lambda device: (True, ""))
    monkeypatch.setitem(engines.REGISTRY, "fake", fake)
    assert engines.resolve("cached", "fake", "cpu") == ("cached", "fake")
    assert engines.runner("cached", "fake") is cached_torch.run
    model = random_gated(seed=0, channels=1, bits=3, hidden=4, blocks=1, nr_mix=2, image_size=(3, 3))
    x = torch.zeros(2, 1, 3, 3, dtype=torch.long)
    assert engines.workspace_bytes("fake", model, x, None) == cached_torch.workspace_bytes(model, x, None)
    assert fake.available("cpu") == (True, "") and fake.workspace_bytes(model, x, None) > 0
    from pixelaux.uniforms import ImageUniforms
    u = ImageUniforms(2, torch.Generator().manual_seed(0)).draw(3, 3, model.dist.num_uniforms)
    assert torch.equal(fake.run(model, x.clone(), None, None, u, 1.0),
                       cached_torch.run(model, x.clone(), None, None, u, 1.0))
    on_cpu = dataclasses.replace(fake, devices=("cpu",))
    assert on_cpu.available("meta") == (False, "it runs on CPU only, not meta")
    with pytest.raises(ValueError, match=r"backend='fake' does not run PixelCNNpp models"):
        engines.resolve("cached", "fake", "cpu", kinds=("PixelCNNpp",))
    monkeypatch.setitem(engines.REGISTRY, "fake", dataclasses.replace(fake, status=lambda device: (False, "no chip")))
    with pytest.raises(RuntimeError, match="backend='fake' is not available: no chip"):
        engines.resolve("cached", "fake", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        engines.resolve("cached", "nope", "cpu")
