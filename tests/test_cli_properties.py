"""``pixelaux.cli.main`` on random command lines (property-based): exit 0 with a readable
image, or exit 1 / 2 with one line on stderr; never an exception, never a temp file.
And the device / seed mistakes, one line each.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from reliability_helpers import (  # noqa: F401 (fixtures)
    COUNTS, CPP, FILES, HYP, cli, files, models, one_thread_and_report, wild_args)

pytestmark = pytest.mark.usefixtures("one_thread_and_report")


CLI_OPTIONS = ("model", "input", "n", "size", "scale", "seed", "engine", "backend", "temperature", "device",
               "out", "task")


@pytest.mark.usefixtures("files")
@pytest.mark.slow                # property-based: hundreds of inputs
@settings(max_examples=80, **HYP)
@given(data=st.data())
def test_property_cli(data):
    files = FILES
    """``pixelaux.cli.main`` on random command lines: exit 0 with a readable PNG, or
    exit 1 / 2 with exactly one line on stderr; never an exception, never a temp file."""
    d = files["dir"]
    cmd = data.draw(st.sampled_from(["sample", "sample", "score", "colorize", "upscale", "complete", "bogus"]),
                    label="command")
    wild = wild_args(data, CLI_OPTIONS)

    def pick(opt, valid, bad):
        return data.draw(st.sampled_from(bad if opt in wild else valid), label=opt)

    kind_for = {"colorize": "grayscale", "upscale": "pyramid"}
    good_model = files[kind_for[cmd]] if cmd in kind_for else \
        data.draw(st.sampled_from([files["gated"], files["grayscale"], files["pyramid"]]), label="model kind")
    model = pick("model", [good_model], [files["gated"], files["pyramid"], "nope", d / "random.bin",
                                         d / "evil.pt"])
    argv = [cmd]
    if cmd == "score":
        argv += pick("input", [[files["png"]]] if good_model != files["pyramid"] else [[files["png_small"]]],
                     [[files["png"], files["png_big"]], [files["txt"]], [d / "nope.png"]])
        argv += ["--model", model] + (["--resize"] if model == files["pyramid"] else [])
    elif cmd in ("colorize", "upscale", "complete"):
        image = {"colorize": files["png_gray"], "upscale": files["png_small"], "complete": files["png"]}[cmd]
        argv += [pick("input", [image], [files["png_big"], files["txt"], d / "nope.png", files["png_gray"]])]
        argv += ["--model", model, "--no-progress", "--samples", pick("n", ["1", "2"], ["0", "x", "-2"])]
        if cmd == "colorize":
            argv += pick("task", [[], ["--max-side", "4"]], [["--max-side", "0"], ["--max-side", "x"]])
        if cmd == "complete":
            argv += pick("task", [["--keep-rows", "2"], ["--mask", files["mask"]]],
                         [["--keep-rows", "0"], ["--keep-rows", "100"], ["--mask", files["png_small"]], [],
                          ["--mask", files["png_big"], "--resize"], ["--mask", files["txt"]]])
    elif cmd == "sample":
        argv += ["--model", model, "--no-progress", "--n", pick("n", ["1", "2"], ["0", "-1", "x", "1.5"])]
        sizes = [[], ["--size", "2"], ["--size", "2", "4"]] if good_model == files["pyramid"] else \
            [[], ["--size", "3"], ["--size", "2", "4"]]
        argv += pick("size", sizes, [["--size", "0"], ["--size", "3"], ["--size", "1", "2", "3"], ["--size", "x"]])
        argv += pick("scale", [[], ["--scale", "2"]], [["--scale", "0"], ["--scale", "-1"]])
    if cmd not in ("score", "bogus"):
        argv += ["--seed", pick("seed", ["0", "7", "-1"], ["x", str(2 ** 70), "1e3"])]
        argv += ["--engine", pick("engine", ["cached", "naive"], ["fast", ""])]
        argv += ["--backend", pick("backend", ["auto", "torch"] + (["cpp"] if CPP else []), ["cuda", "Auto"])]
        argv += ["--temperature", pick("temperature", ["1", "0.5", "0.01", "10"], ["0", "-1", "nan", "inf", "x", "1e-6", "1e6"])]
    argv += ["--device", pick("device", ["cpu"], ["meta", "cuda", "bogus", "cuda:7", "mps"])]
    out_dir = d / f"cli_{COUNTS['cli']}"
    out = pick("out", [out_dir / "o.png", out_dir / "deep" / "er" / "o.png"], [d, files["png"] / "x.png"])
    if cmd != "score":
        argv += ["--out", out]
    COUNTS["cli"] += 1
    rc, stdout, stderr = cli(argv)
    COUNTS[f"cli/exit {rc}"] += 1
    assert rc in (0, 1, 2), rc
    if rc != 0:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pixelaux") and "Traceback" not in stderr, stderr
    elif cmd != "score":
        with Image.open(out) as im:
            im.load()
    else:
        assert "bits/dim" in stdout
    leftovers = [p for p in d.rglob("*.tmp")]
    assert not leftovers, leftovers


@pytest.mark.usefixtures("files")
def test_cli_reports_device_and_seed_mistakes_in_one_line():
    for argv, rc_want, needle in [
            (["--device", "cuda"], 1, "map_location"), (["--device", "meta"], 1, "meta"),
            (["--seed", str(2 ** 70)], 2, "--seed"), (["--device", "bogus"], 1, "device")]:
        if argv[1] == "cuda" and torch.cuda.is_available():
            continue
        rc, _, err = cli(["sample", "--model", FILES["gated"], "--n", "1", "--no-progress",
                           "--out", FILES["dir"] / "cli_one_line.png", *argv])
        lines = err.strip().splitlines()
        assert rc == rc_want and len(lines) == 1 and needle in lines[0], (argv, rc, err)
