"""Test helpers: models with random (not near-zero) weights and random inputs."""

import pytest
import torch

import pixelaux
from pixelaux.resources import num_threads  # noqa: F401 (for the tests)


def randomize(model, std=0.2, seed=0):
    """Re-draw every parameter from N(0, std^2) so no path is near zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def random_gated(seed=0, std=0.2, **cfg):
    torch.manual_seed(seed)
    return randomize(pixelaux.GatedPixelCNN(**cfg), std=std, seed=seed)


def random_images(model, n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2 ** model.bits, (n, model.channels, h, w), generator=g)


def random_cond(model, n, h, w, seed=0):
    if not model.cond_channels:
        return None
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(n, model.cond_channels, h, w, generator=g)


def param_error(params, ref):
    """Max abs error relative to the parameters' scale."""
    return ((params - ref).abs().max() / ref.abs().max().clamp(min=1e-6)).item()


# Configurations every engine is tested on: odd sizes, both distributions, 1 and 3
# channels, kernel 1/3/5, 0..3 blocks, with and without conditioning.
ENGINE_CONFIGS = [
    dict(channels=3, bits=8, hidden=12, blocks=2, nr_mix=3, dist="logistic"),
    dict(channels=1, bits=4, hidden=8, blocks=3, kernel_size=5, dist="categorical"),
    dict(channels=1, bits=8, hidden=8, blocks=1, nr_mix=2, dist="logistic", cond_channels=3),
    dict(channels=3, bits=5, hidden=6, blocks=0, kernel_size=1, nr_mix=2, dist="logistic"),
    dict(channels=3, bits=8, hidden=10, blocks=2, kernel_size=3, nr_mix=4, cond_channels=2),
]
ENGINE_SIZES = [(7, 5), (6, 11)]


def single_thread():
    """One intra-op thread, restored afterwards: tiny models gain nothing from threads,
    and on a busy 2-core machine OpenMP spin-waits make them ~10-20x slower."""
    return num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """``single_thread`` for a whole test module."""
    with single_thread():
        yield


def perturb_each_pixel(x, bits):
    """Batch of ``1 + H*W`` images: ``x`` itself, then ``x`` with pixel ``n`` (raster order,
    all channels) moved to a different random value."""
    _, c, h, w = x.shape
    xs = x.repeat(1 + h * w, 1, 1, 1)
    for n in range(h * w):
        i, j = divmod(n, w)
        xs[1 + n, :, i, j] = (x[0, :, i, j] + torch.randint(1, 2 ** bits, (c,))) % 2 ** bits
    return xs


def assert_causal(net, x, cond, bits):
    """Params at (i, j) do not move when a pixel at/after (i, j) changes; they do move when
    the pixel just left of or just above (i, j) changes."""
    _, _, h, w = x.shape
    xs = perturb_each_pixel(x, bits)
    conds = None if cond is None else cond.expand(xs.shape[0], -1, -1, -1)
    with torch.no_grad():
        out = net(xs, conds)
    diff = (out[1:] - out[:1]).abs().amax(dim=1).reshape(h * w, h * w)  # [perturbed n, position q]
    scale = out.abs().max()
    for n in range(h * w):
        assert diff[n, : n + 1].max() <= 1e-5 * scale, f"pixel {divmod(n, w)} leaks into earlier/own params"
        i, j = divmod(n, w)
        if j + 1 < w:
            assert diff[n, n + 1] > 1e-4 * scale, f"pixel {(i, j)} does not reach {(i, j + 1)}"
        if i + 1 < h:
            assert diff[n, n + w] > 1e-4 * scale, f"pixel {(i, j)} does not reach {(i + 1, j)}"


def random_pp(seed=0, std=0.2, **cfg):
    """A ``PixelCNNpp`` with random weights (dropout off unless given)."""
    torch.manual_seed(seed)
    cfg.setdefault("dropout", 0.0)
    return randomize(pixelaux.PixelCNNpp(**cfg), std=std, seed=seed)


def assert_same_images(model, cond, u, temperature, ref, got, params_got, name="", tol=1e-4):
    """The exactness contract's second half, for every backend: ``got`` (a cached backend)
    equals ``ref`` (the naive engine) on the same uniforms ``u``, except where a float tie
    flips a pixel; then the rest of that image may follow. So every image that differs
    must first differ at a tie: both parameter sets agree there to ``tol`` of their
    scale and each engine's pixel is what its own parameters give. ``params_got``:
    the backend's parameters at every position ``(B, P, H, W)`` (``return_params``).
    Returns a report line per differing image (empty when all are equal)."""
    lines = []
    diff = (ref != got).any(1)
    for k in range(ref.shape[0]):
        pos = diff[k].flatten().nonzero()
        if len(pos) == 0:
            continue
        i, j = divmod(pos[0].item(), ref.shape[3])
        with torch.no_grad(), single_thread():   # in the naive engine's own batch: a forward
            pa = model(ref, cond)[k:k + 1, :, i, j]  # pass is not bitwise batch-size invariant
        pb = params_got[k:k + 1, :, i, j].to(pa.device)
        err = ((pa - pb).abs().max() / pa.abs().max().clamp(min=1e-30)).item()
        own_a = model.dist.sample_flat(pa, u[k:k + 1, i, j], temperature)
        own_b = model.dist.sample_flat(pb, u[k:k + 1, i, j].to(pb.device), temperature)
        assert err <= tol, f"{name}: image {k} differs at ({i}, {j}) with params off by {err:.2e}"
        assert torch.equal(own_a[0], ref[k, :, i, j]) and torch.equal(own_b[0].cpu(), got[k, :, i, j].cpu()), \
            f"{name}: image {k} at ({i}, {j}): a pixel is not what its own parameters give"
        lines.append(f"{name}: image {k} first differs at ({i}, {j}): naive {ref[k, :, i, j].tolist()} "
                     f"backend {got[k, :, i, j].tolist()} (params within {err:.1e}: a float tie), "
                     f"{int(diff[k].sum())} pixels differ after it")
    return lines
