"""The cached engine, written plainly in PyTorch: the readable executor of a sampling plan.

``engines/plan.py`` describes a model family's cached computation (its buffers and the
steps that fill them, by scale); this module walks it with torch ops, on any device, for
every family (docs/design.md 2.3):

* the pixels are written into one padded input buffer ``xin`` as they are sampled;
* every conv input keeps a window of its last ``kh`` rows at its scale, preallocated,
  moved on one row when a row of that scale starts: ``O(blocks * hidden * kh * W)``;
* when row ``i`` starts, the row steps of every scale ``s`` with ``i % 2**s == 0``: the
  whole row of the ``u`` stream (it depends on rows ``< i`` only) and every per-row term
  of the ``ul`` stream (the down-shifted part of its first layer, each block's 1x1
  projection of ``u``, the conditioning), each conv a ``conv2d`` over its window;
* at pixel ``(i, j)``, the pixel steps of every scale with ``i``, ``j`` divisible by
  ``2**s``: the ``ul`` stream at that position from the windows (a ``linear`` over the
  taps), the head; the pixel is sampled from the shared uniforms and written into ``xin``.

The conditioning terms of every block are computed once per image (for a global ``cond``,
a vector per image ``(B, K)``, from the vector itself, and broadcast over the positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..inputs import encode_pixels
from ..layers import concat_elu
from ..weight_norm import folded, plain
from . import plan as P
from .progress import pixel_progress


def _flat(w: torch.Tensor) -> torch.Tensor:
    """A conv weight as a matrix ``(Cout, Cin*kh*kw)`` matching a flattened window."""
    return w.reshape(w.shape[0], -1)


class RowWindow:
    """The last ``rows`` rows of one conv input (``plan.Window``), ``(B, C, rows, left + W_s + right)``:
    column ``c`` of the scale lives at index ``left + c``."""

    def __init__(self, spec: P.Window, b: int, width: int, device):
        self.left = spec.left
        self.t = torch.zeros(b, spec.channels, spec.rows, spec.left + width + spec.right, device=device)

    def next_row(self):
        """Every row moves up one; the new current row is zeros."""
        self.t[:, :, :-1] = self.t[:, :, 1:].clone()
        self.t[:, :, -1] = 0.0

    def set_row(self, row):
        """Write a whole current row ``(B, C, W_s)``."""
        self.t[:, :, -1, self.left:self.left + row.shape[2]] = row

    def set(self, q, value):
        """Write position ``q`` of the current row, ``value`` ``(B, C)``."""
        self.t[:, :, -1, self.left + q] = value

    def taps(self, q0, n):
        """Padded columns ``q0 .. q0+n-1`` of every row, flattened ``(B, C*rows*n)`` (conv weight order)."""
        return self.t[:, :, :, q0:q0 + n].reshape(self.t.shape[0], -1)


class State:
    """Preallocated buffers of one sampling run of a stage model, and its plan's steps."""

    def __init__(self, model, x, cond):
        b, _, h, w = x.shape
        dev = x.device
        self.model, self.plan = model, P.plan_of(model)
        self.modules = dict(model.named_modules())
        self.b, self.h, self.w = b, h, w
        kh, pw = self.plan.kh, self.plan.pw
        # Input buffer: kh rows of top padding, pw columns each side; the ones channel
        # marks the image (the model's extra input channel), zeros are padding.
        cin = model.input.width
        self.xin = torch.zeros(b, cin, kh + h, w + 2 * pw, device=dev)
        self.xin[:, cin - 1, kh:, pw:pw + w] = 1.0
        self.table = model.input.table(dev)       # (C, K, E): what a sampled value writes
        self.windows = {s.name: RowWindow(s, b, w >> s.scale, dev) for s in self.plan.windows}
        self.by_scale = [[self.windows[s.name] for s in self.plan.windows if s.scale == k]
                         for k in range(self.plan.scales)]
        self.holders = {s.name: torch.zeros(b, s.channels, 2, w >> s.scale, device=dev) for s in self.plan.holders}
        self.values = {}
        # Conditioning terms, once per image: (h1, h2) maps at the block's scale.
        conds = model.scale_conds(cond)     # the conditioning input at every scale
        self.cond = {}
        for name, s in self.plan.cond_blocks:
            t1, t2 = self.modules[name].cond_terms(conds[s])
            if t1.shape[2:] != (h >> s, w >> s):             # global cond: broadcast
                t1, t2 = t1.expand(-1, -1, h >> s, w >> s), t2.expand(-1, -1, h >> s, w >> s)
            self.cond[name] = (t1, t2)
        # A split 1x1 projection of concat_elu(cat(u, ul)): the u part per row, the ul part per pixel.
        self.split = {}
        for steps in (st for _, st in self.plan.row_steps):
            for step in steps:
                if isinstance(step, P.RowTerm) and step.split:
                    wt = self.modules[step.block].nin_skip.weight[:, :, 0, 0]    # (F, 4F): [u, ul, -u, -ul]
                    f = wt.shape[0]
                    self.split[step.block] = (torch.cat([wt[:, :f], wt[:, 2 * f:3 * f]], 1),
                                              torch.cat([wt[:, f:2 * f], wt[:, 3 * f:]], 1))
        # Every conv a pixel step applies, as a matrix over its flattened taps, its bias and
        # its kernel width (the taps it reads per row), read once per run.
        self.linear = {}
        for steps in (st for _, st in self.plan.pixel_steps):
            for step in steps:
                if isinstance(step, P.PixelBlock):
                    convs = [f"{step.block}.conv1", f"{step.block}.conv2"]
                elif isinstance(step, (P.InputPixel, P.DownPixel, P.Head)):
                    convs = [step.conv]
                else:
                    convs = []
                for name in convs:
                    c = self.modules[name]
                    self.linear[name] = (_flat(c.weight), c.bias, c.weight.shape[3])
        self.no_cond = (None, None)
        self._row_ops = {P.InputRow: self._input_row, P.DownRow: self._down_row, P.FromUp: self._from_up_row,
                         P.RowBlock: self._row_block, P.RowTerm: self._row_term, P.Keep: self._keep_row,
                         P.UpRow: self._up_row}
        self._pixel_ops = {P.InputPixel: self._input_pixel, P.DownPixel: self._down_pixel,
                           P.FromUp: self._from_up_pixel, P.PixelBlock: self._pixel_block,
                           P.Keep: self._keep_pixel, P.UpPixel: self._up_pixel, P.Head: self._head}

    def _module(self, name):
        return self.modules[name]

    # -- shared block arithmetic ---------------------------------------------------------
    @staticmethod
    def _nin_row(weight, bias, x):
        """A 1x1 projection of a whole row ``(B, K, W)`` -> ``(B, N, W)``."""
        out = torch.einsum("nk,bkw->bnw", weight, x)
        return out if bias is None else out + bias[None, :, None]

    def _row_block(self, step: P.RowBlock, i: int, p: int):
        blk = self._module(step.block)
        w1, w2 = (self.windows[n] for n in step.windows)
        h1, h2 = self.cond.get(step.block, self.no_cond)
        x = self.values[step.x]
        c1_row = None
        if step.skip is not None:
            c1_row = self._nin_row(blk.nin_skip.weight[:, :, 0, 0], blk.nin_skip.bias, concat_elu(self.values[step.skip]))
        if h1 is not None:
            c1_row = h1[:, :, p] if c1_row is None else c1_row + h1[:, :, p]
        w1.set_row(concat_elu(x))
        c1 = F.conv2d(w1.t, blk.conv1.weight, blk.conv1.bias)[:, :, 0]
        if c1_row is not None:
            c1 = c1 + c1_row
        w2.set_row(concat_elu(c1))
        c2 = F.conv2d(w2.t, blk.conv2.weight, blk.conv2.bias)[:, :, 0]
        if h2 is not None:
            c2 = c2 + h2[:, :, p]
        g_a, g_b = c2.chunk(2, dim=1)
        self.values[step.out] = x + g_a * torch.sigmoid(g_b)

    def _row_term(self, step: P.RowTerm, i: int, p: int):
        nin = self._module(step.block).nin_skip
        weight = self.split[step.block][0] if step.split else nin.weight[:, :, 0, 0]
        term = self._nin_row(weight, nin.bias, concat_elu(self.values[step.src]))
        h1 = self.cond.get(step.block, self.no_cond)[0]
        self.values[step.out] = term if h1 is None else term + h1[:, :, p]

    def _pixel_block(self, step: P.PixelBlock, i: int, j: int, p: int, q: int):
        m1, b1, k1 = self.linear[f"{step.block}.conv1"]
        m2, b2, k2 = self.linear[f"{step.block}.conv2"]
        w1, w2 = (self.windows[n] for n in step.windows)
        h2 = self.cond.get(step.block, self.no_cond)[1]
        x = self.values[step.x]
        bias = self.values[step.term][:, :, q]
        if step.skip is not None:
            bias = bias + F.linear(concat_elu(self.values[step.skip]), self.split[step.block][1])
        w1.set(q, concat_elu(x))
        c1 = F.linear(w1.taps(q, k1), m1, b1) + bias
        w2.set(q, concat_elu(c1))
        c2 = F.linear(w2.taps(q, k2), m2, b2)
        if h2 is not None:
            c2 = c2 + h2[:, :, p, q]
        g_a, g_b = c2.chunk(2, dim=1)
        self.values[step.out] = x + g_a * torch.sigmoid(g_b)

    # -- per row -------------------------------------------------------------------------
    def start_row(self, i: int):
        """The row steps of every scale whose row starts at image row ``i``."""
        for s in range(self.plan.scales):
            if i % (1 << s) == 0:
                for win in self.by_scale[s]:
                    win.next_row()
        for s, steps in self.plan.row_steps:
            if i % (1 << s) == 0:
                for step in steps:
                    self._row_ops[type(step)](step, i, i >> s)

    def _input_row(self, step: P.InputRow, i: int, p: int):
        v, kh = self.values, self.plan.kh
        if i == 0:
            zeros = torch.zeros(self.b, self.plan.hidden, self.w, device=self.xin.device)
            v[step.out], v[step.out_ul] = zeros, zeros
            return
        uc, ulc = self._module(step.u_conv), self._module(step.ul_conv)
        v[step.out] = F.conv2d(self.xin[:, :, i:i + kh], uc.weight, uc.bias)[:, :, 0]
        v[step.out_ul] = F.conv2d(self.xin[:, :, kh + i - 1:kh + i], ulc.weight, ulc.bias)[:, :, 0]

    def _down_row(self, step: P.DownRow, i: int, p: int):
        conv = self._module(step.conv)
        self.values[step.out] = F.conv2d(self.windows[step.src].t, conv.weight, conv.bias, stride=(1, 2))[:, :, 0]

    def _from_up_row(self, step: P.FromUp, i: int, p: int):
        self.values[step.out] = self.holders[step.src][:, :, p % 2]

    def _keep_row(self, step: P.Keep, i: int, p: int):
        self.windows[step.window].set_row(self.values[step.src])

    def _up_row(self, step: P.UpRow, i: int, p: int):
        deconv, dst = self._module(step.conv), self.holders[step.dst]
        y = F.conv_transpose2d(self.values[step.src].unsqueeze(2), deconv.weight, deconv.bias, stride=2)
        dst.copy_(y[:, :, :, 1:1 + dst.shape[3]])

    # -- per pixel -----------------------------------------------------------------------
    def step(self, i: int, j: int) -> torch.Tensor:
        """Distribution parameters ``(B, P)`` at pixel ``(i, j)``."""
        params = None
        for s, steps in self.plan.pixel_steps:
            if i % (1 << s) == 0 and j % (1 << s) == 0:
                for step in steps:
                    out = self._pixel_ops[type(step)](step, i, j, i >> s, j >> s)
                    params = out if out is not None else params
        return params

    def _input_pixel(self, step: P.InputPixel, i: int, j: int, p: int, q: int):
        ul = self.values[step.row][:, :, j]
        if j > 0:   # right-shifted (kh, 1) conv over image rows i-kh+1 .. i at column j-1
            m, bias, _ = self.linear[step.conv]
            kh = self.plan.kh
            window = self.xin[:, :, i + 1:i + kh + 1, self.plan.pw + j - 1]
            ul = ul + F.linear(window.reshape(self.b, -1), m, bias)
        self.values[step.out] = ul

    def _down_pixel(self, step: P.DownPixel, i: int, j: int, p: int, q: int):
        m, bias, kw = self.linear[step.conv]
        self.values[step.out] = F.linear(self.windows[step.src].taps(2 * q, kw), m, bias)

    def _from_up_pixel(self, step: P.FromUp, i: int, j: int, p: int, q: int):
        self.values[step.out] = self.holders[step.src][:, :, p % 2, q]

    def _keep_pixel(self, step: P.Keep, i: int, j: int, p: int, q: int):
        self.windows[step.window].set(q, self.values[step.src])

    def _up_pixel(self, step: P.UpPixel, i: int, j: int, p: int, q: int):
        deconv = self._module(step.conv)
        y = torch.einsum("zk,knac->znac", self.values[step.src], deconv.weight) + deconv.bias[None, :, None, None]
        self.holders[step.dst][:, :, :, 2 * q:2 * q + 2] = y

    def _head(self, step: P.Head, i: int, j: int, p: int, q: int):
        m, bias, _ = self.linear[step.conv]
        return F.linear(F.elu(self.values[step.src]), m, bias)

    def write(self, i: int, j: int, pixel: torch.Tensor):
        """Write integer pixels ``(B, C)`` at ``(i, j)`` into the input buffer."""
        self.xin[:, :-1, self.plan.kh + i, self.plan.pw + j] = encode_pixels(self.table, pixel)


