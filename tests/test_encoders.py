"""The deep auxiliary encoders (issue 18, item 3): ``GatedEncoder`` (the gray view's
gated, dilated encoder) and ``GatedUNetEncoder`` (the pyramid's gated U-net), their
per-scale maps entering every gated block of each scale of a ``PixelCNNpp``, every engine
on them, and the old encoders and configs unchanged."""
import copy

import pytest
import torch
import torch.nn.functional as F

import pixelaux
from helpers import assert_matches_forward, one_thread, randomize  # noqa: F401 (fixture)
from pixelaux import engines, native, weight_norm
from pixelaux.encoders import DILATIONS, GatedEncoder, GatedUNetEncoder, ResNetEncoder, UNetEncoder

CPU_BACKENDS = ["torch"] + (["cpp"] if native.available() else [])
# Triton (under the interpreter on CPU) only on one small stage: its composite plumbing is
# the stage's, and the interpreter costs seconds per pixel row
BACKENDS = CPU_BACKENDS + (["triton"] if engines.triton_status(torch.device("cpu"))[0] else [])


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def per_scale_cond(model, b, size, seed=0):
    g = gen(seed)
    return tuple(torch.randn(b, model.cond_channels, size[0] >> s, size[1] >> s, generator=g)
                 for s in range(model.scales))


# ----------------------------------------------------------------------------- the encoders

def test_gated_encoder_gives_one_map_per_scale_from_gated_dilated_blocks():
    torch.manual_seed(0)
    enc = randomize(GatedEncoder(1, 4, hidden=6, blocks=5, out_channels=3, out_scales=3), std=0.3)
    assert [b.conv1.dilation[0] for b in enc.blocks] == [DILATIONS[i % 4] for i in range(5)] == [1, 2, 4, 8, 1]
    assert all(type(b).__name__ == "GatedResidualBlock" for b in enc.blocks)
    x = torch.randint(0, 16, (2, 1, 16, 8), generator=gen(1))
    maps = enc(x)
    assert isinstance(maps, tuple) and [tuple(m.shape) for m in maps] == [(2, 3, 16, 8), (2, 3, 8, 4), (2, 3, 4, 2)]
    # non-causal and wide: the last pixel moves the first position's features at every scale
    y = x.clone()
    y[:, :, -1, -1] = (y[:, :, -1, -1] + 7) % 16
    moved = enc(y)
    assert all((a[:, :, 0, 0] - b[:, :, 0, 0]).abs().max() > 0 for a, b in zip(maps, moved))
    # the images are independent of each other (float64: random weights make float32 chaotic)
    enc64 = copy.deepcopy(enc).double()
    assert torch.allclose(enc64(x[1:])[0], enc64(x)[0][1:], rtol=1e-10, atol=1e-10)
    single = GatedEncoder(1, 4, hidden=6, blocks=2, out_channels=3)
    assert isinstance(single(x), torch.Tensor) and single(x).shape == (2, 3, 16, 8)


def test_gated_unet_encoder_maps_the_level_below_to_every_scale():
    torch.manual_seed(0)
    enc = randomize(GatedUNetEncoder(3, 8, hidden=6, blocks=2, out_channels=4, out_scales=2), std=0.3)
    assert enc.depth == 3 and sum(len(b) for b in enc.down_blocks) + sum(len(b) for b in enc.up_blocks) == 10
    assert all(b.nin_skip is not None for blocks in enc.up_blocks for b in blocks)   # the U-net's skips
    lower = torch.randint(0, 256, (2, 3, 4, 6), generator=gen(2))
    maps = enc(lower)
    assert [tuple(m.shape) for m in maps] == [(2, 4, 8, 12), (2, 4, 4, 6)]
    odd = enc(lower, size=(9, 11))                         # any size: the path rounds up and back
    assert [tuple(m.shape[2:]) for m in odd] == [(9, 11), (5, 6)]
    deep = GatedUNetEncoder(3, 8, hidden=4, blocks=1, out_channels=4, out_scales=4)
    assert deep.depth == 4 and len(deep(torch.randint(0, 256, (1, 3, 8, 8)))) == 4
    with pytest.raises(ValueError, match="depth must be >= out_scales=3"):
        GatedUNetEncoder(3, 8, hidden=4, blocks=1, out_channels=4, out_scales=3, depth=2)


