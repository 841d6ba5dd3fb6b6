"""The command line at its limits (issue 17): sizes checked against memory before any
work, batches sampled in chunks, output paths probed, one-line messages for files that
are not what they should be, conversions said, temperatures bounded, threads chosen for
the PyTorch engines, the bench worker importing the caller's package; the bench's composite
presets (the flat/pyramid pair of issue 20) and the encoders' share of their time."""
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import pixelaux
from helpers import randomize
from pixelaux import bench, resources, sampling
from pixelaux.cli import main
from pixelaux.images import read_image, write_image


@pytest.fixture(scope="module")
def gray_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize(pixelaux.GrayscalePixelCNN(hidden=6, blocks=1, nr_mix=2, encoder_blocks=1, image_size=8), 0.1)
    path = str(tmp_path_factory.mktemp("ckpt") / "gray.safetensors")
    pixelaux.save(model, path)
    return path


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(rc, err, *needles):
    assert rc in (1, 2), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_sampling(monkeypatch):
    """Fails the test if sampling starts: the check must come before any work."""
    def refuse(*a, **k):
        raise AssertionError("sampling started before the check")
    monkeypatch.setattr(sampling, "_run_stage", refuse)     # (no caller holds its own reference to it)


# ----------------------------------------------------------------------------- memory

def test_scale_and_size_are_checked_against_memory_before_sampling(gray_ckpt, tmp_path, capsys, no_sampling):
    out = tmp_path / "x.png"
    rc, _, err = run(["sample", "--model", gray_ckpt, "-n", 1, "--scale", 100000, "--out", out], capsys)
    one_line_error(rc, err, "--scale 100000", "memory")
    rc, _, err = run(["sample", "--model", gray_ckpt, "-n", 1, "--scale", 2000, "--out", tmp_path / "x.webp"], capsys)
    one_line_error(rc, err, "--scale 2000", "WEBP", "16383")
    rc, _, err = run(["sample", "--model", gray_ckpt, "-n", 1, "--size", 100000, "--out", out], capsys)
    one_line_error(rc, err, "one 100000x100000 image", "--size")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "g.png")
    rc, _, err = run(["colorize", "--model", gray_ckpt, tmp_path / "g.png", "--scale", 100000, "--out", out], capsys)
    one_line_error(rc, err, "--scale 100000")
    assert not out.exists()


