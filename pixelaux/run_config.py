"""Run configurations of ``pixelaux train``: presets, config files, overrides (docs/design.md
sections 6 and 7).

A run configuration is one JSON object::

    {"model": {"kind": "PixelCNNpp", "hidden": 160, "blocks": 5, ...},
     "train": {"steps": 500000, "global_batch": 128, "batch_size": null, "lr": 0.001, ...},
     "data": "cifar10:PATH", "class_cond": false, "comment": "..."}

* ``model``: ``kind`` (``GatedPixelCNN``, ``PixelCNNpp``, ``GrayscalePixelCNN``,
  ``PyramidPixelCNN``) and the arguments of its constructor, by their names; a
  grayscale model's ``prior`` is ``null`` (the built-in gray stage) or a model object of
  the same form (the composite gray pyramid: a ``PyramidPixelCNN`` prior).
* ``train``: the fields of :class:`pixelaux.training.TrainConfig` by their names, and
  ``global_batch``: images per step over all processes. Exactly one of ``batch_size``
  (per process) and ``global_batch`` is set, the other ``null``; with ``global_batch``
  each of ``WORLD_SIZE`` processes takes ``global_batch / WORLD_SIZE`` images, so a run
  has the same batches on 1 GPU or 8.
* ``data``: a data spec (``patches``, ``folder:PATH``, ``cifar10:PATH``);
  ``class_cond``: train ``p(x | class)`` with the label as a one-hot global ``cond``
  (a ``GatedPixelCNN`` / ``PixelCNNpp`` whose ``cond_channels`` is the class count).
* ``comment``: free text (the presets say which paper setting they follow).

Layers, lowest first: the defaults (:func:`default_config`), a preset (:data:`PRESETS`),
a config file, then single options (:func:`apply_option`, ``--set PATH=VALUE``). A layer
is merged into what is below it (:func:`merge`): a key given replaces that key; a
``model`` of another ``kind`` replaces the model (its missing arguments take the
constructor's defaults). :func:`resolve` then fills in what comes from the data (the
image size of a folder, the class count) and every constructor default, checks the
whole, and builds the model on the meta device, so a bad value is one line before any
work. Every problem is a :class:`ConfigError` (a ``ValueError``) naming the key path.

Nothing here parses arguments; ``pixelaux.cli`` does, and passes plain values.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import json
import math
import numbers
import os

CONFIG_FILE = "config.json"

MODEL_KINDS = ("GatedPixelCNN", "PixelCNNpp", "GrayscalePixelCNN", "PyramidPixelCNN")
STAGE_KINDS = ("GatedPixelCNN", "PixelCNNpp")
TOP_KEYS = ("class_cond", "comment", "data", "model", "train")

#: ``pixelaux train --model-kind`` -> the model's kind (``gray-pyramid``: a grayscale
#: model whose gray view is itself a pyramid)
MODEL_KIND_NAMES = {"gated": "GatedPixelCNN", "pixelcnnpp": "PixelCNNpp", "grayscale": "GrayscalePixelCNN",
                    "pyramid": "PyramidPixelCNN", "gray-pyramid": "GrayscalePixelCNN"}

#: what ``--model-kind`` gives every network of the model (the command line's defaults)
EVERY_NETWORK = dict(hidden=64, blocks=4, dropout=0.0)

DEFAULT_TRAIN = dict(steps=10000, batch_size=32, global_batch=None, lr=1e-3, lr_decay=0.999995,
                     adam_betas=[0.9, 0.999], ema_decay=0.999, grad_clip=1.0, amp=False, compile=False,
                     eval_every=1000, ckpt_every=1000, seed=0, device="auto", threads=None)
DEFAULT_DATA = "patches"

#: settings a resumed run may change; the others must agree with the saved run
MAY_CHANGE = ("train.steps", "train.eval_every", "train.ckpt_every", "train.device", "train.threads", "comment")


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message is one line naming the key."""


# ----------------------------------------------------------------------------- checks

