"""The pyramid's ``UNetEncoder`` in C++ (``torch.ops.pixelaux.unet_encode``) against the
module's forward (the reference), and its use by sampling (``sampling._encode``).
Every kernel family runs ``unet_check`` in ``test_cached_cpp.family_check``."""
import pytest
import torch

import pixelaux
from helpers import num_threads
from pixelaux import native, sampling
from pixelaux.auxiliary import chain
from pixelaux.encoders import UNetEncoder
from pixelaux.engines import unet_encoder_cpp

pytestmark = pytest.mark.skipif(not native.available(), reason="pixelaux._C not built")


def random_unet(cin, hidden, cout, seed=0, bits=8, weight_norm=False):
    """A ``UNetEncoder`` with random weights: its own init, then every bias random too
    (the init leaves them small, and the op adds them in its own order)."""
    torch.manual_seed(seed)
    enc = UNetEncoder(cin, bits, hidden, cout, weight_norm=weight_norm).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.3)
    return enc


def unet_check(seed=0):
    """Largest error of the op against the module (relative to the map's scale) over
    shapes that exercise every tail: hidden 20 (a full panel and a partial one), out 33,
    odd sizes, 1 and 3 input channels, batch 3."""
    worst = 0.0
    g = torch.Generator().manual_seed(seed)
    for cin, hidden, cout, b, h, w in ((3, 20, 33, 3, 5, 7), (1, 16, 8, 2, 8, 8), (3, 7, 5, 1, 1, 3)):
        enc = random_unet(cin, hidden, cout, seed=seed)
        x = torch.randint(0, 256, (b, cin, h, w), generator=g)
        with torch.no_grad():
            ref = enc(x)
        got = unet_encoder_cpp.encode(enc, x)
        assert got.shape == ref.shape == (b, cout, 2 * h, 2 * w) and got.is_contiguous()
        worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
    return worst


@pytest.mark.parametrize("threads", [1, 2])
def test_matches_the_module_forward(threads):
    with num_threads(threads):
        assert unet_check(seed=threads) < 1e-5


def test_weight_norm_and_parameter_updates_are_followed():
    """A weight-normed encoder runs with its folded weights, and a parameter changed in
    place (an optimizer step) is repacked before the next call."""
    enc = random_unet(3, 16, 32, seed=3, weight_norm=True)
    x = torch.randint(0, 256, (2, 3, 6, 4))
    for step in range(2):
        with torch.no_grad():
            ref = enc(x)
            assert (unet_encoder_cpp.encode(enc, x) - ref).abs().max() < 1e-5 * ref.abs().max()
            for p in enc.parameters():
                p.mul_(1.5).add_(0.1)


def test_sampling_encodes_with_it_and_the_bench_clock_times_it():
    """``sampling._encode`` runs a pyramid's UNet encoders in C++ (the map equals the
    module's), and ``bench.EncoderClock`` counts those runs, once per level."""
    from pixelaux import bench
    model = pixelaux.PyramidPixelCNN(channels=3, bits=8, image_size=16, seed_size=4, hidden=8, blocks=1,
                                     nr_mix=2).eval()
    links = chain(model)
    image = torch.randint(0, 256, (2, 3, 8, 8))
    assert unet_encoder_cpp.supports(links[0].owner.encoder, image, links[0].size)
    with torch.no_grad():
        ref = links[0].cond(image)
    assert (sampling._encode(links[0], image) - ref).abs().max() < 1e-5 * ref.abs().max()
    with bench.EncoderClock(model) as clock:
        pixelaux.sample(model, 1, generator=torch.Generator().manual_seed(0), progress=False)
    assert clock.calls == [1, 1] and clock.seconds > 0, clock.calls


def test_what_it_does_not_run():
    """Sampling falls back to the module where the op does not apply: another encoder
    kind, float64 weights, a map not twice the input's size."""
    from pixelaux.encoders import ResNetEncoder
    x = torch.randint(0, 256, (1, 3, 4, 4))
    assert unet_encoder_cpp.supports(random_unet(3, 8, 8), x, (8, 8))
    assert not unet_encoder_cpp.supports(ResNetEncoder(3, 8, 8, 1, 8), x, (8, 8))
    assert not unet_encoder_cpp.supports(random_unet(3, 8, 8).double(), x, (8, 8))
    assert not unet_encoder_cpp.supports(random_unet(3, 8, 8), x, (7, 8))
    assert not unet_encoder_cpp.supports(random_unet(3, 8, 8), x.float(), (8, 8))


def test_op_schema_fake_tensor_and_bad_inputs():
    enc = random_unet(3, 8, 5, seed=4)
    config = unet_encoder_cpp.config_of(enc)
    packed = torch.ops.pixelaux.pack_unet_encoder(unet_encoder_cpp.raw_weights(enc), config)
    x = torch.randint(0, 256, (2, 3, 3, 4))
    torch.library.opcheck(torch.ops.pixelaux.unet_encode.default, (x, packed, config),
                          test_utils=("test_schema", "test_faketensor"))
    op = torch.ops.pixelaux.unet_encode
    with pytest.raises(ValueError, match=r"lower must hold pixels in \[0, 255\].*got range \[256, 256\]"):
        op(torch.full((1, 3, 2, 2), 256), packed, config)
    with pytest.raises(TypeError, match="lower must be int64"):
        op(x.float(), packed, config)
    with pytest.raises(ValueError, match=r"lower must have shape \(B, 3, h, w\)"):
        op(x[:, :2], packed, config)
    with pytest.raises(ValueError, match="packed must be the 1-D output of pack_unet_encoder"):
        op(x, packed[:-1], config)
    with pytest.raises(ValueError, match="config hidden must be in"):
        op(x, packed, [3, 8, 0, 5])
    with pytest.raises(ValueError, match=r"stem.weight must have shape \(8, 3, 3, 3\)"):
        torch.ops.pixelaux.pack_unet_encoder([torch.zeros(8, 3, 2, 3)] + unet_encoder_cpp.raw_weights(enc)[1:], config)
