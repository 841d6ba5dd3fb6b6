"""The Triton backend of the cached engine (docs/design.md sections 2 and 5).

Runs the kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py`` before the kernels are imported) on tiny shapes: it is slow, so
every model here has a handful of hidden channels and every image a dozen pixels.

* kernel level: each kernel against the PyTorch reference beside it, on random
  buffer states (``row_step``, ``pixel_step``, the row counter, the jit math);
* engine level: what the kernels' tiles and plans make awkward (kernel 7, one row or
  column, hidden 17, groups of 16 images, channel tiles, wide rows), the composite
  models' stages, and the tie report (teacher forcing and the naive engine's images over
  every input kind, as for every backend, are in ``test_conformance.py``);
* token inputs (``embed_dim > 0``: the input table of learned rows, read by the
  same gather as the scaled encoding) at the kernel level, and categorical sampling
  over 2**12 and 2**16 levels;
* the errors when it cannot run (triton missing, CPU tensors without the
  interpreter, a CUDA device without CUDA).
"""
import os
import subprocess
import sys

import pytest
import torch

from helpers import (assert_matches_forward, param_error, random_cond, random_gated,
                     random_images, RowCounter, run_without_interpreter, spy_tf32_in_cond_terms, StandInCapture,
                     tf32_on, triton_kernels_or_skip)

K, DEVICE = triton_kernels_or_skip()
import pixelaux  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from pixelaux import engines  # noqa: E402
from pixelaux.engines import cached_triton, naive, triton_buffers  # noqa: E402
from pixelaux.engines.triton_gated_buffers import CachedBuffers  # noqa: E402
from pixelaux.kernels import _jitmath as jm  # noqa: E402


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
    # hidden 20: padded to 32, two channel tiles of 16 in the split plan
    dict(channels=3, bits=8, hidden=20, blocks=1, kernel_size=3, nr_mix=2, dist="logistic", cond_channels=1),
    # token inputs: CIN = 3*2 + 1
    dict(channels=3, bits=9, hidden=4, blocks=1, kernel_size=3, dist="categorical", embed_dim=2),
    # wide token inputs, CIN = 71: the first layers' im2col in chunks (2 in the pixel op,
    # 14 in the row op); hidden 20: two channel tiles in the split plan
    dict(channels=1, bits=6, hidden=20, blocks=1, kernel_size=3, nr_mix=2, dist="logistic", embed_dim=70),
]


SPLIT = "pixel_tile=16,row_tile=16"        # channel tiles in both ops (the small-batch plan)


def _plan(model, b, w, override):
    return K.choose_launch_plan(b, model.hidden, w, override=override)


def _random_buffers(cfg, b, h, w, row, seed, known=False, params=True, temperature=1.0, head_scale=1.0,
                    plan=""):
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
    buf = CachedBuffers(model, x, kn, cond, u, temperature, return_params=params,
                        launch_plan=_plan(model, b, w, plan))
    for name in ("u_cur", "u_win", "ul_win", "ul_row0", "ul_row_term"):
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
@pytest.mark.parametrize("row,plan", [(0, ""), (2, ""), (2, SPLIT)], ids=["r0", "r2", "r2-split"])
def test_row_step_kernel_matches_reference(cfg, row, plan):
    buf = _random_buffers(cfg, 2, 4, 5, row, seed=1, plan=plan)
    ref = buf.clone()
    K.launch_row_step(buf)
    K.row_step_reference(ref)
    _assert_same_state(buf, ref)


@pytest.mark.parametrize("cfg", KERNEL_CONFIGS)
@pytest.mark.parametrize("row,col,known,temperature,plan", [(0, 0, False, 1.0, ""), (2, 3, True, 0.7, ""),
                                                            (2, 3, True, 0.7, SPLIT)],
                         ids=["r0c0", "r2c3-known", "r2c3-known-split"])
def test_pixel_step_kernel_matches_reference(cfg, row, col, known, temperature, plan):
    buf = _random_buffers(cfg, 3, 3, 5, row, seed=2, known=known, temperature=temperature, plan=plan)
    ref = buf.clone()
    K.launch_pixel_step(buf, col)
    params = K.pixel_step_reference(ref, col)
    _assert_same_state(buf, ref)
    assert param_error(buf.params[:, :, row, col], params) <= 1e-5
    untouched = torch.ones_like(buf.x, dtype=torch.bool)
    untouched[:, :, row, col] = False
    assert torch.equal(buf.x[untouched], ref.x[untouched])


