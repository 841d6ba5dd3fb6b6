"""The C++ cached engine (``backend="cpp"``) of a ``GatedPixelCNN``: what is specific to it.

The exactness contract of docs/design.md section 2.7 (teacher forcing and the naive
engine's images, every input kind) is checked for every backend in
``test_conformance.py``; here: the sampler's arithmetic against ``sample_flat``, each
CPU kernel family (one process per family), thread modes, weight packing and its cache,
the op's schema, fake tensors and argument checks, the input table, and the progress
bar and Ctrl-C inside the op.
"""

import pytest
import torch

from helpers import assert_matches_forward, random_gated, random_pp, single_thread
from pixelaux import GatedPixelCNN
from pixelaux import native

pytestmark = pytest.mark.skipif(not native.available(),
                                reason=f"pixelaux._C is not built: {native.reason()}")

if native.available():
    from pixelaux.engines import cached_cpp
    from pixelaux.engines import plan as P

# name: (model kwargs, init std, (H, W), batch, cond?)
CONFIGS = {
    "k3-b1-rgb8": (dict(channels=3, bits=8, hidden=12, blocks=1, kernel_size=3, dist="logistic", nr_mix=3),
                   0.2, (7, 5), 5),
    "k3-b3-cat4-cond": (dict(channels=1, bits=4, hidden=10, blocks=3, kernel_size=3, dist="categorical",
                             cond_channels=2), 0.15, (6, 11), 1),
    "k3-b1-cat2-rgb": (dict(channels=3, bits=2, hidden=17, blocks=1, kernel_size=3, dist="categorical"),
                       0.3, (7, 5), 3),
}


