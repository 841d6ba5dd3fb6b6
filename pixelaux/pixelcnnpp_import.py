"""Import of checkpoints saved by the most used PyTorch port of PixelCNN++.

That code saves ``torch.save(model.state_dict(), path)`` of its ``PixelCNN(nr_resnet,
nr_filters, nr_logistic_mix, input_channels)``. Every conv, transposed conv and
linear layer there is weight-normalised (``weight_g``, ``weight_v``, ``bias``; or the
newer ``parametrizations.weight.original0`` / ``original1``); its modules map one to
one onto :class:`pixelaux.PixelCNNpp`:

=========================================  ==========================================
port key prefix                            pixelaux module
=========================================  ==========================================
``u_init.conv``                            ``u_init``
``ul_init.0.conv`` / ``ul_init.1.conv``    ``ul_init_v`` / ``ul_init_h``
``{up,down}_layers.i.{u,ul}_stream.k``     same names; ``conv_input.conv`` -> ``conv1``,
                                           ``nin_skip.lin_a`` -> ``nin_skip`` (Linear ->
                                           1x1 conv), ``conv_out.conv`` -> ``conv2``
``downsize_{u,ul}_stream.i.conv``          ``downsize_{u,ul}[i]``
``upsize_{u,ul}_stream.i.deconv``          ``upsize_{u,ul}[i]``
``nin_out.lin_a``                          ``head`` (rows reordered, see below)
=========================================  ==========================================

Weight norm is folded: ``W = g * v / ||v||``, the norm over every axis but the first
(for a transposed conv, whose weight is ``(in, out, kh, kw)``, that is one norm per
input channel). The port's output per pixel is ``[logits (M)]`` then, per channel
``c``, ``[means (M), log_scales (M), coeffs (M)]`` (``coeffs`` of channel ``c`` is the
coupling pair ``c`` in the order G<-R, B<-R, B<-G; 1 channel: no coeffs); pixelaux's is
``[logits, means (C*M), log_scales (C*M), coeffs (3*M)]``, so ``head`` takes the rows
of ``nin_out`` in that order.

Only ``torch.load(..., weights_only=True)`` ever reads the file: tensors and plain
containers, no arbitrary Python objects.
"""
from __future__ import annotations

import os
import re
import warnings

import torch

from .checks import check_float, check_int, check_size
from .pixelcnnpp import PixelCNNpp

__all__ = ["import_pixel_cnn_pp", "read_state_dict", "infer_config", "head_row_order"]

#: ``(g, v)`` key suffixes of weight-normalised layers: the old ``weight_norm`` and the
#: newer parametrization. A layer may also store a plain ``weight``.
_WN_FORMS = (("weight_g", "weight_v"),
             ("parametrizations.weight.original0", "parametrizations.weight.original1"))
#: state-dict wrappers unpacked when the top-level dict holds no tensors itself.
_WRAPPER_KEYS = ("state_dict", "model_state_dict")
_SHOW = 5


