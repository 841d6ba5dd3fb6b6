"""The Triton backend's plan walker (``triton_buffers.PlanBuffers``, every plan that is not
the fused gated path's: the ``PixelCNNpp``'s) and its kernels (docs/design.md sections 2 and 5).

Runs the kernels under Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py``) on tiny shapes (hidden 4-8, 0-1 blocks, 4x4 / 8x4 images):

* kernel level: every launcher of ``kernels/pp_row.py`` / ``kernels/pp_pixel.py``
  against the PyTorch reference beside it, on random buffer states (hidden sizes
  that are not powers of two, several image groups and column / channel tiles, every
  row slot parity, the first row and column);
* the launch plan with the kernels' references (fast, no interpreter): teacher
  forcing and the naive engine's images on larger random configs;
* the plan walker (``triton_buffers.PlanBuffers``) on a ``GatedPixelCNN``'s plan;
* engine level: a batch that is not a multiple of the group size (teacher forcing and
  the naive engine's images over every input kind, as for every backend, are in
  ``test_conformance.py``);
* token inputs (``embed_dim > 0``): the first-layer kernels with wide input tables;
* the per-level CUDA-graph sequencing (with a stand-in for the capture), routing and errors.
"""
import pytest
import torch

from helpers import (assert_matches_forward, one_thread, randomize,  # noqa: F401
                     RowCounter, run_without_interpreter, spy_tf32_in_cond_terms, StandInCapture,
                     tf32_on, triton_kernels_or_skip)

K, DEVICE = triton_kernels_or_skip()
import pixelaux  # noqa: E402
from pixelaux import engines  # noqa: E402
from pixelaux.engines import cached_triton, naive, triton_buffers  # noqa: E402
from pixelaux.engines.plan import plan_of  # noqa: E402
from pixelaux.kernels import pp_pixel as P, pp_row as R  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")    # tiny ops: threads only add spin-waits


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _model(seed=0, size=(4, 4), **cfg):
    torch.manual_seed(seed)
    m = pixelaux.PixelCNNpp(dropout=0.0, image_size=size, **cfg)
    return randomize(m, std=0.2, seed=seed).to(DEVICE)


def _inputs(model, b, size, seed):
    g = _gen(seed)
    x = torch.randint(0, 2 ** model.bits, (b, model.channels, *size), generator=g)
    cond = torch.randn(b, model.cond_channels, *size, generator=g) if model.cond_channels else None
    u = torch.rand(b, *size, model.dist.num_uniforms, generator=g)
    return x.to(DEVICE), (None if cond is None else cond.to(DEVICE)), u


# -- kernel level -----------------------------------------------------------------------

def _rand(*shape, g):
    return torch.randn(*shape, generator=g).to(DEVICE)


def _check(launch, reference, outs, **kw):
    """Run ``launch`` and ``reference`` on clones of the buffers named in ``outs``."""
    a = {k: v.clone() if k in outs else v for k, v in kw.items()}
    b = {k: v.clone() if k in outs else v for k, v in kw.items()}
    launch(**a)
    reference(**b)
    for k in outs:
        if a[k].dtype.is_floating_point:
            # float32 sums in another order: within 1e-5 of the buffer's scale
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5 * max(1.0, b[k].abs().max().item()),
                                       msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


# (batch, width of the output scale, hidden), nothing a power of two: one program; three
# image groups, two output-channel tiles and three input chunks; two column tiles
KSHAPES = [(3, 4, 5), (17, 4, 70), (2, 40, 5)]


def _table(c, bits, e, g):
    """An input table ``(C, 2**bits, max(e, 1))``: the scaled encoding (``e = 0``) or
    random token embeddings."""
    if e == 0:
        return pixelaux.inputs.PixelInput(c, bits).table(DEVICE)
    return _rand(c, 2 ** bits, e, g=g)


@pytest.mark.parametrize("e", [0, 2, 5])
def test_reference_image_is_the_models_input(e):
    """The references' ``_image`` (input table lookups) is ``PixelInput.forward``, bit for bit."""
    inp = pixelaux.inputs.PixelInput(3, 5, e)
    randomize(inp, seed=e)
    x = torch.randint(0, 32, (2, 3, 3, 4), generator=_gen(0))
    assert torch.equal(R._image(x, inp.table()), inp(x))


