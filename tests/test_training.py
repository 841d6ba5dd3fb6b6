"""pixelaux.training: a short run learns, resume is exact, failures write nothing bad."""
import copy
import math
import os

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from helpers import one_thread  # noqa: F401 (fixture)
from pixelaux import GatedPixelCNN, GrayscalePixelCNN, PyramidPixelCNN
from pixelaux import checkpoint as ck
from pixelaux import training
from pixelaux.data import natural_patches
from pixelaux.metrics import METRICS_FILE, read_metrics
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
    assert sorted(os.listdir(tmp_path)) == [METRICS_FILE, MODEL_FILE, STATE_FILE]
    loaded = ck.load(r.checkpoint)
    assert ck.read_header(r.checkpoint)["step"] == 30
    assert bits_per_dim(loaded, te) == pytest.approx(r.test_bpd, abs=1e-5)
    assert r.test_bpd < bits_per_dim(_model(), te)
    # metrics.jsonl: a line per evaluation and at the end
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [10, 20, 30]
    assert set(rows[0]) == {"step", "train_bpd", "test_bpd", "lr", "images_per_s", "wall_s"}  # no parts: one network
    assert rows[-1]["test_bpd"] == pytest.approx(r.test_bpd, abs=1e-12)
    assert rows[0]["train_bpd"] > rows[-1]["train_bpd"] and rows[0]["test_bpd"] > rows[-1]["test_bpd"]
    assert [row["lr"] for row in rows] == [pytest.approx(3e-3 * 0.999995 ** (t - 1), rel=1e-12) for t in (10, 20, 30)]
    assert all(row["images_per_s"] > 0 for row in rows)
    assert 0 < rows[0]["wall_s"] < rows[1]["wall_s"] < rows[2]["wall_s"]


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


# ----------------------------------------------------------------------------- issue 18: optimizer, metrics

def test_config_ranges_named_and_older_configs_read_with_their_behaviour():
    for kw, exc, words in [
            (dict(adam_betas=(0.9, 1.0)), ValueError, ["adam_betas[1]", "< 1", "1.0"]),
            (dict(adam_betas=(-0.1, 0.9)), ValueError, ["adam_betas[0]", ">= 0"]),
            (dict(adam_betas=(0.9,)), TypeError, ["adam_betas", "pair"]),
            (dict(adam_betas="0.9"), TypeError, ["adam_betas"]),
            (dict(adam_betas=(0.9, "x")), TypeError, ["adam_betas[1]"]),
            (dict(lr_decay=0.0), ValueError, ["lr_decay", "> 0"]),
            (dict(lr_decay=1.01), ValueError, ["lr_decay", "<= 1"]),
            (dict(ema_decay=1.5), ValueError, ["ema_decay"]),
            (dict(grad_clip=-1.0), ValueError, ["grad_clip", ">= 0"]),
            (dict(grad_clip=float("nan")), ValueError, ["grad_clip", "finite"]),
            (dict(lr=0.0), ValueError, ["lr", "> 0"])]:
        with pytest.raises(exc) as e:
            TrainConfig(steps=1, **kw)
        assert all(w in str(e.value) for w in words), (kw, str(e.value))
    cfg = TrainConfig(steps=1, adam_betas=[0.95, 0.9995], grad_clip=0, lr_decay=1)
    assert cfg.adam_betas == (0.95, 0.9995) and cfg.grad_clip == 0.0 and cfg.lr_decay == 1.0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    # a run saved before these fields: Adam's betas were (0.9, 0.999); grad_clip None meant "off"
    old = dict(steps=5, batch_size=8, lr=1e-3, lr_decay=0.999995, ema_decay=0.999, grad_clip=None, amp=False,
               compile=False, eval_every=None, ckpt_every=1000, seed=0, device="cpu", threads=None)
    back = TrainConfig.from_dict(old)
    assert back.adam_betas == (0.9, 0.999) and back.grad_clip == 0.0
    assert TrainConfig.from_dict(dict(old, grad_clip=1.0)).grad_clip == 1.0     # today's default


