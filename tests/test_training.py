"""pixelaux.training: a short run learns, resume is exact, failures write nothing bad."""
import os

import pytest
import torch

from helpers import one_thread  # noqa: F401 (fixture)
from pixelaux import GatedPixelCNN, GrayscalePixelCNN, PyramidPixelCNN
from pixelaux import checkpoint as ck
from pixelaux import training
from pixelaux.data import natural_patches
from pixelaux.training import (MODEL_FILE, STATE_FILE, TrainConfig, _Order, bits_per_dim, read_run,
                               train)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def patches():
    tr = natural_patches("train", 8, scales=(2,))
    te = natural_patches("test", 8, scales=(2,))
    g = torch.Generator().manual_seed(0)
    return tr[torch.randperm(len(tr), generator=g)[:256]], te[:64]


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(hidden=12, blocks=1, nr_mix=2, image_size=(8, 8))
    cfg.update(kw)
    return GatedPixelCNN(**cfg)


def _quiet(**kw):
    return dict(progress=False, log=lambda s: None, **kw)


def test_short_run_lowers_bits_per_dim(tmp_path, patches):
    tr, te = patches
    m = _model()
    before = bits_per_dim(m, tr)
    r = train(m, tr, test_data=te, steps=30, batch_size=16, lr=3e-3, out_dir=tmp_path,
              eval_every=10, ckpt_every=10, **_quiet())
    after = bits_per_dim(m, tr)
    assert r.step == 30 and after < before - 0.3, (before, after)
    assert r.ema_model is not None and not r.ema_model.training
    assert r.train_bpd is not None and r.train_bpd < before
    # the saved model is the EMA model that gave test_bpd, ready to use
    assert sorted(os.listdir(tmp_path)) == [MODEL_FILE, STATE_FILE]
    loaded = ck.load(r.checkpoint)
    assert ck.read_header(r.checkpoint)["step"] == 30
    assert bits_per_dim(loaded, te) == pytest.approx(r.test_bpd, abs=1e-5)
    assert r.test_bpd < bits_per_dim(_model(), te)


def _state_tensors(path):
    st = ck.load_training_state(path)
    out = {f"model/{k}": v for k, v in st["model"].items()}
    out.update({f"ema/{k}": v for k, v in st["ema"].items()})
    for i, s in st["optimizer"]["state"].items():
        out.update({f"adam/{i}/{k}": v for k, v in s.items()})
    return st, out


def test_resume_equals_uninterrupted_run(tmp_path, patches):
    tr, te = patches
    kw = dict(steps=20, batch_size=16, lr=3e-3, lr_decay=0.99, ema_decay=0.9, **_quiet())
    straight = _model(seed=1)
    train(straight, tr, out_dir=tmp_path / "a", ckpt_every=10, **kw)
    part = _model(seed=1)
    r1 = train(part, tr, out_dir=tmp_path / "b", **dict(kw, steps=10))
    assert r1.step == 10 and ck.load_training_state(r1.training_state)["step"] == 10
    resumed = _model(seed=99)                   # weights come from the state, not from here
    r2 = train(resumed, tr, out_dir=tmp_path / "b", resume=True, **kw)
    assert r2.step == 20
    sa, ta = _state_tensors(tmp_path / "a" / STATE_FILE)
    sb, tb = _state_tensors(tmp_path / "b" / STATE_FILE)
    assert sa["step"] == sb["step"] == 20
    assert ta.keys() == tb.keys() and any(k.startswith("adam/") for k in ta)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-6, atol=1e-7, msg=k)
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(v, resumed.state_dict()[k], rtol=1e-6, atol=1e-7)
    ea, eb = ck.load(tmp_path / "a" / MODEL_FILE), ck.load(tmp_path / "b" / MODEL_FILE)
    for k, v in ea.state_dict().items():
        torch.testing.assert_close(v, eb.state_dict()[k], rtol=1e-6, atol=1e-7)
    # resuming a finished run trains nothing and keeps the files
    before = (tmp_path / "b" / STATE_FILE).read_bytes()
    r3 = train(_model(), tr, out_dir=tmp_path / "b", resume=True, **kw)
    assert r3.step == 20 and r3.train_bpd is None
    assert (tmp_path / "b" / STATE_FILE).read_bytes() == before