@pytest.mark.parametrize("bits", [9, 12])
def test_pixel_step_many_levels_in_chunks(bits):
    """9 / 12-bit categorical: 512 / 4096 levels, read in 2 / 16 chunks of 256 by the sampler."""
    cfg = dict(channels=1, bits=bits, hidden=3, blocks=1, kernel_size=3, dist="categorical")
    for seed in range(3):
        # flat-ish logits: samples spread over both chunks
        buf = _random_buffers(cfg, 2, 2, 3, 1, seed=seed, head_scale=0.1)
        ref = buf.clone()
        K.launch_pixel_step(buf, 2)
        K.pixel_step_reference(ref, 2)
        _assert_same_state(buf, ref)


def _inverse_cdf_within(params, u, pix, levels, temperature=1.0, tol=1e-5):
    """Whether the categorical pixels ``pix`` ``(N, C)`` are the inverse CDF of ``params``
    ``(N, C*levels)`` at the uniforms ``u`` ``(N, C)`` up to ``tol`` of the cdf, computed
    in float64. At 2**16 levels a float32 softmax (torch's own included) moves the cdf by
    ~1e-6, a tenth of a level's probability: matching one float32 implementation bit
    for bit is not what correctness means there."""
    cdf = torch.softmax(params.double().reshape(len(params), -1, levels) / temperature, -1).cumsum(-1)
    pix = pix.long()
    lo = torch.where(pix > 0, cdf.gather(-1, (pix - 1).clamp(min=0)[..., None])[..., 0], 0.0)
    hi = torch.where(pix < levels - 1, cdf.gather(-1, pix[..., None])[..., 0], float("inf"))
    u = u.double()
    return bool(((lo - tol <= u) & (u < hi + tol)).all())


def test_pixel_step_65536_levels():
    """16-bit categorical at the kernel level: the head's 65536 parameters match the
    reference, and each sampled pixel is the inverse CDF of its parameters."""
    cfg = dict(channels=1, bits=16, hidden=3, blocks=0, kernel_size=3, dist="categorical")
    for head_scale in (0.1, 3.0):      # flat logits (a level ~1.5e-5 wide) and peaked ones
        buf = _random_buffers(cfg, 2, 2, 3, 1, seed=4, head_scale=head_scale, temperature=0.8)
        ref = buf.clone()
        K.launch_pixel_step(buf, 2)
        params = K.pixel_step_reference(ref, 2)
        assert param_error(buf.params[:, :, 1, 2], params) <= 1e-5
        assert _inverse_cdf_within(buf.params[:, :, 1, 2], buf.uniforms[:, 1, 2], buf.x[:, :, 1, 2], 2 ** 16, 0.8)


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


def test_65536_levels_match_naive():
    """2**16 token values, categorical (65536 logits per pixel), a tiny model and image:
    teacher forcing gives the full forward's parameters, every pixel is the inverse CDF
    of its parameters, and the naive engine's images agree up to sampling ties (where
    they first differ both pixels are the inverse CDF of parameters that agree)."""
    model = _model(5, channels=1, bits=16, hidden=2, blocks=1, dist="categorical", embed_dim=2)
    b, h, w = 1, 2, 2
    u = torch.rand(b, h, w, 1, generator=_gen(9))
    x0 = torch.zeros(b, 1, h, w, dtype=torch.long, device=DEVICE)
    got, params = cached_triton.run(model, x0, None, None, u, 1.0, return_params=True)
    assert_matches_forward(params, model, got)
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # noqa: E731
    assert _inverse_cdf_within(flat(params), u.reshape(-1, 1), flat(got), 2 ** 16)
    ref = naive.run(model, x0, None, None, u, 1.0)
    pos = (ref != got).flatten().nonzero()
    if len(pos):
        k = pos[0].item()
        pr = flat(model(ref))[k:k + 1]
        assert param_error(flat(params)[k:k + 1], pr) <= 1e-4
        assert _inverse_cdf_within(pr, u.reshape(-1, 1)[k:k + 1], flat(ref)[k:k + 1], 2 ** 16)


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
    assert_matches_forward(params, model, x, cond)
    x0 = torch.zeros_like(x)
    assert torch.equal(cached_triton.run(model, x0, None, cond, u, 1.3), naive.run(model, x0, None, cond, u, 1.3))


