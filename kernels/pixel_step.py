"""The pixel op: one pixel of every image, from the cached rows to the sampled value.

``pixel_step_kernel``, grid ``(B,)``: one program per image computes, at pixel
``(i, j)`` (``i`` read from the device row counter, ``j`` an argument):

1. the first horizontal layer: ``ul_row0[j]`` (from the row op) plus the
   right-shifted ``(KH, 1)`` conv of the input at column ``j-1``, an im2col vector
   read straight from the integer image ``x``;
2. per block (a runtime loop over ``NB``): ``concat_elu(ul)`` is stored into the
   block's ring buffer at ``(i, j)``, then ``c1 = conv1 + bias + rowbias`` reads all
   ``KH x KH`` taps back from the ring (``tl.debug_barrier()`` in between: a CTA
   barrier makes one thread's global store visible to the others of the program;
   no other program touches this image's buffers); the same for ``c2 = conv2 +
   bias + cond_c2``; the gate and the residual;
3. the head (1x1 conv of ``elu(ul)``), in chunks of outputs, into this image's
   scratch row ``pscr`` (and ``params`` with ``return_params``), barrier;
4. the sampling from the shared uniforms with the arithmetic of
   ``pixelaux.distributions`` ``sample_flat``:
   * categorical: ``softmax(logits / T)``, ``cumsum``, count of ``cdf <= u``,
     clamped to ``levels - 1``, all channels at once; the levels are read in chunks
     (max, sum, then the running cdf), so any ``bits`` works;
   * logistic mixture: the component by the same inverse CDF of ``logits / T``,
     then per channel the coupled mean (``tanh`` coefficients times the rounded
     previous channels), ``u`` clamped to ``[1e-5, 1 - 1e-5]``,
     ``mean + exp(max(log_s, -7)) * T * (log(u) - log1p(-u))``, rounded half to
     even onto the bin grid, clamped, NaN -> 0;
5. known pixels override the sample; the pixel is written into ``x``, the input of
   every later step.

Mat-vecs are register broadcasts and reductions over ``[T_P, BK, OUT_P]`` tiles of
at most 4096 floats (one image per program has no ``M >= 16`` for ``tl.dot``), in
runtime loops over input chunks.

``pixel_step_reference`` does the same in PyTorch with the model's own modules and
``model.dist.sample_flat``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._jitmath import log1p, round_half_even, tanh
from .layout import act_interleaved, deinterleave

LOG_SCALE_MIN = tl.constexpr(-7.0)     # pixelaux.distributions.LOG_SCALE_MIN
U_EPS = tl.constexpr(1e-5)             # pixelaux.distributions.U_EPS
NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _act2(t, N_P: tl.constexpr):
    """``concat_elu`` of a ``[N_P]`` vector, interleaved ``[2*N_P]``."""
    pos = tl.where(t > 0, t, tl.exp(tl.minimum(t, 0.0)) - 1.0)
    neg = tl.where(t < 0, -t, tl.exp(tl.minimum(-t, 0.0)) - 1.0)
    return tl.reshape(tl.join(pos, neg), [2 * N_P])


@triton.jit
def _conv_px(win_ptr, w_ptr, i, j, W,
             OUT: tl.constexpr, OUT_P: tl.constexpr, HID: tl.constexpr, HID_P: tl.constexpr,
             KH: tl.constexpr, T_P: tl.constexpr, BK: tl.constexpr):
    """Down-right-shifted ``(KH, KH)`` conv at ``(i, j)`` over the ring buffer
    ``(KH, W, 2*HID)`` of this image's interleaved activations (the current tap already
    stored); tap matrices ``(2*HID, OUT)``. All taps ``t = r*KH + s`` at once, input
    channels in chunks of ``BK``, one reduction at the end. Returns ``[OUT_P]``."""
    K2: tl.constexpr = 2 * HID
    tt = tl.arange(0, T_P)
    row = i - KH + 1 + tt // KH
    col = j - KH + 1 + tt % KH
    slot = (i + 1 + tt // KH) % KH
    tok = (tt < KH * KH) & (row >= 0) & (col >= 0)                 # [T_P]
    kb = tl.arange(0, BK)
    on = tl.arange(0, OUT_P)
    acc = tl.zeros([BK, OUT_P], dtype=tl.float32)
    for k0 in range(0, 2 * HID_P, BK):
        km = (k0 + kb) < K2
        a = tl.load(win_ptr + (slot * W + col)[:, None] * K2 + k0 + kb[None, :],
                    mask=tok[:, None] & km[None, :], other=0.0)               # [T_P, BK]
        wt = tl.load(w_ptr + ((tt[:, None, None] * K2 + k0 + kb[None, :, None]) * OUT + on[None, None, :]),
                     mask=(tt < KH * KH)[:, None, None] & km[None, :, None] & (on < OUT)[None, None, :],
                     other=0.0)                                                 # [T_P, BK, OUT_P]
        acc += tl.sum(a[:, :, None] * wt, axis=0)
    return tl.sum(acc, axis=0)


@triton.jit(do_not_specialize=["j"])
def pixel_step_kernel(x_ptr, known_ptr, uni_ptr, params_ptr, pscr_ptr, row_ptr, j,
                      NB, B, H, W, scale, temp, half_top, to_unit,
                      ulwin_ptr, row0_ptr, rowbias_ptr, h2_ptr,
                      w_h_ptr, b_h_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wh_ptr, bh_ptr,
                      C: tl.constexpr, C_P: tl.constexpr, KH: tl.constexpr,
                      HID: tl.constexpr, HID_P: tl.constexpr, T_P: tl.constexpr,
                      BK1: tl.constexpr, BK2: tl.constexpr, P: tl.constexpr, PB: tl.constexpr, U: tl.constexpr,
                      DIST: tl.constexpr, L: tl.constexpr, L_B: tl.constexpr,
                      NSEG: tl.constexpr, NSEG_P: tl.constexpr, TOP: tl.constexpr,
                      T0_P: tl.constexpr,
                      HAS_COND: tl.constexpr, HAS_KNOWN: tl.constexpr, RETURN_PARAMS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = tl.load(row_ptr).to(tl.int64)
    jj = tl.full([], 0, tl.int64) + j
    CIN: tl.constexpr = C + 1
    K2: tl.constexpr = 2 * HID
    ch = tl.arange(0, HID_P)
    cm = ch < HID
    n2 = tl.arange(0, 2 * HID_P)
    pix_off = (b * H + i) * W + jj                        # (b, i, j) in a (B, H, W) map

    # -- 1. first horizontal layer -------------------------------------------------
    # ul_row0 (row op) + the right-shifted (KH, 1) conv at column j-1, im2col over
    # t = r * CIN + ci, straight from the integer image
    tt = tl.arange(0, T0_P)
    tr = tt // CIN
    tc = tt % CIN
    trow = i - KH + 1 + tr
    tok = (tt < KH * CIN) & (trow >= 0)
    tok = tl.where(jj > 0, tok, False)
    xi = tl.load(x_ptr + ((b * C + tc) * H + trow) * W + jj - 1, mask=tok & (tc < C), other=0)
    xv = tl.where(tc < C, xi.to(tl.float32) * scale - 1.0, 1.0)   # the ones channel
    xv = tl.where(tok, xv, 0.0)
    wtile = tl.load(w_h_ptr + tt[:, None] * HID + ch[None, :],
                    mask=(tt < KH * CIN)[:, None] & cm[None, :], other=0.0)
    ulh = tl.sum(xv[:, None] * wtile, axis=0) + tl.load(b_h_ptr + ch, mask=cm, other=0.0)
    ul = tl.load(row0_ptr + (b * W + jj) * HID + ch, mask=cm, other=0.0)
    ul += tl.where(jj > 0, ulh, 0.0)                      # right_shift: column 0 is zero
    ul = tl.where(cm, ul, 0.0)

    # -- 2. gated blocks -----------------------------------------------------------
    # each conv input is stored into its ring buffer first, then the conv reads all
    # KH x KH taps back in chunks; tl.debug_barrier() (__syncthreads) makes one
    # thread's store visible to the others of this program (this image's buffers
    # are touched by no other program).
    plane = KH * W * K2
    here = ((i % KH) * W + jj) * K2 + n2                  # (slot of row i, col j)
    for k in range(NB):
        kk = tl.full([], 0, tl.int64) + k
        win1 = ulwin_ptr + ((kk * 2 + 0) * B + b) * plane
        win2 = ulwin_ptr + ((kk * 2 + 1) * B + b) * plane
        tl.store(win1 + here, _act2(ul, HID_P), mask=n2 < K2)
        tl.debug_barrier()
        c1 = _conv_px(win1, w1_ptr + kk * (KH * KH * K2 * HID), i, jj, W,
                      HID, HID_P, HID, HID_P, KH, T_P, BK1)
        c1 += tl.load(b1_ptr + kk * HID + ch, mask=cm, other=0.0)
        c1 += tl.load(rowbias_ptr + ((kk * B + b) * W + jj) * HID + ch, mask=cm, other=0.0)
        c1 = tl.where(cm, c1, 0.0)
        tl.store(win2 + here, _act2(c1, HID_P), mask=n2 < K2)
        tl.debug_barrier()
        c2 = _conv_px(win2, w2_ptr + kk * (KH * KH * K2 * K2), i, jj, W,
                      K2, 2 * HID_P, HID, HID_P, KH, T_P, BK2)
        c2 += tl.load(b2_ptr + kk * K2 + n2, mask=n2 < K2, other=0.0)
        if HAS_COND:
            c2 += tl.load(h2_ptr + (kk * B * H * W + pix_off) * K2 + n2, mask=n2 < K2, other=0.0)
        ca, cb = tl.split(tl.reshape(c2, [HID_P, 2]))      # gate halves
        ul = ul + ca * tl.sigmoid(cb)
        ul = tl.where(cm, ul, 0.0)

    # -- 3. head: all P parameters into this image's scratch row (and params) ---------
    e = tl.where(ul > 0, ul, tl.exp(tl.minimum(ul, 0.0)) - 1.0)
    HW = H * W
    par = params_ptr + b * P * HW + i * W + jj            # + p * HW
    scr = pscr_ptr + b * P
    pb = tl.arange(0, PB)
    for p0 in range(0, P, PB):
        pm = (p0 + pb) < P
        y = tl.sum(e[:, None] * tl.load(wh_ptr + ch[:, None] * P + p0 + pb[None, :],
                                        mask=cm[:, None] & pm[None, :], other=0.0), axis=0)
        y += tl.load(bh_ptr + p0 + pb, mask=pm, other=0.0)
        tl.store(scr + p0 + pb, y, mask=pm)
        if RETURN_PARAMS:
            tl.store(par + (p0 + pb) * HW, y, mask=pm)
    tl.debug_barrier()

    # -- 4. sampling from the shared uniforms --------------------------------------
    uni = uni_ptr + pix_off * U
    cidx = tl.arange(0, C_P)
    cmask = cidx < C
    if DIST == 0:
        # categorical: C independent softmaxes over L levels, all channels at once,
        # in chunks of L_B levels: y[c, l] = logit of level l0 + l of channel c
        lb = tl.arange(0, L_B)
        pidx = cidx[:, None] * L + lb[None, :]             # + l0
        u = tl.load(uni + cidx, mask=cmask, other=0.0)
        mx = tl.full([C_P], NEG_INF, tl.float32)
        for l0 in range(0, L, L_B):                       # pass 1: max of logits / T
            ym = cmask[:, None] & ((l0 + lb) < L)[None, :]
            z = tl.load(scr + l0 + pidx, mask=ym, other=0.0) / temp
            mx = tl.maximum(mx, tl.max(tl.where(ym, z, NEG_INF), axis=1))
        tot = tl.zeros([C_P], dtype=tl.float32)
        for l0 in range(0, L, L_B):                       # pass 2: the softmax normaliser
            ym = cmask[:, None] & ((l0 + lb) < L)[None, :]
            z = tl.load(scr + l0 + pidx, mask=ym, other=0.0) / temp
            tot += tl.sum(tl.where(ym, tl.exp(z - mx[:, None]), 0.0), axis=1)
        tot = tl.where(cmask, tot, 1.0)
        carry = tl.zeros([C_P], dtype=tl.float32)
        cnt = tl.zeros([C_P], dtype=tl.int32)
        for l0 in range(0, L, L_B):                       # pass 3: count cdf <= u
            ym = cmask[:, None] & ((l0 + lb) < L)[None, :]
            z = tl.load(scr + l0 + pidx, mask=ym, other=0.0) / temp
            pr = tl.where(ym, tl.exp(z - mx[:, None]) / tot[:, None], 0.0)
            cdf = tl.cumsum(pr, axis=1) + carry[:, None]
            cnt += tl.sum(tl.where(ym & (cdf <= u[:, None]), 1, 0), axis=1)
            carry += tl.sum(pr, axis=1)
        pix = tl.minimum(cnt, L - 1).to(tl.int64)
    else:
        # discretized logistic mixture: y[seg, m] = parameter seg*L + m, segments
        # [logits, means (C), log-scales (C), coeffs (C(C-1)/2)], L = nr_mix
        mi = tl.arange(0, L_B)
        sg = tl.arange(0, NSEG_P)
        ym = (sg < NSEG)[:, None] & (mi < L)[None, :]
        y = tl.load(scr + sg[:, None] * L + mi[None, :], mask=ym, other=0.0)
        logits = tl.load(scr + mi, mask=mi < L, other=0.0)
        z = tl.where(mi < L, logits / temp, NEG_INF)
        pr = tl.exp(z - tl.max(z, axis=0))
        pr = tl.where(mi < L, pr, 0.0)
        pr = pr / tl.sum(pr, axis=0)
        cdf = tl.cumsum(pr, axis=0)
        u0 = tl.load(uni)
        comp = tl.minimum(tl.sum(tl.where((mi < L) & (cdf <= u0), 1, 0), axis=0), L - 1)
        # every segment at the chosen component
        picked = tl.sum(tl.where(mi[None, :] == comp, y, 0.0), axis=1)      # [NSEG_P]
        xs = tl.zeros([C_P], dtype=tl.float32)            # the rounded channels in [-1, 1]
        pix = tl.zeros([C_P], dtype=tl.int64)
        for c in tl.static_range(C):
            mean = tl.sum(tl.where(sg == 1 + c, picked, 0.0), axis=0)
            log_s = tl.maximum(tl.sum(tl.where(sg == 1 + C + c, picked, 0.0), axis=0), LOG_SCALE_MIN)
            for cp in tl.static_range(c):
                pair = c * (c - 1) // 2 + cp
                co = tl.sum(tl.where(sg == 1 + 2 * C + pair, picked, 0.0), axis=0)
                mean = mean + tanh(co) * tl.sum(tl.where(cidx == cp, xs, 0.0), axis=0)
            uc = tl.minimum(tl.maximum(tl.load(uni + 1 + c), U_EPS), 1.0 - U_EPS)
            val = mean + tl.exp(log_s) * temp * (tl.log(uc) - log1p(-uc))
            pf = round_half_even((val + 1.0) * half_top)
            pf = tl.minimum(tl.maximum(pf, 0.0), TOP * 1.0)
            pf = tl.where(val != val, 0.0, pf)                 # nan_to_num
            xs = tl.where(cidx == c, pf * to_unit - 1.0, xs)
            pix = tl.where(cidx == c, pf.to(tl.int64), pix)

    # -- 5. known pixels override; write the pixel ----------------------------------
    xo = x_ptr + (b * C + cidx) * HW + i * W + jj
    if HAS_KNOWN:
        kn = tl.load(known_ptr + pix_off) != 0
        pix = tl.where(kn, tl.load(xo, mask=cmask, other=0), pix)
    tl.store(xo, pix, mask=cmask)


# -- launcher -------------------------------------------------------------------------

def _meta(buf):
    """Block sizes: padded powers of two; product tiles of at most 4096 floats."""
    hid_p = triton.next_power_of_2(buf.HID)
    c_p = triton.next_power_of_2(buf.C)
    if buf.DIST == 0:
        l_b = min(triton.next_power_of_2(buf.L), max(16, 256 // c_p))
        nseg_p = 1
    else:
        l_b, nseg_p = triton.next_power_of_2(buf.L), triton.next_power_of_2(buf.NSEG)
    t_p = triton.next_power_of_2(buf.KH * buf.KH)
    # [T_P, BK, OUT_P] product tiles of at most 4096 floats
    bk1 = max(1, min(2 * hid_p, 4096 // (t_p * hid_p)))
    bk2 = max(1, min(2 * hid_p, 4096 // (t_p * 2 * hid_p)))
    pb = min(triton.next_power_of_2(buf.P), max(16, 4096 // hid_p))
    warps = 2 if hid_p <= 16 else (4 if hid_p <= 64 else 8)
    return dict(C_P=c_p, HID_P=hid_p, T_P=t_p, BK1=bk1, BK2=bk2, PB=pb, L_B=l_b, NSEG_P=nseg_p,
                T0_P=triton.next_power_of_2(buf.KH * buf.CIN), num_warps=warps)


def launch_pixel_step(buf, j: int):
    """Launch the pixel op at column ``j`` of the row ``buf.row`` points at."""
    d = buf.dummy
    pixel_step_kernel[(buf.B,)](
        buf.x, buf.known if buf.known is not None else d, buf.uniforms,
        buf.params if buf.params is not None else d, buf.pscr, buf.row, j,
        buf.NB, buf.B, buf.H, buf.W, buf.scale, buf.temperature, buf.top / 2.0, 2.0 / buf.top,
        buf.ul_win, buf.ul_row0, buf.ul_rowbias, buf.ul_h2 if buf.has_cond else d,
        buf.w_h0, buf.b_h0, buf.w_ul1, buf.b_ul1, buf.w_ul2, buf.b_ul2, buf.w_head, buf.b_head,
        C=buf.C, KH=buf.KH, HID=buf.HID, P=buf.P, U=buf.U, DIST=buf.DIST, L=buf.L,
        NSEG=buf.NSEG, TOP=buf.top, HAS_COND=buf.has_cond, HAS_KNOWN=buf.known is not None,
        RETURN_PARAMS=buf.params is not None, **_meta(buf))


# -- PyTorch reference ----------------------------------------------------------------

@torch.no_grad()
def pixel_step_reference(buf, j: int):
    """The pixel op in PyTorch on the same buffers, with the model's own modules and
    ``model.dist.sample_flat``; returns the parameters ``(B, P)``."""
    m, i, kh, hid = buf.model, int(buf.row[0]), buf.KH, buf.HID
    slot = i % kh
    xs = buf.x.float() * buf.scale - 1.0
    h = torch.cat([xs, torch.ones_like(xs[:, :1])], dim=1)      # the model's input
    ul = buf.ul_row0[:, j].clone()
    if j > 0:   # right-shifted (kh, 1) conv at column j-1
        hp = F.pad(h, (0, 0, kh - 1, 0))[:, :, i:i + kh, j - 1:j]
        ul = ul + F.conv2d(hp, m.ul_init_h.weight, m.ul_init_h.bias)[:, :, 0, 0]

    def conv(conv_mod, ring, now_act):
        """The (kh, kh) conv at (i, j): ring rows i-kh+1..i, columns j-kh+1..j."""
        rows = [ring[:, (i - kh + 1 + r) % kh] if i - kh + 1 + r >= 0 else torch.zeros_like(ring[:, 0])
                for r in range(kh)]
        win = torch.stack(rows, dim=1)                            # (B, kh, W, 2HID)
        win = F.pad(win.permute(0, 3, 1, 2), (kh - 1, 0))[:, :, :, j:j + kh].clone()
        win[:, :, -1, -1] = now_act                                # the current tap
        return F.conv2d(deinterleave(win.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
                        conv_mod.weight, conv_mod.bias)[:, :, 0, 0]

    for k, blk in enumerate(m.ul_blocks):
        a_ul = act_interleaved(ul)
        c1 = conv(blk.conv1, buf.ul_win[k, 0], a_ul) + buf.ul_rowbias[k, :, j]
        a_c1 = act_interleaved(c1)
        c2 = conv(blk.conv2, buf.ul_win[k, 1], a_c1)
        if buf.has_cond:
            c2 = c2 + deinterleave(buf.ul_h2[k, :, i, j])
        buf.ul_win[k, 0, :, slot, j] = a_ul
        buf.ul_win[k, 1, :, slot, j] = a_c1
        ul = ul + c2[:, :hid] * torch.sigmoid(c2[:, hid:])
    params = m.head(F.elu(ul)[:, :, None, None])[:, :, 0, 0]
    if buf.params is not None:
        buf.params[:, :, i, j] = params
    pix = buf.dist.sample_flat(params, buf.uniforms[:, i, j], buf.temperature)
    if buf.known is not None:
        pix = torch.where(buf.known[:, i, j, None] != 0, buf.x[:, :, i, j], pix)
    buf.x[:, :, i, j] = pix
    return params
