"""The Triton backend of the cached engine (DESIGN.md sections 2 and 5).

Runs the kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py`` before the kernels are imported) on tiny shapes: it is slow, so
every model here has a handful of hidden channels and every image a dozen pixels.

* kernel level: each kernel against the PyTorch reference beside it, on random
  buffer states (``row_step``, ``pixel_step``, the row counter, the jit math);
* engine level: teacher forcing equals the full forward pass, and the same
  uniforms give the same images as the naive engine, over categorical / logistic,
  1 / 3 channels, conditioning, kernel 1 / 3 / 5, 0 blocks, batch 1 and 3, odd
  sizes, known pixels and temperature;
* the errors when it cannot run (triton missing, CPU tensors without the
  interpreter, a CUDA device without CUDA).
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install -e .[test] installs it)")

from helpers import param_error, random_cond, random_gated, random_images  # noqa: E402
from pixelaux import engines  # noqa: E402
from pixelaux.engines import cached_triton, naive  # noqa: E402

K = cached_triton.load_kernels()
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from pixelaux.kernels import _jitmath as jm  # noqa: E402

if not K.interpreted() and not torch.cuda.is_available():  # pragma: no cover
    pytest.skip("the Triton kernels were imported without TRITON_INTERPRET=1 and there is no GPU",
                allow_module_level=True)

DEVICE = "cpu" if K.interpreted() else "cuda"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _model(seed=0, **cfg):
    return random_gated(seed=seed, **cfg).to(DEVICE)


# -- kernel level -----------------------------------------------------------------------

KERNEL_CONFIGS = [
    dict(channels=3, bits=8, hidden=5, blocks=2, kernel_size=3, nr_mix=3, dist="logistic", cond_channels=2),
    dict(channels=1, bits=4, hidden=4, blocks=1, kernel_size=5, dist="categorical"),
    dict(channels=2, bits=5, hidden=3, blocks=1, kernel_size=1, nr_mix=1, dist="logistic"),
    dict(channels=1, bits=3, hidden=4, blocks=0, kernel_size=3, dist="categorical"),
    dict(channels=3, bits=3, hidden=2, blocks=1, kernel_size=3, dist="categorical"),
]


def _random_buffers(cfg, b, h, w, row, seed, known=False, params=True, temperature=1.0, head_scale=1.0):
    """Buffers of a random model whose state (image, rings, per-row terms) is random,
    as in the middle of a run, with the row counter at ``row``."""
    model = _model(seed, **cfg)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
    g = _gen(seed + 100)
    x = random_images(model, b, h, w, seed=seed).to(DEVICE)
    cond = random_cond(model, b, h, w)
    cond = None if cond is None else cond.to(DEVICE)
    kn = (torch.rand(b, h, w, generator=g) < 0.5).to(DEVICE) if known else None
    u = torch.rand(b, h, w, model.dist.num_uniforms, generator=g)
    buf = K.CachedBuffers(model, x, kn, cond, u, temperature, return_params=params)
    for name in ("u_cur", "u_win", "ul_win", "ul_row0", "ul_rowbias"):
        t = getattr(buf, name)
        t.copy_(torch.randn(t.shape, generator=g).to(DEVICE))
    buf.row.fill_(row)
    return buf


def _assert_same_state(got, ref):
    for name, t in ref.state().items():
        if name in ("x", "row"):
            assert torch.equal(getattr(got, name), t), name
        else:
            torch.testing.assert_close(getattr(got, name), t, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("cfg", KERNEL_CONFIGS)
@pytest.mark.parametrize("row", [0, 2])
def test_row_step_kernel_matches_reference(cfg, row):
    buf = _random_buffers(cfg, 2, 4, 5, row, seed=1)
    ref = buf.clone()
    K.launch_row_step(buf)
    K.row_step_reference(ref)
    _assert_same_state(buf, ref)


@pytest.mark.parametrize("cfg", KERNEL_CONFIGS)
@pytest.mark.parametrize("row,col,known,temperature", [(0, 0, False, 1.0), (2, 3, True, 0.7)])
def test_pixel_step_kernel_matches_reference(cfg, row, col, known, temperature):
    buf = _random_buffers(cfg, 3, 3, 5, row, seed=2, known=known, temperature=temperature)
    ref = buf.clone()
    K.launch_pixel_step(buf, col)
    params = K.pixel_step_reference(ref, col)
    _assert_same_state(buf, ref)
    assert param_error(buf.params[:, :, row, col], params) <= 1e-5
    untouched = torch.ones_like(buf.x, dtype=torch.bool)
    untouched[:, :, row, col] = False
    assert torch.equal(buf.x[untouched], ref.x[untouched])


def test_pixel_step_many_levels_in_chunks():
    """9-bit categorical: 512 levels, read in two chunks of 256 by the sampler."""
    cfg = dict(channels=1, bits=9, hidden=3, blocks=1, kernel_size=3, dist="categorical")
    for seed in range(3):
        # flat-ish logits: samples spread over both chunks
        buf = _random_buffers(cfg, 2, 2, 3, 1, seed=seed, head_scale=0.1)
        ref = buf.clone()
        K.launch_pixel_step(buf, 2)
        K.pixel_step_reference(ref, 2)
        _assert_same_state(buf, ref)


def test_advance_row_kernel():
    buf = _random_buffers(KERNEL_CONFIGS[3], 1, 2, 2, 3, seed=0)
    K.launch_advance_row(buf)
    K.launch_advance_row(buf)
    assert int(buf.row[0]) == 5


@triton.jit
def _math_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    tl.store(out_ptr + offs, jm.round_half_even(x), mask=m)
    tl.store(out_ptr + n + offs, jm.tanh(x), mask=m)
    u = tl.minimum(tl.maximum(tl.abs(x) * 0.1, 1e-5), 1.0 - 1e-5)
    tl.store(out_ptr + 2 * n + offs, jm.log1p(-u), mask=m)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # inf - inf in numpy
def test_jit_math_matches_torch():
    """The sampling helpers: round half to even exactly, tanh and log1p to float32."""
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 2.5000002, 3.0, -7.25, 1e-6, -1e-6,
                      254.5, 253.5, 1e9, 30.0, -30.0, float("inf"), float("-inf"), 0.0, 9.99999, 7.3])
    x = torch.cat([x, torch.randn(42, generator=_gen(0)) * 4]).to(DEVICE)
    n = x.numel()
    out = torch.empty(3 * n, device=DEVICE)
    _math_kernel[(1,)](x, out, n, BLOCK=64)
    assert torch.equal(out[:n], torch.round(x))
    torch.testing.assert_close(out[n:2 * n], torch.tanh(x), rtol=0, atol=2e-7)
    u = (x.abs() * 0.1).clamp(1e-5, 1 - 1e-5)
    torch.testing.assert_close(out[2 * n:], torch.log1p(-u), rtol=1e-6, atol=0)


# -- engine level -----------------------------------------------------------------------

ENGINE_CASES = [
    # (config, size, batch)
    (dict(channels=1, bits=4, hidden=6, blocks=1, kernel_size=3, dist="categorical"), (3, 4), 3),
    (dict(channels=3, bits=8, hidden=5, blocks=2, kernel_size=3, nr_mix=3, dist="logistic"), (3, 4), 1),
    (dict(channels=1, bits=8, hidden=4, blocks=1, kernel_size=3, nr_mix=2, dist="logistic",
          cond_channels=2), (5, 3), 1),
    (dict(channels=3, bits=5, hidden=4, blocks=0, kernel_size=1, nr_mix=2, dist="logistic"), (3, 4), 3),
    (dict(channels=1, bits=4, hidden=4, blocks=1, kernel_size=5, dist="categorical"), (5, 3), 1),
]
IDS = ["cat1-k3", "log3-b2", "log1-cond", "log3-k1-b0", "cat1-k5"]


@pytest.mark.parametrize("cfg,size,batch", ENGINE_CASES, ids=IDS)
def test_teacher_forcing_matches_full_forward(cfg, size, batch):
    model = _model(2, **cfg)
    x = random_images(model, batch, *size, seed=5).to(DEVICE)
    cond = random_cond(model, batch, *size)
    cond = None if cond is None else cond.to(DEVICE)
    known = torch.ones(batch, *size, dtype=torch.bool, device=DEVICE)
    u = torch.rand(batch, *size, model.dist.num_uniforms)
    x_before = x.clone()
    out, params = cached_triton.run(model, x, known, cond, u, 1.0, return_params=True)
    assert torch.equal(x, x_before)             # the input is not modified
    assert out.dtype == torch.long and torch.equal(out, x)
    assert params.shape == (batch, model.dist.num_params, *size)
    assert param_error(params, model(x, cond)) <= 1e-4


@pytest.mark.parametrize("cfg,size,batch", ENGINE_CASES, ids=IDS)
def test_same_uniforms_same_images_as_naive(cfg, size, batch):
    model = _model(4, **cfg)
    h, w = size
    cond = random_cond(model, batch, h, w)
    cond = None if cond is None else cond.to(DEVICE)
    u = torch.rand(batch, h, w, model.dist.num_uniforms, generator=_gen(7))
    x0 = torch.zeros(batch, model.channels, h, w, dtype=torch.long, device=DEVICE)
    ref = naive.run(model, x0, None, cond, u, 1.0)
    got = cached_triton.run(model, x0, None, cond, u, 1.0)
    mismatch = (ref != got).float().mean().item()
    assert mismatch <= 1e-3, f"{mismatch:.2%} of pixels differ"
    assert ref.float().std() > 0   # samples are not constant


@pytest.mark.parametrize("cfg,size,batch", [
    (dict(channels=3, bits=8, hidden=3, blocks=1, kernel_size=7, nr_mix=2), (3, 2), 1),
    (dict(channels=1, bits=4, hidden=3, blocks=1, dist="categorical"), (1, 4), 2),
    (dict(channels=1, bits=1, hidden=3, blocks=2, dist="categorical"), (4, 1), 1),
    (dict(channels=4, bits=8, hidden=17, blocks=1, nr_mix=1, cond_channels=1), (2, 2), 1),
], ids=["k7", "one-row", "one-column-1bit", "4ch-hid17-mix1-cond"])
def test_awkward_shapes(cfg, size, batch):
    """Kernel 7, a single row / column, 1 bit, 4 channels, hidden 17 (padded to 32),
    one mixture component: teacher forcing and the naive engine's images."""
    model = _model(1, **cfg)
    x = random_images(model, batch, *size, seed=2).to(DEVICE)
    cond = random_cond(model, batch, *size)
    cond = None if cond is None else cond.to(DEVICE)
    u = torch.rand(batch, *size, model.dist.num_uniforms, generator=_gen(8))
    known = torch.ones(batch, *size, dtype=torch.bool, device=DEVICE)
    _, params = cached_triton.run(model, x, known, cond, u, 1.0, return_params=True)
    assert param_error(params, model(x, cond)) <= 1e-4
    x0 = torch.zeros_like(x)
    assert torch.equal(cached_triton.run(model, x0, None, cond, u, 1.3), naive.run(model, x0, None, cond, u, 1.3))


