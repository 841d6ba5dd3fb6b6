"""The pixel ops of the PixelCNN++ Triton engine: the ``ul`` stream at one position.

Buffers and weight layouts as in ``kernels/pp_row.py`` (values ``(B, NS, W_s, K)``,
row ``r`` in slot ``r % NS``, ``concat_elu`` applied on load). Every pixel kernel has
grid ``(cdiv(B, G),)``: a program owns ``G`` images (``G`` a power of two, the launch
plan's ``group``: ``layout.choose_launch_plan`` by batch size), the ``M = G`` rows of every
product (``_jitmath.mm``: ``tl.dot`` in fp32, ``input_precision="ieee"`` or the opt-in
``"tf32x3"``, from 16 images; a matrix-vector product per image below), so each weight is
read once per group; a batch that is not a multiple of ``G`` masks the rows of its last
group. The position is ``(p, q) = (row >> s, q)``: the row
from the device counter, the column an argument (not specialised on).

* ``pixel_init_kernel``: scale 0, the first ``ul`` layer at ``(i, j)``: ``ul_row0[j]``
  (from the row op) plus the right-shifted ``(2, 1)`` conv of image rows ``i-1, i`` at
  column ``j-1`` (zero at ``j = 0``);
* ``pixel_down_kernel``: the stride-2 ``(2, 2)`` conv ``downsize_ul`` at ``(p, q)`` of
  scale ``s`` over the 2x2 window of the last up-pass ``ul`` of scale ``s-1``;
* ``pixel_block_kernel``: one whole gated ``ul`` block at ``(p, q)``: ``c1 = conv1(act(x))
  + b1 + row_term[q]`` (+ the 1x1 projection of ``act`` of the up-pass skip value at
  ``(p, q)`` in the down pass), stored into its window for the later positions;
  ``c2 = conv2(act(c1)) + b2`` (+ cond) with the current tap ``act(c1)`` kept in
  registers (no store -> barrier -> reload), the gate and the residual;
* ``pixel_deconv_kernel``: the stride-2 transposed ``(2, 2)`` conv of ``(p, q)`` of
  scale ``s`` into the 2x2 block ``(2p.., 2q..)`` of scale ``s-1``;
* ``pixel_head_kernel``: the head (1x1 conv of ``elu(ul)``), the sampling from the
  shared uniforms with the arithmetic of ``pixelaux.distributions.sample_flat``
  (categorical: inverse CDF of ``softmax(logits / T)``; logistic mixture: the
  component by the same inverse CDF, the coupled means, the logistic inverse CDF,
  rounding half to even onto the bin grid, clamping, NaN -> 0; with a window, each
  channel truncated to the range of consistent decoding: ``pixel_step.head_sample``),
  known pixels and the write-back into the integer image.

Float policy (as ``kernels/pixel_step.py``): launches pass ``enable_fp_fusion=False``;
the sampling divides with ``tl.math.div_rn``; ``max(log_s, -7)`` propagates NaN.

Every launcher has a PyTorch reference with the same signature (``*_reference``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .pixel_step import head_sample, sampling_chunks, window_args, window_meta
from ._jitmath import mm
from .pp_row import _act_dot, _image, _p2, concat_elu_halves, conv_acc, image_conv

GROUP = 16                             # images per program (the M of every pixel dot)


@triton.jit
def _load_val(ptr, bidx, bm, slot, NS, WS, col, K: tl.constexpr, K_P: tl.constexpr):
    """Value ``(B, NS, WS, K)`` at row slot ``slot``, column ``col`` -> ``[G, K_P]`` (pad 0)."""
    ch = tl.arange(0, K_P)
    return tl.load(ptr + ((bidx[:, None] * NS + slot) * WS + col) * K + ch[None, :],
                   mask=bm[:, None] & (ch < K)[None, :], other=0.0)


@triton.jit
def _store_val(ptr, v, bidx, bm, slot, NS, WS, col, K: tl.constexpr, K_P: tl.constexpr):
    ch = tl.arange(0, K_P)
    tl.store(ptr + ((bidx[:, None] * NS + slot) * WS + col) * K + ch[None, :], v,
             mask=bm[:, None] & (ch < K)[None, :])


@triton.jit(do_not_specialize=["j"])
def pixel_init_kernel(x_ptr, tab_ptr, row_ptr, j, B, H, W, L_IN, row0_ptr, out_ptr, wh_ptr, bh_ptr,
                      C: tl.constexpr, E: tl.constexpr, N: tl.constexpr, N_P: tl.constexpr,
                      G: tl.constexpr, TB: tl.constexpr, PREC: tl.constexpr):
    bidx = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
    bm = bidx < B
    i = tl.load(row_ptr).to(tl.int64)
    jj = tl.full([G], 0, tl.int64) + j
    ch = tl.arange(0, N_P)
    cm = ch < N
    h = image_conv(x_ptr, tab_ptr, wh_ptr, bidx, jj, bm, i - 1, H, W, L_IN, ch, cm,
                   N, C, E, 2, 1, 1, G, N_P, TB, PREC) + tl.load(bh_ptr + ch, mask=cm, other=0.0)[None, :]
    ul = _load_val(row0_ptr, bidx, bm, 0, 1, W, j, N, N_P)
    ul += tl.where(j > 0, h, 0.0)                 # right_shift: column 0 is zero
    _store_val(out_ptr, ul, bidx, bm, i % 2, 2, W, j, N, N_P)


@triton.jit(do_not_specialize=["q"])
def pixel_down_kernel(row_ptr, q, B, in_ptr, NS_IN, W_IN, w_ptr, b_ptr, out_ptr, NS_OUT, W_OUT,
                      SH: tl.constexpr, K: tl.constexpr, N: tl.constexpr, N_P: tl.constexpr,
                      G: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    bidx = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
    bm = bidx < B
    p = tl.load(row_ptr).to(tl.int64) >> SH
    cols = tl.full([G], 0, tl.int64) + q
    ch = tl.arange(0, N_P)
    acc = tl.zeros([G, N_P], dtype=tl.float32) + tl.load(b_ptr + ch, mask=ch < N, other=0.0)[None, :]
    acc, _unused = conv_acc(acc, acc, in_ptr, w_ptr, bidx, cols, bm, p, NS_IN, W_IN, 0, N, N, 0,
                        K, 2, 2, 2, 1, False, False, False, BK, N_P, PREC)
    _store_val(out_ptr, acc, bidx, bm, p % NS_OUT, NS_OUT, W_OUT, q, N, N_P)


@triton.jit(do_not_specialize=["q"])
def pixel_block_kernel(row_ptr, q, B, x_ptr, NS_X, WS, c1_ptr, out_ptr, NS_OUT, row_term_ptr,
                       skip_ptr, NS_SKIP, ws_ptr, h2_ptr, H_S, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                       SH: tl.constexpr, N: tl.constexpr, N_P: tl.constexpr, G: tl.constexpr,
                       BK: tl.constexpr, HAS_SKIP: tl.constexpr, HAS_COND: tl.constexpr,
                       CUR_IN_REGS: tl.constexpr, PREC: tl.constexpr):
    bidx = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
    bm = bidx < B
    p = tl.load(row_ptr).to(tl.int64) >> SH
    cols = tl.full([G], 0, tl.int64) + q
    ch = tl.arange(0, N_P)
    cm = ch < N
    # c1 = conv1(act(x)) over rows p-1, p, columns q-1, q, + biases + the row's terms
    c1 = tl.zeros([G, N_P], dtype=tl.float32) + tl.load(b1_ptr + ch, mask=cm, other=0.0)[None, :]
    c1, _unused = conv_acc(c1, c1, x_ptr, w1_ptr, bidx, cols, bm, p, NS_X, WS, 0, N, N, 0,
                      N, 2, 2, 1, 1, True, False, False, BK, N_P, PREC)
    c1 += _load_val(row_term_ptr, bidx, bm, 0, 1, WS, q, N, N_P)
    if HAS_SKIP:
        c1, _unused = conv_acc(c1, c1, skip_ptr, ws_ptr, bidx, cols, bm, p, NS_SKIP, WS, 0, N, N, 0,
                          N, 1, 1, 1, 0, True, False, False, BK, N_P, PREC)
    c1 = tl.where(cm[None, :], c1, 0.0)
    _store_val(c1_ptr, c1, bidx, bm, p % 2, 2, WS, q, N, N_P)     # for the later positions
    # c2 = conv2(act(c1)) in both gate halves: the three cached taps from the window, the
    # current one (act(c1) at (p, q)) from registers
    ca = tl.zeros([G, N_P], dtype=tl.float32) + tl.load(b2_ptr + ch, mask=cm, other=0.0)[None, :]
    cb = tl.zeros([G, N_P], dtype=tl.float32) + tl.load(b2_ptr + N + ch, mask=cm, other=0.0)[None, :]
    ca, cb = conv_acc(ca, cb, c1_ptr, w2_ptr, bidx, cols, bm, p, 2, WS, 0, N, 2 * N, N,
                      N, 2, 2, 1, 1, True, True, True, BK, N_P, PREC)
    if CUR_IN_REGS:
        ep, en = concat_elu_halves(c1)
        wl = w2_ptr + 3 * 2 * N * (2 * N) + ch[:, None] * (2 * N) + ch[None, :]   # tap (1, 1)
        wm = cm[:, None] & cm[None, :]
        ca += mm(ep, tl.load(wl, mask=wm, other=0.0), PREC)
        ca += mm(en, tl.load(wl + N * 2 * N, mask=wm, other=0.0), PREC)
        cb += mm(ep, tl.load(wl + N, mask=wm, other=0.0), PREC)
        cb += mm(en, tl.load(wl + N * 2 * N + N, mask=wm, other=0.0), PREC)
    else:
        # wide layers: an [N_P, N_P] weight tile does not fit in registers; read the
        # current tap back from the window (this program's own stores) in chunks
        tl.debug_barrier()
        ca, cb = conv_acc(ca, cb, c1_ptr + (p % 2) * WS * N, w2_ptr + 3 * 2 * N * (2 * N), bidx, cols, bm,
                          0, 2, WS, 0, N, 2 * N, N, N, 1, 1, 1, 0, True, False, True, BK, N_P, PREC)
    if HAS_COND:
        hp = h2_ptr + ((bidx[:, None] * H_S + p) * WS + q) * (2 * N) + ch[None, :]
        hm = bm[:, None] & cm[None, :]
        ca += tl.load(hp, mask=hm, other=0.0)
        cb += tl.load(hp + N, mask=hm, other=0.0)
    x = _load_val(x_ptr, bidx, bm, p % NS_X, NS_X, WS, q, N, N_P)
    out = x + ca * tl.sigmoid(cb)
    _store_val(out_ptr, out, bidx, bm, p % NS_OUT, NS_OUT, WS, q, N, N_P)


@triton.jit(do_not_specialize=["q"])
def pixel_deconv_kernel(row_ptr, q, B, in_ptr, NS_IN, W_IN, w_ptr, b_ptr, out_ptr, NS_OUT, W_OUT,
                        SH: tl.constexpr, K: tl.constexpr, N: tl.constexpr, N_P: tl.constexpr,
                        G: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """``out[2p + a, 2q + c] = b + W[a, c]^T in[p, q]`` (``DownRightShiftedConvTranspose2d``);
    weight ``(2, 2, K, N)``."""
    bidx = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
    bm = bidx < B
    p = tl.load(row_ptr).to(tl.int64) >> SH
    ch = tl.arange(0, N_P)
    cm = ch < N
    kb = tl.arange(0, BK)
    bias = tl.load(b_ptr + ch, mask=cm, other=0.0)[None, :]
    base = in_ptr + ((bidx * NS_IN + p % NS_IN) * W_IN + q) * K
    for t in tl.static_range(4):
        acc = tl.zeros([G, N_P], dtype=tl.float32) + bias
        for k0 in range(0, K, BK):
            km = (k0 + kb) < K
            a = tl.load(base[:, None] + k0 + kb[None, :], mask=bm[:, None] & km[None, :], other=0.0)
            wt = tl.load(w_ptr + (t * K + k0 + kb[:, None]) * N + ch[None, :], mask=km[:, None] & cm[None, :],
                         other=0.0)
            acc += mm(a, wt, PREC)
        r = 2 * p + t // 2
        _store_val(out_ptr, acc, bidx, bm, r % NS_OUT, NS_OUT, W_OUT, 2 * q + t % 2, N, N_P)


@triton.jit(do_not_specialize=["j"])
def pixel_head_kernel(x_ptr, known_ptr, uni_ptr, params_ptr, pscr_ptr, win_ptr, wc_ptr, row_ptr, temp_ptr, j,
                      B, H, W, half_top, to_unit, in_ptr, NS_IN, wh_ptr, bh_ptr,
                      C: tl.constexpr, C_P: tl.constexpr, HID: tl.constexpr, HID_P: tl.constexpr,
                      G: tl.constexpr, P: tl.constexpr, PB: tl.constexpr, U: tl.constexpr,
                      DIST: tl.constexpr, L: tl.constexpr, L_B: tl.constexpr, TOP: tl.constexpr,
                      HAS_KNOWN: tl.constexpr, RETURN_PARAMS: tl.constexpr, HAS_WINDOW: tl.constexpr,
                      BLOCK: tl.constexpr, PREC: tl.constexpr):
    bidx = tl.program_id(0).to(tl.int64) * G + tl.arange(0, G)
    bm = bidx < B
    i = tl.load(row_ptr).to(tl.int64)
    temp = tl.load(temp_ptr)
    jj = tl.full([], 0, tl.int64) + j
    ul = _load_val(in_ptr, bidx, bm, i % NS_IN, NS_IN, W, jj, HID, HID_P)
    head_sample(ul, bidx, bm, i, jj, B, H, W, temp, half_top, to_unit,
                x_ptr, known_ptr, uni_ptr, params_ptr, pscr_ptr, wh_ptr, bh_ptr, win_ptr, wc_ptr,
                C, C_P, HID, HID_P, G, P, PB, U, DIST, L, L_B, TOP, HAS_KNOWN, RETURN_PARAMS,
                HAS_WINDOW, BLOCK, PREC)


# -- launchers ------------------------------------------------------------------------

CUR_IN_REGS_MAX = 32                   # widest layer whose current conv2 tap stays in registers


def _pixel_bk(k: int, n_p: int, group: int = GROUP) -> int:
    """Input chunk of a pixel conv: its weight tile ``[BK, N_P]`` at most 2048 floats (a
    ``tl.dot``, ``group >= 16``), or its products ``[G, BK, N_P]`` (a matrix-vector product
    per image, ``group < 16``: any power of two)."""
    if group >= 16:
        return max(16, min(_p2(k), 32, 2048 // n_p))
    return max(1, min(_p2(k), 32, 2048 // (group * n_p)))


def _cur_in_regs(n_p: int, group: int) -> bool:
    """Whether ``pixel_block_kernel`` multiplies the current ``conv2`` tap from registers:
    its ``[N_P, N_P]`` weight tile fits (``N_P <= CUR_IN_REGS_MAX``) and, as matrix-vector
    products, ``[G, N_P, N_P]`` too."""
    return n_p <= CUR_IN_REGS_MAX and (group >= 16 or group * n_p * n_p <= 4096)


def _warps(n_p: int) -> int:
    """Warps of ``pixel_block_kernel``: 4 up to 128 channels (8 at 128 spilled bench-pp32's
    blocks on sm_90 at batches 1 and 16 under Triton 3.6 and 3.9: ``compile_check``)."""
    return 4 if n_p <= 128 else 8


def _groups(b: int, group: int) -> tuple:
    return (triton.cdiv(b, group),)


def launch_pixel_init(x, row, j, row0, out, wh, bh, table, fp_fusion=False, group=GROUP, precision="ieee"):
    """Scale 0: ``out`` ``(B, 2, W, N)`` at ``(i, j)`` = ``row0[j]`` + the right-shifted
    ``(2, 1)`` conv at column ``j-1``; ``wh`` ``(2*CIN, N)``; ``table`` ``(C, 2**bits, E)``
    the input encoding (``CIN = C*E + 1``). Every pixel launcher: ``group`` images per
    program (``G``), ``precision`` the dots' (``layout.LaunchPlan``)."""
    b, c, h, w = x.shape
    n = out.shape[-1]
    n_p = max(16, _p2(n))
    pixel_init_kernel[_groups(b, group)](x, table, row, j, b, h, w, table.shape[1], row0, out, wh, bh,
                                         C=c, E=table.shape[2], N=n, N_P=n_p, G=group,
                                         TB=_pixel_bk(2 * (c * table.shape[2] + 1), n_p, group), PREC=precision,
                                         enable_fp_fusion=fp_fusion)


