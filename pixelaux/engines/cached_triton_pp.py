"""Triton backend of the cached engine for a ``PixelCNNpp`` (docs/design.md section 2).

The algorithm of the sampling plan ``plan.pixelcnnpp_plan`` (``cached_torch``, its readable executor), with every conv of a
row and every block of a pixel a Triton kernel (``kernels/pp_row.py``,
``kernels/pp_pixel.py``; a PyTorch reference beside each kernel).

**Buffers** (``PPBuffers``, on the device, float32 channels last), allocated once per
(model, batch, size, options) and kept with the row graphs in the engine's run cache
(``cached_triton.RUNS``, shared with the gated engine: model identity and weight
versions, LRU): a later call with the same key loads its inputs in place
(``PPBuffers.fill``: image, known mask, uniforms, temperature, the consistent-decoding
window (whether there is one is part of the key), the conditioning terms; every state
buffer zeroed) and replays the captured graphs, no capture and no
allocation. Scale ``s`` has width ``W_s = W >> s``. A *value* (a tensor some 2-row conv
reads) is ``(B, NS, W_s, F)``, row ``r`` of that scale in slot ``r % NS``; the convs
apply ``concat_elu`` on load, so one buffer is at once a conv window, the residual
input, the skip input of the down pass and the input of a stride-2 conv. Per scale:

* up pass: ``u[s][k]``, ``ul[s][k]`` (``k = 0 .. blocks``; 0 the scale's input), the
  ``c1`` windows ``u_c1[s][k]``, ``ul_c1[s][k]``, and the per-row terms of the ``ul``
  blocks ``ul_row_term[s][k]`` ``(B, 1, W_s, F)`` (1x1 projection of ``concat_elu(u)`` + bias
  + conditioning);
* down pass: ``du[s][k]``, ``dul[s][k]`` (``k = 0 .. nd``, ``nd = blocks`` at the
  smallest scale, ``blocks + 1`` elsewhere), ``du_c1``, ``dul_c1``, ``dul_row_term``. At the
  smallest scale ``du[S-1][0]`` *is* ``u[S-1][blocks]`` (same tensor); at the others
  ``du[s][0]``/``dul[s][0]`` are written by the transposed convs from scale ``s+1``
  and keep **4** rows (``NS = 4``): the transposed conv of row ``p`` writes rows
  ``2p, 2p+1`` while row ``2p-1`` is still to be read, so two rows by parity would not
  do; 4 slots need no copy;
* scale 0: ``ul_row0`` ``(B, 1, W, F)`` (down-shifted part of the first ``ul`` layer);
* the image ``x`` ``(B, C, H, W)`` int64 and the input table ``(C, 2**bits, E)``
  (``PixelInput.table``: the kernels read the model's input straight from the image
  through it, scaled and token inputs alike), ``row`` ``(1,)`` int32 the row counter,
  ``temp`` ``(1,)``, ``pscr`` ``(B, P)``, ``params`` ``(B, P, H, W)`` with ``return_params``,
  ``window`` (a ``WindowBuffer``) with a window;
* conditioning (computed once per image, the prefill, in true float32: ``true_fp32``,
  TF32 off): per scale and block the two terms of ``cond_terms`` at that scale,
  ``(B, H_s, W_s, F)`` / ``(B, H_s, W_s, 2F)``.

**Launches.** Row ``i`` triggers the scales ``s <= level(i)``, ``level(i)`` = the
largest ``s < S`` with ``i % 2**s == 0``; pixel ``(i, j)`` those with also
``j % 2**s == 0``.

* per row (``row_ops(level)``, grids ``(image groups, output-channel tiles, column
  tiles)``, each conv a matmul over the gathered window with ``M = images x
  columns``): up pass, scales ascending: the first layer (scale 0, from the image) or
  the stride-2 ``downsize_u``; per ``u`` block ``conv1``, ``conv2`` + gate, and the
  1x1 row term of the matching ``ul`` block (3 launches); down pass, scales
  descending: per block ``conv1`` (+ 1x1 of the skip), ``conv2`` + gate, the ``u``
  part of the ``ul`` block's projection (3 launches); then the transposed conv into
  scale ``s-1``;
* per pixel (``pixel_ops(level, j)``, grid ``(cdiv(B, G),)``, ``G = 16`` images a
  program, ``tl.dot`` with ``M = G``): up pass, scales ascending: the first layer or
  ``downsize_ul``, one launch per gated ``ul`` block (conv1, conv2 with the current
  tap in registers, gate, residual); down pass, descending: one launch per block
  (with the 1x1 projection of the skip ``ul``), the transposed conv into the 2x2 block
  of scale ``s-1``; the head with the sampling fused (same arithmetic as
  ``pixelaux.distributions``), known pixels, write-back;
* the row counter advances on the device (``advance_row``).

**CUDA graphs: one per trigger level.** The launch sequence of a row depends only on
``level(i)`` (``S`` distinct patterns; the columns' levels are the same in every row),
and every kernel reads the row from the device counter, so on CUDA row 0 runs
eagerly (it has the highest level, so it launches, and compiles, every kernel variant:
nothing may compile during a capture), and the first row of each level is captured
into a ``torch.cuda.CUDAGraph`` that is then replayed for every row of that level, in
this call and every later call with the same cache entry (its row 0 too, once that
level's graph exists).
Chosen over "one graph, triggered-scale count on the device, kernels exit early"
because that launches (and replays) the work of every scale at every pixel, most of
it empty programs (``1 - 4**-s`` of the positions of scale ``s`` are not triggered).
``PIXELAUX_TRITON_GRAPHS=0`` launches eagerly. On CPU tensors (Triton's interpreter,
the tests) everything runs eagerly.

**Not fused yet (the plan).** Today a pixel is ``~2 + nd + blocks`` launches per
triggered scale plus the head, each with all output channels of a block in one
program. The fused design: one persistent pixel kernel per image group that runs
every triggered scale's blocks back to back with each block's output kept in
registers (the next block's current tap), and, for small batches, the output
channels of each conv split across programs (a cluster / grid barrier between
convs); the row ops of one scale merged into one launch per block with the column
tiles of a row in one program (so conv2 can read ``c1`` of the neighbouring columns
without a launch boundary).

UNTESTED ON HARDWARE: the CUDA path (graphs, speed, block sizes). The tests run the
same kernels and launch sequence under ``TRITON_INTERPRET=1`` on CPU tensors, and
``kernels/compile_check.py`` (``compile_for_gpu`` here, ``--preset bench-pp32``
there) compiles every variant a run launches for sm_90 without a GPU and reports
registers, spills and shared memory per variant under the Triton it runs with.
"""
from __future__ import annotations

