"""What a causal stack reads at each pixel: integer values turned into input channels.

Two encodings, one contract (docs/design.md section 1.6):

* **scaled** (``embed_dim=0``, the default): an intensity ``v`` in ``[0, K)``,
  ``K = 2**bits``, becomes ``v * 2/(K-1) - 1`` in ``[-1, 1]``; one input channel per
  image channel. Right for pixels, where 17 is between 16 and 18.
* **tokens** (``embed_dim=E``): each value is looked up in a learned table, ``E`` input
  channels per image channel, as a prior over discrete codes (a VQ-VAE's code grid)
  needs: there is no order between code 17 and code 18. One table row per
  (channel, value): ``channels * K`` rows, ``K`` up to ``2**16``.

Either way a channel of ones follows, so the zero padding of the shifted convs is
distinguishable from any value. ``table()`` is the encoding as a lookup table
``(channels, K, E)`` (``E = 1`` when scaled, holding the very floats ``forward``
computes); the cached engines write a sampled pixel into their input buffers by
reading it, so every backend gets the same floats as the model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .checks import check_int


class PixelInput(nn.Module):
    """Integer images ``(B, channels, H, W)`` -> float input ``(B, width, H, W)``,
    ``width = channels * max(embed_dim, 1) + 1`` (channel ``c * E + e``, ones last)."""

    def __init__(self, channels: int, bits: int, embed_dim: int = 0):
        super().__init__()
        self.channels, self.bits = channels, bits
        self.embed_dim = check_int(embed_dim, "embed_dim", min_value=0, max_value=4096)
        self.levels = 2 ** bits
        self.per_channel = max(self.embed_dim, 1)
        self.width = channels * self.per_channel + 1
        # A registered module only for tokens: scaled models keep their state-dict keys.
        self.embed = nn.Embedding(channels * self.levels, self.embed_dim) if self.embed_dim else None
        # The dtype the encoding is computed in: the model's (``model.double()`` converts it,
        # e.g. for a float64 reference forward). Not persistent: not in the state dict.
        self.register_buffer("dtype_probe", torch.empty(0), persistent=False)

    def values(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The encoded image without the ones channel, ``(B, width - 1, H, W)``, in
        ``dtype`` (default: the module's, float32 unless converted)."""
        if self.embed is None:
            return x.to(dtype or self.dtype_probe.dtype) * (2.0 / (self.levels - 1)) - 1.0
        b, c, h, w = x.shape
        offsets = torch.arange(c, device=x.device).view(1, c, 1, 1) * self.levels
        e = self.embed(x.long() + offsets)                       # (B, C, H, W, E)
        return e.permute(0, 1, 4, 2, 3).reshape(b, c * self.embed_dim, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.values(x)
        return torch.cat([v, torch.ones_like(v[:, :1])], dim=1)

    def table(self, device=None) -> torch.Tensor:
        """The encoding as a lookup table ``(channels, K, E)``, float32, contiguous, on
        ``device`` (default: the table's own, or the CPU when scaled):
        ``values(x)[:, c*E + e] == table()[c, x[:, c], e]`` bit for bit."""
        if self.embed is None:
            k = torch.arange(self.levels, device=device).view(1, 1, self.levels, 1)
            return self.values(k, torch.float32)[0].expand(self.channels, self.levels, 1).contiguous()
        t = self.embed.weight.detach().view(self.channels, self.levels, self.embed_dim).float()
        return t.to(device).contiguous() if device is not None else t.contiguous()


def encode_pixels(table: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Integer pixels ``(B, C)`` -> their input channels ``(B, C * E)`` read from
    ``table`` ``(C, K, E)`` (``PixelInput.table``); what the engines write per pixel."""
    c = torch.arange(table.shape[0], device=pixels.device)
    return table[c, pixels.long()].reshape(pixels.shape[0], -1)