def launch_pixel_down(row, q, inp, w, b, out, shift, fp_fusion=False, group=GROUP, precision="ieee"):
    """``downsize_ul`` at ``(p, q)`` of scale ``shift`` from ``inp`` (scale ``shift - 1``);
    ``w`` ``(2, 2, 1, K, N)``."""
    bsz, ns_in, w_in, k = inp.shape
    _, ns_out, w_out, n = out.shape
    n_p = max(16, _p2(n))
    pixel_down_kernel[_groups(bsz, group)](row, q, bsz, inp, ns_in, w_in, w, b, out, ns_out, w_out,
                                           SH=shift, K=k, N=n, N_P=n_p, G=group, BK=_pixel_bk(k, n_p, group),
                                           PREC=precision, enable_fp_fusion=fp_fusion)


def launch_pixel_block(row, q, x, c1, out, row_term, w1, b1, w2, b2, shift, skip=None, ws=None,
                       h2=None, fp_fusion=False, group=GROUP, precision="ieee"):
    """One gated ``ul`` block at ``(p, q)``: ``x`` ``(B, NS, W_s, N)`` in, ``c1`` ``(B, 2, W_s, N)``
    its conv2 window, ``out`` the block's output value; ``row_term`` ``(B, 1, W_s, N)``;
    ``w1`` ``(2, 2, 2, N, N)``, ``w2`` ``(2, 2, 2, N, 2N)``; ``skip``/``ws`` the down pass's
    1x1 projection of the up-pass ``ul``; ``h2`` ``(B, H_s, W_s, 2N)``."""
    bsz, ns_x, ws_, n = x.shape
    n_p = max(16, _p2(n))
    d = out
    pixel_block_kernel[_groups(bsz, group)](
        row, q, bsz, x, ns_x, ws_, c1, out, out.shape[1], row_term,
        skip if skip is not None else d, skip.shape[1] if skip is not None else 1, ws if ws is not None else d,
        h2 if h2 is not None else d, h2.shape[1] if h2 is not None else 1, w1, b1, w2, b2,
        SH=shift, N=n, N_P=n_p, G=group, BK=_pixel_bk(n, n_p, group), HAS_SKIP=skip is not None,
        HAS_COND=h2 is not None, CUR_IN_REGS=_cur_in_regs(n_p, group), PREC=precision, num_warps=_warps(n_p),
        enable_fp_fusion=fp_fusion)


