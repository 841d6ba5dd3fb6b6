"""The device buffers of the Triton engine, one builder for every family (docs/design.md 2.4).

:func:`build` reads the sampling plan (``plan.plan_of``) and returns the buffers of one
(model, batch, size, options), allocated once and refilled in place per call (``fill``),
with the launches of one row (``launch_row``):

* **the fused gated path**, chosen when the plan has the gated shape (:func:`gated_shape`:
  one scale; rows: the first layer, then per block its ``u`` block and its ``ul`` block's
  row term; pixels: the first layer, the ``ul`` blocks, the head): ``CachedBuffers``
  (``triton_gated_buffers.py``; its ``LaunchPlan``: ``kernels/layout.py``) and the row /
  fused pixel kernels (``kernels/row_step.py``, ``kernels/pixel_step.py``: one launch per
  pixel), any ``kh``;
* **the plan walker** (:class:`PlanBuffers`), for every other plan (``PixelCNNpp``): one
  launch per step of the plan, with the 2-row kernels of ``kernels/pp_row.py`` and
  ``kernels/pp_pixel.py``, one buffer per value the plan names. It runs any plan whose
  convs read 2 rows and 3 columns, whatever the family (a 3x3 ``GatedPixelCNN``'s plan
  too: ``tests/test_triton_plan_walker.py``).

Both answer ``H``, ``W``, ``x``, ``params``, ``fill(x, known, cond, uniforms, temperature,
window)``, ``row_key(i)`` (rows with the same key launch the same sequence: one CUDA graph
per key) and ``launch_row(key, reference=False)`` (``reference``: the kernels' PyTorch
references on the same buffers, any device).

**The plan walker's launches.** Row ``i`` triggers the scales ``s <= level(i)`` (the
largest ``s < S`` with ``2**s | i``), pixel ``(i, j)`` those with also ``2**s | j``; the
steps of the triggered scales run in the plan's order (up pass ascending, down pass
descending). Per row step a launch with grid ``(image groups, output-channel tiles,
column tiles)``, a conv being a matmul over the gathered window with ``M = images x
columns``; per pixel step a launch with grid ``(cdiv(B, G),)``, products with ``M = G``
images (the launch plan's ``group`` and ``precision``, chosen by batch size as for the
gated path: ``tl.dot`` from 16 images, matrix-vector products below); the head with the sampling fused; then the row counter advances on the
device. A row's launches depend only on ``level(i)``: one graph per level (at most
``S``), not one graph whose kernels exit early at untriggered scales (that would launch
the work of every scale at every pixel, most of it empty programs). Not fused yet: one
launch per block, where the gated path has one per pixel.
"""
from __future__ import annotations

import importlib

import torch

from ..float_policy import true_fp32
from . import plan as P
from .triton_gated_buffers import CachedBuffers


def kernels():
    """``pixelaux.kernels`` (the installed subpackage or a source tree's ``kernels/``)."""
    from .cached_triton import load_kernels
    return load_kernels()


def gated_shape(plan) -> bool:
    """Whether the fused gated path runs ``plan``: one scale, no holders, rows ``InputRow``
    then ``(RowBlock, RowTerm)`` pairs, pixels ``InputPixel``, ``PixelBlock``s, ``Head``,
    no skip inputs and no split row term."""
    if plan.scales != 1 or plan.holders or len(plan.row_steps) != 1 or len(plan.pixel_steps) != 1:
        return False
    (_, rows), = plan.row_steps
    (_, pixels), = plan.pixel_steps
    pairs = rows[1:]
    return (isinstance(rows[0], P.InputRow) and len(pairs) % 2 == 0
            and all(isinstance(a, P.RowBlock) and a.skip is None and isinstance(b, P.RowTerm) and not b.split
                    for a, b in zip(pairs[::2], pairs[1::2]))
            and isinstance(pixels[0], P.InputPixel) and isinstance(pixels[-1], P.Head)
            and all(isinstance(s, P.PixelBlock) and s.skip is None for s in pixels[1:-1]))


def build(model, x, known, cond, uniforms, temperature, return_params=False, window=None, launch_plan=None,
          fp_fusion=False):
    """The buffers of one sampling run of ``model`` (filled with these inputs)."""
    plan = P.plan_of(model)
    if gated_shape(plan):
        K = kernels()
        return FusedGated(K, CachedBuffers(model, x, known, cond, uniforms, temperature, return_params,
                                           launch_plan=launch_plan, fp_fusion=fp_fusion, window=window))
    return PlanBuffers(model, plan, x, known, cond, uniforms, temperature, return_params, window, launch_plan)