@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_completion_keeps_known_pixels_and_matches_naive(temperature):
    model = _model(6, channels=3, bits=8, hidden=4, blocks=1, nr_mix=3)
    h, w = 3, 3
    x = random_images(model, 2, h, w, seed=9).to(DEVICE)
    known = (torch.rand(2, h, w, generator=_gen(3)) < 0.5).to(DEVICE)
    u = torch.rand(2, h, w, model.dist.num_uniforms, generator=_gen(4))
    ref = naive.run(model, x, known, None, u, temperature)
    got = cached_triton.run(model, x, known, None, u, temperature)
    assert torch.equal(got, ref)
    assert torch.equal(got.permute(0, 2, 3, 1)[known], x.permute(0, 2, 3, 1)[known])


def test_categorical_temperature_matches_naive():
    model = _model(8, channels=1, bits=3, hidden=4, blocks=1, dist="categorical")
    u = torch.rand(1, 3, 4, 1, generator=_gen(5))
    x0 = torch.zeros(1, 1, 3, 4, dtype=torch.long, device=DEVICE)
    got = cached_triton.run(model, x0, None, None, u, 0.5)
    assert torch.equal(got, naive.run(model, x0, None, None, u, 0.5))
    assert not torch.equal(got, naive.run(model, x0, None, None, u, 1.0))   # temperature matters


