"""Pyramid auxiliary model: build_pyramid, UNetEncoder, PyramidPixelCNN."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_causal, one_thread  # noqa: F401 (fixture)
from pixelaux.encoders import UNetEncoder
from pixelaux.pyramid import PyramidPixelCNN, build_pyramid, level_sizes

SIZE, SEED = (12, 8), (3, 2)          # stages (3, 2) -> (6, 4) -> (12, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def tiny_model(**kw):
    cfg = dict(image_size=SIZE, seed_size=SEED, hidden=8, blocks=1, nr_mix=2, encoder_hidden=12,
               cond_channels=6)
    cfg.update(kw)
    return PyramidPixelCNN(**cfg)


def rand_images(b=2, c=3, size=SIZE, bits=8):
    return torch.randint(0, 2 ** bits, (b, c, *size))


# ---------------------------------------------------------------- build_pyramid

def test_build_pyramid_hand_example():
    x = torch.tensor([[1, 2, 0, 1],
                      [3, 4, 2, 2],
                      [9, 9, 5, 5],
                      [9, 9, 5, 6]]).view(1, 1, 4, 4)
    p = build_pyramid(x, 3)
    assert len(p) == 3 and torch.equal(p[0], x)                      # largest first, X_0 = x
    # 2x2 means: 2.5 -> 2 (tie to even), 1.25 -> 1, 9 -> 9, 5.25 -> 5
    assert p[1].flatten().tolist() == [2, 1, 9, 5]
    assert p[2].flatten().tolist() == [round(71 / 16)]                # 4.4375 -> 4, pooled from x itself
    assert all(t.dtype == torch.int64 for t in p)
    # 3.5 -> 4 (tie to even, upwards)
    assert build_pyramid(torch.tensor([3, 4, 3, 4]).view(1, 1, 2, 2), 2)[1].item() == 4


def test_build_pyramid_matches_avgpool_and_round():
    x = rand_images(2, 3, (16, 24)).to(torch.uint8)
    p = build_pyramid(x, 4)
    assert [tuple(t.shape) for t in p] == [(2, 3, 16, 24), (2, 3, 8, 12), (2, 3, 4, 6), (2, 3, 2, 3)]
    for k, t in enumerate(p):
        ref = torch.round(F.avg_pool2d(x.double(), 2 ** k)).long()
        assert torch.equal(t, ref), k
        assert 0 <= int(t.min()) and int(t.max()) < 256


def test_build_pyramid_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        build_pyramid(rand_images(1, 3, (12, 8)), 4)
    with pytest.raises(TypeError, match="x"):
        build_pyramid(torch.rand(1, 3, 8, 8), 2)
    with pytest.raises(ValueError, match="levels"):
        build_pyramid(rand_images(1, 3, (8, 8)), 0)


# ---------------------------------------------------------------- sizes

def test_level_sizes():
    assert level_sizes(32, 8) == [(8, 8), (16, 16), (32, 32)]
    assert level_sizes(8, 8) == [(8, 8)]
    assert level_sizes((12, 8), (3, 2)) == [(3, 2), (6, 4), (12, 8)]
    m = PyramidPixelCNN(image_size=32, seed_size=8, hidden=8, blocks=1, nr_mix=2)
    assert m.level_sizes == [(8, 8), (16, 16), (32, 32)] and m.image_size == (32, 32)
    assert len(m.levels) == 3 and len(m.encoders) == 2
    assert m.levels[0].cond_channels == 0 and m.levels[1].cond_channels == 8


@pytest.mark.parametrize("image_size, seed_size", [(33, 8), (24, 8), (4, 8), ((16, 32), 8), ((15, 15), 5)])
def test_invalid_image_size_raises(image_size, seed_size):
    with pytest.raises(ValueError, match="image_size"):
        PyramidPixelCNN(image_size=image_size, seed_size=seed_size, hidden=8, blocks=1)


# ---------------------------------------------------------------- encoder

def test_unet_encoder_shapes_odd_sizes_and_noncausal():
    enc = UNetEncoder(3, 8, hidden=8, out_channels=5)
    lower = rand_images(2, 3, (3, 2))
    assert enc(lower).shape == (2, 5, 6, 4)
    assert enc(lower, size=(5, 7)).shape == (2, 5, 5, 7)      # odd full size: odd down path
    assert enc(rand_images(1, 3, (1, 1))).shape == (1, 5, 2, 2)
    lower2 = lower.clone()
    lower2[:, :, -1, -1] = (lower[:, :, -1, -1] + 101) % 256   # the last pixel in raster order
    with torch.no_grad():
        d = (enc(lower2) - enc(lower)).abs()
    assert d[:, :, 0, 0].max() > 1e-6, "a late pixel must reach the first output"


# ---------------------------------------------------------------- model

def test_pyramid_order_and_cond_shapes():
    m = tiny_model()
    assert m.kind == "PyramidPixelCNN" and (m.channels, m.bits) == (3, 8)
    x = rand_images()
    xs = m.pyramid(x)
    assert [tuple(t.shape[2:]) for t in xs] == m.level_sizes            # smallest first
    assert torch.equal(xs[-1], x)
    assert all(torch.equal(a, b) for a, b in zip(xs, build_pyramid(x, 3)[::-1]))
    for k in (1, 2):
        c = m.cond(k, xs[k - 1])
        assert c.shape == (2, 6, *m.level_sizes[k])
        assert m.levels[k](xs[k], c).shape == (2, m.levels[k].dist.num_params, *m.level_sizes[k])
    with pytest.raises(ValueError, match="lower"):
        m.cond(1, xs[0][:, :2])                                         # wrong channels
    with pytest.raises(ValueError, match="k"):
        m.cond(3, xs[2])                                                # no such stage


def test_log_prob_and_bits_per_dim_add_up():
    m = tiny_model()
    x = rand_images(3)
    parts = m.log_prob_parts(x)
    assert list(parts) == ["level0_3x2", "level1_6x4", "level2_12x8"]
    lp = m.log_prob(x)
    assert lp.shape == (3,) and torch.isfinite(lp).all()
    assert torch.allclose(lp, sum(parts.values()))
    assert torch.allclose(m(x), lp)
    bpd = m.bits_per_dim(x)
    assert list(bpd) == ["total"] + list(parts)
    dims = 3 * SIZE[0] * SIZE[1]
    assert torch.equal(bpd["total"], sum(bpd[k] for k in parts))
    assert torch.allclose(bpd["total"], -lp / (dims * math.log(2)), rtol=1e-5)
    for k in parts:
        assert torch.allclose(bpd[k], -parts[k] / (dims * math.log(2)), rtol=1e-5)
    # at init each stage costs about 8 bits per dim of its own size, so 8 * (1 + 1/4 + 1/16)
    assert (bpd["total"] > 4).all() and (bpd["total"] < 30).all()


def test_config_round_trip():
    m = tiny_model()
    cfg = json.loads(json.dumps(m.config))
    assert cfg["image_size"] == list(SIZE) and cfg["seed_size"] == list(SEED)
    m2 = type(m)(**cfg)
    m2.load_state_dict(m.state_dict())
    x = rand_images()
    assert torch.equal(m.log_prob(x), m2.log_prob(x))
    m3 = PyramidPixelCNN(image_size=8, seed_size=4, hidden=8, blocks=1, dist="categorical", bits=3)
    assert type(m3)(**m3.config).config == m3.config


def test_stages_are_causal_given_cond():
    m = tiny_model()
    xs = m.pyramid(rand_images(1))
    assert_causal(m.levels[0], xs[0], None, bits=8)
    for k in (1, 2):
        with torch.no_grad():
            cond = m.cond(k, xs[k - 1])
        assert_causal(m.levels[k], xs[k], cond, bits=8)


def test_gradients_reach_every_parameter():
    m = tiny_model()
    loss = -m.log_prob(rand_images()).mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_validation():
    m = tiny_model()
    with pytest.raises(ValueError, match="divisible"):
        m.log_prob(rand_images(size=(10, 8)))                 # not divisible by 2**(levels-1)
    with pytest.raises(ValueError, match="x"):
        m.log_prob(torch.full((1, 3, *SIZE), 256))
    with pytest.raises(TypeError, match="x"):
        m.log_prob(torch.rand(1, 3, *SIZE))


def test_other_sizes_divisible_by_the_pyramid_factor():
    """Stages are fully convolutional: a (24, 4) image has stages (6, 1), (12, 2), (24, 4)."""
    m = tiny_model()
    x = rand_images(2, size=(24, 4))
    assert [tuple(t.shape[2:]) for t in m.pyramid(x)] == [(6, 1), (12, 2), (24, 4)]
    assert m.cond(1, m.pyramid(x)[0]).shape == (2, 6, 12, 2)
    bpd = m.bits_per_dim(x)
    assert list(bpd) == ["total", "level0_6x1", "level1_12x2", "level2_24x4"]
    assert torch.isfinite(bpd["total"]).all()


# ----------------------------------------------------------------------------- per-level networks (issue 20.1)

PER_LEVEL = [{"arch": "pixelcnnpp", "scales": 2, "blocks": 2, "hidden": 10},     # a deep seed level
             {"blocks": 1, "encoder": "gated-unet", "encoder_blocks": 1, "cond_channels": 3},
             {"blocks": 0, "hidden": 4, "kernel_size": 5, "nr_mix": 1, "encoder_hidden": 5}]


def test_each_level_gets_its_own_network_and_encoder(tmp_path):
    import pixelaux
    torch.manual_seed(0)
    m = PyramidPixelCNN(image_size=(16, 8), seed_size=(4, 2), hidden=8, blocks=1, nr_mix=2, per_level=PER_LEVEL)
    seed, mid, top = m.levels
    assert (type(seed).__name__, seed.hidden, seed.blocks, seed.scales) == ("PixelCNNpp", 10, 2, 2)
    assert (type(mid).__name__, mid.hidden, len(mid.u_blocks), mid.cond_channels) == ("GatedPixelCNN", 8, 1, 3)
    assert (top.hidden, len(top.u_blocks), top.kw, top.dist.nr_mix, top.cond_channels) == (4, 0, 5, 1, 4)
    assert type(m.encoders[0]).__name__ == "GatedUNetEncoder" and m.encoders[0].out_channels == 3
    assert type(m.encoders[1]) is UNetEncoder and m.encoders[1].stem.out_channels == 5
    assert m.config["per_level"] == PER_LEVEL and m.prior.config["per_level"] == PER_LEVEL[:2]
    x = rand_images(3, size=(16, 8))
    parts = m.bits_per_dim(x)
    assert torch.allclose(parts["total"], sum(v for k, v in parts.items() if k != "total"))
    path = tmp_path / "m.safetensors"
    pixelaux.save(m, path)
    back = pixelaux.load(path)
    assert back.config == m.config and torch.equal(back.log_prob(x), m.eval().log_prob(x))
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    want = pixelaux.sample(m, 2, engine="naive", generator=gen(), progress=False)
    for backend in ("torch", "cpp") if pixelaux.native.available() else ("torch",):
        assert torch.equal(pixelaux.sample(m, 2, backend=backend, generator=gen(), progress=False), want), backend


def test_per_level_is_checked_and_absent_from_older_configs():
    assert "per_level" not in tiny_model().config
    with pytest.raises(ValueError, match="per_level must be a list of 3 dicts"):
        tiny_model(per_level=[{}])
    with pytest.raises(ValueError, match=r"per_level\[0\].encoder: the seed level is unconditional"):
        tiny_model(per_level=[{"encoder": "gated-unet"}, {}, {}])
    with pytest.raises(ValueError, match=r"per_level\[1\].hiden: unknown key"):
        tiny_model(per_level=[{}, {"hiden": 3}, {}])
    with pytest.raises(ValueError, match=r"per_level\[2\].blocks must be >= 0"):
        tiny_model(per_level=[{}, {}, {"blocks": -1}])
    with pytest.raises(ValueError, match=r"per_level\[1\].encoder_blocks sizes the gated U-net"):
        tiny_model(per_level=[{}, {"encoder_blocks": 2}, {}])
    # a level whose size its network cannot take is named, with its size
    with pytest.raises(ValueError, match=r"per_level\[0\] \(3x2\): image_size: a PixelCNNpp with scales=2"):
        tiny_model(per_level=[{"arch": "pixelcnnpp", "scales": 2}, {}, {}])
    with pytest.raises(ValueError, match=r"level 0 \(3x2\): image_size: a PixelCNNpp with scales=2"):
        tiny_model(arch="pixelcnnpp", scales=2)
