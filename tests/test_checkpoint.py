"""pixelaux.checkpoint: round trips, every broken-file case, no unpickling, atomicity."""
import json
import os
import pickle
import struct

import pytest
import torch
import torch.nn as nn

from helpers import one_thread  # noqa: F401 (fixture)
from pixelaux import GatedPixelCNN
from pixelaux import checkpoint as ck


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def _model(**kw):
    cfg = dict(hidden=8, blocks=1, nr_mix=2, image_size=(8, 8))
    cfg.update(kw)
    m = GatedPixelCNN(**cfg)
    with torch.no_grad():                      # not just the init: every weight matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _images(m, n=4):
    return torch.randint(0, 2 ** m.bits, (n, m.channels, *m.image_size))


@pytest.fixture
def saved(tmp_path):
    m = _model()
    path = tmp_path / "m.safetensors"
    ck.save(m, path, extra={"step": 7, "note": "hi"})
    return m, path


@pytest.mark.parametrize("kw", [{}, dict(channels=1, bits=4, dist="categorical", image_size=(6, 9))])
def test_round_trip_identical_outputs(tmp_path, kw):
    m = _model(**kw).eval()
    path = ck.save(m, tmp_path / "m.safetensors")
    m2 = ck.load(path)
    assert type(m2) is GatedPixelCNN and m2.config == m.config and not m2.training
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    x = _images(m)
    with torch.no_grad():
        assert torch.equal(m.log_prob(x), m2.log_prob(x))
        assert torch.equal(m(x), m2(x))


def test_header_and_single_file(saved):
    m, path = saved
    h = ck.read_header(path)
    assert h["format"] == "pixelaux" and h["format_version"] == 1
    assert h["kind"] == "GatedPixelCNN" and h["config"] == json.loads(json.dumps(m.config))
    assert h["step"] == 7 and h["note"] == "hi"
    assert sorted(os.listdir(path.parent)) == ["m.safetensors"]   # one file, no temp left


def test_save_refuses_bad_models(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        ck.save(nn.Linear(2, 2), tmp_path / "x.safetensors")
    m = _model()
    with torch.no_grad():
        m.head.bias[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        ck.save(m, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="must not set"):
        ck.save(_model(), tmp_path / "x.safetensors", extra={"kind": "Other"})
    assert not list(tmp_path.iterdir())


def test_save_unwraps_compiled_models(tmp_path):
    m = _model()

    class Wrapper(nn.Module):                   # what torch.compile returns looks like this
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    ck.save(Wrapper(m), tmp_path / "w.safetensors")
    assert ck.load(tmp_path / "w.safetensors").config == m.config


# --------------------------------------------------------------------------- broken files

def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as e:
        ck.load(tmp_path / "none.safetensors")
    assert "none.safetensors" in str(e.value)
    with pytest.raises(ValueError, match="not a file"):
        ck.load(tmp_path)


@pytest.mark.parametrize("keep", [0, 5, 12, 200, -1])
def test_truncated_file(saved, keep):
    _, path = saved
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:-3])
    with pytest.raises(ValueError) as e:
        ck.load(path)
    assert str(path) in str(e.value)