def launch_pixel_deconv(row, q, inp, w, b, out, shift, fp_fusion=False, group=GROUP, precision="ieee"):
    """Transposed ``(2, 2)`` conv of ``(p, q)`` of scale ``shift`` into ``out`` (scale ``shift - 1``)."""
    bsz, ns_in, w_in, k = inp.shape
    _, ns_out, w_out, n = out.shape
    n_p = max(16, _p2(n))
    pixel_deconv_kernel[_groups(bsz, group)](row, q, bsz, inp, ns_in, w_in, w, b, out, ns_out, w_out,
                                             SH=shift, K=k, N=n, N_P=n_p, G=group, BK=_pixel_bk(k, n_p, group),
                                             PREC=precision, enable_fp_fusion=fp_fusion)


def head_meta(dist, channels: int, hidden: int, group: int = GROUP) -> dict:
    """The sampling constants of ``dist`` for ``pixel_head_kernel``."""
    c_p = _p2(channels)
    hid_p = max(16, _p2(hidden))
    P = dist.num_params
    d, L = dist.engine_spec
    l_b, pb = sampling_chunks(d, L, c_p, P, hid_p, group)
    return dict(C=channels, C_P=c_p, HID=hidden, HID_P=hid_p, G=group, P=P, PB=pb, U=dist.num_uniforms,
                DIST=d, L=L, L_B=l_b, TOP=2 ** dist.bits - 1)


