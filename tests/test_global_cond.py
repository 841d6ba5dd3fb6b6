"""Global conditioning: ``cond`` as a vector per image ``(n, cond_channels)``, broadcast
over all positions (class-conditional sampling with one-hot labels)."""
import pytest
import torch
import torch.nn.functional as F

import pixelaux
from helpers import one_thread, param_error, random_gated, random_pp  # noqa: F401 (fixture)
from pixelaux import engines, native
from pixelaux.engines import cached_torch
from pixelaux.engines.cached_torch_pp import PixelCNNppState

CPP = native.available()
CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def class_model(seed=0, **kw):
    cfg = dict(channels=3, bits=8, hidden=8, blocks=2, nr_mix=2, cond_channels=10, image_size=(5, 6))
    cfg.update(kw)
    return random_gated(seed=seed, std=0.3, **cfg)


def pp_model(seed=0, **kw):
    cfg = dict(channels=1, bits=8, hidden=6, blocks=1, scales=2, nr_mix=2, cond_channels=4, image_size=(4, 6))
    cfg.update(kw)
    return random_pp(seed=seed, std=0.3, **cfg)


def expand(vec, size):
    return vec[:, :, None, None].expand(-1, -1, *size).contiguous()


def _stage_backends(kind):
    out = [("naive", "auto"), ("cached", "torch")]
    if CPP and kind in engines.STAGE_KINDS["cpp"]:
        out.append(("cached", "cpp"))
    return out


@pytest.mark.parametrize("make", [class_model, pp_model], ids=["gated", "pixelcnnpp"])
def test_vector_equals_its_expanded_map_in_forward_and_log_prob(make):
    m = make()
    size = m.image_size
    x = torch.randint(0, 2 ** m.bits, (3, m.channels, *size), generator=gen(1))
    vec = torch.randn(3, m.cond_channels, generator=gen(2))
    with torch.no_grad():
        a, b = m(x, vec), m(x, expand(vec, size))
    assert param_error(a, b) < 1e-5
    assert torch.allclose(m.log_prob(x, vec), m.log_prob(x, expand(vec, size)), rtol=1e-4)
    assert torch.allclose(pixelaux.bits_per_dim(m, x, vec), pixelaux.bits_per_dim(m, x, expand(vec, size)),
                          rtol=1e-4)


@pytest.mark.parametrize("make", [class_model, pp_model], ids=["gated", "pixelcnnpp"])
def test_cached_torch_teacher_forcing_with_a_vector(make):
    """The cached engine's parameters at every position match the forward pass, and its
    per-block terms are computed once per image (broadcast views, not maps)."""
    m = make()
    h, w = m.image_size
    x = torch.randint(0, 2 ** m.bits, (2, m.channels, h, w), generator=gen(3))
    vec = torch.randn(2, m.cond_channels, generator=gen(4))
    known = torch.ones(2, h, w, dtype=torch.bool)
    u = torch.rand(2, h, w, m.dist.num_uniforms, generator=gen(5))
    with torch.no_grad():
        out, params = cached_torch.run(m, x, known, vec, u, 1.0, return_params=True)
        ref = m(x, vec)
    assert torch.equal(out, x)
    assert param_error(params, ref) < 1e-4
    if m.kind == "GatedPixelCNN":
        state = cached_torch.CachedState(m, x, vec)
        terms = [t for pair in state.u_cond + state.ul_cond for t in pair]
    else:
        state = PixelCNNppState(m, x, vec)
        terms = [t for scale in state.up_cond + state.down_cond for stream in scale for pair in stream for t in pair]
    assert terms and all(t.stride(2) == 0 and t.stride(3) == 0 for t in terms)


