"""Bad input at ``pixelaux.load`` and the data sets (property-based): every call loads the
right thing or raises ``TypeError`` / ``ValueError`` from pixelaux; no pickle payload runs.
"""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pixelaux
from pixelaux.data import CIFAR10, ImageFolder, natural_patches
from reliability_helpers import (  # noqa: F401 (fixtures)
    COUNTS, FILES, HYP, MODELS, attempt, files, models, one_thread_and_report, wild_args)

pytestmark = pytest.mark.usefixtures("one_thread_and_report")


@pytest.mark.usefixtures("models", "files")
@pytest.mark.slow                # property-based: hundreds of inputs
@settings(max_examples=60, **HYP)
@given(data=st.data())
def test_property_load(data):
    models, files = MODELS, FILES
    d = files["dir"]
    target = data.draw(st.sampled_from([
        "gated", "grayscale", "pyramid", "gated_path", "gated_bytes", "default", "pyramid_name", "missing",
        "dir", "truncated", "random", "evil", None, 3, ["a"], ""]), label="name_or_path")
    value = {"gated": str(files["gated"]), "grayscale": str(files["grayscale"]), "pyramid": str(files["pyramid"]),
             "gated_path": files["gated"], "gated_bytes": os.fsencode(files["gated"]),
             "default": "default", "pyramid_name": "pyramid", "missing": str(d / "missing.safetensors"),
             "dir": str(d), "truncated": str(d / "truncated.safetensors"), "random": str(d / "random.bin"),
             "evil": str(d / "evil.pt")}.get(target, target) if isinstance(target, str) else target
    loc = data.draw(st.sampled_from(["cpu", torch.device("cpu"), None, "meta", "cuda", "cuda:0", "bogus", 3,
                                     -1, "mps", "xpu", 2.5, "cpu:0"]), label="map_location")
    ok, m = attempt("load", lambda: pixelaux.load(value, map_location=loc))
    assert not files["marker"].exists(), "a pickle payload ran"
    if ok:
        assert isinstance(m, torch.nn.Module) and not m.training
        dev = torch.device("cpu" if loc is None else loc)
        assert next(m.parameters()).device.type == dev.type
        key = {"gated": "gated", "gated_path": "gated", "gated_bytes": "gated"}.get(target, target)
        if key in ("gated", "grayscale", "pyramid") and dev.type == "cpu":
            ref = models[key].state_dict()
            assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())


@pytest.mark.usefixtures("files")
@pytest.mark.slow                # property-based: hundreds of inputs
@settings(max_examples=90, **HYP)
@given(data=st.data())
def test_property_datasets(data):
    files = FILES
    which = data.draw(st.sampled_from(["folder", "cifar", "patches"]), label="dataset")
    if which == "folder":
        wild = wild_args(data, ("root", "size", "channels", "bits"))
        draw = lambda arg, valid, bad: data.draw(st.sampled_from(bad if arg in wild else valid), label=arg)  # noqa
        root = draw("root", files["folders"][:1], files["folders"][1:] + [files["png"], files["dir"] / "nope", None,
                                                                          3, b"/tmp"])
        size = draw("size", [None, 3, (2, 3)], [0, (2,), "3", 2.5, True, (0, 2)])
        channels = draw("channels", [3, 1], [2, "3", None, 0])
        bits = draw("bits", [8, 4, 1], [9, 0, "8", 8.0])
        ok, ds = attempt("datasets", lambda: ImageFolder(root, size=size, channels=channels, bits=bits))
        if ok:
            assert len(ds) >= 1
            for i in (0, len(ds) - 1):
                ok_i, x = attempt("datasets", lambda: ds[i])
                if ok_i:
                    assert x.dtype == torch.uint8 and x.shape[0] == channels and x.dim() == 3
                    if size is not None:
                        assert tuple(x.shape[1:]) == pixelaux.checks.check_size(size)
                    assert int(x.max()) < 2 ** bits
    elif which == "cifar":
        path = data.draw(st.sampled_from(files["cifar"] + [None, 3]), label="path")
        train = data.draw(st.sampled_from([True, False]), label="train")
        ok, ds = attempt("datasets", lambda: CIFAR10(path, train=train))
        assert not files["marker"].exists(), "a pickle payload ran"
        if ok:
            assert len(ds) == (10 if train else 2) and ds[0].dtype == torch.uint8 and ds[0].shape == (3, 32, 32)
            assert ds.labels.min() >= 0 and ds.labels.max() <= 9
    else:
        wild = wild_args(data, ("split", "size", "stride", "scales", "min_std"))
        draw = lambda arg, valid, bad: data.draw(st.sampled_from(bad if arg in wild else valid), label=arg)  # noqa
        kw = dict(split=draw("split", ["test", "train"], ["val", None, 1]),
                  size=draw("size", [32, 64, (32, 64)], [1024, 0, -3, "8", 8.5, (32,), None, True]),
                  stride=draw("stride", [None, 64], [0, -1, "4", 4.5]),
                  scales=draw("scales", [(2,), (2, 4), [4]], [(), 2, (0,), (2.0,), None, "2"]),
                  flip=data.draw(st.booleans(), label="flip"),
                  min_std=draw("min_std", [2.0, 0, 1e9], [-1.0, float("nan"), float("inf"), "2"]))
        ok, x = attempt("datasets", lambda: natural_patches(**kw))
        if ok:
            h, w = pixelaux.checks.check_size(kw["size"])
            assert x.dtype == torch.uint8 and x.dim() == 4 and tuple(x.shape[1:]) == (3, h, w)
            COUNTS["datasets/patches ok"] += 1
