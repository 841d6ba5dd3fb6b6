import itertools

import pytest
import torch

from pixelaux.distributions import Categorical, DiscretizedLogisticMixture


def all_values(channels, bits):
    vals = torch.tensor(list(itertools.product(range(2 ** bits), repeat=channels)))
    return vals  # (levels**C, C)


@pytest.mark.parametrize("dist", [
    DiscretizedLogisticMixture(channels=1, bits=3, nr_mix=3),
    DiscretizedLogisticMixture(channels=2, bits=2, nr_mix=2),
    DiscretizedLogisticMixture(channels=3, bits=2, nr_mix=4),
    Categorical(channels=1, bits=4),
    Categorical(channels=2, bits=2),
])
def test_probabilities_sum_to_one(dist):
    torch.manual_seed(0)
    params = torch.randn(5, dist.num_params) * 2
    vals = all_values(dist.channels, dist.bits)
    p = params.repeat_interleave(len(vals), 0)
    x = vals.repeat(5, 1)
    lp = dist.log_prob_flat(p, x).reshape(5, len(vals))
    assert torch.allclose(lp.exp().sum(1), torch.ones(5), atol=1e-4)


@pytest.mark.parametrize("dist", [
    DiscretizedLogisticMixture(channels=2, bits=2, nr_mix=3),
    Categorical(channels=1, bits=3),
])
def test_sampling_matches_probabilities(dist):
    """Uniforms mapped through sample_flat give each value with its probability."""
    torch.manual_seed(1)
    params = torch.randn(1, dist.num_params)
    n = 40000
    u = torch.rand(n, dist.num_uniforms)
    s = dist.sample_flat(params.expand(n, -1), u)
    vals = all_values(dist.channels, dist.bits)
    probs = dist.log_prob_flat(params.expand(len(vals), -1), vals).exp()
    code = (s * (2 ** dist.bits) ** torch.arange(dist.channels)).sum(1)
    vcode = (vals * (2 ** dist.bits) ** torch.arange(dist.channels)).sum(1)
    freq = torch.stack([(code == c).float().mean() for c in vcode])
    assert (freq - probs).abs().max() < 0.015


def test_sampling_is_deterministic_in_the_uniforms():
    dist = DiscretizedLogisticMixture(channels=3, bits=8, nr_mix=5)
    params = torch.randn(64, dist.num_params)
    u = torch.rand(64, dist.num_uniforms)
    a, b = dist.sample_flat(params, u), dist.sample_flat(params.clone(), u.clone())
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 255


def test_map_shapes():
    dist = DiscretizedLogisticMixture(channels=3, bits=8, nr_mix=2)
    params = torch.randn(2, dist.num_params, 4, 5)
    x = torch.randint(0, 256, (2, 3, 4, 5))
    assert dist.log_prob(params, x).shape == (2, 4, 5)
    assert dist.sample(params, torch.rand(2, 4, 5, 4)).shape == (2, 3, 4, 5)


def test_extreme_temperatures_and_saturated_logits_stay_in_range():
    dist = DiscretizedLogisticMixture(channels=3, bits=8, nr_mix=3)
    params = torch.randn(50, dist.num_params) * 1e4
    u = torch.rand(50, dist.num_uniforms)
    for t in (1e-6, 1e-3, 1.0, 1e3, 1e6):
        s = dist.sample_flat(params, u, temperature=t)
        assert s.min() >= 0 and s.max() <= 255
    cat = Categorical(1, 4)
    s = cat.sample_flat(torch.randn(50, 16) * 1e4, torch.rand(50, 1), temperature=1e-6)
    assert s.min() >= 0 and s.max() <= 15


@pytest.mark.parametrize("t", [0, -1.0, float("nan"), float("inf"), "hot"])
def test_bad_temperature(t):
    dist = Categorical(1, 2)
    with pytest.raises((ValueError, TypeError), match="temperature"):
        dist.sample_flat(torch.zeros(1, 4), torch.rand(1, 1), temperature=t)


def test_engine_spec_is_how_the_compiled_engines_know_a_distribution():
    """The C++ and Triton engines read ``dist.engine_spec`` (no class names): the two
    built-in distributions give their kind and size, any other one refuses clearly."""
    from pixelaux.distributions import Distribution
    assert Categorical(1, 4).engine_spec == (0, 16)
    assert DiscretizedLogisticMixture(3, 8, 5).engine_spec == (1, 5)

    class Beta(Distribution):
        pass
    with pytest.raises(NotImplementedError, match="do not sample Beta; use backend='torch'"):
        Beta().engine_spec


@pytest.mark.parametrize("family", ["GatedPixelCNN", "PixelCNNpp"])
def test_a_kind_the_compiled_engines_do_not_know_is_refused_not_sampled_as_another(family):
    """A distribution whose ``engine_spec`` names a kind the compiled engines have no
    sampler for (here 2) is refused by each, naming backend='torch', never sampled as
    the logistic mixture (which every other kind once fell through to)."""
    import pixelaux
    from pixelaux import native

    class NewKind(DiscretizedLogisticMixture):
        @property
        def engine_spec(self):
            return 2, self.nr_mix

    cls = getattr(pixelaux, family)
    extra = dict(scales=2) if family == "PixelCNNpp" else {}
    model = cls(hidden=4, blocks=1, nr_mix=2, image_size=4, **extra)
    model.dist.__class__ = NewKind
    x = torch.zeros(1, 3, 4, 4, dtype=torch.long)
    u = torch.rand(1, 4, 4, model.dist.num_uniforms)
    if native.available():
        from pixelaux.engines import cached_cpp
        with pytest.raises(ValueError, match=r"dist.*backend='torch'"):
            cached_cpp.run(model, x, None, None, u, 1.0)
    pytest.importorskip("triton")
    from pixelaux.kernels.pixel_step import sampling_chunks
    with pytest.raises(ValueError, match=r"dist: the Triton kernels .* got 2; use backend='torch'"):
        sampling_chunks(*model.dist.engine_spec, 4, model.dist.num_params, 16)
