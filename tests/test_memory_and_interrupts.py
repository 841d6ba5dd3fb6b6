"""Memory and interruptions: an oversized batch is refused up front with the estimate;
sampling shows progress; Ctrl-C in the CLI exits 130 with one line and leaves no
partial file; Ctrl-C while a native (C++) op samples stops it before the caller goes on,
so the process neither aborts at exit nor keeps the op running (issue 17.2).
"""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import pixelaux
from pixelaux import resources
from reliability_helpers import (  # noqa: F401 (fixtures)
    CPP, KINDS, cli, files, gen, models, one_thread_and_report)

pytestmark = pytest.mark.usefixtures("one_thread_and_report")


# --------------------------------------------------------------------------- memory

def test_oversized_batch_is_refused_up_front_with_the_estimate(models, monkeypatch):
    m = models["gated"]
    monkeypatch.setattr(resources, "available_bytes", lambda device: 10 ** 6)      # pretend 1 MB is free
    need = resources.estimate_sampling_bytes(m, 4096, (32, 32), "cached", "cpp" if CPP else "torch")
    assert need > 10 ** 6
    g = gen(1)
    before = g.get_state()
    with pytest.raises(resources.InsufficientMemoryError) as e:
        pixelaux.sample(m, 4096, size=32, generator=g, progress=False)
    assert isinstance(e.value, MemoryError)
    msg = str(e.value)
    assert resources.format_bytes(need) in msg and "976.6 KiB" in msg and "would fit" in msg
    assert "smaller n" in msg and "chunks" in msg and "n=4096" in msg
    assert e.value.needed == need and e.value.available == 10 ** 6
    assert torch.equal(g.get_state(), before), "the generator was used before the refusal"
    for kind in ("grayscale", "pyramid"):           # composite models are checked too
        with pytest.raises(resources.InsufficientMemoryError):
            pixelaux.sample(models[kind], 4096, size=32, progress=False, engine="naive")
    monkeypatch.setenv("PIXELAUX_MEMORY_CHECK", "0")                              # the escape hatch
    resources.check_memory(need, "cpu", "x")


def test_absurd_batch_is_refused_at_once_with_the_real_memory(models):
    t0 = time.perf_counter()
    with pytest.raises(resources.InsufficientMemoryError, match="available"):
        pixelaux.sample(models["grayscale"], 10 ** 9, progress=False)
    assert time.perf_counter() - t0 < 5.0


def test_small_calls_pass_the_memory_check(models):
    avail = resources.available_bytes("cpu")
    assert isinstance(avail, int) and avail > 0
    assert resources.available_bytes("meta") is None          # unknown: not checked
    resources.check_memory(10 ** 30, "meta", "x")
    for kind in KINDS:
        x = pixelaux.sample(models[kind], 2, progress=False)
        assert x.shape[0] == 2


def test_estimate_is_affine_in_n_and_covers_every_stage(models):
    for kind in KINDS:
        m = models[kind]
        for engine, backend in (("naive", None), ("cached", "torch"), ("cached", "cpp")):
            est = [resources.estimate_sampling_bytes(m, k, (32, 32), engine, backend) for k in (1, 2, 7)]
            assert 0 < est[0] < est[1] and est[2] - est[1] == 5 * (est[1] - est[0])
    g = models["grayscale"]
    for stage in (g.prior, g.colour):
        assert resources.estimate_sampling_bytes(g, 3, (8, 8), "cached") > \
            resources.estimate_sampling_bytes(stage, 3, (8, 8), "cached")
    big = pixelaux.GatedPixelCNN(hidden=64, blocks=4, image_size=32)
    assert resources.estimate_sampling_bytes(big, 8, None, "naive") > \
        resources.estimate_sampling_bytes(big, 8, None, "cached") > 0
    with pytest.raises(ValueError, match="engine"):
        resources.estimate_sampling_bytes(big, 1, None, "fast")


