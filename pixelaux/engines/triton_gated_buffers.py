"""The device buffers of the fused gated path of the Triton engine (docs/design.md 2.4).

:class:`CachedBuffers`: everything the gated row and pixel kernels (``kernels/row_step.py``,
``kernels/pixel_step.py``) of one sampling run read and write, laid out as
``kernels/layout.py`` describes (state, inputs, and the model's weights re-laid out as
per-tap matrices over the interleaved ``concat_elu`` channels), allocated once per
(model, batch, size, options) and refilled in place per call (``fill``; the prefill in
true float32). ``triton_buffers.build`` chooses it for a plan of the gated shape; the
plan walker's buffers (``triton_buffers.PlanBuffers``) lay their weights out their own
way. Host side, torch only: the kernels (``pixelaux.kernels``) are loaded when buffers
are built, for the launch plan (``choose_launch_plan``) and the window (``WindowBuffer``).
"""
from __future__ import annotations

import torch

from ..float_policy import true_fp32

#: the buffers a run writes (``CachedBuffers.state``)
STATE = ("x", "row", "u_cur", "u_win", "ul_win", "ul_row0", "ul_row_term", "params")


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
    """Everything the row and pixel kernels of one sampling run read and write.

    ``launch_plan``: a ``kernels.layout.LaunchPlan`` (default: ``choose_launch_plan`` for
    the batch); ``window``: a ``pixelaux.consistency.Window`` (loaded into a
    ``kernels.layout.WindowBuffer``) or None."""

    def __init__(self, model, x, known, cond, uniforms, temperature: float, return_params: bool = False,
                 launch_plan=None, fp_fusion: bool = False, window=None):
        from .cached_triton import load_kernels     # here: importing the kernels imports triton
        K = load_kernels()
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
        self.launch_plan = launch_plan if launch_plan is not None else K.choose_launch_plan(b, model.hidden, w)
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
            self.window = None if window is None else K.layout.WindowBuffer(window, x.shape, dev)
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
