"""The ``pixelaux`` command line, end to end in a temp dir (tiny checkpoints)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pixelaux
from helpers import randomize
from pixelaux.cli import main


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    gray = randomize(pixelaux.GrayscalePixelCNN(hidden=6, blocks=1, nr_mix=2, encoder_blocks=1, image_size=8), 0.1)
    pyr = randomize(pixelaux.PyramidPixelCNN(hidden=6, blocks=1, nr_mix=2, image_size=8, seed_size=4), 0.1)
    paths = {"gray": str(d / "gray.safetensors"), "pyr": str(d / "pyr.safetensors")}
    pixelaux.save(gray, paths["gray"])
    pixelaux.save(pyr, paths["pyr"])
    return paths


def write_png(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return str(path)


def read_png(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_sample_grid_and_dir_deterministic(ckpts, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    rc, out, _ = run(["sample", "--model", ckpts["gray"], "--n", 3, "--seed", 5, "--out", a,
                      "--out-dir", tmp_path / "imgs", "--scale", 1, "--no-progress"], capsys)
    assert rc == 0 and "engine: cached" in out and "sampled 3 images 8x8" in out
    assert sorted(os.listdir(tmp_path / "imgs")) == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    assert read_png(tmp_path / "imgs" / "sample_0000.png").shape == (8, 8, 3)
    grid = read_png(a)
    assert grid.shape == (2 + 2 * 10, 2 + 2 * 10, 3)        # 2x2 grid of 8x8 with 2px borders
    rc, _, _ = run(["sample", "--model", ckpts["gray"], "--n", 3, "--seed", 5, "--out", b, "--scale", 1,
                    "--no-progress"], capsys)
    assert rc == 0 and np.array_equal(read_png(b), grid)
    rc, _, _ = run(["sample", "--model", ckpts["gray"], "--n", 3, "--seed", 6, "--out", b, "--scale", 1,
                    "--no-progress"], capsys)
    assert not np.array_equal(read_png(b), grid)


def test_sample_naive_engine_same_images(ckpts, tmp_path, capsys):
    run(["sample", "--model", ckpts["pyr"], "--n", 2, "--out", tmp_path / "c.png", "--no-progress"], capsys)
    rc, out, _ = run(["sample", "--model", ckpts["pyr"], "--n", 2, "--engine", "naive", "--out",
                      tmp_path / "n.png", "--no-progress"], capsys)
    assert rc == 0 and "engine: naive" in out
    assert np.array_equal(read_png(tmp_path / "c.png"), read_png(tmp_path / "n.png"))


def test_colorize(ckpts, tmp_path, capsys):
    gray = write_png(tmp_path / "g.png", np.random.RandomState(0).randint(0, 256, (8, 8)))
    rc, out, _ = run(["colorize", gray, "--model", ckpts["gray"], "--samples", 3, "--out", tmp_path / "o.png",
                      "--scale", 1, "--no-progress"], capsys)
    assert rc == 0
    assert read_png(tmp_path / "o.png").shape == (2 + 10, 2 + 4 * 10, 3)   # input + 3 colourings in a row
    big = write_png(tmp_path / "big.png", np.random.RandomState(0).randint(0, 256, (40, 20)))
    rc, out, _ = run(["colorize", big, "--model", ckpts["gray"], "--samples", 1, "--max-side", 8,
                      "--out-dir", tmp_path / "col", "--no-progress"], capsys)
    assert rc == 0 and "resized" in out
    assert read_png(tmp_path / "col" / "sample_0001.png").shape == (8, 4, 3)


def test_upscale(ckpts, tmp_path, capsys):
    small = write_png(tmp_path / "s.png", np.random.RandomState(1).randint(0, 256, (4, 4, 3)))
    rc, out, _ = run(["upscale", small, "--model", ckpts["pyr"], "--samples", 2, "--out-dir", tmp_path / "up",
                      "--no-progress"], capsys)
    assert rc == 0 and "from 4x4 to 8x8" in out
    assert read_png(tmp_path / "up" / "sample_0001.png").shape == (8, 8, 3)
    odd = write_png(tmp_path / "odd.png", np.random.RandomState(1).randint(0, 256, (5, 6, 3)))
    rc, _, err = run(["upscale", odd, "--model", ckpts["pyr"], "--no-progress"], capsys)
    assert rc != 0 and "--resize" in err and len(err.strip().splitlines()) == 1


def test_complete_keeps_known_pixels(ckpts, tmp_path, capsys):
    arr = np.random.RandomState(2).randint(0, 256, (8, 8, 3))
    img = write_png(tmp_path / "i.png", arr)
    mask = np.zeros((8, 8), np.uint8)
    mask[5:, :] = 255
    m = write_png(tmp_path / "m.png", mask)
    rc, _, _ = run(["complete", img, "--mask", m, "--model", ckpts["gray"], "--samples", 2,
                    "--out-dir", tmp_path / "c", "--no-progress"], capsys)
    assert rc == 0
    got = read_png(tmp_path / "c" / "sample_0001.png")
    assert np.array_equal(got[:5], arr[:5])
    rc, _, _ = run(["complete", img, "--keep-rows", 3, "--model", ckpts["gray"], "--samples", 1,
                    "--out", tmp_path / "k.png", "--no-progress"], capsys)
    assert rc == 0 and os.path.exists(tmp_path / "k.png")


def test_score_with_split(ckpts, tmp_path, capsys):
    img = write_png(tmp_path / "i.png", np.random.RandomState(3).randint(0, 256, (8, 8, 3)))
    rc, out, _ = run(["score", img, img, "--model", ckpts["gray"]], capsys)
    assert rc == 0 and out.count("bits/dim") == 2 and "gray=" in out and "colour=" in out
    total = float(out.split(": ")[1].split()[0])
    gray = float(out.split("gray=")[1].split()[0])
    colour = float(out.split("colour=")[1].split(")")[0])
    assert abs(total - gray - colour) < 2e-3


@pytest.mark.parametrize("argv, needle", [
    (["sample", "--n", "0"], "--n"),
    (["sample", "--seed", "abc"], "--seed"),
    (["sample", "--model", "no-such-model"], "unknown model"),
    (["sample", "--temperature", "-1"], "--temperature"),
    (["colorize", "missing.png"], "not found"),
    (["score", "notes.txt", "--model", "GRAY"], "cannot read"),
    (["complete", "i.png", "--mask", "small_mask.png"], "mask"),
    (["upscale", "i.png", "--model", "GRAY"], "pyramid"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_no_traceback(argv, needle, ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    write_png(tmp_path / "i.png", np.zeros((8, 8, 3)) + 7)
    write_png(tmp_path / "small_mask.png", np.zeros((4, 4)))
    argv = [ckpts["gray"] if a == "GRAY" else a for a in argv]
    if argv[0] in ("complete", "colorize") and "--model" not in argv:
        argv += ["--model", ckpts["gray"]]
    rc, _, err = run(argv, capsys)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


@pytest.mark.slow                    # two fresh Python processes
def test_entry_point_help_and_models():
    out = subprocess.run([sys.executable, "-m", "pixelaux", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "colorize" in out.stdout and "upscale" in out.stdout
    out = subprocess.run([sys.executable, "-m", "pixelaux", "models"], capture_output=True, text=True)
    assert out.returncode == 0 and "default" in out.stdout and "pyramid" in out.stdout


# ----------------------------------------------------------------------------- issue 13: train

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """16 random 8x8 PNGs: a data set for `train --data folder:PATH` (no test split)."""
    d = tmp_path_factory.mktemp("folder")
    rng = np.random.RandomState(0)
    for i in range(16):
        write_png(d / f"{i:02d}.png", rng.randint(0, 256, (8, 8, 3)))
    return d


def _train_argv(folder, out, *extra):
    return ["train", "--data", f"folder:{folder}", "--hidden", 4, "--blocks", 1, "--batch-size", 4,
            "--ckpt-every", 1, "--eval-every", 100, "--no-progress", "--out", out, *extra]


def test_train_resume_takes_the_saved_model_data_and_settings(folder, tmp_path, capsys):
    from pixelaux import checkpoint as ck
    from pixelaux.training import read_run
    out = tmp_path / "run"
    rc, _, err = run(_train_argv(folder, out, "--steps", 2, "--lr", "0.003", "--seed", 3), capsys)
    assert rc == 0, err
    rc, stdout, err = run(["train", "--out", out, "--resume", "--steps", 4, "--no-progress"], capsys)
    assert rc == 0, err
    assert "resumed" in stdout and "step 4" in stdout
    saved = read_run(out)
    assert saved.step == 4 and saved.config["hidden"] == 4 and saved.meta["data"] == f"folder:{folder}"
    assert saved.settings.lr == 0.003 and saved.settings.seed == 3 and saved.settings.batch_size == 4
    assert ck.load(out / "model.safetensors").config["hidden"] == 4
    # repeating an option with the saved value is fine; contradicting one is one line naming it
    rc, _, err = run(["train", "--out", out, "--resume", "--steps", 5, "--hidden", 4, "--no-progress"], capsys)
    assert rc == 0, err
    rc, _, err = run(["train", "--out", out, "--resume", "--steps", 6, "--hidden", 8, "--lr", "0.01"], capsys)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err
    assert "--hidden (saved 4, given 8)" in lines[0] and "--lr (saved 0.003, given 0.01)" in lines[0]
    assert "{" not in lines[0]                                   # no config dicts
    assert read_run(out).step == 5


def test_train_gray_pyramid_model_kind_trains_resumes_and_samples(folder, tmp_path, capsys):
    """--model-kind gray-pyramid: the grayscale model whose gray view is a pyramid; its
    checkpoint samples through every stage, and --resume knows the kind it was."""
    from pixelaux.training import read_run
    out = tmp_path / "run"
    rc, _, err = run(_train_argv(folder, out, "--steps", 1, "--model-kind", "gray-pyramid", "--size", 16), capsys)
    assert rc == 0, err
    model = pixelaux.load(out / "model.safetensors")
    assert model.kind == "GrayscalePixelCNN" and model.prior.kind == "PyramidPixelCNN"
    assert sorted(model.bits_per_dim(torch.zeros(1, 3, 16, 16, dtype=torch.long))) == [
        "colour", "gray/level0_8x8", "gray/level1_16x16", "total"]
    rc, stdout, err = run(["train", "--out", out, "--resume", "--steps", 2, "--no-progress"], capsys)
    assert rc == 0 and "resumed" in stdout, err
    assert read_run(out).step == 2
    rc, _, err = run(["train", "--out", out, "--resume", "--steps", 3, "--model-kind", "grayscale"], capsys)
    assert rc == 1 and "--model-kind (saved gray-pyramid, given grayscale)" in err
    x = pixelaux.sample(model, 2, progress=False, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 16, 16)


def test_train_run_directory_messages_use_the_flags(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(_train_argv(folder, out, "--steps", 1), capsys)[0] == 0
    rc, _, err = run(_train_argv(folder, out, "--steps", 2), capsys)
    assert rc == 1 and "--resume" in err and "resume=True" not in err and "already holds a run" in err
    rc, _, err = run(_train_argv(folder, tmp_path / "none", "--steps", 2, "--resume"), capsys)
    assert rc == 1 and "--resume" in err and "resume=True" not in err and "no run to resume" in err
    (tmp_path / "file").write_text("x")
    rc, _, err = run(_train_argv(folder, tmp_path / "file", "--steps", 1), capsys)
    assert rc == 1 and "--out" in err and "not a folder" in err and "Errno" not in err
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_png(mixed / "a.png", np.zeros((8, 8, 3)))
    write_png(mixed / "b.png", np.zeros((6, 8, 3)))
    rc, _, err = run(_train_argv(mixed, tmp_path / "m", "--steps", 1), capsys)
    assert rc == 1 and "--size" in err and "8x8" in err and "6x8" in err, err


def test_train_threads_option_and_small_model_default(folder, tmp_path, capsys):
    rc, stdout, err = run(_train_argv(folder, tmp_path / "a", "--steps", 1), capsys)
    assert rc == 0 and "cpu: 1 intra-op thread (a small model" in stdout, (stdout, err)
    assert run(_train_argv(folder, tmp_path / "b", "--steps", 1, "--threads", 0), capsys)[0] == 2


# ----------------------------------------------------------------------------- issue 18: optimizer, metrics

def test_train_optimizer_and_dropout_options_reach_the_run_and_are_checked_on_resume(folder, tmp_path, capsys):
    from pixelaux.metrics import read_metrics
    from pixelaux.training import read_run
    out = tmp_path / "run"
    rc, _, err = run(_train_argv(folder, out, "--steps", 1, "--model-kind", "gray-pyramid", "--size", 16,
                                 "--lr-decay", "0.99", "--adam-betas", "0.95", "0.9995", "--ema", "0.9995",
                                 "--clip", 0, "--dropout", "0.25"), capsys)
    assert rc == 0, err
    saved = read_run(out)
    cfg = saved.settings
    assert (cfg.lr_decay, cfg.adam_betas, cfg.ema_decay, cfg.grad_clip) == (0.99, (0.95, 0.9995), 0.9995, 0.0)
    model = pixelaux.load(out / "model.safetensors")
    drops = [mod for mod in model.modules() if isinstance(mod, torch.nn.Dropout)]
    # every network: the gray pyramid's two levels and the colour stage, 2 blocks each
    assert len(drops) == 6 and all(d.p == 0.25 for d in drops)
    assert [r["step"] for r in read_metrics(out)] == [1]
    rc, _, err = run(["train", "--out", out, "--resume", "--steps", 2, "--adam-betas", "0.95", "0.9995",
                      "--dropout", "0.25", "--clip", 0, "--no-progress"], capsys)
    assert rc == 0, err                                           # the saved values: fine
    rc, _, err = run(["train", "--out", out, "--resume", "--steps", 3, "--adam-betas", "0.9", "0.999",
                      "--lr-decay", "1", "--ema", "0.999", "--clip", "1", "--dropout", "0"], capsys)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err
    for part in ("--adam-betas (saved 0.95 0.9995, given 0.9 0.999)", "--lr-decay (saved 0.99, given 1.0)",
                 "--ema (saved 0.9995, given 0.999)", "--clip (saved 0.0, given 1.0)",
                 "--dropout (saved 0.25, given 0.0)"):
        assert part in lines[0], (part, lines[0])
    assert read_run(out).step == 2 and [r["step"] for r in read_metrics(out)] == [1, 2]


@pytest.mark.parametrize("argv,flag", [
    (["--adam-betas", "0.9", "1"], "--adam-betas"), (["--adam-betas", "0.9"], "--adam-betas"),
    (["--lr-decay", "0"], "--lr-decay"), (["--lr-decay", "1.5"], "--lr-decay"), (["--clip", "-1"], "--clip"),
    (["--clip", "nan"], "--clip"), (["--dropout", "1"], "--dropout"), (["--ema", "2"], "--ema")])
def test_train_option_ranges_are_usage_errors_naming_the_option(argv, flag, tmp_path, capsys):
    rc, _, err = run(["train", "--out", tmp_path / "x", *argv], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and flag in err, err
    assert not (tmp_path / "x").exists()


def test_plot_metrics_refusals_up_front_and_the_png(folder, tmp_path, capsys, monkeypatch):
    import importlib.util
    out = tmp_path / "run"
    assert run(_train_argv(folder, out, "--steps", 2, "--eval-every", 1), capsys)[0] == 0
    png = tmp_path / "curve.png"
    real = importlib.util.find_spec
    with monkeypatch.context() as mp:            # as if matplotlib were there: the other checks
        mp.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "matplotlib" else real(name, *a))
        for argv, words in ([[tmp_path, "--out", png], ["--plot-metrics", "no metrics.jsonl"]],
                            [[tmp_path / "none", "--out", png], ["--plot-metrics", "not a folder"]],
                            [[out, "--out", png, "--steps", 3], ["--plot-metrics", "--steps"]],
                            [[out, "--out", tmp_path / "curve.jpg"], ["--out", "PNG"]],
                            [[out, "--out", tmp_path], ["--out", "is a folder"]]):
            rc, _, err = run(["train", "--plot-metrics", *argv], capsys)
            assert rc == 1 and len(err.strip().splitlines()) == 1 and all(w in err for w in words), (argv, err)
    with monkeypatch.context() as mp:
        mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
        rc, _, err = run(["train", "--plot-metrics", out, "--out", png], capsys)
        assert rc == 1 and "--plot-metrics needs matplotlib" in err and len(err.strip().splitlines()) == 1
    assert not png.exists()
    if real("matplotlib") is None:
        pytest.skip("matplotlib is not installed: the refusal is tested, the plot is not")
    rc, stdout, err = run(["train", "--plot-metrics", out, "--out", png], capsys)
    assert rc == 0 and "wrote" in stdout and "2 points" in stdout, err
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    # several runs: one comparison picture
    other = tmp_path / "other"
    shutil.copytree(out, other)
    both = tmp_path / "both.png"
    rc, stdout, err = run(["train", "--plot-metrics", out, other, "--out", both], capsys)
    assert rc == 0 and "2 runs" in stdout and "other (2 points)" in stdout, err
    with Image.open(both) as im:
        assert im.format == "PNG" and im.size[0] > 200
    rc, _, err = run(["train", "--plot-metrics", out, tmp_path / "none", "--out", both], capsys)
    assert rc == 1 and "none: not a folder" in err


# ----------------------------------------------------------------------------- issue 13: checks up front

def test_output_paths_are_checked_before_sampling(ckpts, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for argv, needle in [(["--out-dir", tmp_path / "file"], "--out-dir"),
                         (["--out", tmp_path / "file" / "x.png"], "--out"),
                         (["--out", tmp_path], "is a folder"),
                         (["--out", tmp_path / "x.bmp"], ".bmp"),
                         (["--out", tmp_path / "noext"], "no extension")]:
        rc, stdout, err = run(["sample", "--model", ckpts["gray"], "--n", 1, "--no-progress", *argv], capsys)
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and needle in lines[0] and "Errno" not in err, (argv, err)
        assert "engine:" not in stdout and "sampled" not in stdout              # nothing ran


@pytest.mark.parametrize("ext, fmt", [("png", "PNG"), ("jpg", "JPEG"), ("JPEG", "JPEG"), ("webp", "WEBP")])
def test_grid_is_written_in_the_format_its_extension_names(ext, fmt, ckpts, tmp_path, capsys):
    out = tmp_path / f"grid.{ext}"
    rc, _, err = run(["sample", "--model", ckpts["gray"], "--n", 2, "--scale", 1, "--no-progress", "--out", out],
                     capsys)
    assert rc == 0, err
    with Image.open(out) as im:
        assert im.format == fmt and im.size == (2 + 2 * 10, 12)
    if fmt != "JPEG":                                             # lossless: the same pixels as the PNG
        run(["sample", "--model", ckpts["gray"], "--n", 2, "--scale", 1, "--no-progress", "--out",
             tmp_path / "ref.png"], capsys)
        assert np.array_equal(read_png(out), read_png(tmp_path / "ref.png"))


def test_bench_usage_errors_and_missing_matplotlib_refused_before_running(tmp_path, capsys, monkeypatch):
    import importlib.util

    import pixelaux.bench
    calls = []
    monkeypatch.setattr(pixelaux.bench, "run_benchmark", lambda *a, **k: calls.append(a))
    for argv in (["--batch", 0], ["--batch", 1, 0], ["--threads", 0], ["--repeat", 0], ["--naive-pixels", -1]):
        rc, _, err = run(["bench", *argv], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and argv[0] in err, (argv, err)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    rc, _, err = run(["bench", "--plot", tmp_path / "p.png"], capsys)
    assert rc == 1 and "--plot" in err and "matplotlib" in err
    assert calls == []
    rc, _, err = run(["bench", "--csv", tmp_path], capsys)
    assert rc == 1 and "--csv" in err and calls == []
    # a CSV written before a column was added: appending would misalign its rows
    old = tmp_path / "old.csv"
    old.write_text(",".join(c for c in pixelaux.bench.CSV_COLUMNS if c != "encoder_fraction") + "\n")
    rc, _, err = run(["bench", "--csv", old], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "--csv" in err and "encoder_fraction" in err, err
    assert calls == []
    with pytest.raises(ValueError, match="csv_path .*lacks encoder_fraction"):
        pixelaux.bench.check_arguments(csv_path=str(old))


def test_every_usage_error_exits_2(ckpts, capsys):
    for argv in (["sample", "--size", 32, 32, 32], ["sample", "--size", 0], ["sample", "--size", "x"],
                 ["train", "--out", "x", "--hidden", 0], ["train", "--out", "x", "--data", "imagenet"],
                 ["train", "--out", "x", "--size", 8, 8, 8], ["bench", "--batch", 0]):
        rc, _, err = run(argv, capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1, (argv, rc, err)


# ----------------------------------------------------------------------------- issue 13: sizes

def test_one_size_rule_for_complete_and_score(ckpts, tmp_path, capsys):
    """An image is used at its own size when the model takes it, otherwise refused unless
    --resize; sizes are written HxW."""
    rng = np.random.RandomState(4)
    wide = write_png(tmp_path / "wide.png", rng.randint(0, 256, (6, 10, 3)))        # H=6, W=10
    for cmd in (["score", wide], ["complete", wide, "--keep-rows", 2, "--samples", 1, "--no-progress",
                                  "--out", tmp_path / "c.png"]):
        rc, stdout, err = run([*cmd, "--model", ckpts["gray"]], capsys)     # any size: used as it is
        assert rc == 0 and "resized" not in stdout, err
        rc, stdout, err = run([*cmd, "--model", ckpts["pyr"]], capsys)      # 2-level pyramid: even sides
        assert rc == 0 and "resized" not in stdout, err
        rc, stdout, err = run([*cmd, "--model", ckpts["gray"], "--resize"], capsys)
        assert rc == 0 and "resized" in stdout and "from 6x10 to 8x8" in stdout, stdout
    odd = write_png(tmp_path / "odd.png", rng.randint(0, 256, (5, 6, 3)))           # H=5, W=6
    for cmd in (["score", odd], ["complete", odd, "--keep-rows", 2, "--out", tmp_path / "c.png"]):
        rc, _, err = run([*cmd, "--model", ckpts["pyr"]], capsys)
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and "5x6" in lines[0] and "--resize" in lines[0], err
    rc, stdout, _ = run(["score", odd, "--model", ckpts["pyr"], "--resize"], capsys)
    assert "from 5x6 to 8x8" in stdout and "bits/dim" in stdout


def test_score_says_when_it_scores_a_large_image_at_its_own_size(ckpts, tmp_path, capsys):
    big = write_png(tmp_path / "big.png", np.random.RandomState(5).randint(0, 256, (32, 24, 3)))
    rc, stdout, err = run(["score", big, "--model", ckpts["gray"]], capsys)
    assert rc == 0 and "bits/dim" in stdout
    assert "scoring" in err and "32x24" in err and "12x the pixels" in err and "--resize" in err


def test_upscale_sizes_are_height_by_width(ckpts, tmp_path, capsys):
    tall = write_png(tmp_path / "tall.png", np.random.RandomState(6).randint(0, 256, (6, 4, 3)))   # H=6, W=4
    rc, _, err = run(["upscale", tall, "--model", ckpts["pyr"], "--no-progress"], capsys)
    assert rc == 1 and "is 6x4" in err and "4x4" in err
    rc, stdout, _ = run(["upscale", tall, "--model", ckpts["pyr"], "--resize", "--no-progress", "--samples", 1,
                         "--out", tmp_path / "u.png"], capsys)
    assert rc == 0 and "from 6x4 to 4x4" in stdout and "from 4x4 to 8x8" in stdout


# ----------------------------------------------------------------------------- issue 13: backends

def test_missing_extension_is_one_clean_line_in_sample_models_and_version(ckpts, tmp_path, capsys, monkeypatch):
    import warnings

    from pixelaux import engines, native
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(native, "reason", lambda: "pixelaux._C is not built (test)")
    monkeypatch.setattr(engines, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, stdout, err = run(["sample", "--model", ckpts["gray"], "--n", 1, "--no-progress",
                               "--out", tmp_path / "s.png"], capsys)
    assert rc == 0, err
    assert "engine: cached, backend: torch (the C++ backend is unavailable: pixelaux._C is not built (test))" \
        in stdout.splitlines()
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)] and err.strip() == ""
    for argv in (["--version"], ["models"]):
        rc, stdout, _ = run(argv, capsys)
        lines = [s for s in stdout.splitlines() if s.startswith("backends:")]
        assert rc == 0 and len(lines) == 1 and "cpp NO (pixelaux._C is not built (test))" in lines[0]
        assert "torch yes" in lines[0] and "triton" in lines[0]


def test_version_names_the_backends_of_this_install(capsys):
    from pixelaux import __version__, native
    rc, stdout, _ = run(["--version"], capsys)
    assert rc == 0 and stdout.startswith(f"pixelaux {__version__} (torch ")
    assert ("cpp yes" if native.available() else "cpp NO") in stdout


def test_models_prints_bits_per_dim_with_three_decimals(capsys):
    import re
    rc, stdout, _ = run(["models"], capsys)
    assert rc == 0 and "test bits/dim: " in stdout
    numbers = re.findall(r"\d+\.\d+", "\n".join(s for s in stdout.splitlines() if "bits/dim" in s))
    assert numbers and all(len(n.split(".")[1]) == 3 for n in numbers), numbers


def test_gitignore_covers_the_readme_outputs():
    from pathlib import Path
    lines = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "/samples.png" in lines


def test_complete_mask_shape_error_reports_the_shape_given(ckpts):
    import torch

    model = pixelaux.load(ckpts["gray"])
    with pytest.raises(ValueError, match=r"got \(5, 8\)"):
        pixelaux.complete(model, torch.zeros(1, 3, 8, 8, dtype=torch.long), torch.ones(5, 8, dtype=torch.bool))


def test_argument_parsing_lives_in_cli_only_and_cli_imports_no_private_names():
    import ast
    from pathlib import Path
    pkg = Path(pixelaux.__file__).resolve().parent
    for name in ("training.py", "bench.py"):
        tree = ast.parse((pkg / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        assert "argparse" not in imported, f"{name} parses arguments"
    tree = ast.parse((pkg / "cli.py").read_text())
    private = [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


def test_consistent_option_turns_truncation_on_and_off(ckpts, tmp_path, capsys):
    """The test checkpoints are new models (consistent): --no-consistent scores the bound,
    --consistent the exact likelihood, lower on the same image (the colour part gains)."""
    img = write_png(tmp_path / "i.png", np.random.RandomState(4).randint(0, 256, (8, 8, 3)))
    bpd = {}
    for flag in ("--consistent", "--no-consistent"):
        rc, out, _ = run(["score", img, "--model", ckpts["gray"], flag], capsys)
        assert rc == 0
        bpd[flag] = float(out.split(": ")[1].split()[0])
    assert bpd["--consistent"] < bpd["--no-consistent"]
