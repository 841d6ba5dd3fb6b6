"""``benchmarks/gpu_check.py`` without a GPU (docs/design.md section 2.4, "Checks without
and with a GPU"): what can be known on the CPU before device time is spent.

* Its teacher-forcing gate is reachable: the cached torch reference meets it on
  exactly the bench-32 model and the inputs gpu_check uses (imported from it), and
  that model is well scaled (torch's own float32 forward close to its float64 one).
* Everything it writes goes under ``--out`` (the only folder a device run hands
  back), step by step.

No Triton, no interpreter: a few seconds.
"""
import json
import os
import sys

import torch

from helpers import single_thread
from pixelaux.engines import cached_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402
from bench_triton_gpu import TF_GATE  # noqa: E402


def test_teacher_forcing_gate_is_reachable_on_the_bench32_model_and_inputs():
    """gpu_check's first exactness gate (``TF_GATE``, 1e-5 of the parameter scale of the
    float32 forward) on its own model (bench-32, the model's own init, seed 0) and
    inputs (4 random 32x32 images, every pixel known): the cached torch reference,
    the algorithm the kernels implement, meets it on the CPU (about 30x under it). On
    the model N(0, 0.2^2) weights gave before it was 3.3e-1 off: no engine could pass."""
    with single_thread():
        model, size = gpu_check.bench32("cpu")
        x, known, u = gpu_check.teacher_forcing_inputs(model, size, "cpu")
        assert (model.hidden, len(model.u_blocks), size, tuple(x.shape)) == (64, 8, 32, (4, 3, 32, 32))
        assert bool(known.all())
        _, params = cached_torch.run(model, x, known, None, u, 1.0, return_params=True)
        res = gpu_check.teacher_forcing_errors(params, model, x)
    assert res["error"] <= TF_GATE and res["error_fp64"] <= TF_GATE, res      # (3e-7 and 4e-7 measured)
    # well scaled: parameters of order 1, torch's own float32 forward a few ulps off float64
    assert 0.1 < res["scale"] < 100 and res["forward_fp32_vs_fp64"] <= TF_GATE / 4, res


def test_everything_is_written_under_out(tmp_path):
    """Each finished step is appended to ``gpu_check.jsonl`` and the whole record and
    the summary rewritten at once (a run cut short keeps what it measured); the
    timings go to a CSV beside them. Nothing is written elsewhere."""
    out = tmp_path / "out"
    out.mkdir()
    ck = gpu_check.Check(budget=100, out=str(out))
    ck.say("first line")
    assert ck.step("ok", lambda: dict(a=1)) == dict(a=1)
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.jsonl", "summary.txt"]
    assert json.loads((out / "gpu_check.json").read_text())["steps"]["ok"]["result"] == dict(a=1)
    assert ck.step("bad", lambda: 1 / 0) is None
    assert ck.step("late", lambda: 2, need=1e9) is None
    ck.write_csv("timings.csv", [dict(batch=1, provider="triton", seconds=0.5),
                                 dict(batch=16, provider="naive", seconds=9.0, extrapolated=True)])
    lines = [json.loads(ln) for ln in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == ["ok", "bad", "late"]
    assert lines[1]["ok"] is False and "ZeroDivisionError" in lines[1]["error"] and lines[2]["skipped"]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["failures"] == ["bad: ZeroDivisionError: division by zero"] and data["skipped"] == ["late"]
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("first line\n") and "[FAIL] bad" in summary and "[skip] late" in summary
    csv = (out / "timings.csv").read_text().splitlines()
    assert csv[0] == "batch,provider,seconds,extrapolated" and len(csv) == 3
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.jsonl", "summary.txt", "timings.csv"]
    assert "benchmarks/results" not in open(gpu_check.__file__).read()     # (where a run's line used to go)