def launch_pixel_head(x, known, uniforms, params, pscr, row, temp, j, inp, wh, bh, dist, window=None,
                      fp_fusion=False, group=GROUP, precision="ieee"):
    """Head, sampling and write-back at ``(i, j)``: ``inp`` ``(B, NS, W, HID)`` the final
    ``ul``; ``wh`` ``(HID, P)``; ``known`` ``(B, H, W)`` int8 or None; ``params``
    ``(B, P, H, W)`` or None; ``pscr`` ``(B, P)`` scratch; ``temp`` ``(1,)``; ``window`` a
    ``layout.WindowBuffer`` (consistent decoding) or None."""
    b, c, h, w = x.shape
    meta = head_meta(dist, c, inp.shape[-1], group)
    top = meta["TOP"]
    d = pscr
    pixel_head_kernel[_groups(b, group)](
        x, known if known is not None else d, uniforms, params if params is not None else d, pscr,
        *window_args(window, d), row, temp, j, b, h, w, top / 2.0, 2.0 / top, inp, inp.shape[1], wh, bh,
        HAS_KNOWN=known is not None, RETURN_PARAMS=params is not None, **window_meta(window), **meta,
        PREC=precision, enable_fp_fusion=fp_fusion)


# -- PyTorch references (same signatures, same buffer updates) ------------------------

