"""The naive engine: one full forward pass per pixel, as every public PixelCNN code does.

The honest baseline and the reference every cached backend is tested against.
"""
from __future__ import annotations

import torch

from ..weight_norm import folded
from .progress import pixel_progress


@torch.no_grad()
@folded()   # weight-normed weights computed once per call (weight_norm.py), not per pixel
def run(model, x, known, cond, uniforms, temperature, progress=False, max_pixels=None, return_params=False,
        window=None):
    """Sample the unknown pixels of ``x`` in raster order.

    model: ``GatedPixelCNN`` in eval mode. x: ``(B, C, H, W)`` long, holding the known
    pixels (others are overwritten). known: ``(B, H, W)`` bool or None. cond: float
    ``(B, cond_channels, H, W)`` or None. uniforms: ``(B, H, W, U)`` float32.
    ``max_pixels`` stops after that many pixels (benchmarks time a prefix: every
    pixel costs the same full forward pass). Returns the completed ``x``, or ``(x,
    params)`` with ``return_params``: the parameters each pixel was sampled from,
    ``(B, P, H, W)`` (zero past ``max_pixels``), as the cached engines return theirs.
    """
    x = x.clone()
    b, _, h, w = x.shape
    params_out = torch.zeros(b, model.dist.num_params, h, w, device=x.device) if return_params else None
    total = h * w if max_pixels is None else min(h * w, max_pixels)
    with pixel_progress(total, progress, "naive") as bar:
        for p in range(total):
            i, j = divmod(p, w)
            params = model.forward_unchecked(x, cond)[:, :, i, j]
            if return_params:
                params_out[:, :, i, j] = params
            bounds = None if window is None else window.bounds_at(x, i, j)
            pix = model.dist.sample_flat(params, uniforms[:, i, j].to(x.device), temperature, bounds)
            if known is not None:
                pix = torch.where(known[:, i, j, None], x[:, :, i, j], pix)
            x[:, :, i, j] = pix
            bar.update(1)
    return (x, params_out) if return_params else x
