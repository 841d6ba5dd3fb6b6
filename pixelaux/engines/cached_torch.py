"""The cached engine, written plainly in PyTorch (docs/design.md section 2).

The readable reference of the algorithm; runs on any device. For a
``GatedPixelCNN`` with ``kh`` rows of context per conv and image width ``W``:

* the pixels are written into one padded input buffer ``xin`` as they are sampled;
* every conv over the ``u`` or ``ul`` stream keeps a window of the last ``kh`` rows of
  its input (``act(u)``, ``act(c1)``, ...), preallocated, shifted up by one row when a
  new row starts: ``O(blocks * hidden * kh * W)`` per image;
* when row ``i`` starts, the ``u`` stream of the whole row is computed (it depends on
  rows ``< i`` only), and with it every per-row term of the ``ul`` stream: the
  down-shifted part of its first layer and each block's 1x1 projection of ``u``;
* then for each column ``j``, the ``ul`` stream at that single position is computed
  from the windows, the head gives the distribution, the pixel is sampled from the
  shared uniforms and written into ``xin``.

The conditioning terms of every block are computed once per image; for a global
``cond`` (a vector per image, ``(B, K)``) from the vector itself, ``(B, 2C, 1, 1)``
per block, and broadcast over the positions (``expand``, no copy).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..inputs import encode_pixels
from ..layers import concat_elu
from ..weight_norm import folded, plain
from .cached_torch_pp import PixelCNNppState
from .progress import pixel_progress


def cond_terms(blk, cond, h: int, w: int):
    """A block's ``(h1, h2)`` for a map ``(B, K, h, w)`` or a vector ``(B, K)``, as maps
    ``(B, *, h, w)``; from a vector they are computed once per image and broadcast."""
    if cond is None or cond.dim() == 4:
        return blk.cond_terms(cond)
    t1, t2 = blk.cond_terms(cond[:, :, None, None])
    if t1 is None:
        return t1, t2
    return t1.expand(-1, -1, h, w), t2.expand(-1, -1, h, w)


def _flat(conv):
    """A conv's weight as a matrix ``(Cout, Cin*kh*kw)`` matching a flattened window."""
    return conv.weight.reshape(conv.weight.shape[0], -1), conv.bias


