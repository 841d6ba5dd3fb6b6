"""The sampling plan (engines/plan.py): it names every weight of the model once, and its
steps read only buffers and values that exist and were written before."""
import pytest
import torch

import pixelaux
from pixelaux.engines import plan as P

MODELS = {
    "gated": lambda: pixelaux.GatedPixelCNN(channels=3, bits=4, hidden=8, blocks=2, nr_mix=2),
    "gated-k5-cond": lambda: pixelaux.GatedPixelCNN(channels=1, bits=3, hidden=8, blocks=3, kernel_size=5,
                                                    cond_channels=2, dist="categorical", embed_dim=3),
    "gated-0-blocks": lambda: pixelaux.GatedPixelCNN(channels=3, bits=4, hidden=8, blocks=0, nr_mix=2),
    "pp": lambda: pixelaux.PixelCNNpp(channels=3, bits=4, hidden=8, blocks=2, scales=3, nr_mix=2),
    "pp-cond-1-scale": lambda: pixelaux.PixelCNNpp(channels=3, bits=4, hidden=8, blocks=1, scales=1, nr_mix=2,
                                                   cond_channels=2),
    "pp-cond-weight-norm": lambda: pixelaux.PixelCNNpp(channels=3, bits=4, hidden=8, blocks=1, scales=2, nr_mix=2,
                                                       cond_channels=2, weight_norm=True),
}


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


def test_the_plan_names_every_weight_once(model):
    plan = P.plan_of(model)
    names = [w.module for w in plan.weights]
    assert len(names) == len(set(names))
    weighted = {name for name, m in model.named_modules()
                if getattr(m, "weight", None) is not None and not name.endswith(".parametrizations")}
    weighted.discard("input.embed")                  # the input table, an argument of every call
    assert set(names) == weighted
    tensors = plan.weight_tensors(model)
    assert len(tensors) == sum(1 if w.role == "cond" else 2 for w in plan.weights)
    without = plan.weight_tensors(model, cond=False)
    assert len(without) == len(tensors) - sum(w.role == "cond" for w in plan.weights)


def _reads(step):
    """(values, windows, holders) a step reads or writes into."""
    if isinstance(step, (P.RowBlock, P.PixelBlock)):
        vals = [step.x] + ([step.skip] if step.skip else []) + ([step.term] if isinstance(step, P.PixelBlock) else [])
        return vals, list(step.windows), []
    if isinstance(step, P.InputRow):
        return [], [], []
    if isinstance(step, P.InputPixel):
        return [step.row], [], []
    if isinstance(step, (P.DownRow, P.DownPixel)):
        return [], [step.src], []
    if isinstance(step, P.FromUp):
        return [], [], [step.src]
    if isinstance(step, P.Keep):
        return [step.src], [step.window], []
    if isinstance(step, (P.UpRow, P.UpPixel)):
        return [step.src], [], [step.dst]
    assert isinstance(step, (P.RowTerm, P.Head)), step
    return [step.src], [], []


def _writes(step):
    if isinstance(step, P.InputRow):
        return [step.out, step.out_ul]
    return [step.out] if hasattr(step, "out") else []


def test_the_steps_read_what_exists_and_was_written_before(model):
    """Walk a row and a pixel where every scale triggers (the first ones): every value a
    step reads was written by an earlier step (row values persist into the pixel phase),
    every window and holder it names is declared, every window is both written and read,
    each scale's steps name buffers of that scale, and the last pixel step is the head."""
    plan = P.plan_of(model)
    windows = {w.name: w for w in plan.windows}
    holders = {h.name: h for h in plan.holders}
    written, used_windows = set(), set()
    for phase in (plan.row_steps, plan.pixel_steps):
        for s, steps in phase:
            for step in steps:
                vals, wins, hols = _reads(step)
                assert set(vals) <= written, (step, set(vals) - written)
                assert set(wins) <= set(windows) and set(hols) <= set(holders), step
                assert all(windows[w].scale in (s, s - 1) for w in wins), step
                if isinstance(step, P.FromUp):
                    assert holders[step.src].scale == s
                used_windows |= set(wins)
                written |= set(_writes(step))
    assert used_windows == set(windows)
    assert isinstance(plan.pixel_steps[-1][1][-1], P.Head) and plan.pixel_steps[-1][0] == 0
    assert [s for s, _ in plan.row_steps] == [s for s, _ in plan.pixel_steps]
    assert all(isinstance(w, P.Window) and w.rows == plan.kh for w in plan.windows)


def test_a_family_without_a_plan_is_refused():
    with pytest.raises(TypeError, match="no sampling plan"):
        P.plan_of(torch.nn.Linear(2, 2))


def test_the_triton_fused_gated_path_is_chosen_by_the_plans_shape(model):
    """``triton_buffers.gated_shape``: every ``GatedPixelCNN`` plan (any kernel size, no
    blocks) has the shape of the fused gated kernels; no ``PixelCNNpp`` plan has (one
    scale included: its down pass reads skips), so the plan walker runs those; a gated
    plan with one step changed is not gated-shaped either."""
    from pixelaux.engines.triton_buffers import gated_shape
    plan = P.plan_of(model)
    assert gated_shape(plan) == (model.kind == "GatedPixelCNN")
    if model.kind == "GatedPixelCNN" and len(model.u_blocks):
        (s, rows), = plan.row_steps
        term = rows[2]
        split = rows[:2] + (P.RowTerm(term.block, term.src, term.out, split=True),) + rows[3:]
        assert not gated_shape(P.Plan(**{**plan.__dict__, "row_steps": ((s, split),)}))
