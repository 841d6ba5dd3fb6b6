"""Checkpoints: one ``.safetensors`` file per model, never pickle.

Layout: a single safetensors file. The tensors are the model's ``state_dict``; the
safetensors metadata holds one entry, ``"pixelaux"``, a JSON header::

    {"format": "pixelaux", "format_version": 1, "kind": "GatedPixelCNN",
     "config": {...}, "sha256": "...", ...extra}

``kind`` picks the class from :data:`MODEL_REGISTRY` and ``cls(**config)`` rebuilds the
architecture; ``sha256`` is a digest of the rest of the JSON header and of every
tensor's name, dtype, shape and bytes, so flipped bits in the data or in the config are
caught (safetensors itself checks only the layout).
A single file is replaced atomically with one rename: a reader sees the old
checkpoint or the new one, never a mix or a partial file.

Training state (:func:`save_training_state` / :func:`load_training_state`) uses the
same container: any nested structure of dicts, lists, tuples, scalars and tensors
(an optimizer's ``state_dict``, EMA weights, RNG states, the step) is split into
tensors (stored as safetensors) and a JSON tree that refers to them by name.

Every problem with a file raises ``ValueError`` naming the path and what is wrong.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import secrets
import struct
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

FORMAT = "pixelaux"
STATE_FORMAT = "pixelaux-training-state"
FORMAT_VERSION = 1
_META_KEY = "pixelaux"
_MAX_HEADER = 100 * 2 ** 20

#: ``kind`` -> ``"module:Class"``; imported only when a checkpoint of that kind is loaded.
MODEL_REGISTRY = {
    "GatedPixelCNN": "pixelaux.gated_pixelcnn:GatedPixelCNN",
    "GrayscalePixelCNN": "pixelaux.grayscale:GrayscalePixelCNN",
    "PyramidPixelCNN": "pixelaux.pyramid:PyramidPixelCNN",
    "PixelCNNpp": "pixelaux.pixelcnnpp:PixelCNNpp",
    "AuxiliaryPixelCNN": "pixelaux.auxiliary:AuxiliaryPixelCNN",
}


# --------------------------------------------------------------------------- files

def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is always either the old file or the
    complete new one: a temporary file in the same directory, flushed and fsynced, then
    ``os.replace`` and an fsync of the directory. On any error or interrupt
    (``KeyboardInterrupt`` included) the temporary file is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are mode 0600; this one gets 0666 & ~umask.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


TEMP_PATTERN = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")


def remove_stale_temp_files(directory) -> list[str]:
    """Delete the temporary files of writes that a SIGKILL interrupted (``atomic_write_bytes``
    names them ``.{name}.{16 hex}.tmp``); a killed process cannot clean up after itself.
    Call only where no other process is writing. Returns the names removed."""
    d = Path(directory)
    removed = []
    if d.is_dir():
        for entry in d.iterdir():
            if TEMP_PATTERN.match(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
    return removed


def _fsync_dir(d: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(tensors: dict[str, torch.Tensor], header: dict) -> str:
    """sha256 over the header (without its own ``sha256`` entry, keys sorted) and the
    (name, dtype, shape, bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    rest = {k: v for k, v in header.items() if k != "sha256"}
    h.update(json.dumps(rest, sort_keys=True, allow_nan=False).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _dumps(tensors: dict[str, torch.Tensor], header: dict) -> bytes:
    # Own contiguous CPU copies: safetensors refuses views and shared storage.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    header = dict(header, sha256=_digest(tensors, header))
    return _st_save(tensors, metadata={_META_KEY: json.dumps(header, allow_nan=False)})


def _read(path, expected_format: str) -> tuple[dict, bytes]:
    """Check the file's shape and header without touching tensor data -> (header, bytes)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} is not a file")
    data = p.read_bytes()
    what = f"checkpoint {str(p)!r}"
    # Validate the safetensors layout first; only a file that fails it is diagnosed
    # by its magic bytes (a header length can begin with 0x80 too). Nothing is ever
    # unpickled either way.
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else None
    if n is None or n > _MAX_HEADER or 8 + n > len(data) or data[8:9] != b"{":
        if data[:4] == b"PK\x03\x04":
            raise ValueError(f"{what} is a zip archive (a torch.save file, i.e. pickle); pixelaux "
                             "never unpickles: load it with torch.load(weights_only=True) yourself "
                             "and re-save with pixelaux.checkpoint.save")
        if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise ValueError(f"{what} is a pickle file; pixelaux never unpickles (pickle can run "
                             "arbitrary code); re-save the model with pixelaux.checkpoint.save")
        raise ValueError(f"{what} is truncated or not a safetensors file (file length {len(data)}"
                         + (f", header length {n})" if n is not None else ")"))
    try:
        raw = json.loads(data[8:8 + n].decode("utf-8"))
        header = json.loads(raw["__metadata__"][_META_KEY])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{what} is not a pixelaux checkpoint (no readable '{_META_KEY}' "
                         f"header in the safetensors metadata: {e!r})") from e
    if not isinstance(header, dict) or header.get("format") != expected_format:
        got = header.get("format") if isinstance(header, dict) else header
        raise ValueError(f"{what} has format {got!r}, expected {expected_format!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{what} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{what} has format_version {version}, newer than this pixelaux "
                         f"understands ({FORMAT_VERSION}); upgrade pixelaux")
    return header, data


def _tensors(path, header: dict, data: bytes) -> dict[str, torch.Tensor]:
    try:
        tensors = _st_load(data)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ValueError(f"checkpoint {str(path)!r} is corrupted or truncated: {e}") from e
    if _digest(tensors, header) != header.get("sha256"):
        raise ValueError(f"checkpoint {str(path)!r} is corrupted: its tensors or header do not match "
                         "its sha256 digest")
    return tensors


# --------------------------------------------------------------------------- models

def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def model_class(kind: str):
    """The model class registered for ``kind`` (imported lazily); ``ValueError`` if unknown."""
    if kind not in MODEL_REGISTRY:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_REGISTRY)}")
    module, name = MODEL_REGISTRY[kind].split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model kind {kind!r} needs {module}.{name}, which cannot be "
                         f"imported: {e}") from e


def from_config(kind: str, config: dict) -> nn.Module:
    """The model a stored ``kind`` / ``config`` describes. An auxiliary-variable model whose
    config has no ``consistent`` key predates consistent decoding and is built without it
    (the constructors' default is on, for new models)."""
    cls = model_class(kind)
    if "consistent" in inspect.signature(cls.__init__).parameters:
        config = {"consistent": False, **config}
    return cls(**config)


def set_consistent(model: nn.Module, value: bool) -> nn.Module:
    """Turn consistent decoding on or off for every auxiliary-variable model in ``model``
    (a nested prior included); ``ValueError`` where a transform does not support it."""
    from .auxiliary import is_composite
    for m in model.modules():         # nested priors are submodules; a pyramid's own levels follow it
        if is_composite(m):
            m.consistent = value
    return model


def save(model: nn.Module, path, *, extra: dict | None = None) -> Path:
    """Write ``model`` (weights + kind + config) atomically to the single file ``path``.

    ``model``: a pixelaux model with ``kind`` and ``config`` (``torch.compile`` / DDP
    wrappers are unwrapped). ``extra``: JSON-serialisable entries added to the header
    (e.g. ``{"step": 1000, "test_bpd": 3.1}``); they cannot override the format keys.
    Refuses (``ValueError``) unknown kinds, non-JSON configs and non-finite weights.
    Returns the path.
    """
    model = unwrap(model)
    kind, config = getattr(model, "kind", None), getattr(model, "config", None)
    if kind not in MODEL_REGISTRY:
        raise ValueError(f"cannot save a {type(model).__name__}: kind {kind!r} is not one of "
                         f"{sorted(MODEL_REGISTRY)}")
    if not isinstance(config, dict):
        raise ValueError(f"cannot save a {kind}: its config must be a dict, got {type(config).__name__}")
    header = dict(extra or {})
    clash = {"format", "format_version", "kind", "config", "sha256"} & set(header)
    if clash:
        raise ValueError(f"extra must not set {sorted(clash)}")
    header.update(format=FORMAT, format_version=FORMAT_VERSION, kind=kind, config=config)
    try:
        json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot save a {kind}: config/extra are not JSON-serialisable: {e}") from e
    state = model.state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"refusing to save {str(path)!r}: non-finite values in {bad[:5]}")
    atomic_write_bytes(path, _dumps(state, header))
    return Path(path)


def read_header(path) -> dict:
    """The JSON header of a model checkpoint (kind, config, extra entries), without
    building the model or reading the weights."""
    return _read(path, FORMAT)[0]


def load(path, map_location="cpu", consistent: bool | None = None) -> nn.Module:
    """Rebuild the model saved at ``path`` and load its weights strictly.

    Returns the model on ``map_location`` in ``eval()`` mode. ``consistent``: None keeps
    the checkpoint's setting (off for checkpoints from before consistent decoding); True /
    False turns it on / off for every auxiliary-variable part (``set_consistent``). ``ValueError`` (naming the
    path) for: a missing file, a truncated or corrupted file, a pickle / ``torch.save``
    file (refused without unpickling), an unknown kind, a newer ``format_version``, a
    config the class rejects, and weights that do not fit the config (missing or
    unexpected keys, wrong shapes).
    """
    header, data = _read(path, FORMAT)
    kind, config = header.get("kind"), header.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {str(path)!r}: 'config' must be a dict, got {config!r}")
    try:
        model_class(kind)
    except ValueError as e:
        raise ValueError(f"checkpoint {str(path)!r}: {e}") from e
    try:
        model = from_config(kind, config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(path)!r}: config does not build a {kind}: {e}") from e
    tensors = _tensors(path, header, data)
    check_state_dict(model, tensors, f"checkpoint {str(path)!r}")
    model.load_state_dict(tensors, strict=True)
    if consistent is not None:
        set_consistent(model, consistent)
    return model.to(map_location).eval()


def check_state_dict(model: nn.Module, tensors: dict, what: str) -> None:
    """``ValueError`` naming ``what`` unless ``tensors`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k}: {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
              for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"missing keys {missing[:5]}" if missing else "",
                 f"unexpected keys {unexpected[:5]}" if unexpected else "",
                 f"shape mismatches (file vs model) {shapes[:5]}" if shapes else ""]
        raise ValueError(f"{what}: weights do not match the {type(model).__name__} config: "
                         + "; ".join(p for p in parts if p))


# --------------------------------------------------------------------------- training state

def _encode(obj, tensors: dict, prefix: str):
    """Nested Python/tensor structure -> JSON tree; tensors go to ``tensors`` by name."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"__tuple__": items}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{prefix}/{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, f"{prefix}/key{i}"),
                               _encode(v, tensors, f"{prefix}/{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix!r} in a training state")


def _decode(tree, tensors: dict):
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__tuple__" in tree:
            return tuple(_decode(v, tensors) for v in tree["__tuple__"])
        if "__items__" in tree:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in tree["__items__"]}
        return {k: _decode(v, tensors) for k, v in tree.items()}
    return tree


def save_training_state(path, state: dict) -> Path:
    """Write a training state atomically to the single safetensors file ``path``.

    ``state``: nested dicts / lists / tuples of ``None``, bool, int, float, str and
    tensors, e.g. ``{"step": 10, "model": sd, "ema": sd, "optimizer": opt.state_dict(),
    "rng": {"torch": torch.get_rng_state()}}``. Tensors are stored (on CPU) in the
    safetensors data, the rest as JSON; dict keys that are not strings (an optimizer's
    parameter ids) are kept with their type.
    """
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "s")
    header = {"format": STATE_FORMAT, "format_version": FORMAT_VERSION, "tree": tree}
    atomic_write_bytes(path, _dumps(tensors, header))
    return Path(path)


def load_training_state(path, map_location="cpu") -> dict:
    """Read a state written by :func:`save_training_state`; tensors on ``map_location``.
    ``ValueError`` (naming the path) for missing, truncated, corrupted or foreign files."""
    header, data = _read(path, STATE_FORMAT)
    tensors = _tensors(path, header, data)
    tensors = {k: v.to(map_location) for k, v in tensors.items()}
    try:
        return _decode(header["tree"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"training state {str(path)!r} is malformed: {e!r}") from e
