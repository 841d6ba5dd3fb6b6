"""Weight normalization and data-dependent init (docs/design.md section 1.7, ``pixelaux.weight_norm``).

* layout: every conv is weight-normed per output channel (a transposed conv's dim 1),
  ``.weight`` is ``g * V / ||V||``, the config and state dict say so, and it is a pure
  reparametrization (same function as the plain model built from the same seed);
* data-dependent init: on the init batch every weight-normed layer's output has per-channel
  mean 0 (layers with a bias) and standard deviation ``init_scale`` (0.1 for the gated
  blocks' second conv), for each network kind; constant channels stay finite;
* sampling: weight-normed models with random (not initialized) ``g`` / ``V`` sample the
  naive engine's images with every backend (torch, cpp, triton), teacher forcing within
  1e-4; the torch engines compute each folded weight once per call, not per pixel; the
  packed C++ weights follow ``g`` and ``V`` when they change in place (a training step);
* checkpoints: weight-normed models round-trip; the embedded models load without weight
  norm and score exactly as before it existed;
* causality after init; training initializes a new weight-normed model once, on the
  first batch, and not on resume; a bad ``weight_norm`` is a ``ValueError`` naming it.
"""
import pytest
import torch

from helpers import assert_causal, assert_same_images, one_thread, param_error, randomize  # noqa: F401
import pixelaux
from pixelaux import checkpoint as ck
from pixelaux import native, pretrained, training
from pixelaux import weight_norm as wn
from pixelaux.encoders import ResNetEncoder, UNetEncoder
from pixelaux.engines import cached_cpp, cached_torch, naive

