"""The cached engine on CPU, the whole loop in C++ (docs/design.md section 2.3), for every
model family with a sampling plan (``plan.BUILDERS``: ``GatedPixelCNN``, ``PixelCNNpp``).

Same algorithm and contract as ``cached_torch.run`` (the plan's readable executor); the
Python side only packs the model's weights in the plan's order (``Plan.weight_tensors``,
once per weight version, cached) and calls one op, ``torch.ops.pixelaux.cached_sample``,
that samples the whole batch:

* at the start of row ``i``, for every scale ``s`` with ``i % 2**s == 0``: the row steps
  of that scale -- the ``u`` stream of the row and the row term of every ``ul`` block
  (what its convs add that does not read the row's own ``ul`` values: biases, the 1x1
  projection of ``u``, the conditioning terms, the taps of the rows above) -- as GEMMs
  over the ``B * W_s`` positions of the row;
* per pixel, for every scale with ``i, j`` divisible by ``2**s``: the pixel steps from the
  current-row taps only (GEMMs over the images), then the head and the sampling, with
  the arithmetic of ``distributions.py`` (same uniforms, same pixels);
* threads: images split over threads when the batch is large enough, else one team
  over the output channels of every layer.

The config (``config_of``) names the family, whose topology the engine runs. The
conditioning terms ``blk.cond_terms(cond)``: a ``GatedPixelCNN``'s are computed in C++
from ``cond`` and the blocks' 1x1 weights (for a map row by row, each position once, as
in the forward pass; for a global cond, a vector per image ``(B, cond_channels)``, once
per image before the first row); a ``PixelCNNpp``'s here, once per image, in the plan's
order (``cond_terms``).

A pixel, sampled or known, is written into the input buffer as its rows of the model's
input table (``model.input.table()``, see ``inputs.py``): ``channels * max(embed_dim, 1)``
floats, the scaled ``[-1, 1]`` values or the learned token embeddings alike.
"""
from __future__ import annotations

import weakref

import torch

from .. import native
from ..weight_norm import folded, source_key
from .plan import plan_of
from .progress import run_native

_PACKED = weakref.WeakKeyDictionary()


#: The families the engine runs, by their config int (``Family`` in csrc/cpu/cached_engine.h).
FAMILIES = ("GatedPixelCNN", "PixelCNNpp")
#: The families whose conditioning terms the engine computes itself from ``cond`` (by GEMM,
#: in C++); the others take them computed here (``cond_terms``).
COND_IN_ENGINE = ("GatedPixelCNN",)


def config_of(model) -> list[int]:
    """The integer config the ops take: ``[family, channels, bits, hidden, blocks,
    kernel_size, scales, cond_channels, dist (0 categorical, 1 logistic), nr_mix,
    embed_dim]`` (``family``: the index in :data:`FAMILIES`; ``kernel_size``, ``scales``:
    the plan's ``kw`` and ``scales``)."""
    plan, cfg = plan_of(model), model.config
    return [FAMILIES.index(plan.family), int(cfg["channels"]), int(cfg["bits"]), plan.hidden,
            int(cfg["blocks"]), plan.kw, plan.scales, int(cfg["cond_channels"]),
            model.dist.engine_spec[0], int(cfg["nr_mix"]), int(model.input.embed_dim)]


def raw_weights(model) -> list[torch.Tensor]:
    """The model's weights in the order ``pack_weights`` expects: the sampling plan's
    (``plan.Plan.weight_tensors``; a weight-normed conv's ``.weight`` is its folded
    ``g * V / ||V||``)."""
    return plan_of(model).weight_tensors(model)


def pack_cached(model, raw, pack, config) -> torch.Tensor:
    """``pack(raw float32 CPU weights, config)``, cached per model and recomputed only
    when a parameter or buffer of ``model`` changed (storage, in-place version, shape or
    dtype: ``weight_norm.source_key``). ``raw``: the weights, or a function giving them,
    called on a miss only. The key is the model's own tensors, not ``raw``: a
    weight-normed conv's ``.weight`` is computed afresh on every read (from ``g`` and
    ``V``, which an optimizer step changes in place), so it is folded here, once per
    weight version."""
    key = source_key(model)
    hit = _PACKED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad(), folded():
        raw = raw() if callable(raw) else raw
        packed = pack([p.detach().to(device="cpu", dtype=torch.float32) for p in raw], config)
    _PACKED[model] = (key, packed)
    return packed


def packed_weights(model) -> torch.Tensor:
    """The packed weights of ``model``, recomputed only when a parameter changed."""
    return pack_cached(model, lambda: raw_weights(model), torch.ops.pixelaux.pack_weights, config_of(model))


def input_table(model) -> torch.Tensor:
    """The model's input encoding ``(channels, 2**bits, max(embed_dim, 1))`` as the ops
    take it (float32, contiguous, CPU): a view of the embedding, or the scaled values."""
    return model.input.table("cpu").to(torch.float32).contiguous()


