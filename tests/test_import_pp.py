"""Import of PixelCNN++ checkpoints in the layout of the public PyTorch port
(``pixelaux.import_pixel_cnn_pp``), checked layer by layer and end to end against the
reference equations of ``pp_port_layout`` (written from that code's documented
structure), plus the safety of reading the file and the CLI command."""
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

import pixelaux
import pp_port_layout as L
from pixelaux.cli import main
from pixelaux.pixelcnnpp_import import head_row_order, infer_config


def _imgs(n, c, h, w, seed=0):
    x = torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed))
    x[0, :, 0, :3] = 0          # both tails of the discretisation
    x[0, :, 1, :3] = 255
    return x


def _rel(a, b):
    return ((a - b).abs() / b.abs().clamp(min=1e-30)).max().item()


@pytest.fixture(scope="module")
def rgb():
    sd = L.make_state_dict(nr_resnet=1, nr_filters=8, nr_logistic_mix=3, input_channels=3, seed=1)
    return sd, pixelaux.import_pixel_cnn_pp(sd, image_size=8)


# ----------------------------------------------------------------------------- inference

@pytest.mark.parametrize("n,f,m,c", [(1, 8, 3, 3), (2, 6, 5, 1), (3, 4, 1, 3)])
def test_infers_hyperparameters_from_shapes(n, f, m, c):
    sd = L.make_state_dict(n, f, m, c)
    assert infer_config(sd) == dict(nr_resnet=n, nr_filters=f, nr_logistic_mix=m, input_channels=c, scales=3)
    model = pixelaux.import_pixel_cnn_pp(sd, image_size=(8, 16))
    cfg = model.config
    assert (cfg["blocks"], cfg["hidden"], cfg["nr_mix"], cfg["channels"], cfg["scales"]) == (n, f, m, c, 3)
    assert cfg["dropout"] == 0.0 and cfg["image_size"] == [8, 16] and cfg["bits"] == 8 and not model.training
    assert pixelaux.import_pixel_cnn_pp(sd, dropout=0.5).config["dropout"] == 0.5


# ----------------------------------------------------------------------------- layer by layer

def test_folded_weight_norm(rgb):
    sd, model = rgb
    # conv: one norm per output channel (g (out, 1, 1, 1))
    w = model.u_init.weight.detach()
    g = sd["u_init.conv.weight_g"].flatten()
    assert torch.allclose(w.flatten(1).norm(dim=1), g, rtol=1e-5)
    assert torch.allclose(w, L.weight_norm_weight(sd["u_init.conv.weight_g"], sd["u_init.conv.weight_v"]))
    # linear nin -> 1x1 conv: one norm per output row
    w = model.down_layers[1].ul_stream[0].nin_skip.weight.detach()
    assert w.shape == (8, 32, 1, 1)
    g = sd["down_layers.1.ul_stream.0.nin_skip.lin_a.weight_g"].flatten()
    assert torch.allclose(w.flatten(1).norm(dim=1), g, rtol=1e-5)
    # transposed conv (in, out, kh, kw): one norm per INPUT channel, g (in, 1, 1, 1)
    for ours, port in ((model.upsize_u[0], "upsize_u_stream.0.deconv"),
                       (model.upsize_ul[1], "upsize_ul_stream.1.deconv")):
        w = ours.weight.detach()
        g = sd[f"{port}.weight_g"]
        assert g.shape == (8, 1, 1, 1)
        assert torch.allclose(w.flatten(1).norm(dim=1), g.flatten(), rtol=1e-5)
        assert not torch.allclose(w.transpose(0, 1).flatten(1).norm(dim=1), g.flatten(), rtol=1e-2)
        assert torch.allclose(w, L.weight_norm_weight(g, sd[f"{port}.weight_v"]), atol=1e-6)