pytestmark = pytest.mark.usefixtures("one_thread")    # tiny ops: threads only add spin-waits


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gated(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(channels=3, bits=5, hidden=6, blocks=2, nr_mix=2, cond_channels=2, image_size=(5, 6),
               weight_norm=True)
    cfg.update(kw)
    return pixelaux.GatedPixelCNN(**cfg)


def _pp(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(channels=3, bits=5, hidden=6, blocks=1, scales=2, nr_mix=2, dropout=0.0, cond_channels=2,
               image_size=(4, 4), weight_norm=True)
    cfg.update(kw)
    return pixelaux.PixelCNNpp(**cfg)


def _images(model, n, size, seed=0):
    return torch.randint(0, 2 ** model.bits, (n, model.channels, *size), generator=_gen(seed))


def _cond(model, n, size, seed=1):
    return torch.randn(n, model.cond_channels, *size, generator=_gen(seed)) if model.cond_channels else None


def _random_g_v(model, seed=3):
    """Random ``g`` and ``V`` (and biases), not an initialization: ``g`` ~ N(0, 1), the rest N(0, 0.2^2)."""
    randomize(model, std=0.2, seed=seed)
    g = _gen(seed + 1)
    with torch.no_grad():
        for _, m in wn.layers(model):
            g0 = m.parametrizations.weight.original0
            g0.copy_(torch.randn(g0.shape, generator=g))
    return model


# -- argument checks ---------------------------------------------------------------------

BUILDERS = {
    "GatedPixelCNN": lambda v: pixelaux.GatedPixelCNN(hidden=4, blocks=1, weight_norm=v),
    "PixelCNNpp": lambda v: pixelaux.PixelCNNpp(hidden=4, blocks=1, weight_norm=v),
    "ResNetEncoder": lambda v: ResNetEncoder(1, 4, 4, 1, 4, weight_norm=v),
    "UNetEncoder": lambda v: UNetEncoder(1, 4, 4, 4, weight_norm=v),
    "GrayscalePixelCNN": lambda v: pixelaux.GrayscalePixelCNN(hidden=4, blocks=1, weight_norm=v),
    "PyramidPixelCNN": lambda v: pixelaux.PyramidPixelCNN(hidden=4, blocks=1, weight_norm=v),
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_weight_norm_is_a_value_error_naming_it(kind, value):
    with pytest.raises(ValueError, match="weight_norm must be True or False"):
        BUILDERS[kind](value)


def test_bad_init_arguments():
    m = _gated(cond_channels=0)
    x = _images(m, 2, (3, 3))
    with pytest.raises(ValueError, match="init_scale"):
        wn.data_dependent_init(m, x, init_scale=0.0)
    with pytest.raises(ValueError, match="no weight-normed layers"):
        wn.data_dependent_init(_gated(cond_channels=0, weight_norm=False), x)
    with pytest.raises(ValueError, match="cond"):        # a conditional model without its cond
        wn.data_dependent_init(_gated(), x)


# -- layout ------------------------------------------------------------------------------

def test_every_conv_is_weight_normed_per_output_channel():
    m = _random_g_v(_pp())
    convs = [mod for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(wn.layers(m)) == len(convs) > 0
    assert any(isinstance(c, torch.nn.ConvTranspose2d) for c in convs)
    for c in convs:
        d = 1 if isinstance(c, torch.nn.ConvTranspose2d) else 0      # (in, out, kh, kw) for a transposed conv
        g, v = c.parametrizations.weight.original0, c.parametrizations.weight.original1
        out = c.out_channels
        assert g.shape[d] == out and g.numel() == out
        dims = [k for k in range(v.dim()) if k != d]
        expected = g * v / v.pow(2).sum(dims, keepdim=True).sqrt()
        assert (c.weight - expected).abs().max() <= 1e-6 * expected.abs().max()
    keys = set(m.state_dict())
    assert not any(k.endswith(".weight") for k in keys)
    assert "head.parametrizations.weight.original0" in keys and "head.parametrizations.weight.original1" in keys
    assert m.config["weight_norm"] is True
    plain = _pp(weight_norm=False)
    assert "weight_norm" not in plain.config and not wn.has_weight_norm(plain)
    assert "head.weight" in plain.state_dict()


@pytest.mark.parametrize("build", [_gated, _pp], ids=["gated", "pp"])
def test_weight_norm_is_a_reparametrization(build):
    """Built from the same seed, the weight-normed model is the plain one's function."""
    a, b = build(weight_norm=False).eval(), build().eval()
    size = tuple(a.image_size)
    x, c = _images(a, 3, size), _cond(a, 3, size)
    with torch.no_grad():
        ya, yb = a(x, c), b(x, c)
    assert (yb - ya).abs().max() <= 1e-5 * ya.abs().max()


# -- data-dependent init -----------------------------------------------------------------

def _init_cases():
    return {
        "gated-cond": (lambda: _gated(), (5, 6)),
        "gated-global-cond": (lambda: _gated(blocks=1, kernel_size=5), (4, 5)),
        "pp-cond": (lambda: _pp(), (4, 4)),
        "pp-3scales": (lambda: _pp(scales=3, cond_channels=0, image_size=(8, 8)), (8, 8)),
        "resnet-encoder": (lambda: ResNetEncoder(1, 4, 5, 2, 3, weight_norm=True), (5, 6)),
        "unet-encoder": (lambda: UNetEncoder(3, 5, 5, 3, weight_norm=True), (3, 4)),
        "pyramid": (lambda: pixelaux.PyramidPixelCNN(channels=1, bits=4, image_size=8, seed_size=4, hidden=4,
                                                     blocks=1, nr_mix=2, weight_norm=True), (8, 8)),
    }


@pytest.mark.parametrize("case", sorted(_init_cases()))
def test_init_gives_zero_mean_and_init_scale_std(case):
    make, size = _init_cases()[case]
    torch.manual_seed(0)
    model = make()
    channels, bits = ((model.in_channels, model.in_bits) if isinstance(model, (ResNetEncoder, UNetEncoder))
                      else (model.channels, model.bits))
    x = torch.randint(0, 2 ** bits, (6, channels, *size), generator=_gen(5))
    cond = None
    if getattr(model, "cond_channels", 0):
        cond = (torch.randn(6, model.cond_channels, generator=_gen(6)) if case == "gated-global-cond"
                else torch.randn(6, model.cond_channels, *size, generator=_gen(6)))
    assert wn.needs_init(model)
    assert wn.initialize(model, x, cond, init_scale=1.0)
    assert not wn.needs_init(model) and not wn.initialize(model, x, cond)     # once
    gates = wn.gate_convs(model)
    assert bool(gates) == (case not in ("resnet-encoder", "unet-encoder"))
    seen = {}
    hooks = [mod.register_forward_hook(lambda mod, a, out, n=n: seen.setdefault(n, out.detach()))
             for n, mod in wn.layers(model)]
    with torch.no_grad():
        model(x) if cond is None else model(x, cond)
    for h in hooks:
        h.remove()
    assert len(seen) == len(wn.layers(model))
    for n, mod in wn.layers(model):
        out = seen[n]
        dims = [d for d in range(out.dim()) if d != 1]
        mean, std = out.mean(dims), out.var(dims, unbiased=False).sqrt()
        scale = 0.1 if id(mod) in gates else 1.0
        if mod.bias is not None:
            assert mean.abs().max() <= 1e-4 * scale, (n, mean)
        assert ((std - scale).abs() <= 2e-3 * scale).all(), (n, std)


def test_init_scale_is_applied():
    m = _pp(cond_channels=0)
    x = _images(m, 4, (4, 4))
    wn.data_dependent_init(m, x, init_scale=0.5, gate_scale=0.25)
    seen = {}
    h1 = m.u_init.register_forward_hook(lambda mod, a, out: seen.setdefault("u_init", out))
    h2 = m.up_layers[0].u_stream[0].conv2.register_forward_hook(lambda mod, a, out: seen.setdefault("gate", out))
    with torch.no_grad():
        m(x)
    h1.remove()
    h2.remove()
    for name, scale in (("u_init", 0.5), ("gate", 0.25)):
        std = seen[name].var((0, 2, 3), unbiased=False).sqrt()
        assert std.numel() > 1 and ((std - scale).abs() <= 2e-3 * scale).all(), (name, std)


def test_constant_channels_keep_unit_scale():
    """A global cond that is the same for every image: its projections do not vary over the
    batch, so they keep scale 1 instead of a division by ~0."""
    m = _gated(blocks=1)
    x = _images(m, 4, (4, 5))
    cond = torch.randn(1, 2, generator=_gen(2)).expand(4, -1)
    wn.data_dependent_init(m, x, cond)
    for blk in (m.u_blocks[0], m.ul_blocks[0]):
        for conv in (blk.cond_c1, blk.cond_c2):
            g = conv.parametrizations.weight.original0
            assert torch.equal(g, torch.ones_like(g))
    assert all(torch.isfinite(p).all() for p in m.parameters())
    with torch.no_grad():
        assert torch.isfinite(m(x, cond)).all()


@pytest.mark.parametrize("build,size", [(_gated, (4, 5)), (_pp, (4, 4))], ids=["gated", "pp"])
def test_causal_after_init(build, size):
    m = build()
    x, c = _images(m, 6, size), _cond(m, 6, size)
    wn.data_dependent_init(m, x, c)
    assert_causal(m.eval(), x[:1], c[:1], m.bits)


# -- sampling ----------------------------------------------------------------------------

def _backend_run(model, backend):
    if backend == "torch":
        return cached_torch.run
    if backend == "cpp":
        if not native.available():
            pytest.skip(f"the cpp backend is not built: {native.reason()}")
        return cached_cpp.run
    pytest.importorskip("triton", reason="triton is not installed")
    from pixelaux.engines import cached_triton
    ok, why = cached_triton.status(torch.device("cpu"))
    if not ok:
        pytest.skip(why)
    return cached_triton.run


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("build,size", [(lambda: _gated(blocks=1), (3, 4)), (lambda: _pp(hidden=4), (2, 4))],
                         ids=["gated", "pp"])
def test_cached_equals_naive_with_weight_norm(build, size, backend):
    model = _random_g_v(build()).eval()
    run = _backend_run(model, backend)
    b = 2
    cond = _cond(model, b, size)
    u = torch.rand(b, *size, model.dist.num_uniforms, generator=_gen(7))
    x0 = torch.zeros(b, model.channels, *size, dtype=torch.long)
    ref = naive.run(model, x0, None, cond, u, 1.0)
    got, params = run(model, x0, None, cond, u, 1.0, return_params=True)
    assert ref.float().std() > 0                                   # not constant images
    with torch.no_grad():
        assert param_error(params, model(got, cond)) <= 1e-4      # teacher forcing on its own images
    lines = assert_same_images(model, cond, u, 1.0, ref, got, params, f"{backend}-{model.kind}")
    assert (ref == got).float().mean() >= 0.9, lines


@pytest.mark.parametrize("build,size", [(lambda: _gated(blocks=1), (4, 5)), (lambda: _pp(hidden=4), (4, 4))],
                         ids=["gated", "pp"])
def test_torch_engines_fold_each_weight_once_per_call(build, size, monkeypatch):
    model = _random_g_v(build()).eval()
    calls = []
    cls = torch.nn.utils.parametrizations._WeightNorm
    orig = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, g, v: calls.append(1) or orig(self, g, v))
    cond = _cond(model, 1, size)
    u = torch.rand(1, *size, model.dist.num_uniforms, generator=_gen(7))
    x0 = torch.zeros(1, model.channels, *size, dtype=torch.long)
    n = len(wn.layers(model))
    for run in (naive.run, cached_torch.run):
        calls.clear()
        run(model, x0, None, cond, u, 1.0)
        assert 0 < len(calls) <= n, (run.__module__, len(calls), n)   # not once per pixel
    calls.clear()
    cached_torch.run(model, x0, None, cond, u, 1.0)
    assert not calls                  # the torch backend's folded copy is kept per weight version
    with torch.no_grad():
        model(x0, cond)
    assert len(calls) == n            # outside sampling: computed on each read, as training needs


def test_plain_copy_holds_the_folded_weights_per_weight_version():
    model = _random_g_v(_pp())
    twin = wn.plain(model)
    assert twin is not model and wn.plain(model) is twin and not wn.has_weight_norm(twin)
    unnormed = _pp(weight_norm=False)
    assert wn.plain(twin) is twin and wn.plain(unnormed) is unnormed
    for name, conv in wn.layers(model):
        tconv = twin.get_submodule(name)
        assert type(tconv) is type(conv).__bases__[0] and isinstance(tconv.weight, torch.nn.Parameter)
        assert torch.equal(tconv.weight, conv.weight), name
    with torch.no_grad():
        model.head.parametrizations.weight.original0.mul_(2.0)       # in place, as a training step
    again = wn.plain(model)
    assert again is not twin and torch.equal(again.head.weight, model.head.weight)
    assert wn.has_weight_norm(model) and model.head.weight.shape == again.head.weight.shape   # original intact
    x, c = _images(model, 2, (4, 4)), _cond(model, 2, (4, 4))
    with torch.no_grad():
        assert torch.equal(again.eval()(x, c), model.eval()(x, c))


@pytest.mark.parametrize("build,size", [(lambda: _gated(blocks=1), (4, 5)), (lambda: _pp(hidden=4), (4, 4))],
                         ids=["gated", "pp"])
def test_packed_cpp_weights_follow_g_and_v(build, size):
    if not native.available():
        pytest.skip(f"the cpp backend is not built: {native.reason()}")
    model = _random_g_v(build()).eval()
    eng, pack = cached_cpp, torch.ops.pixelaux.pack_weights
    p1 = eng.packed_weights(model)
    assert eng.packed_weights(model) is p1                       # once per weight version
    with torch.no_grad():
        want = pack([w.detach().float() for w in eng.raw_weights(model)], eng.config_of(model))
    assert torch.equal(p1, want)
    with torch.no_grad():                                          # as an optimizer step does: in place
        model.head.parametrizations.weight.original0.mul_(1.5)
        model.u_init.parametrizations.weight.original1.add_(0.1)
    p2 = eng.packed_weights(model)
    assert p2 is not p1 and not torch.equal(p2, p1)
    with torch.no_grad():
        want = pack([w.detach().float() for w in eng.raw_weights(model)], eng.config_of(model))
    assert torch.equal(p2, want)
    x, c = _images(model, 2, size), _cond(model, 2, size)
    u = torch.rand(2, *size, model.dist.num_uniforms, generator=_gen(8))
    _, params = eng.run(model, x, torch.ones(2, *size, dtype=torch.bool), c, u, 1.0, return_params=True)
    with torch.no_grad():
        assert param_error(params, model(x, c)) <= 1e-4


def test_triton_run_cache_key_follows_g_and_v():
    cached_triton = pytest.importorskip("pixelaux.engines.cached_triton", reason="triton is not installed")
    model = _random_g_v(_gated(blocks=1))
    before = cached_triton.weights_version(model)
    assert cached_triton.weights_version(model) == before
    with torch.no_grad():
        model.ul_blocks[0].conv2.parametrizations.weight.original0.mul_(2.0)
    assert cached_triton.weights_version(model) != before


# -- checkpoints -------------------------------------------------------------------------

@pytest.mark.parametrize("build", [_gated, _pp], ids=["gated", "pp"])
def test_checkpoint_round_trip(tmp_path, build):
    m = _random_g_v(build())
    path = ck.save(m, tmp_path / "wn.safetensors")
    loaded = ck.load(path)
    assert loaded.config == m.config and loaded.config["weight_norm"] is True
    assert wn.has_weight_norm(loaded) and not wn.needs_init(loaded)     # loaded weights are not re-initialized
    sd, sl = m.state_dict(), loaded.state_dict()
    assert sd.keys() == sl.keys() and all(torch.equal(sd[k], sl[k]) for k in sd)
    size = tuple(m.image_size)
    x, c = _images(m, 2, size), _cond(m, 2, size)
    with torch.no_grad():
        assert torch.equal(loaded(x, c), m.eval()(x, c))


def test_composite_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    m = pixelaux.GrayscalePixelCNN(hidden=4, blocks=1, nr_mix=2, encoder_blocks=1, image_size=(4, 4),
                                   weight_norm=True)
    assert all(wn.has_weight_norm(p) for p in (m.prior, m.encoder, m.colour))
    x = torch.randint(0, 256, (3, 3, 4, 4), generator=_gen(0))
    wn.data_dependent_init(m, x)
    loaded = ck.load(ck.save(m, tmp_path / "gray.safetensors"))
    assert loaded.config == m.config and wn.has_weight_norm(loaded.encoder)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x), m.eval().log_prob(x))


def test_composite_samples_alike_with_every_cpu_backend():
    """A weight-normed grayscale model (encoder included) through ``pixelaux.sample``."""
    torch.manual_seed(0)
    m = pixelaux.GrayscalePixelCNN(hidden=4, blocks=1, nr_mix=2, encoder_blocks=1, image_size=(4, 4),
                                   weight_norm=True)
    _random_g_v(m)
    ref = pixelaux.sample(m, 2, engine="naive", generator=_gen(3), progress=False)
    assert ref.float().std() > 0
    backends = ["torch"] + (["cpp"] if native.available() else [])
    for backend in backends:
        got = pixelaux.sample(m, 2, backend=backend, generator=_gen(3), progress=False)
        assert (got == ref).float().mean() >= 0.99, backend


# The embedded models' log-likelihoods of two fixed random images, computed before weight
# norm existed: they load unchanged (no weight norm, same keys) and score the same.
EMBEDDED = {"default": [-24674.68359375, -24458.07421875], "pyramid": [-26407.642578125, -26362.09375]}


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_models_load_unchanged(name):
    m = pixelaux.load(name)
    assert not wn.has_weight_norm(m) and not wn.needs_init(m)
    assert "weight_norm" not in str(ck.read_header(pretrained.pretrained_path(name))["config"])
    assert all(k.endswith((".weight", ".bias")) for k in m.state_dict())
    x = torch.randint(0, 256, (2, 3, 32, 32), generator=_gen(0))
    with torch.no_grad():
        lp = m.log_prob(x)
    want = torch.tensor(EMBEDDED[name])
    assert ((lp - want).abs() <= 1e-5 * want.abs()).all(), (lp.tolist(), want.tolist())


# -- training ----------------------------------------------------------------------------

def test_training_initializes_a_new_model_once(tmp_path, monkeypatch):
    calls = []
    orig = wn.data_dependent_init
    monkeypatch.setattr(wn, "data_dependent_init", lambda model, x, *a, **k: calls.append(x.clone()) or
                        orig(model, x, *a, **k))
    torch.manual_seed(0)
    m = pixelaux.GatedPixelCNN(channels=1, bits=4, hidden=4, blocks=1, dist="categorical", image_size=(4, 4),
                               weight_norm=True)
    data = torch.randint(0, 16, (16, 1, 4, 4), generator=_gen(1))
    quiet = dict(progress=False, log=lambda s: None, batch_size=4, out_dir=tmp_path)
    pixelaux.train(m, data, steps=1, **quiet)
    assert len(calls) == 1 and calls[0].shape == (4, 1, 4, 4)
    first = training._Order(16, 4, 1, 0, 0)(0)
    assert torch.equal(calls[0], data[first])                   # the first step's batch
    loaded = ck.load(tmp_path / training.MODEL_FILE)
    assert wn.has_weight_norm(loaded) and loaded.config["weight_norm"] is True
    pixelaux.train(m, data, steps=2, resume=True, **quiet)        # resumed: no second init
    assert len(calls) == 1
    plain = pixelaux.GatedPixelCNN(channels=1, bits=4, hidden=4, blocks=1, dist="categorical", image_size=(4, 4))
    pixelaux.train(plain, data, steps=1, **dict(quiet, out_dir=tmp_path / "plain"))
    assert len(calls) == 1                                         # no weight norm: nothing to do