class CachedState:
    """Preallocated buffers of one sampling run of a ``GatedPixelCNN``."""

    def __init__(self, model, x, cond):
        b, c, h, w = x.shape
        dev = x.device
        self.model, self.b, self.h, self.w = model, b, h, w
        self.kh, self.pw = model.kh, (model.kw - 1) // 2
        hid = model.hidden
        # Input buffer: kh rows of top padding, pw columns each side; the ones channel
        # marks the image (the model's extra input channel), zeros are padding.
        cin = model.input.width
        self.xin = torch.zeros(b, cin, self.kh + h, w + 2 * self.pw, device=dev)
        self.xin[:, cin - 1, self.kh:, self.pw:self.pw + w] = 1.0
        self.table = model.input.table(dev)       # (C, K, E): what a sampled value writes
        # Row windows (a shift register of the last kh rows of each conv input).
        n = len(model.u_blocks)
        self.u_win = [[torch.zeros(b, 2 * hid, self.kh, w + 2 * self.pw, device=dev) for _ in range(2)]
                      for _ in range(n)]
        self.ul_win = [[torch.zeros(b, 2 * hid, self.kh, w + self.kh - 1, device=dev) for _ in range(2)]
                       for _ in range(n)]
        # Conditioning terms, once per image: (h1, h2) per block and stream.
        self.u_cond = [cond_terms(blk, cond, h, w) for blk in model.u_blocks]
        self.ul_cond = [cond_terms(blk, cond, h, w) for blk in model.ul_blocks]
        self.ul_flat = [(_flat(blk.conv1), _flat(blk.conv2)) for blk in model.ul_blocks]
        self.init_h = _flat(model.ul_init_h)
        self.head = _flat(model.head)

    # -- per row ---------------------------------------------------------------------
    @staticmethod
    def _push_row(win, row):
        """Shift a window up one row and write ``row`` ``(B, Cin, W)`` as its last row."""
        win[:, :, :-1] = win[:, :, 1:].clone()
        pad = (win.shape[3] - row.shape[2]) // 2
        win[:, :, -1, pad:pad + row.shape[2]] = row

    def start_row(self, i: int):
        """Vertical stream of row ``i`` and the per-row terms of the horizontal stream."""
        m, kh = self.model, self.kh
        zeros = torch.zeros(self.b, m.hidden, self.w, device=self.xin.device)
        # First layer, down-shifted: row i reads image rows i-kh .. i-1 (zero at row 0).
        u = F.conv2d(self.xin[:, :, i:i + kh], m.u_init.weight, m.u_init.bias)[:, :, 0] if i > 0 else zeros
        self.ul_row0 = (F.conv2d(self.xin[:, :, kh + i - 1:kh + i], m.ul_init_v.weight, m.ul_init_v.bias)[:, :, 0]
                        if i > 0 else zeros)
        self.ul_row_bias = []
        for blk, (w1, w2), (h1, h2), lw in zip(m.u_blocks, self.u_win, self.u_cond, self.ul_win):
            self._push_row(w1, concat_elu(u))
            c1 = F.conv2d(w1, blk.conv1.weight, blk.conv1.bias)[:, :, 0]
            if h1 is not None:
                c1 = c1 + h1[:, :, i]
            self._push_row(w2, concat_elu(c1))
            c2 = F.conv2d(w2, blk.conv2.weight, blk.conv2.bias)[:, :, 0]
            if h2 is not None:
                c2 = c2 + h2[:, :, i]
            g_a, g_b = c2.chunk(2, dim=1)
            u = u + g_a * torch.sigmoid(g_b)
            # The horizontal windows move on to row i; its row starts empty.
            for win in lw:
                win[:, :, :-1] = win[:, :, 1:].clone()
                win[:, :, -1] = 0.0
            self.ul_row_bias.append(u)
        for k, (ulb, (h1, _)) in enumerate(zip(m.ul_blocks, self.ul_cond)):
            bias = ulb.nin_skip(concat_elu(self.ul_row_bias[k]).unsqueeze(2))[:, :, 0]
            self.ul_row_bias[k] = bias + h1[:, :, i] if h1 is not None else bias

    # -- per pixel -------------------------------------------------------------------
    def step(self, i: int, j: int) -> torch.Tensor:
        """Distribution parameters ``(B, P)`` at pixel ``(i, j)``."""
        m, kh = self.model, self.kh
        ul = self.ul_row0[:, :, j]
        if j > 0:   # right-shifted (kh, 1) conv over image rows i-kh+1 .. i at column j-1
            window = self.xin[:, :, i + 1:i + kh + 1, self.pw + j - 1]
            ul = ul + F.linear(window.reshape(self.b, -1), *self.init_h)
        for (w1, w2), ((m1, b1), (m2, b2)), bias, (_, h2) in zip(
                self.ul_win, self.ul_flat, self.ul_row_bias, self.ul_cond):
            w1[:, :, -1, kh - 1 + j] = concat_elu(ul)
            c1 = F.linear(w1[:, :, :, j:j + kh].reshape(self.b, -1), m1, b1) + bias[:, :, j]
            w2[:, :, -1, kh - 1 + j] = concat_elu(c1)
            c2 = F.linear(w2[:, :, :, j:j + kh].reshape(self.b, -1), m2, b2)
            if h2 is not None:
                c2 = c2 + h2[:, :, i, j]
            g_a, g_b = c2.chunk(2, dim=1)
            ul = ul + g_a * torch.sigmoid(g_b)
        return F.linear(F.elu(ul), *self.head)

    def write(self, i: int, j: int, pixel: torch.Tensor):
        """Write integer pixels ``(B, C)`` at ``(i, j)`` into the input buffer."""
        self.xin[:, :-1, self.kh + i, self.pw + j] = encode_pixels(self.table, pixel)


@torch.no_grad()
def workspace_bytes(model, x, cond) -> int:
    """Bytes ``run`` allocates for ``x`` and ``cond``: its copy of ``x`` and every buffer of
    the state it builds, with the values it keeps per row (the state is built here and
    its first row started; ``resources.held_bytes`` counts what it holds)."""
    from ..resources import held_bytes, num_threads
    with num_threads(1), folded():    # weight norm: folded copies counted, no copy of the model kept
        state = PixelCNNppState(model, x, cond) if model.kind == "PixelCNNpp" else CachedState(model, x, cond)
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
    state = PixelCNNppState(model, x, cond) if model.kind == "PixelCNNpp" else CachedState(model, x, cond)
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