@pytest.mark.parametrize("style", ["parametrize", "plain"])
def test_other_weight_forms(rgb, style):
    sd, model = rgb
    other = pixelaux.import_pixel_cnn_pp(L.make_state_dict(1, 8, 3, 3, seed=1, style=style), image_size=8)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_layers_match_reference(rgb):
    """Each imported module against the reference equations on the port's weights."""
    sd, model = rgb
    torch.manual_seed(0)
    h = torch.randn(2, 4, 8, 8)
    assert torch.allclose(model.u_init(h), L.down_shifted_conv(sd, "u_init.conv", h), atol=1e-5)
    assert torch.allclose(model.ul_init_v(h), L.down_shifted_conv(sd, "ul_init.0.conv", h), atol=1e-5)
    assert torch.allclose(model.ul_init_h(h), L.down_right_shifted_conv(sd, "ul_init.1.conv", h), atol=1e-5)
    x, a = torch.randn(2, 8, 8, 8), torch.randn(2, 16, 8, 8)
    blk = model.down_layers[2].ul_stream[1]
    ref = L.gated_resnet(sd, "down_layers.2.ul_stream.1", L.down_right_shifted_conv, x, a=a)
    assert torch.allclose(blk(x, a=a), ref, atol=1e-5)
    ref = L.gated_resnet(sd, "up_layers.0.u_stream.0", L.down_shifted_conv, x)
    assert torch.allclose(model.up_layers[0].u_stream[0](x), ref, atol=1e-5)
    assert torch.allclose(model.downsize_u[0](x), L.down_shifted_conv(sd, "downsize_u_stream.0.conv", x, 2), atol=1e-5)
    assert torch.allclose(model.downsize_ul[1](x),
                          L.down_right_shifted_conv(sd, "downsize_ul_stream.1.conv", x, 2), atol=1e-5)
    assert torch.allclose(model.head(x), L.to_pixelaux_layout(L.nin(sd, "nin_out.lin_a", x), 3), atol=1e-5)