def _at(t, r, c):
    """Value ``t`` ``(B, NS, WS, K)`` at row ``r``, column ``c`` ``(B, K)``, zero outside."""
    if r < 0 or c < 0 or c >= t.shape[2]:
        return torch.zeros_like(t[:, 0, 0])
    return t[:, r % t.shape[1], c]


@torch.no_grad()
def pixel_init_reference(x, row, j, row0, out, wh, bh, table, fp_fusion=False, group=GROUP, precision="ieee"):
    i = int(row[0])
    ul = row0[:, 0, j].clone()
    if j > 0:
        hcol = F.pad(_image(x, table), (0, 0, 1, 0))[:, :, i:i + 2, j - 1]      # rows i-1, i
        ul = ul + hcol.transpose(1, 2).reshape(x.shape[0], -1) @ wh + bh
    out[:, i % 2, j] = ul


@torch.no_grad()
def pixel_down_reference(row, q, inp, w, b, out, shift, fp_fusion=False, group=GROUP, precision="ieee"):
    p = int(row[0]) >> shift
    acc = b.expand(inp.shape[0], -1).clone()
    for tr in range(2):
        for tc in range(2):
            acc = acc + _act_dot(_at(inp, 2 * p - 1 + tr, 2 * q - 1 + tc), w[tr, tc], False)
    out[:, p % out.shape[1], q] = acc