def test_a_batch_larger_than_memory_is_sampled_in_chunks_with_the_same_images(gray_ckpt, tmp_path, capsys,
                                                                             monkeypatch):
    model = pixelaux.load(gray_ckpt)
    one = resources.estimate_sampling_bytes(model, 1, None, "cached", "torch")
    per = resources.estimate_sampling_bytes(model, 2, None, "cached", "torch") - one
    room = int((one + 2 * per + per // 2) / 0.7) + 3 * (2 + 3 * 10) ** 2 * 16 + 7 * 3 * 64
    monkeypatch.setattr(resources, "available_bytes", lambda device: room)     # 3 images per chunk
    argv = ["sample", "--model", gray_ckpt, "-n", 7, "--backend", "torch", "--scale", 4, "--no-progress"]
    rc, out, err = run(argv + ["--out-dir", tmp_path / "chunked", "--out", tmp_path / "chunked.png"], capsys)
    assert rc == 0, err
    assert "sampling in 3 chunks of up to 3 images" in out
    monkeypatch.undo()
    rc, out, err = run(argv + ["--out-dir", tmp_path / "whole", "--out", tmp_path / "whole.png"], capsys)
    assert rc == 0 and "chunks" not in out
    names = sorted(os.listdir(tmp_path / "whole"))
    assert names == sorted(os.listdir(tmp_path / "chunked")) and len(names) == 7
    for name in names:
        a, b = (np.asarray(Image.open(tmp_path / d / name)) for d in ("whole", "chunked"))
        assert np.array_equal(a, b), name
    assert np.array_equal(np.asarray(Image.open(tmp_path / "whole.png")),
                          np.asarray(Image.open(tmp_path / "chunked.png")))


def test_not_even_one_image_fitting_is_one_line(gray_ckpt, tmp_path, capsys, monkeypatch, no_sampling):
    monkeypatch.setattr(resources, "available_bytes", lambda device: 1000)
    rc, _, err = run(["sample", "--model", gray_ckpt, "-n", 50, "--out-dir", tmp_path / "d"], capsys)
    one_line_error(rc, err, "one 8x8 image needs about", "available")


def test_the_api_refuses_a_size_whose_images_alone_exceed_memory_without_allocating_them():
    model = randomize(pixelaux.GatedPixelCNN(channels=1, bits=4, hidden=4, blocks=1, dist="categorical",
                                             image_size=(4, 4)))
    with pytest.raises(resources.InsufficientMemoryError, match="100000"):
        pixelaux.sample(model, 1, size=(100000, 100000), progress=False)


# ----------------------------------------------------------------------------- paths

@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
@pytest.mark.parametrize("argv", [
    ["sample", "--out", "/proc/x.png"],
    ["sample", "--out-dir", "/proc/d"],
    ["sample", "--out-dir", "/proc"],
    ["bench", "--csv", "/proc/x.csv"],
    ["train", "--out", "/proc/run", "--steps", "1"],
    ["import-pixelcnnpp", __file__, "--out", "/proc/x.safetensors"],
], ids=["sample-out", "sample-out-dir", "existing-dir", "bench-csv", "train-out", "import-out"])
def test_output_paths_where_nothing_can_be_created_are_refused_up_front(argv, gray_ckpt, capsys, no_sampling):
    if argv[0] == "sample":
        argv = argv + ["--model", gray_ckpt]
    rc, _, err = run(argv, capsys)
    one_line_error(rc, err, "/proc", "cannot create files")
    assert ".tmp" not in err


def test_import_writes_only_safetensors_names(tmp_path, capsys):
    rc, _, err = run(["import-pixelcnnpp", __file__, "--out", tmp_path / "x.png"], capsys)
    one_line_error(rc, err, "--out", ".safetensors")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_failed_write_names_the_file_not_its_temporary():
    with pytest.raises(OSError) as e:
        write_image(torch.zeros(3, 2, 2, dtype=torch.uint8), "/proc/x.png")
    assert "/proc/x.png" in str(e.value) and ".tmp" not in str(e.value)


# ----------------------------------------------------------------------------- messages

class Thing:
    """Pickled by reference: a file holding it is not a state dict of tensors."""


def _bad_files(d):
    with open(d / "p4.pt", "wb") as f:
        pickle.dump({"a": 1}, f, protocol=4)
    (d / "text.pt").write_text("hello")
    torch.save({"x": torch.zeros(1), "y": Thing()}, d / "obj.pt")
    return {"pickle": d / "p4.pt", "text": d / "text.pt", "object": d / "obj.pt"}


def test_an_unreadable_checkpoint_says_what_it_is_not_in_one_line(tmp_path, capsys):
    files = _bad_files(tmp_path)
    for kind, path in files.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")       # torch's pickle-protocol warning must not leak
            rc, _, err = run(["import-pixelcnnpp", path, "--out", tmp_path / "o.safetensors"], capsys)
        line = one_line_error(rc, err, str(path))
        assert "weights_only" not in line and "Re-running" not in line, line
        assert "not" in line, line


def test_a_folder_given_as_a_file_is_called_a_folder(gray_ckpt, tmp_path, capsys):
    for argv in (["score", tmp_path], ["colorize", tmp_path, "--model", gray_ckpt],
                 ["complete", tmp_path, "--keep-rows", 2, "--model", gray_ckpt],
                 ["import-pixelcnnpp", tmp_path, "--out", tmp_path / "o.safetensors"],
                 ["sample", "--model", tmp_path]):
        rc, _, err = run(argv, capsys)
        line = one_line_error(rc, err)
        assert "folder" in line or "not a file" in line, line
        assert "not found" not in line, line


def test_complete_mask_of_another_size_names_the_image_size(gray_ckpt, tmp_path, capsys):
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "mask.png")
    rc, _, err = run(["complete", img, "--mask", tmp_path / "mask.png", "--model", gray_ckpt], capsys)
    one_line_error(rc, err, "is 5x5 but the image", "is 8x8")
    assert "the model takes" not in err


# ----------------------------------------------------------------------------- conversions

@pytest.mark.parametrize("make, channels, says", [
    (lambda: Image.fromarray(np.full((4, 4), 9, np.uint8)), 3, "R = G = B"),
    (lambda: Image.fromarray(np.full((4, 4, 3), 9, np.uint8)), 1, "read as gray"),
    (lambda: Image.fromarray(np.full((4, 4, 4), 9, np.uint8), "RGBA"), 3, "alpha"),
    (lambda: Image.fromarray(np.full((4, 4), 40000, np.uint16)), 1, "16-bit"),
    (lambda: Image.fromarray(np.full((4, 4, 3), 9, np.uint8)), 3, None),
    (lambda: Image.fromarray(np.full((4, 4), 9, np.uint8)), 1, None),
], ids=["gray-as-rgb", "rgb-as-gray", "rgba", "16-bit", "rgb", "gray"])
def test_conversions_are_said_and_only_then(make, channels, says, tmp_path):
    path = tmp_path / "i.png"
    make().save(path)
    heard = []
    img = read_image(path, channels=channels, say=heard.append)
    assert img.shape == (channels, 4, 4) and img.dtype == torch.uint8
    if says is None:
        assert heard == []
    else:
        assert len(heard) == 1 and says in heard[0] and str(path) in heard[0]
    if says == "16-bit":
        assert int(img[0, 0, 0]) == round(40000 * 255 / 65535)


@pytest.mark.parametrize("channels", [5, 0, 2, 4, -1, "rgb", True, 3.0])
def test_read_image_refuses_channel_counts_other_than_1_and_3(channels, tmp_path):
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "i.png")
    with pytest.raises(ValueError, match="channels must be 1"):
        read_image(tmp_path / "i.png", channels=channels)


