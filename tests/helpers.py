"""Test helpers: models with random (not near-zero) weights and random inputs."""
import torch

import pixelaux


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