class FusedGated:
    """The fused gated path: ``buf``, a ``CachedBuffers``, and one row sequence for every
    row (key 0): the row op, ``W`` pixel ops (one launch each in the fused launch plan),
    the row counter."""

    def __init__(self, K, buf):
        self.K, self.buf = K, buf
        self.H, self.W, self.x, self.row = buf.H, buf.W, buf.x, buf.row

    @property
    def params(self):
        return self.buf.params

    def fill(self, x, known, cond, uniforms, temperature, window=None):
        self.buf.fill(x, known, cond, uniforms, temperature, window)

    def row_key(self, i: int) -> int:
        return 0

    def launch_row(self, key: int = 0, reference: bool = False):
        K, buf = self.K, self.buf
        if reference:
            K.row_step_reference(buf)
            for j in range(buf.W):
                K.pixel_step_reference(buf, j)
            buf.row.add_(1)
            return
        K.launch_row_step(buf)
        for j in range(buf.W):
            K.launch_pixel_step(buf, j)
        K.launch_advance_row(buf)


# -- the plan walker --------------------------------------------------------------------

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
    """A 1x1 over ``concat_elu(cat(u, ul))`` (channels ``[u, ul, -u, -ul]``) -> its ``u``
    part and its ``ul`` part, each ``(1, 1, 2, F, F)``."""
    w = blk.nin_skip.weight.detach().float()[:, :, 0, 0]                 # (F, 4F)
    part = lambda pos, neg: torch.stack([pos.t(), neg.t()])[None, None].contiguous()  # noqa: E731
    return part(w[:, :f], w[:, 2 * f:3 * f]), part(w[:, f:2 * f], w[:, 3 * f:])


def _cond_last(t, size):
    """A block's cond term ``(B, n, H_s, W_s)`` as the kernels read it, ``(B, H_s, W_s, n)``;
    the terms of a global cond, ``(B, n, 1, 1)``, are broadcast."""
    if t is None:
        return None
    return t.detach().float().expand(-1, -1, *size).permute(0, 2, 3, 1).contiguous()


def level(i: int, scales: int) -> int:
    """The highest scale triggered at row (or column) ``i``: largest ``s < scales`` with ``2**s | i``."""
    s = 0
    while s + 1 < scales and i % (2 ** (s + 1)) == 0:
        s += 1
    return s


#: the pixel launches that take the column of their scale as ``q`` (the others: ``j``)
_BY_Q = ("pixel_down", "pixel_block", "pixel_deconv")


