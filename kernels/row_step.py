"""The row op: the vertical ``u`` stream of one whole row (docs/design.md section 2).

When row ``i`` starts (``i`` read from the device row counter ``row``):

1. ``row_init_kernel`` -- the first layer: ``u0 = down_shift(conv_(KH,KW)(x))`` at
   row ``i`` (image rows ``i-KH .. i-1``) and the down-shifted part of ``ul``'s first
   layer, ``conv_(1,KW)(x)`` of image row ``i-1`` (both zero on row 0), from im2col
   tiles of the model's input gathered from the integer image through the input
   table (``_jitmath.model_input``; ones channel synthesised) and two ``tl.dot``. ``u0`` goes to ``u_cur``, ``concat_elu(u0)`` into block 0's
   ring buffer, the other into ``ul_row0``.
2. per block ``k``, ``row_block_kernel`` twice:
   * ``STAGE=1``: ``c1 = conv1(concat_elu(u)) + cond_c1`` over the ``KH`` cached rows;
     ``concat_elu(c1)`` into the block's second ring buffer;
   * ``STAGE=2``: ``c2 = conv2(concat_elu(c1)) + cond_c2``, the gate and the residual
     ``u' = u + c2a * sigmoid(c2b)`` (into ``u_cur``, ``concat_elu(u')`` into ring
     ``k+1``: the next block's input); fused, the per-row term of the horizontal
     block ``k``: ``nin_skip(concat_elu(u')) + cond_c1_ul`` into ``ul_row_term[k]``
     (read back after a ``tl.debug_barrier()``, in chunks).
   Two launches per block because ``conv2`` reads ``c1`` at neighbouring columns
   that other programs compute.

Grid: ``(B, cdiv(W, BLOCK_W), channel tiles)``, one program per image, tile of columns
and tile of ``row_tile`` output channels. The convs are im2col over the flattened
(tap, channel) index in chunks of ``BK``, each chunk one ``tl.dot`` with
``input_precision=PREC``: the launch plan's, ``"ieee"`` (float32 exactly, the default:
TF32 would break the exactness contract) or the opt-in ``"tf32x3"``; every dot dimension is a power of two >= 16, masks do the rest. The
chunk loops are runtime loops: unrolled, the compiler hoists every load and spills.

``advance_row_kernel`` adds one to the row counter (grid ``(1,)``), last in a row.

``row_step_reference`` does the same buffer updates in PyTorch with the model's own
modules.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._jitmath import model_input
from .layout import act_interleaved, deinterleave


@triton.jit
def row_init_kernel(x_ptr, tab_ptr, row_ptr, ucur_ptr, uwin_ptr, row0_ptr,
                    w_u_ptr, b_u_ptr, w_v_ptr, b_v_ptr,
                    H, W, L,
                    C: tl.constexpr, E: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                    HID: tl.constexpr, OT: tl.constexpr, BLOCK_W: tl.constexpr,
                    TB: tl.constexpr, HAS_U: tl.constexpr, PREC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    o0 = tl.program_id(2) * OT
    i = tl.load(row_ptr).to(tl.int64)
    CIN: tl.constexpr = C * E + 1
    PW: tl.constexpr = (KW - 1) // 2
    T: tl.constexpr = KH * KW * CIN
    cols = t * BLOCK_W + tl.arange(0, BLOCK_W)
    cmask = cols < W
    co = o0 + tl.arange(0, OT)                                # this program's output channels
    omask = co < HID
    # im2col of the model's input over tap (r, s) and channel ci, tt = (r*KW + s)*CIN + ci
    # (image rows i-KH .. i-1: down-shifted; columns col-PW .. col+PW), in chunks of TB
    acc_u = tl.zeros([BLOCK_W, OT], dtype=tl.float32)
    acc_v = tl.zeros([BLOCK_W, OT], dtype=tl.float32)
    tb = tl.arange(0, TB)
    for t0 in range(0, T, TB):
        tt = t0 + tb
        tr = tt // (KW * CIN)
        ts = (tt // CIN) % KW
        tc = tt % CIN
        row = i - KH + tr                                     # [TB]
        cin = cols[:, None] - PW + ts[None, :]                # [BLOCK_W, TB]
        ok = cmask[:, None] & ((tt < T) & (row >= 0))[None, :] & (cin >= 0) & (cin < W)
        xv = model_input(x_ptr, tab_ptr, (b * C * H + row[None, :]) * W + cin, tc[None, :], ok, H * W, L, C, E)
        wmask = (tt < T)[:, None] & omask[None, :]
        wv = tl.load(w_v_ptr + tt[:, None] * HID + co[None, :], mask=wmask, other=0.0)
        acc_v += tl.dot(xv, wv, input_precision=PREC)
        if HAS_U:
            wu = tl.load(w_u_ptr + tt[:, None] * HID + co[None, :], mask=wmask, other=0.0)
            acc_u += tl.dot(xv, wu, input_precision=PREC)
    live = i > 0                              # down_shift: row 0 is zero
    smask = cmask[:, None] & omask[None, :]
    v = tl.where(live, acc_v + tl.load(b_v_ptr + co, mask=omask, other=0.0)[None, :], 0.0)
    tl.store(row0_ptr + (b * W + cols[:, None]) * HID + co[None, :], v, mask=smask)
    if HAS_U:
        u = tl.where(live, acc_u + tl.load(b_u_ptr + co, mask=omask, other=0.0)[None, :], 0.0)
        u = tl.where(smask, u, 0.0)
        tl.store(ucur_ptr + (b * W + cols[:, None]) * HID + co[None, :], u, mask=smask)
        # concat_elu(u), interleaved, into block 0's ring buffer at row i
        a = tl.reshape(tl.join(tl.where(u > 0, u, tl.exp(tl.minimum(u, 0.0)) - 1.0),
                               tl.where(u < 0, -u, tl.exp(tl.minimum(-u, 0.0)) - 1.0)),
                       [BLOCK_W, 2 * OT])
        n2 = 2 * o0 + tl.arange(0, 2 * OT)
        slot = i % KH
        tl.store(uwin_ptr + ((b * KH + slot) * W + cols[:, None]) * (2 * HID) + n2[None, :], a,
                 mask=cmask[:, None] & (n2 < 2 * HID)[None, :])


@triton.jit
def _conv_rows(win_ptr, w_ptr, b, i, cols, cmask, W, o0,
               HID: tl.constexpr, HID_P: tl.constexpr, OUT: tl.constexpr, OUT_P: tl.constexpr,
               KH: tl.constexpr, KW: tl.constexpr, BLOCK_W: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Down-shifted ``(KH, KW)`` conv at row ``i``, columns ``cols``, over a ring buffer
    of interleaved activations ``(B, KH, W, 2*HID)``; tap matrices ``(2*HID, OUT)``.
    im2col over the flattened (tap, channel) index ``kk = t * 2*HID_P + n``, ``t = r*KW
    + s``, in chunks of ``BK`` (a chunk may span taps). Outputs ``o0 .. o0+OUT_P`` of
    ``OUT``. Returns ``[BLOCK_W, OUT_P]``."""
    PW: tl.constexpr = (KW - 1) // 2
    K2: tl.constexpr = 2 * HID
    K2P: tl.constexpr = 2 * HID_P
    KT: tl.constexpr = KH * KW * K2P
    on = o0 + tl.arange(0, OUT_P)
    omask = on < OUT
    kb = tl.arange(0, BK)
    acc = tl.zeros([BLOCK_W, OUT_P], dtype=tl.float32)
    for k0 in range(0, KT, BK):
        kk = k0 + kb
        t = kk // K2P
        n = kk % K2P
        r = t // KW
        s = t % KW
        row = i - KH + 1 + r
        slot = (i + 1 + r) % KH
        kok = (kk < KT) & (n < K2)                                    # [BK]
        cin = cols[:, None] - PW + s[None, :]                         # [BLOCK_W, BK]
        m = cmask[:, None] & (kok & (row >= 0))[None, :] & (cin >= 0) & (cin < W)
        a = tl.load(win_ptr + ((b * KH + slot[None, :]) * W + cin) * K2 + n[None, :], mask=m, other=0.0)
        wt = tl.load(w_ptr + (t[:, None] * K2 + n[:, None]) * OUT + on[None, :],
                     mask=kok[:, None] & omask[None, :], other=0.0)
        acc += tl.dot(a, wt, input_precision=PREC)
    return acc