def test_cached_estimate_is_the_engines_own_buffers():
    """The cached figure comes from the state the engine builds: it grows with what that
    state holds (a wider input for tokens, the conditioning terms of every block)."""
    base = dict(channels=1, bits=9, hidden=8, blocks=2, dist="categorical", image_size=16)
    plain = pixelaux.GatedPixelCNN(**base)
    tokens = pixelaux.GatedPixelCNN(**base, embed_dim=16)
    cond = pixelaux.GatedPixelCNN(**base, cond_channels=4)
    est = {name: resources.estimate_sampling_bytes(m, 10, None, "cached", "torch")
           for name, m in (("plain", plain), ("tokens", tokens), ("cond", cond))}
    # tokens: the padded input buffer (kh + 16 rows, 16 + 2 columns) has 15 more channels,
    # and there is no scaled lookup table (512 floats; the token table is the weights)
    assert est["tokens"] - est["plain"] == 10 * 15 * 4 * (2 + 16) * (16 + 2) - 4 * 512
    # cond: (h1, h2) of every block and stream, 8 + 16 floats per position (c1 has hidden
    # channels, the gate c2 twice that)
    assert est["cond"] - est["plain"] == 10 * 2 * 2 * (8 + 16) * 4 * 16 * 16
    if CPP:   # the C++ engine counts its own arenas: it computes the cond terms row by row
        cpp = {name: resources.estimate_sampling_bytes(m, 10, None, "cached", "cpp")
               for name, m in (("plain", plain), ("cond", cond))}
        assert 0 < cpp["cond"] - cpp["plain"] < (est["cond"] - est["plain"]) / 4
        pp = pixelaux.PixelCNNpp(hidden=8, blocks=1, scales=2, image_size=16)
        assert 0 < resources.estimate_sampling_bytes(pp, 3, None, "cached", "cpp") \
            < resources.estimate_sampling_bytes(pp, 4, None, "cached", "cpp")


