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

The config (``config_of``) is the model's ints and the plan's packed form
(``pack_plan``), which the engine walks step by step, one engine for every family. The
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
from . import plan as P
from .plan import plan_of
from .progress import run_native

_PACKED = weakref.WeakKeyDictionary()
_CONFIG = weakref.WeakKeyDictionary()


#: The families whose conditioning terms the engine computes itself from ``cond`` (by GEMM,
#: in C++, at one scale: the config's ``cond_in_engine``); every other family, a new one
#: included, takes them computed here (``cond_terms``). The engine knows no family: the
#: packed plan gives its topology and its weights.
COND_IN_ENGINE = ("GatedPixelCNN",)


#: The steps of a packed plan by their op code (``Op`` in csrc/cpu/cached_engine.h), and
#: the ints each step packs: ``[op, scale, args...]``, :data:`STEP_INTS` ints in all.
OPS = (P.InputRow, P.DownRow, P.FromUp, P.RowBlock, P.RowTerm, P.Keep, P.UpRow,
       P.InputPixel, P.DownPixel, P.PixelBlock, P.UpPixel, P.Head)
STEP_INTS = 10
#: Value kinds: a row ``(B, F, W_s)``, a row term (``c1`` ``F`` and ``c2`` ``2F`` per
#: position of the row), a pixel ``(B, F)``.
ROW, ROW_TERM, PIXEL = 0, 1, 2


#: The weight groups of a packed plan by their kind code (``WeightKind`` in
#: csrc/cpu/cached_engine.h): the input layers (``u_init``, ``ul_init_v``, ``ul_init_h``
#: of ``InputRow`` / ``InputPixel``), a gated residual block, the stride-2 convs of
#: ``DownRow`` (u) and ``DownPixel`` (ul), the transposed convs of ``UpRow`` (u) and
#: ``UpPixel`` (ul), the head; each packs :data:`WEIGHT_INTS` ints ``[kind, kw, skip,
#: cond]`` (-1 but for a block).
WEIGHT_KINDS = ("input", "block", "down_u", "down_ul", "up_u", "up_ul", "head")
WEIGHT_INTS = 4
#: A block's 1x1 projection: none, of ``act(skip)``, or split (of ``act(cat(u, ul))``).
NO_SKIP, SKIP, SPLIT = 0, 1, 2


def weight_groups(plan) -> list[tuple]:
    """``Plan.weights`` as the engine packs them: per group ``(kind, kw, skip, cond,
    modules)`` in order (kind: an index in :data:`WEIGHT_KINDS`; a block's conv width
    ``kw``, its projection, whether it has ``cond_c1`` / ``cond_c2``; the group's module
    names, the first one naming it in the steps). Raises ValueError for weights the
    engine cannot pack."""
    steps = [st for _, sts in (*plan.row_steps, *plan.pixel_steps) for st in sts]
    conv_kind = {}
    for st in steps:
        for cls, kind in ((P.DownRow, "down_u"), (P.DownPixel, "down_ul"), (P.UpRow, "up_u"),
                          (P.UpPixel, "up_ul"), (P.Head, "head")):
            if isinstance(st, cls):
                conv_kind[st.conv] = kind
    inputs = tuple(m for st in steps if isinstance(st, P.InputRow) for m in (st.u_conv, st.ul_conv)) + \
        tuple(st.conv for st in steps if isinstance(st, P.InputPixel))
    split = {st.block for st in steps if isinstance(st, P.RowTerm) and st.split}
    windows = {w.name: w for w in plan.windows}
    ws, out, i = plan.weights, [], 0
    while i < len(ws):
        w = ws[i]
        if w.role == "input":
            group = tuple(x.module for x in ws[i:i + 3])
            if group != inputs or any(x.role != "input" for x in ws[i:i + 3]):
                raise ValueError(f"the plan's input weights {group} are not the input steps' {inputs}")
            out.append((WEIGHT_KINDS.index("input"), -1, -1, -1, group))
            i += 3
        elif w.role == "conv" and w.module.endswith(".conv1"):
            block = w.module[:-len(".conv1")]
            skip = i + 1 < len(ws) and ws[i + 1].role == "skip"
            cond = any(x.role == "cond" and x.module.startswith(block + ".") for x in ws[i:i + 5])
            group = P._block_weights(block, skip, cond)
            if tuple(ws[i:i + len(group)]) != tuple(group):
                raise ValueError(f"the plan's weights of block {block} are not a gated block's {group}")
            win = windows[f"{block}.conv1"]
            out.append((WEIGHT_KINDS.index("block"), win.left + win.right + 1,
                        (SPLIT if block in split else SKIP) if skip else NO_SKIP, int(cond),
                        tuple(x.module for x in group)))
            i += len(group)
        elif w.role in ("down", "up", "head") and conv_kind.get(w.module, "").startswith(w.role):
            out.append((WEIGHT_KINDS.index(conv_kind[w.module]), -1, -1, -1, (w.module,)))
            i += 1
        else:
            raise ValueError(f"the C++ engine cannot pack weight {w} (no step of its role names it)")
    return out


