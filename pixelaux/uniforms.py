"""The uniforms every sampling engine consumes (docs/design.md section 2.1).

Image ``k`` of a batch of ``n`` gets its own ``torch.Generator``, seeded with the
``k``-th 64-bit draw of the caller's generator; each stage of a sampler (the gray
prior, the colour model, each pyramid level) then takes the next block
``(H, W, U)`` of uniforms from that image's generator. So image ``k`` is the same
whatever the batch size, and every engine reads the same numbers at the same pixel.
"""
from __future__ import annotations

import torch


class ImageUniforms:
    """Per-image uniform streams for a batch of ``n`` images."""

    def __init__(self, n: int, generator: torch.Generator | None = None):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
        seeds = torch.randint(0, 2 ** 63 - 1, (n,), generator=generator, dtype=torch.int64)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def draw(self, height: int, width: int, per_pixel: int) -> torch.Tensor:
        """The next block of uniforms, ``(n, H, W, U)`` float32 in ``[0, 1)`` on the CPU."""
        return torch.stack([torch.rand((height, width, per_pixel), generator=g) for g in self.generators])