@torch.no_grad()
def pixel_block_reference(row, q, x, c1, out, row_term, w1, b1, w2, b2, shift, skip=None, ws=None,
                          h2=None, fp_fusion=False, group=GROUP, precision="ieee"):
    p = int(row[0]) >> shift
    n = x.shape[-1]

    def conv(t, w):
        acc = 0.0
        for tr in range(2):
            for tc in range(2):
                acc = acc + _act_dot(_at(t, p - 1 + tr, q - 1 + tc), w[tr, tc], True)
        return acc

    a = conv(x, w1) + b1 + row_term[:, 0, q]
    if skip is not None:
        a = a + _act_dot(_at(skip, p, q), ws[0, 0], True)
    c1[:, p % 2, q] = a
    c2 = conv(c1, w2) + b2
    if h2 is not None:
        c2 = c2 + h2[:, p, q]
    out[:, p % out.shape[1], q] = _at(x, p, q) + c2[:, :n] * torch.sigmoid(c2[:, n:])


@torch.no_grad()
def pixel_deconv_reference(row, q, inp, w, b, out, shift, fp_fusion=False, group=GROUP, precision="ieee"):
    p = int(row[0]) >> shift
    v = _at(inp, p, q)
    for a in range(2):
        for c in range(2):
            out[:, (2 * p + a) % out.shape[1], 2 * q + c] = v @ w[a, c] + b


@torch.no_grad()
def pixel_head_reference(x, known, uniforms, params, pscr, row, temp, j, inp, wh, bh, dist, window=None,
                         fp_fusion=False, group=GROUP, precision="ieee"):
    i = int(row[0])
    y = F.elu(inp[:, i % inp.shape[1], j]) @ wh + bh
    pscr.copy_(y)
    if params is not None:
        params[:, :, i, j] = y
    bounds = None if window is None else window.window().bounds_at(x, i, j)
    pix = dist.sample_flat(y, uniforms[:, i, j], float(temp[0]), bounds)
    if known is not None:
        pix = torch.where(known[:, i, j, None] != 0, x[:, :, i, j], pix)
    x[:, :, i, j] = pix
    return y
