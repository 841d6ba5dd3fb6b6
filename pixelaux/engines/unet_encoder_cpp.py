"""The pyramid's conditioning encoder on CPU in C++ (docs/design.md section 2.5).

A ``UNetEncoder`` turns the level below into the map of the level being sampled, once
per batch. In torch its narrow convs (16-32 channels), its ELUs and the buffers it
allocates afresh on every call cost about as much as sampling a small upper level;
``torch.ops.pixelaux.unet_encode`` runs the same module on the engines' GEMM kernels
(``csrc/cpu/unet_encoder.h``: channels-last, zero-bordered buffers kept per thread, a
3x3 conv as three GEMMs over the padded image): 1.5x faster than oneDNN at batch 1 and
2.4-3.6x at batch 16 on the bench pyramid's level-64 encoder
(``benchmarks/results/pyramid.md``).

The map equals the module's forward to float rounding (a different sum order; tested
to 1e-5 in ``tests/test_unet_encoder_cpp.py``), and every sampling engine reads the
same map (``sampling._encode``), so engines stay comparable under the exactness
contract. Weights are packed once per weight version (``cached_cpp.pack_cached``).
"""
from __future__ import annotations

import torch

from .. import native
from ..encoders import UNetEncoder
from .cached_cpp import pack_cached

#: ``UNetEncoder`` parameters in the op's order (``unet_raw_specs`` in the C++ source).
WEIGHT_NAMES = ("stem.weight", "stem.bias",
                *(f"{blk}.{conv}.{p}" for blk in ("enc", "mid", "dec") for conv in ("conv1", "conv2")
                  for p in ("weight", "bias")),
                "out.weight", "out.bias")


def config_of(encoder: UNetEncoder) -> list[int]:
    return [encoder.in_channels, encoder.in_bits, encoder.stem.out_channels, encoder.out_channels]


def raw_weights(encoder: UNetEncoder) -> list[torch.Tensor]:
    out = []
    for name in WEIGHT_NAMES:
        module, _, attr = name.rpartition(".")
        out.append(getattr(encoder.get_submodule(module), attr))
    return out


def supports(encoder, lower: torch.Tensor, size) -> bool:
    """Whether ``encoder(lower)`` at ``size`` can run here: a ``UNetEncoder`` in float32 on
    the CPU, an integer ``lower`` on the CPU, the map exactly twice its size, the
    extension loaded."""
    if type(encoder) is not UNetEncoder or not native.available():
        return False
    w = encoder.stem.bias
    return (w.device.type == "cpu" and w.dtype == torch.float32 and lower.device.type == "cpu"
            and not lower.dtype.is_floating_point and lower.dim() == 4
            and tuple(size) == (2 * lower.shape[2], 2 * lower.shape[3]))


def encode(encoder: UNetEncoder, lower: torch.Tensor) -> torch.Tensor:
    """``encoder(lower)``, float32 ``(B, out_channels, 2h, 2w)``, contiguous."""
    config = config_of(encoder)
    packed = pack_cached(encoder, lambda: raw_weights(encoder), torch.ops.pixelaux.pack_unet_encoder, config)
    return torch.ops.pixelaux.unet_encode(lower.long(), packed, config)