def test_corrupted_tensor_data_caught_by_digest(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0x40                          # one flipped bit in the weights
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted") as e:
        ck.load(path)
    assert str(path) in str(e.value)


def test_corrupted_header(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    raw[9] = ord("}")                          # header JSON no longer parses
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a pixelaux checkpoint"):
        ck.load(path)
    raw[8] = ord("[")                          # nor starts like a safetensors header
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a safetensors file"):
        ck.load(path)


def test_header_length_that_looks_like_pickle_magic_loads(tmp_path):
    # A header length of 0x0280 + k * 2**16 starts with b"\x80\x02", pickle's magic.
    m, path = _model(), tmp_path / "m.safetensors"
    ck.save(m, path, extra={"pad": ""})
    n0 = struct.unpack("<Q", path.read_bytes()[:8])[0]
    guess = (0x0280 - n0) % 2 ** 16
    for pad in range(max(0, guess - 16), guess + 16):   # safetensors pads headers to 8 bytes
        ck.save(m, path, extra={"pad": "x" * pad})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    else:
        pytest.fail("could not produce the header length")
    assert ck.load(path).config == m.config


def test_plain_safetensors_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a pixelaux checkpoint"):
        ck.load(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickle_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(ValueError, match="pickle") as e:
        ck.load(path)
    assert str(path) in str(e.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="pickle"):
        ck.load_training_state(path)
    assert not marker.exists()


def test_torch_save_file_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_model().state_dict(), path)
    with pytest.raises(ValueError, match="torch.save"):
        ck.load(path)


def _rewrite(path, tensors=None, **header_changes):
    """Rewrite a checkpoint with a changed header and/or tensors (valid digest)."""
    header = ck.read_header(path)
    from safetensors.torch import load_file
    tensors = load_file(str(path)) if tensors is None else tensors
    header.pop("sha256")
    header.update(header_changes)
    path.write_bytes(ck._dumps(tensors, header))
    return tensors


def test_unknown_kind(saved):
    _, path = saved
    _rewrite(path, kind="TransformerXL")
    with pytest.raises(ValueError, match="unknown model kind 'TransformerXL'"):
        ck.load(path)


def test_newer_format_version(saved):
    _, path = saved
    _rewrite(path, format_version=2)
    with pytest.raises(ValueError, match="newer"):
        ck.load(path)


def test_config_weights_mismatch(saved):
    m, path = saved
    tensors = _rewrite(path, config=dict(m.config, hidden=16))
    with pytest.raises(ValueError, match="shape mismatches") as e:
        ck.load(path)
    assert str(path) in str(e.value)
    _rewrite(path, tensors={k: v for k, v in tensors.items() if k != "head.bias"},
             config=m.config)
    with pytest.raises(ValueError, match=r"missing keys \['head.bias'\]"):
        ck.load(path)
    _rewrite(path, tensors=dict(tensors, extra=torch.zeros(1)))
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        ck.load(path)
    _rewrite(path, tensors=tensors, config=dict(m.config, hidden=-1))
    with pytest.raises(ValueError, match="config does not build"):
        ck.load(path)


def test_training_state_is_not_a_model_checkpoint(tmp_path):
    path = ck.save_training_state(tmp_path / "s.safetensors", {"step": 1})
    with pytest.raises(ValueError, match="format"):
        ck.load(path)


# --------------------------------------------------------------------------- atomicity

def test_crash_before_rename_keeps_old_checkpoint(saved, monkeypatch):
    old, path = saved

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        ck.save(_model(hidden=12), path)
    monkeypatch.undo()
    back = ck.load(path)
    assert back.config == old.config
    assert torch.equal(back.head.weight, old.head.weight)
    assert sorted(os.listdir(path.parent)) == ["m.safetensors"]


def test_ctrl_c_during_write_leaves_no_partial_file(saved, monkeypatch):
    old, path = saved

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ck.save(_model(hidden=12), path)
    with pytest.raises(KeyboardInterrupt):
        ck.save(_model(), path.parent / "new.safetensors")
    monkeypatch.undo()
    assert sorted(os.listdir(path.parent)) == ["m.safetensors"]
    assert ck.load(path).config == old.config


# --------------------------------------------------------------------------- training state

def test_training_state_round_trip(tmp_path):
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m.log_prob(_images(m)).mean().neg().backward()
    opt.step()
    state = {"step": 3, "model": m.state_dict(), "optimizer": opt.state_dict(),
             "rng": {"torch": [torch.get_rng_state()]}, "misc": {1: (2.5, None, "a"), "b": [True]}}
    path = ck.save_training_state(tmp_path / "state.safetensors", state)
    back = ck.load_training_state(path)
    assert back["step"] == 3 and back["misc"] == {1: (2.5, None, "a"), "b": [True]}
    assert torch.equal(back["rng"]["torch"][0], torch.get_rng_state())
    opt2 = torch.optim.Adam(_model().parameters(), lr=1.0)
    opt2.load_state_dict(back["optimizer"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys()
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][k]), (i, k)
    for k, v in m.state_dict().items():
        assert torch.equal(v, back["model"][k])


def test_training_state_errors(tmp_path):
    with pytest.raises(TypeError, match="object"):
        ck.save_training_state(tmp_path / "s.safetensors", {"x": object()})
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="does not exist"):
        ck.load_training_state(tmp_path / "s.safetensors")
    path = ck.save_training_state(tmp_path / "s.safetensors", {"w": torch.arange(100.0)})
    raw = path.read_bytes()
    path.write_bytes(raw[:-8])
    with pytest.raises(ValueError, match="s.safetensors"):
        ck.load_training_state(path)
    # a header length pointing past the end of the file
    path.write_bytes(struct.pack("<Q", 10 ** 6) + raw[8:])
    with pytest.raises(ValueError, match="truncated"):
        ck.load_training_state(path)
