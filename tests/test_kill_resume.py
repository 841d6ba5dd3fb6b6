"""SIGKILL a training run at random moments, again and again, and resume it each time.

``python -m pixelaux train`` (a tiny GatedPixelCNN on a folder of 8x8 PNGs, a checkpoint
every 1 or 2 steps) is started, killed with SIGKILL at a seeded random moment (most
kills after 1-4 checkpoints of the new process plus a random fraction of the time
between two checkpoints, so they land anywhere in a step or in a checkpoint write;
every fifth while it starts up, imports or restores), and restarted with ``--resume``.
After every kill:

* both files load (``model.safetensors`` with ``pixelaux.checkpoint.load``,
  ``training_state.safetensors`` with ``load_training_state``): a checkpoint that
  existed before the kill is never lost or damaged, and the step never goes back;
* the model file is at most one checkpoint behind the state (it is written second)
  and, when both are at the same step, holds exactly the EMA weights of the state;
* the run directory holds nothing but the two files, ``metrics.jsonl`` (a line every
  20 steps), the run's ``config.json`` (complete: it is written atomically, before
  training) and, possibly, the hidden temporary file of the write the kill interrupted;
* the resumed process says it resumed at the step of the last checkpoint.

Finally the run is resumed to the end and must equal an uninterrupted run bit for bit
(weights, EMA, Adam state, step): training on CPU with one thread is deterministic and
the batch of step ``t`` is a function of ``(seed, t)`` only. Its ``metrics.jsonl`` has
one line per logged step with the uninterrupted run's figures (lines written after the
checkpoint a resume starts from are dropped and written again).

The numbers (kills survived, checkpoints lost, temporary files left) are printed when
the test ends.
"""
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import one_thread  # noqa: F401 (fixture)
from pixelaux import checkpoint as ck
from pixelaux.metrics import METRICS_FILE, read_metrics
from pixelaux.run_config import CONFIG_FILE
from pixelaux.training import MODEL_FILE, STATE_FILE

pytestmark = pytest.mark.slow         # about 25 s: 10 processes killed and resumed

KILLS = 10
STEPS = 200
SEED = 20240611
TMP_RE = re.compile(r"^\.((model|training_state)\.safetensors|config\.json)\.[0-9a-f]{16}\.tmp$")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _command(data: Path, out: Path, ckpt_every: int, resume: bool):
    cmd = [sys.executable, "-m", "pixelaux", "train", "--model-kind", "gated", "--data", f"folder:{data}",
           "--hidden", "4", "--blocks", "1", "--steps", str(STEPS), "--batch-size", "4", "--lr", "3e-3",
           "--ckpt-every", str(ckpt_every), "--eval-every", "20", "--seed", "3", "--device", "cpu",
           "--out", str(out)]
    return cmd + (["--resume"] if resume else [])


