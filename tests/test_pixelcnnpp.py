"""PixelCNNpp (PixelCNN++ over several resolutions): the model (the exactness contract
of every cached backend on it is in ``test_conformance.py``).

Random weights (std 0.2, never zeros), random images, awkward sizes; every scale count
from 1 to 4, both distributions, 1 and 3 channels, conditioning.
"""
import pytest
import torch

import pixelaux
from helpers import assert_causal, random_images, random_pp, single_thread

CONFIGS = {
    "rgb-s3": dict(channels=3, bits=8, hidden=6, blocks=1, scales=3, nr_mix=2),
    "cat-s2-cond": dict(channels=1, bits=4, hidden=5, blocks=2, scales=2, dist="categorical", cond_channels=2),
    "rgb-s4-b0": dict(channels=3, bits=5, hidden=4, blocks=0, scales=4, nr_mix=2),
    "gray-s1": dict(channels=1, bits=8, hidden=7, blocks=2, scales=1, nr_mix=3),
    "rgb-s2-cond": dict(channels=3, bits=8, hidden=6, blocks=1, scales=2, nr_mix=2, cond_channels=3),
}
SIZES = {"rgb-s3": (8, 12), "cat-s2-cond": (6, 4), "rgb-s4-b0": (8, 8), "gray-s1": (5, 3), "rgb-s2-cond": (4, 6)}


def make(name, batch=3, seed=0):
    h, w = SIZES[name]
    model = random_pp(seed=seed, image_size=(h, w), **CONFIGS[name])
    x = random_images(model, batch, h, w, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    cond = torch.randn(batch, model.cond_channels, h, w, generator=g) if model.cond_channels else None
    u = torch.rand(batch, h, w, model.dist.num_uniforms, generator=g)
    return model, x, cond, u


def test_topology_follows_pixelcnnpp():
    m = pixelaux.PixelCNNpp(hidden=8, blocks=2, scales=3, nr_mix=4)
    assert [len(st.u_stream) for st in m.up_layers] == [2, 2, 2]
    assert [len(st.u_stream) for st in m.down_layers] == [2, 3, 3]   # blocks, blocks+1, blocks+1
    assert len(m.downsize_u) == len(m.upsize_ul) == 2
    assert m.down_layers[1].ul_stream[0].nin_skip.weight.shape == (8, 4 * 8, 1, 1)  # concat(u, ul), concat-ELU
    assert m.down_layers[1].u_stream[0].nin_skip.weight.shape == (8, 2 * 8, 1, 1)
    assert m.up_layers[0].u_stream[0].nin_skip is None
    assert m.head.out_channels == 4 * 10                           # RGB mixture: 10 numbers per component
    assert type(m.up_layers[0].u_stream[0].dropout) is torch.nn.Dropout      # element-wise, as the reference
    x = torch.randint(0, 256, (2, 3, 32, 32))
    assert m(x).shape == (2, 40, 32, 32)


@pytest.mark.parametrize("size", [(6, 8), (8, 10), (3, 4)])
def test_size_not_divisible_by_the_scales_is_refused(size):
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(scales-1\) = 4"):
        pixelaux.PixelCNNpp(hidden=4, blocks=1, scales=3, image_size=size)
    m = pixelaux.PixelCNNpp(hidden=4, blocks=1, scales=3, image_size=(8, 8))
    with pytest.raises(ValueError, match="divisible"):
        m(torch.zeros(1, 3, *size, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        pixelaux.sample(m, 1, size=size, progress=False)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal(name):
    model, x, cond, _ = make(name, batch=1)
    assert_causal(model, x, cond, model.bits)


def test_log_prob_bits_per_dim_and_save_load(tmp_path):
    model, x, cond, _ = make("rgb-s3")
    lp = model.log_prob(x)
    assert lp.shape == (3,) and torch.isfinite(lp).all()
    bpd = pixelaux.bits_per_dim(model, x)
    assert torch.allclose(bpd, -lp / (x[0].numel() * torch.log(torch.tensor(2.0))), rtol=1e-5)
    path = tmp_path / "pp.safetensors"
    pixelaux.save(model, path)
    back = pixelaux.load(path)
    assert type(back) is pixelaux.PixelCNNpp and back.config == model.config
    assert torch.equal(back(x), model(x))


def _dropped_inputs(block, model, x):
    """The input of ``block.conv2`` (the dropout's output) in one forward pass of ``model``."""
    seen = []
    handle = block.conv2.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("arch", ["pixelcnnpp", "gated"])
def test_dropout_is_element_wise_as_the_reference_and_off_in_eval(arch):
    """The reference PixelCNN++ drops single values (tf.nn.dropout), not whole channels."""
    if arch == "gated":
        model = pixelaux.GatedPixelCNN(hidden=6, blocks=1, nr_mix=2, dropout=0.5, image_size=(8, 8))
        block = model.ul_blocks[0]
    else:
        model = random_pp(hidden=6, blocks=1, scales=2, nr_mix=2, dropout=0.5, image_size=(8, 8))
        block = model.down_layers[1].ul_stream[0]
    x = random_images(model, 2, 8, 8)
    model.eval()
    assert (_dropped_inputs(block, model, x) != 0).all()
    model.train()
    torch.manual_seed(0)
    kept = _dropped_inputs(block, model, x) != 0                 # (B, 2C, H, W)
    assert 0.35 < kept.float().mean() < 0.65
    per_map = kept.flatten(2).float().mean(-1)                   # a channel-wise dropout: all 0 or all 1
    assert ((per_map > 0) & (per_map < 1)).all(), per_map
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.equal(a, model(x))
    model.zero_grad()
    (-model.log_prob(x).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_trains_with_pixelaux_train(tmp_path):
    torch.manual_seed(0)
    model = pixelaux.PixelCNNpp(channels=1, bits=4, hidden=8, blocks=1, scales=2, dist="categorical",
                                dropout=0.1, image_size=(8, 8))
    data = torch.randint(0, 4, (64, 1, 8, 8))           # only 4 of 16 levels used: easy to learn
    before = pixelaux.bits_per_dim(model, data[:16]).mean().item()
    result = pixelaux.train(model, data, steps=30, batch_size=16, lr=3e-3, out_dir=tmp_path / "run",
                            progress=False, log=lambda s: None)
    after = pixelaux.bits_per_dim(result.ema_model, data[:16]).mean().item()
    assert after < before - 0.5, (before, after)
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_sample_api_and_auxiliary_models_with_pixelcnnpp_parts():
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    for model in (pixelaux.GrayscalePixelCNN(hidden=6, blocks=1, nr_mix=2, encoder_blocks=1, arch="pixelcnnpp",
                                             scales=2, image_size=(8, 8)),
                  pixelaux.PyramidPixelCNN(hidden=6, blocks=1, nr_mix=2, arch="pixelcnnpp", scales=2,
                                           image_size=(16, 16), seed_size=(4, 4))):
        model.eval()
        parts = model.levels if hasattr(model, "levels") else [model.prior, model.colour]
        assert all(type(p) is pixelaux.PixelCNNpp for p in parts)
        with single_thread():
            a = pixelaux.sample(model, 2, engine="naive", generator=gen(), progress=False)
            b = pixelaux.sample(model, 2, backend="torch", generator=gen(), progress=False)
        assert torch.equal(a, b)
        bpd = pixelaux.bits_per_dim(model, a, parts=True)
        assert torch.allclose(bpd["total"], sum(v for k, v in bpd.items() if k != "total"))
    with pytest.raises(ValueError, match="arch"):
        pixelaux.GrayscalePixelCNN(arch="pixelcnn")