def test_class_conditional_sampling_with_one_hot_labels():
    m = class_model()
    labels = torch.tensor([0, 3, 9, 3])
    onehot = F.one_hot(labels, 10).float()
    size = m.image_size
    for engine, backend in _stage_backends(m.kind):
        kw = dict(engine=engine, backend=backend, progress=False)
        a = pixelaux.sample(m, 4, cond=onehot, generator=gen(7), **kw)
        b = pixelaux.sample(m, 4, cond=expand(onehot, size), generator=gen(7), **kw)
        assert torch.equal(a, b), (engine, backend)
        if engine == "naive":
            ref = a
        else:
            assert torch.equal(a, ref), (engine, backend)
    # the same uniforms with another label give other images; the same label the same image
    same_u = pixelaux.sample(m, 4, cond=F.one_hot(torch.tensor([5, 5, 5, 5]), 10).float(), generator=gen(7),
                             progress=False, backend="torch")
    for k in range(4):
        assert not torch.equal(same_u[k], ref[k])
    # image k does not depend on the others: label 3 at index 1 alone gives the same image
    one = pixelaux.sample(m, 2, cond=onehot[:2], generator=gen(7), progress=False, backend="torch")
    assert torch.equal(one, ref[:2])


def test_pixelcnnpp_global_cond_engines_agree():
    m = pp_model()
    vec = torch.randn(3, 4, generator=gen(8))
    ref = pixelaux.sample(m, 3, cond=vec, engine="naive", generator=gen(9), progress=False)
    for engine, backend in _stage_backends(m.kind)[1:]:
        got = pixelaux.sample(m, 3, cond=vec, engine=engine, backend=backend, generator=gen(9), progress=False)
        assert torch.equal(got, ref), backend


def test_global_cond_with_known_pixels():
    m = class_model(channels=1, bits=4, dist="categorical")
    h, w = m.image_size
    known = torch.full((2, 1, h, w), -1)
    known[:, :, :2] = torch.randint(0, 16, (2, 1, 2, w), generator=gen(10))
    cond = F.one_hot(torch.tensor([1, 2]), 10).float()
    a = pixelaux.sample(m, 2, cond=cond, known=known, generator=gen(11), progress=False, backend="torch")
    b = pixelaux.sample(m, 2, cond=cond, known=known, generator=gen(11), progress=False, engine="naive")
    assert torch.equal(a, b) and torch.equal(a[:, :, :2], known[:, :, :2])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_triton_backend_takes_a_vector():
    m = class_model().cuda()
    cond = F.one_hot(torch.tensor([0, 3]), 10).float()
    a = pixelaux.sample(m, 2, cond=cond.cuda(), generator=gen(7), progress=False, backend="triton")
    b = pixelaux.sample(m.cpu(), 2, cond=cond, generator=gen(7), progress=False, engine="naive")
    assert (a.cpu() == b).float().mean() > 0.99


# ---------------------------------------------------------------- bad input

def test_bad_global_cond():
    m = class_model()
    kw = dict(progress=False, backend="torch")
    with pytest.raises(ValueError) as e:
        pixelaux.sample(m, 2, cond=torch.zeros(2, 7), **kw)
    assert all(s in str(e.value) for s in ("cond", "cond_channels=10", "(2, 10)", "width 7", "(2, 7)"))
    with pytest.raises(ValueError, match=r"cond as a vector per image must have shape \(2, 10\).*\(3, 10\)"):
        pixelaux.sample(m, 2, cond=torch.zeros(3, 10), **kw)
    with pytest.raises(ValueError, match=r"cond must have shape \(2, 10, 5, 6\) \(a map\) or \(2, 10\)"):
        pixelaux.sample(m, 2, cond=torch.zeros(2, 10, 1), **kw)
    with pytest.raises(TypeError, match="floating-point"):
        pixelaux.sample(m, 2, cond=F.one_hot(torch.tensor([0, 1]), 10), **kw)    # labels not as float
    with pytest.raises(ValueError, match="finite"):
        m(torch.zeros(1, 3, 5, 6, dtype=torch.long), torch.full((1, 10), float("nan")))
    with pytest.raises(ValueError, match="cond_channels=10"):
        m.log_prob(torch.zeros(1, 3, 5, 6, dtype=torch.long), torch.zeros(1, 9))
    with pytest.raises(ValueError, match="cond must be None"):
        pixelaux.sample(random_gated(hidden=4, blocks=1, image_size=4), 1, cond=torch.zeros(1, 3), **kw)