def _stamp(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _state_tensors(st) -> dict:
    out = {f"model/{k}": v for k, v in st["model"].items()}
    out.update({f"ema/{k}": v for k, v in st["ema"].items()})
    for i, s in st["optimizer"]["state"].items():
        out.update({f"adam/{i}/{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    return out


def _check_run_dir(out: Path, prev_step: int | None) -> tuple[int | None, list[str]]:
    """Everything that must hold after a kill -> (state step or None, temp files)."""
    names = sorted(os.listdir(out)) if out.exists() else []
    temps = [n for n in names if TMP_RE.match(n)]
    kept = (MODEL_FILE, STATE_FILE, METRICS_FILE, CONFIG_FILE)
    others = [n for n in names if n not in kept and not TMP_RE.match(n)]
    assert not others, f"unexpected files in the run directory: {others}"
    if CONFIG_FILE in names:
        assert json.loads((out / CONFIG_FILE).read_text())["model"]["hidden"] == 4   # never a partial file
    if STATE_FILE not in names:
        assert prev_step is None, f"the training state of step {prev_step} was lost"
        assert MODEL_FILE not in names, "model file without a training state"
        return None, temps
    st = ck.load_training_state(out / STATE_FILE)            # ValueError here = a lost checkpoint
    step = int(st["step"])
    assert prev_step is None or step >= prev_step, f"the step went back from {prev_step} to {step}"
    if MODEL_FILE in names:
        model = ck.load(out / MODEL_FILE)
        m_step = ck.read_header(out / MODEL_FILE)["step"]
        assert m_step <= step, (m_step, step)
        if m_step == step:                                    # the EMA of the state, exactly
            for k, v in model.state_dict().items():
                assert torch.equal(v, st["ema"][k]), f"model file and EMA differ at {k} (step {step})"
        assert all(torch.isfinite(p).all() for p in model.parameters())
    return step, temps


def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path, request):
    rng = random.Random(SEED)
    data = tmp_path / "images"
    data.mkdir()
    pix = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(pix.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(data / f"{i:02d}.png")
    env = _env()
    # The uninterrupted reference runs alongside the kills.
    ref_out = tmp_path / "reference"
    ref = subprocess.Popen(_command(data, ref_out, 50, False), env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    out = tmp_path / "killed"
    step, lost, survived, during_startup = None, 0, 0, 0
    temps_seen = set()
    try:
        for k in range(KILLS):
            resume = (out / STATE_FILE).exists()
            before = _stamp(out / STATE_FILE)
            log = tmp_path / f"child{k}.log"
            with open(log, "w") as f:
                child = subprocess.Popen(_command(data, out, rng.choice([1, 2]), resume), env=env,
                                         stdout=f, stderr=subprocess.STDOUT)
            t0 = time.monotonic()
            progressed = False
            if k % 5 == 4:                   # now and then: while it imports, restores, starts
                time.sleep(rng.uniform(0.0, 1.5))
                during_startup += 1
            else:                            # once it writes checkpoints: mid-step or mid-write
                # Wait for 1-4 new checkpoints, then a random fraction of the time between
                # two of them, so the kill lands anywhere in a step or a write, on any machine.
                last, seen, period = before, [], 0.05
                for _ in range(rng.randint(1, 4)):
                    while _stamp(out / STATE_FILE) == last and child.poll() is None:
                        assert time.monotonic() - t0 < 120, "the training did not start"
                        time.sleep(0.001)
                    last = _stamp(out / STATE_FILE)
                    seen.append(time.monotonic())
                    if child.poll() is not None:
                        break
                if len(seen) >= 2:
                    period = (seen[-1] - seen[0]) / (len(seen) - 1)
                progressed = last != before
                time.sleep(rng.uniform(0.0, period))
            finished = child.poll() is not None
            if not finished:
                child.send_signal(signal.SIGKILL)
            child.wait()
            assert finished or child.returncode == -signal.SIGKILL
            assert not finished or child.returncode == 0, log.read_text()[-2000:]
            try:
                new_step, temps = _check_run_dir(out, step)
            except (ValueError, AssertionError):
                lost += 1
                raise
            temps_seen.update(temps)
            if resume and progressed:
                assert f"at step {step}" in log.read_text(), \
                    f"the resumed run did not continue at step {step}: {log.read_text()[-500:]}"
            step = new_step
            if finished:
                break
            survived += 1
        assert survived >= 8, f"only {survived} kills landed before the run finished"
        # Resume to the end, without a kill.
        done = subprocess.run(_command(data, out, 2, (out / STATE_FILE).exists()), env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert step is None or f"at step {step}" in done.stdout
    finally:
        if ref.poll() is None and sys.exc_info()[0] is not None:
            ref.kill()
        _, ref_err = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_err[-2000:]
    # Killed-and-resumed == uninterrupted, bit for bit.
    a, b = ck.load_training_state(ref_out / STATE_FILE), ck.load_training_state(out / STATE_FILE)
    assert a["step"] == b["step"] == STEPS
    ta, tb = _state_tensors(a), _state_tensors(b)
    assert ta.keys() == tb.keys() and any(k.startswith("adam/") for k in ta)
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"killed-and-resumed run differs from the uninterrupted one in {differ[:5]}"
    ma, mb = ck.load(ref_out / MODEL_FILE), ck.load(out / MODEL_FILE)
    assert all(torch.equal(v, mb.state_dict()[n]) for n, v in ma.state_dict().items())
    assert ck.read_header(out / MODEL_FILE)["step"] == STEPS
    # metrics.jsonl: lines written after the checkpoint a resume started from were dropped,
    # so the log has one line per step, with the figures of the uninterrupted run
    figures = lambda rows: [{k: r[k] for k in ("step", "train_bpd", "test_bpd", "lr")} for r in rows]  # noqa: E731
    assert [r["step"] for r in read_metrics(out)] == list(range(20, STEPS + 1, 20))
    assert figures(read_metrics(out)) == figures(read_metrics(ref_out))
    assert (out / METRICS_FILE).read_text().count("\n") == STEPS // 20
    # No temporary files: none in the uninterrupted run; in the killed one, a write that
    # a SIGKILL interrupted leaves a hidden temp file, which the next --resume removes.
    assert sorted(os.listdir(ref_out)) == [CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE]
    final_temps = [n for n in os.listdir(out) if n not in (MODEL_FILE, STATE_FILE, METRICS_FILE, CONFIG_FILE)]
    assert final_temps == [], final_temps       # stale temp files are removed on --resume
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(f"\nkill/resume: {survived} SIGKILLs survived ({during_startup} during start-up), "
              f"{lost} checkpoints lost, {len(final_temps)} temporary files left by interrupted writes "
              f"({len(temps_seen)} seen), final step {STEPS}, identical to the uninterrupted run")
    assert lost == 0
