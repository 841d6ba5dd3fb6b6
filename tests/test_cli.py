"""The ``pixelaux`` command line, end to end in a temp dir (tiny checkpoints)."""
import os
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


def test_entry_point_help_and_models():
    out = subprocess.run([sys.executable, "-m", "pixelaux", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "colorize" in out.stdout and "upscale" in out.stdout
    out = subprocess.run([sys.executable, "-m", "pixelaux", "models"], capture_output=True, text=True)
    assert out.returncode == 0 and "default" in out.stdout and "pyramid" in out.stdout