@pytest.mark.parametrize("b,w,f", KSHAPES)
@pytest.mark.parametrize("i", [0, 3])
@pytest.mark.parametrize("e", [0, 11], ids=["scaled", "tokens"])    # tokens: 6 * CIN = 204 taps, 7 chunks
def test_row_init_kernel(b, w, f, i, e):
    g = _gen(1)
    c = 3
    cin = c * max(e, 1) + 1
    x = torch.randint(0, 256, (b, c, 5, w), generator=g).to(DEVICE)
    _check(R.launch_row_init, R.row_init_reference, ("u_out", "row0"),
           x=x, row=torch.tensor([i], dtype=torch.int32, device=DEVICE), u_out=_rand(b, 2, w, f, g=g),
           row0=_rand(b, 1, w, f, g=g), wu=_rand(6 * cin, f, g=g), bu=_rand(f, g=g),
           wv=_rand(3 * cin, f, g=g), bv=_rand(f, g=g), table=_table(c, 8, e, g))


ROW_CONVS = {   # name: (kernel h, kernel w, stride, padl, act, skip, cond, gate, ns in, ns out)
    "conv1-cond": (2, 3, 1, 1, True, False, True, False, 2, 2),
    "conv1-skip-ns4": (2, 3, 1, 1, True, True, False, False, 4, 2),
    "conv2-gate-cond": (2, 3, 1, 1, True, False, True, True, 2, 2),
    "row_term-1x1": (1, 1, 1, 0, True, False, True, False, 2, 1),
    "downsize-stride2": (2, 3, 2, 1, False, False, False, False, 2, 2),
}


@pytest.mark.parametrize("b,w,f", KSHAPES)
@pytest.mark.parametrize("name", list(ROW_CONVS))
@pytest.mark.parametrize("i", [0, 5])
def test_row_conv_kernel(b, w, f, name, i):
    kh, kw, stride, padl, act, skip, cond, gate, ns_in, ns_out = ROW_CONVS[name]
    g = _gen(2)
    shift = 1 if stride == 2 else 0
    w_in = w * stride
    wn = 2 * f if gate else f
    kw_ = dict(row=torch.tensor([i], dtype=torch.int32, device=DEVICE), inp=_rand(b, ns_in, w_in, f, g=g),
               w=_rand(kh, kw, 2 if act else 1, f, wn, g=g), b=_rand(wn, g=g), out=_rand(b, ns_out, w, f, g=g),
               shift=shift, stride=stride, padl=padl, act=act)
    if skip:
        kw_.update(skip=_rand(b, 2, w, f, g=g), ws=_rand(1, 1, 2, f, f, g=g))
    if cond:
        kw_.update(cond=_rand(b, 6, w, wn, g=g))
    if gate:
        kw_.update(res=_rand(b, 2, w, f, g=g))
    _check(R.launch_row_conv, R.row_conv_reference, ("out",), **kw_)


@pytest.mark.parametrize("b,w,f", KSHAPES)
@pytest.mark.parametrize("i", [0, 2, 6])
def test_row_deconv_kernel(b, w, f, i):
    g = _gen(3)
    _check(R.launch_row_deconv, R.row_deconv_reference, ("out",),
           row=torch.tensor([i], dtype=torch.int32, device=DEVICE), inp=_rand(b, 2, w, f, g=g),
           w=_rand(2, 3, f, f, g=g), b=_rand(f, g=g), out=_rand(b, 4, 2 * w, f, g=g), shift=1)


def test_advance_row_kernel():
    row = torch.tensor([4], dtype=torch.int32, device=DEVICE)
    R.launch_advance_row(row)
    assert int(row[0]) == 5


@pytest.mark.parametrize("b,f", [(3, 5), (17, 70)])
@pytest.mark.parametrize("i,j", [(0, 0), (3, 2)])
@pytest.mark.parametrize("e", [0, 11], ids=["scaled", "tokens"])    # tokens: 2 * CIN = 68 taps, 3 chunks
def test_pixel_init_kernel(b, f, i, j, e):
    g = _gen(4)
    c, w = 3, 4
    cin = c * max(e, 1) + 1
    x = torch.randint(0, 256, (b, c, 5, w), generator=g).to(DEVICE)
    _check(P.launch_pixel_init, P.pixel_init_reference, ("out",),
           x=x, row=torch.tensor([i], dtype=torch.int32, device=DEVICE), j=j, row0=_rand(b, 1, w, f, g=g),
           out=_rand(b, 2, w, f, g=g), wh=_rand(2 * cin, f, g=g), bh=_rand(f, g=g), table=_table(c, 8, e, g))