def pack_plan(plan) -> list[int]:
    """The plan as the engine walks it, ints: ``[len(windows), len(holders), len(values),
    len(row steps), len(pixel steps), len(weight groups)]``, then per window ``[scale,
    channels, rows, left, right]``, per holder ``[scale, channels]``, per value ``[kind,
    scale]``, then the row steps and the pixel steps in the order they run, each ``[op,
    scale, args...]`` padded to :data:`STEP_INTS` with -1, then the weight groups
    (:func:`weight_groups`), :data:`WEIGHT_INTS` ints each: buffers by their index in
    those lists, a block or a stride-2 / transposed conv by the index of its weight group,
    each block's conditioning by its index in ``Plan.cond_blocks`` (-1: none). The engine
    takes the weights' order, shapes and packed layout from the weight groups."""
    windows = {w.name: i for i, w in enumerate(plan.windows)}
    holders = {h.name: i for i, h in enumerate(plan.holders)}
    groups = weight_groups(plan)
    group = {g[4][0].removesuffix(".conv1"): i for i, g in enumerate(groups)}  # blocks and convs by name
    conds = {b: i for i, (b, _) in enumerate(plan.cond_blocks)}
    values, kinds = {}, []

    def val(name, kind, scale):
        if name not in values:
            values[name] = len(kinds)
            kinds.append((kind, scale))
        return values[name]

    def step(s, st, pixel):
        v = lambda name, kind=PIXEL if pixel else ROW: val(name, kind, s)  # noqa: E731
        if isinstance(st, P.InputRow):
            args = [v(st.out), v(st.out_ul)]
        elif isinstance(st, P.InputPixel):
            args = [v(st.row, ROW), v(st.out)]
        elif isinstance(st, (P.DownRow, P.DownPixel)):
            args = [windows[st.src], v(st.out), group[st.conv]]
        elif isinstance(st, P.FromUp):
            args = [holders[st.src], v(st.out)]
        elif isinstance(st, P.RowBlock):
            args = [group[st.block], conds.get(st.block, -1), v(st.x), v(st.out), *(windows[w] for w in st.windows),
                    v(st.skip) if st.skip else -1]
        elif isinstance(st, P.RowTerm):
            args = [group[st.block], conds.get(st.block, -1), v(st.src), v(st.out, ROW_TERM),
                    windows[f"{st.block}.conv1"], windows[f"{st.block}.conv2"]]
        elif isinstance(st, P.PixelBlock):
            args = [group[st.block], -1, v(st.x), v(st.out), *(windows[w] for w in st.windows),
                    v(st.skip) if st.skip else -1, v(st.term, ROW_TERM)]
        elif isinstance(st, P.Keep):
            args = [v(st.src), windows[st.window]]
        elif isinstance(st, (P.UpRow, P.UpPixel)):
            args = [v(st.src), holders[st.dst], group[st.conv]]
        elif isinstance(st, P.Head):
            args = [v(st.src)]
        else:
            raise TypeError(f"the C++ engine has no step {type(st).__name__}")
        out = [OPS.index(type(st)), s, *args]
        assert len(out) <= STEP_INTS, st
        return out + [-1] * (STEP_INTS - len(out))

    rows = [step(s, st, False) for s, steps in plan.row_steps for st in steps]
    pixels = [step(s, st, True) for s, steps in plan.pixel_steps for st in steps]
    out = [len(plan.windows), len(plan.holders), len(kinds), len(rows), len(pixels), len(groups)]
    for w in plan.windows:
        out += [w.scale, w.channels, w.rows, w.left, w.right]
    for h in plan.holders:
        out += [h.scale, h.channels]
    for kind, scale in kinds:
        out += [kind, scale]
    for st in rows + pixels:
        out += st
    for g in groups:
        out += g[:WEIGHT_INTS]
    return out