@triton.jit
def _nin_rows(win_next, nin_ptr, bnin_ptr, ulh1_ptr, row_term_ptr, k, b, i, cols, cmask, B, H, W, o0,
              HAS_COND: tl.constexpr, KH: tl.constexpr, HID: tl.constexpr, HID_P: tl.constexpr,
              OT: tl.constexpr, BLOCK_W: tl.constexpr, BKN: tl.constexpr, PREC: tl.constexpr):
    """The horizontal block ``k``'s per-row term ``nin_skip(concat_elu(u)) (+ cond)`` at
    row ``i``, outputs ``o0 .. o0+OT``, reading ``concat_elu(u)`` from the ring in chunks."""
    K2: tl.constexpr = 2 * HID
    co = o0 + tl.arange(0, OT)
    omask = co < HID
    smask = cmask[:, None] & omask[None, :]
    slot = i % KH
    rb = tl.zeros([BLOCK_W, OT], dtype=tl.float32)
    kb = tl.arange(0, BKN)
    for k0 in range(0, 2 * HID_P, BKN):
        km = (k0 + kb) < K2
        a = tl.load(win_next + ((b * KH + slot) * W + cols[:, None]) * K2 + k0 + kb[None, :],
                    mask=cmask[:, None] & km[None, :], other=0.0)
        wn = tl.load(nin_ptr + (k * K2 + k0 + kb[:, None]) * HID + co[None, :],
                     mask=km[:, None] & omask[None, :], other=0.0)
        rb += tl.dot(a, wn, input_precision=PREC)
    rb += tl.load(bnin_ptr + k * HID + co, mask=omask, other=0.0)[None, :]
    if HAS_COND:
        pos = ((k * B + b) * H + i) * W + cols[:, None]
        rb += tl.load(ulh1_ptr + pos * HID + co[None, :], mask=smask, other=0.0)
    tl.store(row_term_ptr + ((k * B + b) * W + cols[:, None]) * HID + co[None, :], rb, mask=smask)