def _first_gradient(model, data, batch_size, seed=0):
    """The gradient of step 1's loss (the batch train() takes first), computed here."""
    m = copy.deepcopy(model).train()
    x = data[_Order(len(data), batch_size, 1, 0, seed)(0)]
    loss = -m.log_prob(x).mean() / (x[0].numel() * math.log(2.0))
    grads = torch.autograd.grad(loss, list(m.parameters()))
    return grads, float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def _spy_adam():
    """Records, before every optimizer step, the global gradient norm and its group's lr and betas."""
    seen = []

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        group = opt.param_groups[0]
        seen.append(dict(norm=float(norm), lr=group["lr"], betas=tuple(group["betas"])))
    return seen, register_optimizer_step_pre_hook(hook)


def test_optimizer_settings_reach_adam_clipping_off_and_on_and_ema_decay(tmp_path, patches):
    tr, _ = patches
    g1, raw_norm = _first_gradient(_model(), tr, 8)
    seen, handle = _spy_adam()
    try:
        m = _model()
        w0 = [p.detach().clone() for p in m.parameters()]
        r = train(m, tr, steps=1, batch_size=8, lr=1e-2, adam_betas=(0.5, 0.6), ema_decay=0.1, grad_clip=0,
                  out_dir=tmp_path / "off", **_quiet())
        train(_model(), tr, steps=3, batch_size=8, lr=1e-2, lr_decay=0.5, grad_clip=raw_norm / 2,
              out_dir=tmp_path / "on", **_quiet())
    finally:
        handle.remove()
    off, on = seen[0], seen[1:]
    # clipping off: Adam gets the raw gradient; on: its norm is the clip value
    assert off["norm"] == pytest.approx(raw_norm, rel=1e-5)
    assert on[0]["norm"] == pytest.approx(raw_norm / 2, rel=1e-5)
    assert all(s["norm"] <= raw_norm / 2 * (1 + 1e-5) for s in on)
    # betas, and the learning rate decayed per step: lr * lr_decay**(t-1)
    assert off["betas"] == (0.5, 0.6) and on[0]["betas"] == (0.9, 0.999)      # the default, as before
    assert [s["lr"] for s in on] == [pytest.approx(1e-2 * 0.5 ** t) for t in range(3)]
    st = ck.load_training_state(tmp_path / "off" / STATE_FILE)
    assert tuple(st["optimizer"]["param_groups"][0]["betas"]) == (0.5, 0.6)
    exp_avg = st["optimizer"]["state"][0]["exp_avg"]                            # (1 - beta1) * g
    torch.testing.assert_close(exp_avg, 0.5 * g1[0], rtol=1e-4, atol=1e-7)
    # EMA decay: step 1 uses min(0.1, 2/11) = 0.1, so the EMA is w0 + 0.9 (w1 - w0)
    for e, p, p0 in zip(r.ema_model.parameters(), m.parameters(), w0):
        torch.testing.assert_close(e, p0 + 0.9 * (p.detach() - p0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(next(r.ema_model.parameters()), next(m.parameters()))


def test_test_bits_per_dim_are_float32_under_amp(tmp_path, patches, monkeypatch):
    """amp on (bf16, here on CPU): the training steps run under autocast, the test
    evaluation does not, so test_bpd is the float32 figure of the EMA model."""
    tr, te = patches
    monkeypatch.setattr(training, "_amp_dtype", lambda amp, dev, say: torch.bfloat16)
    m = _model()
    with torch.no_grad():                      # sharp distributions (log-scales -3), where bf16 shows
        m.head.bias[8:14] = -3.0               # [logits 2, means 6, log-scales 6, coeffs 6]
    dtypes = []
    m.head.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    r = train(m, tr, test_data=te[:16], steps=2, batch_size=8, amp="bf16", out_dir=tmp_path, **_quiet())
    assert dtypes[:2] == [torch.bfloat16, torch.bfloat16]                       # the training steps
    fp32 = bits_per_dim(r.ema_model, te[:16])
    assert r.test_bpd == pytest.approx(fp32, rel=1e-6)
    assert read_metrics(tmp_path)[-1]["test_bpd"] == pytest.approx(fp32, rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():           # what it was before
        x = te[:16]
        under_amp = float(-r.ema_model.log_prob(x).float().sum() / (x.numel() * math.log(2.0)))
    assert abs(under_amp - fp32) > 1e-3, (under_amp, fp32)


def test_metrics_log_after_an_interrupted_run_is_resumed_has_one_line_per_step(tmp_path, patches, monkeypatch):
    tr, _ = patches
    kw = dict(steps=6, batch_size=8, eval_every=2, ckpt_every=3, **_quiet())
    train(_model(), tr, out_dir=tmp_path / "a", **kw)
    straight = read_metrics(tmp_path / "a")
    assert [r["step"] for r in straight] == [2, 4, 6]
    assert all(r["test_bpd"] is None for r in straight)                       # no test data
    m, calls = _model(), {"n": 0}
    real = m.log_prob

    def interrupted(x):
        calls["n"] += 1
        if calls["n"] == 5:                    # step 5: after the line of step 4, checkpoint at 3
            raise KeyboardInterrupt
        return real(x)

    monkeypatch.setattr(m, "log_prob", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(m, tr, out_dir=tmp_path / "b", **kw)
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [2, 4]
    with open(tmp_path / "b" / METRICS_FILE, "ab") as f:
        f.write(b'{"step": 5, "train_')                                        # a line cut short by a kill
    msgs = []
    train(_model(seed=9), tr, out_dir=tmp_path / "b", resume=True, progress=False, log=msgs.append,
          **{k: v for k, v in kw.items() if k not in ("progress", "log")})
    assert any(f"{METRICS_FILE}: dropped 2 lines after step 3" in s for s in msgs), msgs
    resumed = read_metrics(tmp_path / "b")
    assert [r["step"] for r in resumed] == [2, 4, 6]
    text = (tmp_path / "b" / METRICS_FILE).read_text()
    assert text.endswith("\n") and text.count("\n") == 3
    for a, b in zip(straight, resumed):        # the figures of an uninterrupted run (timings aside)
        assert {k: a[k] for k in ("step", "train_bpd", "test_bpd", "lr")} == \
               {k: b[k] for k in ("step", "train_bpd", "test_bpd", "lr")}
    assert resumed[0]["wall_s"] < resumed[1]["wall_s"] < resumed[2]["wall_s"]
    # a new run (no checkpoint) starts its log afresh
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / METRICS_FILE).write_text('{"step": 9}\n')
    train(_model(), tr, out_dir=tmp_path / "c", steps=1, batch_size=8, **_quiet())
    assert [r["step"] for r in read_metrics(tmp_path / "c")] == [1]


def test_metrics_log_has_the_test_parts_of_a_composite_model(tmp_path):
    torch.manual_seed(0)
    m = GrayscalePixelCNN(hidden=8, blocks=1, image_size=(8, 8))
    data = natural_patches("test", 8, scales=(2,))[:24]
    r = train(m, data[:16], test_data=data[16:], steps=1, batch_size=8, out_dir=tmp_path, **_quiet())
    row = read_metrics(tmp_path)[-1]
    assert sorted(row["test_bpd_parts"]) == ["colour", "gray"]
    assert sum(row["test_bpd_parts"].values()) == pytest.approx(row["test_bpd"], rel=1e-9)
    assert row["test_bpd"] == pytest.approx(r.test_bpd) == pytest.approx(bits_per_dim(r.ema_model, data[16:]))
    parts = r.ema_model.bits_per_dim(data[16:])
    assert row["test_bpd_parts"]["gray"] == pytest.approx(float(parts["gray"].mean()), rel=1e-5)


def test_a_resumed_runs_bar_starts_at_its_step(tmp_path, patches, capsys):
    """The bar of a resumed run starts where the run stopped (tqdm's ``initial``), so its
    rate counts this process's steps, not the saved ones in its first second."""
    tr, _ = patches
    kw = dict(batch_size=8, log=lambda *a: None)
    train(_model(seed=1), tr, out_dir=tmp_path, steps=3, progress=False, **kw)
    capsys.readouterr()
    train(_model(seed=1), tr, out_dir=tmp_path, steps=5, resume=True, progress=True, **kw)
    renders = [r.strip() for r in capsys.readouterr().err.replace("\r", "\n").splitlines() if "/5 [" in r]
    assert renders and "3/5 [" in renders[0], renders
    assert not any(" 0/5 [" in r or "|0/5" in r for r in renders), renders
