"""The composable auxiliary-variable model: the embedded models unchanged, nesting
(grayscale + pyramid prior), user transforms, and their bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

import pixelaux
from helpers import assert_causal, one_thread, randomize  # noqa: F401 (fixture)
from pixelaux import engines, native
from pixelaux.auxiliary import AuxiliaryPixelCNN, chain, stages
from pixelaux.data import natural_patches
from pixelaux.transforms import AvgPool, GrayView, to_gray
from pixelaux.uniforms import ImageUniforms

CPP = native.available()
BACKENDS = ["torch"] + (["cpp"] if CPP else [])
LN2 = math.log(2.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gray_pyramid(seed=0, size=8, seed_size=2, std=0.3):
    """A tiny grayscale model whose gray prior is a 3-level categorical pyramid."""
    torch.manual_seed(seed)
    prior = pixelaux.PyramidPixelCNN(channels=1, bits=4, dist="categorical", image_size=size, seed_size=seed_size,
                                     hidden=6, blocks=1, encoder_hidden=6, cond_channels=4)
    m = pixelaux.GrayscalePixelCNN(hidden=6, blocks=1, nr_mix=2, encoder_hidden=6, encoder_blocks=1,
                                   cond_channels=4, image_size=size, prior=prior)
    return randomize(m, std=std, seed=seed)


def rand_images(b=2, c=3, size=(8, 8), bits=8, seed=0):
    return torch.randint(0, 2 ** bits, (b, c, *size), generator=gen(seed))


# ---------------------------------------------------------------- the embedded models

def _old_parts(model, x):
    """The formulas of the grayscale and pyramid models before they became
    ``AuxiliaryPixelCNN``s, written out directly: nats per part, smallest first."""
    if model.kind == "GrayscalePixelCNN":
        y = (299 * x[:, 0:1] + 587 * x[:, 1:2] + 114 * x[:, 2:3]).double() / 1000
        g = torch.div(torch.round(y).long(), 16, rounding_mode="floor")
        return {"gray": model.prior.log_prob(g), "colour": model.colour.log_prob(x, model.encoder(g))}
    levels = len(model.levels)
    xs = [torch.round(F.avg_pool2d(x.double(), 2 ** k)).long() for k in range(levels)][::-1]
    parts = {}
    for k, xk in enumerate(xs):
        cond = None if k == 0 else model.encoders[k - 1](xs[k - 1])
        parts[f"level{k}_{xk.shape[2]}x{xk.shape[3]}"] = model.levels[k].log_prob(xk, cond)
    return parts


def _old_sample(model, n, seed, run):
    """The samplers of the two models before the change: stage after stage, each taking
    the next block of every image's uniforms."""
    u = ImageUniforms(n, gen(seed))
    h, w = model.image_size
    if model.kind == "GrayscalePixelCNN":
        z = lambda c: torch.zeros(n, c, h, w, dtype=torch.long)  # noqa: E731
        g = run(model.prior, z(1), None, None, u.draw(h, w, model.prior.dist.num_uniforms), 1.0)
        return run(model.colour, z(3), None, model.encoder(g), u.draw(h, w, model.colour.dist.num_uniforms), 1.0)
    x = None
    for k, (hk, wk) in enumerate(model.level_sizes):
        cond = None if k == 0 else model.encoders[k - 1](x)
        stage = model.levels[k]
        x = run(stage, torch.zeros(n, 3, hk, wk, dtype=torch.long), None, cond,
                u.draw(hk, wk, stage.dist.num_uniforms), 1.0)
    return x


@pytest.mark.parametrize("name", ["default", "pyramid"])
def test_embedded_models_give_the_old_numbers(name):
    """bits/dim of the embedded models equal the old formulas exactly, and the same seed
    gives the images of the old stage-by-stage sampler."""
    model = pixelaux.load(name)
    assert isinstance(model, AuxiliaryPixelCNN)
    x = natural_patches("test", 32)[:8]
    with torch.no_grad():
        old = _old_parts(model, x.long())
    bpd = pixelaux.bits_per_dim(model, x, parts=True)
    assert list(bpd) == ["total"] + list(old)
    for k, v in old.items():
        assert torch.equal(bpd[k], -v / (3 * 32 * 32 * LN2)), k
    assert torch.equal(bpd["total"], sum(bpd[k] for k in old))
    backend = "cpp" if CPP else "torch"
    with torch.no_grad():
        ref = _old_sample(model, 1, 7, engines.runner("cached", backend, "GatedPixelCNN"))
    got = pixelaux.sample(model, 1, generator=gen(7), backend=backend, progress=False)
    assert torch.equal(got, ref)


