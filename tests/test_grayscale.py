"""Grayscale auxiliary model: to_gray, ResNetEncoder, GrayscalePixelCNN."""
import json
import math

import pytest
import torch

from helpers import assert_causal, one_thread  # noqa: F401 (fixture)
from pixelaux.encoders import ResNetEncoder
from pixelaux.grayscale import GrayscalePixelCNN, div_round_half_even, to_gray

H, W = 5, 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def tiny_model(**kw):
    cfg = dict(hidden=8, blocks=1, nr_mix=2, encoder_hidden=8, encoder_blocks=2, cond_channels=6,
               image_size=(H, W), prior_hidden=12, prior_blocks=2)
    cfg.update(kw)
    return GrayscalePixelCNN(**cfg)


def rand_images(b=2, c=3, h=H, w=W, bits=8):
    return torch.randint(0, 2 ** bits, (b, c, h, w))


# ---------------------------------------------------------------- to_gray

def test_to_gray_hand_example():
    rgb = torch.tensor([[255, 0, 0],      # 76.245  -> 76  -> 4
                        [10, 200, 30],    # 123.81  -> 124 -> 7
                        [255, 255, 255],  # 255     -> 15
                        [0, 0, 0],        # 0       -> 0
                        [1, 9, 87],       # 15.5 (tie) -> 16 -> 1
                        [0, 38, 221]])    # 47.5 (tie) -> 48 -> 3
    x = rgb.T.reshape(1, 3, 1, 6)
    g = to_gray(x)
    assert g.shape == (1, 1, 1, 6) and g.dtype == torch.int64
    assert g.flatten().tolist() == [4, 7, 15, 0, 1, 3]
    # Full-precision luma (gray_bits == bits): ties round half to even.
    y = to_gray(torch.tensor([0, 0, 250]).view(1, 3, 1, 1), bits=8, gray_bits=8)  # 28.5 -> 28
    assert y.item() == 28
    assert to_gray(torch.tensor([1, 9, 87]).view(1, 3, 1, 1), gray_bits=8).item() == 16  # 15.5 -> 16


def test_div_round_half_even_matches_torch_round():
    s = torch.arange(-40, 41)
    for n in (1, 2, 4, 16, 1000):
        assert torch.equal(div_round_half_even(s, n), torch.round(s.double() / n).long())


