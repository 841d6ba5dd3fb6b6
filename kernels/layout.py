"""Device buffers and weight layouts of the Triton cached engine (torch only).

For a ``GatedPixelCNN`` with ``NB`` blocks, ``HID`` hidden channels, ``C`` image
channels, ``E = max(embed_dim, 1)`` input channels per image channel (``CIN = C*E + 1``
with the ones channel, ``model.input.width``), ``KH = (k + 1) // 2`` rows of
context and ``KW = k`` columns for the vertical convs, sampling ``B`` images of
``H x W``. Float buffers are float32, contiguous, channels last.

State (written by the kernels):

* ``x``          ``(B, C, H, W)`` int64: the image being sampled; the kernels read
  the model's input straight from it through ``table`` (input channel ``c*E + e`` of
  value ``v`` is ``table[c, v, e]``; the ones channel is 1 inside the image and 0
  outside), so there is no separate padded input buffer.
* ``row``        ``(1,)`` int32: the row being sampled, read by every kernel and
  advanced on the device (so the launches of a row can be replayed as a graph).
* ``u_cur``      ``(B, W, HID)``: the vertical stream of the current row, updated in
  place block by block (the residual input of each block).
* ``u_win``      ``(NB+1, 2, B, KH, W, 2*HID)``: per block, ring buffers (``KH`` rows;
  image row ``r`` lives in slot ``r % KH``) of the *activated* inputs of its two
  vertical convs, ``concat_elu`` interleaved (``[.., 2*c]`` = ``elu(t_c)``,
  ``[.., 2*c+1]`` = ``elu(-t_c)``): ``[k, 0]`` of the block's input ``u``, ``[k, 1]``
  of its ``c1`` (``[NB, 0]``: the last block's output, read by its ``nin_skip``).
  Reads mask rows ``< 0`` and columns outside ``[0, W)`` (the convs'
  zero padding), so the buffers never need clearing.
* ``ul_win``     ``(NB, 2, B, KH, W, 2*HID)``: the same for the horizontal convs.
* ``ul_row0``    ``(B, W, HID)``: the down-shifted first-layer part of ``ul`` of
  the current row.
* ``ul_row_term`` ``(NB, B, W, HID)``: per block, ``nin_skip(concat_elu(u)) + cond``
  of the current row (everything of ``ul``'s ``c1`` that does not depend on row
  ``i`` of ``ul``).
* ``ul_cur``     ``(B, HID)``: ``ul`` between the launches of one pixel (split plan).
* ``temp``       ``(1,)``: the temperature, read by the kernels (so a captured graph
  serves every temperature).
* ``params``     ``(B, P, H, W)``: the head's output, with ``return_params`` only.
* ``pscr``       ``(B, P)``: the head's output at the current pixel (scratch read
  back by the sampling).
* ``window``     a ``WindowBuffer`` (below) (consistent decoding: the packed
  ``(4, B, C, H, W)`` int32 window and its ``(coef, div)``) or None.

The buffers are allocated once per (model, batch, size, options) and refilled in place
per call (``fill``), so a CUDA graph of their launches stays valid across calls.
``LaunchPlan`` / ``choose_launch_plan``: how images and channels map onto programs.

Inputs: ``table`` ``(C, 2**bits, E)`` (``model.input.table``: the learned embedding,
or for a scaled model the floats ``v * 2/(2**bits - 1) - 1`` its forward computes, so
both encodings take the same gather), ``uniforms`` ``(B, H, W, U)``, ``known`` ``(B, H, W)`` int8 (or None),
the conditioning terms computed once per image (or None): ``u_h1``/``ul_h1``
``(NB, B, H, W, HID)`` and ``u_h2``/``ul_h2`` ``(NB, B, H, W, HID, 2)`` (gate halves
interleaved: ``[.., c, 0]`` goes to ``c2a``, ``[.., c, 1]`` to ``c2b``).

Weights (tap matrices ``(K, N)`` contiguous, the input index the interleaved
``concat_elu`` one ``2*ci + half``, the output of a gate conv interleaved
``2*co + g``):

* ``w_u0`` ``(KH, KW, CIN, HID)`` (first vertical layer) and ``w_v0``, the same shape,
  zero but for its last row (the first horizontal layer's down-shifted ``(1, KW)``
  conv of image row ``i-1``, so both read one im2col tile); ``w_h0``
  ``(KH, CIN, HID)`` (the right-shifted part); biases ``(HID,)``.
* ``w_u1`` ``(NB, KH, KW, 2*HID, HID)``, ``w_u2`` ``(NB, KH, KW, 2*HID, 2*HID)``;
  ``w_ul1``/``w_ul2`` the same with ``(KH, KH)`` taps; ``w_nin`` ``(NB, 2*HID, HID)``;
  biases ``(NB, HID)``, gate biases ``(NB, 2*HID)`` interleaved.
* ``w_head`` ``(HID, P)``, ``b_head`` ``(P,)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..float_policy import true_fp32

STATE = ("x", "row", "u_cur", "u_win", "ul_win", "ul_row0", "ul_row_term", "params")


class WindowBuffer:
    """A ``pixelaux.consistency.Window`` as the kernels read it, on the device and refilled
    in place per call (a captured graph holds the addresses): ``packed`` ``(4, B, C, H, W)``
    int32 (``Window.packed``), ``consts`` ``(2, C)`` int32 (``coef``, ``div``); ``block``
    is a constexpr of the kernels (part of a run cache's key)."""

    def __init__(self, window, shape, device):
        self.block = window.block
        self.window_cls = type(window)   # consistency.Window, not imported: kernels/ sits below it
        self.packed = torch.empty((4, *shape), dtype=torch.int32, device=device)
        self.consts = torch.empty(2, shape[1], dtype=torch.int32, device=device)
        self.fill(window)

    def fill(self, window):
        c = self.consts.shape[1]
        if (tuple(window.lo_base.shape) != tuple(self.packed.shape[1:]) or window.block != self.block
                or len(window.coef) != c or len(window.div) != c or min(window.div) < 1):
            raise ValueError(f"window: maps {tuple(window.lo_base.shape)}, {len(window.coef)} coefs, divisors "
                             f"{window.div}, block {window.block} do not fit images {tuple(self.packed.shape[1:])}"
                             f" (block {self.block}, divisors >= 1)")
        self.packed.copy_(window.packed())
        self.consts.copy_(torch.tensor([window.coef, window.div], dtype=torch.int32))

    def window(self):
        """The ``Window`` back, on the device (the kernels' PyTorch references sample with it)."""
        coef, div = self.consts.tolist()
        return self.window_cls(*self.packed.long(), tuple(coef), tuple(div), self.block)


@dataclass(frozen=True)
class LaunchPlan:
    """How the work of one pixel and one row maps onto programs (docs/design.md section 2.4, "GPU engine").

    * ``group``: images per program (``G``, a power of two >= 16): the ``M`` of every
      per-pixel ``tl.dot``; each weight is read once per group.
    * ``pixel_tile``: output channels per program in the pixel op; ``>= hid_p`` is the
      fused plan (one launch per pixel, current taps in registers), smaller splits
      every conv over ``cdiv(HID, pixel_tile)`` programs (``2 * blocks + 1`` launches).
    * ``row_tile``: output channels per program in the row op (grid ``(B, column
      tiles, channel tiles)``).
    """
    group: int
    pixel_tile: int
    row_tile: int
    hid_p: int
    pixel_warps: int

    @property
    def fused(self) -> bool:
        return self.pixel_tile >= self.hid_p

    def key(self) -> tuple:
        return (self.group, self.pixel_tile, self.row_tile, self.pixel_warps)


def _p2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def choose_launch_plan(batch: int, hidden: int, width: int = 32, override: str | None = None) -> LaunchPlan:
    """The default plan for a batch and hidden size (``override``, or the environment
    variable ``PIXELAUX_TRITON_PLAN``, e.g. ``"group=16,pixel_tile=16,row_tile=16"``,
    sets fields by name; sizes are rounded to powers of two >= 16).

    Defaults: ``G = 16`` (32 from 2048 images); the pixel op fused while the current
    tap's weight tile of ``conv2`` (``2*hid_p x 2*hid_p``) fits the register budget
    (``hid_p <= 64``), else split into tiles of ``max(16, 4096 // hid_p)`` channels;
    the row op split into 16-channel tiles while it has fewer than 16 programs."""
    hid_p = max(16, _p2(hidden))
    group = 16 if batch < 2048 else 32
    pixel_tile = hid_p if hid_p <= 64 else max(16, 4096 // hid_p)
    col_tiles = -(-max(width, 1) // 32)
    row_tile = hid_p if batch * col_tiles >= 16 else 16
    fields = dict(group=group, pixel_tile=pixel_tile, row_tile=row_tile)
    text = override if override is not None else os.environ.get("PIXELAUX_TRITON_PLAN", "")
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in fields:
            raise ValueError(f"PIXELAUX_TRITON_PLAN: unknown field {name.strip()!r} (one of {sorted(fields)})")
        fields[name.strip()] = max(16, _p2(int(value)))
    fields["pixel_tile"] = min(fields["pixel_tile"], hid_p)
    fields["row_tile"] = min(fields["row_tile"], hid_p)
    return LaunchPlan(hid_p=hid_p, pixel_warps=4 if hid_p <= 32 else 8, **fields)


def act_interleaved(t: torch.Tensor) -> torch.Tensor:
    """``(..., HID)`` -> ``concat_elu`` interleaved ``(..., 2*HID)``: ``elu(t_c), elu(-t_c)``."""
    return torch.stack([F.elu(t), F.elu(-t)], dim=-1).flatten(-2)


def deinterleave(a: torch.Tensor) -> torch.Tensor:
    """Interleaved ``(..., 2*HID)`` -> the channel order of ``concat_elu`` (pos, then neg)."""
    return a.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def _plain_taps(conv) -> torch.Tensor:
    """``(Cout, Cin, kh, kw)`` -> ``(kh, kw, Cin, Cout)``."""
    return conv.weight.detach().float().permute(2, 3, 1, 0).contiguous()


def _act_taps(conv, gate: bool) -> torch.Tensor:
    """A conv over ``concat_elu`` -> tap matrices ``(kh, kw, 2*HID, Cout)``, rows
    ``2*ci + half``; with ``gate`` the ``2*HID`` outputs interleaved ``2*co + g``."""
    w = conv.weight.detach().float()
    cout, cin2, kh, kw = w.shape
    hid = cin2 // 2
    w = w.reshape(cout, 2, hid, kh, kw).permute(3, 4, 2, 1, 0)          # (kh, kw, ci, half, cout)
    if gate:
        w = w.reshape(kh, kw, hid, 2, 2, cout // 2).transpose(-1, -2)  # (.., g, co) -> (.., co, g)
    return w.reshape(kh, kw, cin2, cout).contiguous()


def _bias(conv, gate: bool = False) -> torch.Tensor:
    b = conv.bias.detach().float()
    if gate:
        b = b.reshape(2, -1).t()
    return b.contiguous().reshape(-1)


def _stack(tensors, dev):
    if tensors:
        return torch.stack(tensors).contiguous()
    return torch.zeros(1, device=dev)


def _cond_last(t: torch.Tensor, gate: bool = False) -> torch.Tensor:
    """``(B, n, H, W)`` -> ``(B, H, W, n)``; with ``gate`` the halves interleaved."""
    t = t.detach().float().permute(0, 2, 3, 1)
    if gate:
        t = t.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)
    return t


class CachedBuffers:
    """Everything the row and pixel kernels of one sampling run read and write."""

    def __init__(self, model, x, known, cond, uniforms, temperature: float, return_params: bool = False,
                 launch_plan: LaunchPlan | None = None, fp_fusion: bool = False, window=None):
        b, c, h, w = x.shape
        dev = x.device
        dist = model.dist
        self.model, self.dist, self.device = model, dist, dev
        self.B, self.C, self.H, self.W = b, c, h, w
        self.CIN = model.input.width                      # C*E + 1
        self.E, self.L_IN = model.input.per_channel, model.input.levels
        self.KH, self.KW, self.HID = model.kh, model.kw, model.hidden
        self.NB = len(model.u_blocks)
        self.P, self.U = dist.num_params, dist.num_uniforms
        self.bits = model.bits
        self.top = 2 ** model.bits - 1
        self.launch_plan = launch_plan if launch_plan is not None else choose_launch_plan(b, model.hidden, w)
        self.fp_fusion = bool(fp_fusion)
        self.DIST, self.L = dist.engine_spec
        nb, hid, kh = self.NB, self.HID, self.KH

        with torch.no_grad():
            # -- weights ---------------------------------------------------------
            self.w_u0 = _plain_taps(model.u_init)                          # (KH, KW, CIN, HID)
            self.b_u0 = _bias(model.u_init)
            self.w_v0 = torch.zeros_like(self.w_u0)                        # (KH, KW, CIN, HID),
            self.w_v0[kh - 1] = _plain_taps(model.ul_init_v)[0]            # zero but the last row
            self.b_v0 = _bias(model.ul_init_v)
            self.w_h0 = _plain_taps(model.ul_init_h)[:, 0].contiguous()    # (KH, CIN, HID)
            self.b_h0 = _bias(model.ul_init_h)
            ub, ulb = list(model.u_blocks), list(model.ul_blocks)
            self.w_u1 = _stack([_act_taps(k.conv1, False) for k in ub], dev)
            self.b_u1 = _stack([_bias(k.conv1) for k in ub], dev)
            self.w_u2 = _stack([_act_taps(k.conv2, True) for k in ub], dev)
            self.b_u2 = _stack([_bias(k.conv2, True) for k in ub], dev)
            self.w_ul1 = _stack([_act_taps(k.conv1, False) for k in ulb], dev)
            self.b_ul1 = _stack([_bias(k.conv1) for k in ulb], dev)
            self.w_ul2 = _stack([_act_taps(k.conv2, True) for k in ulb], dev)
            self.b_ul2 = _stack([_bias(k.conv2, True) for k in ulb], dev)
            self.w_nin = _stack([_act_taps(k.nin_skip, False)[0, 0] for k in ulb], dev)
            self.b_nin = _stack([_bias(k.nin_skip) for k in ulb], dev)
            self.w_head = _plain_taps(model.head)[0, 0].contiguous()       # (HID, P)
            self.b_head = _bias(model.head)
            self.table = model.input.table(dev)                           # (C, L_IN, E)

            # -- state (the rings need no clearing: reads mask rows < 0 and columns
            # outside the image, the convs' zero padding) ------------------------
            self.has_cond = cond is not None and nb > 0 and ub[0].cond_c1 is not None
            self.x = torch.zeros(b, c, h, w, dtype=torch.int64, device=dev)
            self.known = None if known is None else torch.zeros(b, h, w, dtype=torch.int8, device=dev)
            self.uniforms = torch.zeros(b, h, w, self.U, device=dev)
            self.temp = torch.ones(1, device=dev)
            self.row = torch.zeros(1, dtype=torch.int32, device=dev)
            nbuf = max(nb, 1)
            self.u_cur = torch.zeros(b, w, hid, device=dev)
            self.u_win = torch.zeros(nb + 1, 2, b, kh, w, 2 * hid, device=dev)
            self.ul_win = torch.zeros(nbuf, 2, b, kh, w, 2 * hid, device=dev)
            self.ul_row0 = torch.zeros(b, w, hid, device=dev)
            self.ul_row_term = torch.zeros(nbuf, b, w, hid, device=dev)
            self.ul_cur = torch.zeros(b, hid, device=dev)       # split plan: ul between launches
            self.pscr = torch.zeros(b, self.P, device=dev)
            self.params = torch.zeros(b, self.P, h, w, device=dev) if return_params else None
            self.dummy = torch.zeros(1, device=dev)
            self.u_h1 = self.u_h2 = self.ul_h1 = self.ul_h2 = None
            self.window = None if window is None else WindowBuffer(window, x.shape, dev)
        self.fill(x, known, cond, uniforms, temperature, window)

    def signature(self, x, known, cond, return_params: bool) -> tuple:
        """What must match for these buffers (and a graph of their launches) to serve a
        call: shapes and which optional inputs are present."""
        has_cond = cond is not None and self.NB > 0 and self.model.u_blocks[0].cond_c1 is not None
        return (tuple(x.shape), known is not None, has_cond, bool(return_params))

    @torch.no_grad()
    def fill(self, x, known, cond, uniforms, temperature: float, window=None):
        """Load one call's inputs into the buffers in place (their addresses, which a
        captured graph holds, do not change): the image, the known mask, the uniforms,
        the temperature, the window, the conditioning terms (the prefill, once per
        image, in true float32: ``true_fp32``, TF32 off for cuDNN and matmuls); the row
        counter back to 0."""
        if self.signature(x, known, cond, self.params is not None)[:3] != (
                (self.B, self.C, self.H, self.W), self.known is not None, self.has_cond) \
                or (window is None) != (self.window is None):
            raise ValueError("CachedBuffers.fill: inputs do not match the buffers' shapes / options")
        self.temperature = float(temperature)
        self.x.copy_(x)
        if known is not None:
            self.known.copy_(known)
        self.uniforms.copy_(uniforms)
        self.temp.fill_(self.temperature)
        self.row.zero_()
        if window is not None:
            self.window.fill(window)
        if self.has_cond:
            with true_fp32():     # TF32 off: the terms are float32, as the forward's (and the kernels')
                self._fill_cond(cond)

    def _fill_cond(self, cond):
        """The conditioning terms of every block, computed once per image (``fill``)."""
        cond = cond.to(self.device).float()
        if cond.dim() == 2:   # global: each block's terms once per image, broadcast below
            cond = cond[:, :, None, None]
        ub, ulb = list(self.model.u_blocks), list(self.model.ul_blocks)
        u_terms = [k.cond_terms(cond) for k in ub]
        ul_terms = [k.cond_terms(cond) for k in ulb]
        new = dict(u_h1=torch.stack([_cond_last(t[0]) for t in u_terms]),
                   u_h2=torch.stack([_cond_last(t[1], True) for t in u_terms]),
                   ul_h1=torch.stack([_cond_last(t[0]) for t in ul_terms]),
                   ul_h2=torch.stack([_cond_last(t[1], True) for t in ul_terms]))
        for name, t in new.items():
            t = t.expand(-1, -1, self.H, self.W, -1)             # (NB, B, H, W, n)
            if getattr(self, name) is None:
                setattr(self, name, t.contiguous())
            else:
                getattr(self, name).copy_(t)

    # -- helpers for the tests -------------------------------------------------
    def state(self) -> dict:
        return {k: getattr(self, k) for k in STATE if getattr(self, k) is not None}

    def clone(self) -> "CachedBuffers":
        """A copy whose state tensors are independent (weights and inputs shared)."""
        other = object.__new__(CachedBuffers)
        other.__dict__.update(self.__dict__)
        for k, v in self.state().items():
            setattr(other, k, v.clone())
        return other