@pytest.mark.parametrize("b,f", [(3, 5), (17, 70)])
@pytest.mark.parametrize("i,q", [(0, 0), (6, 1)])
def test_pixel_down_and_deconv_kernels(b, f, i, q):
    g = _gen(5)
    row = torch.tensor([i], dtype=torch.int32, device=DEVICE)
    _check(P.launch_pixel_down, P.pixel_down_reference, ("out",), row=row, q=q,
           inp=_rand(b, 2, 4, f, g=g), w=_rand(2, 2, 1, f, f, g=g), b=_rand(f, g=g),
           out=_rand(b, 2, 2, f, g=g), shift=1)
    _check(P.launch_pixel_deconv, P.pixel_deconv_reference, ("out",), row=row, q=q,
           inp=_rand(b, 2, 2, f, g=g), w=_rand(2, 2, f, f, g=g), b=_rand(f, g=g),
           out=_rand(b, 4, 4, f, g=g), shift=1)


@pytest.mark.parametrize("b,f", [(3, 5), (17, 70)])
@pytest.mark.parametrize("down", [False, True], ids=["up", "down"])
@pytest.mark.parametrize("i,q", [(0, 0), (3, 2)])
def test_pixel_block_kernel(b, f, down, i, q):
    g = _gen(6)
    ws = 4
    kw = dict(row=torch.tensor([i], dtype=torch.int32, device=DEVICE), q=q, x=_rand(b, 4 if down else 2, ws, f, g=g),
              c1=_rand(b, 2, ws, f, g=g), out=_rand(b, 2, ws, f, g=g), row_term=_rand(b, 1, ws, f, g=g),
              w1=_rand(2, 2, 2, f, f, g=g) * 0.2, b1=_rand(f, g=g), w2=_rand(2, 2, 2, f, 2 * f, g=g) * 0.2,
              b2=_rand(2 * f, g=g), shift=0, h2=_rand(b, 4, ws, 2 * f, g=g))
    if down:
        kw.update(skip=_rand(b, 2, ws, f, g=g), ws=_rand(1, 1, 2, f, f, g=g), h2=None)
    _check(P.launch_pixel_block, P.pixel_block_reference, ("c1", "out"), **kw)


@pytest.mark.parametrize("cfg", [dict(channels=3, bits=8, dist="logistic", nr_mix=3),
                                 dict(channels=1, bits=4, dist="categorical")], ids=["logistic", "categorical"])
@pytest.mark.parametrize("b", [3, 17])
def test_pixel_head_kernel(cfg, b):
    g = _gen(7)
    dist = pixelaux.distributions.make_distribution(cfg["dist"], cfg["channels"], cfg["bits"], cfg.get("nr_mix", 1))
    h, w, f = 3, 4, 5
    x = torch.randint(0, 2 ** cfg["bits"], (b, cfg["channels"], h, w), generator=g).to(DEVICE)
    known = (torch.rand(b, h, w, generator=g) < 0.5).to(torch.int8).to(DEVICE)
    _check(P.launch_pixel_head, P.pixel_head_reference, ("x", "params", "pscr"),
           x=x, known=known, uniforms=torch.rand(b, h, w, dist.num_uniforms, generator=g).to(DEVICE),
           params=torch.zeros(b, dist.num_params, h, w, device=DEVICE), pscr=torch.zeros(b, dist.num_params, device=DEVICE),
           row=torch.tensor([2], dtype=torch.int32, device=DEVICE), temp=torch.tensor([0.8], device=DEVICE), j=1,
           inp=_rand(b, 4, w, f, g=g), wh=_rand(f, dist.num_params, g=g), bh=_rand(dist.num_params, g=g), dist=dist)


# -- the launch plan, with the kernels' PyTorch references (fast) ------------------------

PLAN_CASES = [
    (dict(channels=3, bits=8, hidden=6, blocks=2, scales=3, nr_mix=3, cond_channels=2), (8, 8), 3),
    (dict(channels=1, bits=4, hidden=5, blocks=1, scales=2, dist="categorical"), (6, 4), 2),
    (dict(channels=3, bits=5, hidden=4, blocks=0, scales=3, nr_mix=2), (4, 8), 5),
    (dict(channels=1, bits=8, hidden=7, blocks=2, scales=1, nr_mix=2, cond_channels=1), (3, 5), 1),
]


