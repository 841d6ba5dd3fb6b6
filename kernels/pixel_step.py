"""The pixel op: one pixel of every image, from the cached rows to the sampled value.

Images are **grouped**: a program owns ``G`` images (``G`` a power of two, the rows of
every per-pixel matmul), so each weight is read once per group. Every per-pixel product
is ``_jitmath.mm``: a ``tl.dot`` with ``M = G`` when ``G >= 16`` (fp32,
``input_precision="ieee"``, or the launch plan's opt-in ``"tf32x3"``), else (batches
below 16) a matrix-vector product per image, so batch 1 computes one image's products,
not 16 padded rows. A batch that is not a multiple of ``G`` masks the rows of its last
group. The chunk sizes keep each product within a register budget (``k_chunk``).

Two launch plans (``layout.LaunchPlan``), same arithmetic:

* **fused** (``pixel_fused_kernel``, grid ``(cdiv(B, G),)``, one launch per pixel):
  one program computes every output channel of every layer for its images. The
  current tap of each conv (``concat_elu`` of the value just computed) is stored into
  the ring buffer (for the later pixels) and, after a CTA barrier, read back with the
  cached taps (earlier columns and rows), ``BK`` channels a product, so no weight tile is
  wider than ``[BK, OUT]`` (at most 4096 floats). (A dot of the whole current tap from
  registers needs a ``[2*HID, OUT]`` tile: 16384 floats at bench-32's width, which
  Triton 3.6 held in registers, 255 of them with 1.2 KB of spill stack per variant.)
* **split** (``pixel_conv_kernel`` + ``pixel_head_kernel``, ``2 * blocks + 1``
  launches per pixel): from 5 images (``layout.choose_launch_plan``), each conv's output
  channels are tiled over ``cdiv(HID, OT)`` programs (grid ``(cdiv(B, G), tiles)``), so one pixel uses
  ``tiles`` times more SMs and each reads ``1 / tiles`` of the weights. A launch
  boundary is the synchronisation between layers (a conv needs every channel of its
  input); every tap, the current one included, is read from the ring in chunks of
  ``BK`` channels (``act(ul)``: every program stores the whole tap, the same values,
  then a CTA barrier; ``act(c1)``: written by the previous launch).

Per pixel ``(i, j)`` (``i`` from the device row counter, ``j`` an argument):

1. the first horizontal layer: ``ul_row0[j]`` (from the row op) plus the
   right-shifted ``(KH, 1)`` conv of the input at column ``j-1``, im2col tiles
   ``[G, T0_B]`` of the ``KH*CIN`` taps gathered from the integer image ``x`` through
   the input table (``_jitmath.model_input``);
2. per block: ``c1 = conv1(act(ul)) + bias + row_term``, ``c2 = conv2(act(c1)) +
   bias + cond_c2``, the gate and the residual (``ul_cur`` between launches in the
   split plan);
3. the head (1x1 conv of ``elu(ul)``, a dot per chunk of ``PB`` outputs) into the
   scratch rows ``pscr`` of the group's images (and ``params``), then a CTA barrier:
   the sampling reads the parameters back in another layout;
4. the sampling from the shared uniforms with the arithmetic of
   ``pixelaux.distributions`` ``sample_flat``, all ``G`` images at once:
   * categorical: ``softmax(logits / T)``, ``cumsum``, count of ``cdf <= u``,
     clamped to ``levels - 1``, all channels at once, levels in chunks of ``L_B``
     (three passes: max, sum, running cdf), so any ``bits`` works (up to 16: 65536
     levels). The normaliser and the running cdf are summed in float64 (the cdf
     rounded to float32 before the comparison, as torch's CPU ``cumsum`` does): in
     float32, the rounding of a sum over 65536 levels moves the cdf by ~1e-6, a
     tenth of a level's probability;
   * logistic mixture: the component by the same inverse CDF of ``logits / T``,
     then per channel the coupled mean, ``u`` clamped to ``[1e-5, 1 - 1e-5]``,
     ``mean + exp(max(log_s, -7)) * T * (log(u) - log1p(-u))``, rounded half to
     even onto the bin grid, clamped, NaN -> 0;
   * consistent decoding (``HAS_WINDOW``: a ``pixelaux.consistency.Window``, packed):
     channel by channel, the range ``[lo, hi]`` its rule gives (``window_range``: from
     the pixel's earlier channels and, for ``BLOCK > 1``, the earlier pixels of its
     block, read back from ``x``), then the truncated distribution: the categorical
     softmax over ``[lo, hi]`` only, or the logistic's inverse CDF in log space
     (``truncated_logistic``, a channel whose range is all of ``[0, top]`` untruncated), as
     ``sample_flat(..., bounds)``;
5. known pixels override the sample; the pixel is written into ``x``.

Float policy of the sampling part (compiled Triton is not the interpreter's
arithmetic): every launch of this engine passes ``enable_fp_fusion=False`` (no FMA
contraction of ``a * b + c``, as PyTorch's elementwise ops compute it; the dots
accumulate with FMA like any GEMM); divisions in the sampling are
round-to-nearest (``tl.math.div_rn``; ``/`` compiles to ``div.full.f32``, 2 ulp);
``max(log_s, -7)`` propagates NaN like ``torch.clamp``; ``exp`` / ``log`` are
Triton's (``ex2.approx``-based on NVIDIA, a few ulp from PyTorch's) and the sums and
``cumsum`` run in a tree order, not PyTorch's. These differ from PyTorch only in
the last bits of a probability or a position, so they can flip a pixel only at a
float tie on a bin boundary: the exactness tests compare images with the
tie-explained comparison of the C++ engine's tests (an image that differs must
first differ where both engines' parameters agree to 1e-4 and each pixel is what
its own parameters give).

``pixel_step_reference`` does the same in PyTorch with the model's own modules and
``model.dist.sample_flat``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._jitmath import ceil_div, floor_div, log1mexp, log1p, logsig, mm, model_input, round_half_even, tanh
from .layout import act_interleaved, deinterleave

LOG_SCALE_MIN = tl.constexpr(-7.0)     # pixelaux.distributions.LOG_SCALE_MIN
U_EPS = tl.constexpr(1e-5)             # pixelaux.distributions.U_EPS
NEG_INF = tl.constexpr(float("-inf"))
POS_INF = tl.constexpr(float("inf"))


@triton.jit
def act2d(t, G: tl.constexpr, N: tl.constexpr):
    """``concat_elu`` of ``[G, N]``, interleaved ``[G, 2N]``: ``elu(t_c), elu(-t_c)``."""
    pos = tl.where(t > 0, t, tl.exp(tl.minimum(t, 0.0)) - 1.0)
    neg = tl.where(t < 0, -t, tl.exp(tl.minimum(-t, 0.0)) - 1.0)
    return tl.reshape(tl.join(pos, neg), [G, 2 * N])


@triton.jit
def first_layer(x_ptr, tab_ptr, row0_ptr, w_h_ptr, b_h_ptr, bidx, bm, i, jj, H, W, L_IN,
                C: tl.constexpr, E: tl.constexpr, KH: tl.constexpr, HID: tl.constexpr,
                HID_P: tl.constexpr, G: tl.constexpr, T0_B: tl.constexpr, PREC: tl.constexpr):
    """``ul`` of the first horizontal layer at ``(i, j)`` for images ``bidx`` ``[G]``:
    ``ul_row0[j]`` + the right-shifted ``(KH, 1)`` conv at column ``j-1`` (zero at
    ``j = 0``), im2col over ``t = r * CIN + ci`` in chunks of ``T0_B`` (token inputs
    make ``CIN = C*E + 1`` wide). Returns ``[G, HID_P]`` (pad = 0)."""
    CIN: tl.constexpr = C * E + 1
    T: tl.constexpr = KH * CIN
    ch = tl.arange(0, HID_P)
    cm = ch < HID
    tb = tl.arange(0, T0_B)
    ulh = tl.zeros([G, HID_P], dtype=tl.float32)
    for t0 in range(0, T, T0_B):
        tt = t0 + tb
        trow = i - KH + 1 + tt // CIN
        tok = tl.where(jj > 0, (tt < T) & (trow >= 0), False)   # (scalar & vector: not in the interpreter)
        m = bm[:, None] & tok[None, :]
        xv = model_input(x_ptr, tab_ptr, (bidx[:, None] * C * H + trow[None, :]) * W + jj - 1,
                         (tt % CIN)[None, :], m, H * W, L_IN, C, E)
        wt = tl.load(w_h_ptr + tt[:, None] * HID + ch[None, :], mask=(tt < T)[:, None] & cm[None, :], other=0.0)
        ulh += mm(xv, wt, PREC)
    ulh += tl.load(b_h_ptr + ch, mask=cm, other=0.0)[None, :]
    ul = tl.load(row0_ptr + (bidx[:, None] * W + jj) * HID + ch[None, :],
                 mask=bm[:, None] & cm[None, :], other=0.0)
    ul += tl.where(jj > 0, ulh, 0.0)                  # right_shift: column 0 is zero
    return tl.where(cm[None, :], ul, 0.0)


@triton.jit
def conv_px(ring_ptr, w_ptr, bidx, bm, i, jj, W, o0,
            OUT: tl.constexpr, OUT_T: tl.constexpr, HID: tl.constexpr, HID_P: tl.constexpr,
            KH: tl.constexpr, BK: tl.constexpr, G: tl.constexpr, PREC: tl.constexpr):
    """Down-right-shifted ``(KH, KH)`` conv at ``(i, j)`` for images ``bidx``, outputs
    ``o0 .. o0+OUT_T`` of ``OUT``. Every tap, the current one included (the caller stored
    it and passed a CTA barrier, or a previous launch wrote it), is read from the ring
    ``(B, KH, W, 2*HID)`` of this block's conv input, ``BK`` channels a product, so no
    weight tile is wider than ``[BK, OUT_T]``. Tap matrices ``(KH*KH, 2*HID, OUT)``.
    Returns ``[G, OUT_T]``."""
    K2: tl.constexpr = 2 * HID
    K2P: tl.constexpr = 2 * HID_P
    on = o0 + tl.arange(0, OUT_T)
    om = on < OUT
    plane = KH * W * K2
    kb = tl.arange(0, BK)
    acc = tl.zeros([G, OUT_T], dtype=tl.float32)
    for n in range(KH * KH):
        t = (n + KH * KH - 1) % (KH * KH)             # the current tap (KH*KH - 1) first, then 0, 1, ...
        r = t // KH
        s = t % KH
        row = i - KH + 1 + r
        col = jj - KH + 1 + s
        slot = (i + 1 + r) % KH
        ok = (row >= 0) & (col >= 0)
        base = ring_ptr + bidx[:, None] * plane + (slot * W + col) * K2
        for k0 in range(0, K2P, BK):
            km = (k0 + kb) < K2
            a = tl.load(base + k0 + kb[None, :], mask=tl.where(ok, bm[:, None] & km[None, :], False), other=0.0)
            wt = tl.load(w_ptr + (t * K2 + k0 + kb[:, None]) * OUT + on[None, :],
                         mask=km[:, None] & om[None, :], other=0.0)
            acc += mm(a, wt, PREC)
    return acc


@triton.jit
def level_logits(pidx, l0, ym, temp, lo, hi, L_B: tl.constexpr, TRUNC: tl.constexpr):
    """``logits / T`` of the levels ``l0 .. l0+L_B-1`` (``categorical_index``); with ``TRUNC``
    ``-inf`` outside ``[lo, hi]``."""
    z = tl.math.div_rn(tl.load(pidx + l0, mask=ym, other=0.0), temp)
    if TRUNC:
        lev = l0 + tl.arange(0, L_B)[None, None, :]
        z = tl.where((lev >= lo[:, :, None]) & (lev <= hi[:, :, None]), z, NEG_INF)
    return z


@triton.jit
def categorical_index(pidx, u, ym, lo, hi, temp, G: tl.constexpr, CN: tl.constexpr, L: tl.constexpr,
                      L_B: tl.constexpr, TRUNC: tl.constexpr):
    """Inverse CDF of ``softmax(logits / T)`` for ``[G, CN]`` channels: ``pidx`` ``[G, CN, L_B]``
    the addresses of levels ``0 .. L_B-1`` (level ``l0 + l`` at ``pidx + l0``), ``u`` ``[G, CN]``,
    ``ym`` the mask of the loads. Levels in chunks of ``L_B`` (both powers of two: no chunk is
    partial); the max and the normaliser accumulate per lane over the chunks and are reduced
    once, only the cdf's carry is per chunk. With ``TRUNC`` the softmax over the levels
    ``[lo, hi]`` (``[G, CN]``) only and the index clamped to them
    (``distributions._truncated_cdf_index``). Returns ``[G, CN]`` int64."""
    tl.static_assert(L % L_B == 0)
    mx = tl.full([G, CN, L_B], NEG_INF, tl.float32)
    for l0 in range(0, L, L_B):                       # pass 1: max of logits / T
        z = level_logits(pidx, l0, ym, temp, lo, hi, L_B, TRUNC)
        mx = tl.maximum(mx, z)
    mx = tl.max(mx, axis=2)[:, :, None]
    tot = tl.zeros([G, CN, L_B], dtype=tl.float64)
    for l0 in range(0, L, L_B):                       # pass 2: the softmax normaliser
        z = level_logits(pidx, l0, ym, temp, lo, hi, L_B, TRUNC)
        tot += tl.exp(z - mx).to(tl.float64)
    tot = tl.sum(tot, axis=2).to(tl.float32)[:, :, None]      # summed in float64, rounded once
    carry = tl.zeros([G, CN], dtype=tl.float64)
    below = tl.zeros([G, CN, L_B], dtype=tl.int32)
    for l0 in range(0, L, L_B):                       # pass 3: count cdf <= u
        z = level_logits(pidx, l0, ym, temp, lo, hi, L_B, TRUNC)
        pr = tl.math.div_rn(tl.exp(z - mx), tot).to(tl.float64)
        cdf = tl.cumsum(pr, axis=2) + carry[:, :, None]       # float64, as torch's CPU cumsum
        below += (cdf.to(tl.float32) <= u[:, :, None]).to(tl.int32)
        carry += tl.sum(pr, axis=2)
    k = tl.sum(below, axis=2)
    if TRUNC:
        k = tl.minimum(tl.maximum(k, lo), hi)
    else:
        k = tl.minimum(k, L - 1)
    return k.to(tl.int64)


@triton.jit
def truncated_logistic(mean, scale, uc, lo, hi, to_unit, half_top, TOP: tl.constexpr):
    """One channel of the truncated logistic, ``DiscretizedLogisticMixture._truncated_channel``
    step by step (log space; through the survival function above the mean): ``[G]``
    pixel values as float."""
    loF = lo.to(tl.float32)
    hiF = hi.to(tl.float32)
    half = to_unit * 0.5                                  # 1 / top, exactly as float32
    za = tl.where(lo == 0, NEG_INF, tl.math.div_rn(((loF * to_unit - 1.0) - half) - mean, scale))
    zb = tl.where(hi == TOP, POS_INF, tl.math.div_rn(((hiF * to_unit - 1.0) + half) - mean, scale))
    upper = za > 0
    small = logsig(tl.where(upper, -zb, za))              # log of the smaller end's cdf
    big = logsig(tl.where(upper, -za, zb))                # and of the larger's
    ed = tl.exp(small - big)
    lq = big + tl.log(tl.where(upper, (1.0 - uc) + uc * ed, uc + ed - uc * ed))
    z = lq - log1mexp(lq)                                 # logit of the cdf (survival) value
    val = mean + scale * tl.where(upper, -z, z)
    pf = round_half_even((val + 1.0) * half_top)
    pf = tl.where(pf != pf, loF, pf)
    return tl.minimum(tl.maximum(pf, loF), hiF)


@triton.jit
def window_range(win_ptr, wc_ptr, x_ptr, plane, off, bm, k, i, jj, W, c, C: tl.constexpr, BLOCK: tl.constexpr):
    """``[lo, hi]`` (``[G]`` int32) of channel ``c`` of pixel ``(i, j)`` by the rule of
    ``pixelaux.consistency``. ``off`` ``[G]``: the pixel's channel-``c`` offsets in a
    ``(B, C, H, W)`` map: the image ``x`` and each map of the packed window ``(4, B, C, H,
    W)`` int32 (``plane = B*C*H*W``); ``k`` ``[G]``: the earlier channels' part of ``K``;
    ``wc_ptr`` ``(2, C)`` int32: ``coef``, ``div``."""
    if BLOCK > 1:     # K += the earlier pixels (raster order) of the cell, sampled or known already
        n = (i % BLOCK) * BLOCK + jj % BLOCK              # the pixel's place in its cell
        cell = off - (i % BLOCK) * W - jj % BLOCK
        for t in range(BLOCK * BLOCK - 1):
            m = tl.where(t < n, bm, False)                # (scalar & vector: not in the interpreter)
            k += tl.load(x_ptr + cell + (t // BLOCK) * W + t % BLOCK, mask=m, other=0).to(tl.int32)
    lo_base = tl.load(win_ptr + off, mask=bm, other=0)
    hi_base = tl.load(win_ptr + plane + off, mask=bm, other=0)
    box_lo = tl.load(win_ptr + 2 * plane + off, mask=bm, other=0)
    box_hi = tl.load(win_ptr + 3 * plane + off, mask=bm, other=0)     # (padding rows: [0, 0])
    d = tl.load(wc_ptr + C + c)
    lo = tl.minimum(tl.maximum(box_lo, ceil_div(lo_base - k, d)), box_hi)
    hi = tl.minimum(box_hi, floor_div(hi_base - k, d))
    return lo, tl.maximum(hi, lo)


@triton.jit
def head_sample(ul, bidx, bm, i, jj, B, H, W, temp, half_top, to_unit,
                x_ptr, known_ptr, uni_ptr, params_ptr, pscr_ptr, wh_ptr, bh_ptr, win_ptr, wc_ptr,
                C: tl.constexpr, C_P: tl.constexpr, HID: tl.constexpr, HID_P: tl.constexpr,
                G: tl.constexpr, P: tl.constexpr, PB: tl.constexpr, U: tl.constexpr,
                DIST: tl.constexpr, L: tl.constexpr, L_B: tl.constexpr, TOP: tl.constexpr,
                HAS_KNOWN: tl.constexpr, RETURN_PARAMS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                BLOCK: tl.constexpr, PREC: tl.constexpr):
    """The head, the sampling and the write-back for the images ``bidx`` at ``(i, j)``;
    with ``HAS_WINDOW`` each channel truncated to its window (``window_range``)."""
    ch = tl.arange(0, HID_P)
    cm = ch < HID
    HW = tl.full([], 0, tl.int64) + H * W   # (P * HW overflows int32 at 2**16 levels)
    pix_off = (bidx * H + i) * W + jj                     # [G]: (b, i, j) in a (B, H, W) map
    # -- head: all P parameters into the scratch rows (and params) -------------------
    e = tl.where(ul > 0, ul, tl.exp(tl.minimum(ul, 0.0)) - 1.0)
    pb = tl.arange(0, PB)
    for p0 in range(0, P, PB):
        pn = p0 + pb
        pm = pn < P
        wt = tl.load(wh_ptr + ch[:, None] * P + pn[None, :], mask=cm[:, None] & pm[None, :], other=0.0)
        y = mm(e, wt, PREC) + tl.load(bh_ptr + pn, mask=pm, other=0.0)[None, :]
        sm = bm[:, None] & pm[None, :]
        tl.store(pscr_ptr + bidx[:, None] * P + pn[None, :], y, mask=sm)
        if RETURN_PARAMS:
            tl.store(params_ptr + bidx[:, None] * (P * HW) + pn[None, :] * HW + i * W + jj, y, mask=sm)
    tl.debug_barrier()         # the scratch rows, visible to every thread of this program
    scr = pscr_ptr + bidx * P                             # [G]
    uni = uni_ptr + pix_off * U                           # [G]
    cidx = tl.arange(0, C_P)
    cmask = cidx < C
    if HAS_WINDOW:           # (window_range)
        wplane = HW * C * B
        woff = bidx * C * HW + i * W + jj                 # [G]: channel 0 of (b, i, j) in a (B, C, H, W) map
        kc = tl.zeros([G], dtype=tl.int32)                # sum of coef[c'] x[c'] over the channels sampled
    if DIST == 0:
        # categorical: C independent softmaxes over L levels; z[g, c, l] = logit of level
        # l0 + l of channel c of image g, divided by T
        lb = tl.arange(0, L_B)
        if HAS_WINDOW:       # channel by channel: a channel's range depends on the earlier ones
            pix = tl.zeros([G, C_P], dtype=tl.int64)
            for c in tl.static_range(C):
                lo, hi = window_range(win_ptr, wc_ptr, x_ptr, wplane, woff + c * HW, bm, kc, i, jj, W, c, C, BLOCK)
                uc = tl.load(uni + c, mask=bm, other=0.0)
                pc = tl.reshape(categorical_index(scr[:, None, None] + c * L + lb[None, None, :], uc[:, None],
                                                  bm[:, None, None], lo[:, None], hi[:, None], temp, G, 1, L, L_B,
                                                  True), [G])
                kc += tl.load(wc_ptr + c) * pc.to(tl.int32)
                pix = tl.where(cidx[None, :] == c, pc[:, None], pix)
        else:
            ym = (bm[:, None] & cmask[None, :])[:, :, None]
            pidx = scr[:, None, None] + cidx[None, :, None] * L + lb[None, None, :]
            u = tl.load(uni[:, None] + cidx[None, :], mask=bm[:, None] & cmask[None, :], other=0.0)
            pix = categorical_index(pidx, u, ym, 0, 0, temp, G, C_P, L, L_B, False)
    else:
        # discretized logistic mixture: parameter seg*L + m of the scratch rows, segments
        # [logits, means (C), log-scales (C), coeffs (C(C-1)/2)], L = nr_mix
        mi = tl.arange(0, L_B)
        lm = mi < L
        logits = tl.load(scr[:, None] + mi[None, :], mask=bm[:, None] & lm[None, :], other=0.0)
        z = tl.where(lm[None, :], tl.math.div_rn(logits, temp), NEG_INF)
        pr = tl.exp(z - tl.max(z, axis=1)[:, None])
        pr = tl.where(lm[None, :], pr, 0.0)
        pr = tl.math.div_rn(pr, tl.sum(pr, axis=1)[:, None])
        cdf = tl.cumsum(pr, axis=1)
        u0 = tl.load(uni, mask=bm, other=0.0)
        comp = tl.minimum(tl.sum(tl.where(lm[None, :] & (cdf <= u0[:, None]), 1, 0), axis=1), L - 1)
        # the segments at the chosen component: gathered, [G] (one image per lane, not all
        # of them in every thread's registers as reductions of a [G, segments, L] tile are)
        xs = tl.zeros([G, C_P], dtype=tl.float32)         # the rounded channels in [-1, 1]
        pix = tl.zeros([G, C_P], dtype=tl.int64)
        for c in tl.static_range(C):
            mean = tl.load(scr + (1 + c) * L + comp, mask=bm, other=0.0)
            log_s = tl.maximum(tl.load(scr + (1 + C + c) * L + comp, mask=bm, other=0.0),
                               LOG_SCALE_MIN, propagate_nan=tl.PropagateNan.ALL)
            for cp in tl.static_range(c):
                pair = c * (c - 1) // 2 + cp
                co = tl.load(scr + (1 + 2 * C + pair) * L + comp, mask=bm, other=0.0)
                mean = mean + tanh(co) * tl.sum(tl.where(cidx[None, :] == cp, xs, 0.0), axis=1)
            uc = tl.load(uni + 1 + c, mask=bm, other=0.5)
            uc = tl.minimum(tl.maximum(uc, U_EPS), 1.0 - U_EPS)
            val = mean + tl.exp(log_s) * temp * (tl.log(uc) - log1p(-uc))
            pf = round_half_even((val + 1.0) * half_top)
            pf = tl.minimum(tl.maximum(pf, 0.0), TOP * 1.0)
            pf = tl.where(val != val, 0.0, pf)             # nan_to_num
            if HAS_WINDOW:   # a range short of [0, top]: truncated (a full one keeps the above, as the Python)
                lo, hi = window_range(win_ptr, wc_ptr, x_ptr, wplane, woff + c * HW, bm, kc, i, jj, W, c, C, BLOCK)
                cut = truncated_logistic(mean, tl.exp(log_s) * temp, uc, lo, hi, to_unit, half_top, TOP)
                pf = tl.where((lo == 0) & (hi == TOP), pf, cut)
                kc += tl.load(wc_ptr + c) * pf.to(tl.int32)
            xs = tl.where(cidx[None, :] == c, pf[:, None] * to_unit - 1.0, xs)
            pix = tl.where(cidx[None, :] == c, pf.to(tl.int64)[:, None], pix)
    # -- known pixels override; write the pixel --------------------------------------
    wm = bm[:, None] & cmask[None, :]
    xo = x_ptr + (bidx[:, None] * C + cidx[None, :]) * HW + i * W + jj
    if HAS_KNOWN:
        kn = tl.load(known_ptr + pix_off, mask=bm, other=0) != 0
        pix = tl.where(kn[:, None], tl.load(xo, mask=wm, other=0), pix)
    tl.store(xo, pix, mask=wm)


@triton.jit(do_not_specialize=["j"])
def pixel_fused_kernel(x_ptr, tab_ptr, known_ptr, uni_ptr, params_ptr, pscr_ptr, win_ptr, wc_ptr, row_ptr, temp_ptr, j,
                       NB, B, H, W, L_IN, half_top, to_unit,
                       ulwin_ptr, row0_ptr, row_term_ptr, h2_ptr,
                       w_h_ptr, b_h_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wh_ptr, bh_ptr,
                       C: tl.constexpr, C_P: tl.constexpr, E: tl.constexpr, KH: tl.constexpr,
                       HID: tl.constexpr, HID_P: tl.constexpr, G: tl.constexpr, T0_B: tl.constexpr,
                       BK1: tl.constexpr, BK2: tl.constexpr, P: tl.constexpr, PB: tl.constexpr,
                       U: tl.constexpr, DIST: tl.constexpr, L: tl.constexpr, L_B: tl.constexpr,
                       TOP: tl.constexpr, HAS_COND: tl.constexpr, HAS_KNOWN: tl.constexpr,
                       RETURN_PARAMS: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK: tl.constexpr,
                       PREC: tl.constexpr):
    """The whole pixel for ``G`` images per program (the fused plan)."""
    bidx = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
    bm = bidx < B
    i = tl.load(row_ptr).to(tl.int64)
    temp = tl.load(temp_ptr)
    jj = tl.full([], 0, tl.int64) + j
    K2: tl.constexpr = 2 * HID
    ch = tl.arange(0, HID_P)
    cm = ch < HID
    n2 = tl.arange(0, 2 * HID_P)
    am = bm[:, None] & (n2 < K2)[None, :]
    ul = first_layer(x_ptr, tab_ptr, row0_ptr, w_h_ptr, b_h_ptr, bidx, bm, i, jj, H, W, L_IN,
                     C, E, KH, HID, HID_P, G, T0_B, PREC)
    plane = KH * W * K2
    here = bidx[:, None] * plane + ((i % KH) * W + jj) * K2 + n2[None, :]    # ring slot of (i, j)
    pix_off = (bidx * H + i) * W + jj
    for k in range(NB):
        kk = tl.full([], 0, tl.int64) + k
        win1 = ulwin_ptr + (kk * 2 + 0) * B * plane
        win2 = ulwin_ptr + (kk * 2 + 1) * B * plane
        a_ul = act2d(ul, G, HID_P)                    # the current tap
        tl.store(win1 + here, a_ul, mask=am)          # for this conv (read back in chunks) and later pixels
        tl.debug_barrier()                            # the CTA's stores visible to its loads
        c1 = conv_px(win1, w1_ptr + kk * (KH * KH * K2 * HID), bidx, bm, i, jj, W, 0,
                     HID, HID_P, HID, HID_P, KH, BK1, G, PREC)
        c1 += tl.load(b1_ptr + kk * HID + ch, mask=cm, other=0.0)[None, :]
        c1 += tl.load(row_term_ptr + ((kk * B + bidx[:, None]) * W + jj) * HID + ch[None, :],
                      mask=bm[:, None] & cm[None, :], other=0.0)
        c1 = tl.where(cm[None, :], c1, 0.0)
        a_c1 = act2d(c1, G, HID_P)
        tl.store(win2 + here, a_c1, mask=am)
        tl.debug_barrier()
        c2 = conv_px(win2, w2_ptr + kk * (KH * KH * K2 * K2), bidx, bm, i, jj, W, 0,
                     K2, 2 * HID_P, HID, HID_P, KH, BK2, G, PREC)
        c2 += tl.load(b2_ptr + kk * K2 + n2, mask=n2 < K2, other=0.0)[None, :]
        if HAS_COND:
            c2 += tl.load(h2_ptr + (kk * B * H * W + pix_off[:, None]) * K2 + n2[None, :], mask=am, other=0.0)
        ca, cb = tl.split(tl.reshape(c2, [G, HID_P, 2]))      # gate halves
        ul = ul + ca * tl.sigmoid(cb)
        ul = tl.where(cm[None, :], ul, 0.0)
    head_sample(ul, bidx, bm, i, jj, B, H, W, temp, half_top, to_unit,
                x_ptr, known_ptr, uni_ptr, params_ptr, pscr_ptr, wh_ptr, bh_ptr, win_ptr, wc_ptr,
                C, C_P, HID, HID_P, G, P, PB, U, DIST, L, L_B, TOP, HAS_KNOWN, RETURN_PARAMS,
                HAS_WINDOW, BLOCK, PREC)


@triton.jit(do_not_specialize=["j", "blk"])
def pixel_conv_kernel(x_ptr, tab_ptr, row_ptr, j, blk, B, H, W, L_IN,
                      ulwin_ptr, row0_ptr, row_term_ptr, h2_ptr, ulcur_ptr,
                      w_h_ptr, b_h_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                      STAGE: tl.constexpr, FIRST: tl.constexpr, C: tl.constexpr, E: tl.constexpr,
                      KH: tl.constexpr, HID: tl.constexpr, HID_P: tl.constexpr, G: tl.constexpr,
                      OT: tl.constexpr, T0_B: tl.constexpr, BK1: tl.constexpr, BK2: tl.constexpr, HAS_COND: tl.constexpr,
                      PREC: tl.constexpr):
    """One conv of block ``blk`` at one pixel, output channels ``OT * program_id(1) ..``
    (the split plan). ``STAGE=1``: ``c1`` (block 0 also computes the first layer);
    ``STAGE=2``: ``c2``, the gate and the residual into ``ul_cur``."""
    bidx = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
    bm = bidx < B
    o0 = tl.program_id(1) * OT
    i = tl.load(row_ptr).to(tl.int64)
    jj = tl.full([], 0, tl.int64) + j
    kk = tl.full([], 0, tl.int64) + blk
    K2: tl.constexpr = 2 * HID
    ch = tl.arange(0, HID_P)
    n2 = tl.arange(0, 2 * HID_P)
    to = o0 + tl.arange(0, OT)                        # this program's channels
    tm = to < HID
    t2 = 2 * o0 + tl.arange(0, 2 * OT)                # ... interleaved
    t2m = t2 < K2
    plane = KH * W * K2
    slot_off = ((i % KH) * W + jj) * K2
    win1 = ulwin_ptr + (kk * 2 + 0) * B * plane
    win2 = ulwin_ptr + (kk * 2 + 1) * B * plane
    if STAGE == 1:
        if FIRST:
            ul = first_layer(x_ptr, tab_ptr, row0_ptr, w_h_ptr, b_h_ptr, bidx, bm, i, jj, H, W, L_IN,
                             C, E, KH, HID, HID_P, G, T0_B, PREC)
            own = bm[:, None] & (ch >= o0)[None, :] & (ch < o0 + OT)[None, :] & (ch < HID)[None, :]
            tl.store(ulcur_ptr + bidx[:, None] * HID + ch[None, :], ul, mask=own)
        else:
            ul = tl.load(ulcur_ptr + bidx[:, None] * HID + ch[None, :],
                         mask=bm[:, None] & (ch < HID)[None, :], other=0.0)
        a_ul = act2d(ul, G, HID_P)
        # every program stores the whole current tap (the same values: each computed the
        # same ul) and reads it back from the ring after a CTA barrier, BK channels a
        # product like the cached taps: no [G, 2*HID] x [2*HID, OT] product in registers
        tl.store(win1 + bidx[:, None] * plane + slot_off + n2[None, :], a_ul,
                 mask=bm[:, None] & (n2 < K2)[None, :])
        tl.debug_barrier()
        c1 = conv_px(win1, w1_ptr + kk * (KH * KH * K2 * HID), bidx, bm, i, jj, W, o0,
                     HID, OT, HID, HID_P, KH, BK1, G, PREC)
        c1 += tl.load(b1_ptr + kk * HID + to, mask=tm, other=0.0)[None, :]
        c1 += tl.load(row_term_ptr + ((kk * B + bidx[:, None]) * W + jj) * HID + to[None, :],
                      mask=bm[:, None] & tm[None, :], other=0.0)
        c1 = tl.where(tm[None, :], c1, 0.0)
        tl.store(win2 + bidx[:, None] * plane + slot_off + t2[None, :], act2d(c1, G, OT),
                 mask=bm[:, None] & t2m[None, :])
    else:
        # the current tap act(c1) is in the ring already (stage 1's launch wrote it)
        c2 = conv_px(win2, w2_ptr + kk * (KH * KH * K2 * K2), bidx, bm, i, jj, W, 2 * o0,
                     K2, 2 * OT, HID, HID_P, KH, BK2, G, PREC)
        c2 += tl.load(b2_ptr + kk * K2 + t2, mask=t2m, other=0.0)[None, :]
        if HAS_COND:
            pix_off = (bidx * H + i) * W + jj
            c2 += tl.load(h2_ptr + (kk * B * H * W + pix_off[:, None]) * K2 + t2[None, :],
                          mask=bm[:, None] & t2m[None, :], other=0.0)
        ca, cb = tl.split(tl.reshape(c2, [G, OT, 2]))
        um = bm[:, None] & tm[None, :]
        addr = ulcur_ptr + bidx[:, None] * HID + to[None, :]
        ul = tl.load(addr, mask=um, other=0.0) + ca * tl.sigmoid(cb)
        tl.store(addr, ul, mask=um)


@triton.jit(do_not_specialize=["j"])
def pixel_head_kernel(x_ptr, tab_ptr, known_ptr, uni_ptr, params_ptr, pscr_ptr, win_ptr, wc_ptr, row_ptr, temp_ptr, j,
                      B, H, W, L_IN, half_top, to_unit, row0_ptr, ulcur_ptr, w_h_ptr, b_h_ptr, wh_ptr, bh_ptr,
                      FIRST: tl.constexpr, C: tl.constexpr, C_P: tl.constexpr, E: tl.constexpr,
                      KH: tl.constexpr, HID: tl.constexpr, HID_P: tl.constexpr, G: tl.constexpr,
                      T0_B: tl.constexpr,
                      P: tl.constexpr, PB: tl.constexpr, U: tl.constexpr, DIST: tl.constexpr,
                      L: tl.constexpr, L_B: tl.constexpr, TOP: tl.constexpr, HAS_KNOWN: tl.constexpr,
                      RETURN_PARAMS: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK: tl.constexpr,
                      PREC: tl.constexpr):
    """Head, sampling and write-back (the split plan's last launch of a pixel); with
    ``FIRST`` (no blocks) it computes the first layer itself."""
    bidx = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
    bm = bidx < B
    i = tl.load(row_ptr).to(tl.int64)
    temp = tl.load(temp_ptr)
    jj = tl.full([], 0, tl.int64) + j
    ch = tl.arange(0, HID_P)
    if FIRST:
        ul = first_layer(x_ptr, tab_ptr, row0_ptr, w_h_ptr, b_h_ptr, bidx, bm, i, jj, H, W, L_IN,
                         C, E, KH, HID, HID_P, G, T0_B, PREC)
    else:
        ul = tl.load(ulcur_ptr + bidx[:, None] * HID + ch[None, :],
                     mask=bm[:, None] & (ch < HID)[None, :], other=0.0)
    head_sample(ul, bidx, bm, i, jj, B, H, W, temp, half_top, to_unit,
                x_ptr, known_ptr, uni_ptr, params_ptr, pscr_ptr, wh_ptr, bh_ptr, win_ptr, wc_ptr,
                C, C_P, HID, HID_P, G, P, PB, U, DIST, L, L_B, TOP, HAS_KNOWN, RETURN_PARAMS,
                HAS_WINDOW, BLOCK, PREC)


# -- launcher -------------------------------------------------------------------------

def interpreted() -> bool:
    """Whether these kernels run under Triton's CPU interpreter."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(pixel_fused_kernel, InterpretedFunction)


def chunk(total: int, gpu_chunk: int) -> int:
    """A loop's chunk over ``total`` items (powers of two): ``gpu_chunk``, sized for the
    registers of a GPU, but under the interpreter at most 16 chunks: there every op
    costs its Python overhead whatever its size (65536 levels in chunks of 256 take
    minutes a pixel). Same code, only the constexpr differs."""
    return max(gpu_chunk, total // 16) if interpreted() else gpu_chunk


#: The distribution kinds ``head_sample`` samples (``Distribution.engine_spec[0]``): a new
#: kind adds its branch there and its number here; every launch checks it (``sampling_chunks``).
DIST_KINDS = (0, 1)


def k_chunk(group: int, out: int, k: int) -> int:
    """The ``K`` chunk of a product ``[G, K] x [K, out]`` (``_jitmath.mm``), a power of two:
    a ``tl.dot`` (``group`` and ``out`` >= 16) takes a weight tile ``[BK, out]`` of at most
    4096 floats and ``BK >= 16``; the summed products ``[G, BK, out]``, at most 4096
    floats (registers), any ``BK >= 1``. Never more than ``k`` (rounded up)."""
    k = triton.next_power_of_2(k)
    if group >= 16 and out >= 16:
        return max(16, min(k, 4096 // out))
    return max(1, min(k, 4096 // (group * out)))


def sampling_chunks(dist_kind: int, L: int, c_p: int, p: int, hid_p: int, group: int = 16) -> tuple:
    """``(L_B, PB)`` of ``head_sample``: the levels per chunk of the categorical sampler
    (``L`` levels; tiles ``[G, C_P, L_B]``, at most 4096 values a group of 16; the
    mixture reads its ``L = nr_mix`` components at once) and the parameters per chunk
    of the head (``[G, HID_P] x [HID_P, PB]``: a weight tile of at most 4096 floats for a
    dot, products ``[G, HID_P, PB]`` of at most 4096 below 16 images)."""
    if dist_kind not in DIST_KINDS:
        raise ValueError(f"dist: the Triton kernels sample the engine_spec kinds {DIST_KINDS} "
                         f"(categorical, logistic mixture), got {dist_kind}; use backend='torch'")
    p2 = triton.next_power_of_2
    l_b = chunk(p2(L), min(p2(L), max(16, 256 // c_p))) if dist_kind == 0 else p2(L)
    pb = max(16, min(p2(p), 4096 // hid_p)) if group >= 16 else max(1, min(p2(p), 4096 // (group * hid_p)))
    return l_b, chunk(p2(p), pb)


def _meta(buf) -> dict:
    """Block sizes: powers of two, each product's chunk by ``k_chunk``."""
    p2 = triton.next_power_of_2
    pl = buf.launch_plan
    hid_p, g, ot = pl.hid_p, pl.group, pl.pixel_tile
    c_p = p2(buf.C)
    l_b, pb = sampling_chunks(buf.DIST, buf.L, c_p, buf.P, hid_p, g)
    return dict(C_P=c_p, HID_P=hid_p, G=g, T0_B=k_chunk(g, hid_p, buf.KH * buf.CIN),
                BK1=k_chunk(g, ot, 2 * hid_p), BK2=k_chunk(g, 2 * ot, 2 * hid_p), PB=pb, L_B=l_b, OT=ot,
                PREC=pl.precision)


def window_meta(window) -> dict:
    """The constexprs of ``head_sample`` for a ``WindowBuffer`` (``cached_triton``) or None."""
    return dict(HAS_WINDOW=window is not None, BLOCK=window.block if window is not None else 1)


def window_args(window, dummy) -> tuple:
    """The window's two pointer arguments: the packed maps and ``(coef, div)``."""
    return (window.packed, window.consts) if window is not None else (dummy, dummy)


def launch_pixel_step(buf, j: int):
    """Launch the pixel op at column ``j`` of the row ``buf.row`` points at (one launch
    in the fused plan, ``2 * blocks + 1`` in the split plan)."""
    d = buf.dummy
    z = _meta(buf)
    pl = buf.launch_plan
    groups = triton.cdiv(buf.B, pl.group)
    common = dict(C=buf.C, E=buf.E, KH=buf.KH, HID=buf.HID, HID_P=z["HID_P"], G=z["G"], T0_B=z["T0_B"],
                  PREC=z["PREC"])
    samp = dict(C_P=z["C_P"], P=buf.P, PB=z["PB"], U=buf.U, DIST=buf.DIST, L=buf.L, L_B=z["L_B"],
                TOP=buf.top, HAS_KNOWN=buf.known is not None,
                RETURN_PARAMS=buf.params is not None, **window_meta(buf.window))
    win, wc = window_args(buf.window, d)
    known = buf.known if buf.known is not None else d
    params = buf.params if buf.params is not None else d
    h2 = buf.ul_h2 if buf.has_cond else d
    opts = dict(num_warps=pl.pixel_warps, enable_fp_fusion=buf.fp_fusion)
    if pl.fused:
        pixel_fused_kernel[(groups,)](
            buf.x, buf.table, known, buf.uniforms, params, buf.pscr, win, wc, buf.row, buf.temp, j,
            buf.NB, buf.B, buf.H, buf.W, buf.L_IN, buf.top / 2.0, 2.0 / buf.top,
            buf.ul_win, buf.ul_row0, buf.ul_row_term, h2,
            buf.w_h0, buf.b_h0, buf.w_ul1, buf.b_ul1, buf.w_ul2, buf.b_ul2, buf.w_head, buf.b_head,
            BK1=z["BK1"], BK2=z["BK2"], HAS_COND=buf.has_cond, **common, **samp, **opts)
        return
    tiles = triton.cdiv(buf.HID, z["OT"])
    for k in range(buf.NB):
        for stage in (1, 2):
            pixel_conv_kernel[(groups, tiles)](
                buf.x, buf.table, buf.row, j, k, buf.B, buf.H, buf.W, buf.L_IN,
                buf.ul_win, buf.ul_row0, buf.ul_row_term, h2, buf.ul_cur,
                buf.w_h0, buf.b_h0, buf.w_ul1, buf.b_ul1, buf.w_ul2, buf.b_ul2,
                STAGE=stage, FIRST=(k == 0 and stage == 1), OT=z["OT"], BK1=z["BK1"], BK2=z["BK2"],
                HAS_COND=buf.has_cond, **common, **opts)
    pixel_head_kernel[(groups,)](
        buf.x, buf.table, known, buf.uniforms, params, buf.pscr, win, wc, buf.row, buf.temp, j,
        buf.B, buf.H, buf.W, buf.L_IN, buf.top / 2.0, 2.0 / buf.top, buf.ul_row0, buf.ul_cur,
        buf.w_h0, buf.b_h0, buf.w_head, buf.b_head, FIRST=buf.NB == 0, **common, **samp, **opts)


# -- PyTorch reference ----------------------------------------------------------------

@torch.no_grad()
def pixel_step_reference(buf, j: int):
    """The pixel op in PyTorch on the same buffers, with the model's own modules and
    ``model.dist.sample_flat``; returns the parameters ``(B, P)``."""
    m, i, kh, hid = buf.model, int(buf.row[0]), buf.KH, buf.HID
    slot = i % kh
    h = m.input(buf.x)                                          # the model's input
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
        c1 = conv(blk.conv1, buf.ul_win[k, 0], a_ul) + buf.ul_row_term[k, :, j]
        a_c1 = act_interleaved(c1)
        c2 = conv(blk.conv2, buf.ul_win[k, 1], a_c1)
        if buf.has_cond:
            c2 = c2 + deinterleave(buf.ul_h2[k, :, i, j])
        buf.ul_win[k, 0, :, slot, j] = a_ul
        buf.ul_win[k, 1, :, slot, j] = a_c1
        ul = ul + c2[:, :hid] * torch.sigmoid(c2[:, hid:])
    if buf.NB > 0:
        buf.ul_cur.copy_(ul)
    params = m.head(F.elu(ul)[:, :, None, None])[:, :, 0, 0]
    if buf.params is not None:
        buf.params[:, :, i, j] = params
    bounds = None if buf.window is None else buf.window.window().bounds_at(buf.x, i, j)
    pix = buf.dist.sample_flat(params, buf.uniforms[:, i, j], buf.temperature, bounds)
    if buf.known is not None:
        pix = torch.where(buf.known[:, i, j, None] != 0, buf.x[:, :, i, j], pix)
    buf.x[:, :, i, j] = pix
    return params
