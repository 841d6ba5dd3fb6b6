"""The cached engine of a ``PixelCNNpp`` on CPU, the whole loop in C++ (docs/design.md section 2).

Same algorithm, contract and buffer names as the sampling plan (``plan.pixelcnnpp_plan``;
``cached_torch`` walks it, the readable reference); the Python side only packs the model's weights (once per weight version,
cached), computes the conditioning terms of every block once per image, and calls one
op, ``torch.ops.pixelaux.cached_sample_pp``, that samples the whole batch:

* at the start of row ``i``, for every scale ``s`` with ``i % 2**s == 0``: the whole row
  of every ``u`` value of that scale (up pass ascending, down pass descending) and every
  per-row term of the ``ul`` blocks, as GEMMs over the ``B * W_s`` positions of the row;
* per pixel, for every scale with ``i, j`` divisible by ``2**s``: the ``ul`` stream at that
  position from the current-row taps only (GEMMs over the images), then the head and the
  sampling with the arithmetic of ``distributions.py`` (same uniforms, same pixels);
* threads: images split over threads when the batch is large enough, else one team
  over the output channels of every layer.

Pixels are written into the input buffer from the model's input table, as in
``cached_cpp`` (token inputs with ``embed_dim > 0`` included).
"""
from __future__ import annotations

import torch

from .. import native
from .cached_cpp import input_table, pack_cached, window_args
from .plan import plan_of
from .progress import run_native


def config_of(model) -> list[int]:
    """The integer config the ops take: ``[channels, bits, hidden, blocks, scales,
    cond_channels, dist (0 categorical, 1 logistic), nr_mix, embed_dim]``."""
    cfg = model.config
    return [int(cfg["channels"]), int(cfg["bits"]), int(cfg["hidden"]), int(cfg["blocks"]),
            int(cfg["scales"]), int(cfg["cond_channels"]),
            model.dist.engine_spec[0], int(cfg["nr_mix"]), int(model.input.embed_dim)]


def raw_weights(model) -> list[torch.Tensor]:
    """The weights in the order ``pack_pixelcnnpp`` expects: the sampling plan's without the
    ``cond`` modules (their terms are computed here, ``cond_terms``); a weight-normed conv's
    ``.weight`` is its folded ``g * V / ||V||``."""
    return plan_of(model).weight_tensors(model, cond=False)


def packed_weights(model) -> torch.Tensor:
    """The packed weights of ``model``, recomputed only when a parameter changed."""
    return pack_cached(model, lambda: raw_weights(model), torch.ops.pixelaux.pack_pixelcnnpp, config_of(model))


def cond_terms(model, cond) -> list[torch.Tensor]:
    """The conditioning terms of every block, once per image: ``(B, H_s, W_s, 3F)`` =
    ``[cond_c1, cond_c2]`` per block, in the engine's order (per scale ascending: the
    up-pass ``u`` then ``ul`` blocks; then per scale ascending: the down-pass ``u`` then
    ``ul`` blocks). ``[]`` for an unconditional model. For a global cond (a vector per
    image ``(B, K)``, which ``scale_conds`` gives as ``(B, K, 1, 1)`` at every scale) the
    terms are ``(B, 1, 1, 3F)``, computed from the vector; the op broadcasts them."""
    if not model.cond_channels:
        return []
    f32 = (cond.to(torch.float32) if isinstance(cond, torch.Tensor)
           else tuple(c.to(torch.float32) for c in cond))      # per-scale maps
    conds = model.scale_conds(f32)
    S = model.scales
    out = []

    def add(blocks, c):
        for blk in blocks:
            h1, h2 = blk.cond_terms(c)
            out.append(torch.cat([h1, h2], 1).permute(0, 2, 3, 1).contiguous())

    for s in range(S):
        add(model.up_layers[s].u_stream, conds[s])
        add(model.up_layers[s].ul_stream, conds[s])
    for s in range(S):
        stage = model.down_layers[S - 1 - s]
        add(stage.u_stream, conds[s])
        add(stage.ul_stream, conds[s])
    return out


@torch.no_grad()
def workspace_bytes(model, x, cond) -> int:
    """As ``cached_cpp.workspace_bytes``, plus the conditioning terms computed here in
    Python for every block (``cond_terms``: maps, or one row per image for a vector)."""
    from .footprint import held_bytes, num_threads
    b, _, h, w = x.shape
    floats = torch.ops.pixelaux.cached_workspace_floats_pp(config_of(model), b, h, w, 0)
    table = 0 if model.input.embed_dim else input_table(model).nbytes
    with num_threads(1):
        terms = held_bytes(cond_terms(model, cond), skip=model)
    return 4 * floats + table + terms


@torch.no_grad()
def run(model, x, known, cond, uniforms, temperature, progress=False, return_params=False, mode=0, window=None):
    """Sample the unknown pixels of ``x`` in raster order (contract of ``cached_cpp.run``).

    model: ``PixelCNNpp`` on the CPU. x: ``(B, C, H, W)`` long, holding the known pixels
    (others are overwritten). known: ``(B, H, W)`` bool or None. cond: float
    ``(B, cond_channels, H, W)``, ``(B, cond_channels)`` (global) or None. uniforms:
    ``(B, H, W, U)`` float32.
    Returns the completed ``x``, or ``(x, params)`` with the distribution parameters
    ``(B, P, H, W)`` at every position when ``return_params`` (teacher forcing when all
    pixels are known). ``mode``: thread split, 0 auto, 1 over images, 2 over channels,
    3 a team over the row starts with the pixels on one thread. ``window``: as in
    ``cached_cpp.run``.
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
    args = (x.long(), known, terms, uniforms.to(torch.float32), packed, input_table(model),
            config_of(model), float(temperature), bool(return_params), int(mode))
    win = window_args(window)
    out, params = run_native(lambda counter: torch.ops.pixelaux.cached_sample_pp(*args, counter, *win),
                             batch=x.shape[0], height=h, width=w, progress=progress,
                             desc="cached[cpp]")
    return (out, params) if return_params else out