@pytest.mark.parametrize("cfg,size,batch", PLAN_CASES, ids=["s3-b2-cond", "cat-s2", "s3-b0", "s1-b2-cond"])
def test_plan_with_references_matches_forward_and_naive(cfg, size, batch):
    model = _model(1, size=size, **cfg)
    x, cond, u = _inputs(model, batch, size, seed=2)
    known = torch.ones(batch, *size, dtype=torch.bool, device=DEVICE)
    out, params = cached_triton.run(model, x, known, cond, u, 1.0, return_params=True, reference=True)
    assert torch.equal(out, x)
    assert_matches_forward(params, model, x, cond)
    x0 = torch.zeros_like(x)
    assert torch.equal(cached_triton.run(model, x0, None, cond, u, 1.0, reference=True),
                       naive.run(model, x0, None, cond, u, 1.0))


# -- engine level (the kernels) ----------------------------------------------------------


def test_the_plan_walker_runs_a_gated_plan_too():
    """``PlanBuffers`` is built from the sampling plan, not from a family: a
    ``GatedPixelCNN`` with 3x3 kernels (its convs read 2 rows, as PixelCNN++'s; cond map,
    two blocks) walked step by step with the 2-row kernels gives the forward's parameters
    (teacher forcing) and the naive engine's images. (``build`` gives that family the
    fused gated path, ``gated_shape``: this is where the walker meets it.)"""
    torch.manual_seed(0)
    model = pixelaux.GatedPixelCNN(channels=3, bits=4, hidden=5, blocks=2, nr_mix=2, kernel_size=3, cond_channels=2)
    model = randomize(model, std=0.2, seed=0).to(DEVICE).eval()
    size = (4, 5)
    x, cond, u = _inputs(model, 2, size, seed=3)

    def walk(x, known, return_params=False):
        buf = triton_buffers.PlanBuffers(model, plan_of(model), x, known, cond, u, 1.0, return_params)
        cached_triton.sample_rows(cached_triton._Run(buf), RowCounter())
        return buf

    buf = walk(x, torch.ones(2, *size, dtype=torch.bool, device=DEVICE), return_params=True)
    assert torch.equal(buf.x, x)
    assert_matches_forward(buf.params, model, x, cond)
    x0 = torch.zeros_like(x)
    assert torch.equal(walk(x0, None).x, naive.run(model, x0, None, cond, u, 1.0))


@pytest.mark.parametrize("batch,plan,group,blocks", [(17, "", 16, 0), (3, "", 4, 1),
                                                    (3, "group=2,precision=tf32x3", 2, 1)],
                         ids=["b17-two-groups", "b3-matvec", "b3-groups-of-2-tf32x3"])
def test_launch_plans_match_naive(batch, plan, group, blocks):
    """The plan walker takes the launch plan's group and precision: 17 images in two groups
    of 16 (the last with one image: masked rows), 3 images as one matrix-vector group of
    4, and in groups of 2 (the last masked) with the tf32x3 dots asked for (on the
    interpreter the products are float64 whatever the precision: this checks the plumbing)."""
    model = _model(8, channels=1, bits=3, hidden=4, blocks=blocks, scales=2, dist="categorical")
    _, _, u = _inputs(model, batch, (4, 4), seed=5)
    x0 = torch.zeros(batch, 1, 4, 4, dtype=torch.long, device=DEVICE)
    pl = K.choose_launch_plan(batch, model.hidden, 4, override=plan)
    assert pl.group == group and triton_buffers.build(model, x0, None, None, u, 1.0, launch_plan=pl).launch_plan == pl
    assert torch.equal(cached_triton.run(model, x0, None, None, u, 1.0, launch_plan=pl),
                       naive.run(model, x0, None, None, u, 1.0))


def test_per_level_graph_sequencing():
    """The CUDA path's structure with a stand-in for graph capture: row 0 eagerly, one
    capture per trigger level (row 1: level 0, row 2: level 1, row 4: level 2), then
    replays; the same images as the eager loop."""
    model = _model(3, size=(8, 4), channels=1, bits=3, hidden=4, blocks=0, scales=3, dist="categorical")
    _, _, u = _inputs(model, 1, (8, 4), seed=6)
    x0 = torch.zeros(1, 1, 8, 4, dtype=torch.long, device=DEVICE)
    fake_capture = StandInCapture()
    captured = fake_capture.captured

    bar = RowCounter()
    buf = triton_buffers.build(model, x0, None, None, u, 1.0)
    assert isinstance(buf, triton_buffers.PlanBuffers)
    graphs = cached_triton.sample_rows(cached_triton._Run(buf), bar, capture=fake_capture).graphs
    assert sorted(graphs) == [0, 1, 2] and len(captured) == 3
    assert bar.n == 8 * 4 and int(buf.row[0]) == 8
    assert torch.equal(buf.x, naive.run(model, x0, None, None, u, 1.0))