def test_the_cli_says_a_conversion_on_stderr(gray_ckpt, tmp_path, capsys):
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "g.png")
    rc, out, err = run(["score", tmp_path / "g.png", "--model", gray_ckpt, "--no-progress"], capsys)
    assert rc == 0 and "bits/dim" in out
    assert "note:" in err and "R = G = B" in err


# ----------------------------------------------------------------------------- temperature, threads

@pytest.mark.parametrize("t", ["1e30", "1e-30", "11", "0.009"])
def test_temperatures_outside_the_meaningful_range_are_refused_by_the_cli(t, gray_ckpt, capsys, no_sampling):
    rc, _, err = run(["sample", "--model", gray_ckpt, "--temperature", t], capsys)
    assert rc == 2
    one_line_error(rc, err, "--temperature", "0.01", "10")


def test_the_api_warns_outside_the_meaningful_temperature_range():
    model = randomize(pixelaux.GatedPixelCNN(channels=1, bits=4, hidden=4, blocks=1, dist="categorical",
                                             image_size=(3, 3)))
    with pytest.warns(UserWarning, match="temperature"):
        pixelaux.sample(model, 1, temperature=1e-6, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixelaux.sample(model, 1, temperature=0.8, progress=False)


@pytest.mark.parametrize("engine, backend", [("naive", "auto"), ("cached", "torch")])
def test_the_pytorch_engines_run_small_models_in_one_thread(engine, backend, monkeypatch):
    model = randomize(pixelaux.GatedPixelCNN(channels=1, bits=4, hidden=4, blocks=1, dist="categorical",
                                             image_size=(3, 3)))
    seen = []
    real = pixelaux.engines.runner

    def spy(*a, **k):
        run_ = real(*a, **k)
        return lambda *args, **kw: (seen.append(torch.get_num_threads()), run_(*args, **kw))[1]
    monkeypatch.setattr(pixelaux.engines, "runner", spy)
    before = torch.get_num_threads()
    with resources.num_threads(2):
        pixelaux.sample(model, 2, engine=engine, backend=backend, progress=False)
        assert torch.get_num_threads() == 2                     # restored
    assert seen == [1]
    assert torch.get_num_threads() == before


# ----------------------------------------------------------------------------- bench worker

def test_bench_worker_imports_the_callers_package_from_the_folder_that_holds_a_clone(tmp_path, monkeypatch):
    """In the folder that holds a clone named ``pixelaux`` (the clone's top folder has no
    ``__init__.py``), ``python -m`` would import that folder as a namespace package."""
    (tmp_path / "pixelaux").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = dict(provider="forward", config=dict(channels=1, bits=4, hidden=4, blocks=1, dist="categorical", size=4),
                batch=1, device="cpu", seed=0, naive_pixels=1, repeat=1, threads=1)
    result = bench._run_worker(spec)
    assert "error" not in result, result
    assert result["seconds"] > 0


#: a toy composite in the form of the ``pyramid-64`` preset: a PixelCNN++ seed level and
#: small gated levels above it, each reading the level below through a plain U-net
TOY_PYRAMID = dict(kind="PyramidPixelCNN", channels=3, bits=8, dist="logistic", seed_size=2, size=8,
                   per_level=[dict(arch="pixelcnnpp", hidden=6, blocks=1, scales=2, nr_mix=2)]
                   + [dict(arch="gated", hidden=4, blocks=1, nr_mix=2, encoder="unet", encoder_hidden=4)] * 2)
TOY_FLAT = dict(arch="pixelcnnpp", channels=3, bits=8, hidden=6, blocks=1, scales=2, dropout=0.0, dist="logistic",
                nr_mix=2, size=8)
CACHED = ["cached-torch"] + (["cached-cpp"] if pixelaux.native.available() else [])


def test_bench_presets_the_flat_and_pyramid_pair_and_the_one_stage_ones_unchanged():
    """Issue 20.7: ``flat-pp64`` is PixelCNN++ 80/5/3 at 64x64; ``pyramid-64`` is
    8 -> 16 -> 32 -> 64 whose seed level is that same network and whose upper levels are
    one gated block of 32 channels; about the same parameters; the 128 pair likewise."""
    assert bench.PRESETS["bench-32"] == dict(channels=3, bits=8, hidden=64, blocks=8, dist="logistic", nr_mix=10,
                                             size=32)
    assert bench.PRESETS["tiny-16"] == dict(channels=3, bits=8, hidden=16, blocks=2, dist="logistic", nr_mix=5, size=16)
    assert bench.PRESETS["bench-pp32"] == dict(arch="pixelcnnpp", channels=3, bits=8, hidden=80, blocks=5, scales=3,
                                               dropout=0.0, dist="logistic", nr_mix=10, size=32)
    for size, sizes in ((64, [8, 16, 32, 64]), (128, [8, 16, 32, 64, 128])):
        flat, _ = bench.build_model(bench.PRESETS[f"flat-pp{size}"])
        pyr, got = bench.build_model(bench.PRESETS[f"pyramid-{size}"])
        assert flat.kind == "PixelCNNpp" and flat.image_size == (size, size) and not flat.training
        assert (flat.hidden, flat.config["blocks"], flat.scales, flat.config["nr_mix"]) == (80, 5, 3, 10)
        assert pyr.kind == "PyramidPixelCNN" and got == size and [s[0] for s in pyr.level_sizes] == sizes
        seed = pyr.levels[0]
        assert seed.kind == "PixelCNNpp" and {k: seed.config[k] for k in ("hidden", "blocks", "scales", "nr_mix")} \
            == {k: flat.config[k] for k in ("hidden", "blocks", "scales", "nr_mix")}
        for level, enc in zip(list(pyr.levels)[1:], pyr.encoders):
            assert level.kind == "GatedPixelCNN" and (level.hidden, level.config["blocks"]) == (32, 1)
            assert type(enc).__name__ == "UNetEncoder" and enc.stem.out_channels == 16
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        assert abs(count(pyr) / count(flat) - 1) < 0.05
        assert len(bench.encoder_modules(pyr)) == len(sizes) - 1 and bench.encoder_modules(flat) == []


def test_bench_composite_measures_every_provider_with_the_encoders_share(monkeypatch):
    """A composite's cached providers time ``pixelaux.sample`` (the clock's hooks change no
    image), ``forward`` its ``log_prob``, naive is extrapolated per stage; each reports
    the time inside its encoders, which ran once per level; a one-stage model reports none."""
    model, _ = bench.build_model(TOY_PYRAMID)
    ref = pixelaux.sample(model, 2, backend="torch", generator=torch.Generator().manual_seed(0), progress=False)
    with bench.EncoderClock(model) as clock:
        got = pixelaux.sample(model, 2, backend="torch", generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(got, ref) and clock.calls == [1, 1] and clock.seconds > 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in clock.modules)   # removed on exit
    base = dict(config=TOY_PYRAMID, batch=2, device="cpu", seed=0, naive_pixels=2, repeat=1, threads=1)
    with resources.num_threads(torch.get_num_threads()):                  # measure sets the threads
        res = {p: bench.measure({**base, "provider": p}) for p in ["forward", "naive", *CACHED]}
        flat = bench.measure({**base, "config": TOY_FLAT, "provider": "naive"})
    for p, r in res.items():
        assert 0 < r["encoder_seconds"] < r["seconds"], (p, r)
    assert res["forward"]["flops"] > 0 and not res["forward"]["extrapolated"]
    # naive: every stage's forward pass once per pixel: more than 8*8 / 4 whole forward passes
    assert res["naive"]["extrapolated"] and res["naive"]["flops"] > 8 * 8 / 4 * res["forward"]["flops"]
    assert all(res[p]["flops"] is None and not res[p]["extrapolated"] for p in CACHED)
    assert flat["encoder_seconds"] is None and flat["flops"] is None and flat["extrapolated"]


def test_bench_command_runs_a_composite_preset_into_a_csv_shared_with_a_flat_one(tmp_path, capsys, monkeypatch):
    """``pixelaux bench --preset pyramid-64 --providers cached-cpp --csv F`` (toy-sized here),
    then the flat preset into the same F: one header, ``enc %`` in the composite's table
    and ``encoder_fraction`` in its rows, empty for the flat model's."""
    monkeypatch.setitem(bench.PRESETS, "pyramid-64", TOY_PYRAMID)
    monkeypatch.setitem(bench.PRESETS, "flat-pp64", TOY_FLAT)
    monkeypatch.setattr(bench, "GEMM_N", 64)
    monkeypatch.setattr(bench, "_run_worker", bench.measure)              # in this process: no start-up
    out = tmp_path / "pair.csv"
    with resources.num_threads(torch.get_num_threads()):
        for preset in ("pyramid-64", "flat-pp64"):
            rc, stdout, err = run(["bench", "--preset", preset, "--providers", CACHED[-1], "--batch", 1, 2,
                                   "--threads", 1, "--csv", out], capsys)
            assert rc == 0, err
            table = [line for line in stdout.splitlines() if line.lstrip().startswith(("batch", "1 ", "2 "))]
            assert len(table) == 6, stdout                              # per batch: header, forward, provider
            assert all(line.rstrip().endswith("enc %") == (preset == "pyramid-64")
                       for line in table if "batch" in line), stdout
    import csv
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(bench.CSV_COLUMNS) and len(rows) == 4
    assert [r["model"] for r in rows] == ["pyramid-64"] * 2 + ["flat-pp64"] * 2
    assert all(0 < float(r["encoder_fraction"]) < 1 for r in rows[:2]) and all(r["encoder_fraction"] == ""
                                                                                 for r in rows[2:])


# ----------------------------------------------------------------------------- progress

def test_each_stage_leaves_one_finished_bar_named_after_it(gray_ckpt, capsys):
    model = pixelaux.load(gray_ckpt)
    pixelaux.sample(model, 2, backend="torch", progress=True)
    err = capsys.readouterr().err.replace("\r", "\n")
    finished = [line for line in err.splitlines() if "100%" in line]
    assert any(line.startswith("gray 8x8 (1/2) cached[torch]") for line in finished), err
    assert any(line.startswith("colour 8x8 (2/2) cached[torch]") for line in finished), err
    assert err.rstrip().endswith("px/s]"), err          # the last bar stays on screen (leave=True)