def test_row_replay_sequencing():
    """The CUDA path's structure with a stand-in for graph capture: capturing records
    the row's launches without running them, each replay runs them once. Same
    images as the plain loop (the row counter advances on the device)."""
    model = _model(3, channels=1, bits=3, hidden=3, blocks=1, dist="categorical")
    u = torch.rand(1, 4, 3, 1, generator=_gen(6))
    x0 = torch.zeros(1, 1, 4, 3, dtype=torch.long, device=DEVICE)
    captured = []

    def fake_capture(fn):
        captured.append(fn)
        return fn

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    buf = K.CachedBuffers(model, x0, None, None, u, 1.0)
    cached_triton._sample_rows(K, buf, bar, capture=fake_capture)
    assert len(captured) == 1 and bar.n == 4 * 3 and int(buf.row[0]) == 4
    assert torch.equal(buf.x, cached_triton.run(model, x0, None, None, u, 1.0))


def test_resolve_picks_triton_when_asked():
    assert engines.resolve("cached", "triton", DEVICE) == ("cached", "triton")
    assert engines.runner("cached", "triton") is cached_triton.run


# -- errors -----------------------------------------------------------------------------

def _tiny():
    model = _model(0, channels=1, bits=2, hidden=2, blocks=0, dist="categorical")
    x = torch.zeros(1, 1, 2, 2, dtype=torch.long, device=DEVICE)
    u = torch.rand(1, 2, 2, 1)
    return model, x, u


