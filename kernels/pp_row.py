"""The row ops of the PixelCNN++ Triton engine: every ``u``-stream conv of one row.

Buffers (see ``pixelaux.engines.triton_buffers``): a *value* of one scale is a
float32 channels-last tensor ``(B, NS, W_s, K)`` holding its last ``NS`` rows, row
``r`` in slot ``r % NS``. A conv reads its input raw and applies ``concat_elu`` on
load when ``ACT`` (the pos and neg halves are two dots against the two halves of the
weight), so one buffer serves as conv window, residual input, skip input and
stride-2 input. Reads of rows ``< 0`` and of columns outside ``[0, W_s)`` are masked
(the convs' zero padding): the buffers never need clearing.

Weights: ``(KH, KW, NH, K, N)`` contiguous, ``NH = 2`` (pos, neg) for a conv over
``concat_elu``, 1 for a conv over raw values; the image convs of the first layer as
im2col matrices ``(T, N)`` with ``t = (tr * KW + tc) * CIN + ci``, ``CIN = C*E + 1``:
their input is gathered from the integer image through the input table ``(C, 2**bits,
E)`` (``PixelInput.table``, ``_jitmath.model_input``), in chunks of taps.

Kernels (grid ``(image groups, output-channel tiles, column tiles)``; a program owns
``GR`` images times ``BW`` columns of the row, the ``M = GR * BW`` rows of its dots):

* ``row_init_kernel``: scale 0, the first layer from the model's input: ``u`` of row
  ``i`` (the down-shifted ``(2, 3)`` conv of image rows ``i-2, i-1``) and ``ul_row0``
  (the down-shifted ``(1, 3)`` conv of row ``i-1``), both zero at row 0;
* ``row_conv_kernel``: one conv of a row at scale ``s`` (row ``p = i >> s``): a
  ``(KH, KW)`` conv with stride 1 or 2 over a value, plus optionally a 1x1 projection
  of ``concat_elu`` of a skip value, a conditioning term ``(B, H_s, W_s, N)``, and with
  ``GATE`` the gated residual ``res + a * sigmoid(b)`` (``a``/``b`` the two halves of a
  ``2N``-channel conv). Covers ``conv1``/``conv2`` of every ``u`` block, the per-row
  1x1 terms of the ``ul`` blocks and the stride-2 ``downsize_u``;
* ``row_deconv_kernel``: the stride-2 transposed ``(2, 3)`` conv of row ``p`` of scale
  ``s`` into rows ``2p, 2p+1`` of scale ``s-1``;
* ``advance_row_kernel``: the device row counter, ``row += 1``.

Every launcher has a PyTorch reference with the same signature (``*_reference``)
that performs the same buffer update.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._jitmath import mm, model_input

ROW_M = 16          # rows of a row op's dots, GR images x BW columns: tl.dot's least (32 spill: _tiles)


@triton.jit
def concat_elu_halves(a):
    """``(elu(a), elu(-a))`` (``F.elu``, ``exp(t) - 1`` below zero as the single-resolution
    kernels) with one ``exp``: ``exp(-|a|)`` is ``exp(a)`` for ``a < 0`` and ``exp(-a)`` for ``a > 0``."""
    ex = tl.exp(-tl.abs(a)) - 1.0
    pos = tl.where(a > 0, a, ex)
    neg = tl.where(a > 0, ex, -a)
    return pos, neg


@triton.jit
def conv_acc(acc, accb, in_ptr, w_ptr, bidx, cols, pm, p, NS, WI, n0, n_hi, WN, B_OFF,
             K: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr,
             PADL: tl.constexpr, ACT: tl.constexpr, SKIP_LAST: tl.constexpr, TWO: tl.constexpr,
             BK: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """``acc [M, BN] +=`` the ``(KH, KW)`` conv at output row ``p``, columns ``cols [M]`` of
    images ``bidx [M]`` (rows masked by ``pm``), output channels ``n0 .. n0+BN`` (masked
    ``< n_hi``; weight rows have ``WN`` columns); with ``TWO`` also ``accb +=`` the same for
    the channels ``B_OFF`` further on (the other half of a gate), from the same loads.
    Input value ``(B, NS, WI, K)``: taps at rows ``STRIDE*p - (KH-1) + tr``, columns
    ``STRIDE*cols - PADL + tc``; ``concat_elu`` on load with ``ACT`` (weight ``(KH, KW, 2,
    K, WN)``, else ``(KH, KW, 1, K, WN)``). ``SKIP_LAST`` leaves out the last tap (the
    caller holds it in registers)."""
    nn = n0 + tl.arange(0, BN)
    nm = nn < n_hi
    kb = tl.arange(0, BK)
    woff = kb[:, None] * WN + nn[None, :]
    NH: tl.constexpr = 2 if ACT else 1
    for tr in tl.static_range(KH):
        r = STRIDE * p - (KH - 1) + tr
        rowoff = (bidx * NS + (r + NS) % NS) * WI
        for tc in tl.static_range(KW):
            if (not SKIP_LAST) or (tr * KW + tc != KH * KW - 1):
                ci = STRIDE * cols - PADL + tc
                # (r >= 0 as a vector: the interpreter rejects scalar & vector masks)
                ok = pm & (ci >= 0) & (ci < WI) & ((r + 0 * ci) >= 0)
                aoff = ((rowoff + ci) * K)[:, None] + kb[None, :]
                tap = tr * KW + tc
                for k0 in range(0, K, BK):
                    km = (k0 + kb) < K
                    am = ok[:, None] & km[None, :]
                    wm = km[:, None] & nm[None, :]
                    a = tl.load(in_ptr + aoff + k0, mask=am, other=0.0)
                    wt = w_ptr + (tap * NH * K + k0) * WN + woff
                    if ACT:
                        pos, neg = concat_elu_halves(a)
                        acc += mm(pos, tl.load(wt, mask=wm, other=0.0), PREC)
                        acc += mm(neg, tl.load(wt + K * WN, mask=wm, other=0.0), PREC)
                        if TWO:
                            accb += mm(pos, tl.load(wt + B_OFF, mask=wm, other=0.0), PREC)
                            accb += mm(neg, tl.load(wt + K * WN + B_OFF, mask=wm, other=0.0), PREC)
                    else:
                        acc += mm(a, tl.load(wt, mask=wm, other=0.0), PREC)
                        if TWO:
                            accb += mm(a, tl.load(wt + B_OFF, mask=wm, other=0.0), PREC)
    return acc, accb


@triton.jit
def image_conv(x_ptr, tab_ptr, w_ptr, bidx, cols, pm, r0, H, W, L_IN, nn, nm,
               N: tl.constexpr, C: tl.constexpr, E: tl.constexpr, NR: tl.constexpr, NC: tl.constexpr,
               PADL: tl.constexpr, M: tl.constexpr, BN: tl.constexpr, TB: tl.constexpr,
               PREC: tl.constexpr):
    """The ``(NR, NC)`` conv of the model's input (zero outside the image) over rows ``r0 ..
    r0+NR-1``, columns ``cols - PADL .. cols - PADL + NC - 1`` of images ``bidx`` (``[M]``,
    masked by ``pm``), output channels ``nn`` (``[BN]``, masked by ``nm``), no bias: im2col
    over ``t = (tr * NC + tc) * CIN + ci`` (weight ``(T, N)``) in chunks of ``TB`` taps
    (token inputs make ``CIN = C*E + 1`` wide). Returns ``[M, BN]``."""
    CIN: tl.constexpr = C * E + 1
    T: tl.constexpr = NR * NC * CIN
    tb = tl.arange(0, TB)
    acc = tl.zeros([M, BN], dtype=tl.float32)
    for t0 in range(0, T, TB):
        tt = t0 + tb
        rr = r0 + tt // (NC * CIN)
        cc = cols[:, None] - PADL + ((tt // CIN) % NC)[None, :]
        ok = pm[:, None] & ((tt < T) & (rr >= 0) & (rr < H))[None, :] & (cc >= 0) & (cc < W)
        a = model_input(x_ptr, tab_ptr, (bidx[:, None] * C * H + rr[None, :]) * W + cc, (tt % CIN)[None, :],
                        ok, H * W, L_IN, C, E)
        wt = tl.load(w_ptr + tt[:, None] * N + nn[None, :], mask=(tt < T)[:, None] & nm[None, :], other=0.0)
        acc += mm(a, wt, PREC)
    return acc


@triton.jit
def row_init_kernel(x_ptr, tab_ptr, row_ptr, B, H, W, L_IN, u_ptr, row0_ptr, wu_ptr, bu_ptr, wv_ptr, bv_ptr,
                    C: tl.constexpr, E: tl.constexpr, N: tl.constexpr, GR: tl.constexpr, BW: tl.constexpr,
                    BN: tl.constexpr, TU: tl.constexpr, TV: tl.constexpr, PREC: tl.constexpr):
    m = tl.arange(0, GR * BW)
    bidx = tl.program_id(0).to(tl.int64) * GR + m // BW
    cols = tl.program_id(2) * BW + m % BW
    pm = (bidx < B) & (cols < W)
    nn = tl.program_id(1) * BN + tl.arange(0, BN)
    nm = nn < N
    i = tl.load(row_ptr).to(tl.int64)
    u = image_conv(x_ptr, tab_ptr, wu_ptr, bidx, cols, pm, i - 2, H, W, L_IN, nn, nm,
                   N, C, E, 2, 3, 1, GR * BW, BN, TU, PREC) + tl.load(bu_ptr + nn, mask=nm, other=0.0)[None, :]
    v = image_conv(x_ptr, tab_ptr, wv_ptr, bidx, cols, pm, i - 1, H, W, L_IN, nn, nm,
                   N, C, E, 1, 3, 1, GR * BW, BN, TV, PREC) + tl.load(bv_ptr + nn, mask=nm, other=0.0)[None, :]
    u = tl.where(i > 0, u, 0.0)           # down_shift: row 0 is zero (bias included)
    v = tl.where(i > 0, v, 0.0)
    sm = pm[:, None] & nm[None, :]
    tl.store(u_ptr + ((bidx[:, None] * 2 + i % 2) * W + cols[:, None]) * N + nn[None, :], u, mask=sm)
    tl.store(row0_ptr + (bidx[:, None] * W + cols[:, None]) * N + nn[None, :], v, mask=sm)


@triton.jit
def row_conv_kernel(row_ptr, B, in_ptr, NS_IN, W_IN, w_ptr, b_ptr, skip_ptr, NS_SKIP, ws_ptr,
                    cond_ptr, H_S, res_ptr, NS_RES, out_ptr, NS_OUT, W_OUT,
                    SH: tl.constexpr, K: tl.constexpr, N: tl.constexpr, KH: tl.constexpr,
                    KW: tl.constexpr, STRIDE: tl.constexpr, PADL: tl.constexpr, ACT: tl.constexpr,
                    HAS_SKIP: tl.constexpr, HAS_COND: tl.constexpr, GATE: tl.constexpr,
                    GR: tl.constexpr, BW: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    m = tl.arange(0, GR * BW)
    bidx = tl.program_id(0).to(tl.int64) * GR + m // BW
    cols = tl.program_id(2) * BW + m % BW
    pm = (bidx < B) & (cols < W_OUT)
    n0 = tl.program_id(1) * BN
    nn = n0 + tl.arange(0, BN)
    nm = nn < N
    i = tl.load(row_ptr).to(tl.int64)
    p = i >> SH
    WN: tl.constexpr = 2 * N if GATE else N
    acc = tl.zeros([GR * BW, BN], dtype=tl.float32) + tl.load(b_ptr + nn, mask=nm, other=0.0)[None, :]
    accb = tl.zeros([GR * BW, BN], dtype=tl.float32)
    if GATE:
        accb += tl.load(b_ptr + N + nn, mask=nm, other=0.0)[None, :]
    acc, accb = conv_acc(acc, accb, in_ptr, w_ptr, bidx, cols, pm, p, NS_IN, W_IN, n0, N, WN, N,
                         K, KH, KW, STRIDE, PADL, ACT, False, GATE, BK, BN, PREC)
    if HAS_SKIP:          # 1x1 projection of concat_elu(skip) at the output positions
        acc, accb = conv_acc(acc, accb, skip_ptr, ws_ptr, bidx, cols, pm, p, NS_SKIP, W_OUT, n0, N, N, 0,
                             K, 1, 1, 1, 0, True, False, False, BK, BN, PREC)
    sm = pm[:, None] & nm[None, :]
    cpos = ((bidx[:, None] * H_S + p) * W_OUT + cols[:, None]) * WN + nn[None, :]
    if HAS_COND:
        acc += tl.load(cond_ptr + cpos, mask=sm, other=0.0)
        if GATE:
            accb += tl.load(cond_ptr + cpos + N, mask=sm, other=0.0)
    if GATE:
        res = tl.load(res_ptr + ((bidx[:, None] * NS_RES + p % NS_RES) * W_OUT + cols[:, None]) * N + nn[None, :],
                      mask=sm, other=0.0)
        acc = res + acc * tl.sigmoid(accb)
    tl.store(out_ptr + ((bidx[:, None] * NS_OUT + p % NS_OUT) * W_OUT + cols[:, None]) * N + nn[None, :],
             acc, mask=sm)


@triton.jit
def row_deconv_kernel(row_ptr, B, in_ptr, NS_IN, W_IN, w_ptr, b_ptr, out_ptr, NS_OUT, W_OUT,
                      SH: tl.constexpr, K: tl.constexpr, N: tl.constexpr, GR: tl.constexpr,
                      BW: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """``out[2p + a, c] = b + sum_t W[a, t]^T in[p, (c + 1 - t) / 2]`` over the ``t`` in
    ``0..2`` with ``c + 1 - t`` even and the column inside (``DownShiftedConvTranspose2d``);
    weight ``(2, 3, K, N)``."""
    m = tl.arange(0, GR * BW)
    bidx = tl.program_id(0).to(tl.int64) * GR + m // BW
    cols = tl.program_id(2) * BW + m % BW
    pm = (bidx < B) & (cols < W_OUT)
    nn = tl.program_id(1) * BN + tl.arange(0, BN)
    nm = nn < N
    kb = tl.arange(0, BK)
    i = tl.load(row_ptr).to(tl.int64)
    p = i >> SH
    bias = tl.load(b_ptr + nn, mask=nm, other=0.0)[None, :]
    acc0 = tl.zeros([GR * BW, BN], dtype=tl.float32) + bias
    acc1 = tl.zeros([GR * BW, BN], dtype=tl.float32) + bias
    for t in tl.static_range(3):
        d = cols + 1 - t
        qi = d // 2
        ok = pm & (d >= 0) & (d % 2 == 0) & (qi < W_IN)
        base = in_ptr + ((bidx * NS_IN + p % NS_IN) * W_IN + qi) * K
        for k0 in range(0, K, BK):
            km = (k0 + kb) < K
            a = tl.load(base[:, None] + k0 + kb[None, :], mask=ok[:, None] & km[None, :], other=0.0)
            wm = km[:, None] & nm[None, :]
            w0 = tl.load(w_ptr + ((0 * 3 + t) * K + k0 + kb[:, None]) * N + nn[None, :], mask=wm, other=0.0)
            w1 = tl.load(w_ptr + ((1 * 3 + t) * K + k0 + kb[:, None]) * N + nn[None, :], mask=wm, other=0.0)
            acc0 += mm(a, w0, PREC)
            acc1 += mm(a, w1, PREC)
    sm = pm[:, None] & nm[None, :]
    r0 = 2 * p
    tl.store(out_ptr + ((bidx[:, None] * NS_OUT + r0 % NS_OUT) * W_OUT + cols[:, None]) * N + nn[None, :],
             acc0, mask=sm)
    tl.store(out_ptr + ((bidx[:, None] * NS_OUT + (r0 + 1) % NS_OUT) * W_OUT + cols[:, None]) * N + nn[None, :],
             acc1, mask=sm)


@triton.jit
def advance_row_kernel(row_ptr):
    tl.store(row_ptr, tl.load(row_ptr) + 1)


# -- launchers ------------------------------------------------------------------------

def _p2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def _tiles(b: int, width: int, n: int, max_bn: int = 64):
    """``(GR, BW, BN)`` and the grid of a row op over ``b`` images, ``width`` output
    columns and ``n`` output channels (tiles of at most ``max_bn``): ``M = GR * BW`` of
    ``ROW_M`` rows (32 rows spill bench-pp32's row convs on sm_90 under Triton 3.6 and 3.9,
    ``tf32x3`` most: ``compile_check``)."""
    bw = min(_p2(width), ROW_M)
    gr = max(1, ROW_M // bw)
    bn = max(16, min(_p2(n), max_bn))
    grid = (triton.cdiv(b, gr), triton.cdiv(n, bn), triton.cdiv(width, bw))
    return gr, bw, bn, grid


def _bk(k: int) -> int:
    """Input channels a chunk of a row conv (``k`` wide): 16, ``tl.dot``'s least (32
    spills bench-pp32's row convs on sm_90)."""
    return 16


