"""Test helpers: models with random (not near-zero) weights and random inputs."""

import contextlib
import copy
import json
import os

import pytest
import torch

import pixelaux
from pixelaux.resources import num_threads  # noqa: F401 (for the tests)


def randomize(model, std=0.2, seed=0):
    """Re-draw every parameter from N(0, std^2) so no path is near zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def random_gated(seed=0, std=0.2, **cfg):
    torch.manual_seed(seed)
    return randomize(pixelaux.GatedPixelCNN(**cfg), std=std, seed=seed)


def random_images(model, n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2 ** model.bits, (n, model.channels, h, w), generator=g)


def random_cond(model, n, h, w, seed=0):
    if not model.cond_channels:
        return None
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(n, model.cond_channels, h, w, generator=g)


def param_error(params, ref):
    """Max abs error relative to the parameters' scale."""
    return ((params - ref).abs().max() / ref.abs().max().clamp(min=1e-6)).item()


# The teacher-forcing gate: an engine's parameters against the float64 forward of the same
# model and inputs, allowed FORWARD_FACTOR times the error of PyTorch's own float32 forward
# (the larger of the batch's and of each image's alone: one float32 result can be close by
# luck at the most sensitive position) and never less than FORWARD_FLOOR (~17 float32
# ulps of the scale, for models where torch is ~exact). Both engine and torch compute in
# float32, so their errors are two draws of the same size: over 16 seeds of every test
# model and kernel family the engines used at most 0.6 of this gate (factor 2 with one
# torch forward failed ~1% of the draws). The fixed 1e-4 it replaces was at once too
# loose for well-scaled models (errors ~3e-7) and too tight for chaotic ones (random
# N(0, 0.3^2) weights at width 20: parameters ~2e4, torch's own error ~6e-5 of them).
FORWARD_FACTOR = 4.0
FORWARD_FLOOR = 1e-6


def _cond_map(cond, f):
    """``f`` applied to a cond: ``None``, one tensor, or a tuple of per-scale maps."""
    if cond is None:
        return None
    return tuple(f(c) for c in cond) if isinstance(cond, (tuple, list)) else f(cond)


def forward_errors(params, model, x, cond=None):
    """``(engine, torch)``: max abs error of ``params`` ``(B, P, H, W)`` and of the model's
    own float32 forward (the larger of the batched one's and the per-image ones'), each
    against the float64 forward of a copy of the model on the same inputs, relative to
    the parameter scale (the float64 result's max abs value)."""
    m64 = copy.deepcopy(model).double()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:        # torch's own result in full float32 (on a GPU its convs may default to TF32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with torch.no_grad():
            ref = m64(x, _cond_map(cond, lambda c: c.double()))
            own = [model(x, cond)]
            if x.shape[0] > 1:
                own.append(torch.cat([model(x[k:k + 1], _cond_map(cond, lambda c: c[k:k + 1]))
                                      for k in range(x.shape[0])]))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    scale = ref.abs().max().clamp(min=1e-30)
    err = lambda p: ((p.detach().to(ref) - ref).abs().max() / scale).item()   # noqa: E731
    return err(params), max(err(p) for p in own)