def test_run_directory_rules(tmp_path, patches):
    tr, _ = patches
    kw = dict(steps=2, batch_size=8, **_quiet())
    with pytest.raises(ValueError, match="no training_state"):
        train(_model(), tr, out_dir=tmp_path, resume=True, **kw)
    train(_model(), tr, out_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match="already holds a run"):
        train(_model(), tr, out_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match="config"):
        train(_model(hidden=8), tr, out_dir=tmp_path, resume=True, **dict(kw, steps=4))


def test_nan_loss_raises_and_writes_nothing(tmp_path, patches):
    tr, _ = patches
    m = _model()
    with torch.no_grad():
        m.head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="at step 1; .*last checkpoint: none"):
        train(m, tr, steps=5, batch_size=8, out_dir=tmp_path / "run", **_quiet())
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


def test_nan_mid_run_keeps_last_good_checkpoint(tmp_path, patches, monkeypatch):
    tr, _ = patches
    m = _model()
    calls = {"n": 0}
    real = m.log_prob

    def flaky(x):
        calls["n"] += 1
        lp = real(x)
        return lp * float("nan") if calls["n"] == 8 else lp

    monkeypatch.setattr(m, "log_prob", flaky)
    with pytest.raises(FloatingPointError, match="step 8.*last checkpoint: step 5"):
        train(m, tr, steps=10, batch_size=8, out_dir=tmp_path, ckpt_every=5, **_quiet())
    assert ck.read_header(tmp_path / MODEL_FILE)["step"] == 5
    assert ck.load_training_state(tmp_path / STATE_FILE)["step"] == 5
    assert all(torch.isfinite(p).all() for p in ck.load(tmp_path / MODEL_FILE).parameters())


def test_ctrl_c_leaves_last_checkpoint_and_no_partial_files(tmp_path, patches, monkeypatch):
    tr, _ = patches
    real, calls = os.fsync, {"n": 0}

    def fsync(fd):                             # 2 fsyncs per file; call 5 = 3rd file's data
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        train(_model(), tr, steps=8, batch_size=8, out_dir=tmp_path, ckpt_every=3, **_quiet())
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [MODEL_FILE, STATE_FILE]
    assert ck.load_training_state(tmp_path / STATE_FILE)["step"] == 3
    assert ck.read_header(tmp_path / MODEL_FILE)["step"] == 3
    r = train(_model(), tr, steps=8, batch_size=8, out_dir=tmp_path, resume=True,
              ckpt_every=3, **_quiet())
    assert r.step == 8


def test_amp_and_compile_ignored_on_cpu_and_tuple_datasets(tmp_path, patches):
    tr, _ = patches
    msgs = []
    ds = torch.utils.data.TensorDataset(tr, torch.zeros(len(tr)))   # items (image, label)
    r = train(_model(), ds, test_data=ds, steps=2, batch_size=8, amp=True, compile=True,
              out_dir=tmp_path, progress=False, log=msgs.append)
    assert r.step == 2 and r.test_bpd is not None
    assert any("amp" in s and "ignored" in s for s in msgs)
    assert any("compile" in s and "ignored" in s for s in msgs)


def test_argument_errors(tmp_path, patches):
    tr, _ = patches
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        train(_model(image_size=(16, 16)), tr, steps=1, out_dir=tmp_path, **_quiet())
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(_model(), tr[:4], steps=1, batch_size=8, out_dir=tmp_path, **_quiet())
    with pytest.raises(ValueError, match="cond"):
        train(_model(cond_channels=2), tr, steps=1, out_dir=tmp_path, **_quiet())
    with pytest.raises(ValueError, match="steps"):
        train(_model(), tr, steps=0, out_dir=tmp_path, **_quiet())
    assert not list(tmp_path.iterdir())