def _fmt_keys(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > _SHOW else f"{shown} ({len(keys)})"


def _not_a_state_dict(path: str, global_name: str | None) -> str:
    """What a file that ``torch.load(weights_only=True)`` refused is not, from its first bytes."""
    if global_name:
        return f"not a PyTorch state dict of tensors: it holds the Python object {global_name}"
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return "a torch.save archive that holds more than tensors and plain containers, not a PyTorch state dict"
    if head[:1] == b"\x80":
        return "a Python pickle that torch.save did not write, not a PyTorch state dict"
    return "not a PyTorch state dict (torch.save writes a zip archive)"


def read_state_dict(path_or_state_dict) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` state dict of a file (``torch.load`` with
    ``weights_only=True``) or of an in-memory dict. Unwraps ``{"state_dict": ...}`` /
    ``{"model_state_dict": ...}`` and a ``module.`` prefix on every key (DataParallel /
    DDP). ``ValueError`` (one line) when it is not a state dict."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        path = os.fspath(path_or_state_dict)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path}: is a folder, expected a checkpoint file")
        try:
            with warnings.catch_warnings():       # e.g. torch's note on pickle protocols
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the unpickler raises, one line
            m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            raise ValueError(f"{path}: {_not_a_state_dict(path, m.group(1) if m else None)}") from None
        what = path
    elif isinstance(path_or_state_dict, dict):
        obj, what = path_or_state_dict, "the state dict"
    else:
        raise TypeError(f"expected a checkpoint path or a state dict, got {type(path_or_state_dict).__name__}")
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: not a state dict (a {type(obj).__name__}, expected a dict of tensors)")
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if inner:
            obj = obj[inner[0]]
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad or not obj:
        raise ValueError(f"{what}: not a state dict of tensors" +
                         (f" (non-tensor entries: {_fmt_keys(bad)})" if bad else " (it is empty)"))
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _weight_of(sd: dict, prefix: str) -> torch.Tensor | None:
    """The (unnormalised) weight tensor of layer ``prefix`` as stored, for shape inference."""
    for _, v in _WN_FORMS:
        if f"{prefix}.{v}" in sd:
            return sd[f"{prefix}.{v}"]
    return sd.get(f"{prefix}.weight")


def _count(sd: dict, pattern: str) -> int:
    """1 + the largest index ``i`` of the keys matching ``pattern`` (one ``(\\d+)`` group)."""
    rx = re.compile(pattern)
    idx = [int(m.group(1)) for k in sd for m in [rx.match(k)] if m]
    return max(idx) + 1 if idx else 0


def infer_config(sd: dict) -> dict:
    """``nr_resnet``, ``nr_filters``, ``nr_logistic_mix``, ``input_channels`` and the
    number of scales of a port state dict, from the shapes:

    * ``u_init.conv`` weight ``(nr_filters, input_channels + 1, 2, 3)``;
    * ``nin_out.lin_a`` weight ``(10 * nr_logistic_mix, nr_filters)`` for 3 channels,
      ``(3 * nr_logistic_mix, nr_filters)`` for 1;
    * ``nr_resnet``: the number of blocks ``up_layers.0.u_stream.{k}``; scales: the
      number of ``up_layers.{i}`` (3 in that code).
    """
    w0, wh = _weight_of(sd, "u_init.conv"), _weight_of(sd, "nin_out.lin_a")
    missing = [k for k, w in (("u_init.conv.weight_v", w0), ("nin_out.lin_a.weight_v", wh)) if w is None]
    if missing:
        raise ValueError(f"not a PixelCNN++ state dict: missing {_fmt_keys(missing)}")
    if w0.dim() != 4 or tuple(w0.shape[2:]) != (2, 3) or w0.shape[1] < 2:
        raise ValueError(f"mis-shaped key u_init.conv: weight {tuple(w0.shape)}, expected "
                         "(nr_filters, input_channels + 1, 2, 3)")
    nr_filters, channels = int(w0.shape[0]), int(w0.shape[1]) - 1
    if channels not in (1, 3):
        raise ValueError(f"u_init.conv reads {channels} + 1 input channels; PixelCNN++ checkpoints have "
                         "1 or 3 image channels (plus the channel of ones)")
    per_mix = 10 if channels == 3 else 3
    if wh.dim() != 2 or wh.shape[1] != nr_filters or wh.shape[0] % per_mix:
        raise ValueError(f"mis-shaped key nin_out.lin_a: weight {tuple(wh.shape)}, expected "
                         f"({per_mix} * nr_logistic_mix, {nr_filters}) for {channels} channel(s)")
    scales = _count(sd, r"^up_layers\.(\d+)\.")
    nr_resnet = _count(sd, r"^up_layers\.0\.u_stream\.(\d+)\.")
    if scales == 0 or nr_resnet == 0:
        raise ValueError("not a PixelCNN++ state dict: no up_layers.0.u_stream.* keys")
    return dict(nr_resnet=nr_resnet, nr_filters=nr_filters, nr_logistic_mix=int(wh.shape[0]) // per_mix,
                input_channels=channels, scales=scales)


def head_row_order(channels: int, nr_mix: int) -> torch.Tensor:
    """``order[r]`` = the row of the port's ``nin_out`` that is pixelaux's head row ``r``."""
    m, c = nr_mix, channels
    block = 3 * m if c == 3 else 2 * m            # per channel: means, log_scales (, coeffs)
    rows = list(range(m))                                                   # logits
    rows += [m + ch * block + k for ch in range(c) for k in range(m)]       # means
    rows += [m + ch * block + m + k for ch in range(c) for k in range(m)]   # log_scales
    if c == 3:                                                              # coeffs, pair j in block j
        rows += [m + j * block + 2 * m + k for j in range(3) for k in range(m)]
    return torch.tensor(rows, dtype=torch.long)


def _layer_map(model: PixelCNNpp) -> list[tuple[str, str, bool]]:
    """``(port prefix, pixelaux module name, is_linear)`` for every layer."""
    out = [("u_init.conv", "u_init", False), ("ul_init.0.conv", "ul_init_v", False),
           ("ul_init.1.conv", "ul_init_h", False)]
    for pas in ("up_layers", "down_layers"):
        for i, stage in enumerate(getattr(model, pas)):
            for stream in ("u_stream", "ul_stream"):
                for k, block in enumerate(getattr(stage, stream)):
                    p = f"{pas}.{i}.{stream}.{k}"
                    out.append((f"{p}.conv_input.conv", f"{p}.conv1", False))
                    if block.nin_skip is not None:
                        out.append((f"{p}.nin_skip.lin_a", f"{p}.nin_skip", True))
                    out.append((f"{p}.conv_out.conv", f"{p}.conv2", False))
    for i in range(model.scales - 1):
        out += [(f"downsize_u_stream.{i}.conv", f"downsize_u.{i}", False),
                (f"downsize_ul_stream.{i}.conv", f"downsize_ul.{i}", False),
                (f"upsize_u_stream.{i}.deconv", f"upsize_u.{i}", False),
                (f"upsize_ul_stream.{i}.deconv", f"upsize_ul.{i}", False)]
    out.append(("nin_out.lin_a", "head", True))
    return out


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` with the norm over every axis of ``v`` but the first (``dim=0``)."""
    v64 = v.double()
    norm = v64.reshape(v64.shape[0], -1).norm(dim=1)
    shape = (-1,) + (1,) * (v.dim() - 1)
    return g.double().reshape(shape) * v64 / norm.reshape(shape)


def _collect(sd: dict, layers, params: dict):
    """The folded ``{pixelaux name: tensor}`` and the problems, as
    ``(weights, missing, mis_shaped, used keys)``."""
    weights, missing, mis_shaped, used = {}, [], [], set()
    for port, ours, linear in layers:
        want = tuple(params[f"{ours}.weight"].shape)
        port_shape = want[:2] if linear else want
        forms = [f for f in _WN_FORMS if f"{port}.{f[0]}" in sd or f"{port}.{f[1]}" in sd]
        if forms:
            gk, vk = (f"{port}.{s}" for s in forms[0])
            if gk not in sd or vk not in sd:
                missing.append(gk if gk not in sd else vk)
                used.update(k for k in (gk, vk) if k in sd)
                w = None
            else:
                used.update((gk, vk))
                g, v = sd[gk], sd[vk]
                w = None
                if tuple(v.shape) != port_shape:
                    mis_shaped.append(f"{vk} {tuple(v.shape)} (expected {port_shape})")
                elif g.numel() != port_shape[0]:
                    mis_shaped.append(f"{gk} {tuple(g.shape)} (expected ({port_shape[0]}, "
                                      f"{', '.join('1' * (len(port_shape) - 1))}))")
                else:
                    w = fold_weight_norm(g, v)
        elif f"{port}.weight" in sd:
            wk = f"{port}.weight"
            used.add(wk)
            w = sd[wk]
            if tuple(w.shape) != port_shape:
                mis_shaped.append(f"{wk} {tuple(w.shape)} (expected {port_shape})")
                w = None
        else:
            missing.append(f"{port}.weight_g")
            missing.append(f"{port}.weight_v")
            w = None
        bk = f"{port}.bias"
        want_b = tuple(params[f"{ours}.bias"].shape)
        if bk not in sd:
            missing.append(bk)
        else:
            used.add(bk)
            if tuple(sd[bk].shape) != want_b:
                mis_shaped.append(f"{bk} {tuple(sd[bk].shape)} (expected {want_b})")
            else:
                weights[f"{ours}.bias"] = sd[bk]
        if w is not None:
            weights[f"{ours}.weight"] = w.reshape(want)
    return weights, missing, mis_shaped, used


def import_pixel_cnn_pp(path_or_state_dict, *, image_size=(32, 32), bits: int = 8,
                        dropout: float = 0.0) -> PixelCNNpp:
    """A :class:`pixelaux.PixelCNNpp` holding the weights of a PixelCNN++ checkpoint saved
    by the public PyTorch port (``torch.save(model.state_dict(), path)``).

    Args:
        path_or_state_dict: a file path (read with ``torch.load(weights_only=True)`` only)
            or the state dict itself; ``{"state_dict": ...}`` wrappers and a ``module.``
            prefix (DataParallel / DDP) are unwrapped.
        image_size: the model's default sampling size ``(H, W)`` (or one int); both
            sides divisible by 4 (``2**(scales-1)``). The weights work at any such size.
        bits: pixel depth; that code's loss is for 8-bit images (``x = 2k/255 - 1``).
        dropout: the model's dropout (0: inference; that code trained with 0.5).

    ``nr_resnet``, ``nr_filters``, ``nr_logistic_mix``, the channels (1 or 3) and the
    number of scales are inferred from the shapes (:func:`infer_config`). Returns the
    model in ``eval()`` mode; its ``log_prob`` equals minus that code's
    ``discretized_mix_logistic_loss`` per image. Raises ``ValueError`` for a file that is
    not a state dict, and for missing, unexpected or mis-shaped keys (naming the first
    few and the count).
    """
    size = check_size(image_size, "image_size")
    bits = check_int(bits, "bits", min_value=1, max_value=16)
    dropout = check_float(dropout, "dropout", min_value=0.0, max_value=1.0)
    sd = read_state_dict(path_or_state_dict)
    cfg = infer_config(sd)
    model = PixelCNNpp(channels=cfg["input_channels"], bits=bits, hidden=cfg["nr_filters"],
                       blocks=cfg["nr_resnet"], scales=cfg["scales"], dropout=dropout,
                       nr_mix=cfg["nr_logistic_mix"], image_size=size)
    params = dict(model.state_dict())
    weights, missing, mis_shaped, used = _collect(sd, _layer_map(model), params)
    unexpected = [k for k in sd if k not in used]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt_keys(unexpected)}")
    if mis_shaped:
        problems.append(f"mis-shaped keys: {_fmt_keys(mis_shaped)}")
    if problems:
        inferred = ", ".join(f"{k}={v}" for k, v in cfg.items())
        raise ValueError(f"not a PixelCNN++ state dict of the expected layout ({inferred}): " + "; ".join(problems))
    order = head_row_order(cfg["input_channels"], cfg["nr_logistic_mix"])
    weights["head.weight"], weights["head.bias"] = weights["head.weight"][order], weights["head.bias"][order]
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"non-finite weights after folding weight norm (a zero weight_v?) in {_fmt_keys(bad)}")
    missing_ours = [k for k in params if k not in weights]
    if missing_ours:  # pragma: no cover - the layer map covers every parameter
        raise AssertionError(f"internal: pixelaux parameters not mapped: {missing_ours}")
    model.load_state_dict({k: v.to(params[k].dtype) for k, v in weights.items()})
    return model.eval()


def describe(model: PixelCNNpp) -> str:
    """One line: what was inferred."""
    c = model.config
    return (f"nr_resnet={c['blocks']}, nr_filters={c['hidden']}, nr_logistic_mix={c['nr_mix']}, "
            f"channels={c['channels']}, scales={c['scales']}, image size {c['image_size'][0]}x{c['image_size'][1]}")

