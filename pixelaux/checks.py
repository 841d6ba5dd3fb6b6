"""Argument checks shared by the public entry points.

Each check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape
or value) with a message that names the argument, what was expected and what was
given.
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path

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


def check_choice(value, name: str, choices) -> str:
    """One of the strings ``choices`` (``TypeError`` for a non-string, ``ValueError`` otherwise)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {tuple(choices)}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_path(value, name: str) -> Path:
    """A filesystem path given as ``str`` or ``os.PathLike`` -> ``Path`` (``TypeError`` otherwise)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__} {value!r}")
    return Path(value)


def check_size(size, name: str = "size") -> tuple[int, int]:
    """``int`` or ``(H, W)`` -> ``(H, W)`` with both >= 1."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (int(size), int(size))
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise TypeError(f"{name} must be an int or a pair (H, W), got {size!r}")
    h = check_int(size[0], f"{name}[0]", min_value=1)
    w = check_int(size[1], f"{name}[1]", min_value=1)
    return h, w


def check_device(device, name: str = "device") -> torch.device:
    """A device (``"cpu"``, ``"cuda:0"``, a ``torch.device``) that exists here -> ``torch.device``.
    ``TypeError`` for other types, ``ValueError`` for unknown names and devices that this
    torch build or machine does not have (instead of torch's ``AssertionError``)."""
    shown = repr(str(device)) if isinstance(device, torch.device) else repr(device)
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"{name} must be a torch.device or a string such as 'cpu' or 'cuda:0', "
                        f"got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name} must name a torch device such as 'cpu' or 'cuda:0', got {shown}") from None
    if dev.type in ("cpu", "meta"):
        return dev
    backend = getattr(torch, dev.type, None)               # torch.cuda, torch.xpu, torch.mps, ...
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"{name} is {shown}, but this machine / torch build has no {dev.type} device "
                         f"(torch {torch.__version__})")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise ValueError(f"{name} is {shown}, but there are only {count()} {dev.type} device(s)")
    return dev


def check_tensor_device(x: torch.Tensor, name: str, device=None) -> None:
    """``ValueError`` unless tensor ``x`` holds data (not a ``meta`` tensor) and, when
    ``device`` is given, is on that device."""
    if x.device.type == "meta":
        raise ValueError(f"{name} must be a tensor with data on the model's device, got a meta tensor")
    if device is not None:
        device = torch.device(device)
        if x.device.type != device.type or (x.device.index is not None and device.index is not None
                                            and x.device.index != device.index):
            raise ValueError(f"{name} must be on the model's device {device}, got a tensor on {x.device}")


def check_images(x, name: str, *, channels: int, bits: int, size: tuple[int, int] | None = None,
                 device=None) -> torch.Tensor:
    """Integer pixels ``(B, channels, H, W)`` in ``[0, 2**bits)`` (on ``device`` if given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer pixels, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer pixels (uint8/int32/int64), got dtype {x.dtype}")
    check_tensor_device(x, name, device)
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


def check_cond(cond, name: str, *, batch: int, channels: int, size: tuple[int, int],
               device=None, dtype: torch.dtype = torch.float32, scales: int = 1):
    """A float conditioning map ``(B, channels, H, W)``, or a vector per image ``(B, channels)``
    (global conditioning, broadcast over all positions), on ``device`` if given; or ``None``
    when ``channels == 0``. Returned as ``dtype`` (the model's: float32 unless the model was
    converted, e.g. to float64 for a reference forward), with its shape. For a model over
    ``scales > 1`` resolutions (``PixelCNNpp``) also a tuple of ``scales`` maps, map ``s``
    ``(B, channels, H / 2**s, W / 2**s)`` (a deep encoder's per-scale features), returned
    as a tuple."""
    if channels == 0:
        if cond is not None:
            raise ValueError(f"{name} must be None for a model built with cond_channels=0")
        return None
    if cond is None:
        raise ValueError(f"{name} is required: the model was built with cond_channels={channels}")
    if isinstance(cond, (list, tuple)):
        if scales == 1 or len(cond) != scales:
            what = (f"a tuple of {scales} maps (one per scale) or one tensor" if scales > 1
                    else "one tensor (the model has one scale)")
            raise ValueError(f"{name} must be {what}, got a {type(cond).__name__} of {len(cond)}")
        out = []
        for s, c in enumerate(cond):
            hs, ws = size[0] >> s, size[1] >> s
            c = check_cond(c, f"{name}[{s}]", batch=batch, channels=channels, size=(hs, ws), device=device,
                           dtype=dtype)
            if c.dim() != 4:
                raise ValueError(f"{name}[{s}] must be a map (B, {channels}, {hs}, {ws}) like the other scales, "
                                 f"got {tuple(c.shape)}")
            out.append(c)
        return tuple(out)
    if not isinstance(cond, torch.Tensor) or not cond.dtype.is_floating_point:
        got = cond.dtype if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
    check_tensor_device(cond, name, device)
    expected = (batch, channels, *size)
    if cond.dim() == 2:
        if cond.shape[1] != channels:
            raise ValueError(f"{name} as a vector per image must have width cond_channels={channels}, i.e. shape "
                             f"{(batch, channels)}, got width {cond.shape[1]} (shape {tuple(cond.shape)})")
        if cond.shape[0] != batch:
            raise ValueError(f"{name} as a vector per image must have shape {(batch, channels)} (one per image), "
                             f"got {tuple(cond.shape)}")
    elif tuple(cond.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} (a map) or {(batch, channels)} (a vector per image), "
                         f"got {tuple(cond.shape)}")
    if not torch.isfinite(cond).all():
        raise ValueError(f"{name} must be finite, got NaN or inf values")
    return cond.to(dtype)