def test_later_calls_reuse_the_buffers_and_graphs(monkeypatch):
    """Issue 21.4: the host side keeps its buffers and row graphs per (model, batch, size,
    options), one host side for both families (``cached_triton.sample_rows``, ``_entry``;
    the gated path's reuse with the kernels is ``test_cached_triton.py``'s
    ``test_buffers_and_graph_are_reused_across_calls``): a second call builds and captures
    nothing (one capture per trigger level), loads its own inputs (image, known pixels,
    cond, uniforms, temperature) and gives what a fresh run gives; changed weights build
    anew. With the kernels' references (fast): ``fill`` zeroes every state buffer the
    kernels read, so refilled buffers are fresh ones for the kernels too, and the kernels
    on fresh buffers are checked against naive in ``test_conformance.py``."""
    size = (8, 4)
    model = _model(7, size=size, channels=3, hidden=4, blocks=1, scales=3, nr_mix=2, cond_channels=2)
    fake_capture = StandInCapture()
    captured = fake_capture.captured

    monkeypatch.setattr(cached_triton, "_row_capture", lambda device, ref: fake_capture)
    cached_triton.clear_cache()
    builds = cached_triton.RUNS.builds
    outs = []
    for seed, temperature in ((1, 1.0), (2, 0.7)):
        x, cond, u = _inputs(model, 2, size, seed=seed)
        known = torch.rand(2, *size, generator=_gen(seed)) < 0.3
        got, params = cached_triton.run(model, x, known.to(DEVICE), cond, u, temperature, return_params=True,
                                        reference=True)
        ref = naive.run(model, x, known.to(DEVICE), cond, u, temperature)
        assert torch.equal(got, ref), seed
        outs.append((got, params))
    entry, = [e for _, _, e in cached_triton.RUNS._d.values()]
    assert isinstance(entry.buf, triton_buffers.PlanBuffers)
    levels = model.scales
    assert cached_triton.RUNS.builds == builds + 1 and len(captured) == levels   # built and captured once
    assert entry.captures == levels and sorted(entry.graphs) == list(range(levels))
    assert not torch.equal(outs[0][0], outs[1][0]) and not torch.equal(outs[0][1], outs[1][1])
    with torch.no_grad():
        model.head.bias.add_(0.5)                                                # new weights: a new entry
    cached_triton.run(model, x, known.to(DEVICE), cond, u, 1.0, return_params=True, reference=True)
    assert cached_triton.RUNS.builds == builds + 2
    cached_triton.clear_cache()


def test_trigger_levels():
    lv = triton_buffers.level
    assert [lv(i, 3) for i in range(9)] == [2, 0, 1, 0, 2, 0, 1, 0, 2]
    assert [lv(i, 1) for i in range(4)] == [0, 0, 0, 0]


def test_runner_routes_pixelcnnpp_to_this_engine():
    assert engines.runner("cached", "triton", "PixelCNNpp") is cached_triton.run
    if "PixelCNNpp" in engines.STAGE_KINDS["triton"]:
        assert engines.resolve("cached", "triton", DEVICE, kinds=("PixelCNNpp",)) == ("cached", "triton")


# -- errors -----------------------------------------------------------------------------

def test_prefill_runs_in_true_fp32(monkeypatch):
    """The prefill of ``PlanBuffers`` (the cond map pooled to every scale and each block's
    conditioning convolutions, once per image) runs with TF32 off (``true_fp32``), as
    the gated engine's. On the CPU the flags change no number: this spies on them, both
    on before, off in every ``cond_terms`` call (building the buffers, and refilling them
    for a later call), restored after."""
    seen = spy_tf32_in_cond_terms(monkeypatch)
    model = _model(0, size=(4, 4), channels=1, bits=2, hidden=3, blocks=1, scales=2, dist="categorical",
                   cond_channels=2)
    x, cond, u = _inputs(model, 2, (4, 4), 0)
    with tf32_on():
        buf = triton_buffers.build(model, x, None, cond, u, 1.0)
        # u and ul streams of every block: up pass 1 per scale, down pass 2 at scale 0 and 1 at 1
        assert len(seen) == 2 * (2 + 3)
        buf.fill(x, None, cond, u, 1.0)
        assert len(seen) == 4 * (2 + 3) and all(f == dict(matmul=False, cudnn=False) for f in seen), seen
        assert cached_triton.tf32_flags() == dict(matmul=True, cudnn=True)


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    model = _model(0, channels=1, bits=2, hidden=2, blocks=0, scales=1, dist="categorical")
    x = torch.zeros(1, 1, 4, 4, dtype=torch.long, device=DEVICE)
    monkeypatch.setattr(cached_triton, "status", lambda device: (False, "no GPU here"))
    with pytest.raises(RuntimeError, match="backend='triton' is not available: no GPU here"):
        cached_triton.run(model, x, None, None, torch.rand(1, 4, 4, 1), 1.0)