def _plan_and_config(model) -> tuple:
    """``(plan, config)`` of ``model``, built once per model and configuration (a few
    milliseconds of Python for a deep U-net), not per call."""
    cfg = model.config
    key = (repr(sorted(cfg.items())), model.dist.engine_spec, int(model.input.embed_dim))
    hit = _CONFIG.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    plan = plan_of(model)
    out = [int(plan.family in COND_IN_ENGINE), int(cfg["channels"]), int(cfg["bits"]), plan.hidden,
           int(cfg["blocks"]), plan.kw, plan.scales, int(cfg["cond_channels"]),
           model.dist.engine_spec[0], int(cfg["nr_mix"]), int(model.input.embed_dim), *pack_plan(plan)]
    _CONFIG[model] = (key, (plan, tuple(out)))
    return plan, tuple(out)


def config_of(model) -> list[int]:
    """The integer config the ops take: ``[cond_in_engine, channels, bits, hidden, blocks,
    kernel_size, scales, cond_channels, dist (0 categorical, 1 logistic), nr_mix,
    embed_dim]`` (``cond_in_engine``: 1 for a family of :data:`COND_IN_ENGINE`;
    ``kernel_size``, ``scales``: the plan's ``kw`` and ``scales``), then the packed plan
    (:func:`pack_plan`)."""
    return list(_plan_and_config(model)[1])


def _cond_in_engine(model) -> bool:
    return bool(config_of(model)[0])


def raw_weights(model) -> list[torch.Tensor]:
    """The model's weights in the order ``pack_weights`` expects: the sampling plan's
    (``plan.Plan.weight_tensors``; a weight-normed conv's ``.weight`` is its folded
    ``g * V / ||V||``). Their shapes: the packed plan's weight groups (:func:`pack_plan`)."""
    return _plan_and_config(model)[0].weight_tensors(model)


def weight_names(model) -> list[str]:
    """The names of :func:`raw_weights` (``Plan.weight_names``), which ``pack_weights``
    gives in its messages."""
    return _plan_and_config(model)[0].weight_names()


def pack_cached(model, raw, pack, config) -> torch.Tensor:
    """``pack(raw float32 CPU weights, config)``, cached per model and recomputed only
    when a parameter or buffer of ``model`` changed (storage, in-place version, shape or
    dtype: ``weight_norm.source_key``). ``raw`` and ``config``: values, or functions giving
    them, called on a miss only. The key is the model's own tensors, not ``raw``: a
    weight-normed conv's ``.weight`` is computed afresh on every read (from ``g`` and
    ``V``, which an optimizer step changes in place), so it is folded here, once per
    weight version."""
    key = source_key(model)
    hit = _PACKED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad(), folded():
        raw = raw() if callable(raw) else raw
        config = config() if callable(config) else config
        packed = pack([p.detach().to(device="cpu", dtype=torch.float32) for p in raw], config)
    _PACKED[model] = (key, packed)
    return packed


def packed_weights(model) -> torch.Tensor:
    """The packed weights of ``model``, recomputed only when a parameter changed."""
    def pack(raw, config):
        return torch.ops.pixelaux.pack_weights(raw, config, weight_names(model))
    return pack_cached(model, lambda: raw_weights(model), pack, lambda: config_of(model))


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
    if not model.cond_channels or _cond_in_engine(model):
        return []
    plan = _plan_and_config(model)[0]
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
    if cond is not None and not _cond_in_engine(model):
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
    if terms or not _cond_in_engine(model):
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