def test_trial_states_are_built_once_per_architecture_and_size(monkeypatch):
    """``sample()`` estimates its memory on every call; the engine's trial states behind
    the estimate depend on the architecture and size only, so they are built once."""
    from pixelaux import engines
    calls = []
    real = engines.workspace_bytes
    monkeypatch.setattr(engines, "workspace_bytes", lambda *a: calls.append(1) or real(*a))
    m = pixelaux.GatedPixelCNN(hidden=6, blocks=1, nr_mix=2, image_size=8)
    first = resources.estimate_sampling_bytes(m, 3, None, "cached", "torch")
    built = len(calls)
    assert built > 0
    same = pixelaux.GatedPixelCNN(hidden=6, blocks=1, nr_mix=2, image_size=8)     # other weights, same network
    assert resources.estimate_sampling_bytes(same, 3, None, "cached", "torch") == first and len(calls) == built
    assert resources.estimate_sampling_bytes(m, 5, None, "cached", "torch") > first and len(calls) == built
    resources.estimate_sampling_bytes(m, 3, (16, 8), "cached", "torch")                # another size: new trials
    wider = pixelaux.GatedPixelCNN(hidden=8, blocks=1, nr_mix=2, image_size=8)         # another network: too
    assert len(calls) > built and resources.estimate_sampling_bytes(wider, 3, None, "cached", "torch") > first


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_cached_estimate_tracks_the_real_peak_memory(tmp_path, backend):
    if backend == "cpp" and not CPP:
        pytest.skip("the C++ extension is not built")
    """In a fresh process, the growth of the peak resident memory while sampling 128
    images is within 0.8x - 2x of the estimate (it adds one row's temporaries and the
    allocator's slack)."""
    script = tmp_path / "peak.py"
    script.write_text(
        "import torch, pixelaux\n"
        "from pixelaux import resources\n"
        "def status(key):\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key + ':'))\n"
        "torch.set_num_threads(1)\n"
        "m = pixelaux.GatedPixelCNN(hidden=48, blocks=4, image_size=16).eval()\n"
        f"pixelaux.sample(m, 1, progress=False, backend='{backend}')\n"
        f"est = resources.estimate_sampling_bytes(m, 128, None, 'cached', '{backend}')\n"
        "open('/proc/self/clear_refs', 'w').write('5')      # reset the peak (VmHWM) to now\n"
        "rss0 = status('VmRSS')\n"
        f"pixelaux.sample(m, 128, progress=False, backend='{backend}')\n"
        "print((status('VmHWM') - rss0) / est)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert 0.8 <= ratio <= 2.0, f"peak memory grew {ratio:.2f}x the estimate"


def test_available_memory_from_meminfo_cgroup_and_sysconf(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  9999 kB\nMemAvailable:    2048 kB\n")
    monkeypatch.setattr(resources, "_MEMINFO", str(meminfo))
    monkeypatch.setattr(resources, "_CGROUPS", ())
    assert resources.available_bytes("cpu") == 2048 * 1024
    cg = tmp_path / "cgroup"
    cg.mkdir()
    (cg / "memory.max").write_text("1500000\n")
    (cg / "memory.current").write_text("1000000\n")
    (cg / "memory.stat").write_text("anon 5\ninactive_file 100000\n")
    monkeypatch.setattr(resources, "_CGROUPS", ((str(cg), "memory.max", "memory.current", "inactive_file"),))
    assert resources.available_bytes("cpu") == 600000            # the container limit is lower
    (cg / "memory.max").write_text("max\n")                      # no limit: the host figure
    assert resources.available_bytes("cpu") == 2048 * 1024
    monkeypatch.setattr(resources, "_MEMINFO", str(tmp_path / "missing"))
    assert resources.available_bytes("cpu") > 0                  # os.sysconf fallback


# --------------------------------------------------------------------------- Ctrl-C and progress

def test_sampling_shows_progress(models, capsys):
    pixelaux.sample(models["gated"], 1, backend="torch", generator=gen(), progress=True)
    err = capsys.readouterr().err
    assert "cached[torch]" in err and "px" in err


def test_ctrl_c_while_sampling_exits_130_and_writes_nothing(files, tmp_path, monkeypatch):
    import pixelaux.engines as engines_mod

    real = engines_mod.runner

    def interrupted(*names):                # (engine, backend, stage kind)
        run = real(*names)

        def wrapper(*args, **kwargs):
            run(*args, **kwargs)            # some real work first
            raise KeyboardInterrupt
        return wrapper

    monkeypatch.setattr(engines_mod, "runner", interrupted)
    out = tmp_path / "grid.png"
    rc, stdout, stderr = cli(["sample", "--model", files["grayscale"], "--n", 2, "--no-progress",
                               "--out", out, "--out-dir", tmp_path / "each"])
    assert rc == 130
    assert stderr.strip().splitlines() == ["pixelaux sample: interrupted"]
    assert not out.exists() and list(tmp_path.rglob("*")) == []


def test_ctrl_c_while_writing_a_png_leaves_no_partial_file(files, tmp_path, monkeypatch):
    real_save = Image.Image.save
    calls = {"n": 0}

    def save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:                              # the second file: half written, then Ctrl-C
            Path(fp).write_bytes(b"\x89PNG partial")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out_dir = tmp_path / "each"
    rc, _, stderr = cli(["sample", "--model", files["gated"], "--n", 3, "--no-progress", "--out-dir", out_dir])
    assert rc == 130 and len(stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["sample_0000.png"]   # complete, the rest absent
    with Image.open(out_dir / "sample_0000.png") as im:
        im.load()


# --------------------------------------------------------------------------- Ctrl-C inside a native op
# The C++ ops run in a worker thread (engines.progress.run_native) while the main thread
# polls their row counter. An interrupt must not let the main thread go on before the op
# has returned: on CPython < 3.13 an interrupted Thread.join marked the running worker as
# stopped (cpython#90882), run_native re-raised at once, and a process that then exited
# ended the worker inside the op (std::terminate, SIGABRT, exit 134); in the API the op
# went on running.

BUSY_N = 16       # images of the busy model: rows of ~10-20 ms in one thread, the sample ~1 s


@pytest.fixture(scope="module")
def busy():
    """A grayscale model (two stages, two native ops) big enough that an op is caught in
    the middle of a row, and its images for a fixed seed."""
    if not CPP:
        pytest.skip("the C++ extension is not built")
    torch.manual_seed(0)
    m = pixelaux.GrayscalePixelCNN(hidden=64, blocks=4, image_size=32).eval()
    return m, pixelaux.sample(m, BUSY_N, generator=gen(7), progress=False, backend="cpp")


def _until(condition, what, timeout=20.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.0005)


def _spy_native_ops(monkeypatch, on_op=None):
    """Wraps the C++ engine's ops: ``ops`` gets a dict per op call (``running``; at its end
    the counter's ``rows`` and ``stop``). ``on_op(k, counter)`` (op ``k``, from 1) may
    return a thread, joined before the op counts as ended. ``inside[0]``: the main thread
    is inside ``run_native``."""
    from pixelaux.engines import cached_cpp
    real = cached_cpp.run_native
    ops, inside = [], [False]

    def run_native(call, **kw):
        def spied(counter):
            op = {"running": True}
            ops.append(op)
            helper = on_op(len(ops), counter) if on_op else None
            try:
                return call(counter)
            finally:
                if helper is not None:
                    helper.join(30)
                op.update(running=False, rows=int(counter[0]), stop=int(counter[1]))
        inside[0] = True
        try:
            return real(spied, **kw)
        finally:
            inside[0] = False

    monkeypatch.setattr(cached_cpp, "run_native", run_native)
    return ops, inside


@pytest.mark.parametrize("stage", [1, 2])
def test_ctrl_c_in_a_native_op_stops_it_before_raising_and_sampling_again_works(busy, monkeypatch, stage):
    """Two SIGINTs to the main thread while stage ``stage`` of a grayscale model runs in
    C++: the first once the op has finished a row, the second once the main thread asked
    it to stop (while it waits for the op). ``pixelaux.sample`` raises one
    ``KeyboardInterrupt``, after the op has returned, stopped within a row; the same call
    afterwards, in this process, gives the same images as before."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set in the main thread")
    m, ref = busy
    main = threading.main_thread().ident
    caught, stray, helpers = [], [], []

    def on_op(k, counter):
        if k != stage:
            return None

        seen = counter.numpy()      # (the op's counter, read without torch)

        def interrupt():
            _until(lambda: seen[0] > 0, "a row of the op")
            signal.pthread_kill(main, signal.SIGINT)
            _until(lambda: seen[1] != 0, "the stop flag")
            signal.pthread_kill(main, signal.SIGINT)        # Ctrl-C again while it waits

        t = threading.Thread(target=interrupt, daemon=True)
        t.start()
        helpers.append(t)
        return t

    ops, inside = _spy_native_ops(monkeypatch, on_op)

    def on_sigint(signum, frame):   # a late signal must not interrupt pytest itself
        if not inside[0]:
            stray.append(signum)
            return
        caught.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            pixelaux.sample(m, BUSY_N, generator=gen(7), progress=False, backend="cpp")
        running = [op["running"] for op in ops]     # right when the interrupt reached the caller
    finally:
        for t in helpers:       # (both signals sent and handled before the handler goes)
            t.join(30)
        signal.signal(signal.SIGINT, previous)
    assert len(ops) == stage and running == [False] * stage, "the op was still running"
    assert ops[-1]["stop"] == 1 and 0 < ops[-1]["rows"] < BUSY_N * 32       # stopped early
    notes = " ".join(getattr(e.value, "__notes__", []))
    assert sys.version_info < (3, 11) or "stopped after" in notes
    assert caught == [signal.SIGINT] * 2 and not stray  # the second one came during the wait
    again = pixelaux.sample(m, BUSY_N, generator=gen(7), progress=False, backend="cpp")
    assert torch.equal(again, ref)


def test_interrupt_while_the_worker_starts_runs_no_op(busy, monkeypatch):
    """A ``KeyboardInterrupt`` that ends ``Thread.start()`` of the op's worker (after the
    thread started): the op does not run on behind the caller's back."""
    m, ref = busy
    ops, _ = _spy_native_ops(monkeypatch)
    real_start = threading.Thread.start
    workers = []

    def start(self):
        real_start(self)
        if self.name == "pixelaux-native-sample":
            workers.append(self)
            raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(KeyboardInterrupt):
        pixelaux.sample(m, BUSY_N, generator=gen(7), progress=False, backend="cpp")
    monkeypatch.setattr(threading.Thread, "start", real_start)
    for w in workers:
        w.join(30)
    assert len(workers) == 1 and not workers[0].is_alive()
    assert not workers[0].daemon      # the interpreter's exit waits for it (it frees the op's inputs)
    assert ops == [] or all(op["stop"] == 1 and op["rows"] < BUSY_N * 32 for op in ops), ops
    assert torch.equal(pixelaux.sample(m, BUSY_N, generator=gen(7), progress=False, backend="cpp"), ref)


# `python -m pixelaux ...` with hooks: it prints where sampling is on stdout, "stage K
# start" as the main thread starts native op K, "stage K rows" from a watcher thread once
# the op has finished a row (the main thread is then waiting for it, as it is nearly all
# the time); and it says on stderr, as it exits, if run_native ever returned or raised
# while its op was still running.
_HOOKED_CLI = r"""
import atexit, contextlib, runpy, sys, threading, time
from pixelaux.engines import cached_cpp, progress
stage, running, early = [0], [0], []

@contextlib.contextmanager
def bar(total, enabled, desc):
    stage[0] += 1
    print(f"stage {stage[0]} start", flush=True)
    yield progress._NoBar()

def watch(k, rows):
    while rows[0] == 0 and running[0]:
        time.sleep(0.0005)
    if rows[0]:
        print(f"stage {k} rows", flush=True)

real = cached_cpp.run_native

def run_native(call, **kw):
    def counted(counter):
        running[0] += 1
        threading.Thread(target=watch, args=(stage[0], counter.numpy())).start()
        try:
            return call(counter)
        finally:
            running[0] -= 1
    try:
        return real(counted, **kw)
    finally:
        if running[0]:
            early.append(1)

progress.pixel_progress = bar
cached_cpp.run_native = run_native
atexit.register(lambda: early and print("run_native ended before its op", file=sys.stderr))
sys.argv[0] = "pixelaux"
runpy.run_module("pixelaux", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow                     # fresh processes, ~3 s each
@pytest.mark.skipif(not CPP, reason="the C++ extension is not built")
@pytest.mark.parametrize("n, when", [(2000, "stage 1 start"), (64, "stage 1 rows"), (64, "stage 2 rows")])
def test_sigint_to_the_cli_during_the_default_sampler_exits_130(tmp_path, n, when):
    """SIGINT to ``pixelaux sample`` (default model: a gray stage, then colour, both
    native ops) as a stage starts and while it samples rows: exit 130, one line, no
    ``terminate called`` (SIGABRT, 134), no op outliving the call that ran it, no file."""
    out = tmp_path / "x.png"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", _HOOKED_CLI, "sample", "-n", str(n), "--no-progress",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in p.stdout:
            if line.strip() == when:
                p.send_signal(signal.SIGINT)
                break
        _, stderr = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["pixelaux sample: interrupted"]
    assert "terminate" not in stderr and not out.exists()