def window_args(window) -> tuple:
    """The ops' ``(window, window_consts)`` of a ``consistency.Window`` or None."""
    if window is None:
        return None, []
    return window.to("cpu").packed(), [*map(int, window.coef), *map(int, window.div), int(window.block)]


def cond_terms(model, cond) -> list[torch.Tensor]:
    """The conditioning terms the op takes for ``model``: ``[]`` when the engine computes
    them itself (:data:`COND_IN_ENGINE`) or the model is unconditional; else those of every
    block of the plan (``Plan.cond_blocks``), in its order, once per image: ``(B, H_s, W_s,
    3F)`` = ``[cond_c1, cond_c2]`` per block. For a global cond (a vector per image
    ``(B, K)``, which ``scale_conds`` gives as ``(B, K, 1, 1)`` at every scale) the terms
    are ``(B, 1, 1, 3F)``, computed from the vector; the op broadcasts them."""
    plan = plan_of(model)
    if not model.cond_channels or plan.family in COND_IN_ENGINE:
        return []
    f32 = (cond.to(torch.float32) if isinstance(cond, torch.Tensor)
           else tuple(c.to(torch.float32) for c in cond))      # per-scale maps
    conds = model.scale_conds(f32)
    out = []
    for block, s in plan.cond_blocks:
        h1, h2 = model.get_submodule(block).cond_terms(conds[s])
        out.append(torch.cat([h1, h2], 1).permute(0, 2, 3, 1).contiguous())
    return out


@torch.no_grad()
def workspace_bytes(model, x, cond) -> int:
    """Bytes ``run`` allocates beyond the weights for ``x`` ``(B, C, H, W)``: the C++
    engine's scratch as its arenas request it (``cached_workspace_floats``, counted by the
    allocating code without allocating), the scaled input table built per call and the
    conditioning terms computed here (``cond_terms``: maps, or one row per image for a
    vector)."""
    from .footprint import held_bytes, num_threads
    b, _, h, w = x.shape
    global_cond = isinstance(cond, torch.Tensor) and cond.dim() == 2
    floats = torch.ops.pixelaux.cached_workspace_floats(config_of(model), b, h, w, 0, global_cond)
    table = 0 if model.input.embed_dim else input_table(model).nbytes
    terms = 0
    if cond is not None and plan_of(model).family not in COND_IN_ENGINE:
        with num_threads(1):
            terms = held_bytes(cond_terms(model, cond), skip=model)
    return 4 * floats + table + terms


@torch.no_grad()
def run(model, x, known, cond, uniforms, temperature, progress=False, return_params=False, mode=0, window=None):
    """Sample the unknown pixels of ``x`` in raster order (contract of ``cached_torch.run``).

    model: a ``GatedPixelCNN`` or ``PixelCNNpp`` on the CPU. x: ``(B, C, H, W)`` long,
    holding the known pixels (others are overwritten). known: ``(B, H, W)`` bool or None.
    cond: float ``(B, cond_channels, H, W)``, ``(B, cond_channels)`` (global: its terms
    computed once per image) or None. uniforms: ``(B, H, W, U)`` float32.
    Returns the completed ``x``, or ``(x, params)`` with the distribution parameters
    ``(B, P, H, W)`` at every position when ``return_params`` (teacher forcing when all
    pixels are known). ``mode``: thread split, 0 auto, 1 over images, 2 over channels,
    3 a team over the row starts with the pixels on one thread.
    ``window``: a ``consistency.Window`` (consistent decoding) or None.
    """
    if not native.available():
        raise RuntimeError(f"the cpp backend is not available: {native.reason()}")
    if x.device.type != "cpu":
        raise ValueError(f"the cpp backend runs on CPU tensors, got x on {x.device}")
    _, _, h, w = x.shape
    model.check_size((h, w), "x")
    if model.cond_channels and cond is None:
        raise ValueError(f"cond is required: the model has cond_channels={model.cond_channels}")
    if not model.cond_channels and cond is not None:
        raise ValueError("cond must be None for a model with cond_channels=0")
    packed = packed_weights(model)
    if known is not None:
        known = known.to(torch.bool)
    terms = cond_terms(model, cond)
    if terms or plan_of(model).family not in COND_IN_ENGINE:
        cond = None
    elif cond is not None:
        cond = cond.to(torch.float32)
    args = (x.long(), known, cond, terms, uniforms.to(torch.float32), packed, input_table(model),
            config_of(model), float(temperature), bool(return_params), int(mode))
    win = window_args(window)
    out, params = run_native(lambda counter: torch.ops.pixelaux.cached_sample(*args, counter, *win),
                             batch=x.shape[0], height=h, width=w, progress=progress,
                             desc="cached[cpp]")
    return (out, params) if return_params else out