def test_row_replay_sequencing():
    """The CUDA path's structure with a stand-in for graph capture: capturing records
    the row's launches without running them, each replay runs them once. Same
    images as the plain loop (the row counter advances on the device)."""
    model = _model(3, channels=1, bits=3, hidden=3, blocks=1, dist="categorical")
    u = torch.rand(1, 4, 3, 1, generator=_gen(6))
    x0 = torch.zeros(1, 1, 4, 3, dtype=torch.long, device=DEVICE)
    fake_capture = StandInCapture()
    captured = fake_capture.captured

    bar = RowCounter()
    buf = triton_buffers.build(model, x0, None, None, u, 1.0)
    assert isinstance(buf, triton_buffers.FusedGated)
    cached_triton.sample_rows(cached_triton._Run(buf), bar, capture=fake_capture)
    assert len(captured) == 1 and bar.n == 4 * 3 and int(buf.row[0]) == 4
    assert torch.equal(buf.x, cached_triton.run(model, x0, None, None, u, 1.0))


# -- grouped images, channel tiles, wide rows, every model kind -------------------------

def _tie_checked(model, u, temperature, ref, got, what):
    """``ref``, ``got``: ``(images, params)`` of a reference engine and of triton."""
    ok, equal, lines = cached_triton.tie_report(model, u, temperature, *ref, *got)
    assert ok, f"{what}: {equal:.2%} equal; " + "; ".join(lines)
    return equal


#: (batch, override, (group, fused)): every kind of launch plan on odd batches. Batch 1
#: and 5: matrix-vector products (G < 16), fused and split over 4- and 8-channel tiles;
#: 5 and 19 with tl.dot and masked groups; 37 fused with dots; tf32x3 (its precision
#: only differs on a GPU: the interpreter multiplies in float64).
PLAN_CASES = [(1, "", (1, True)), (1, "group=1,pixel_tile=4", (1, False)), (5, "", (8, False)),
              (5, "group=16," + SPLIT, (16, False)), (19, "", (16, False)), (37, "pixel_tile=32", (16, True)),
              (19, "pixel_tile=32,precision=tf32x3", (16, True))]


@pytest.mark.parametrize("batch,plan,shape", PLAN_CASES,
                         ids=["b1-matvec", "b1-matvec-split4", "b5-matvec-split", "b5-split", "b19-split",
                              "b37-fused", "b19-tf32x3"])
def test_groups_and_tiles_match_cached_torch(batch, plan, shape):
    """Every launch plan kind on batches that are not a multiple of the group size (the
    last group masked), hidden 20 (padded to 32; channel tiles in the split plans),
    conditioning and known pixels: teacher forcing and the images of the cached torch
    engine."""
    from pixelaux.engines import cached_torch
    model = _model(9, channels=3, bits=8, hidden=20, blocks=2, nr_mix=2, cond_channels=2)
    h, w = 2, 3
    cond = random_cond(model, batch, h, w).to(DEVICE)
    x = random_images(model, batch, h, w, seed=3).to(DEVICE)
    u = torch.rand(batch, h, w, model.dist.num_uniforms, generator=_gen(batch))
    pl = _plan(model, batch, w, plan)
    assert (pl.group, pl.fused) == shape and pl.matvec == (pl.group < 16)
    if batch <= 5:      # (teacher forcing of the large batches: their params are tie-checked below)
        full = torch.ones(batch, h, w, dtype=torch.bool, device=DEVICE)
        _, params = cached_triton.run(model, x, full, cond, u, 1.0, return_params=True, launch_plan=pl)
        assert_matches_forward(params, model, x, cond)
    known = (torch.rand(batch, h, w, generator=_gen(1)) < 0.3).to(DEVICE)
    got, params = cached_triton.run(model, x, known, cond, u, 0.9, return_params=True, launch_plan=pl)
    ref = cached_torch.run(model, x, known, cond, u, 0.9, return_params=True)
    _tie_checked(model, u, 0.9, ref, (got, params), f"batch {batch} {pl.describe()}")
    keep = known[:, None].expand_as(x)
    assert torch.equal(got[keep], x[keep])


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["", SPLIT], ids=["fused", "split"])
def test_rows_wider_than_a_column_tile(plan):
    """W = 70: at batch 1 the row op's blocks take five column tiles of 16 (the last
    partial; ``row_step.row_block_w``), its first layer five of 16 too; teacher forcing
    (fused plan) and the naive engine's images (split). The 64-column tiles of larger
    batches: ``test_row_step_in_64_column_tiles``."""
    from pixelaux.kernels.row_step import row_block_w
    model = _model(5, channels=1, bits=4, hidden=18, blocks=1, dist="categorical")
    h, w = 2, 70
    x = random_images(model, 1, h, w, seed=1).to(DEVICE)
    u = torch.rand(1, h, w, 1, generator=_gen(2))
    pl = _plan(model, 1, w, plan)
    assert row_block_w(1, w, pl.row_tile, pl.hid_p) == 16
    if plan == "":
        full = torch.ones(1, h, w, dtype=torch.bool, device=DEVICE)
        _, params = cached_triton.run(model, x, full, None, u, 1.0, return_params=True, launch_plan=pl)
        assert_matches_forward(params, model, x)
        return
    x0 = torch.zeros_like(x)
    got, params = cached_triton.run(model, x0, None, None, u, 1.0, return_params=True, launch_plan=pl)
    _tie_checked(model, u, 1.0, naive.run(model, x0, None, None, u, 1.0, return_params=True), (got, params), "W=70")