@triton.jit(do_not_specialize=["blk"])
def row_block_kernel(row_ptr, blk, NB, B, H, W,
                     ucur_ptr, uwin_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, h1_ptr, h2_ptr,
                     nin_ptr, bnin_ptr, ulh1_ptr, row_term_ptr,
                     STAGE: tl.constexpr, HAS_COND: tl.constexpr,
                     KH: tl.constexpr, KW: tl.constexpr, HID: tl.constexpr, HID_P: tl.constexpr,
                     OT: tl.constexpr, BLOCK_W: tl.constexpr, BK: tl.constexpr, BKN: tl.constexpr,
                     PREC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    o0 = tl.program_id(2) * OT                          # this program's output channels
    i = tl.load(row_ptr).to(tl.int64)
    k = tl.full([], 0, tl.int64) + blk
    K2: tl.constexpr = 2 * HID
    cols = t * BLOCK_W + tl.arange(0, BLOCK_W)
    cmask = cols < W
    co = o0 + tl.arange(0, OT)
    omask = co < HID
    smask = cmask[:, None] & omask[None, :]
    n2 = 2 * o0 + tl.arange(0, 2 * OT)                  # ... interleaved
    amask = cmask[:, None] & (n2 < K2)[None, :]
    plane = KH * W * K2                                  # one image's ring buffer
    win_u = uwin_ptr + (k * 2 + 0) * B * plane           # [k, 0]: act(u), the block's input
    win_c1 = uwin_ptr + (k * 2 + 1) * B * plane          # [k, 1]: act(c1)
    win_next = uwin_ptr + (k + 1) * 2 * B * plane        # [k+1, 0]: act(u'), the next input
    slot = i % KH
    here2 = ((b * KH + slot) * W + cols[:, None]) * K2 + n2[None, :]     # row i of a ring
    pos = ((k * B + b) * H + i) * W + cols[:, None]                      # (k, b, i, col)
    if STAGE == 1:
        c1 = _conv_rows(win_u, w1_ptr + k * (KH * KW * K2 * HID), b, i, cols, cmask, W, o0,
                        HID, HID_P, HID, OT, KH, KW, BLOCK_W, BK, PREC)
        c1 += tl.load(b1_ptr + k * HID + co, mask=omask, other=0.0)[None, :]
        if HAS_COND:
            c1 += tl.load(h1_ptr + pos * HID + co[None, :], mask=smask, other=0.0)
        c1 = tl.where(smask, c1, 0.0)
        a1 = tl.reshape(tl.join(tl.where(c1 > 0, c1, tl.exp(tl.minimum(c1, 0.0)) - 1.0),
                                tl.where(c1 < 0, -c1, tl.exp(tl.minimum(-c1, 0.0)) - 1.0)),
                        [BLOCK_W, 2 * OT])
        tl.store(win_c1 + here2, a1, mask=amask)
    elif STAGE == 2:
        c2 = _conv_rows(win_c1, w2_ptr + k * (KH * KW * K2 * K2), b, i, cols, cmask, W, 2 * o0,
                        HID, HID_P, K2, 2 * OT, KH, KW, BLOCK_W, BK, PREC)
        c2 += tl.load(b2_ptr + k * K2 + n2, mask=n2 < K2, other=0.0)[None, :]
        if HAS_COND:
            c2 += tl.load(h2_ptr + pos * K2 + n2[None, :], mask=amask, other=0.0)
        ca, cb = tl.split(tl.reshape(c2, [BLOCK_W, OT, 2]))              # gate halves
        here = (b * W + cols[:, None]) * HID + co[None, :]
        u = tl.load(ucur_ptr + here, mask=smask, other=0.0)
        u = u + ca * tl.sigmoid(cb)
        u = tl.where(smask, u, 0.0)
        tl.store(ucur_ptr + here, u, mask=smask)
        au = tl.reshape(tl.join(tl.where(u > 0, u, tl.exp(tl.minimum(u, 0.0)) - 1.0),
                                tl.where(u < 0, -u, tl.exp(tl.minimum(-u, 0.0)) - 1.0)),
                        [BLOCK_W, 2 * OT])
        # concat_elu(u) into ring [k+1, 0] at row i: the next block's input (the ring
        # has NB+1 entries, the last one holds the final u for the nin below only)
        tl.store(win_next + here2, au, mask=amask)
        if OT >= HID_P:
            # one program holds every channel: the per-row term of the horizontal block
            # k here, reading the stores above back (visible to all threads after the
            # CTA barrier); with channel tiles it is a launch of its own (STAGE 3)
            tl.debug_barrier()
            _nin_rows(win_next, nin_ptr, bnin_ptr, ulh1_ptr, row_term_ptr, k, b, i, cols, cmask, B, H, W, o0,
                      HAS_COND, KH, HID, HID_P, OT, BLOCK_W, BKN, PREC)
    else:
        _nin_rows(win_next, nin_ptr, bnin_ptr, ulh1_ptr, row_term_ptr, k, b, i, cols, cmask, B, H, W, o0,
                  HAS_COND, KH, HID, HID_P, OT, BLOCK_W, BKN, PREC)


@triton.jit
def advance_row_kernel(row_ptr):
    tl.store(row_ptr, tl.load(row_ptr) + 1)


# -- launchers ------------------------------------------------------------------------

def row_block_w(batch: int, width: int, row_tile: int, hid_p: int) -> int:
    """Columns per program of the row op's blocks (the ``M`` of its dots): 64, 32 or 16 by
    the channel tile (registers), and 16 while the grid ``(B, column tiles, channel
    tiles)`` would have fewer than 16 programs (batch 1: twice the programs)."""
    p2 = triton.next_power_of_2
    bw = max(16, min(64 if row_tile <= 32 else 32 if row_tile <= 128 else 16, p2(width)))
    if batch * triton.cdiv(width, bw) * triton.cdiv(hid_p, row_tile) < 16:
        bw = 16
    return bw


def _sizes(buf) -> dict:
    """Block sizes. Every dot dimension is a power of two >= 16 (``tl.dot`` wants it);
    the chunks keep each dot operand at <= 4096 floats: larger ones spill registers
    (``compile_check`` reports it). The first layer's im2col gather takes tiles of
    ``[16, TB]``: it is the most register-hungry part. ``tf32x3`` splits every operand
    into a high and a low part: at most 64 channels a chunk (128 spills bench-32's
    ``conv2`` at batch 1 under Triton 3.6 and 3.9)."""
    p2 = triton.next_power_of_2
    hid_p = buf.launch_plan.hid_p
    ot = buf.launch_plan.row_tile
    block_w = row_block_w(buf.B, buf.W, ot, hid_p)
    kt = p2(buf.KH * buf.KW * 2 * hid_p)                  # a conv's flattened (tap, channel) size
    most = 128 if buf.launch_plan.precision == "ieee" else 64
    bk = lambda out_p: max(16, min(most, kt, 4096 // max(out_p, block_w)))
    return dict(hid_p=hid_p, ot=ot, block_w=block_w, bk1=bk(ot), bk2=bk(2 * ot), bkn=min(2 * hid_p, bk(ot)),
                tb=min(32 if ot <= 128 else 16, max(16, p2(buf.KH * buf.KW * buf.CIN))),
                warps=4 if ot <= 64 else 8, init_warps=4 if ot <= 32 else 8)


def launch_row_step(buf):
    """Launch the row op for the row ``buf.row`` points at (no host synchronisation):
    grid ``(B, column tiles, channel tiles)``; ``1 + 2 * blocks`` launches (``1 + 3 *
    blocks`` with channel tiles: the ``nin`` needs every channel of ``u``)."""
    z = _sizes(buf)
    tiles = triton.cdiv(buf.HID, z["ot"])
    fuse = dict(enable_fp_fusion=buf.fp_fusion, PREC=buf.launch_plan.precision)
    row_init_kernel[(buf.B, triton.cdiv(buf.W, 16), tiles)](
        buf.x, buf.table, buf.row, buf.u_cur, buf.u_win, buf.ul_row0, buf.w_u0, buf.b_u0, buf.w_v0, buf.b_v0,
        buf.H, buf.W, buf.L_IN,
        C=buf.C, E=buf.E, KH=buf.KH, KW=buf.KW, HID=buf.HID, OT=z["ot"], BLOCK_W=16,
        TB=z["tb"], HAS_U=buf.NB > 0, num_warps=z["init_warps"], **fuse)
    d = buf.dummy
    grid = (buf.B, triton.cdiv(buf.W, z["block_w"]), tiles)
    stages = (1, 2) if tiles == 1 else (1, 2, 3)
    for k in range(buf.NB):
        for stage in stages:
            row_block_kernel[grid](
                buf.row, k, buf.NB, buf.B, buf.H, buf.W,
                buf.u_cur, buf.u_win, buf.w_u1, buf.b_u1, buf.w_u2, buf.b_u2,
                buf.u_h1 if buf.has_cond else d, buf.u_h2 if buf.has_cond else d,
                buf.w_nin, buf.b_nin, buf.ul_h1 if buf.has_cond else d, buf.ul_row_term,
                STAGE=stage, HAS_COND=buf.has_cond, KH=buf.KH, KW=buf.KW, HID=buf.HID,
                HID_P=z["hid_p"], OT=z["ot"], BLOCK_W=z["block_w"], BK=z["bk1"] if stage == 1 else z["bk2"],
                BKN=z["bkn"], num_warps=z["warps"], **fuse)


def launch_advance_row(buf):
    """Add one to the device row counter (the last launch of a row)."""
    advance_row_kernel[(1,)](buf.row)


# -- PyTorch reference ----------------------------------------------------------------

def _window(ring, i, kh):
    """A ring ``(B, KH, W, 2*HID)`` of interleaved activations -> ``(B, 2*HID, KH, W)``
    of image rows ``i-KH+1 .. i`` in ``concat_elu`` channel order (zero rows < 0)."""
    rows = [ring[:, (i - kh + 1 + r) % kh] if i - kh + 1 + r >= 0 else torch.zeros_like(ring[:, 0])
            for r in range(kh)]
    return deinterleave(torch.stack(rows, dim=1)).permute(0, 3, 1, 2)


def _vconv(conv, window):
    """A ``DownShiftedConv2d`` at the last row of ``window`` ``(B, 2*HID, KH, W)`` (which
    holds the rows its forward would pad): ``(B, W, Cout)``."""
    out = F.conv2d(F.pad(window, (conv.pad[0], conv.pad[1])), conv.weight, conv.bias)
    return out[:, :, 0].permute(0, 2, 1)


@torch.no_grad()
def row_step_reference(buf):
    """The row op in PyTorch, on the same buffers, with the model's own conv modules
    (so the weight re-layout is checked too)."""
    m, i, kh = buf.model, int(buf.row[0]), buf.KH
    slot = i % kh
    h = m.input(buf.x)                                            # the model's input
    pw = (buf.KW - 1) // 2
    h = F.pad(h, (pw, pw, kh, 0))                                 # kh rows on top
    zeros = torch.zeros(buf.B, buf.W, buf.HID, device=buf.x.device)
    if i > 0:   # (the modules' forward would pad again: call their weights directly)
        u = F.conv2d(h[:, :, i:i + kh], m.u_init.weight, m.u_init.bias)[:, :, 0].permute(0, 2, 1)
        v = F.conv2d(h[:, :, kh + i - 1:kh + i], m.ul_init_v.weight, m.ul_init_v.bias)
        v = v[:, :, 0].permute(0, 2, 1)
    else:
        u, v = zeros, zeros
    buf.ul_row0.copy_(v)
    if buf.NB == 0:
        return
    buf.u_cur.copy_(u)
    buf.u_win[0, 0, :, slot] = act_interleaved(u)
    cond = lambda t, k: 0.0 if t is None else t[k, :, i]
    hid = buf.HID
    for k, (ub, ulb) in enumerate(zip(m.u_blocks, m.ul_blocks)):
        c1 = _vconv(ub.conv1, _window(buf.u_win[k, 0], i, kh)) + cond(buf.u_h1, k)
        buf.u_win[k, 1, :, slot] = act_interleaved(c1)
        c2 = _vconv(ub.conv2, _window(buf.u_win[k, 1], i, kh))
        if buf.u_h2 is not None:
            c2 = c2 + deinterleave(buf.u_h2[k, :, i])
        u = buf.u_cur + c2[..., :hid] * torch.sigmoid(c2[..., hid:])
        buf.u_cur.copy_(u)
        buf.u_win[k + 1, 0, :, slot] = act_interleaved(u)
        rb = ulb.nin_skip(deinterleave(act_interleaved(u)).permute(0, 2, 1).unsqueeze(2))
        buf.ul_row_term[k] = rb[:, :, 0].permute(0, 2, 1) + cond(buf.ul_h1, k)