def test_transposed_conv_cropping(rgb):
    sd, model = rgb
    x = torch.randn(2, 8, 4, 5)
    for i in range(2):
        up_u = model.upsize_u[i](x)
        assert up_u.shape == (2, 8, 8, 10)
        assert torch.allclose(up_u, L.down_shifted_deconv(sd, f"upsize_u_stream.{i}.deconv", x), atol=1e-5)
        up_ul = model.upsize_ul[i](x)
        assert up_ul.shape == (2, 8, 8, 10)
        assert torch.allclose(up_ul, L.down_right_shifted_deconv(sd, f"upsize_ul_stream.{i}.deconv", x), atol=1e-5)
    # the reference scatter is a transposed conv, and its crop is the causal one
    w = L.weight(sd, "upsize_u_stream.0.deconv")
    b = sd["upsize_u_stream.0.deconv.bias"]
    full = F.conv_transpose2d(x, w, b, stride=2, output_padding=1)
    assert torch.allclose(L.transposed_conv_full(x, w, b), full, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    out = L.down_shifted_deconv(sd, "upsize_u_stream.0.deconv", xg)
    for r, c in [(0, 0), (3, 4), (5, 9), (7, 0)]:
        grad, = torch.autograd.grad(out[0, :, r, c].sum(), xg, retain_graph=True)
        rows, cols = grad[0].abs().sum(0).nonzero(as_tuple=True)
        assert set(rows.tolist()) == {r // 2}
        assert set(cols.tolist()) <= {(c - 1) // 2, c // 2, (c + 1) // 2} - {-1}
    out = L.down_right_shifted_deconv(sd, "upsize_ul_stream.0.deconv", xg)
    grad, = torch.autograd.grad(out[0, :, 5, 7].sum(), xg)
    assert grad[0].abs().sum(0).nonzero().tolist() == [[2, 3]]


@pytest.mark.parametrize("c", [3, 1])
def test_output_remapping(c):
    m = 4
    sd = L.make_state_dict(1, 6, m, c, seed=3)
    model = pixelaux.import_pixel_cnn_pp(sd, image_size=8)
    h = torch.randn(5, 6, 2, 3)
    ours = model.head(h).permute(0, 2, 3, 1).reshape(-1, model.dist.num_params)
    logits, means, log_scales, coeffs = L.split_output(L.nin(sd, "nin_out.lin_a", h), c)
    lg, mu, ls, co = model.dist.split(ours)
    assert torch.allclose(lg, logits.reshape(-1, m), atol=1e-5)
    assert torch.allclose(mu, means.reshape(-1, c, m), atol=1e-5)
    assert torch.allclose(ls, log_scales.clamp(min=-7).reshape(-1, c, m), atol=1e-5)
    if c == 3:   # port coeff block j (stored with channel j) is pixelaux pair j: (1,0), (2,0), (2,1)
        assert torch.allclose(co, torch.tanh(coeffs).reshape(-1, 3, m), atol=1e-5)
    assert torch.allclose(model.head(h), L.to_pixelaux_layout(L.nin(sd, "nin_out.lin_a", h), c), atol=1e-5)
    assert sorted(head_row_order(c, m).tolist()) == list(range(model.dist.num_params))


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("c,n,f,m,size", [(3, 1, 8, 3, 8), (3, 2, 6, 4, 16), (1, 1, 6, 2, 16), (1, 2, 8, 5, 8)])
def test_log_prob_equals_reference_loss(c, n, f, m, size):
    sd = L.make_state_dict(n, f, m, c, seed=10 * n + c)
    model = pixelaux.import_pixel_cnn_pp(sd, image_size=size)
    x = _imgs(3, c, size, size, seed=n)
    with torch.no_grad():
        lp = model.log_prob(x)
        ref = torch.stack([-L.discretized_mix_logistic_loss(L.to_unit(x[i:i + 1]), L.forward(sd, L.to_unit(x[i:i + 1])))
                           for i in range(len(x))])
        # the whole output too, not only the likelihood
        out = model(x)
        ref_out = L.to_pixelaux_layout(L.forward(sd, L.to_unit(x)), c)
    assert _rel(lp, ref) < 1e-4, (lp, ref)
    assert (out - ref_out).abs().max() < 1e-4 * (1 + ref_out.abs().max())


def test_log_prob_sharp_mixture_pdf_branch():
    """Log-scales near the clamp, so that many pixels fall in the ``cdf_delta <= 1e-5``
    branch (log pdf at the bin centre) of the loss."""
    m = 3
    sd = L.make_state_dict(1, 6, m, 3, seed=7)
    bias = sd["nin_out.lin_a.bias"]
    for ch in range(3):
        bias[m + ch * 3 * m + m:m + ch * 3 * m + 2 * m] = -7.5      # log_scales of channel ch
    sd["nin_out.lin_a.weight_g"].mul_(0.1)
    model = pixelaux.import_pixel_cnn_pp(sd, image_size=8)
    x = _imgs(2, 3, 8, 8, seed=5)
    with torch.no_grad():
        lp = model.log_prob(x)
        ref = torch.stack([-L.discretized_mix_logistic_loss(L.to_unit(x[i:i + 1]), L.forward(sd, L.to_unit(x[i:i + 1])))
                           for i in range(2)])
    assert _rel(lp, ref) < 1e-4, (lp, ref)
    assert (lp / (3 * 64)).max() < -10      # far from the means: the pdf branch dominated


def test_file_round_trip_and_wrappers(tmp_path, rgb):
    sd, model = rgb
    x = _imgs(2, 3, 8, 8)
    want = model.log_prob(x)
    for i, obj in enumerate([sd, {"state_dict": sd, "epoch": 3}, {f"module.{k}": v for k, v in sd.items()}]):
        p = tmp_path / f"ckpt{i}.pth"
        torch.save(obj, p)
        got = pixelaux.import_pixel_cnn_pp(str(p), image_size=8)
        assert torch.equal(got.log_prob(x), want)
    got = pixelaux.import_pixel_cnn_pp(tmp_path / "ckpt0.pth", image_size=8)   # a Path too
    assert torch.equal(got.log_prob(x), want)
    # and through a pixelaux checkpoint
    pixelaux.save(got, tmp_path / "m.safetensors")
    assert torch.equal(pixelaux.load(str(tmp_path / "m.safetensors")).log_prob(x), want)


# ----------------------------------------------------------------------------- safety

_MARKER = []


def _side_effect(path):          # what a full unpickle of Evil would run
    open(path, "w").close()
    _MARKER.append(path)


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_side_effect, (self.path,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_only_refuses_custom_objects(tmp_path, capsys):
    marker = tmp_path / "executed"
    sd = dict(L.make_state_dict(1, 4, 1, 3))
    sd["u_init.conv.bias"] = Evil(str(marker))
    p = tmp_path / "evil.pt"
    torch.save(sd, p)
    with pytest.raises(ValueError, match="not a PyTorch state dict") as e:
        pixelaux.import_pixel_cnn_pp(str(p))
    assert "\n" not in str(e.value) and "_side_effect" in str(e.value)
    assert not marker.exists() and not _MARKER
    # a plain pickle (not a torch zip file) with the same payload
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"x": Evil(str(marker))}, f)
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        pixelaux.import_pixel_cnn_pp(str(tmp_path / "evil.pkl"))
    assert not marker.exists() and not _MARKER
    rc = main(["import-pixelcnnpp", str(p), "--out", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "error:" in err
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


def test_not_a_state_dict(tmp_path):
    (tmp_path / "junk.pt").write_text("hello, not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"a": 1}, tmp_path / "nontensor.pt")
    for name in ("junk.pt", "list.pt", "nontensor.pt"):
        with pytest.raises(ValueError) as e:
            pixelaux.import_pixel_cnn_pp(str(tmp_path / name))
        assert "\n" not in str(e.value) and name in str(e.value)
    with pytest.raises(ValueError, match="missing"):
        pixelaux.import_pixel_cnn_pp({"foo": torch.zeros(2)})
    with pytest.raises(TypeError):
        pixelaux.import_pixel_cnn_pp(42)


def test_missing_unexpected_misshaped_keys():
    base = L.make_state_dict(2, 6, 2, 3)
    sd = dict(base)
    del sd["down_layers.1.ul_stream.2.nin_skip.lin_a.weight_v"]
    with pytest.raises(ValueError, match=r"missing keys: down_layers\.1\.ul_stream\.2\.nin_skip\.lin_a\.weight_v"):
        pixelaux.import_pixel_cnn_pp(sd)
    sd = dict(base)
    del sd["upsize_ul_stream.1.deconv.bias"]
    sd["extra.thing"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        pixelaux.import_pixel_cnn_pp(sd)
    msg = str(e.value)
    assert "missing keys: upsize_ul_stream.1.deconv.bias" in msg and "unexpected keys: extra.thing" in msg
    sd = dict(base)
    sd["up_layers.2.u_stream.1.conv_out.conv.weight_v"] = torch.zeros(12, 12, 2, 2)
    sd["up_layers.0.ul_stream.0.nin_skip.lin_a.weight_g"] = torch.zeros(5, 1)
    with pytest.raises(ValueError, match="mis-shaped keys") as e:
        pixelaux.import_pixel_cnn_pp(sd)
    assert "up_layers.2.u_stream.1.conv_out.conv.weight_v (12, 12, 2, 2) (expected (12, 12, 2, 3))" in str(e.value)
    assert "up_layers.0.ul_stream.0.nin_skip.lin_a.weight_g" in str(e.value)
    # many problems: the first few and the count, one line
    sd = {k: v for k, v in base.items() if not k.startswith("down_layers.2.")}
    with pytest.raises(ValueError) as e:
        pixelaux.import_pixel_cnn_pp(sd)
    n = sum(k.startswith("down_layers.2.") for k in base)
    assert f"({n} in all)" in str(e.value) and "\n" not in str(e.value)
    # an extra block beyond nr_resnet is unexpected
    sd = dict(base)
    for k, v in base.items():
        if k.startswith("down_layers.1.u_stream.0."):
            sd[k.replace("u_stream.0.", "u_stream.3.")] = v
    with pytest.raises(ValueError, match=r"unexpected keys: down_layers\.1\.u_stream\.3\."):
        pixelaux.import_pixel_cnn_pp(sd)
    sd = dict(base)
    sd["u_init.conv.weight_v"] = torch.zeros_like(sd["u_init.conv.weight_v"])
    with pytest.raises(ValueError, match="non-finite"):
        pixelaux.import_pixel_cnn_pp(sd)
    with pytest.raises(ValueError, match="divisible by"):
        pixelaux.import_pixel_cnn_pp(base, image_size=(6, 8))


# ----------------------------------------------------------------------------- CLI

def test_cli_import_then_sample(tmp_path, capsys, rgb):
    sd, model = rgb
    ck, out = tmp_path / "pp.pth", tmp_path / "pp.safetensors"
    torch.save(sd, ck)
    rc = main(["import-pixelcnnpp", str(ck), "--out", str(out), "--size", "8", "8"])
    cap = capsys.readouterr()
    assert rc == 0 and cap.err == "", cap.err
    assert cap.out.count("\n") == 1
    assert "nr_resnet=1, nr_filters=8, nr_logistic_mix=3, channels=3" in cap.out and str(out) in cap.out
    loaded = pixelaux.load(str(out))
    x = _imgs(2, 3, 8, 8)
    assert torch.equal(loaded.log_prob(x), model.log_prob(x))
    assert sorted(os.listdir(tmp_path)) == ["pp.pth", "pp.safetensors"]        # atomic: no temp file left
    png = tmp_path / "s.png"
    rc = main(["sample", "--model", str(out), "--n", "2", "--out", str(png), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0 and png.exists() and "sampled 2 images 8x8" in cap.out, cap.err
    # errors: one line, exit 1; usage errors exit 2
    rc = main(["import-pixelcnnpp", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    torch.save([1, 2], tmp_path / "list.pth")
    rc = main(["import-pixelcnnpp", str(tmp_path / "list.pth"), "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "not a state dict" in err
    rc = main(["import-pixelcnnpp", str(ck), "--out", str(tmp_path / "x.safetensors"), "--size", "6", "6"])
    assert rc == 1 and capsys.readouterr().err.count("\n") == 1
    assert main(["import-pixelcnnpp", str(ck)]) == 2
    assert main(["import-pixelcnnpp", str(ck), "--out", "x", "--size", "8"]) == 2
    capsys.readouterr()
    assert not (tmp_path / "x.safetensors").exists()