@pytest.mark.parametrize("plan", ["", SPLIT], ids=["one-tile", "channel-tiles"])
def test_row_step_in_64_column_tiles(plan):
    """8 images of W = 70: the row op's blocks in two column tiles of 64 (the second
    partial), one launch of each row kernel against its reference, in the middle of a run."""
    from pixelaux.kernels.row_step import row_block_w
    cfg = dict(channels=2, bits=5, hidden=18, blocks=2, kernel_size=3, nr_mix=2, dist="logistic", cond_channels=1)
    buf = _random_buffers(cfg, 8, 3, 70, 2, seed=4, plan=plan)
    assert row_block_w(8, 70, buf.launch_plan.row_tile, buf.launch_plan.hid_p) == 64
    ref = buf.clone()
    K.launch_row_step(buf)
    K.row_step_reference(ref)
    for name, t in ref.state().items():     # float32 sums in two orders: within 1e-5 of the scale (~1e-6 seen)
        got = getattr(buf, name)
        if name in ("x", "row"):
            assert torch.equal(got, t), name
        else:
            assert (got - t).abs().max() <= 1e-5 * t.abs().max(), name


@pytest.mark.parametrize("kind", ["grayscale", "pyramid"])
def test_grayscale_and_pyramid_stages_match_torch_backend(kind):
    """Every stage of the composite models through ``pixelaux.sample``: the gray prior
    and the conditioned colour stage; the pyramid's unconditional seed level and its
    conditioned upper level; a completion so known pixels pass through each stage."""
    from helpers import randomize
    torch.manual_seed(0)
    if kind == "grayscale":
        model = pixelaux.GrayscalePixelCNN(hidden=4, blocks=1, nr_mix=2, encoder_hidden=4, encoder_blocks=1,
                                           image_size=(3, 4))
        size = (3, 4)
    else:
        model = pixelaux.PyramidPixelCNN(hidden=4, blocks=1, nr_mix=2, image_size=4, seed_size=2,
                                         encoder_hidden=4)
        size = (4, 4)
    randomize(model, std=0.2, seed=1)
    model = model.to(DEVICE)
    known = torch.full((2, 3, *size), -1, dtype=torch.long)
    known[:, :, 0, :2] = 7
    out = {}
    for backend in ("torch", "triton"):
        out[backend] = pixelaux.sample(model, 2, size=size, backend=backend, generator=_gen(11),
                                       known=known, progress=False)
    mismatch = (out["torch"] != out["triton"]).float().mean().item()
    assert mismatch <= 0.1, f"{kind}: {mismatch:.1%} of pixel values differ"   # a tie may propagate
    assert torch.equal(out["triton"][:, :, 0, :2].cpu(), known[:, :, 0, :2])