def test_to_gray_range_and_float_reference():
    x = rand_images(4, 3, 16, 16).to(torch.uint8)
    g = to_gray(x)
    assert g.shape == (4, 1, 16, 16) and g.dtype == torch.int64
    assert 0 <= int(g.min()) and int(g.max()) < 16
    y = 0.299 * x[:, 0:1].double() + 0.587 * x[:, 1:2].double() + 0.114 * x[:, 2:3].double()
    clear = ((y - y.floor()) - 0.5).abs() > 1e-6       # away from ties
    ref = torch.div(torch.round(y).long(), 16, rounding_mode="floor")
    assert torch.equal(g[clear], ref[clear])
    # other bit depths: 5-bit images to 2-bit gray
    g2 = to_gray(rand_images(2, 3, 4, 4, bits=5), bits=5, gray_bits=2)
    assert 0 <= int(g2.min()) and int(g2.max()) < 4
    # 1-channel input is its own luma
    x1 = rand_images(2, 1, 4, 4)
    assert torch.equal(to_gray(x1), x1 // 16)


def test_to_gray_rejects_bad_input():
    with pytest.raises(ValueError, match="x"):
        to_gray(torch.zeros(1, 2, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="x"):
        to_gray(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="x"):
        to_gray(torch.full((1, 3, 4, 4), 256))
    with pytest.raises(ValueError, match="gray_bits"):
        to_gray(rand_images(), bits=4, gray_bits=5)


# ---------------------------------------------------------------- encoder

def test_resnet_encoder_shape_and_noncausal():
    enc = ResNetEncoder(1, 4, hidden=8, blocks=2, out_channels=5)
    g = torch.randint(0, 16, (1, 1, 4, 6))   # within the receptive field (radius 1 + 2*blocks)
    out = enc(g)
    assert out.shape == (1, 5, 4, 6) and out.dtype == torch.float32
    g2 = g.clone()
    g2[0, 0, -1, -1] = (g[0, 0, -1, -1] + 7) % 16          # the last pixel in raster order
    with torch.no_grad():
        d = (enc(g2) - enc(g)).abs()
    assert d[:, :, 0, 0].max() > 1e-6, "a late pixel must reach the first output"
    with pytest.raises(ValueError, match="x"):
        enc(torch.full((1, 1, 4, 4), 16))


# ---------------------------------------------------------------- model

def test_shapes_and_attributes():
    m = tiny_model()
    assert m.kind == "GrayscalePixelCNN"
    assert m.image_size == (H, W) and (m.channels, m.bits, m.gray_bits) == (3, 8, 4)
    x = rand_images()
    g = m.gray(x)
    assert g.shape == (2, 1, H, W) and torch.equal(g, to_gray(x))
    c = m.cond(g)
    assert c.shape == (2, 6, H, W)
    assert m.prior(g).shape == (2, 16, H, W)                        # categorical over 16 gray levels
    assert m.colour(x, c).shape == (2, m.colour.dist.num_params, H, W)
    assert m.prior.hidden == 12 and len(m.prior.u_blocks) == 2 and len(m.colour.u_blocks) == 1


def test_log_prob_and_bits_per_dim_add_up():
    m = tiny_model()
    x = rand_images(3)
    parts = m.log_prob_parts(x)
    assert set(parts) == {"gray", "colour"}
    lp = m.log_prob(x)
    assert lp.shape == (3,) and torch.isfinite(lp).all()
    assert torch.allclose(lp, parts["gray"] + parts["colour"])
    assert torch.allclose(m(x), lp)
    bpd = m.bits_per_dim(x)
    assert set(bpd) == {"total", "gray", "colour"}
    assert torch.equal(bpd["gray"] + bpd["colour"], bpd["total"])
    dims = 3 * H * W
    assert torch.allclose(bpd["total"], -lp / (dims * math.log(2)), rtol=1e-5)
    assert torch.allclose(bpd["gray"], -parts["gray"] / (dims * math.log(2)), rtol=1e-5)
    # at init: the gray prior is near uniform (4 bits per gray pixel = 4/3 bits per colour dim),
    # the colour part is of the order of 8 bits/dim
    assert (bpd["gray"] > 0.5).all() and (bpd["gray"] < 3).all()
    assert (bpd["total"] > 4).all() and (bpd["total"] < 20).all()


def test_config_round_trip():
    m = tiny_model(dropout=0.0)
    cfg = json.loads(json.dumps(m.config))
    assert cfg["image_size"] == [H, W]
    m2 = type(m)(**cfg)
    m2.load_state_dict(m.state_dict())
    x = rand_images()
    assert torch.equal(m.log_prob(x), m2.log_prob(x))
    m3 = GrayscalePixelCNN(**GrayscalePixelCNN(hidden=8, blocks=1, image_size=4).config)
    assert m3.config["encoder_hidden"] is None and m3.encoder.out_channels == 8


def test_stages_are_causal_given_cond():
    m = tiny_model()
    x = rand_images(1)
    g = m.gray(x)
    with torch.no_grad():
        cond = m.cond(g)
    assert_causal(m.colour, x, cond, bits=8)
    assert_causal(m.prior, g, None, bits=4)


def test_colour_params_see_the_whole_gray_image():
    """Through the encoder, the last gray pixel moves the colour params at (0, 0)."""
    m = tiny_model()
    x = rand_images(1)
    g = m.gray(x)
    g2 = g.clone()
    g2[0, 0, -1, -1] = (g[0, 0, -1, -1] + 5) % 16
    with torch.no_grad():
        d = (m.colour(x, m.cond(g2)) - m.colour(x, m.cond(g))).abs()
    assert d[:, :, 0, 0].max() > 1e-6


def test_gradients_reach_every_parameter():
    m = tiny_model()
    loss = -m.log_prob(rand_images()).mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    for sub in (m.prior, m.encoder, m.colour):
        assert sum(p.grad.norm() for p in sub.parameters()) > 0


def test_validation():
    m = tiny_model()
    with pytest.raises(ValueError, match="x"):
        m.log_prob(torch.full((1, 3, H, W), 300))
    with pytest.raises(ValueError, match="x"):
        m.log_prob(rand_images(c=4))
    with pytest.raises(TypeError, match="x"):
        m.log_prob(torch.rand(1, 3, H, W))
    with pytest.raises(ValueError, match="channels"):
        GrayscalePixelCNN(channels=2, hidden=8, blocks=1)
    with pytest.raises(ValueError, match="gray_bits"):
        GrayscalePixelCNN(bits=4, gray_bits=5, hidden=8, blocks=1)