def image_chunk(taps: int, bn: int) -> int:
    """Taps per chunk of an image conv: at most 32, and a weight tile ``[TB, BN]`` of at
    most 1024 floats (with 32 at ``BN = 64`` the row op's first layer spills on sm_90)."""
    return max(16, min(_p2(taps), 32, 1024 // bn))


def launch_row_init(x, row, u_out, row0, wu, bu, wv, bv, table, fp_fusion=False, precision="ieee"):
    """Scale 0, first layer of row ``row``: ``u_out`` ``(B, 2, W, N)`` slot ``i % 2`` and
    ``row0`` ``(B, 1, W, N)``; ``wu`` ``(6*CIN, N)``, ``wv`` ``(3*CIN, N)``; ``table``
    ``(C, 2**bits, E)`` the input encoding (``CIN = C*E + 1``)."""
    b, c, h, w = x.shape
    n = u_out.shape[-1]
    cin = c * table.shape[2] + 1
    gr, bw, bn, grid = _tiles(b, w, n)
    row_init_kernel[grid](x, table, row, b, h, w, table.shape[1], u_out, row0, wu, bu, wv, bv,
                          C=c, E=table.shape[2], N=n, GR=gr, BW=bw, BN=bn, TU=image_chunk(6 * cin, bn),
                          TV=image_chunk(3 * cin, bn), PREC=precision, enable_fp_fusion=fp_fusion)


def launch_row_conv(row, inp, w, b, out, shift, stride=1, padl=1, act=True, skip=None, ws=None,
                    cond=None, res=None, fp_fusion=False, precision="ieee"):
    """One conv of row ``p = row >> shift`` into ``out`` ``(B, NS_OUT, W_OUT, N)`` slot
    ``p % NS_OUT``. ``inp`` ``(B, NS_IN, W_IN, K)``; ``w`` ``(KH, KW, NH, K, WN)`` with
    ``WN = 2N`` when ``res`` is given (the gated residual ``res + a * sigmoid(b)``);
    ``skip`` ``(B, NS, W_OUT, K)`` with ``ws`` ``(1, 1, 2, K, N)``: plus the 1x1 projection
    of ``concat_elu(skip)``; ``cond`` ``(B, H_s, W_OUT, WN)``: plus its row ``p``."""
    bsz, ns_in, w_in, k = inp.shape
    _, ns_out, w_out, n = out.shape
    kh, kw = w.shape[0], w.shape[1]
    gr, bw, bn, grid = _tiles(bsz, w_out, n, 32 if act else 64)   # (register budget: no spills at hidden 80-160)
    d = out
    row_conv_kernel[grid](
        row, bsz, inp, ns_in, w_in, w, b,
        skip if skip is not None else d, skip.shape[1] if skip is not None else 1, ws if ws is not None else d,
        cond if cond is not None else d, cond.shape[1] if cond is not None else 1,
        res if res is not None else d, res.shape[1] if res is not None else 1,
        out, ns_out, w_out,
        SH=shift, K=k, N=n, KH=kh, KW=kw, STRIDE=stride, PADL=padl, ACT=act,
        HAS_SKIP=skip is not None, HAS_COND=cond is not None, GATE=res is not None,
        GR=gr, BW=bw, BK=_bk(k), BN=bn, PREC=precision, enable_fp_fusion=fp_fusion)


def launch_row_deconv(row, inp, w, b, out, shift, fp_fusion=False, precision="ieee"):
    """Transposed conv of row ``p = row >> shift`` of ``inp`` ``(B, NS_IN, W_s, K)`` into rows
    ``2p, 2p+1`` of ``out`` ``(B, NS_OUT, 2 W_s, N)``; ``w`` ``(2, 3, K, N)``."""
    bsz, ns_in, w_in, k = inp.shape
    _, ns_out, w_out, n = out.shape
    gr, bw, bn, grid = _tiles(bsz, w_out, n)
    row_deconv_kernel[grid](row, bsz, inp, ns_in, w_in, w, b, out, ns_out, w_out,
                            SH=shift, K=k, N=n, GR=gr, BW=bw, BK=_bk(k), BN=bn, PREC=precision,
                            enable_fp_fusion=fp_fusion)


def launch_advance_row(row):
    advance_row_kernel[(1,)](row)


# -- PyTorch references (same signatures, same buffer updates) ------------------------

def _act_dot(a, w, act):
    """``a`` ``(..., K)`` times a tap ``(NH, K, N)``: ``elu(a) @ w[0] + elu(-a) @ w[1]`` or ``a @ w[0]``."""
    if act:
        return F.elu(a) @ w[0] + F.elu(-a) @ w[1]
    return a @ w[0]


def _row_taps(t, r, cols):
    """Row ``r`` of value ``t`` ``(B, NS, WI, K)`` at columns ``cols`` (zero outside) ``(B, len, K)``."""
    b, ns, wi, k = t.shape
    ok = (cols >= 0) & (cols < wi) & (r >= 0)
    out = t[:, r % ns][:, cols.clamp(0, wi - 1)]
    return out * ok[None, :, None].to(out.dtype)


def _image(x, table):
    """The model's input ``(B, C*E + 1, H, W)`` from the lookup table ``(C, K, E)``, as
    ``PixelInput.forward`` computes it (channel ``c*E + e``, ones last)."""
    b, c, h, w = x.shape
    v = table[torch.arange(c, device=x.device).view(1, c, 1, 1), x]        # (B, C, H, W, E)
    v = v.permute(0, 1, 4, 2, 3).reshape(b, -1, h, w)
    return torch.cat([v, torch.ones_like(v[:, :1])], dim=1)


@torch.no_grad()
def row_init_reference(x, row, u_out, row0, wu, bu, wv, bv, table, fp_fusion=False, precision="ieee"):
    i = int(row[0])
    h = F.pad(_image(x, table), (1, 1, 2, 0))                       # rows i-2.. at index i
    b, cin = h.shape[:2]
    w = x.shape[3]
    n = u_out.shape[-1]
    cu = F.unfold(h[:, :, i:i + 2], (2, 3))                         # (B, CIN*6, W), order (ci, tr, tc)
    cu = cu.reshape(b, cin, 6, w).transpose(1, 2).reshape(b, 6 * cin, w)
    cv = F.unfold(h[:, :, i + 1:i + 2], (1, 3)).reshape(b, cin, 3, w).transpose(1, 2).reshape(b, 3 * cin, w)
    u = cu.transpose(1, 2) @ wu + bu
    v = cv.transpose(1, 2) @ wv + bv
    if i == 0:
        u, v = torch.zeros_like(u), torch.zeros_like(v)
    u_out[:, i % 2] = u
    row0[:, 0] = v[..., :n]


@torch.no_grad()
def row_conv_reference(row, inp, w, b, out, shift, stride=1, padl=1, act=True, skip=None, ws=None,
                       cond=None, res=None, fp_fusion=False, precision="ieee"):
    p = int(row[0]) >> shift
    _, ns_out, w_out, n = out.shape
    kh, kw = w.shape[0], w.shape[1]
    c = torch.arange(w_out, device=out.device)
    acc = 0.0
    for tr in range(kh):
        for tc in range(kw):
            acc = acc + _act_dot(_row_taps(inp, stride * p - (kh - 1) + tr, stride * c - padl + tc), w[tr, tc], act)
    acc = acc + b
    if skip is not None:
        acc[..., :n] = acc[..., :n] + _act_dot(skip[:, p % skip.shape[1]], ws[0, 0], True)
    if cond is not None:
        acc = acc + cond[:, p]
    if res is not None:
        acc = res[:, p % res.shape[1]] + acc[..., :n] * torch.sigmoid(acc[..., n:])
    out[:, p % ns_out] = acc


@torch.no_grad()
def row_deconv_reference(row, inp, w, b, out, shift, fp_fusion=False, precision="ieee"):
    p = int(row[0]) >> shift
    x = inp[:, p % inp.shape[1]]                                   # (B, W_s, K)
    w_in = x.shape[1]
    ns_out, w_out = out.shape[1], out.shape[2]
    for a in range(2):
        acc = b.expand(x.shape[0], w_out, -1).clone()
        for t in range(3):
            d = torch.arange(w_out, device=x.device) + 1 - t
            ok = (d >= 0) & (d % 2 == 0) & (d // 2 < w_in)
            tap = x[:, (d // 2).clamp(0, w_in - 1)] * ok[None, :, None].to(x.dtype)
            acc = acc + tap @ w[a, t]
        out[:, (2 * p + a) % ns_out] = acc


def advance_row_reference(row):
    row += 1