def test_buffers_and_graph_are_reused_across_calls():
    """One entry per (model, batch, size, options): the second call reuses the buffers
    and the captured row (stand-in capture: nothing is captured twice), a changed
    temperature or new inputs need no rebuild, modified weights do."""
    model = _model(3, channels=1, bits=3, hidden=3, blocks=1, dist="categorical")
    u1 = torch.rand(2, 3, 2, 1, generator=_gen(1))
    u2 = torch.rand(2, 3, 2, 1, generator=_gen(2))
    x0 = torch.zeros(2, 1, 3, 2, dtype=torch.long, device=DEVICE)
    cached_triton.clear_cache()
    fake_capture = StandInCapture()
    captured = fake_capture.captured
    runs = []
    for u, t in ((u1, 1.0), (u2, 0.7), (u1, 1.0)):
        entry = cached_triton._entry(model, x0, None, None, u, t, False)
        bar = RowCounter()
        cached_triton.sample_rows(entry, bar, capture=fake_capture)
        assert bar.n == 3 * 2
        runs.append(entry.buf.x.clone())
    assert len(captured) == 1 and cached_triton.RUNS.builds >= 1 and len(cached_triton.RUNS) == 1
    assert torch.equal(runs[0], runs[2]) and torch.equal(runs[1], naive.run(model, x0, None, None, u2, 0.7))
    assert torch.equal(runs[0], naive.run(model, x0, None, None, u1, 1.0))
    builds = cached_triton.RUNS.builds
    out1 = cached_triton.run(model, x0, None, None, u1, 1.0)
    out2 = cached_triton.run(model, x0, None, None, u1, 1.0)
    assert cached_triton.RUNS.builds == builds and out1 is not out2 and torch.equal(out1, out2)
    with torch.no_grad():
        model.head.bias.add_(0.5)                   # in place: the entry is stale
    cached_triton.run(model, x0, None, None, u1, 1.0)
    assert cached_triton.RUNS.builds == builds + 1
    cached_triton.clear_cache()
    assert len(cached_triton.RUNS) == 0


def test_plan_choice_and_override():
    choose = K.choose_launch_plan
    one = choose(1, 64, 32, override="")            # batch 1: one image, fused, matrix-vector products
    assert one.fused and one.matvec and one.group == 1 and one.row_tile == 16 and one.hid_p == 64
    assert one.precision == "ieee" and one.programs(1) == 1
    four = choose(3, 64, 32, override="")
    assert four.fused and four.group == 4
    five = choose(5, 64, 32, override="")          # split over 4-channel tiles: 16 programs
    assert not five.fused and five.group == 8 and five.pixel_tile == 4 and five.programs(5) == 16
    b16 = choose(16, 64, 32, override="")          # from 16 images: tiles of at least 8 channels
    assert not b16.matvec and b16.pixel_tile == 8 and b16.programs(16) == 8
    b256 = choose(256, 64, 32, override="")        # 16 groups x 8 tiles: (nearly) every SM
    assert b256.pixel_tile == 8 and b256.programs(256) == 128 and b256.row_tile == 64
    assert choose(256, 64, 32, override="", sms=8).fused           # 16 groups fill 8 SMs
    assert choose(256, 64, 32, override="", sms=32).pixel_tile == 32
    big = choose(1, 200, 32, override="")          # too wide to fuse: 4-channel tiles, 64 programs
    assert not big.fused and big.pixel_tile == 4 and big.hid_p == 256 and big.group == 1 and big.programs(1) == 64
    assert choose(256, 200, 32, override="").programs(256) >= 132
    assert choose(4096, 20, 8, override="").group == 32
    sp = choose(1, 64, 32, override="pixel_tile=16, group=20")
    assert sp.pixel_tile == 16 and sp.group == 32 and not sp.fused
    assert choose(1, 64, 32, override="group=1,pixel_tile=2").pixel_tile == 4       # matvec minimum
    assert choose(1, 64, 32, override="group=16,pixel_tile=4").pixel_tile == 8      # 16+ images minimum
    tf = choose(256, 64, 32, override="precision=tf32x3")
    assert tf.precision == "tf32x3" and tf.key() != b256.key()
    for pl in (one, five, b256, tf, sp):
        assert choose(7, 64, 32, override=pl.describe()) == pl
    for bad, what in (("tile=3", "unknown field"), ("precision=tf32", "precision must be"),
                      ("group=0", "group must be a positive"), ("row_tile=x", "row_tile must be")):
        with pytest.raises(ValueError, match=what):
            choose(1, 64, 32, override=bad)


