"""The cached engine of a ``PixelCNNpp``, written plainly in PyTorch (docs/design.md section 2).

The readable reference of the multi-resolution algorithm; ``cached_torch.run`` drives
it with the same loop as the single-resolution engine (``start_row``, then ``step``
and ``write`` per pixel). Every conv of PixelCNN++ reads 2 rows, so each conv input
keeps a window of 2 rows at its own scale.

Scale ``s`` (resolution ``H / 2**s``) position ``(p, q)`` belongs to image pixel
``(2**s p, 2**s q)``: it depends on earlier pixels only, and is computed once, at that
pixel ("triggered"):

* ``start_row(i)``, for every scale ``s`` with ``i % 2**s == 0`` (row ``p = i >> s``):
  the windows of scale ``s`` move on one row; the whole row ``p`` of every ``u`` stream
  value of scale ``s`` is computed (it reads rows ``< 2**s p`` only): the up pass
  (scales ascending, a lower scale's first row from the stride-2 conv over the two
  last rows of the scale above), then the down pass (scales descending; a scale's
  input row from the transposed conv of the row below it, kept in ``u_up[s]``, two
  rows by parity), and every per-row term of the ``ul`` blocks (the 1x1 projections of
  ``u``, the conditioning).
* ``step(i, j)``, for every scale ``s`` with ``i`` and ``j`` divisible by ``2**s``
  (position ``(p, q)``): the up pass of ``ul`` at ``(p, q)``, scales ascending (the
  stride-2 conv reads the 2x2 window of the scale above, whose last tap was just
  computed), then the down pass, scales descending, each scale's input from the
  transposed conv of the scale below: computed at the coarse position for the four
  fine positions it feeds and kept in ``ul_up[s]`` (two rows by parity) until their
  pixels come; the up-pass values of ``(p, q)`` are the down pass's skip inputs.
  The head reads the final ``ul`` at scale 0.

The conditioning terms of every block are computed once per image (for a global
``cond``, a vector per image, from the vector, and broadcast over each scale's positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..inputs import encode_pixels
from ..layers import concat_elu


class RowWindow:
    """The last 2 rows of one conv input at one scale, ``(B, C, 2, pad + width + pad_right)``:
    column ``c`` lives at index ``c + 1`` (one column of zero padding on the left)."""

    def __init__(self, b, c, width, right_pad, device):
        self.t = torch.zeros(b, c, 2, 1 + width + right_pad, device=device)

    def next_row(self):
        """The current row becomes the previous one; the new current row is zeros."""
        self.t[:, :, 0] = self.t[:, :, 1]
        self.t[:, :, 1] = 0.0

    def set_row(self, row):
        """Write a whole current row ``(B, C, width)``."""
        self.t[:, :, 1, 1:1 + row.shape[2]] = row

    def set(self, q, value):
        """Write position ``q`` of the current row, ``value`` ``(B, C)``."""
        self.t[:, :, 1, 1 + q] = value

    def taps(self, q0, n):
        """Columns ``q0-1 .. q0+n-2`` of both rows, flattened ``(B, C*2*n)`` (conv weight order)."""
        return self.t[:, :, :, q0:q0 + n].reshape(self.t.shape[0], -1)


def _flat(w):
    return w.reshape(w.shape[0], -1)


def _split_nin(blk, f):
    """A down-pass ``ul`` block's 1x1 projection of ``concat_elu(cat(u, ul_skip))``, split into
    the part over ``(elu(u), elu(-u))`` (per row) and over ``(elu(ul), elu(-ul))`` (per pixel)."""
    w = blk.nin_skip.weight[:, :, 0, 0]                      # (F, 4F): [u, ul, -u, -ul]
    return torch.cat([w[:, :f], w[:, 2 * f:3 * f]], 1), torch.cat([w[:, f:2 * f], w[:, 3 * f:]], 1)


class PixelCNNppState:
    """Preallocated buffers of one sampling run of a ``PixelCNNpp``."""

    def __init__(self, model, x, cond):
        b, c, h, w = x.shape
        dev = x.device
        m = self.model = model
        self.b, self.h, self.w = b, h, w
        S, f = m.scales, m.hidden
        self.S, self.f = S, f
        self.widths = [w >> s for s in range(S)]
        # Input buffer: 2 rows of top padding, 1 column each side; the ones channel marks the image.
        cin = m.input.width
        self.xin = torch.zeros(b, cin, 2 + h, w + 2, device=dev)
        self.xin[:, cin - 1, 2:, 1:1 + w] = 1.0
        self.table = m.input.table(dev)           # (C, K, E): what a sampled value writes
        win = lambda s, right: RowWindow(b, 2 * f, self.widths[s], right, dev)  # noqa: E731
        # Per scale: for every block of each pass, the windows of its two conv inputs.
        self.up_u_win = [[(win(s, 1), win(s, 1)) for _ in st.u_stream] for s, st in enumerate(m.up_layers)]
        self.up_ul_win = [[(win(s, 0), win(s, 0)) for _ in st.ul_stream] for s, st in enumerate(m.up_layers)]
        self.down_u_win = [[(win(S - 1 - t, 1), win(S - 1 - t, 1)) for _ in st.u_stream]
                           for t, st in enumerate(m.down_layers)][::-1]          # indexed by scale
        self.down_ul_win = [[(win(S - 1 - t, 0), win(S - 1 - t, 0)) for _ in st.ul_stream]
                            for t, st in enumerate(m.down_layers)][::-1]
        self.down_layers = list(m.down_layers)[::-1]                             # indexed by scale
        # Inputs of the stride-2 convs: the last up-pass u / ul of scales 0 .. S-2 (no activation).
        self.last_u_win = [RowWindow(b, f, self.widths[s], 1, dev) for s in range(S - 1)]
        self.last_ul_win = [RowWindow(b, f, self.widths[s], 0, dev) for s in range(S - 1)]
        # Outputs of the transposed convs into scale s (from s+1): rows 2p, 2p+1 by parity.
        self.u_up = [torch.zeros(b, f, 2, self.widths[s], device=dev) for s in range(S - 1)]
        self.ul_up = [torch.zeros(b, f, 2, self.widths[s], device=dev) for s in range(S - 1)]
        # Conditioning terms, once per image: per scale, per block, (h1, h2) maps at that scale.
        conds = m.scale_conds(cond)

        def terms(blk, s):
            t1, t2 = blk.cond_terms(conds[s])
            if t1 is not None and t1.shape[2:] != (h >> s, w >> s):   # global cond: broadcast
                t1, t2 = t1.expand(-1, -1, h >> s, w >> s), t2.expand(-1, -1, h >> s, w >> s)
            return t1, t2
        self.up_cond = [([terms(blk, s) for blk in st.u_stream],
                         [terms(blk, s) for blk in st.ul_stream]) for s, st in enumerate(m.up_layers)]
        self.down_cond = [([terms(blk, s) for blk in st.u_stream],
                           [terms(blk, s) for blk in st.ul_stream])
                          for s, st in enumerate(self.down_layers)]
        self.down_nin = [[_split_nin(blk, f) for blk in st.ul_stream] for st in self.down_layers]

    # -- shared block arithmetic ---------------------------------------------------------
    @staticmethod
    def _row_block(blk, wins, x, c1_row, h2_row):
        """A ``u`` block over a whole row: ``x`` ``(B, F, W_s)``; ``c1_row`` the per-row part of
        ``c1`` (skip projection + cond) or None; ``h2_row`` the gate's cond term or None."""
        w1, w2 = wins
        w1.set_row(concat_elu(x))
        c1 = F.conv2d(w1.t, blk.conv1.weight, blk.conv1.bias)[:, :, 0]
        if c1_row is not None:
            c1 = c1 + c1_row
        w2.set_row(concat_elu(c1))
        c2 = F.conv2d(w2.t, blk.conv2.weight, blk.conv2.bias)[:, :, 0]
        if h2_row is not None:
            c2 = c2 + h2_row
        g_a, g_b = c2.chunk(2, dim=1)
        return x + g_a * torch.sigmoid(g_b)

    @staticmethod
    def _pixel_block(blk, wins, q, x, c1_bias, h2):
        """A ``ul`` block at position ``q`` of the current row: ``x`` ``(B, F)``; ``c1_bias``
        everything of ``c1`` that is not the conv over the window ``(B, F)``."""
        w1, w2 = wins
        w1.set(q, concat_elu(x))
        c1 = F.linear(w1.taps(q, 2), _flat(blk.conv1.weight), blk.conv1.bias) + c1_bias
        w2.set(q, concat_elu(c1))
        c2 = F.linear(w2.taps(q, 2), _flat(blk.conv2.weight), blk.conv2.bias)
        if h2 is not None:
            c2 = c2 + h2
        g_a, g_b = c2.chunk(2, dim=1)
        return x + g_a * torch.sigmoid(g_b)

    @staticmethod
    def _nin_row(weight, bias, x):
        """A 1x1 projection of a whole row ``(B, K, W)`` -> ``(B, N, W)``."""
        out = torch.einsum("nk,bkw->bnw", weight, x)
        return out if bias is None else out + bias[None, :, None]

    # -- per row -------------------------------------------------------------------------
    def start_row(self, i: int):
        m, S = self.model, self.S
        scales = [s for s in range(S) if i % (2 ** s) == 0]
        for s in scales:
            for wins in (self.up_u_win[s], self.up_ul_win[s], self.down_u_win[s], self.down_ul_win[s]):
                for w1, w2 in wins:
                    w1.next_row()
                    w2.next_row()
            if s < S - 1:
                self.last_u_win[s].next_row()
                self.last_ul_win[s].next_row()
        zeros = torch.zeros(self.b, self.f, self.w, device=self.xin.device)
        # First layer: u reads image rows i-2, i-1; the down-shifted part of ul row i-1.
        self.ul_row0 = (F.conv2d(self.xin[:, :, i + 1:i + 2], m.ul_init_v.weight, m.ul_init_v.bias)[:, :, 0]
                        if i > 0 else zeros)
        self.up_u, self.up_ul_c1, self.down_ul_c1 = {}, {}, {}
        for s in scales:                                      # up pass, scales ascending
            p = i >> s
            if s == 0:
                u = F.conv2d(self.xin[:, :, i:i + 2], m.u_init.weight, m.u_init.bias)[:, :, 0] if i > 0 else zeros
            else:
                conv = m.downsize_u[s - 1]
                u = F.conv2d(self.last_u_win[s - 1].t, conv.weight, conv.bias, stride=(1, 2))[:, :, 0]
            vals, c1s = [u], []
            for blk, wins, (h1, h2), ulblk, (g1, _) in zip(
                    m.up_layers[s].u_stream, self.up_u_win[s], self.up_cond[s][0],
                    m.up_layers[s].ul_stream, self.up_cond[s][1]):
                u = self._row_block(blk, wins, u, None if h1 is None else h1[:, :, p],
                                    None if h2 is None else h2[:, :, p])
                vals.append(u)
                c1 = self._nin_row(ulblk.nin_skip.weight[:, :, 0, 0], ulblk.nin_skip.bias, concat_elu(u))
                c1s.append(c1 if g1 is None else c1 + g1[:, :, p])
            if s < S - 1:
                self.last_u_win[s].set_row(u)
            self.up_u[s], self.up_ul_c1[s] = vals, c1s
        for s in reversed(scales):                            # down pass, scales descending
            p = i >> s
            skips = list(self.up_u[s])
            u = skips.pop() if s == S - 1 else self.u_up[s][:, :, p % 2]
            st, c1s = self.down_layers[s], []
            for blk, wins, (h1, h2), ulblk, (wu, _), (g1, _) in zip(
                    st.u_stream, self.down_u_win[s], self.down_cond[s][0],
                    st.ul_stream, self.down_nin[s], self.down_cond[s][1]):
                c1 = self._nin_row(blk.nin_skip.weight[:, :, 0, 0], blk.nin_skip.bias, concat_elu(skips.pop()))
                u = self._row_block(blk, wins, u, c1 if h1 is None else c1 + h1[:, :, p],
                                    None if h2 is None else h2[:, :, p])
                d1 = self._nin_row(wu, ulblk.nin_skip.bias, concat_elu(u))
                c1s.append(d1 if g1 is None else d1 + g1[:, :, p])
            self.down_ul_c1[s] = c1s
            if s > 0:                                         # rows 2p, 2p+1 of scale s-1
                deconv = m.upsize_u[S - 1 - s]
                y = F.conv_transpose2d(u.unsqueeze(2), deconv.weight, deconv.bias, stride=2)
                self.u_up[s - 1].copy_(y[:, :, :, 1:1 + self.widths[s - 1]])

    # -- per pixel -----------------------------------------------------------------------
    def step(self, i: int, j: int) -> torch.Tensor:
        """Distribution parameters ``(B, P)`` at pixel ``(i, j)``."""
        m, S = self.model, self.S
        scales = [s for s in range(S) if i % (2 ** s) == 0 and j % (2 ** s) == 0]
        up_vals = {}
        for s in scales:                                      # up pass, scales ascending
            p, q = i >> s, j >> s
            if s == 0:
                ul = self.ul_row0[:, :, j]
                if j > 0:   # right-shifted (2, 1) conv over image rows i-1, i at column j-1
                    ul = ul + F.linear(self.xin[:, :, i + 1:i + 3, j].reshape(self.b, -1),
                                       _flat(m.ul_init_h.weight), m.ul_init_h.bias)
            else:
                conv = m.downsize_ul[s - 1]
                ul = F.linear(self.last_ul_win[s - 1].taps(2 * q, 2), _flat(conv.weight), conv.bias)
            vals = [ul]
            for blk, wins, c1, (_, h2) in zip(m.up_layers[s].ul_stream, self.up_ul_win[s],
                                              self.up_ul_c1[s], self.up_cond[s][1]):
                ul = self._pixel_block(blk, wins, q, ul, c1[:, :, q], None if h2 is None else h2[:, :, p, q])
                vals.append(ul)
            if s < S - 1:
                self.last_ul_win[s].set(q, ul)
            up_vals[s] = vals
        for s in reversed(scales):                            # down pass, scales descending
            p, q = i >> s, j >> s
            skips = up_vals[s]
            ul = skips.pop() if s == S - 1 else self.ul_up[s][:, :, p % 2, q]
            st = self.down_layers[s]
            for blk, wins, c1, (_, wl), (_, h2) in zip(st.ul_stream, self.down_ul_win[s], self.down_ul_c1[s],
                                                      self.down_nin[s], self.down_cond[s][1]):
                bias = c1[:, :, q] + F.linear(concat_elu(skips.pop()), wl)
                ul = self._pixel_block(blk, wins, q, ul, bias, None if h2 is None else h2[:, :, p, q])
            if s > 0:                                         # the 2x2 block of scale s-1 it feeds
                deconv = m.upsize_ul[S - 1 - s]
                y = torch.einsum("zk,knac->znac", ul, deconv.weight) + deconv.bias[None, :, None, None]
                self.ul_up[s - 1][:, :, :, 2 * q:2 * q + 2] = y
        return F.linear(F.elu(ul), _flat(m.head.weight), m.head.bias)

    def write(self, i: int, j: int, pixel: torch.Tensor):
        """Write integer pixels ``(B, C)`` at ``(i, j)`` into the input buffer."""
        self.xin[:, :-1, 2 + i, 1 + j] = encode_pixels(self.table, pixel)