@contextlib.contextmanager
def tf32_on():
    """TF32 allowed for CUDA matmuls and cuDNN convolutions (cuDNN's default on a GPU),
    restored afterwards: a test that code turns it off where it must sets it on first
    (on the CPU the flags are only read, never used)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def assert_matches_forward(params, model, x, cond=None, name="", factor=FORWARD_FACTOR, floor=FORWARD_FLOOR):
    """Teacher forcing: ``params`` (an engine's, every pixel of ``x`` known) are the
    forward pass's to within ``max(factor * torch's own float32 error, floor)``, both
    measured against the float64 forward (``forward_errors``). Returns the two errors."""
    err, own = forward_errors(params, model, x, cond)
    if os.environ.get("PIXELAUX_TEST_GATE_LOG"):      # a record of the margins, e.g. per kernel family
        with open(os.environ["PIXELAUX_TEST_GATE_LOG"], "a") as f:
            f.write(json.dumps(dict(test=os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], name=name,
                                    err=err, own=own, used=err / max(factor * own, floor))) + "\n")
    tol = max(factor * own, floor)
    assert err <= tol, (f"{name}: params off the float64 forward by {err:.2e} of their scale, more than "
                        f"{tol:.2e} (max({factor:g} x torch's own float32 error {own:.2e}, {floor:.0e}))")
    return err, own


# Gated configurations with odd options: both distributions, 1 and 3 channels, kernel
# 1/3/5, 0..3 blocks, with and without conditioning (the gate test of test_engines.py;
# every engine's conformance grid is test_conformance.py's CASES).
ENGINE_CONFIGS = [
    dict(channels=3, bits=8, hidden=12, blocks=2, nr_mix=3, dist="logistic"),
    dict(channels=1, bits=4, hidden=8, blocks=3, kernel_size=5, dist="categorical"),
    dict(channels=1, bits=8, hidden=8, blocks=1, nr_mix=2, dist="logistic", cond_channels=3),
    dict(channels=3, bits=5, hidden=6, blocks=0, kernel_size=1, nr_mix=2, dist="logistic"),
    dict(channels=3, bits=8, hidden=10, blocks=2, kernel_size=3, nr_mix=4, cond_channels=2),
]


def single_thread():
    """One intra-op thread, restored afterwards: tiny models gain nothing from threads,
    and on a busy 2-core machine OpenMP spin-waits make them ~10-20x slower."""
    return num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """``single_thread`` for a whole test module."""
    with single_thread():
        yield


def perturb_each_pixel(x, bits):
    """Batch of ``1 + H*W`` images: ``x`` itself, then ``x`` with pixel ``n`` (raster order,
    all channels) moved to a different random value."""
    _, c, h, w = x.shape
    xs = x.repeat(1 + h * w, 1, 1, 1)
    for n in range(h * w):
        i, j = divmod(n, w)
        xs[1 + n, :, i, j] = (x[0, :, i, j] + torch.randint(1, 2 ** bits, (c,))) % 2 ** bits
    return xs


def assert_causal(net, x, cond, bits):
    """Params at (i, j) do not move when a pixel at/after (i, j) changes; they do move when
    the pixel just left of or just above (i, j) changes."""
    _, _, h, w = x.shape
    xs = perturb_each_pixel(x, bits)
    conds = None if cond is None else cond.expand(xs.shape[0], -1, -1, -1)
    with torch.no_grad():
        out = net(xs, conds)
    diff = (out[1:] - out[:1]).abs().amax(dim=1).reshape(h * w, h * w)  # [perturbed n, position q]
    scale = out.abs().max()
    for n in range(h * w):
        assert diff[n, : n + 1].max() <= 1e-5 * scale, f"pixel {divmod(n, w)} leaks into earlier/own params"
        i, j = divmod(n, w)
        if j + 1 < w:
            assert diff[n, n + 1] > 1e-4 * scale, f"pixel {(i, j)} does not reach {(i, j + 1)}"
        if i + 1 < h:
            assert diff[n, n + w] > 1e-4 * scale, f"pixel {(i, j)} does not reach {(i + 1, j)}"


def random_pp(seed=0, std=0.2, **cfg):
    """A ``PixelCNNpp`` with random weights (dropout off unless given)."""
    torch.manual_seed(seed)
    cfg.setdefault("dropout", 0.0)
    return randomize(pixelaux.PixelCNNpp(**cfg), std=std, seed=seed)


def assert_same_images(model, cond, u, temperature, ref, got, params_got, name="", tol=1e-4, window=None):
    """The exactness contract's second half, for every backend: ``got`` (a cached backend)
    equals ``ref`` (the naive engine) on the same uniforms ``u``, except where a float tie
    flips a pixel; then the rest of that image may follow. So every image that differs
    must first differ at a tie: both parameter sets agree there to ``tol`` of their
    scale and each engine's pixel is what its own parameters give. ``params_got``:
    the backend's parameters at every position ``(B, P, H, W)`` (``return_params``).
    ``window``: the ``pixelaux.consistency.Window`` both sampled with (each engine's pixel
    then judged within the range its own earlier pixels leave).
    Returns a report line per differing image (empty when all are equal)."""
    lines = []
    diff = (ref != got).any(1)
    for k in range(ref.shape[0]):
        pos = diff[k].flatten().nonzero()
        if len(pos) == 0:
            continue
        i, j = divmod(pos[0].item(), ref.shape[3])
        with torch.no_grad(), single_thread():   # in the naive engine's own batch: a forward
            pa = model(ref, cond)[k:k + 1, :, i, j]  # pass is not bitwise batch-size invariant
        pb = params_got[k:k + 1, :, i, j].to(pa.device)
        err = ((pa - pb).abs().max() / pa.abs().max().clamp(min=1e-30)).item()
        bounds = (lambda img: None) if window is None else \
            (lambda img: window[k:k + 1].bounds_at(img[k:k + 1].cpu(), i, j))  # noqa: E731
        own_a = model.dist.sample_flat(pa, u[k:k + 1, i, j], temperature, bounds(ref))
        own_b = model.dist.sample_flat(pb, u[k:k + 1, i, j].to(pb.device), temperature, bounds(got))
        assert err <= tol, f"{name}: image {k} differs at ({i}, {j}) with params off by {err:.2e}"
        assert torch.equal(own_a[0], ref[k, :, i, j]) and torch.equal(own_b[0].cpu(), got[k, :, i, j].cpu()), \
            f"{name}: image {k} at ({i}, {j}): a pixel is not what its own parameters give"
        lines.append(f"{name}: image {k} first differs at ({i}, {j}): naive {ref[k, :, i, j].tolist()} "
                     f"backend {got[k, :, i, j].tolist()} (params within {err:.1e}: a float tie), "
                     f"{int(diff[k].sum())} pixels differ after it")
    return lines


def spy_tf32_in_cond_terms(monkeypatch) -> list:
    """Record the TF32 flags (``cached_triton.tf32_flags()``) at every ``cond_terms`` call
    of a gated block (the engines' prefill): the list they are appended to."""
    from pixelaux.engines import cached_triton
    from pixelaux.layers import GatedResidualBlock
    seen = []
    cond_terms = GatedResidualBlock.cond_terms

    def spy(self, cond):
        seen.append(cached_triton.tf32_flags())
        return cond_terms(self, cond)

    monkeypatch.setattr(GatedResidualBlock, "cond_terms", spy)
    return seen


class RowCounter:
    """A stand-in progress bar for ``cached_triton.sample_rows``: counts what it reports."""

    def __init__(self):
        self.n = 0

    def update(self, k):
        self.n += k


class StandInCapture:
    """A stand-in for CUDA graph capture: records each function it is given and returns it,
    so a "replay" runs the launches again (the CUDA path's structure, on CPU)."""

    def __init__(self):
        self.captured = []

    def __call__(self, fn):
        self.captured.append(fn)
        return fn


def run_without_interpreter(code: str):
    """``python -c code`` from the repository root without ``TRITON_INTERPRET`` (the Triton
    kernels compile for real; fp fusion off unless set), its output captured."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "0")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)


def triton_kernels_or_skip():
    """``(kernels, device)`` for a Triton test module: ``pixelaux.kernels`` and where its
    kernels run (``"cpu"`` under ``TRITON_INTERPRET=1``, else ``"cuda"``); skips the whole
    module when triton is missing or the kernels can run nowhere here."""
    pytest.importorskip("triton", reason="triton is not installed (pip install -e .[test] installs it)")
    from pixelaux.engines import cached_triton
    kernels = cached_triton.load_kernels()
    if not kernels.interpreted() and not torch.cuda.is_available():  # pragma: no cover
        pytest.skip("the Triton kernels were imported without TRITON_INTERPRET=1 and there is no GPU",
                    allow_module_level=True)
    return kernels, "cpu" if kernels.interpreted() else "cuda"