def _one_pixel_categorical(logits_ref, logits_got, u0):
    """A 1-bit categorical model, two pixels of one image, each engine's parameters given
    (``(2,)`` logits at the first pixel; the second pixel equal in both), the uniform of
    the first pixel ``u0``: ``(model, u, (ref, params_ref), params_got)``."""
    model = _model(0, channels=1, bits=1, hidden=2, blocks=0, kernel_size=1, dist="categorical").cpu()
    u = torch.tensor([u0, 0.25]).reshape(1, 1, 2, 1)
    pa = torch.tensor([[logits_ref, [0.0, 1.0]]]).permute(0, 2, 1)[:, :, None, :]    # (1, 2, 1, 2)
    pb = torch.tensor([[logits_got, [0.0, 1.0]]]).permute(0, 2, 1)[:, :, None, :]
    ref = model.dist.sample(pa, u)
    return model, u, (ref, pa), pb


def test_tie_report_judges_each_engine_with_its_own_parameters():
    """Two engines whose parameters differ by float rounding at a pixel whose uniform
    sits on the bin boundary (logits 1, 1: cdf[0] = 0.5 = u): the reference's pixel is
    what *its* parameters give and the other's what *its* give, a float tie. The old
    report judged the reference's pixel with the full forward's parameters, and the
    other's by replaying it with torch's arithmetic: here the forward gives neither
    engine's logits, and it called this tie a failure."""
    eps = 2 ** -20
    model, u, (ref, pa), pb = _one_pixel_categorical([1.0 + eps, 1.0], [1.0, 1.0 + eps], 0.5)
    got = model.dist.sample(pb, u)
    assert ref[0, 0, 0, 0] == 0 and got[0, 0, 0, 0] == 1 and torch.equal(ref[..., 1], got[..., 1])
    ok, equal, lines = cached_triton.tie_report(model, u, 1.0, ref, pa, got, pb)
    assert ok and equal == 0.5 and "a float tie" in lines[0] and "(0, 0)" in lines[0], lines
    # the same images judged with parameters that do not give the reference's pixel
    ok, _, lines = cached_triton.tie_report(model, u, 1.0, ref, pb, got, pb)
    assert not ok and "reference's pixel is not what its own parameters give" in lines[0], lines


def test_tie_report_accepts_a_flip_of_the_engines_own_arithmetic_only_at_a_boundary():
    """Identical parameters, and the engine's pixel the other side of the boundary its
    parameters sit on (its ``exp``/sums are not torch's): a tie, which a replay with
    torch's arithmetic alone calls a failure. The same flip where the uniform is far
    from any boundary, or parameters further apart than ``tol``, is not."""
    model, u, (ref, pa), _ = _one_pixel_categorical([1.0, 1.0], [1.0, 1.0], 0.5)
    flipped = ref.clone()
    flipped[0, 0, 0, 0] = 1 - ref[0, 0, 0, 0]
    ok, equal, lines = cached_triton.tie_report(model, u, 1.0, ref, pa, flipped, pa.clone())
    assert ok and equal == 0.5 and "at a bin boundary" in lines[0], lines
    ok, equal, lines = cached_triton.tie_report(model, u, 1.0, ref, pa, ref, pa.clone())
    assert ok and equal == 1.0 and lines == []

    model, u, (ref, pa), _ = _one_pixel_categorical([1.0, 1.0], [1.0, 1.0], 0.3)
    flipped = ref.clone()
    flipped[0, 0, 0, 0] = 1 - ref[0, 0, 0, 0]
    ok, _, lines = cached_triton.tie_report(model, u, 1.0, ref, pa, flipped, pa.clone())
    assert not ok and "NOT a tie" in lines[0] and "engine's pixel is not what its own" in lines[0], lines

    model, u, (ref, pa), pb = _one_pixel_categorical([1.0, 1.0], [1.01, 1.0], 0.5)
    got = model.dist.sample(pb, u)
    assert not torch.equal(ref, got)
    ok, _, lines = cached_triton.tie_report(model, u, 1.0, ref, pa, got, pb)
    assert not ok and "params differ by more than" in lines[0], lines
    with pytest.raises(ValueError, match="own parameters"):
        cached_triton.tie_report(model, u, 1.0, ref, None, got, pb)


