"""Sampling and training across processes (torch.distributed, 2 gloo processes on CPU).

``sample(..., offset=k)`` gives images ``k .. k+n-1`` of the seed's sequence, so
``torchrun -m pixelaux sample`` splits the images over the ranks and writes the files of
one process; ``torchrun -m pixelaux train`` with batch ``b`` per rank ends with the
weights of one process with batch ``2b``.
"""
import filecmp
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pixelaux
from helpers import random_gated, randomize
from pixelaux.checkpoint import load_training_state
from pixelaux.cli import _share, main
from pixelaux.uniforms import ImageUniforms


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- offset

def test_kth_seed_draw_does_not_depend_on_how_many_are_drawn():
    """What ``offset`` rests on: ``torch.randint``'s k-th 64-bit draw is the same for any
    ``n > k``, and chunked draws continue one sequence."""
    draw = lambda n, g: torch.randint(0, 2 ** 63 - 1, (n,), generator=g, dtype=torch.int64)  # noqa: E731
    big = draw(70000, gen(3))
    for n in (1, 2, 15, 16, 17, 64, 1000, 4097, 65537):
        assert torch.equal(draw(n, gen(3)), big[:n]), n
    g = gen(3)
    assert torch.equal(torch.cat([draw(k, g) for k in (5, 1000, 77, 30000)]), big[:31082])


def test_image_uniforms_offset_is_the_slice_of_one_big_batch():
    g_big, g_off = gen(5), gen(5)
    big = ImageUniforms(9, g_big).draw(3, 2, 4)
    part = ImageUniforms(4, g_off, offset=5).draw(3, 2, 4)
    assert torch.equal(part, big[5:])
    assert torch.equal(g_big.get_state(), g_off.get_state())      # both advanced 9 draws


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    gated = random_gated(seed=1, channels=3, bits=8, hidden=8, blocks=1, nr_mix=2, image_size=(4, 5))
    gray = randomize(pixelaux.GrayscalePixelCNN(hidden=6, blocks=1, nr_mix=2, encoder_blocks=1, image_size=8), 0.1)
    pyr = randomize(pixelaux.PyramidPixelCNN(hidden=6, blocks=1, nr_mix=2, image_size=8, seed_size=4), 0.1)
    return {"gated": gated, "gray": gray, "pyramid": pyr}


@pytest.mark.parametrize("kind", ["gated", "gray", "pyramid"])
def test_sample_offset_equals_the_slice_of_one_big_call(models, kind):
    m = models[kind]
    g_big, g_off = gen(11), gen(11)
    big = pixelaux.sample(m, 5, generator=g_big, progress=False)
    part = pixelaux.sample(m, 2, generator=g_off, offset=3, progress=False)
    assert torch.equal(part, big[3:])
    assert torch.equal(g_big.get_state(), g_off.get_state())
    assert torch.equal(pixelaux.sample(m, 5, generator=gen(11), offset=0, progress=False), big)


def test_sample_offset_with_per_image_known_and_cond(models):
    m = models["gray"]
    known = torch.full((5, 3, 8, 8), -1, dtype=torch.long)
    known[:, :, :3] = torch.randint(0, 256, (5, 3, 3, 8), generator=gen(1))   # per image
    big = pixelaux.sample(m, 5, generator=gen(2), known=known, progress=False)
    part = pixelaux.sample(m, 3, generator=gen(2), known=known[2:], offset=2, progress=False)
    assert torch.equal(part, big[2:]) and torch.equal(part[:, :, :3], known[2:, :, :3])
    gray = torch.randint(0, 16, (5, 1, 8, 8), generator=gen(3))               # colorization
    big = pixelaux.sample(m, 5, generator=gen(4), cond=gray, progress=False)
    assert torch.equal(pixelaux.sample(m, 2, generator=gen(4), cond=gray[3:], offset=3, progress=False), big[3:])
    p = models["pyramid"]
    low = torch.randint(0, 256, (4, 3, 4, 4), generator=gen(5))              # super-resolution
    big = pixelaux.sample(p, 4, generator=gen(6), cond=low, progress=False)
    assert torch.equal(pixelaux.sample(p, 1, generator=gen(6), cond=low[1:2], offset=1, progress=False), big[1:2])


