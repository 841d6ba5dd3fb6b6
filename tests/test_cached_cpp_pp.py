"""The C++ cached engine of a ``PixelCNNpp`` (``backend="cpp"``): what is specific to it.

The exactness contract of docs/design.md section 2.7 (teacher forcing and the naive
engine's images, every input kind) is checked for every backend in
``test_conformance.py``; here: thread modes, batch independence, weight packing and its
cache, routing, the op's schema, fake tensors and argument checks, and the progress bar
and interrupts inside the op. Tiny models (hidden <= 8: with N(0, 0.2^2) weights, wider
U-nets reach activations of ~1e4, chaotic) with random weights.
"""

import pytest
import torch

from helpers import assert_matches_forward, randomize, single_thread
from pixelaux import native
from pixelaux.pixelcnnpp import PixelCNNpp

pytestmark = pytest.mark.skipif(not native.available(),
                                reason=f"pixelaux._C is not built: {native.reason()}")

if native.available():
    from pixelaux.engines import cached_cpp

# name: (model kwargs, (H, W), batch)
CONFIGS = {
    "s3-b2-gray8-cond": (dict(channels=1, bits=8, hidden=8, blocks=2, scales=3, nr_mix=2, cond_channels=2),
                         (8, 8), 3),
    "s3-b1-cat3-rgb": (dict(channels=3, bits=3, hidden=6, blocks=1, scales=3, dist="categorical"), (8, 8), 1),
    "s2-b2-rgb8-cond": (dict(channels=3, bits=8, hidden=8, blocks=2, scales=2, nr_mix=2, cond_channels=3),
                        (12, 8), 5),
}


def make(name, seed=0, batch=None, std=0.2):
    kwargs, (h, w), b = CONFIGS[name]
    b = batch or b
    model = randomize(PixelCNNpp(dropout=0.0, image_size=(h, w), **kwargs), std=std, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    cc = kwargs.get("cond_channels", 0)
    cond = torch.randn(b, cc, h, w, generator=g) if cc else None
    x = torch.randint(0, 2 ** model.bits, (b, model.channels, h, w), generator=g)
    u = torch.rand(b, h, w, model.dist.num_uniforms, generator=g)
    return model, x, cond, u


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.mark.parametrize("give_up", ["1", "0"])
def test_thread_splits_give_identical_results(give_up, monkeypatch):
    """Images over threads, channels over a team, row starts over a team: the same
    arithmetic per element, so bitwise the same images and parameters."""
    monkeypatch.setenv("PIXELAUX_TEAM_GIVE_UP", give_up)
    # hidden=40: three panels of 16 channels (the last one partial), shared unevenly
    model = randomize(PixelCNNpp(channels=3, bits=8, hidden=40, blocks=1, scales=3, nr_mix=2,
                                 cond_channels=2, dropout=0.0, image_size=(8, 8)), std=0.05, seed=2)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (3, 3, 8, 8), generator=g)
    cond = torch.randn(3, 2, 8, 8, generator=g)
    u = torch.rand(3, 8, 8, 4, generator=g)
    torch.set_num_threads(2)
    outs = [cached_cpp.run(model, x, None, cond, u, 1.0, return_params=True, mode=m) for m in range(4)]
    for m, (o, p) in enumerate(outs[1:], 1):
        assert torch.equal(o, outs[0][0]), f"mode {m} images differ"
        assert torch.equal(p, outs[0][1]), f"mode {m} params differ"
    # batch 1: a team over the output channels (mode 0 with 2 threads), teacher forced
    known = torch.ones(1, 8, 8, dtype=torch.bool)
    _, p1 = cached_cpp.run(model, x[:1], known, cond[:1], u[:1], 1.0, return_params=True)
    with single_thread():
        assert_matches_forward(p1, model, x[:1], cond[:1], "team over the output channels")


def test_batch_independence():
    """Image k is the same whatever the batch it is sampled in."""
    model, x, cond, u = make("s2-b2-rgb8-cond", seed=4)
    full = cached_cpp.run(model, x, None, cond, u, 1.0)
    one = cached_cpp.run(model, x[2:3], None, cond[2:3], u[2:3], 1.0)
    assert torch.equal(full[2:3], one)