# ---------------------------------------------------------------- nesting: gray + pyramid

def test_gray_pyramid_structure_parts_and_config():
    m = gray_pyramid()
    assert m.kind == "GrayscalePixelCNN" and m.prior.kind == "PyramidPixelCNN"
    links = chain(m)
    assert [(lk.name, lk.size, lk.channels, lk.bits) for lk in links] == [
        ("colour", (8, 8), 3, 8), ("gray/level2_8x8", (8, 8), 1, 4), ("gray/level1_4x4", (4, 4), 1, 4),
        ("gray/level0_2x2", (2, 2), 1, 4)]
    assert stages(m) == [m.prior.levels[0], m.prior.levels[1], m.prior.levels[2], m.colour]
    x = rand_images(3)
    parts = m.log_prob_parts(x)
    assert list(parts) == ["gray/level0_2x2", "gray/level1_4x4", "gray/level2_8x8", "colour"]
    # the gray parts are the pyramid's own parts of the gray view
    gp = m.prior.log_prob_parts(to_gray(x))
    for k, v in gp.items():
        assert torch.equal(parts["gray/" + k], v)
    assert torch.allclose(m.log_prob(x), sum(parts.values()))
    bpd = pixelaux.bits_per_dim(m, x, parts=True)
    assert torch.equal(bpd["total"], sum(bpd[k] for k in parts))
    assert torch.allclose(bpd["total"], -m.log_prob(x) / (3 * 64 * LN2), rtol=1e-5)
    # config: JSON, rebuilds the same model (the prior as {"kind", "config"})
    assert m.config["prior"] == {"kind": "PyramidPixelCNN", "config": m.prior.config}
    m2 = pixelaux.GrayscalePixelCNN(**m.config)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.log_prob(x), m.log_prob(x))
    # state-dict names: the prior's are the pyramid's under "prior."
    assert {k for k in m.state_dict() if k.startswith("prior.")} == {"prior." + k for k in m.prior.state_dict()}


def test_gray_pyramid_engines_agree_and_uniforms_stay_in_place():
    m = gray_pyramid()
    ref = pixelaux.sample(m, 3, engine="naive", generator=gen(1), progress=False)
    for backend in BACKENDS:
        got = pixelaux.sample(m, 3, backend=backend, generator=gen(1), progress=False)
        assert torch.equal(got, ref), backend
    assert ref.shape == (3, 3, 8, 8) and len({tuple(r.flatten().tolist()) for r in ref}) == 3
    # image k does not depend on the batch size
    assert torch.equal(pixelaux.sample(m, 1, generator=gen(1), progress=False, backend="torch"), ref[:1])
    # giving the gray view (or a smaller gray level) that the prior samples with the same
    # seed skips those stages and gives the same images
    g = pixelaux.sample(m.prior, 3, generator=gen(1), progress=False, backend="torch")
    assert torch.equal(pixelaux.sample(m, 3, cond=g, generator=gen(1), progress=False, backend="torch"), ref)
    g2 = pixelaux.sample(m.prior.levels[0], 3, size=2, generator=gen(1), progress=False, backend="torch")
    assert torch.equal(pixelaux.sample(m, 3, cond=g2, generator=gen(1), progress=False, backend="torch"), ref)