def test_prefill_runs_in_true_fp32(monkeypatch):
    """The prefill (``CachedBuffers.fill``: the conditioning convolutions, once per image)
    runs with TF32 off (``true_fp32``), so on a GPU its terms are float32 as the
    forward's. On the CPU the flags change no number: this spies on them instead, both
    on before, off in every ``cond_terms`` call of the prefill, restored after."""
    seen = spy_tf32_in_cond_terms(monkeypatch)
    model = _model(0, channels=1, bits=2, hidden=3, blocks=2, kernel_size=3, dist="categorical",
                   cond_channels=2).cpu()
    x = torch.zeros(2, 1, 3, 4, dtype=torch.long)
    cond = torch.randn(2, 2, 3, 4, generator=_gen(0))
    u = torch.rand(2, 3, 4, 1, generator=_gen(1))
    with tf32_on():
        buf = CachedBuffers(model, x, None, cond, u, 1.0)
        assert len(seen) == 4                       # 2 blocks x (u, ul)
        buf.fill(x, None, cond, u, 1.0)
        assert len(seen) == 8 and all(f == dict(matmul=False, cudnn=False) for f in seen), seen
        assert cached_triton.tf32_flags() == dict(matmul=True, cudnn=True)


def test_gpu_check_refuses_on_cpu_with_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: gpu_check would run")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "gpu_check.py"), "--out", "/tmp/x"],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: ")


def test_gpu_check_pieces_on_cpu():
    """What gpu_check computes without a GPU: the forward FLOPs count and the
    step recorder that keeps going past a failure."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import gpu_check
    model = _model(0, channels=1, bits=2, hidden=4, blocks=1, kernel_size=3, dist="categorical").cpu()
    f = gpu_check.forward_flops(model, (3, 5))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert f > 0 and f >= 2 * 15 * sum(c.weight.shape[0] for c in convs)
    ck = gpu_check.Check(budget=100)
    assert ck.step("ok", lambda: 3) == 3
    assert ck.step("bad", lambda: 1 / 0) is None
    assert ck.step("later", lambda: 4, need=1e9) is None
    assert ck.data["steps"]["ok"]["ok"] and not ck.data["steps"]["bad"]["ok"]
    assert ck.data["failures"] == ["bad: ZeroDivisionError: division by zero"] and ck.data["skipped"] == ["later"]


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


@pytest.mark.slow
def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter does not compile the kernels: compile every variant the
    launchers use for sm_90 (Triton's frontend, LLVM and the ptxas shipped with
    triton; no GPU or driver needed), in a process without TRITON_INTERPRET: matrix-vector
    products (batch 1, split; batch 3, fused) and dots (batch 17: groups of 16, split over
    8-channel tiles, so conv1's products are summed and conv2's a dot)."""
    import triton.backends
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton has no NVIDIA backend")
    code = ("from pixelaux.engines.cached_triton import load_kernels\n"
            "load_kernels()\n"
            "from pixelaux.engines.compile_check import compile_all\n"
            "from pixelaux.kernels.layout import choose_launch_plan\n"
            "r = compile_all([dict(channels=3, bits=8, hidden=20, blocks=1, nr_mix=3, cond_channels=2)],\n"
            "                batches=(1,), plans={1: choose_launch_plan(1, 20, 8, override='pixel_tile=16')})\n"
            "r.update(compile_all([dict(channels=1, bits=4, hidden=5, blocks=1, kernel_size=5,\n"
            "                            dist='categorical')], batches=(17,)))\n"
            "r.update(compile_all([dict(channels=1, bits=16, hidden=8, blocks=1, dist='categorical',\n"
            "                            embed_dim=70)], batches=(3,)))\n"
            "names = sorted({v['kernel'] for v in r.values()})\n"
            "print(len(r), 'variants', names, [v.get('stack', 0) for v in r.values()])\n")
    out = run_without_interpreter(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "variants" in out.stdout
    for name in ("pixel_conv_kernel", "pixel_head_kernel", "pixel_fused_kernel", "row_block_kernel"):
        assert name in out.stdout, out.stdout


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
