"""Corrupted checkpoints and training states: random byte edits and truncations of real
files give ``ValueError`` or exactly the saved content, never a different model.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pixelaux
from pixelaux import checkpoint as ck
from reliability_helpers import (  # noqa: F401 (fixtures)
    COUNTS, HYP, attempt, one_thread_and_report, tiny)

pytestmark = pytest.mark.usefixtures("one_thread_and_report")


#: the saved checkpoint of the module: a global filled by a fixture, so that hypothesis does not
#: print it with every falsifying example
SAVED = {}


def test_a_corrupted_config_value_in_a_checkpoint_header_is_detected(tmp_path):
    path = pixelaux.save(tiny("gated", seed=3), tmp_path / "m.safetensors")
    raw = path.read_bytes()
    edited = raw.replace(b'\\"bits\\": 8', b'\\"bits\\": 7', 1)     # one byte: an 8-bit model becomes 7-bit
    assert len(edited) == len(raw) and edited != raw
    path.write_bytes(edited)
    with pytest.raises(ValueError):
        ck.load(path)


def test_a_corrupted_step_in_a_training_state_is_detected(tmp_path):
    path = ck.save_training_state(tmp_path / "s.safetensors", {"step": 12, "w": torch.ones(3)})
    raw = path.read_bytes()
    edited = raw.replace(b'\\"step\\": 12', b'\\"step\\": 19', 1)
    assert len(edited) == len(raw) and edited != raw
    path.write_bytes(edited)
    with pytest.raises(ValueError):
        ck.load_training_state(path)


# --------------------------------------------------------------------------- checkpoint corruption

@st.composite
def corruptions(draw, size: int, header_end: int):
    """A list of byte edits, positions biased to the 8-byte length and the JSON header."""
    pos = st.one_of(st.integers(0, 7), st.integers(8, header_end - 1), st.integers(0, size - 1))
    edit = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("set"), pos, st.integers(0, 255)),
        st.tuples(st.just("truncate"), st.integers(0, size - 1), st.just(0)),
        st.tuples(st.just("insert"), pos, st.integers(0, 255)),
        st.tuples(st.just("delete"), pos, st.integers(1, 16)))
    return draw(st.lists(edit, min_size=1, max_size=3))


def _apply(raw: bytes, edits) -> bytes:
    b = bytearray(raw)
    for op, p, v in edits:
        p = min(p, max(0, len(b) - 1))
        if op == "flip" and b:
            b[p] ^= v
        elif op == "set" and b:
            b[p] = v
        elif op == "truncate":
            del b[p:]
        elif op == "insert":
            b[p:p] = bytes([v])
        elif op == "delete":
            del b[p:p + v]
    return bytes(b)


def _header_end(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("corrupt")
    m = tiny("gated", seed=3, hidden=4, image_size=(4, 4))
    path = pixelaux.save(m, d / "orig.safetensors", extra={"step": 12})
    saved_weights = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam(m.parameters())
    m.log_prob(torch.randint(0, 256, (2, 3, 4, 4))).mean().neg().backward()
    opt.step()
    state = {"step": 12, "model": m.state_dict(), "optimizer": opt.state_dict(), "rng": [torch.get_rng_state()]}
    spath = ck.save_training_state(d / "state.safetensors", state)
    SAVED.update({"dir": d, "model": m, "weights": saved_weights, "raw": path.read_bytes(),
                  "config": ck.read_header(path)["config"], "state_raw": spath.read_bytes(),
                  "state": ck.load_training_state(spath)})
    return SAVED


def _same_tree(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@pytest.mark.usefixtures("saved_checkpoint")
@pytest.mark.slow                # property-based: hundreds of inputs
@settings(max_examples=150, **HYP)
@given(data=st.data())
def test_property_corrupted_checkpoint_is_refused_or_identical(data):
    """Random byte edits of a real checkpoint: ``ValueError``, or a model identical to the
    saved one (config and every weight); never another exception, never a different model."""
    s = SAVED
    raw = s["raw"]
    edits = data.draw(corruptions(len(raw), _header_end(raw)), label="edits")
    path = s["dir"] / "edited.safetensors"
    path.write_bytes(_apply(raw, edits))
    ok, m = attempt("checkpoint corruption", lambda: ck.load(path))
    if ok:
        assert type(m) is type(s["model"]) and m.config == s["config"], \
            f"the edited file loaded a different config: {m.config}"
        ref = s["weights"]
        assert m.state_dict().keys() == ref.keys()
        assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items()), "different weights loaded"
        COUNTS["checkpoint corruption/loaded identical"] += 1


@pytest.mark.usefixtures("saved_checkpoint")
@pytest.mark.slow                # property-based: hundreds of inputs
@settings(max_examples=80, **HYP)
@given(data=st.data())
def test_property_corrupted_training_state_is_refused_or_identical(data):
    s = SAVED
    raw = s["state_raw"]
    edits = data.draw(corruptions(len(raw), _header_end(raw)), label="edits")
    path = s["dir"] / "edited_state.safetensors"
    path.write_bytes(_apply(raw, edits))
    ok, st_ = attempt("training-state corruption", lambda: ck.load_training_state(path))
    if ok:
        assert _same_tree(s["state"], st_), "the edited file loaded a different training state"
