"""The uniforms every sampling engine consumes (docs/design.md section 2.1).

Image ``k`` of a batch of ``n`` gets its own ``torch.Generator``, seeded with the
``k``-th 64-bit draw of the caller's generator; each stage of a sampler (the gray
prior, the colour model, each pyramid level) then takes the next block
``(H, W, U)`` of uniforms from that image's generator. So image ``k`` is the same
whatever the batch size, and every engine reads the same numbers at the same pixel.

``offset`` skips the first ``offset`` images of that sequence: ``ImageUniforms(n,
g, offset=k)`` gives images ``k .. k+n-1``, the slice of ``ImageUniforms(k + n, g)``
(``torch.randint`` draws its 64-bit values one after another, so the ``k``-th draw
does not depend on how many are drawn: ``tests/test_distributed.py``). Either way
the caller's generator ends ``offset + n`` draws further on. This is how several
processes share one seed (docs/design.md section 2.1).
"""
from __future__ import annotations

import torch

from .checks import check_int

#: the skipped draws of ``offset`` are made this many at a time (bounded memory)
SKIP_CHUNK = 2 ** 20


def _chunks(total: int, size: int):
    while total > 0:
        yield min(total, size)
        total -= size


class ImageUniforms:
    """Per-image uniform streams for images ``offset .. offset+n-1`` of the generator's sequence."""

    def __init__(self, n: int, generator: torch.Generator | None = None, offset: int = 0):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
        offset = check_int(offset, "offset", min_value=0)
        for size in _chunks(offset, SKIP_CHUNK):           # skipped images: draws thrown away
            torch.randint(0, 2 ** 63 - 1, (size,), generator=generator, dtype=torch.int64)
        seeds = torch.randint(0, 2 ** 63 - 1, (n,), generator=generator, dtype=torch.int64)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def draw(self, height: int, width: int, per_pixel: int) -> torch.Tensor:
        """The next block of uniforms, ``(n, H, W, U)`` float32 in ``[0, 1)`` on the CPU."""
        return torch.stack([torch.rand((height, width, per_pixel), generator=g) for g in self.generators])
