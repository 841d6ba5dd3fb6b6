"""The Triton engine compiled on a GPU (``pytest -m gpu``; docs/design.md section 5).

Runs only with CUDA and ``TRITON_INTERPRET=0`` (``conftest.py`` turns the
interpreter on unless the variable is set): the exactness contract at the shapes
the benchmarks time, compiled kernels, CUDA-graph capture and replay included.
CI is CPU-only and skips every test here with the reason. ``benchmarks/gpu_check.py``
runs this file as its last step.
"""
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from helpers import assert_matches_forward  # noqa: E402
import pixelaux  # noqa: E402
from pixelaux.engines import cached_torch, cached_triton, naive  # noqa: E402

K = cached_triton.load_kernels()
_WHY = None
if not torch.cuda.is_available():
    _WHY = "needs a CUDA GPU (CI is CPU-only)"
elif K.interpreted():
    _WHY = "the kernels are interpreted: run with TRITON_INTERPRET=0 to test them compiled"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]

DEV = "cuda"


@pytest.fixture(autouse=True)
def _true_fp32():
    """Every reference in true fp32: TF32 is on by default for cuDNN convolutions."""
    with cached_triton.true_fp32():
        yield


def _own_init(seed=0, **cfg):
    """A ``GatedPixelCNN`` with the model's own random init from ``seed`` (as
    ``benchmarks/bench_triton_gpu.build``): well scaled, unlike N(0, 0.2^2) weights,
    on which bench-32's float32 forward is 37% off its float64 one."""
    torch.manual_seed(seed)
    return pixelaux.GatedPixelCNN(**cfg).eval().to(DEV)


def _bench32(seed=0):
    return _own_init(seed, channels=3, bits=8, hidden=64, blocks=8, dist="logistic", nr_mix=10)


def _check(model, u, t, ref, got):
    """``ref``, ``got``: ``(images, params)`` of a reference engine and of triton."""
    ok, equal, lines = cached_triton.tie_report(model, u, t, *ref, *got)
    assert ok, f"{equal:.3%} equal: " + "; ".join(lines)


def test_teacher_forcing_bench32():
    model = _bench32()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=g).to(DEV)
    u = torch.rand(4, 32, 32, model.dist.num_uniforms, generator=g)
    known = torch.ones(4, 32, 32, dtype=torch.bool, device=DEV)
    _, params = cached_triton.run(model, x, known, None, u, 1.0, return_params=True)
    assert_matches_forward(params, model, x)


@pytest.mark.parametrize("batch,plan", [(1, ""), (1, "pixel_tile=16,row_tile=16"), (37, "")])
def test_bench32_images_match_cached_torch(batch, plan):
    model = _bench32(1)
    u = torch.rand(batch, 32, 32, model.dist.num_uniforms, generator=torch.Generator().manual_seed(batch))
    x0 = torch.zeros(batch, 3, 32, 32, dtype=torch.long, device=DEV)
    pl = K.choose_launch_plan(batch, 64, 32, override=plan)
    got = cached_triton.run(model, x0, None, None, u, 1.0, return_params=True, launch_plan=pl)
    _check(model, u, 1.0, cached_torch.run(model, x0, None, None, u, 1.0, return_params=True), got)


def test_odd_width_cond_known_vs_naive():
    model = _own_init(2, channels=1, bits=8, hidden=20, blocks=2, nr_mix=3, cond_channels=2)
    g = torch.Generator().manual_seed(3)
    b, h, w = 19, 6, 37
    cond = torch.randn(b, 2, h, w, generator=g).to(DEV)
    x = torch.randint(0, 256, (b, 1, h, w), generator=g).to(DEV)
    known = (torch.rand(b, h, w, generator=g) < 0.3).to(DEV)
    u = torch.rand(b, h, w, model.dist.num_uniforms, generator=g)
    got = cached_triton.run(model, x, known, cond, u, 0.8, return_params=True)
    _check(model, u, 0.8, naive.run(model, x, known, cond, u, 0.8, return_params=True), got)


def test_graph_replay_twice_and_eager_bitwise():
    model = _bench32(4)
    u = torch.rand(16, 32, 32, model.dist.num_uniforms, generator=torch.Generator().manual_seed(4))
    x0 = torch.zeros(16, 3, 32, 32, dtype=torch.long, device=DEV)
    cached_triton.clear_cache()
    a = cached_triton.run(model, x0, None, None, u, 1.0)          # row 0 eager, capture, replay
    b = cached_triton.run(model, x0, None, None, u, 1.0)          # replay only
    assert cached_triton.RUNS.builds >= 1 and len(cached_triton.RUNS) == 1
    old = cached_triton.USE_CUDA_GRAPHS
    cached_triton.USE_CUDA_GRAPHS = False
    try:
        c = cached_triton.run(model, x0, None, None, u, 1.0)
    finally:
        cached_triton.USE_CUDA_GRAPHS = old
    assert torch.equal(a, b) and torch.equal(a, c)