def test_packed_weights_follow_parameter_updates():
    model, x, cond, u = make("s3-b1-cat3-rgb", seed=5)
    b, _, h, w = x.shape
    known = torch.ones(b, h, w, dtype=torch.bool)
    first = cached_cpp.packed_weights(model)
    assert cached_cpp.packed_weights(model) is first
    with torch.no_grad():
        model.head.bias.add_(1.0)
        model.down_layers[1].ul_stream[0].conv2.weight.mul_(1.5)
    assert cached_cpp.packed_weights(model) is not first
    _, params = cached_cpp.run(model, x, known, None, u, 1.0, return_params=True)
    assert_matches_forward(params, model, x)


def test_auto_backend_and_sampling_api():
    """``backend="auto"`` on CPU runs a PixelCNNpp with the cpp engine."""
    from pixelaux import engines
    assert engines.resolve("cached", "auto", "cpu", kinds=("PixelCNNpp",)) == ("cached", "cpp")
    assert engines.runner("cached", "cpp", "PixelCNNpp") is cached_cpp.run


def test_op_schema_and_fake_tensor():
    model, x, cond, u = make("s3-b2-gray8-cond", seed=6)
    known = torch.rand(x.shape[0], *x.shape[2:]) < 0.5
    args = (x, known, None, cached_cpp.cond_terms(model, cond), u, cached_cpp.packed_weights(model),
            cached_cpp.input_table(model), cached_cpp.config_of(model), 1.0, True, 0)
    torch.library.opcheck(torch.ops.pixelaux.cached_sample.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    schema = str(torch.ops.pixelaux.cached_sample.default._schema)
    assert schema.startswith("pixelaux::cached_sample(Tensor x, Tensor? known, Tensor? cond, Tensor[] cond_terms")


def test_bad_inputs_raise_clear_errors():
    model, x, cond, u = make("s3-b2-gray8-cond", seed=7)
    packed, cfg = cached_cpp.packed_weights(model), cached_cpp.config_of(model)
    table = cached_cpp.input_table(model)
    terms = cached_cpp.cond_terms(model, cond)
    op = torch.ops.pixelaux.cached_sample
    b, _, h, w = x.shape
    with pytest.raises(TypeError, match="x must be int64"):
        op(x.float(), None, None, terms, u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="divisible by 2"):
        op(x[:, :, :6], None, None, terms, u[:, :6], packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="conditioning-term tensors"):
        op(x, None, None, terms[:-1], u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match=r"cond_terms\[0\] must have shape"):
        op(x, None, None, [terms[0][:, :, :4]] + terms[1:], u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="uniforms must have shape"):
        op(x, None, None, terms, u[..., :0], packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="known must have shape"):
        op(x, torch.ones(b, h, w + 1, dtype=torch.bool), None, terms, u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="known pixels of x must be in"):
        op(x + 300, torch.ones(b, h, w, dtype=torch.bool), None, terms, u, packed, table, cfg, 1.0)
    with pytest.raises(ValueError, match="packed must be"):
        op(x, None, None, terms, u, packed[:-1], table, cfg, 1.0)
    with pytest.raises(ValueError, match=r"table must have shape \(1, 256, 1\)"):
        op(x, None, None, terms, u, packed, table[:, :128], cfg, 1.0)
    with pytest.raises(ValueError, match="temperature must be"):
        op(x, None, None, terms, u, packed, table, cfg, 0.0)
    with pytest.raises(ValueError, match="config"):
        op(x, None, None, terms, u, packed, table, cfg[:-1], 1.0)
    with pytest.raises(ValueError, match="mode must be"):
        op(x, None, None, terms, u, packed, table, cfg, 1.0, False, 7)
    with pytest.raises(ValueError, match="cond is required"):
        cached_cpp.run(model, x, None, None, u, 1.0)
    # pack_weights' own checks (one packer for every family): tests/test_cached_cpp.py


# ---- token inputs (embed_dim > 0) --------------------------------------------------------


def test_the_packed_weight_list_is_checked():
    """The engine takes the weights' order, shapes and layout from the packed plan's weight
    groups (``cached_cpp.weight_groups``, after its steps): a list that does not fit the
    plan's steps or the model's weights is refused before anything is packed or runs."""
    model, x, cond, u = make("s3-b2-gray8-cond", seed=7)
    packed, cfg = cached_cpp.packed_weights(model), cached_cpp.config_of(model)
    table, terms = cached_cpp.input_table(model), cached_cpp.cond_terms(model, cond)
    raw, names = cached_cpp.raw_weights(model), cached_cpp.weight_names(model)
    op, pack = torch.ops.pixelaux.cached_sample, torch.ops.pixelaux.pack_weights
    n, ng = cached_cpp.WEIGHT_INTS, cfg[16]
    groups = [cfg[len(cfg) - n * (ng - g):len(cfg) - n * (ng - g - 1)] for g in range(ng)]
    kinds = [cached_cpp.WEIGHT_KINDS[g[0]] for g in groups]
    block, down, head = kinds.index("block"), kinds.index("down_u"), kinds.index("head")
    split = next(i for i, g in enumerate(groups) if g[0] == kinds.index("block") and g[2] == cached_cpp.SPLIT)

    def with_group(i, g):
        return cfg[:len(cfg) - n * (ng - i)] + g + cfg[len(cfg) - n * (ng - i - 1):]

    for bad, what in [(cfg[:16] + [ng + 1] + cfg[17:], "must have .* ints"),              # a group missing
                      (with_group(block, [99, -1, -1, -1]), "bad weight group"),           # no such kind
                      (with_group(down, [cached_cpp.WEIGHT_KINDS.index("down_u"), 3, -1, -1]), "bad weight group"),
                      (with_group(head, groups[0]), "one weight group of the input layers and one of the head"),
                      (with_group(down, groups[block]), "bad step"),                       # a DownRow's conv is a block
                      (with_group(block, groups[block][:3] + [0]), "bad step"),            # cond terms, no cond weights
                      (with_group(block, groups[block][:1] + [5] + groups[block][2:]), "bad block step"),  # kw 5
                      (with_group(split, groups[split][:2] + [cached_cpp.SKIP, 1]), "bad block step")]:    # no nin_ul
        with pytest.raises(ValueError, match=what):
            op(x, None, None, terms, u, packed, table, bad, 1.0)
    # what the layout would pack does not fit the model's weights: named by the caller
    with pytest.raises(ValueError, match=r"up_layers\.0\.u_stream\.0\.conv1\.weight must have shape \(8, 16, 2, 5\)"):
        pack(raw, with_group(block, groups[block][:1] + [5] + groups[block][2:]), names)
    with pytest.raises(ValueError, match=r"ul_stream\.0\.nin_skip\.weight must have shape \(8, 16, 1, 1\), got "
                                         r"\(8, 32, 1, 1\)"):
        pack(raw, with_group(split, groups[split][:2] + [cached_cpp.SKIP, 1]), names)
    with pytest.raises(ValueError, match="bad step"):                                   # the plan is checked there too
        pack(raw, with_group(block, groups[block][:3] + [0]), names)
    assert torch.equal(op(x, None, None, terms, u, packed, table, cfg, 1.0)[0],
                       cached_cpp.run(model, x, None, cond, u, 1.0))


def test_progress_and_interrupt_inside_the_op(monkeypatch):
    """The bar moves row by row during the op; an interrupt raised by the bar stops the
    op at the next row start (see test_cached_cpp.py for the signal and thread splits)."""
    import re

    import tqdm.auto

    from pixelaux.engines import progress
    seen = []

    class Bar:
        def __init__(self, total=None, **kwargs):
            self.n = 0

        def update(self, k=1):
            self.n += k
            seen.append(self.n)
            if stop:
                raise KeyboardInterrupt

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.002)
    model = randomize(PixelCNNpp(channels=3, bits=8, hidden=32, blocks=2, scales=2, nr_mix=3,
                                 dropout=0.0, image_size=(24, 24)), std=0.05, seed=3)
    x = torch.zeros(1, 3, 24, 24, dtype=torch.long)
    u = torch.rand(1, 24, 24, 4)
    stop = False
    cached_cpp.run(model, x, None, None, u, 1.0, progress=True)
    assert seen[-1] == 24 * 24 and len(seen) >= 2 and all(n % 24 == 0 for n in seen), seen
    stop = True
    with pytest.raises(KeyboardInterrupt) as e:
        cached_cpp.run(model, x, None, None, u, 1.0, progress=True)
    m = re.search(r"stopped after (\d+) of 24 image rows \(stop asked after (\d+)\)",
                  " ".join(e.value.__notes__))
    assert m and int(m.group(1)) < 24 and int(m.group(1)) <= int(m.group(2)) + 1