def test_bad_inputs_are_rejected():
    model = _model(0, size=(4, 4), channels=1, bits=2, hidden=2, blocks=0, scales=2, dist="categorical")
    u = torch.rand(1, 4, 4, 1)
    with pytest.raises(ValueError, match="temperature"):
        cached_triton.run(model, torch.zeros(1, 1, 4, 4, dtype=torch.long, device=DEVICE), None, None, u, 0.0)
    with pytest.raises(ValueError, match="divisible"):
        cached_triton.run(model, torch.zeros(1, 1, 3, 4, dtype=torch.long, device=DEVICE), None, None,
                             torch.rand(1, 3, 4, 1), 1.0)


def test_kernels_compile_into_the_sessions_own_cache(own_triton_cache):
    """Triton (and the compiling subprocess below, which inherits the variable) uses the
    cache directory conftest.py made for this session, not the shared ~/.triton/cache,
    where other processes compiling at the same time made Triton's read-back of a kernel
    fail with FileNotFoundError."""
    if own_triton_cache is None:
        pytest.skip("TRITON_CACHE_DIR is set by the caller")
    from triton import knobs
    import os
    assert os.environ["TRITON_CACHE_DIR"] == own_triton_cache and os.path.isdir(own_triton_cache)
    assert knobs.cache.dir == own_triton_cache


@pytest.mark.slow      # ~40 s on 2 cores with the session's own (cold) Triton cache (conftest.py)
def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter does not compile: compile every variant one row launches for sm_90
    (Triton's frontend, LLVM, ptxas; no GPU), in a process without TRITON_INTERPRET,
    through ``engines/compile_check.py`` (as the gated kernels): every kernel compiles,
    and its report gives registers, spills and shared memory per variant (spills are
    printed, not judged: at hidden 16 two ``row_conv_kernel`` variants spill 16 bytes).
    At small widths: every kernel and specialisation (cond, 3 scales, tokens,
    categorical) compiles in under a minute, where bench-pp32's width 80 takes minutes
    of ptxas alone; that preset's check is the prepared run ``python -m
    pixelaux.engines.compile_check --preset bench-pp32`` of docs/design.md section 2.4."""
    import triton.backends
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this triton has no NVIDIA backend")
    code = ("from pixelaux.engines.cached_triton import compile_for_gpu\n"
            "r = compile_for_gpu([dict(channels=3, bits=8, hidden=16, blocks=1, scales=3, nr_mix=10,\n"
            "                          cond_channels=2),\n"
            "                     dict(channels=1, bits=4, hidden=5, blocks=0, scales=2, dist='categorical'),\n"
            "                     dict(channels=1, bits=16, hidden=5, blocks=0, scales=2, dist='categorical',\n"
            "                          embed_dim=40)])\n"
            "print(len(r), 'variants', sorted({n for n, m in r}))\n"
            "print('spills:', [(n, m) for n, m in r if m.get('stack') or m.get('local')])\n"
            "from pixelaux.engines.compile_check import header, report\n"
            "print(header(90))\n"
            "print('\\n'.join(report(dict(enumerate(m for _, m in r)))[0]))\n")
    out = run_without_interpreter(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "variants" in out.stdout, out.stdout
    for name in ("row_init_kernel", "row_conv_kernel", "row_deconv_kernel", "advance_row_kernel", "pixel_init_kernel",
                 "pixel_block_kernel", "pixel_down_kernel", "pixel_deconv_kernel", "pixel_head_kernel"):
        assert f"pp_row.{name}" in out.stdout or f"pp_pixel.{name}" in out.stdout, (name, out.stdout)
    # compile_check's report: the toolchain, then registers, spills and shared memory per variant
    assert f"triton {triton.__version__}, ptxas" in out.stdout, out.stdout
    variants = [ln for ln in out.stdout.splitlines() if ln.startswith("pp_")]
    assert variants and all("smem=" in ln and " reg=" in ln and " stack=" in ln for ln in variants), out.stdout