class PlanBuffers:
    """Every buffer the 2-row kernels of one run read and write, and the launches of its
    steps, built by walking the sampling plan.

    ``values[name]``: one tensor ``(B, NS, W_s, F)`` per value the plan names (row ``r``
    of its scale in slot ``r % NS``; the kernels apply ``concat_elu`` on load, so a value
    is at once a conv window, a residual, a skip and a stride-2 conv's input): ``NS = 1``
    for a row term, ``4`` for a holder (the transposed conv of row ``p`` writes rows
    ``2p, 2p+1`` while ``2p-1`` is still read), else ``2``; a block's ``c1`` is the value
    named by its second window. ``Keep`` and ``FromUp`` launch nothing: the window, and
    the value read from a holder, are the same tensor. Also ``x`` ``(B, C, H, W)`` int64,
    ``row`` ``(1,)`` int32, ``temp``, ``pscr`` ``(B, P)``, ``params`` with
    ``return_params``, ``window`` (a ``WindowBuffer``) with a window, and the cond terms
    of every block at its scale, ``(B, H_s, W_s, F)`` / ``(B, H_s, W_s, 2F)``."""

    def __init__(self, model, plan, x, known, cond, uniforms, temperature, return_params=False, window=None,
                 launch_plan=None):
        if plan.kh != 2 or plan.kw != 3:
            raise ValueError(f"the plan walker's kernels read 2 rows, 3 columns; plan has ({plan.kh}, {plan.kw})")
        b, c, h, w = x.shape
        # images per pixel program and the dots' precision, by batch size as the gated path
        # (its channel tiles do not apply: one pixel program per group and step)
        self.launch_plan = (launch_plan if launch_plan is not None
                            else kernels().layout.choose_launch_plan(b, plan.hidden, w))
        dev = x.device
        self.model, self.plan, self.dist = model, plan, model.dist
        self.B, self.C, self.H, self.W, self.S, self.F = b, c, h, w, plan.scales, plan.hidden
        self.table = model.input.table(dev)
        self.x = x.clone().contiguous()
        self.known = None if known is None else known.to(device=dev, dtype=torch.int8).contiguous()
        self.window = None if window is None else kernels().layout.WindowBuffer(window, x.shape, dev)
        self.uniforms = uniforms.to(device=dev, dtype=torch.float32).contiguous()
        self.row = torch.zeros(1, dtype=torch.int32, device=dev)
        self.temp = torch.full((1,), float(temperature), dtype=torch.float32, device=dev)
        self.pscr = torch.zeros(b, self.dist.num_params, device=dev)
        self.params = torch.zeros(b, self.dist.num_params, h, w, device=dev) if return_params else None
        self.has_cond = cond is not None
        self.values = {}
        self._cond_slots = []                  # (the two tensors the kernels read, block, scale)
        self._cond_of = {}
        with torch.no_grad(), true_fp32():     # the prefill (cond pools and 1x1 convs): TF32 off
            conds = model.scale_conds(cond)
            self.rows = [(s, [op for st in steps for op in self._row_op(st, s, conds)]) for s, steps in plan.row_steps]
            self.pixels = [(s, [op for st in steps for op in self._pixel_op(st, s, conds)])
                           for s, steps in plan.pixel_steps]

    def _value(self, name: str, s: int, ns: int = 2):
        """The value ``name`` of scale ``s`` (allocated when first named)."""
        if name not in self.values:
            self.values[name] = torch.zeros(self.B, ns, self.W >> s, self.F, device=self.x.device)
        return self.values[name]

    def _cond(self, block: str, s: int, conds):
        """The two cond terms of ``block`` at scale ``s`` as the kernels read them (``None``
        without cond), computed once and remembered so that ``fill`` can recompute them."""
        if block not in self._cond_of:
            blk = self.model.get_submodule(block)
            t1, t2 = (_cond_last(t, (self.H >> s, self.W >> s)) for t in blk.cond_terms(conds[s]))
            if t1 is not None:
                self._cond_slots.append((t1, t2, blk, s))
            self._cond_of[block] = (t1, t2)
        return self._cond_of[block]

    def _row_op(self, st, s, conds):
        m, v, row = self.model, self._value, self.row
        mod = m.get_submodule
        if isinstance(st, P.InputRow):
            return [("row_init", dict(x=self.x, row=row, u_out=v(st.out, s), row0=v(st.out_ul, s, 1),
                                      wu=_im2col(mod(st.u_conv)), bu=_bias(mod(st.u_conv)),
                                      wv=_im2col(mod(st.ul_conv)), bv=_bias(mod(st.ul_conv)), table=self.table))]
        if isinstance(st, P.DownRow):
            conv = mod(st.conv)
            return [("row_conv", dict(row=row, inp=self.values[st.src], w=_raw_taps(conv), b=_bias(conv),
                                      out=v(st.out, s), shift=s, stride=2, padl=1, act=False))]
        if isinstance(st, P.RowBlock):
            blk, c1 = mod(st.block), v(st.windows[1], s)
            h1, h2 = self._cond(st.block, s, conds)
            first = dict(row=row, inp=self.values[st.x], w=_act_taps(blk.conv1), b=_bias(blk.conv1), out=c1,
                         shift=s, cond=h1)
            if st.skip is not None:
                first.update(b=_bias(blk.conv1) + _bias(blk.nin_skip), skip=self.values[st.skip],
                             ws=_act_taps(blk.nin_skip))
            return [("row_conv", first),
                    ("row_conv", dict(row=row, inp=c1, w=_act_taps(blk.conv2), b=_bias(blk.conv2), out=v(st.out, s),
                                      shift=s, cond=h2, res=self.values[st.x]))]
        if isinstance(st, P.RowTerm):
            blk = mod(st.block)
            w = _split_nin(blk, self.F)[0] if st.split else _act_taps(blk.nin_skip)
            return [("row_conv", dict(row=row, inp=self.values[st.src], w=w, b=_bias(blk.nin_skip),
                                      out=v(st.out, s, 1), shift=s, padl=0, cond=self._cond(st.block, s, conds)[0]))]
        if isinstance(st, P.UpRow):
            conv = mod(st.conv)
            return [("row_deconv", dict(row=row, inp=self.values[st.src], w=_deconv(conv), b=_bias(conv),
                                        out=v(st.dst, s - 1, 4), shift=s))]
        return self._alias(st)

    def _pixel_op(self, st, s, conds):
        m, v, row = self.model, self._value, self.row
        mod = m.get_submodule
        if isinstance(st, P.InputPixel):
            conv = mod(st.conv)
            return [("pixel_init", dict(x=self.x, row=row, row0=self.values[st.row], out=v(st.out, s),
                                        wh=_im2col(conv), bh=_bias(conv), table=self.table))]
        if isinstance(st, P.DownPixel):
            conv = mod(st.conv)
            return [("pixel_down", dict(row=row, inp=self.values[st.src], w=_raw_taps(conv), b=_bias(conv),
                                        out=v(st.out, s), shift=s))]
        if isinstance(st, P.PixelBlock):
            blk = mod(st.block)
            args = dict(row=row, x=self.values[st.x], c1=v(st.windows[1], s), out=v(st.out, s),
                        row_term=self.values[st.term], w1=_act_taps(blk.conv1), b1=_bias(blk.conv1),
                        w2=_act_taps(blk.conv2), b2=_bias(blk.conv2), shift=s, h2=self._cond(st.block, s, conds)[1])
            if st.skip is not None:
                args.update(skip=self.values[st.skip], ws=_split_nin(blk, self.F)[1])
            return [("pixel_block", args)]
        if isinstance(st, P.UpPixel):
            conv = mod(st.conv)
            return [("pixel_deconv", dict(row=row, inp=self.values[st.src], w=_deconv(conv), b=_bias(conv),
                                          out=v(st.dst, s - 1, 4), shift=s))]
        if isinstance(st, P.Head):
            return [("pixel_head", dict(x=self.x, known=self.known, uniforms=self.uniforms, params=self.params,
                                        pscr=self.pscr, row=row, temp=self.temp, inp=self.values[st.src],
                                        wh=mod(st.conv).weight.detach().float()[:, :, 0, 0].t().contiguous(),
                                        bh=_bias(mod(st.conv)), dist=self.dist, window=self.window))]
        return self._alias(st)

    def _alias(self, st):
        """``Keep`` (the window is its value) and ``FromUp`` (the value is its holder): no launch."""
        if isinstance(st, P.Keep):
            self.values[st.window] = self.values[st.src]
        elif isinstance(st, P.FromUp):
            self.values[st.out] = self.values[st.src]
        else:
            raise TypeError(f"the plan walker has no launch for {type(st).__name__}")
        return []

    def state_buffers(self) -> list:
        """Every buffer a run writes (values, scratch, params), once each."""
        out = {id(t): t for t in self.values.values()}
        out[id(self.pscr)] = self.pscr
        if self.params is not None:
            out[id(self.params)] = self.params
        return list(out.values())

    @torch.no_grad()
    def fill(self, x, known, cond, uniforms, temperature: float, window=None):
        """Load one call's inputs into the buffers in place (their addresses, which the
        captured graphs hold, do not change): image, known mask, uniforms, temperature,
        window, the conditioning terms (in true float32); every state buffer zeroed and
        the row counter back to 0, so the run is that of fresh buffers."""
        if (tuple(x.shape) != (self.B, self.C, self.H, self.W) or (known is None) != (self.known is None)
                or (cond is None) == self.has_cond or (window is None) != (self.window is None)):
            raise ValueError("PlanBuffers.fill: inputs do not match the buffers' shapes / options")
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

    # -- launches -------------------------------------------------------------------------
    def row_key(self, i: int) -> int:
        """Row ``i``'s trigger level: its launch sequence depends on nothing else."""
        return level(i, self.S)

    def row_ops(self, lvl: int):
        """The launches of one row of level ``lvl``: ``[(op, kwargs, column or None)]``."""
        ops = [(o, a, None) for s, steps in self.rows if s <= lvl for o, a in steps]
        for j in range(self.W):
            top = min(lvl, level(j, self.S))
            ops += [(o, a, j >> s) for s, steps in self.pixels if s <= top for o, a in steps]
        ops.append(("advance_row", dict(row=self.row), None))
        return ops

    def launch_row(self, key: int, reference: bool = False):
        launch(self.row_ops(key), reference, self.launch_plan)


def launch(ops, reference=False, launch_plan=None):
    """Run the launches ``ops`` with the 2-row kernels (or their PyTorch references);
    ``launch_plan``: its ``group`` (pixel launches) and ``precision`` (all), else 16 and
    ``"ieee"``."""
    kernels()
    row_k = importlib.import_module("pixelaux.kernels.pp_row")
    px_k = importlib.import_module("pixelaux.kernels.pp_pixel")
    for name, args, col in ops:
        mod = row_k if name.startswith(("row", "advance")) else px_k
        fn = getattr(mod, f"{name}_reference" if reference else f"launch_{name}")
        kw = dict(args)
        if col is not None:
            kw["q" if name in _BY_Q else "j"] = col
        if name != "advance_row":
            kw["fp_fusion"] = False
            if launch_plan is not None:
                kw["precision"] = launch_plan.precision
                if mod is px_k:
                    kw["group"] = launch_plan.group
        fn(**kw)
