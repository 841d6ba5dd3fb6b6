"""Argument checks shared by the public entry points.

Each check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape
or value) with a message that names the argument, what was expected and what was
given.
"""
from __future__ import annotations

import numbers

import torch


def check_int(value, name: str, *, min_value: int | None = None, max_value: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value}, got {value}")
    return value


def check_float(value, name: str, *, min_value: float | None = None, max_value: float | None = None,
                min_exclusive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if min_value is not None and (value < min_value or (min_exclusive and value == min_value)):
        op = ">" if min_exclusive else ">="
        raise ValueError(f"{name} must be {op} {min_value}, got {value}")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value}, got {value}")
    return value


def check_size(size, name: str = "size") -> tuple[int, int]:
    """``int`` or ``(H, W)`` -> ``(H, W)`` with both >= 1."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (int(size), int(size))
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"{name} must be an int or a pair (H, W), got {size!r}")
    h = check_int(size[0], f"{name}[0]", min_value=1)
    w = check_int(size[1], f"{name}[1]", min_value=1)
    return h, w


def check_images(x, name: str, *, channels: int, bits: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Integer pixels ``(B, channels, H, W)`` in ``[0, 2**bits)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer pixels, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer pixels (uint8/int32/int64), got dtype {x.dtype}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise ValueError(f"{name} must have spatial size {tuple(size)}, got {tuple(x.shape[2:])}")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= 2 ** bits:
        raise ValueError(f"{name} values must be in [0, {2 ** bits - 1}] ({bits}-bit), got range [{lo}, {hi}]")
    return x.long()


def check_cond(cond, name: str, *, batch: int, channels: int, size: tuple[int, int]) -> torch.Tensor | None:
    """A float conditioning map ``(B, channels, H, W)``, or ``None`` when ``channels == 0``."""
    if channels == 0:
        if cond is not None:
            raise ValueError(f"{name} must be None for a model built with cond_channels=0")
        return None
    if cond is None:
        raise ValueError(f"{name} is required: the model was built with cond_channels={channels}")
    if not isinstance(cond, torch.Tensor) or not cond.dtype.is_floating_point:
        got = cond.dtype if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
    expected = (batch, channels, *size)
    if tuple(cond.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(cond.shape)}")
    if not torch.isfinite(cond).all():
        raise ValueError(f"{name} must be finite, got NaN or inf values")
    return cond