def make(name, seed=0, size=None, batch=None):
    kwargs, std, (h, w), b = CONFIGS[name]
    h, w = size or (h, w)
    b = batch or b
    torch.manual_seed(seed)
    model = GatedPixelCNN(image_size=(h, w), **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    cc = kwargs.get("cond_channels", 0)
    cond = torch.randn(b, cc, h, w) if cc else None
    x = torch.randint(0, 2 ** model.bits, (b, model.channels, h, w))
    u = torch.rand(b, h, w, model.dist.num_uniforms)
    return model, x, cond, u


def test_sampling_arithmetic_matches_distribution():
    """Constant parameters (head bias only): the C++ sampler and ``sample_flat`` map
    the same uniforms to the same pixels, for both distributions."""
    torch.manual_seed(3)
    # 2**12 and 2**16 values, and 13 mixture components (a partial vector): torch's
    # softmax sums in its lanes' order, which the C++ sampler must follow
    for kwargs in (dict(channels=3, bits=8, dist="logistic", nr_mix=5),
                   dict(channels=1, bits=5, dist="categorical"),
                   dict(channels=2, bits=16, dist="logistic", nr_mix=3),
                   dict(channels=3, bits=8, dist="logistic", nr_mix=13),
                   dict(channels=2, bits=12, dist="categorical"),
                   dict(channels=1, bits=16, dist="categorical")):
        model = GatedPixelCNN(hidden=4, blocks=0, kernel_size=1, **kwargs).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
            model.head.bias.normal_(0.0, 2.0)
        b, h, w = (2, 8, 8) if kwargs["bits"] >= 12 else (4, 16, 16)
        x = torch.zeros(b, model.channels, h, w, dtype=torch.long)
        u = torch.rand(b, h, w, model.dist.num_uniforms)
        for t in (1.0, 0.7):
            out = cached_cpp.run(model, x, None, None, u, t)
            params = model.head.bias.view(1, -1, 1, 1).expand(b, -1, h, w)
            ref = model.dist.sample(params, u, t)
            equal = (out == ref).float().mean().item()
            assert equal >= 0.999, f"{kwargs}: {equal:.4%} equal"


@pytest.mark.parametrize("give_up", ["1", "0"])
def test_thread_splits_give_identical_results(give_up, monkeypatch):
    """Images over threads, channels over a team, row starts over a team: the same
    arithmetic per element, so bitwise the same images and parameters. (A team whose
    threads are late on a busy machine goes on with one thread; "0" forbids that.)"""
    monkeypatch.setenv("PIXELAUX_TEAM_GIVE_UP", give_up)
    torch.manual_seed(2)
    # hidden=40: three panels of 16 channels (the last one partial), shared unevenly
    model = GatedPixelCNN(channels=3, bits=8, hidden=40, blocks=2, kernel_size=3, nr_mix=3,
                          cond_channels=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    x = torch.randint(0, 256, (3, 3, 6, 7))
    cond = torch.randn(3, 2, 6, 7)
    u = torch.rand(3, 6, 7, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        outs = [cached_cpp.run(model, x, None, cond, u, 1.0, return_params=True, mode=m) for m in range(4)]
    finally:
        torch.set_num_threads(threads)
    for m, (o, p) in enumerate(outs[1:], 1):
        assert torch.equal(o, outs[0][0]), f"mode {m} images differ"
        assert torch.equal(p, outs[0][1]), f"mode {m} params differ"


def test_batch_independence():
    """Image k is the same whatever the batch it is sampled in."""
    model, x, cond, u = make("k3-b1-rgb8", seed=4)
    full = cached_cpp.run(model, x, None, cond, u, 1.0)
    one = cached_cpp.run(model, x[2:3], None, cond, u[2:3], 1.0)
    assert torch.equal(full[2:3], one)


def test_packed_weights_follow_parameter_updates():
    model, x, cond, u = make("k3-b1-cat2-rgb", seed=5)
    b, _, h, w = x.shape
    known = torch.ones(b, h, w, dtype=torch.bool)
    first = cached_cpp.packed_weights(model)
    assert cached_cpp.packed_weights(model) is first
    with torch.no_grad():
        model.head.bias.add_(1.0)
        model.ul_blocks[0].conv2.weight.mul_(1.5)
    assert cached_cpp.packed_weights(model) is not first
    _, params = cached_cpp.run(model, x, known, None, u, 1.0, return_params=True)
    assert_matches_forward(params, model, x)


def family_check():
    """Teacher forcing of a gated and a PixelCNNpp model with the kernel family of this
    process, which it returns (``build_info``) with both models' errors: hidden 20 (a
    full 16-lane panel and a partial one: the masked tails of every vector kernel), odd
    sizes, a global cond; and the pyramid's UNet encoder op against its module."""
    g = torch.Generator().manual_seed(0)
    cfg = dict(channels=3, bits=8, hidden=20, blocks=1, nr_mix=2, cond_channels=2, std=0.1)
    lines = [native.info().split()[0]]
    with single_thread():
        for model, run in ((random_gated(seed=1, image_size=(5, 7), **cfg), cached_cpp.run),
                           (random_pp(seed=2, scales=2, image_size=(4, 6), **cfg), cached_cpp.run)):
            h, w = model.image_size
            x = torch.randint(0, 256, (2, 3, h, w), generator=g)
            cond = torch.randn(2, 2, generator=g)
            u = torch.rand(2, h, w, model.dist.num_uniforms, generator=g)
            out, params = run(model, x, torch.ones(2, h, w, dtype=torch.bool), cond, u, 1.0, return_params=True)
            assert torch.equal(out, x)
            err, own = assert_matches_forward(params, model, x, cond, model.kind)
            lines.append(f"{model.kind} {err:.1e} {own:.1e}")
        from test_unet_encoder_cpp import unet_check
        err = unet_check()
        assert err < 1e-5, err
        lines.append(f"UNetEncoder {err:.1e}")
    return lines


def _cpu_flags():
    """The CPU's feature flags (Linux), or None where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


FAMILIES = {"generic": ("generic", set()), "avx2": ("avx2+fma", {"avx2", "fma"}),
            "avx512f": ("avx512f", {"avx512f", "avx2", "fma"})}      # name in build_info, CPU flags


def _in_this_process(family):
    """Whether this process already runs ``family`` (unset: the widest the CPU has)."""
    import os
    return os.environ.get("PIXELAUX_CPU_KERNELS", "avx512f") == family


@pytest.fixture(scope="module", autouse=True)
def family_runs(request):
    """``family_check`` in a subprocess per family the CPU has, besides this process's
    (the family is chosen once per process: a static in csrc/cpu/kernels.cpp), started
    with this module's first test, so that they run beside the tests before
    ``test_each_kernel_family_is_selected_and_matches_the_forward`` (the tests here use
    about one core); only for the families that test will check. ``{family: Popen}``."""
    import os
    import subprocess
    import sys
    wanted = {item.callspec.params["family"] for item in request.session.items
              if getattr(item, "originalname", "") == "test_each_kernel_family_is_selected_and_matches_the_forward"}
    flags = _cpu_flags() or set()
    tests = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {tests!r}); from test_cached_cpp import family_check; " \
           "print(*family_check(), sep=chr(10))"
    runs = {f: subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, PIXELAUX_CPU_KERNELS=f))
            for f, (_, need) in FAMILIES.items() if f in wanted and need <= flags and not _in_this_process(f)}
    yield runs
    for p in runs.values():
        if p.poll() is None:
            p.kill()
        p.communicate()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_kernel_family_is_selected_and_matches_the_forward(family, family_runs):
    """``PIXELAUX_CPU_KERNELS`` selects the family where the CPU has it (``build_info``
    names it), and each family's teacher forcing passes the float64-referenced gate."""
    want, need = FAMILIES[family]
    flags = _cpu_flags()
    if need and flags is None:
        pytest.skip("cannot read this CPU's flags")
    if need and not need <= flags:
        pytest.skip(f"this CPU lacks {sorted(need - flags)}")
    if _in_this_process(family):
        lines = family_check()
    else:
        out, err = family_runs[family].communicate(timeout=300)
        assert family_runs[family].returncode == 0, err[-3000:]
        lines = out.splitlines()
    assert lines[0] == f"kernels={want}", lines
    assert [line.split()[0] for line in lines[1:]] == ["GatedPixelCNN", "PixelCNNpp", "UNetEncoder"], lines


def test_op_schema_and_fake_tensor():
    model, x, cond, u = make("k3-b3-cat4-cond", seed=6)
    known = torch.rand(x.shape[0], *x.shape[2:]) < 0.5
    args = (x, known, cond, [], u, cached_cpp.packed_weights(model), cached_cpp.input_table(model),
            cached_cpp.config_of(model), 1.0, True, 0)
    torch.library.opcheck(torch.ops.pixelaux.cached_sample.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    schema = str(torch.ops.pixelaux.cached_sample.default._schema)
    assert schema.startswith("pixelaux::cached_sample(Tensor x, Tensor? known, Tensor? cond, Tensor[] cond_terms, "
                             "Tensor uniforms")


def test_bad_inputs_raise_clear_errors():
    model, x, cond, u = make("k3-b3-cat4-cond", seed=7)
    packed, cfg = cached_cpp.packed_weights(model), cached_cpp.config_of(model)
    table = cached_cpp.input_table(model)
    op = torch.ops.pixelaux.cached_sample
    b, _, h, w = x.shape
    with pytest.raises(TypeError, match="x must be int64"):
        op(x.float(), None, cond, [], u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        op(x[:, None], None, cond, [], u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="uniforms must have shape"):
        op(x, None, cond, [], u[..., :0], packed, table, cfg, 1.0)
    with pytest.raises(TypeError, match="uniforms must be float32"):
        op(x, None, cond, [], u.double(), packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="cond is required"):
        op(x, None, None, [], u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="cond must have shape"):
        op(x, None, cond[:, :1], [], u, packed, table, cfg, 1.0)
    with pytest.raises(TypeError, match="known must be a bool"):
        op(x, torch.ones(b, h, w, dtype=torch.uint8), cond, [], u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="known must have shape"):
        op(x, torch.ones(b, h, w + 1, dtype=torch.bool), cond, [], u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="known pixels of x must be in"):
        op(x + 100, torch.ones(b, h, w, dtype=torch.bool), cond, [], u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="packed must be"):
        op(x, None, cond, [], u, packed[:-1], table, cfg, 1.0)
    with pytest.raises(ValueError, match="temperature must be"):
        op(x, None, cond, [], u, packed, table, cfg, 0.0)
    with pytest.raises(ValueError, match="config"):
        op(x, None, cond, [], u, packed, table, cfg[:-1], 1.0)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        op(x, None, cond, [], u, packed, table, cfg[:5] + [4] + cfg[6:], 1.0)
    with pytest.raises(ValueError, match="mode must be"):
        op(x, None, cond, [], u, packed, table, cfg, 1.0, False, 7)
    raw, names = cached_cpp.raw_weights(model), cached_cpp.weight_names(model)
    with pytest.raises(ValueError, match="expected .* weight tensors"):
        torch.ops.pixelaux.pack_weights(raw[:-1], cfg)
    with pytest.raises(ValueError, match="head.weight must have shape"):    # named by the caller
        torch.ops.pixelaux.pack_weights(raw[:-2] + [raw[-2][:1], raw[-1]], cfg, names)
    with pytest.raises(ValueError, match=r"weight \d+ \(group \d+, head: conv.weight\) must have shape"):
        torch.ops.pixelaux.pack_weights(raw[:-2] + [raw[-2][:1], raw[-1]], cfg)
    with pytest.raises(ValueError, match="weight names"):
        torch.ops.pixelaux.pack_weights(raw, cfg, names[:-1])
    with pytest.raises(TypeError, match="must be float32"):
        torch.ops.pixelaux.pack_weights([r.double() for r in raw], cfg)


def test_the_packed_plan_is_checked():
    """The engine walks the plan's packed form (``cached_cpp.pack_plan``, after the model's
    ints in the config): one that does not fit the model is refused before anything runs."""
    model, x, cond, u = make("k3-b3-cat4-cond", seed=7)
    packed, cfg = cached_cpp.packed_weights(model), cached_cpp.config_of(model)
    table = cached_cpp.input_table(model)
    op = torch.ops.pixelaux.cached_sample
    nw, nh, nv, nr, np_, ng = cfg[11:17]
    first = 11 + 6 + 5 * nw + 2 * nh + 2 * nv                      # the first step's op code
    steps = [cfg[i:i + cached_cpp.STEP_INTS] for i in range(first, first + cached_cpp.STEP_INTS * (nr + np_),
                                                              cached_cpp.STEP_INTS)]
    block = first + cached_cpp.STEP_INTS * next(i for i, st in enumerate(steps)
                                                 if cached_cpp.OPS[st[0]] is P.RowBlock)
    for bad, what in [(cfg[:11], "plan .* is missing"), (cfg[:-1], "must have"),
                      (cfg[:first] + [99] + cfg[first + 1:], "bad step"),
                      (cfg[:block + 2] + [10 ** 6] + cfg[block + 3:], "bad step"),  # no such weight group
                      (cfg[:block + 8] + cfg[block + 4:block + 5] + cfg[block + 9:], "bad block step")]:  # a skip, no nin
        with pytest.raises(ValueError, match=what):
            op(x, None, cond, [], u, packed, table, bad, 1.0)
    assert torch.equal(op(x, None, cond, [], u, packed, table, cfg, 1.0)[0],
                       cached_cpp.run(model, x, None, cond, u, 1.0))


# ---- token inputs (embed_dim > 0) --------------------------------------------------------


# name: (model kwargs, (H, W)); random N(0, 0.2^2) weights, embedding tables included
TOKEN_CONFIGS = {
    "gray9-cat": (dict(channels=1, bits=9, hidden=8, blocks=2, kernel_size=3, dist="categorical",
                       embed_dim=4), (5, 6)),
    "rgb9-cat-cond": (dict(channels=3, bits=9, hidden=10, blocks=1, kernel_size=3, dist="categorical",
                           embed_dim=3, cond_channels=2), (5, 6)),
}


def make_tokens(name, seed=0):
    kwargs, size = TOKEN_CONFIGS[name]
    return random_gated(seed=seed, image_size=size, **kwargs), size


def test_tokens_follow_embedding_updates():
    """The table is read at every call: an updated embedding is what the next call writes."""
    model, (h, w) = make_tokens("rgb9-cat-cond", seed=2)
    x = torch.randint(0, 2 ** model.bits, (1, 3, h, w))
    cond = torch.randn(1, 2, h, w)
    known = torch.ones(1, h, w, dtype=torch.bool)
    u = torch.rand(1, h, w, 3)
    with torch.no_grad():
        model.input.embed.weight.mul_(-2.0)
    _, params = cached_cpp.run(model, x, known, cond, u, 1.0, return_params=True)
    assert_matches_forward(params, model, x, cond)


def test_table_argument_is_checked():
    model, (h, w) = make_tokens("gray9-cat")
    x = torch.randint(0, 512, (1, 1, h, w))
    u = torch.rand(1, h, w, 1)
    packed, cfg = cached_cpp.packed_weights(model), cached_cpp.config_of(model)
    table = cached_cpp.input_table(model)
    assert table.shape == (1, 512, 4) and cfg[10] == 4                   # embed_dim, then the plan
    op = torch.ops.pixelaux.cached_sample
    with pytest.raises(ValueError, match=r"table must have shape \(1, 512, 4\)"):
        op(x, None, None, [], u, packed, table[:, :, :3], cfg, 1.0)
    with pytest.raises(TypeError, match="table must be float32"):
        op(x, None, None, [], u, packed, table.double(), cfg, 1.0)
    with pytest.raises(ValueError, match="u_init.weight must have shape"):  # embed_dim 4 is 5 inputs
        torch.ops.pixelaux.pack_weights(cached_cpp.raw_weights(model), cfg[:10] + [2] + cfg[11:],
                                        cached_cpp.weight_names(model))


# ---- progress and Ctrl-C inside the op -------------------------------------------------

class RecordingBar:
    """Stands in for tqdm: records the bar's position after each update; on_update(bar)
    runs after each (it may raise, as a tqdm callback interrupted by Ctrl-C would)."""
    on_update = None
    last = None

    def __init__(self, total=None, **kwargs):
        self.total, self.n, self.seen = total, 0, []
        RecordingBar.last = self

    def update(self, k=1):
        self.n += k
        self.seen.append(self.n)
        if RecordingBar.on_update:
            RecordingBar.on_update(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def recording_bar(monkeypatch):
    import tqdm.auto

    from pixelaux.engines import progress
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.002)
    monkeypatch.setattr(RecordingBar, "on_update", None)
    return RecordingBar


def slow_model(h=24, w=24, b=1):
    """Rows of about a millisecond or more each (the bar is polled every 2 ms)."""
    torch.manual_seed(8)
    model = GatedPixelCNN(channels=3, bits=8, hidden=48, blocks=6, nr_mix=3, image_size=(h, w)).eval()
    return model, torch.zeros(b, 3, h, w, dtype=torch.long), torch.rand(b, h, w, 4)


def stopped_rows(exc):
    """(rows done, rows done when the stop was asked, rows in all) from the note run_native adds."""
    import re
    note = " ".join(getattr(exc, "__notes__", []))
    m = re.search(r"stopped after (\d+) of (\d+) image rows \(stop asked after (\d+)\)", note)
    assert m, f"no stop note in {note!r}"
    return int(m.group(1)), int(m.group(3)), int(m.group(2))


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_progress_bar_moves_row_by_row(recording_bar, mode):
    model, x, u = slow_model(b=2)
    h, w = x.shape[2:]
    with single_thread():
        ref = cached_cpp.run(model, x, None, None, u, 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = cached_cpp.run(model, x, None, None, u, 1.0, progress=True, mode=mode)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out, ref)
    bar = recording_bar.last
    assert bar.total == h * w and bar.n == h * w
    assert len(bar.seen) >= 2, f"the bar only moved at the end: {bar.seen}"
    # counted in rows of the images: B rows make one row of the bar (W pixels)
    assert all(n % (w // 2) == 0 for n in bar.seen), bar.seen


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_interrupt_from_the_bar_stops_within_a_row(recording_bar, mode):
    model, x, u = slow_model(b=2)

    def interrupt(bar):
        raise KeyboardInterrupt

    recording_bar.on_update = interrupt
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            cached_cpp.run(model, x, None, None, u, 1.0, progress=True, mode=mode)
    finally:
        torch.set_num_threads(threads)
    done, asked, total = stopped_rows(e.value)
    assert total == 2 * x.shape[2] and done < total
    assert done <= asked + 2, f"{done} rows done, stop asked after {asked}: more than a row per image"


def test_ctrl_c_signal_stops_the_op_within_a_row(recording_bar):
    import os
    import signal
    model, x, u = slow_model()
    recording_bar.on_update = lambda bar: os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
    with single_thread(), pytest.raises(KeyboardInterrupt) as e:
        cached_cpp.run(model, x, None, None, u, 1.0, progress=True)
    done, asked, total = stopped_rows(e.value)
    assert done < total and done <= asked + 1
    # and the op still samples afterwards (nothing left behind)
    with single_thread():
        recording_bar.on_update = None
        assert cached_cpp.run(model, x, None, None, u, 1.0).shape == x.shape


def test_progress_tensor_is_checked():
    model, x, cond, u = make("k3-b1-rgb8", seed=9)
    packed, cfg = cached_cpp.packed_weights(model), cached_cpp.config_of(model)
    table = cached_cpp.input_table(model)
    op = torch.ops.pixelaux.cached_sample
    with pytest.raises(TypeError, match="progress must be an int64"):
        op(x, None, cond, [], u, packed, table, cfg, 1.0, False, 0, torch.zeros(2))
    with pytest.raises(ValueError, match=r"progress must be a contiguous tensor of shape \(2,\)"):
        op(x, None, cond, [], u, packed, table, cfg, 1.0, False, 0, torch.zeros(3, dtype=torch.long))
    counter = torch.tensor([0, 1])  # stop asked before the first row: nothing sampled
    out, _ = op(x, None, cond, [], u, packed, table, cfg, 1.0, False, 0, counter)
    assert torch.equal(out, x) and counter[0] == 0
    counter = torch.zeros(2, dtype=torch.long)
    op(x, None, cond, [], u, packed, table, cfg, 1.0, False, 0, counter)
    assert counter[0] == x.shape[0] * x.shape[2]


@pytest.mark.parametrize("cond_kind", ["map", "vector"])
def test_the_engine_knows_no_family_cond_terms_given_to_a_gated_plan(monkeypatch, cond_kind):
    """The engine reads topology and weights from the packed plan and no family: a
    GatedPixelCNN run as a family outside ``COND_IN_ENGINE`` would be (its cond terms
    computed in Python, ``cached_cpp.cond_terms``, the config's ``cond_in_engine`` 0)
    teacher-forces as the forward and samples the naive engine's images."""
    from helpers import assert_same_images, random_cond
    from pixelaux.engines import cached_cpp, naive
    monkeypatch.setattr(cached_cpp, "COND_IN_ENGINE", ())
    model = random_gated(seed=5, channels=3, bits=5, hidden=8, blocks=2, nr_mix=2, cond_channels=3)
    h, w = 5, 6
    x = torch.randint(0, 2 ** model.bits, (2, 3, h, w), generator=torch.Generator().manual_seed(1))
    cond = random_cond(model, 2, h, w, seed=2)
    if cond_kind == "vector":
        cond = cond[:, :, 0, 0].contiguous()
    assert cached_cpp.config_of(model)[0] == 0 and cached_cpp.cond_terms(model, cond)
    full = torch.ones(2, h, w, dtype=torch.bool)
    _, params = cached_cpp.run(model, x, full, cond, torch.rand(2, h, w, model.dist.num_uniforms), 1.0,
                               return_params=True)
    fcond = cond if cond.dim() == 4 else cond[:, :, None, None].expand(-1, -1, h, w)
    assert_matches_forward(params, model, x, fcond)
    u = torch.rand(2, h, w, model.dist.num_uniforms, generator=torch.Generator().manual_seed(3))
    ref = naive.run(model, torch.zeros_like(x), None, cond, u, 1.0)
    got, got_params = cached_cpp.run(model, torch.zeros_like(x), None, cond, u, 1.0, return_params=True)
    assert_same_images(model, cond, u, 1.0, ref, got, got_params, "cond terms given")