import os

import torch

from ..distributions import _check_temperature
from ..weight_norm import folded
from ..float_policy import true_fp32
from .cached_triton import RUNS, load_kernels, status
from .progress import pixel_progress

USE_CUDA_GRAPHS = os.environ.get("PIXELAUX_TRITON_GRAPHS", "1").strip().lower() not in ("0", "false", "off", "no")


def _kernels():
    """``(pp_row, pp_pixel)`` from ``pixelaux.kernels`` (the installed subpackage or ``kernels/``)."""
    load_kernels()
    import importlib
    return importlib.import_module("pixelaux.kernels.pp_row"), importlib.import_module("pixelaux.kernels.pp_pixel")


# -- weight layouts ---------------------------------------------------------------------

def _act_taps(conv):
    """Conv over ``concat_elu`` ``(N, 2K, kh, kw)`` -> ``(kh, kw, 2, K, N)`` (pos, neg halves)."""
    w = conv.weight.detach().float()
    n, k2, kh, kw = w.shape
    return w.reshape(n, 2, k2 // 2, kh, kw).permute(3, 4, 1, 2, 0).contiguous()


def _raw_taps(conv):
    """Conv over raw values ``(N, K, kh, kw)`` -> ``(kh, kw, 1, K, N)``."""
    return conv.weight.detach().float().permute(2, 3, 1, 0).unsqueeze(2).contiguous()


def _im2col(conv):
    """An image conv ``(N, CIN, kh, kw)`` -> ``(kh*kw*CIN, N)``, rows ``(tr*kw + tc)*CIN + ci``."""
    w = conv.weight.detach().float()
    return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()


def _deconv(conv):
    """Transposed conv ``(K, N, kh, kw)`` -> ``(kh, kw, K, N)``."""
    return conv.weight.detach().float().permute(2, 3, 0, 1).contiguous()


def _bias(conv):
    return conv.bias.detach().float().contiguous()


def _split_nin(blk, f):
    """A down-pass ``ul`` block's 1x1 over ``concat_elu(cat(u, ul))`` (channels ``[u, ul, -u, -ul]``)
    -> its ``u`` part and its ``ul`` part, each ``(1, 1, 2, F, F)``."""
    w = blk.nin_skip.weight.detach().float()[:, :, 0, 0]                 # (F, 4F)
    part = lambda pos, neg: torch.stack([pos.t(), neg.t()])[None, None].contiguous()  # noqa: E731
    return part(w[:, :f], w[:, 2 * f:3 * f]), part(w[:, f:2 * f], w[:, 3 * f:])


def _cond_last(t, size):
    """A block's cond term ``(B, n, H_s, W_s)`` as the kernels read it, ``(B, H_s, W_s, n)``;
    the terms of a global cond, ``(B, n, 1, 1)`` (computed once per image), are broadcast."""
    if t is None:
        return None
    return t.detach().float().expand(-1, -1, *size).permute(0, 2, 3, 1).contiguous()


def level(i: int, scales: int) -> int:
    """The highest scale triggered at row (or column) ``i``: largest ``s < scales`` with ``2**s | i``."""
    s = 0
    while s + 1 < scales and i % (2 ** (s + 1)) == 0:
        s += 1
    return s


class PPBuffers:
    """Everything the kernels of one sampling run of a ``PixelCNNpp`` read and write, and
    the launch lists of a row (``row_ops``) and a pixel (``pixel_ops``)."""

    def __init__(self, model, x, known, cond, uniforms, temperature, return_params=False, fp_fusion=False,
                 window=None):
        b, c, h, w = x.shape
        dev = x.device
        m = self.model = model
        self.dist = model.dist
        self.B, self.C, self.H, self.W = b, c, h, w
        S, f, n = m.scales, m.hidden, m.blocks
        self.S, self.F, self.NB = S, f, n
        self.fp_fusion = bool(fp_fusion)
        self.table = m.input.table(dev)           # (C, 2**bits, E): the input encoding
        self.x = x.clone().contiguous()
        self.known = None if known is None else known.to(device=dev, dtype=torch.int8).contiguous()
        self.window = None if window is None else load_kernels().layout.WindowBuffer(window, x.shape, dev)
        self.uniforms = uniforms.to(device=dev, dtype=torch.float32).contiguous()
        self.row = torch.zeros(1, dtype=torch.int32, device=dev)
        self.temp = torch.full((1,), float(temperature), dtype=torch.float32, device=dev)
        P = self.dist.num_params
        self.pscr = torch.zeros(b, P, device=dev)
        self.params = torch.zeros(b, P, h, w, device=dev) if return_params else None
        ws = [w >> s for s in range(S)]
        val = lambda s, ns=2: torch.zeros(b, ns, ws[s], f, device=dev)  # noqa: E731
        self.nd = [n if s == S - 1 else n + 1 for s in range(S)]
        self.u = [[val(s) for _ in range(n + 1)] for s in range(S)]
        self.ul = [[val(s) for _ in range(n + 1)] for s in range(S)]
        self.u_c1 = [[val(s) for _ in range(n)] for s in range(S)]
        self.ul_c1 = [[val(s) for _ in range(n)] for s in range(S)]
        self.ul_row_term = [[val(s, 1) for _ in range(n)] for s in range(S)]
        self.du = [[self.u[s][n] if s == S - 1 else val(s, 4)] + [val(s) for _ in range(self.nd[s])]
                   for s in range(S)]
        self.dul = [[self.ul[s][n] if s == S - 1 else val(s, 4)] + [val(s) for _ in range(self.nd[s])]
                    for s in range(S)]
        self.du_c1 = [[val(s) for _ in range(self.nd[s])] for s in range(S)]
        self.dul_c1 = [[val(s) for _ in range(self.nd[s])] for s in range(S)]
        self.dul_row_term = [[val(s, 1) for _ in range(self.nd[s])] for s in range(S)]
        self.ul_row0 = val(0, 1)
        down = list(m.down_layers)[::-1]                     # indexed by scale
        self.has_cond = cond is not None
        self._cond_slots = []                  # (the two tensors the kernels read, block, scale)
        with torch.no_grad(), true_fp32():     # the prefill (cond pools and 1x1 convs): TF32 off
            self._build(m, down, m.scale_conds(cond))

    def _cond_terms(self, blk, conds, s: int):
        """The two cond terms of ``blk`` at scale ``s`` as the kernels read them (``None``
        without cond), remembered so that ``fill`` can recompute them in place."""
        t1, t2 = (_cond_last(t, (self.H >> s, self.W >> s)) for t in blk.cond_terms(conds[s]))
        if t1 is not None:
            self._cond_slots.append((t1, t2, blk, s))
        return t1, t2

    def state_buffers(self) -> list:
        """Every buffer a run writes (rows, windows, per-row terms, scratch, params)."""
        out = [self.ul_row0, self.pscr] + ([self.params] if self.params is not None else [])
        for group in (self.u, self.ul, self.u_c1, self.ul_c1, self.ul_row_term, self.du, self.dul, self.du_c1,
                      self.dul_c1, self.dul_row_term):
            out += [t for per_scale in group for t in per_scale]
        return out

    @torch.no_grad()
    def fill(self, x, known, cond, uniforms, temperature: float, window=None):
        """Load one call's inputs into the buffers in place (their addresses, which the
        captured graphs hold, do not change): image, known mask, uniforms, temperature,
        window, the conditioning terms (in true float32); every state buffer zeroed and
        the row counter back to 0, so the run is that of fresh buffers."""
        if (tuple(x.shape) != (self.B, self.C, self.H, self.W) or (known is None) != (self.known is None)
                or (cond is None) == self.has_cond or (window is None) != (self.window is None)):
            raise ValueError("PPBuffers.fill: inputs do not match the buffers' shapes / options")
        self.x.copy_(x)
        if known is not None:
            self.known.copy_(known.to(torch.int8))
        if window is not None:
            self.window.fill(window)
        self.uniforms.copy_(uniforms)
        self.temp.fill_(float(temperature))
        self.row.zero_()
        for t in self.state_buffers():
            t.zero_()
        if self.has_cond:
            with true_fp32():
                conds = self.model.scale_conds(cond)
                for t1, t2, blk, s in self._cond_slots:
                    for t, new in zip((t1, t2), blk.cond_terms(conds[s])):
                        t.copy_(_cond_last(new, (self.H >> s, self.W >> s)))

    # -- launch lists ---------------------------------------------------------------------
    def _build(self, m, down, conds):
        """Per scale: ``row_up[s]``, ``row_down[s]``, ``px_up[s]``, ``px_down[s]``: lists of
        ``(op name, kwargs)``; the pixel ones take the column ``q`` at launch."""
        S, f, n = self.S, self.F, self.NB
        self.row_up, self.row_down = [], []
        self.px_up, self.px_down = [], []
        for s in range(S):
            ru, pu = [], []
            if s == 0:
                ru.append(("row_init", dict(x=self.x, row=self.row, u_out=self.u[0][0], row0=self.ul_row0,
                                            wu=_im2col(m.u_init), bu=_bias(m.u_init),
                                            wv=_im2col(m.ul_init_v), bv=_bias(m.ul_init_v), table=self.table)))
                pu.append(("pixel_init", dict(x=self.x, row=self.row, row0=self.ul_row0, out=self.ul[0][0],
                                              wh=_im2col(m.ul_init_h), bh=_bias(m.ul_init_h), table=self.table)))
            else:
                cu, cl = m.downsize_u[s - 1], m.downsize_ul[s - 1]
                ru.append(("row_conv", dict(row=self.row, inp=self.u[s - 1][n], w=_raw_taps(cu), b=_bias(cu),
                                            out=self.u[s][0], shift=s, stride=2, padl=1, act=False)))
                pu.append(("pixel_down", dict(row=self.row, inp=self.ul[s - 1][n], w=_raw_taps(cl), b=_bias(cl),
                                              out=self.ul[s][0], shift=s)))
            st = m.up_layers[s]
            for k, (ub, lb) in enumerate(zip(st.u_stream, st.ul_stream)):
                h1, h2 = self._cond_terms(ub, conds, s)
                g1, g2 = self._cond_terms(lb, conds, s)
                ru.append(("row_conv", dict(row=self.row, inp=self.u[s][k], w=_act_taps(ub.conv1),
                                            b=_bias(ub.conv1), out=self.u_c1[s][k], shift=s, cond=h1)))
                ru.append(("row_conv", dict(row=self.row, inp=self.u_c1[s][k], w=_act_taps(ub.conv2),
                                            b=_bias(ub.conv2), out=self.u[s][k + 1], shift=s, cond=h2,
                                            res=self.u[s][k])))
                ru.append(("row_conv", dict(row=self.row, inp=self.u[s][k + 1], w=_act_taps(lb.nin_skip),
                                            b=_bias(lb.nin_skip), out=self.ul_row_term[s][k], shift=s, padl=0,
                                            cond=g1)))
                pu.append(("pixel_block", dict(row=self.row, x=self.ul[s][k], c1=self.ul_c1[s][k],
                                               out=self.ul[s][k + 1], row_term=self.ul_row_term[s][k],
                                               w1=_act_taps(lb.conv1), b1=_bias(lb.conv1),
                                               w2=_act_taps(lb.conv2), b2=_bias(lb.conv2), shift=s, h2=g2)))
            rd, pd = [], []
            st = down[s]
            for k, (ub, lb) in enumerate(zip(st.u_stream, st.ul_stream)):
                sk = n - 1 - k if s == S - 1 else n - k          # the up-pass value it reads (LIFO)
                h1, h2 = self._cond_terms(ub, conds, s)
                g1, g2 = self._cond_terms(lb, conds, s)
                wu, wl = _split_nin(lb, f)
                rd.append(("row_conv", dict(row=self.row, inp=self.du[s][k], w=_act_taps(ub.conv1),
                                            b=_bias(ub.conv1) + _bias(ub.nin_skip), out=self.du_c1[s][k],
                                            shift=s, skip=self.u[s][sk], ws=_act_taps(ub.nin_skip), cond=h1)))
                rd.append(("row_conv", dict(row=self.row, inp=self.du_c1[s][k], w=_act_taps(ub.conv2),
                                            b=_bias(ub.conv2), out=self.du[s][k + 1], shift=s, cond=h2,
                                            res=self.du[s][k])))
                rd.append(("row_conv", dict(row=self.row, inp=self.du[s][k + 1], w=wu, b=_bias(lb.nin_skip),
                                            out=self.dul_row_term[s][k], shift=s, padl=0, cond=g1)))
                pd.append(("pixel_block", dict(row=self.row, x=self.dul[s][k], c1=self.dul_c1[s][k],
                                               out=self.dul[s][k + 1], row_term=self.dul_row_term[s][k],
                                               w1=_act_taps(lb.conv1), b1=_bias(lb.conv1),
                                               w2=_act_taps(lb.conv2), b2=_bias(lb.conv2), shift=s,
                                               skip=self.ul[s][sk], ws=wl, h2=g2)))
            if s > 0:
                tu, tl_ = m.upsize_u[S - 1 - s], m.upsize_ul[S - 1 - s]
                rd.append(("row_deconv", dict(row=self.row, inp=self.du[s][-1], w=_deconv(tu), b=_bias(tu),
                                              out=self.du[s - 1][0], shift=s)))
                pd.append(("pixel_deconv", dict(row=self.row, inp=self.dul[s][-1], w=_deconv(tl_), b=_bias(tl_),
                                                out=self.dul[s - 1][0], shift=s)))
            self.row_up.append(ru)
            self.row_down.append(rd)
            self.px_up.append(pu)
            self.px_down.append(pd)
        self.head = ("pixel_head", dict(x=self.x, known=self.known, uniforms=self.uniforms, params=self.params,
                                        pscr=self.pscr, row=self.row, temp=self.temp, inp=self.dul[0][-1],
                                        wh=m.head.weight.detach().float()[:, :, 0, 0].t().contiguous(),
                                        bh=_bias(m.head), dist=self.dist, window=self.window))

    def row_ops(self, lvl: int):
        """The launches of one row of level ``lvl``: ``[(op, kwargs, column or None)]``."""
        ops = [(o, a, None) for s in range(lvl + 1) for o, a in self.row_up[s]]
        ops += [(o, a, None) for s in reversed(range(lvl + 1)) for o, a in self.row_down[s]]
        for j in range(self.W):
            ops += self.pixel_ops(min(lvl, level(j, self.S)), j)
        ops.append(("advance_row", dict(row=self.row), None))
        return ops

    def pixel_ops(self, lvl: int, j: int):
        ops = [(o, a, j >> s) for s in range(lvl + 1) for o, a in self.px_up[s]]
        ops += [(o, a, j >> s) for s in reversed(range(lvl + 1)) for o, a in self.px_down[s]]
        ops.append((*self.head, j))
        return ops


def launch(ops, kernels, reference=False):
    """Run the launches ``ops`` with the Triton kernels (or their PyTorch references)."""
    row_k, px_k = kernels
    for name, args, col in ops:
        mod = row_k if name.startswith(("row", "advance")) else px_k
        fn = getattr(mod, f"{name}_reference" if reference else f"launch_{name}")
        kw = dict(args)
        if col is not None:
            kw["q" if name in ("pixel_down", "pixel_block", "pixel_deconv") else "j"] = col
        if name != "advance_row":
            kw["fp_fusion"] = False
        fn(**kw)


def _capture_cuda_graph(fn):  # pragma: no cover - needs a GPU; UNTESTED ON HARDWARE
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def sample_rows(buf, kernels, bar, capture=None, reference=False, graphs=None):
    """Every row: eagerly (``capture=None``), or by replaying its level's graph from
    ``graphs`` (``{level: replay}``, kept by the caller across calls), capturing it
    (``capture``) at the first row of that level that needs it. On the first use of
    ``graphs`` (empty) row 0 runs eagerly: it compiles every kernel variant, and nothing
    may compile during a capture. Returns ``graphs``."""
    graphs = {} if graphs is None else graphs
    first = not graphs
    for i in range(buf.H):
        lvl = level(i, buf.S)
        ops = buf.row_ops(lvl)
        one_row = lambda ops=ops: launch(ops, kernels, reference)  # noqa: E731
        if capture is None or (i == 0 and first):
            one_row()
        else:
            if lvl not in graphs:
                graphs[lvl] = capture(one_row)
            graphs[lvl]()
        bar.update(buf.W)
    return graphs


class _Entry:
    """A run-cache entry: the buffers of one (model, batch, size, options) and its row
    graphs by trigger level."""

    def __init__(self, buf):
        self.buf = buf
        self.graphs = {}


def _row_capture(device, reference: bool):
    """How rows are captured here: CUDA graphs on a GPU (``USE_CUDA_GRAPHS``), else
    ``None`` (eager: the interpreter, the references). Tests replace it."""
    return _capture_cuda_graph if device.type == "cuda" and not reference and USE_CUDA_GRAPHS else None


@torch.no_grad()
@folded()   # weight-normed weights computed once per call (weight_norm.py)
def run(model, x, known, cond, uniforms, temperature, progress=False, return_params=False, reference=False,
        window=None):
    """Sample the unknown pixels of ``x`` in raster order with the Triton kernels.

    Same contract as ``cached_torch.run``: model ``PixelCNNpp`` (eval mode, on ``x``'s
    device); x ``(B, C, H, W)`` long holding the known pixels; known ``(B, H, W)`` bool or
    None; cond float ``(B, cond_channels, H, W)`` or None; uniforms ``(B, H, W, U)``.
    Returns the completed ``x`` (a new tensor), or ``(x, params)`` with ``params``
    ``(B, P, H, W)`` when ``return_params``. ``reference=True`` runs the same buffers and
    launch sequence with the kernels' PyTorch references (any device, for tests).
    ``window``: a ``pixelaux.consistency.Window`` of ``x``'s shape (consistent decoding) or None.
    """
    if not reference:
        ok, why = status(x.device)
        if not ok:
            raise RuntimeError(f"backend='triton' is not available: {why}")
    temperature = _check_temperature(temperature)
    b, _, h, w = x.shape
    if b == 0 or h == 0 or w == 0:
        out = x.clone()
        params = torch.zeros(b, model.dist.num_params, h, w, device=x.device)
        return (out, params) if return_params else out
    model.check_size((h, w), "x")
    kernels = _kernels()
    cuda = x.device.type == "cuda" and not reference
    with (torch.cuda.device(x.device) if cuda else _null()):
        key = ("pp", str(x.device), tuple(x.shape), known is not None, cond is not None, bool(return_params),
               bool(reference), None if window is None else window.block)
        fresh = []

        def build():
            fresh.append(True)
            return _Entry(PPBuffers(model, x, known, cond, uniforms, temperature, return_params, window=window))

        entry = RUNS.get(model, key, build)
        buf = entry.buf
        if not fresh:
            buf.fill(x, known, cond, uniforms, temperature, window)
        with pixel_progress(h * w, progress, "cached[triton]") as bar:
            sample_rows(buf, kernels, bar, _row_capture(x.device, reference), reference, entry.graphs)
    # the buffers are reused by the next call: hand back copies
    out = buf.x.clone() if buf.x.dtype == x.dtype else buf.x.to(x.dtype)
    return (out, buf.params.clone()) if return_params else out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# -- compiling for a GPU without one -----------------------------------------------------

def compile_for_gpu(configs, arch: int = 90, batch: int = 3, size=(8, 8)):
    """Compile every kernel variant that one row of each ``PixelCNNpp(**config)`` launches
    with known pixels and returned parameters (the highest trigger level, so every
    kernel) for ``cuda sm_<arch>`` without a GPU: ``kernels/compile_check.py``, which
    compiles the gated engine's kernels the same way (the real launchers on CPU
    buffers, each ``kernel[grid](...)`` replaced by ``kernel.warmup``: Triton's
    frontend, LLVM and ptxas; nothing runs). Needs the kernels imported without
    ``TRITON_INTERPRET``. Returns ``[(kernel name, info)]``, one per variant (``reg``,
    ``stack`` and ``local`` (spills) from ``cuobjdump``, ``shared``, ``num_warps``,
    the constexprs); ``compile_check.report`` formats them. ``python -m
    pixelaux.kernels.compile_check --preset bench-pp32`` compiles the bench preset's
    launches at its real size and batches."""
    load_kernels()
    from pixelaux.kernels.compile_check import compile_all
    res = compile_all([dict(c, arch="pixelcnnpp") for c in configs], arch, size, (batch,), teacher_forcing_only=True)
    return [(info["kernel"], info) for info in res.values()]