def test_gray_pyramid_applications():
    m = gray_pyramid()
    x = rand_images(2, seed=3)
    kw = dict(samples=2, progress=False, backend="torch")
    col = pixelaux.colorize(m, x, generator=gen(2), **kw)
    assert col.shape == (2, 2, 3, 8, 8)
    up = pixelaux.upscale(m, to_gray(x)[:, :, ::4, ::4], generator=gen(2), **kw)   # 2x2 gray -> 8x8 colour
    assert up.shape == (2, 2, 3, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[3:, 2:] = True
    comp = pixelaux.complete(m, x, mask, generator=gen(2), **kw)
    keep = ~mask
    assert torch.equal(comp[:, :, :, keep], x[:, None, :, keep].expand(-1, 2, -1, -1))
    # completion with the naive engine gives the same images
    ref = pixelaux.complete(m, x, mask, samples=2, generator=gen(2), progress=False, engine="naive")
    assert torch.equal(comp, ref)
    with pytest.raises(ValueError, match="lower level sizes"):
        pixelaux.upscale(m, to_gray(x)[:, :, ::8, ::8], **kw)


def test_gray_pyramid_stages_are_causal_given_their_cond():
    m = gray_pyramid()
    x = rand_images(1)
    views = m.views(x)
    links = chain(m)
    with torch.no_grad():
        for i, link in enumerate(links):
            cond = link.cond(views[i + 1]) if link.owner is not None else None
            assert_causal(link.stage, views[i], cond, bits=link.bits)


def test_gray_pyramid_trains_a_few_steps_and_reloads(tmp_path):
    m = gray_pyramid(std=0.05)
    data = rand_images(8, seed=4).to(torch.uint8)
    res = pixelaux.train(m, data, test_data=data[:4], steps=2, batch_size=4, out_dir=tmp_path, progress=False,
                         log=lambda s: None, ckpt_every=None)
    assert res.step == 2 and math.isfinite(res.test_bpd)
    loaded = pixelaux.load(tmp_path / "model.safetensors")
    assert loaded.kind == "GrayscalePixelCNN" and loaded.prior.kind == "PyramidPixelCNN"
    assert loaded.config == m.config
    bpd = pixelaux.bits_per_dim(loaded, data[:4].long(), parts=True)
    assert abs(bpd["total"].mean().item() - res.test_bpd) < 1e-3


# ---------------------------------------------------------------- encoders: once per level

def _composites():
    """A per-level pyramid (PixelCNN++ seed, a plain and a gated U-net above it), a
    grayscale model and the nested gray pyramid: tiny, random weights."""
    torch.manual_seed(0)
    pyr = pixelaux.PyramidPixelCNN(image_size=8, seed_size=2, hidden=4, blocks=1, nr_mix=2, encoder_hidden=4,
                                   per_level=[{"arch": "pixelcnnpp", "scales": 2, "hidden": 6}, {},
                                              {"encoder": "gated-unet", "encoder_blocks": 1}])
    gray = pixelaux.GrayscalePixelCNN(hidden=6, blocks=1, nr_mix=2, encoder_hidden=6, encoder_blocks=1, image_size=8)
    return {"pyramid": (randomize(pyr, std=0.3), 2), "gray": (randomize(gray, std=0.3), 1),
            "gray-pyramid": (gray_pyramid(), 3)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_encoders_run_once_per_level_per_sample_call(backend, monkeypatch):
    """Issue 20.2: the encoder of a level runs once per ``sample`` call, on the whole batch
    (not once per pixel, row or image), innermost level first, on every backend: counted
    at ``sampling._encode``, where sampling computes every map (in C++ for a UNet
    encoder on CPU, else the module's forward), and at the modules' forward, which runs
    only there."""
    from pixelaux import sampling
    encode = sampling._encode
    for name, (m, levels) in _composites().items():
        encoders = [link.owner.encoder for link in chain(m) if link.owner is not None]
        assert len({id(e) for e in encoders}) == levels, name
        seen, forwards, inside = [], [], []

        def recorded(link, image):
            seen.append(([id(e) for e in encoders].index(id(link.owner.encoder)), image.shape[0]))
            inside.append(1)
            try:
                return encode(link, image)
            finally:
                inside.pop()
        monkeypatch.setattr(sampling, "_encode", recorded)
        hooks = [e.register_forward_hook(lambda mod, args, out, k=k: forwards.append((k, bool(inside))))
                 for k, e in enumerate(encoders)]
        try:
            for n in (1, 3):
                seen.clear()
                pixelaux.sample(m, n, backend=backend, generator=gen(0), progress=False)
                assert seen == [(k, n) for k in reversed(range(levels))], (name, n, seen)
                assert all(within for _, within in forwards), (name, forwards)
        finally:
            for h in hooks:
                h.remove()


# ---------------------------------------------------------------- the generic class

def test_generic_avgpool_model_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    prior = pixelaux.GatedPixelCNN(channels=1, bits=5, hidden=4, blocks=1, nr_mix=2, image_size=(3, 4))
    cond = pixelaux.GatedPixelCNN(channels=1, bits=5, hidden=4, blocks=1, nr_mix=2, cond_channels=3,
                                  image_size=(6, 8))
    m = randomize(AuxiliaryPixelCNN("avgpool", prior, cond), std=0.3)
    assert isinstance(m.transform, AvgPool) and m.transform.factor == 2
    assert [lk.name for lk in chain(m)] == ["conditional", "prior"]
    x = rand_images(2, 1, (6, 8), bits=5)
    parts = m.log_prob_parts(x)
    assert list(parts) == ["prior", "conditional"]
    assert torch.equal(parts["prior"], prior.log_prob(AvgPool(2).bind(1, 5)(x)))
    pixelaux.save(m, tmp_path / "m.safetensors")
    m2 = pixelaux.load(tmp_path / "m.safetensors")
    assert type(m2) is AuxiliaryPixelCNN and m2.config == m.config
    assert torch.equal(m2.log_prob(x), m.log_prob(x))
    a = pixelaux.sample(m, 2, generator=gen(), progress=False, engine="naive")
    b = pixelaux.sample(m2, 2, generator=gen(), progress=False, backend=BACKENDS[-1])
    assert torch.equal(a, b)


def test_user_transform_and_nesting_of_generic_models():
    """A user's deterministic function (top-left pixel of each 2x2 block), with another
    composite as prior: a 3-deep chain, sampled and scored."""
    torch.manual_seed(0)
    inner = pixelaux.PyramidPixelCNN(channels=3, bits=8, image_size=4, seed_size=2, hidden=4, blocks=1, nr_mix=2,
                                     encoder_hidden=4, cond_channels=3)
    stage = pixelaux.GatedPixelCNN(channels=3, bits=8, hidden=4, blocks=1, nr_mix=2, cond_channels=5, image_size=8)
    m = randomize(AuxiliaryPixelCNN(lambda x: x[:, :, ::2, ::2], inner, stage), std=0.3)
    assert m.transform.factor == 2 and m.transform.channels == 3
    assert [lk.name for lk in chain(m)] == ["conditional", "prior/level1_4x4", "prior/level0_2x2"]
    x = rand_images(2)
    bpd = m.bits_per_dim(x)
    assert torch.allclose(bpd["total"], -m.log_prob(x) / (3 * 64 * LN2), rtol=1e-5)
    ref = pixelaux.sample(m, 2, engine="naive", generator=gen(3), progress=False)
    assert torch.equal(pixelaux.sample(m, 2, backend=BACKENDS[-1], generator=gen(3), progress=False), ref)
    # rebuilt in-process from its config (the callable is in it); not storable in a file
    assert type(m)(**m.config).transform.factor == 2
    with pytest.raises(ValueError, match="JSON"):
        pixelaux.save(m, "/tmp/never-written.safetensors")


# ---------------------------------------------------------------- bad input

def _gray_prior(**kw):
    cfg = dict(channels=1, bits=4, dist="categorical", image_size=8, seed_size=4, hidden=4, blocks=1)
    cfg.update(kw)
    return pixelaux.PyramidPixelCNN(**cfg)


def _gray(**kw):
    return pixelaux.GrayscalePixelCNN(hidden=4, blocks=1, nr_mix=2, encoder_blocks=1, image_size=8, **kw)


@pytest.mark.parametrize("build, words", [
    (lambda: _gray(prior=_gray_prior(channels=3)), ["prior", "channels=1", "channels=3"]),
    (lambda: _gray(prior=_gray_prior(bits=8, dist="categorical")), ["prior", "bits=4", "bits=8"]),
    (lambda: _gray(prior=_gray_prior(image_size=16)), ["prior.image_size", "(8, 8)", "(16, 16)"]),
    (lambda: _gray(prior=_gray_prior(), prior_hidden=4), ["prior_hidden", "None", "4"]),
    (lambda: _gray(prior=pixelaux.GatedPixelCNN(channels=1, bits=4, dist="categorical", hidden=4, blocks=1,
                                               cond_channels=2, image_size=8)), ["prior", "unconditional", "2"]),
])
def test_bad_priors(build, words):
    with pytest.raises(ValueError) as e:
        build()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def _stage(**kw):
    cfg = dict(channels=3, bits=8, hidden=4, blocks=1, nr_mix=2, cond_channels=3, image_size=8)
    cfg.update(kw)
    return pixelaux.GatedPixelCNN(**cfg)


def _prior(size=8, bits=8, channels=3):
    return pixelaux.GatedPixelCNN(channels=channels, bits=bits, hidden=4, blocks=1, nr_mix=2, image_size=size)


@pytest.mark.parametrize("transform, prior, words", [
    (lambda x: (x + torch.randint(0, 2, x.shape)).clamp(max=255), _prior(), ["transform", "deterministic"]),
    (lambda x: x[:, :, :4, :4], _prior(4), ["transform", "inconsistently", "factor 2", "factor 4"]),
    (lambda x: x[:, :, ::2, :], _prior(), ["transform", "same integer factor", "(4, 8)"]),
    (lambda x: x.float(), _prior(), ["transform", "integer"]),
    (lambda x: x, _prior(bits=4), ["prior", "4-bit", "255"]),
    (lambda x: x[:, :1], _prior(), ["prior", "channels=1", "channels=3"]),
    ("avgpool", _prior(8), ["prior.image_size", "(4, 4)", "(8, 8)"]),
    ("gray", _prior(), ["prior", "channels=1", "bits=4", "channels=3", "bits=8"]),
    ("blur", _prior(), ["transform", "avgpool", "gray", "blur"]),
])
def test_bad_transforms(transform, prior, words):
    with pytest.raises(ValueError) as e:
        AuxiliaryPixelCNN(transform, prior, _stage())
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_parts_of_the_generic_model():
    with pytest.raises(ValueError, match="cond_channels > 0"):
        AuxiliaryPixelCNN("avgpool", _prior(4), _stage(cond_channels=0))
    with pytest.raises(ValueError, match="encoder.out_channels must be conditional.cond_channels=3, got 5"):
        AuxiliaryPixelCNN("avgpool", _prior(4), _stage(), encoder=pixelaux.UNetEncoder(3, 8, 4, 5))
    with pytest.raises(TypeError, match="prior"):
        AuxiliaryPixelCNN("avgpool", "a model", _stage())


def test_bad_sampling_inputs_of_a_nested_model():
    m = gray_pyramid()
    kw = dict(progress=False, backend="torch")
    with pytest.raises(ValueError, match=r"cond must be the gray view .*\(2, 1, 8, 8\).*\(2, 1, 2, 2\).*got \(2, 3, 8, 8\)"):
        pixelaux.sample(m, 2, cond=rand_images(2), **kw)
    with pytest.raises(ValueError, match=r"cond values must be in \[0, 15\]"):
        pixelaux.sample(m, 2, cond=rand_images(2, 1, (4, 4)), **kw)
    with pytest.raises(ValueError, match="n=2"):
        pixelaux.sample(m, 2, cond=rand_images(3, 1, (4, 4), bits=4), **kw)
    with pytest.raises(TypeError, match="cond"):
        pixelaux.sample(m, 2, cond=[1, 2], **kw)
    with pytest.raises(ValueError, match="size must be divisible by 4"):
        pixelaux.sample(m, 1, size=6, **kw)
    with pytest.raises(ValueError, match="divisible"):
        m.log_prob(rand_images(1, size=(6, 8)))
    with pytest.raises(ValueError, match="cond must be None"):
        pixelaux.bits_per_dim(m, rand_images(1), cond=torch.zeros(1, 1, 8, 8))


def test_gray_view_transform_matches_to_gray():
    t = GrayView(4).bind(3, 8)
    x = rand_images(2)
    assert torch.equal(t(x), to_gray(x)) and (t.channels, t.bits, t.factor) == (1, 4, 1)
    with pytest.raises(ValueError, match="gray_bits"):
        GrayView(9).bind(3, 8)


def test_small_encoders_run_in_one_thread_between_stages():
    """As the PyTorch engines' small steps: an encoder whose layers are small runs in one
    intra-op thread (a second one only waits at barriers on a busy machine), and the
    caller's thread count is restored after; a large one keeps torch's setting."""
    from pixelaux import sampling
    m = gray_pyramid()
    seen = []
    hook = m.encoder.register_forward_pre_hook(lambda mod, args: seen.append(torch.get_num_threads()))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pixelaux.sample(m, 2, backend=BACKENDS[-1], generator=gen(0), progress=False)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        hook.remove()
        torch.set_num_threads(old)
    enc = m.encoder
    width = enc.stem.out_channels
    small = sampling._encoder_threads(enc, 2, (8, 8))
    large = sampling._encoder_threads(enc, 2 ** 18 // (width * 64) + 1, (8, 8))
    assert (small, large) == (1, None)