@torch.no_grad()
def workspace_bytes(model, x, cond) -> int:
    """Bytes ``run`` allocates for ``x`` and ``cond``: its copy of ``x`` and every buffer of
    the state it builds, with the values it keeps per row (the state is built here and
    its first row started; ``footprint.held_bytes`` counts what it holds)."""
    from .footprint import held_bytes, num_threads
    with num_threads(1), folded():    # weight norm: folded copies counted, no copy of the model kept
        state = State(model, x, cond)
        state.start_row(0)
        state.step(0, 0)
        return x.nbytes + held_bytes(state, skip=model)


@torch.no_grad()
def run(model, x, known, cond, uniforms, temperature, progress=False, return_params=False, window=None):
    """Same contract as ``naive.run`` (``window``: consistent decoding); with ``return_params`` also returns the
    parameters at every position ``(B, P, H, W)`` (teacher forcing when all known)."""
    model = plain(model)     # weight norm folded once per weight version, not per read (weight_norm.py)
    x = x.clone()
    b, _, h, w = x.shape
    state = State(model, x, cond)
    params_out = torch.empty(b, model.dist.num_params, h, w, device=x.device) if return_params else None
    uniforms = uniforms.to(x.device)
    with pixel_progress(h * w, progress, "cached[torch]") as bar:
        for i in range(h):
            state.start_row(i)
            for j in range(w):
                params = state.step(i, j)
                if return_params:
                    params_out[:, :, i, j] = params
                bounds = None if window is None else window.bounds_at(x, i, j)
                pix = model.dist.sample_flat(params, uniforms[:, i, j], temperature, bounds)
                if known is not None:
                    pix = torch.where(known[:, i, j, None], x[:, :, i, j], pix)
                x[:, :, i, j] = pix
                state.write(i, j, pix)
            bar.update(w)
    return (x, params_out) if return_params else x