# ----------------------------------------------------------------------------- per-scale cond in PixelCNN++

def test_pixelcnnpp_reads_map_s_at_scale_s():
    torch.manual_seed(0)
    m = randomize(pixelaux.PixelCNNpp(hidden=6, blocks=1, scales=3, nr_mix=2, cond_channels=3, image_size=8), 0.2)
    x = torch.randint(0, 256, (2, 3, 8, 8), generator=gen(3))
    cond = torch.randn(2, 3, 8, 8, generator=gen(4))
    pools = tuple(cond if s == 0 else F.avg_pool2d(cond, 2 ** s) for s in range(3))
    assert torch.equal(m(x, pools), m(x, cond))            # the pools of one map are that map
    for s in range(3):                                     # and each scale reads its own
        other = list(pools)
        other[s] = other[s] + torch.randn(other[s].shape, generator=gen(5 + s))
        assert (m(x, tuple(other)) - m(x, pools)).abs().max() > 1e-3, s
    assert torch.allclose(m.log_prob(x, pools), m.log_prob(x, cond))
    assert torch.allclose(pixelaux.bits_per_dim(m, x, pools, batch_size=1), pixelaux.bits_per_dim(m, x, cond))


def test_per_scale_cond_is_checked_per_scale():
    m = pixelaux.PixelCNNpp(hidden=4, blocks=0, scales=2, nr_mix=1, cond_channels=2, image_size=8)
    x = torch.zeros(1, 3, 8, 8, dtype=torch.long)
    maps = (torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="a tuple of 2 maps"):
        m(x, maps[:1])
    with pytest.raises(ValueError, match=r"cond\[1\] must have shape \(1, 2, 4, 4\)"):
        m(x, (maps[0], torch.zeros(1, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"cond\[1\] must be a map"):
        m(x, (maps[0], torch.zeros(1, 2)))
    gated = pixelaux.GatedPixelCNN(hidden=4, blocks=0, nr_mix=1, cond_channels=2, image_size=8)
    with pytest.raises(ValueError, match="one tensor"):
        gated(x, maps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_engine_takes_per_scale_maps(backend):
    """Teacher forcing and same-seed images against the naive engine, with a tuple of maps."""
    torch.manual_seed(1)
    m = randomize(pixelaux.PixelCNNpp(hidden=4, blocks=1, scales=2, nr_mix=2, cond_channels=3, image_size=(4, 6)),
                  0.2)
    b, size = 2, (4, 6)
    x = torch.randint(0, 256, (b, 3, *size), generator=gen(6))
    cond = per_scale_cond(m, b, size, seed=7)
    u = torch.rand(b, *size, m.dist.num_uniforms, generator=gen(8))
    run = engines.runner("cached", backend, "PixelCNNpp")
    out, params = run(m, x, torch.ones(b, *size, dtype=torch.bool), cond, u, 1.0, return_params=True)
    assert torch.equal(out, x)
    assert_matches_forward(params, m, x, cond, backend)
    ref = engines.runner("naive", None)(m, torch.zeros_like(x), None, cond, u, 1.0)
    got = run(m, torch.zeros_like(x), None, cond, u, 1.0)
    assert torch.equal(ref, got)


# ----------------------------------------------------------------------------- in the auxiliary models

def _deep_models():
    torch.manual_seed(2)
    gray = pixelaux.GrayscalePixelCNN(arch="pixelcnnpp", hidden=6, blocks=1, scales=2, nr_mix=2, encoder="gated",
                                      encoder_blocks=2, image_size=8, weight_norm=True)
    pyr = pixelaux.PyramidPixelCNN(arch="pixelcnnpp", hidden=6, blocks=1, scales=2, nr_mix=2,
                                   encoder="gated-unet", encoder_blocks=1, image_size=8, seed_size=4)
    gated = pixelaux.GrayscalePixelCNN(hidden=6, blocks=1, nr_mix=2, encoder="gated", encoder_blocks=2,
                                       image_size=8)
    return {"gray-pp": gray, "pyramid-pp": pyr, "gray-gated": gated}


@pytest.mark.parametrize("name", ["gray-pp", "pyramid-pp", "gray-gated"])
def test_auxiliary_models_with_deep_encoders_sample_the_same_on_every_backend(name, tmp_path):
    model = _deep_models()[name]
    x = torch.randint(0, 256, (4, 3, *model.image_size), generator=gen(9))
    if weight_norm.needs_init(model):
        weight_norm.initialize(model, x)
    model.eval()
    enc = model.encoder
    want = model.conditional.scales if model.conditional.kind == "PixelCNNpp" else 1
    assert enc.out_scales == want and type(enc) in (GatedEncoder, GatedUNetEncoder)
    bpd = pixelaux.bits_per_dim(model, x, parts=True)
    assert torch.allclose(bpd["total"], sum(v for k, v in bpd.items() if k != "total"))
    images = {b: pixelaux.sample(model, 2, backend=b, generator=gen(10), progress=False) for b in CPU_BACKENDS}
    naive = pixelaux.sample(model, 2, engine="naive", generator=gen(10), progress=False)
    assert all(torch.equal(naive, v) for v in images.values()), [b for b, v in images.items()
                                                                 if not torch.equal(naive, v)]
    path = tmp_path / "m.safetensors"                       # saved and loaded as it was built
    pixelaux.save(model, path)
    back = pixelaux.load(path)
    assert back.config == model.config and type(back.encoder) is type(enc)
    assert torch.equal(pixelaux.sample(back, 2, backend=CPU_BACKENDS[-1], generator=gen(10), progress=False), naive)


def test_old_encoders_and_configs_are_unchanged():
    gray = pixelaux.GrayscalePixelCNN(hidden=4, blocks=1, image_size=8)
    pyr = pixelaux.PyramidPixelCNN(hidden=4, blocks=1, image_size=8, seed_size=4)
    assert type(gray.encoder) is ResNetEncoder and "encoder" not in gray.config
    assert type(pyr.encoders[0]) is UNetEncoder and "encoder" not in pyr.config and "encoder_blocks" not in pyr.config
    for name in ("default", "pyramid"):
        m = pixelaux.load(name)
        assert all(type(e) in (ResNetEncoder, UNetEncoder) for e in ([m.encoder] if name == "default" else m.encoders))


def test_bad_encoder_settings_name_the_argument():
    with pytest.raises(ValueError, match="encoder must be one of"):
        pixelaux.GrayscalePixelCNN(encoder="unet")
    with pytest.raises(ValueError, match="encoder must be one of"):
        pixelaux.PyramidPixelCNN(encoder="gated")
    with pytest.raises(ValueError, match="encoder_blocks sizes the gated U-net"):
        pixelaux.PyramidPixelCNN(encoder_blocks=3)
    stage = pixelaux.PixelCNNpp(hidden=4, blocks=0, scales=2, nr_mix=1, cond_channels=4, image_size=8)
    prior = pixelaux.GatedPixelCNN(channels=1, bits=4, hidden=4, blocks=0, dist="categorical", image_size=8)
    with pytest.raises(ValueError, match="encoder.out_scales must be 1 .* scales=2"):
        pixelaux.AuxiliaryPixelCNN("gray", prior, stage, encoder=GatedEncoder(1, 4, 4, 1, 4, out_scales=3))
