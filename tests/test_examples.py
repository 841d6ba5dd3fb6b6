"""The examples run: examples/vqvae_prior.py end to end on a tiny configuration, and its parts."""
import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vqvae_prior.py"


@pytest.fixture(scope="module")
def vqvae_prior():
    spec = importlib.util.spec_from_file_location("vqvae_prior_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


TINY = ["--limit", "64", "--bits", "4", "--vq-hidden", "8", "--code-dim", "4", "--vq-steps", "3",
        "--vq-batch", "8", "--prior-hidden", "8", "--prior-blocks", "1", "--embed-dim", "4",
        "--prior-steps", "3", "--prior-batch", "8", "--samples", "4", "--seed", "3", "--repeat", "1"]


def test_pipeline_tiny(vqvae_prior, tmp_path, keep_threads):
    pytest.importorskip("skimage")
    from PIL import Image

    out = tmp_path / "fig" / "prior.png"
    lines = []
    r = vqvae_prior.main(TINY + ["--out", str(out)], log=lines.append)

    # VQ-VAE codes: one 8x8 grid per patch, integers in [0, 2**bits)
    k = 2 ** 4
    for codes, n in ((r["codes_train"], 64), (r["codes_test"], 64)):
        assert codes.dtype == torch.int64 and codes.shape == (n, 1, 8, 8)
        assert 0 <= int(codes.min()) and int(codes.max()) < k
    assert r["vq"].decode(r["codes_test"][:4]).shape == (4, 3, 32, 32)
    assert 0.0 <= r["entropy"] <= 4.0
    assert r["train_bpc"] > 0 and r["test_bpc"] > 0

    # naive and cached sampled the same grids from the same generator
    t = r["timing"]
    assert t["equal"] and t["agree"] == 1.0
    assert t["codes"].shape == (4, 1, 8, 8) and int(t["codes"].max()) < k and int(t["codes"].min()) >= 0
    assert {"naive", "cached-torch"} <= set(t["seconds"]) and all(v > 0 for v in t["seconds"].values())

    # the picture: rows of 8 tiles (8 test patches, 8 reconstructions, 4 samples + 4 blank), 32 + 2 px each,
    # a 2 px border, scaled 2x
    assert out.is_file()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == r["figure_size"] == ((8 * 34 + 2) * 2, (3 * 34 + 2) * 2)
    assert any("grids equal: True" in s for s in lines)
    assert not any("model: '" in s for s in lines)       # no path to the deleted temporary run


def test_decode_and_encode(vqvae_prior):
    torch.manual_seed(0)
    vq = vqvae_prior.VQVAE(bits=3, hidden=8, code_dim=4).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    codes = vq.encode(images, batch=2)
    assert codes.shape == (5, 1, 8, 8) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 8
    decoded = vq.decode(codes)
    assert decoded.shape == (5, 3, 32, 32) and decoded.dtype == torch.uint8
    # encode is the nearest code vector of the encoder's output, position by position
    z = vq.encoder(vqvae_prior.to_float(images)).permute(0, 2, 3, 1)
    d = ((z[..., None, :] - vq.codebook.embed) ** 2).sum(-1)
    assert torch.equal(codes[:, 0], d.argmin(-1))


def test_codebook_straight_through_and_ema(vqvae_prior):
    cb = vqvae_prior.EMACodebook(2, 2, decay=0.0).train()
    cb.embed.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    cb.ready.fill_(True)
    # two clusters, around (-2, 1) and (3, -1)
    pts = torch.tensor([[-2.1, 1.0], [-1.9, 1.0], [3.0, -1.2], [3.0, -0.8]])
    z = pts.view(1, 2, 2, 2).permute(0, 3, 1, 2).contiguous().requires_grad_(True)   # (1, D=2, 2, 2)
    z_q, codes, commitment = cb(z)
    assert codes.flatten().tolist() == [0, 0, 1, 1]
    # the forward value is the code vector (as it was before the update), the gradient passes straight through
    assert torch.allclose(z_q.detach().permute(0, 2, 3, 1).reshape(4, 2),
                          torch.tensor([[-1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    assert commitment.item() == pytest.approx(((pts - z_q.detach().permute(0, 2, 3, 1).reshape(4, 2)) ** 2).mean().item())
    # with decay 0 each code moved to the mean of its vectors
    assert torch.allclose(cb.embed, torch.tensor([[-2.0, 1.0], [3.0, -1.0]]), atol=1e-4)


def test_presets_and_overrides(vqvae_prior):
    quick = vqvae_prior.parse_args(["--quick"])
    assert quick.vq_steps == vqvae_prior.PRESETS["quick"]["vq_steps"] and quick.threads == 1
    full = vqvae_prior.parse_args(["--prior-steps", "7"])
    assert full.prior_steps == 7 and full.bits == vqvae_prior.PRESETS["full"]["bits"]
    assert full.backend == "auto" and full.repeat == 2