def test_data_order_is_a_function_of_seed_and_step():
    o = _Order(n=10, batch_size=3, world=1, rank=0, seed=5)
    assert o.per_epoch == 3
    epoch0 = torch.cat([o(t) for t in range(3)])
    assert len(set(epoch0.tolist())) == 9                       # no repeats within an epoch
    assert not torch.equal(epoch0, torch.cat([o(t) for t in range(3, 6)]))  # reshuffled
    fresh = _Order(n=10, batch_size=3, world=1, rank=0, seed=5)
    assert torch.equal(fresh(4), o(4))                           # no hidden state
    ranks = [_Order(n=10, batch_size=2, world=2, rank=r, seed=5) for r in range(2)]
    single = _Order(n=10, batch_size=4, world=1, rank=0, seed=5)
    for t in range(4):                                           # DDP shards = one big batch
        assert torch.equal(torch.cat([rk(t) for rk in ranks]), single(t))


@pytest.mark.parametrize("cls", [GrayscalePixelCNN, PyramidPixelCNN])
def test_composite_kinds_train_and_load(tmp_path, patches, cls):
    torch.manual_seed(0)
    m = cls(hidden=8, blocks=1, image_size=(16, 16))
    data = natural_patches("test", 16, scales=(4,))[:32]
    r = train(m, data, test_data=data[:8], steps=2, batch_size=8, out_dir=tmp_path, **_quiet())
    loaded = ck.load(r.checkpoint)
    assert type(loaded) is type(m) and loaded.kind == m.kind
    assert bits_per_dim(loaded, data[:8]) == pytest.approx(r.test_bpd, abs=1e-5)


def test_settings_are_one_checked_config_saved_with_the_run(tmp_path, patches):
    tr, _ = patches
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(steps=1, lr_decay=1.5)
    with pytest.raises(TypeError, match="batch_size"):
        TrainConfig(steps=1, batch_size=2.0)
    with pytest.raises(ValueError, match="threads"):
        train(_model(), tr, steps=1, threads=0, out_dir=tmp_path / "x", **_quiet())
    with pytest.raises(ValueError, match="meta"):
        train(_model(), tr, steps=1, meta={"f": object()}, out_dir=tmp_path / "x", **_quiet())
    assert not (tmp_path / "x").exists()
    train(_model(), tr, steps=2, batch_size=8, lr=2e-3, ckpt_every=1, out_dir=tmp_path / "run",
          meta={"data": "patches"}, **_quiet())
    saved = read_run(tmp_path / "run")
    assert saved.kind == "GatedPixelCNN" and saved.config["hidden"] == 12 and saved.step == 2
    assert saved.settings == TrainConfig(steps=2, batch_size=8, lr=2e-3, ckpt_every=1)
    assert saved.meta == {"data": "patches"}
    assert TrainConfig.from_dict({**saved.settings.to_dict(), "from_the_future": 1}) == saved.settings
    with pytest.raises(ValueError, match="holds no training run"):
        read_run(tmp_path / "nothing")


def test_small_models_train_with_one_cpu_thread_and_threads_are_restored(tmp_path, patches):
    """The cause of slow steps for small models: two intra-op threads on tiny operations,
    which next to other work on the machine wait in OpenMP barriers (10-30x slower)."""
    tr, _ = patches
    seen = []
    m = _model()
    real = m.log_prob
    m.log_prob = lambda x: (seen.append(torch.get_num_threads()), real(x))[1]
    msgs = []
    torch.set_num_threads(2)
    try:
        train(m, tr, steps=2, batch_size=8, out_dir=tmp_path / "a", progress=False, log=msgs.append)
        assert seen == [1, 1] and torch.get_num_threads() == 2
        assert any("1 intra-op thread" in s and "small model" in s for s in msgs)
        seen.clear()
        train(m, tr, steps=2, batch_size=8, threads=2, out_dir=tmp_path / "b", **_quiet())
        assert seen == [2, 2]
        big = GatedPixelCNN(hidden=64, blocks=1, nr_mix=2, image_size=(32, 32))
        assert training._cpu_threads(big, TrainConfig(steps=1, batch_size=32), torch.device("cpu")) is None
        assert training._cpu_threads(m, TrainConfig(steps=1), torch.device("cuda")) is None
    finally:
        torch.set_num_threads(1)