def _show(v) -> str:
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(path, what, v):
    raise ConfigError(f"{path}: expected {what}, got {_show(v)}")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int(lo=None, hi=None, null=False):
    what = "an integer" + (f" >= {lo}" if lo is not None and hi is None else "") + \
        (f" from {lo} to {hi}" if lo is not None and hi is not None else "") + (" or null" if null else "")

    def check(path, v):
        if v is None and null:
            return None
        if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            _fail(path, what, v)
        return int(v)
    return check


def _num(lo, hi=None, lo_open=False, hi_open=False):
    shown = f"{'(' if lo_open else '['}{lo:g}, " + ("inf)" if hi is None else f"{hi:g}{')' if hi_open else ']'}")
    what = f"a number in {shown}"

    def check(path, v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < lo \
                or (lo_open and v == lo) or (hi is not None and (v > hi or (hi_open and v == hi))):
            _fail(path, what, v)
        return float(v)
    return check


def _bool(path, v):
    if not isinstance(v, bool):
        _fail(path, "true or false", v)
    return v


def _choice(*choices):
    what = "one of " + ", ".join(json.dumps(c) for c in choices)

    def check(path, v):
        if not any(v is c or (type(v) is type(c) and v == c) for c in choices):
            _fail(path, what, v)
        return v
    return check


def _text(path, v):
    if not isinstance(v, str):
        _fail(path, "a string", v)
    return v


def _size(path, v):
    if _is_int(v) and v >= 1:
        return [int(v), int(v)]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(s) and s >= 1 for s in v):
        return [int(v[0]), int(v[1])]
    _fail(path, "an integer >= 1 or a pair [H, W] of them", v)


def _betas(path, v):
    if isinstance(v, (list, tuple)) and len(v) == 2:
        check = _num(0, 1, hi_open=True)
        return [check(f"{path}[{i}]", b) for i, b in enumerate(v)]
    _fail(path, "a pair [beta1, beta2], each in [0, 1)", v)


def _data(path, v):
    from .data import check_spec
    try:
        check_spec(v)
    except (TypeError, ValueError):
        _fail(path, "patches, folder:PATH or cifar10:PATH", v)
    return v


#: the constructor arguments, by name (the same name means the same thing in every kind);
#: an argument not listed is passed on as it is, for its constructor to check
MODEL_ARGS = dict(
    channels=_int(1), bits=_int(1, 16), gray_bits=_int(1, 16), hidden=_int(1), blocks=_int(0),
    kernel_size=_int(1), dropout=_num(0, 1, hi_open=True), cond_channels=_int(0, null=True),
    dist=_choice("logistic", "categorical"), nr_mix=_int(1), image_size=_size, seed_size=_size,
    embed_dim=_int(0), weight_norm=_bool, encoder_hidden=_int(1, null=True), encoder_blocks=_int(0, null=True),
    prior_hidden=_int(1, null=True), prior_blocks=_int(0, null=True), arch=_choice("gated", "pixelcnnpp"),
    scales=_int(1, 8), encoder=_choice("resnet", "gated", "unet", "gated-unet"))

TRAIN_ARGS = dict(
    steps=_int(1), batch_size=_int(1, null=True), global_batch=_int(1, null=True), lr=_num(0, lo_open=True),
    lr_decay=_num(0, 1, lo_open=True), adam_betas=_betas, ema_decay=_num(0, 1), grad_clip=_num(0),
    amp=_choice(False, True, "bf16", "fp16"), compile=_bool, eval_every=_int(1, null=True),
    ckpt_every=_int(1, null=True), seed=_int(0, 2 ** 63 - 1), device=_text, threads=_int(1, null=True))


def _unknown(path: str, key: str, known) -> ConfigError:
    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {json.dumps(near[0])}?" if near else "known: " + ", ".join(sorted(known))
    return ConfigError(f"{path + '.' if path else ''}{key}: unknown key ({hint})")