@pytest.mark.parametrize("offset, err", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)])
def test_bad_offset_names_the_argument(models, offset, err):
    with pytest.raises(err, match="offset"):
        pixelaux.sample(models["gated"], 1, generator=gen(), offset=offset, progress=False)


def test_shares_are_contiguous_balanced_and_cover_every_image():
    for n in range(1, 12):
        for world in range(1, 5):
            shares = [_share(n, world, r) for r in range(world)]
            assert [f for f, _ in shares] == [sum(c for _, c in shares[:r]) for r in range(world)]
            assert sum(c for _, c in shares) == n and max(c for _, c in shares) - min(c for _, c in shares) <= 1
            assert shares[0][1] == max(c for _, c in shares)


# ----------------------------------------------------------------------------- torchrun

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, cwd):
    """``python -m torch.distributed.run --nproc_per_node 2 -m pixelaux ARGS`` -> stdout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "pixelaux", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _in_one_thread(argv):
    """``pixelaux ARGV`` in this process with one intra-op thread, as each torchrun worker has."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(a) for a in argv]) == 0
    finally:
        torch.set_num_threads(before)


def test_sample_under_torchrun_writes_the_files_of_one_process(models, tmp_path):
    """5 images over 2 ranks (3 + 2): the folder and the grid equal one process's, byte for byte."""
    ckpt = tmp_path / "gray.safetensors"
    pixelaux.save(models["gray"], ckpt)
    common = ["sample", "--model", ckpt, "-n", 5, "--seed", 7, "--scale", 1, "--no-progress"]
    _in_one_thread([*common, "--out-dir", tmp_path / "one", "--out", tmp_path / "one.png"])
    out = _torchrun([*common, "--out-dir", "two", "--out", "two.png"], cwd=tmp_path)
    names = sorted(os.listdir(tmp_path / "one"))
    assert names == [f"sample_{k:04d}.png" for k in range(5)] == sorted(os.listdir(tmp_path / "two"))
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "one", tmp_path / "two", names, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert filecmp.cmp(tmp_path / "one.png", tmp_path / "two.png", shallow=False)
    lines = out.splitlines()                                      # rank 0 only
    assert sum(line.startswith("engine:") for line in lines) == 1
    assert [line for line in lines if line.startswith("sampled")] == [
        next(line for line in lines if line.startswith("sampled"))]
    assert "sampled 5 images 8x8" in out and "on 2 processes" in out and "wrote 5 images to two" in out


def test_train_under_torchrun_equals_one_process_with_the_global_batch(tmp_path):
    """2 ranks x batch 4 (--global-batch 8) and 1 process x batch 8, 3 steps, dropout 0: the same raw and EMA
    weights within float tolerance (the gradients are averaged in another order)."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(data / f"{i:02d}.png")
    common = ["train", "--model-kind", "gated", "--data", f"folder:{data}", "--hidden", 8, "--blocks", 1,
              "--steps", 3, "--eval-every", 1, "--no-progress"]
    _in_one_thread([*common, "--batch-size", 8, "--out", tmp_path / "one"])
    _torchrun([*common, "--global-batch", 8, "--out", "two"], cwd=tmp_path)       # 4 per process
    assert sorted(os.listdir(tmp_path / "two")) == ["config.json", "metrics.jsonl", "model.safetensors",
                                                    "training_state.safetensors"]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["train"]["global_batch"] == 8
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]                 # rank 0 only: one line per step
    ones = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_bpd"] for r in rows] == pytest.approx([r["train_bpd"] for r in ones], rel=1e-5)
    one = load_training_state(tmp_path / "one" / "training_state.safetensors")
    two = load_training_state(tmp_path / "two" / "training_state.safetensors")
    assert one["step"] == two["step"] == 3 and two["run"]["world_size"] == 2 and two["run"]["batch_size"] == 4
    torch.manual_seed(0)                                          # the CLI's initial weights
    init = pixelaux.GatedPixelCNN(channels=3, bits=8, hidden=8, blocks=1, image_size=(8, 8)).state_dict()
    moved = max(float((one["model"][k] - init[k]).abs().max()) for k in init)
    assert moved > 1e-3
    for part in ("model", "ema"):
        assert one[part].keys() == two[part].keys()
        for k in one[part]:
            torch.testing.assert_close(two[part][k], one[part][k], rtol=1e-5, atol=1e-5, msg=f"{part} {k}")
