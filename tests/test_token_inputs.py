"""Token inputs (``embed_dim``): each value's learned table row instead of its scaled
intensity, for priors over discrete codes (issue 11, item 3). The model side; every
backend samples them in ``test_conformance.py`` (the ``tokens*`` cases), the kernels'
own token paths are in the per-backend files."""
import copy

import pytest
import torch

import pixelaux
from helpers import assert_causal, one_thread, random_gated, random_images, random_pp  # noqa: F401 (fixture)
from pixelaux.inputs import PixelInput, encode_pixels

pytestmark = pytest.mark.usefixtures("one_thread")     # tiny models: a second thread only spin-waits

TOKEN_MODELS = {
    "gated": lambda: random_gated(seed=3, channels=2, bits=9, hidden=8, blocks=2, dist="categorical",
                                  embed_dim=5),
    "gated-logistic": lambda: random_gated(seed=4, channels=3, bits=8, hidden=8, blocks=1, nr_mix=2,
                                           embed_dim=3, cond_channels=2),
    "pp": lambda: random_pp(seed=5, channels=1, bits=10, hidden=8, blocks=1, scales=2, dist="categorical",
                            embed_dim=4),
}


@pytest.mark.parametrize("embed_dim", [0, 1, 6])
def test_table_holds_the_floats_the_model_computes(embed_dim):
    enc = PixelInput(channels=3, bits=7, embed_dim=embed_dim)
    x = torch.randint(0, 128, (2, 3, 5, 4))
    h = enc(x)
    assert h.shape == (2, enc.width, 5, 4) and enc.width == 3 * max(embed_dim, 1) + 1
    assert torch.equal(h[:, -1], torch.ones(2, 5, 4))
    table = enc.table()
    assert table.shape == (3, 128, max(embed_dim, 1))
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 3)                       # (B*H*W, C)
    want = h[:, :-1].permute(0, 2, 3, 1).reshape(-1, enc.width - 1)
    assert torch.equal(encode_pixels(table, pixels), want)


def test_tokens_have_no_order():
    """Scaled inputs put 17 between 16 and 18; a token's row is its own: moving code 17's
    row changes the input only where code 17 is, and of channel 1 only in channel 1."""
    enc = PixelInput(channels=2, bits=6, embed_dim=4)
    x = torch.randint(0, 64, (3, 2, 6, 6))
    x[0, 1, 2, 3] = 17
    before = enc(x)
    with torch.no_grad():
        enc.embed.weight[64 + 17] += 1.0            # channel 1, code 17
    moved = (enc(x) - before).abs().amax(dim=1) > 0
    assert torch.equal(moved, x[:, 1] == 17)
    assert torch.equal((enc(x) - before)[:, :4], torch.zeros(3, 4, 6, 6))


@pytest.mark.parametrize("name", sorted(TOKEN_MODELS))
def test_token_models_are_causal(name):
    model = TOKEN_MODELS[name]()
    x = random_images(model, 1, 4, 4, seed=2)
    cond = torch.randn(1, model.cond_channels, 4, 4) if model.cond_channels else None
    assert_causal(model, x, cond, model.bits)


def test_token_model_trains_and_round_trips_through_a_checkpoint(tmp_path):
    model = pixelaux.GatedPixelCNN(channels=1, bits=6, hidden=8, blocks=1, dist="categorical",
                                   embed_dim=4, image_size=(6, 6))
    x = random_images(model, 8, 6, 6, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = None
    for _ in range(15):
        loss = -model.log_prob(x).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.9 * first
    assert model.input.embed.weight.grad[x.unique()].abs().sum() > 0
    path = tmp_path / "tokens.safetensors"
    pixelaux.save(model, path)
    back = pixelaux.load(path)
    assert back.config["embed_dim"] == 4
    assert torch.equal(back.log_prob(x), model.eval().log_prob(x))


def test_scaled_models_keep_their_keys_and_config():
    """Checkpoints written before token inputs existed still load: no new keys."""
    for model in (pixelaux.GatedPixelCNN(hidden=4, blocks=1), pixelaux.PixelCNNpp(hidden=4, blocks=1)):
        assert not any(k.startswith("input.") for k in model.state_dict())
        assert "embed_dim" not in model.config


def test_a_model_converted_to_float64_computes_in_float64():
    """``model.double()`` runs its forward in float64, the input encoding and a float32
    cond included (the float64 reference of the teacher-forcing tests,
    ``helpers.forward_errors``); the state-dict keys and the float32 table the engines
    read stay as they were."""
    models = (random_gated(seed=1, hidden=4, blocks=1, nr_mix=2, cond_channels=2, image_size=4),
              random_pp(seed=2, hidden=4, blocks=1, scales=2, nr_mix=2, cond_channels=2, image_size=4),
              TOKEN_MODELS["pp"]())
    for model in models:
        x = random_images(model, 2, 4, 4, seed=3)
        cond = torch.randn(2, model.cond_channels) if model.cond_channels else None
        m64 = copy.deepcopy(model).double()
        with torch.no_grad():
            p32, p64 = model(x, cond), m64(x, cond)
        assert p32.dtype == torch.float32 and p64.dtype == torch.float64
        assert ((p64 - p32).abs().max() / p64.abs().max()).item() < 1e-5
        assert list(m64.state_dict()) == list(model.state_dict())
        assert m64.input.table().dtype == torch.float32 and torch.equal(m64.input.table(), model.input.table())


@pytest.mark.parametrize("kwargs, match", [
    (dict(embed_dim=-1), "embed_dim"),
    (dict(embed_dim=2.5), "embed_dim"),
    (dict(embed_dim=5000), "embed_dim"),
])
def test_bad_embed_dim(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pixelaux.GatedPixelCNN(hidden=4, blocks=1, **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        pixelaux.PixelCNNpp(hidden=4, blocks=1, **kwargs)


def test_token_values_out_of_range_name_the_argument():
    model = pixelaux.GatedPixelCNN(channels=1, bits=9, hidden=4, blocks=1, dist="categorical", embed_dim=2)
    with pytest.raises(ValueError, match=r"x values must be in \[0, 511\].*got range \[0, 512\]"):
        model(torch.tensor([[[[0, 512]]]]))
    with pytest.raises(ValueError, match="known"):
        pixelaux.sample(model, 1, size=(1, 2), known=torch.tensor([[[[-1, 600]]]]), engine="naive")