def model_params(kind: str) -> dict:
    """The constructor arguments of ``kind`` -> their defaults (JSON form)."""
    from .checkpoint import model_class
    sig = inspect.signature(model_class(kind).__init__)
    out = {}
    for name, p in list(sig.parameters.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        d = p.default
        out[name] = list(d) if isinstance(d, tuple) else d
    return out


def _check_model(m, path: str, below) -> dict:
    """A (partial) model object, checked and normalised; ``below``: the model it is merged
    into (its kind applies when ``m`` gives none)."""
    if not isinstance(m, dict):
        _fail(path, 'an object {"kind": ..., <constructor arguments>}', m)
    below = below if isinstance(below, dict) else {}
    if "kind" in m:
        _choice(*MODEL_KINDS)(f"{path}.kind", m["kind"])
        if m["kind"] != below.get("kind"):
            below = {}
    kind = m.get("kind", below.get("kind"))
    if kind is None:
        raise ConfigError(f"{path}.kind: missing (one of {', '.join(MODEL_KINDS)})")
    params = model_params(kind)
    out = {}
    for key, v in m.items():
        if key == "kind":
            out[key] = v
            continue
        if key not in params:
            near = difflib.get_close_matches(key, list(params), n=1)
            hint = f"; did you mean {json.dumps(near[0])}?" if near else f"; it takes {', '.join(params)}"
            raise ConfigError(f"{path}.{key}: unknown key: not an argument of {kind}{hint}")
        if key == "prior":
            out[key] = None if v is None else _check_model(v, f"{path}.prior", below.get("prior"))
        elif key in MODEL_ARGS:
            out[key] = MODEL_ARGS[key](f"{path}.{key}", v)
        else:
            out[key] = copy.deepcopy(v)
    return out


def check_config(cfg, below=None) -> dict:
    """A (partial) configuration, checked and normalised (``ConfigError`` naming the key);
    ``below``: the configuration it is to be merged into."""
    if not isinstance(cfg, dict):
        _fail("config", 'a JSON object {"model": ..., "train": ..., "data": ...}', cfg)
    below = below or {}
    out = {}
    for key, v in cfg.items():
        if key not in TOP_KEYS:
            raise _unknown("", key, TOP_KEYS)
        if key == "model":
            out[key] = _check_model(v, "model", below.get("model"))
        elif key == "train":
            if not isinstance(v, dict):
                _fail("train", "an object of training settings", v)
            t = {}
            for k, x in v.items():
                if k not in TRAIN_ARGS:
                    raise _unknown("train", k, TRAIN_ARGS)
                t[k] = TRAIN_ARGS[k](f"train.{k}", x)
            if t.get("batch_size") is not None and t.get("global_batch") is not None:
                raise ConfigError(f"train.batch_size {t['batch_size']} and train.global_batch {t['global_batch']}: "
                                  "give one of them (images per process, or per step over all processes), "
                                  "the other null")
            out[key] = t
        elif key == "data":
            out[key] = _data("data", v)
        elif key == "class_cond":
            out[key] = _bool("class_cond", v)
        else:
            out[key] = _text("comment", v)
    return out


# ----------------------------------------------------------------------------- layers

def model_template(name: str) -> dict:
    """The model ``--model-kind NAME`` starts from: RGB 8-bit, :data:`EVERY_NETWORK` in
    every network (``gray-pyramid``: a 4-bit categorical ``PyramidPixelCNN`` prior)."""
    if name not in MODEL_KIND_NAMES:
        raise ConfigError(f"model kind: expected one of {', '.join(MODEL_KIND_NAMES)}, got {_show(name)}")
    m = {"kind": MODEL_KIND_NAMES[name], "channels": 3, "bits": 8, **EVERY_NETWORK}
    if name == "gray-pyramid":
        m["prior"] = {"kind": "PyramidPixelCNN", "channels": 1, "bits": 4, "dist": "categorical", **EVERY_NETWORK}
    return m


def model_kind_name(m) -> str | None:
    """The ``--model-kind`` of a model object (``None`` for one no name fits)."""
    if not isinstance(m, dict):
        return None
    kind = m.get("kind")
    if kind == "GrayscalePixelCNN":
        prior = m.get("prior")
        if prior is None:
            return "grayscale"
        return "gray-pyramid" if isinstance(prior, dict) and prior.get("kind") == "PyramidPixelCNN" else None
    return {"GatedPixelCNN": "gated", "PixelCNNpp": "pixelcnnpp", "PyramidPixelCNN": "pyramid"}.get(kind)


def default_config() -> dict:
    """The bottom layer: ``pixelaux train`` with no option (a gated model on the patches)."""
    return {"model": model_template("gated"), "train": copy.deepcopy(DEFAULT_TRAIN), "data": DEFAULT_DATA,
            "class_cond": False}


def _merge_model(base, over):
    if not isinstance(over, dict) or not isinstance(base, dict) \
            or over.get("kind", base.get("kind")) != base.get("kind"):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge_model(out[k], v) if k == "prior" and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def merge(base: dict, over: dict) -> dict:
    """``over`` (checked against ``base`` first) merged into ``base``: a key given replaces
    that key; a ``model`` (or ``prior``) of another kind replaces it whole; a
    ``batch_size`` given clears ``global_batch`` and the other way round."""
    over = check_config(over, base)
    out = copy.deepcopy(base)
    for key, v in over.items():
        if key == "model":
            out["model"] = _merge_model(out.get("model"), v)
        elif key == "train":
            t = dict(out.get("train") or {})
            t.update(copy.deepcopy(v))
            for a, b in (("batch_size", "global_batch"), ("global_batch", "batch_size")):
                if v.get(a) is not None and b not in v:
                    t[b] = None
            out["train"] = t
        else:
            out[key] = copy.deepcopy(v)
    return out


def from_path(path: str, value) -> dict:
    """``("model.prior.hidden", 8)`` -> ``{"model": {"prior": {"hidden": 8}}}`` (``--set``)."""
    keys = path.split(".")
    if not path or any(not k for k in keys):
        raise ConfigError(f"{path!r}: expected a key path such as model.hidden or train.lr")
    out = value
    for k in reversed(keys):
        out = {k: out}
    return out


def _set_every(m: dict, key: str, value, top=True) -> dict:
    """``key = value`` in the model and in every network it holds that takes ``key``."""
    params = model_params(m["kind"])
    if key not in params:
        if top:
            hint = " (one resolution; --arch pixelcnnpp is PixelCNN++)" if key == "scales" else ""
            raise ConfigError(f"a {m['kind']} takes no {key}{hint}")
        return m
    m = dict(m, **{key: copy.deepcopy(value)})
    if isinstance(m.get("prior"), dict):
        m["prior"] = _set_every(m["prior"], key, value, top=False)
    return m


_STAGE_COMMON = ("channels", "bits", "hidden", "blocks", "dropout", "cond_channels", "dist", "nr_mix",
                 "image_size", "embed_dim", "weight_norm")


def _set_arch(m: dict, arch: str) -> dict:
    """The network of every part ``arch``: a stage becomes a ``GatedPixelCNN`` or
    ``PixelCNNpp`` (keeping the arguments both take); a composite takes ``arch``."""
    if m["kind"] in STAGE_KINDS:
        kind = "GatedPixelCNN" if arch == "gated" else "PixelCNNpp"
        if kind == m["kind"]:
            return m
        return {"kind": kind, **{k: v for k, v in m.items() if k in _STAGE_COMMON}}
    m = dict(m, arch=arch)
    if isinstance(m.get("prior"), dict):
        m["prior"] = _set_arch(m["prior"], arch)
    return m


#: option -> where it lives in the configuration (``pixelaux train``'s flags by their dest)
OPTION_PATHS = dict(model_kind="model", arch="model.arch", hidden="model.hidden", blocks="model.blocks",
                    dropout="model.dropout", scales="model.scales", nr_mix="model.nr_mix",
                    weight_norm="model.weight_norm", size="model.image_size", data="data",
                    class_cond="class_cond", steps="train.steps", batch_size="train.batch_size",
                    global_batch="train.global_batch", lr="train.lr", lr_decay="train.lr_decay",
                    adam_betas="train.adam_betas", ema="train.ema_decay", clip="train.grad_clip",
                    seed="train.seed", eval_every="train.eval_every", ckpt_every="train.ckpt_every",
                    device="train.device", threads="train.threads")
EVERY_NETWORK_OPTIONS = ("hidden", "blocks", "dropout", "scales", "nr_mix", "weight_norm", "size")


def apply_option(cfg: dict, name: str, value) -> dict:
    """One option over ``cfg``: ``model_kind`` replaces the model by its template unless it
    is that kind already; ``arch`` and the options of :data:`EVERY_NETWORK_OPTIONS` reach
    every network of the model (a grayscale model's prior too); the others set their
    key (:data:`OPTION_PATHS`)."""
    cfg = copy.deepcopy(cfg)
    if name == "model_kind":
        if model_kind_name(cfg.get("model")) != value:
            cfg["model"] = model_template(value)
        return cfg
    if name == "arch":
        cfg["model"] = _set_arch(cfg["model"], value)
        return cfg
    if name in EVERY_NETWORK_OPTIONS:
        key = "image_size" if name == "size" else name
        value = list(value) if isinstance(value, (list, tuple)) else value
        cfg["model"] = _set_every(cfg["model"], key, MODEL_ARGS[key](OPTION_PATHS[name], value))
        return cfg
    path = OPTION_PATHS[name]
    value = list(value) if isinstance(value, (list, tuple)) else value
    return merge(cfg, from_path(path, value))


def option_value(cfg: dict, name: str):
    """The value of option ``name`` in ``cfg`` (``model_kind``: its name, or ``None``)."""
    if name == "model_kind":
        return model_kind_name(cfg.get("model"))
    node = cfg
    for k in OPTION_PATHS[name].split("."):
        node = node.get(k) if isinstance(node, dict) else None
    return node


def _leaves(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_leaves(v, path))
        else:
            out[path] = v
    return out


def overlay(base: dict, layers, *, fixed: bool = False, unknown=()) -> tuple[dict, list]:
    """Apply ``layers`` (``(label, function of a config -> config)``, lowest first) over
    ``base``. A ``ConfigError`` of a layer is raised with its label in front. With
    ``fixed`` (a resumed run), returns the layers that change a setting outside
    :data:`MAY_CHANGE` and ``unknown`` (what an old run did not record), each as
    ``(label, [(path, saved, given), ...])``."""
    cfg, conflicts = base, []
    for label, fn in layers:
        try:
            new = fn(cfg)
        except ConfigError as e:
            raise ConfigError(f"{label}: {e}") from None
        if fixed:
            was, now = _leaves(cfg), _leaves(new)
            diff = [(p, was.get(p), now.get(p)) for p in sorted(set(was) | set(now))
                    if was.get(p) != now.get(p) and p not in MAY_CHANGE and p not in unknown]
            if diff:
                conflicts.append((label, diff))
        cfg = new
    return cfg, conflicts


# ----------------------------------------------------------------------------- files

def dumps(cfg: dict) -> str:
    """The JSON text of a configuration: indent 2, keys sorted, a final newline."""
    return json.dumps(cfg, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def load_file(path) -> dict:
    """A configuration file's object (``ConfigError`` in one line for a missing file, bad
    JSON or another top-level value); checked when merged."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError("no such file") from None
    except IsADirectoryError:
        raise ConfigError("is a folder, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        cfg = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError as e:
        raise ConfigError(f"not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f'expected a JSON object {{"model": ..., "train": ..., "data": ...}}, got {_show(cfg)}')
    return cfg


def write(out_dir, cfg: dict):
    """``out_dir/config.json``, written atomically (a reader sees the old file or the new one)."""
    from .checkpoint import atomic_write_bytes
    path = os.path.join(out_dir, CONFIG_FILE)
    atomic_write_bytes(path, dumps(cfg).encode())
    return path


def saved_model(kind: str, config: dict) -> dict:
    """A model object of a saved run's ``kind`` and ``config`` (a checkpoint's nested
    ``{"kind", "config"}`` prior flattened), every constructor default filled in."""
    m = {"kind": kind, **copy.deepcopy(config)}
    prior = m.get("prior")
    if isinstance(prior, dict) and set(prior) == {"kind", "config"}:
        m["prior"] = saved_model(prior["kind"], prior["config"])
    if kind not in MODEL_KINDS:
        return m
    return complete_model(m)


def saved_config(saved, out_dir) -> tuple[dict, set]:
    """The configuration a run was trained with, and the paths it did not record.

    ``saved``: :func:`pixelaux.training.read_run`'s answer. The model comes from the
    training state (what the weights fit); the rest from ``out_dir/config.json``, or for
    a run from before config files, from the settings in its training state (a very old
    run recorded only its seed and batch size: the others are unknown, taking their
    defaults unless given)."""
    model = saved_model(saved.kind, saved.config)
    path = os.path.join(out_dir, CONFIG_FILE)
    if os.path.isfile(path):
        try:
            cfg = merge(default_config(), {k: v for k, v in load_file(path).items() if k != "model"})
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        cfg["model"] = model
        return cfg, set()
    cfg, unknown = default_config(), set()
    cfg["model"] = model
    train = cfg["train"]
    if saved.settings is not None:
        s = saved.settings.to_dict()
        train.update({k: s[k] for k in TRAIN_ARGS if k in s and k not in ("device", "threads")})
    else:
        unknown = {f"train.{k}" for k in TRAIN_ARGS}
        for k in ("batch_size", "seed"):
            if saved.run.get(k) is not None:
                train[k] = saved.run[k]
                unknown.discard(f"train.{k}")
        unknown.discard("train.global_batch")
    if saved.meta.get("data") is not None:
        cfg["data"] = saved.meta["data"]
    else:
        unknown.add("data")
    return cfg, unknown


# ----------------------------------------------------------------------------- resolution

def complete_model(m: dict, image_size=None) -> dict:
    """Every constructor argument of the model (and of a model prior) given: the
    defaults filled in, a prior's ``image_size`` the model's; normalised."""
    m = dict(m)
    params = model_params(m["kind"])
    if "image_size" in params and "image_size" not in m and image_size is not None:
        m["image_size"] = list(image_size)
    for k, d in params.items():
        m.setdefault(k, copy.deepcopy(d))
    if isinstance(m.get("prior"), dict):
        m["prior"] = complete_model(m["prior"], m.get("image_size"))
    return _check_model(m, "model", None)


def _without_weight_norm(m: dict) -> dict:
    m = dict(m, weight_norm=False) if "weight_norm" in m else dict(m)
    if isinstance(m.get("prior"), dict):
        m["prior"] = _without_weight_norm(m["prior"])
    return m


def build_model(m: dict):
    """The model of a model object (a model prior built first)."""
    from .checkpoint import model_class
    args = {k: v for k, v in m.items() if k != "kind"}
    if isinstance(args.get("prior"), dict):
        args["prior"] = build_model(args["prior"])
    return model_class(m["kind"])(**args)


def check_model_builds(m: dict) -> None:
    """Build the model on the meta device (no memory, no init; weight norm off, it
    changes no shape): the constructor's ``ValueError`` / ``TypeError`` as a
    ``ConfigError`` naming the model."""
    import torch
    try:
        with torch.device("meta"):
            build_model(_without_weight_norm(m))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model ({m['kind']}): {' '.join(str(e).split())}") from None


def data_image_size(spec: str) -> list[int]:
    """``[H, W]`` of the images of a data spec: 32x32 for ``patches`` (the size they are
    cut at by default) and CIFAR-10; a folder's own size (its images must agree)."""
    from .data import ImageFolder, check_spec
    kind, path = check_spec(spec)
    if kind != "folder":
        return [32, 32]
    return list(ImageFolder(path).image_size())


def resolve(cfg: dict) -> tuple[dict, list[str] | None]:
    """The whole configuration (checked, every constructor argument given, the image
    size and class count taken from the data where it decides them), and the class names
    of a class-conditional run (``None`` otherwise). ``ConfigError`` naming the key;
    ``ValueError`` from the data (a folder that is not one, images that differ in size)."""
    from .data import check_spec, spec_classes
    base = default_config()
    model = check_config({"model": cfg["model"]})["model"] if isinstance(cfg, dict) and "model" in cfg \
        else base["model"]
    cfg = merge(base, {k: v for k, v in cfg.items() if k != "model"} if isinstance(cfg, dict) else cfg)
    cfg["model"] = model
    t = cfg["train"]
    if t.get("batch_size") is None and t.get("global_batch") is None:
        raise ConfigError("train.batch_size / train.global_batch: both null; give one of them")
    m = cfg["model"]
    kind, _ = check_spec(cfg["data"])
    classes = None
    if cfg["class_cond"]:
        if m["kind"] not in STAGE_KINDS:
            raise ConfigError(f"class_cond (--class-cond): class conditioning takes a GatedPixelCNN or PixelCNNpp "
                              f"model (--model-kind gated or pixelcnnpp), not a {m['kind']}")
        try:
            classes = spec_classes(cfg["data"])
        except ValueError as e:
            raise ConfigError(f"class_cond (--class-cond): {e}") from None
        cc = m.get("cond_channels")
        if cc not in (None, 0, len(classes)):
            raise ConfigError(f"model.cond_channels: {cc}, but class_cond gives one channel per class and "
                              f"{cfg['data']} has {len(classes)} classes")
        m["cond_channels"] = len(classes)
    elif m["kind"] in STAGE_KINDS and m.get("cond_channels"):
        raise ConfigError(f"model.cond_channels: {m['cond_channels']}: the model would need a cond, and training "
                          "gives one only with class_cond (--class-cond); set it to 0, or class_cond to true")
    size = m.get("image_size")
    if size is None:
        size = data_image_size(cfg["data"])
    if kind == "cifar10" and list(size) != [32, 32]:
        raise ConfigError(f"model.image_size {size[0]}x{size[1]}: CIFAR-10 images are 32x32 (--size)")
    cfg["model"] = complete_model(m, size)
    check_model_builds(cfg["model"])
    return cfg, classes


def process_batch(train: dict, world: int) -> int:
    """Images per step and process: ``batch_size``, or ``global_batch / world``."""
    g = train.get("global_batch")
    if g is None:
        return train["batch_size"]
    if g % world:
        raise ConfigError(f"train.global_batch: {g} images per step do not split evenly over {world} processes "
                          "(WORLD_SIZE)")
    return g // world


# ----------------------------------------------------------------------------- presets

_REFERENCE_TRAIN = dict(global_batch=128, batch_size=None, lr=1e-3, lr_decay=0.999995, adam_betas=[0.95, 0.9995],
                        ema_decay=0.9995, grad_clip=0.0, steps=500000, eval_every=5000, ckpt_every=5000)

#: Built-in configurations of the papers' runs (``pixelaux train --preset NAME``); each
#: says in ``comment`` which setting it follows and what differs for now. Their data
#: specs name the files as they are usually called, relative to the working folder:
#: ``--data`` points elsewhere. Training is the PixelCNN++ reference's (the code both
#: papers' models build on): global batch 128 (16 per GPU x 8 GPUs), Adam lr 1e-3 decayed
#: by 0.999995 per step, betas (0.95, 0.9995), Polyak (EMA) 0.9995, no clipping, weight
#: norm with data-dependent init. 500k steps (1280 epochs of CIFAR-10) is this library's
#: choice (the papers train until the test likelihood stops improving): --steps changes it.
PRESETS = {
    "pixelcnnpp-cifar": {
        "comment": "PixelCNN++ on CIFAR-10 (Salimans et al. 2017, its public code): 160 filters, 5 gated resnet "
                   "blocks per stage, 3 scales, dropout 0.5, a mixture of 10 discretized logistics, weight norm "
                   "with data-dependent init; the reference training (global batch 128, Adam 1e-3 decayed "
                   "0.999995 per step, betas 0.95/0.9995, Polyak 0.9995, no clipping)",
        "model": {"kind": "PixelCNNpp", "channels": 3, "bits": 8, "hidden": 160, "blocks": 5, "scales": 3,
                  "dropout": 0.5, "nr_mix": 10, "image_size": [32, 32], "weight_norm": True},
        "train": dict(_REFERENCE_TRAIN), "data": "cifar10:cifar-10-python.tar.gz", "class_cond": False,
    },
    "kl17-cifar-gray": {
        "comment": "Kolesnikov & Lampert 2017, CIFAR-10 with the 4-bit grayscale auxiliary variable: a PixelCNN++ "
                   "class prior over the gray view and colour given gray, each 160 filters, 5 blocks, 3 scales, "
                   "dropout 0.5, 10 logistics, weight norm; the gray view's embedding is the authors' deep encoder: 9 "
                   "gated, dilated residual blocks whose features (one map per scale) enter every gated block of "
                   "the colour network; the reference training",
        "model": {"kind": "GrayscalePixelCNN", "channels": 3, "bits": 8, "gray_bits": 4, "arch": "pixelcnnpp",
                  "hidden": 160, "blocks": 5, "scales": 3, "dropout": 0.5, "nr_mix": 10, "encoder": "gated",
                  "encoder_blocks": 9, "image_size": [32, 32], "weight_norm": True, "prior": None},
        "train": dict(_REFERENCE_TRAIN), "data": "cifar10:cifar-10-python.tar.gz", "class_cond": False,
    },
    "kl17-cifar-pyramid": {
        "comment": "Kolesnikov & Lampert 2017, CIFAR-10 with the pyramid auxiliary variables: levels 8 -> 16 -> 32, "
                   "each a PixelCNN++ class network (160 filters, 5 blocks, 3 scales, dropout 0.5, 10 logistics) "
                   "given the level below through the authors' gated U-net encoder (2 gated blocks per resolution, "
                   "10 in all, a map per scale), weight norm; the reference training. Differs for now: one network "
                   "setting for every level (per-level networks do not exist yet)",
        "model": {"kind": "PyramidPixelCNN", "channels": 3, "bits": 8, "arch": "pixelcnnpp", "hidden": 160,
                  "blocks": 5, "scales": 3, "dropout": 0.5, "nr_mix": 10, "image_size": [32, 32],
                  "seed_size": [8, 8], "weight_norm": True, "encoder": "gated-unet", "encoder_blocks": 2},
        "train": dict(_REFERENCE_TRAIN), "data": "cifar10:cifar-10-python.tar.gz", "class_cond": False,
    },
    "kl17-celeba128-pyramid": {
        "comment": "Kolesnikov & Lampert 2017, CelebA 128x128 with the pyramid: 5 levels 8 -> 16 -> 32 -> 64 -> 128 "
                   "from a folder of face images (resized to 128x128, no crop), 3 gated residual blocks per level "
                   "at 100 channels, 10 logistics, the level below through a gated U-net encoder of 100 channels "
                   "(2 gated blocks per resolution, 10 in all), weight norm; the reference training. Differs for "
                   "now: the seed level has the same small network as the upper ones (per-level networks do not "
                   "exist yet)",
        "model": {"kind": "PyramidPixelCNN", "channels": 3, "bits": 8, "arch": "gated", "hidden": 100, "blocks": 3,
                  "kernel_size": 3, "dropout": 0.0, "nr_mix": 10, "image_size": [128, 128], "seed_size": [8, 8],
                  "encoder_hidden": 100, "weight_norm": True, "encoder": "gated-unet",
                  "encoder_blocks": 2},
        "train": dict(_REFERENCE_TRAIN), "data": "folder:img_align_celeba", "class_cond": False,
    },
}


def preset(name: str) -> dict:
    """A copy of preset ``name`` (``ConfigError`` listing the known ones)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {_show(name)}; known: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
