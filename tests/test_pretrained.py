"""The embedded default models: present, loadable, sampling, and better than chance."""
import numpy as np
import pytest
import torch
from PIL import Image

import pixelaux
from pixelaux.cli import main
from pixelaux.data import natural_patches


@pytest.mark.parametrize("name, kind", [("default", "GrayscalePixelCNN"), ("pyramid", "PyramidPixelCNN")])
def test_embedded_model_loads_and_scores_held_out_photos(name, kind):
    entry = {m["name"]: m for m in pixelaux.list_models()}[name]
    assert entry["present"] and entry["kind"] == kind
    model = pixelaux.load(name)
    assert model.kind == kind and not model.training
    test = natural_patches("test", 32)[:64]
    bpd = pixelaux.bits_per_dim(model, test, parts=True)
    # Far below the 8 bits/dim of a uniform model on photographs never seen in training.
    assert bpd["total"].mean() < 6.0
    assert torch.allclose(sum(v for k, v in bpd.items() if k != "total"), bpd["total"], atol=1e-4)


def test_default_sample_command_writes_png(tmp_path, capsys):
    out = tmp_path / "samples.png"
    assert main(["sample", "--n", "4", "--seed", "1", "--out", str(out), "--scale", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "engine: cached" in printed and "sampled 4 images 32x32" in printed
    with Image.open(out) as im:
        grid = np.asarray(im.convert("RGB"))
    assert grid.shape == (2 + 2 * 34, 2 + 2 * 34, 3) and grid.std() > 10


def test_unknown_name_lists_the_embedded_models():
    with pytest.raises(ValueError, match=r"\['default', 'pyramid'\]"):
        pixelaux.load("imagenet")