def test_status_reports_interpreter_or_cuda():
    ok, why = cached_triton.status(DEVICE)
    assert ok, why


def test_missing_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)         # `import triton` now fails
    monkeypatch.setitem(sys.modules, "triton.language", None)
    ok, why = cached_triton.status("cpu")
    assert not ok and why == "triton is not installed (pip install triton)"
    model, x, u = _tiny()
    with pytest.raises(RuntimeError, match=r"backend='triton' is not available: triton is not installed"):
        cached_triton.run(model, x, None, None, u, 1.0)
    with pytest.raises(RuntimeError, match="triton is not installed"):
        engines.resolve("cached", "triton", "cpu")


def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cached_triton, "_interpreter_enabled", lambda: False)
    ok, why = cached_triton.status("cpu")
    assert not ok and "needs a CUDA device or TRITON_INTERPRET=1" in why
    model, x, u = _tiny()
    with pytest.raises(RuntimeError, match="needs a CUDA device or TRITON_INTERPRET=1"):
        cached_triton.run(model.cpu(), x.cpu(), None, None, u, 1.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_reported():
    ok, why = cached_triton.status("cuda")
    assert not ok and "needs a CUDA device" in why


def test_bad_temperature_is_rejected():
    model, x, u = _tiny()
    with pytest.raises(ValueError, match="temperature"):
        cached_triton.run(model, x, None, None, u, 0.0)


def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter does not compile the kernels: compile every variant the
    launchers use for sm_90 (Triton's frontend, LLVM and the ptxas shipped with
    triton; no GPU or driver needed), in a process without TRITON_INTERPRET."""
    import triton.backends
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton has no NVIDIA backend")
    code = ("from pixelaux.engines.cached_triton import load_kernels\n"
            "load_kernels()\n"
            "from pixelaux.kernels.compile_check import compile_all\n"
            "r = compile_all([dict(channels=3, bits=8, hidden=6, blocks=1, nr_mix=3, cond_channels=2),\n"
            "                 dict(channels=1, bits=4, hidden=5, blocks=0, kernel_size=5, dist='categorical')])\n"
            "print(len(r), 'variants')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "variants" in out.stdout


def test_package_imports_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import pixelaux\n"
            "from pixelaux.engines import cached_triton\n"
            "print(cached_triton.status('cpu'))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert out.returncode == 0, out.stderr
    assert "triton is not installed" in out.stdout
