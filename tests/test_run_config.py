"""Run configurations of ``pixelaux train`` (issue 18, items 4-6): --config, --preset,
--set, --print-config, config.json in the run directory, class-conditional training and
``sample --class``. Toy sizes, one or two steps."""
import importlib.util
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import pixelaux
from pixelaux import run_config
from pixelaux.checkpoint import read_header
from pixelaux.cli import main
from pixelaux.pyramid import level_sizes
from pixelaux.training import read_run, train

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None
TOY = ["--hidden", 4, "--blocks", 1, "--batch-size", 2, "--steps", 1, "--no-progress"]


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def printed(argv, capsys) -> dict:
    rc, out, err = run(["train", "--print-config", *argv], capsys)
    assert rc == 0 and err == "", err
    return json.loads(out)


def one_line(err) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def write_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """8 random 16x16 PNGs, no class sub-folders."""
    d = tmp_path_factory.mktemp("plain")
    rng = np.random.RandomState(0)
    for i in range(8):
        write_png(d / f"{i}.png", rng.randint(0, 256, (16, 16, 3)))
    return d


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """Class sub-folders cat/ and dog/ of 8x8 PNGs (dog: bright, cat: dark)."""
    d = tmp_path_factory.mktemp("classes")
    rng = np.random.RandomState(1)
    for i in range(4):
        write_png(d / "cat" / f"{i}.png", rng.randint(0, 64, (8, 8, 3)))
        write_png(d / "dog" / f"{i}.png", rng.randint(192, 256, (8, 8, 3)))
    return d


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A tiny cifar-10-python.tar.gz: 4 images per batch, labels 0..9."""
    d = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    path = d / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            raw = pickle.dumps({b"labels": [int(v) for v in rng.integers(0, 10, 4)],
                                b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8)}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


# ----------------------------------------------------------------------------- presets, files, flags

def test_presets_say_what_they_follow_and_resolve_to_the_papers_settings(capsys):
    for name in run_config.PRESETS:
        cfg = printed(["--preset", name], capsys)
        assert "Kolesnikov" in cfg["comment"] or "Salimans" in cfg["comment"], name
        t = cfg["train"]
        assert (t["global_batch"], t["batch_size"], t["lr"], t["lr_decay"]) == (128, None, 1e-3, 0.999995)
        assert (t["adam_betas"], t["ema_decay"], t["grad_clip"]) == ([0.95, 0.9995], 0.9995, 0.0)
        assert cfg["model"]["weight_norm"] is True
    pp = printed(["--preset", "pixelcnnpp-cifar"], capsys)["model"]
    assert {k: pp[k] for k in ("kind", "hidden", "blocks", "scales", "dropout", "nr_mix", "image_size")} == dict(
        kind="PixelCNNpp", hidden=160, blocks=5, scales=3, dropout=0.5, nr_mix=10, image_size=[32, 32])
    gray = printed(["--preset", "kl17-cifar-gray"], capsys)["model"]
    assert (gray["kind"], gray["arch"], gray["gray_bits"], gray["hidden"]) == (
        "GrayscalePixelCNN", "pixelcnnpp", 4, 160)
    assert (gray["encoder"], gray["encoder_blocks"]) == ("gated", 9)          # the authors' deep gray encoder
    for name in ("kl17-cifar-pyramid", "kl17-celeba128-pyramid"):             # and their gated U-net
        pyr = printed(["--preset", name], capsys)["model"]
        assert (pyr["encoder"], pyr["encoder_blocks"]) == ("gated-unet", 2), name
    celeba = printed(["--preset", "kl17-celeba128-pyramid"], capsys)
    m = celeba["model"]
    assert celeba["data"].startswith("folder:")
    assert (m["image_size"], m["seed_size"], m["blocks"], m["hidden"], m["arch"]) == (
        [128, 128], [8, 8], 3, 100, "gated")
    assert len(level_sizes(m["image_size"], m["seed_size"])) == 5     # 8 -> 128


def test_print_config_round_trips_and_edited_is_a_valid_config(tmp_path, capsys):
    first = printed(["--preset", "kl17-cifar-gray", "--data", "patches", "--size", 8, "--hidden", 4], capsys)
    f = tmp_path / "run.json"
    f.write_text(json.dumps(first))
    assert printed(["--config", f], capsys) == first
    first["model"]["encoder_blocks"] = 2
    first["train"]["lr"] = 0.002
    f.write_text(json.dumps(first))
    again = printed(["--config", f], capsys)
    assert again["model"]["encoder_blocks"] == 2 and again["train"]["lr"] == 0.002
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_flags_override_the_file_which_overrides_the_preset(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": {"hidden": 8, "encoder_blocks": 1}, "train": {"lr": 0.01}}))
    cfg = printed(["--preset", "kl17-cifar-gray", "--config", f, "--hidden", 4, "--set", "train.steps=7"], capsys)
    m = cfg["model"]
    assert (m["hidden"], m["encoder_blocks"], m["blocks"], m["arch"]) == (4, 1, 5, "pixelcnnpp")   # flag, file, preset
    assert cfg["train"]["lr"] == 0.01 and cfg["train"]["steps"] == 7
    # a model of another kind in the file replaces the preset's; --batch-size clears global_batch
    f.write_text(json.dumps({"model": {"kind": "GatedPixelCNN", "hidden": 8}}))
    cfg = printed(["--preset", "pixelcnnpp-cifar", "--config", f, "--batch-size", 3], capsys)
    assert cfg["model"]["kind"] == "GatedPixelCNN" and cfg["model"]["blocks"] == 8     # the constructor's default
    assert (cfg["train"]["batch_size"], cfg["train"]["global_batch"]) == (3, None)
    # every family from the command line: --arch reaches every network, the gray-pyramid's prior too
    cfg = printed(["--model-kind", "gray-pyramid", "--arch", "pixelcnnpp", "--scales", 2, "--hidden", 8,
                   "--weight-norm", "--nr-mix", 3, "--size", 16], capsys)["model"]
    prior = cfg["prior"]
    assert (cfg["arch"], cfg["scales"], cfg["weight_norm"], cfg["nr_mix"]) == ("pixelcnnpp", 2, True, 3)
    assert (prior["kind"], prior["arch"], prior["scales"], prior["hidden"], prior["image_size"]) == (
        "PyramidPixelCNN", "pixelcnnpp", 2, 8, [16, 16])
    assert printed(["--model-kind", "gated", "--arch", "pixelcnnpp"], capsys)["model"]["kind"] == "PixelCNNpp"
    # per-level networks of a pyramid and the deep encoders are keys like any other
    levels = [{"arch": "pixelcnnpp", "scales": 2}, {"blocks": 1, "encoder": "gated-unet"}, {"blocks": 1}]
    pyr = printed(["--model-kind", "pyramid", "--set", "model.per_level=" + json.dumps(levels)], capsys)["model"]
    assert pyr["per_level"] == levels
    gray = printed(["--model-kind", "grayscale", "--set", 'model.encoder="gated"'], capsys)["model"]
    assert (gray["encoder"], gray["encoder_blocks"]) == ("gated", 4)


@pytest.mark.parametrize("argv,needle", [
    (["--preset", "kl17"], "invalid choice: 'kl17' (choose from 'pixelcnnpp-cifar'"),
    (["--config", "{tmp}/missing.json"], "missing.json: no such file"),
    (["--config", "{tmp}/bad.json"], "bad.json: not valid JSON"),
    (["--config", "{tmp}/list.json"], "expected a JSON object"),
    (["--config", "{tmp}/typo.json"],
     'model.hiden: unknown key: not an argument of GatedPixelCNN; did you mean "hidden"?'),
    (["--config", "{tmp}/top.json"], 'trian: unknown key (did you mean "train"?)'),
    (["--config", "{tmp}/type.json"], 'model.hidden: expected an integer >= 1, got "x"'),
    (["--config", "{tmp}/range.json"], "train.lr: expected a number in (0, inf), got -1"),
    (["--set", "train.adam_betas=[0.9,1.5]"], "train.adam_betas[1]: expected a number in [0, 1), got 1.5"),
    (["--set", "model.kind=Foo"], 'model.kind: expected one of "GatedPixelCNN"'),
    (["--model-kind", "pixelcnnpp", "--size", 6], "model (PixelCNNpp): image_size: a PixelCNNpp with scales=3"),
    (["--scales", 2], "--scales: a GatedPixelCNN takes no scales"),
    (["--class-cond"], "class_cond (--class-cond): data patches has no labels"),
    (["--class-cond", "--model-kind", "grayscale", "--data", "cifar10:{cifar}"], "takes a GatedPixelCNN or PixelCNNpp"),
    (["--data", "cifar10:{cifar}", "--size", 16], "CIFAR-10 images are 32x32"),
    (["--model-kind", "grayscale", "--set", 'model.encoder="unet"'], "encoder must be one of ('resnet', 'gated')"),
    (["--model-kind", "pyramid", "--set", 'model.per_level=[{},{"hiden":1},{}]'], "per_level[1].hiden: unknown key"),
])
def test_bad_configuration_is_one_line_naming_the_key(argv, needle, cifar, tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"model": {"hidden": 4,}}')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "typo.json").write_text('{"model": {"hiden": 4}}')
    (tmp_path / "top.json").write_text('{"trian": {}}')
    (tmp_path / "type.json").write_text('{"model": {"hidden": "x"}}')
    (tmp_path / "range.json").write_text('{"train": {"lr": -1}}')
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{cifar}", str(cifar)) if isinstance(a, str) else a
            for a in argv]
    for extra in (["--print-config"], ["--out", tmp_path / "run"]):
        rc, _, err = run(["train", *argv, *extra], capsys)
        assert rc in (1, 2) and needle in one_line(err), (argv, err)
        assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_out_is_required_to_train_but_not_to_print(capsys):
    rc, _, err = run(["train", "--steps", 1], capsys)
    assert rc == 2 and "--out" in one_line(err)


# ----------------------------------------------------------------------------- training with presets

@pytest.mark.skipif(not HAS_SKIMAGE, reason="--data patches needs scikit-image")
def test_preset_trains_on_patches_and_the_run_keeps_its_config(tmp_path, capsys):
    out = tmp_path / "run"
    # batch 32: the test split's 442 patches in 14 batches (per-call overhead rules at toy size)
    argv = ["--preset", "pixelcnnpp-cifar", "--data", "patches", "--size", 32, *TOY, "--batch-size", 32]
    want = printed(argv, capsys)
    rc, _, err = run(["train", *argv, "--out", out], capsys)
    assert rc == 0, err
    assert json.loads((out / "config.json").read_text()) == want
    model = pixelaux.load(out / "model.safetensors")
    assert model.kind == "PixelCNNpp" and model.config["weight_norm"] and model.config["dropout"] == 0.5
    saved = read_run(out)
    cfg = saved.settings
    assert (cfg.adam_betas, cfg.ema_decay, cfg.grad_clip) == ((0.95, 0.9995), 0.9995, 0)


@pytest.mark.parametrize("name", ["kl17-cifar-gray", "kl17-cifar-pyramid", "kl17-celeba128-pyramid"])
def test_presets_train_at_toy_size(name, folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run(["train", "--preset", name, "--data", f"folder:{folder}", "--size", 16, *TOY, "--out", out],
                     capsys)
    assert rc == 0, err
    model = pixelaux.load(out / "model.safetensors")
    assert model.kind == run_config.PRESETS[name]["model"]["kind"] and model.config["weight_norm"]
    assert model.config["hidden"] == 4 and model.image_size == (16, 16)
    enc = model.encoder
    assert type(enc).__name__ == ("GatedEncoder" if "gray" in name else "GatedUNetEncoder")
    # a map per scale of a PixelCNN++ colour / level network, one map for a gated one
    assert enc.out_scales == (model.conditional.scales if model.conditional.kind == "PixelCNNpp" else 1)


def test_resume_reads_config_json_and_refuses_what_contradicts_it(folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--preset", "kl17-celeba128-pyramid", "--data", f"folder:{folder}", "--size", 16, *TOY]
    rc, _, err = run(["train", *argv, "--out", out], capsys)
    assert rc == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["hidden"] == 4 and saved["train"]["steps"] == 1 and saved["train"]["batch_size"] == 2
    assert saved["train"]["ema_decay"] == 0.9995 and saved["data"] == f"folder:{folder}"
    saved["comment"] = "edited"                                  # only config.json holds it
    (out / "config.json").write_text(json.dumps(saved))
    rc, stdout, err = run(["train", "--out", out, "--resume", "--steps", 2, "--no-progress"], capsys)
    assert rc == 0 and "resumed" in stdout, err
    again = json.loads((out / "config.json").read_text())
    assert again["train"]["steps"] == 2 and again["comment"] == "edited"
    assert read_run(out).settings.ema_decay == 0.9995
    rc, _, err = run(["train", "--out", out, "--resume", "--steps", 3, "--hidden", 8, "--set", "model.blocks=2"],
                     capsys)
    line = one_line(err)
    assert rc == 1 and "--hidden (saved 4, given 8)" in line
    assert "--set model.blocks=2 (model.blocks: saved 1, given 2" in line
    assert read_run(out).step == 2


def test_resume_of_a_run_without_config_json_takes_its_saved_settings(folder, tmp_path, capsys):
    """Runs from before config files: the training state's model and settings."""
    out = tmp_path / "run"
    rc, _, err = run(["train", "--data", f"folder:{folder}", "--model-kind", "pyramid", "--hidden", 4, "--blocks", 1,
                      "--batch-size", 2, "--steps", 1, "--lr", "0.003", "--no-progress", "--out", out], capsys)
    assert rc == 0, err
    (out / "config.json").unlink()
    rc, _, err = run(["train", "--out", out, "--resume", "--steps", 2, "--lr", "0.01", "--model-kind", "gated"], capsys)
    line = one_line(err)
    assert rc == 1 and "--lr (saved 0.003, given 0.01)" in line and "--model-kind (saved pyramid, given gated)" in line
    rc, _, err = run(["train", "--out", out, "--resume", "--steps", 2, "--hidden", 4, "--no-progress"], capsys)
    assert rc == 0, err
    saved = read_run(out)
    assert saved.step == 2 and saved.settings.lr == 0.003 and saved.kind == "PyramidPixelCNN"
    assert json.loads((out / "config.json").read_text())["model"]["kind"] == "PyramidPixelCNN"


def test_global_batch_splits_over_the_processes():
    t = dict(run_config.DEFAULT_TRAIN, batch_size=None, global_batch=128)
    assert [run_config.process_batch(t, w) for w in (1, 2, 8)] == [128, 64, 16]
    with pytest.raises(run_config.ConfigError, match="train.global_batch: 128 images per step do not split evenly "
                                                     "over 3 processes"):
        run_config.process_batch(t, 3)


# ----------------------------------------------------------------------------- class-conditional

def test_class_cond_cifar_trains_and_samples_each_class(cifar, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run(["train", "--preset", "pixelcnnpp-cifar", "--data", f"cifar10:{cifar}", "--class-cond",
                      "--hidden", 4, "--blocks", 1, "--batch-size", 4, "--steps", 1, "--no-progress", "--out", out],
                     capsys)
    assert rc == 0, err
    model = pixelaux.load(out / "model.safetensors")
    assert model.kind == "PixelCNNpp" and model.cond_channels == 10
    assert read_header(out / "model.safetensors")["classes"][5] == "dog"
    assert json.loads((out / "config.json").read_text())["class_cond"] is True
    ckpt = out / "model.safetensors"
    grids = {}
    for k in ("3", "dog"):
        rc, stdout, err = run(["sample", "--model", ckpt, "--class", k, "-n", 2, "--out", tmp_path / f"{k}.png",
                               "--no-progress", "--scale", 1], capsys)
        assert rc == 0 and "of class" in stdout, err
        grids[k] = np.asarray(Image.open(tmp_path / f"{k}.png"))
    # class 3 and class 5 ("dog") from the same seed: the class reaches the samples
    assert not np.array_equal(grids["3"], grids["dog"])
    for bad, needle in (("10", "the model has 10 classes, 0 to 9"), ("-1", "0 to 9"), ("zebra", "one of airplane")):
        rc, _, err = run(["sample", "--model", ckpt, "--class", bad, "-n", 1, "--out", tmp_path / "x.png"], capsys)
        assert rc == 1 and f"--class {bad}" in one_line(err) and needle in err, err
    rc, _, err = run(["sample", "--model", ckpt, "-n", 1, "--out", tmp_path / "x.png"], capsys)
    assert rc == 1 and "class-conditional (10 classes): give --class K" in one_line(err)
    rc, _, err = run(["sample", "--model", "pyramid", "--class", 1, "-n", 1, "--out", tmp_path / "x.png"], capsys)
    assert rc == 1 and "is not class-conditional" in one_line(err)


def test_class_cond_folder_uses_class_subfolders(classes, folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run(["train", "--data", f"folder:{classes}", "--class-cond", "--hidden", 4, "--blocks", 1,
                      "--batch-size", 2, "--steps", 2, "--no-progress", "--out", out], capsys)
    assert rc == 0, err
    assert read_header(out / "model.safetensors")["classes"] == ["cat", "dog"]
    assert read_run(out).meta["classes"] == ["cat", "dog"]
    rc, _, err = run(["sample", "--model", out / "model.safetensors", "--class", "dog", "-n", 1,
                      "--out", tmp_path / "d.png", "--no-progress"], capsys)
    assert rc == 0, err
    rc, _, err = run(["train", "--data", f"folder:{folder}", "--class-cond", "--out", tmp_path / "x"], capsys)
    assert rc == 1 and "--class-cond" in one_line(err) and "no labels" in err


def test_train_api_class_conditional_needs_labels(tmp_path):
    from torch.utils.data import TensorDataset
    x = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8)
    model = pixelaux.GatedPixelCNN(hidden=4, blocks=1, image_size=4, cond_channels=2)
    with pytest.raises(ValueError, match="class-conditional"):
        train(model, x, steps=1, batch_size=2, out_dir=tmp_path / "a", progress=False, log=str)
    with pytest.raises(ValueError, match=r"label 2, outside \[0, 2\)"):
        train(model, TensorDataset(x, torch.tensor([0, 1, 2, 0])), steps=2, batch_size=4,
                                out_dir=tmp_path / "b", progress=False, log=str)
    ds = TensorDataset(x, torch.tensor([0, 1, 1, 0]))
    res = train(model, ds, test_data=ds, steps=1, batch_size=2, out_dir=tmp_path / "c",
                                  progress=False, log=str)
    # the test figure is bits/dim given each image's own label
    ema = res.ema_model
    cond = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0]), 2).float()
    want = float(-ema.log_prob(x.long(), cond).sum() / (x.numel() * np.log(2)))
    assert abs(res.test_bpd - want) < 1e-5


def test_data_with_labels(classes, cifar, tmp_path):
    from pixelaux.data import CIFAR10, ImageFolder, spec_classes
    ds = ImageFolder(classes, labels=True)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    x, y = ds[5]
    assert x.shape == (3, 8, 8) and y == 1 and int(x.float().mean()) >= 192        # a bright "dog"
    assert spec_classes(f"folder:{classes}") == ["cat", "dog"] and spec_classes(f"cifar10:{cifar}")[3] == "cat"
    c = CIFAR10(cifar, labels=True)
    assert all(torch.equal(c[i][0], c.images[i]) and c[i][1] == int(c.labels[i]) for i in range(len(c)))
    loose = tmp_path / "loose"
    write_png(loose / "a" / "0.png", np.zeros((4, 4, 3)))
    write_png(loose / "top.png", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="top.png' is directly in it"):
        ImageFolder(loose, labels=True)
    with pytest.raises(ValueError, match="no labels"):
        spec_classes("patches")
