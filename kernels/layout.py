"""Buffer and weight layouts of the gated kernels, and their launch geometry (torch only).

What the row and pixel kernels (``row_step``, ``pixel_step``) read and write; the host
side builds and fills these buffers (``pixelaux/engines/triton_gated_buffers.py``,
``CachedBuffers``). Here: ``LaunchPlan`` / ``choose_launch_plan`` (how images and
channels map onto programs), ``WindowBuffer`` (the consistent-decoding window as the
kernels read it) and the ``concat_elu`` interleaving the PyTorch references use
(``act_interleaved``, ``deinterleave``).

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
per call (``CachedBuffers.fill``), so a CUDA graph of their launches stays valid across calls.

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


#: The dots' ``input_precision`` a launch plan may ask for: true fp32 FMAs (the default, the
#: exactness contract's), or TF32 tensor cores three times over (near fp32; opt-in, its
#: exactness measured by ``benchmarks/gpu_check.py`` against the references).
PRECISIONS = ("ieee", "tf32x3")

#: Streaming multiprocessors assumed when the device is not known (H100 SXM: 132).
DEFAULT_SMS = 132


@dataclass(frozen=True)
class LaunchPlan:
    """How the work of one pixel and one row maps onto programs (docs/design.md section 2.4, "GPU engine").

    * ``group``: images per program (``G``, a power of two): the ``M`` of every per-pixel
      product; each weight is read once per group. ``G >= 16``: ``tl.dot`` (its minimum);
      ``G < 16`` (batches below 16): matrix-vector products per image (``_jitmath.mm``),
      no rows padded.
    * ``pixel_tile``: output channels per program in the pixel op; ``>= hid_p`` is the
      fused plan (one launch per pixel, one program per group); smaller splits every
      conv over ``cdiv(HID, pixel_tile)`` programs (grid ``(groups, tiles)``, ``2 *
      blocks + 1`` launches per pixel). At least 8 (a ``conv1`` tile below 16 columns is
      summed products, not a dot; ``conv2``'s gate halves make it 16 wide), 4 below 16 images.
    * ``row_tile``: output channels per program in the row op (grid ``(B, column
      tiles, channel tiles)``).
    * ``precision``: the dots' ``input_precision`` (``PRECISIONS``), pixel and row ops.
    """
    group: int
    pixel_tile: int
    row_tile: int
    hid_p: int
    pixel_warps: int
    precision: str = "ieee"

    @property
    def fused(self) -> bool:
        return self.pixel_tile >= self.hid_p

    @property
    def matvec(self) -> bool:
        """Whether the per-pixel products are matrix-vector products (``G < 16``), not ``tl.dot``."""
        return self.group < 16

    def programs(self, batch: int) -> int:
        """Programs of one pixel-op launch for ``batch`` images (groups x channel tiles)."""
        return -(-batch // self.group) * -(-self.hid_p // self.pixel_tile)

    def key(self) -> tuple:
        return (self.group, self.pixel_tile, self.row_tile, self.pixel_warps, self.precision)

    def describe(self) -> str:
        """``group=..,pixel_tile=..,row_tile=..,precision=..``: the override that gives this plan."""
        return f"group={self.group},pixel_tile={self.pixel_tile},row_tile={self.row_tile},precision={self.precision}"


def _p2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def choose_launch_plan(batch: int, hidden: int, width: int = 32, override: str | None = None,
                       sms: int | None = None) -> LaunchPlan:
    """The default plan for a batch and hidden size on a GPU of ``sms`` multiprocessors
    (``DEFAULT_SMS`` when None). ``override``, or the environment variable
    ``PIXELAUX_TRITON_PLAN`` (e.g. ``"group=1,pixel_tile=8,precision=tf32x3"``), sets
    fields by name; sizes are rounded up to powers of two (``group >= 1``, ``pixel_tile``
    >= 8 from 16 images and >= 4 below, ``row_tile >= 16``).

    Defaults (docs/design.md, "Launch plans by batch size", has the predicted costs):

    * ``group``: the batch rounded up to a power of two below 16 (matrix-vector
      products, no padded rows), 16 up to 2047 images, 32 from 2048;
    * ``pixel_tile``: fused (one launch per pixel) up to 4 images, where a pixel is
      bound by streaming the weights through one program and ``2 * blocks + 1`` launch
      latencies would cost more; otherwise split, the channel tile the largest that still
      gives every SM a program (``groups * tiles >= sms``), at least the minimum tile; and
      split whenever the fused program's tile of ``conv2`` would not fit the registers
      (``hid_p > 64``: tiles of at most ``max(16, 4096 // hid_p)``, narrower to fill the
      SMs; bench-32's hidden 64 at batch 256: 16 groups x 8 tiles = 128 programs);
    * ``row_tile``: 16-channel tiles while the row op would have fewer than 16 programs;
    * ``precision``: ``"ieee"`` (true fp32; ``"tf32x3"`` opt-in)."""
    hid_p = max(16, _p2(hidden))
    sms = DEFAULT_SMS if sms is None else max(1, int(sms))
    group = _p2(batch) if batch < 16 else (16 if batch < 2048 else 32)
    col_tiles = -(-max(width, 1) // 32)
    fields = dict(group=group, pixel_tile=None, row_tile=hid_p if batch * col_tiles >= 16 else 16,
                  precision="ieee")
    text = override if override is not None else os.environ.get("PIXELAUX_TRITON_PLAN", "")
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = (t.strip() for t in part.partition("="))
        if name not in fields:
            raise ValueError(f"PIXELAUX_TRITON_PLAN: unknown field {name!r} (one of {sorted(fields)})")
        if name == "precision":
            if value not in PRECISIONS:
                raise ValueError(f"PIXELAUX_TRITON_PLAN: precision must be one of {PRECISIONS}, got {value!r}")
            fields[name] = value
            continue
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"PIXELAUX_TRITON_PLAN: {name} must be a positive integer, got {value!r}")
        fields[name] = _p2(n)
    group = fields["group"]
    min_tile = 8 if group >= 16 else 4
    if fields["pixel_tile"] is None:
        groups = -(-max(batch, 1) // group)
        tile = hid_p if hid_p <= 64 else max(16, 4096 // hid_p)
        if hid_p > 64 or batch > 4:
            while tile > min_tile and groups * (hid_p // tile) < sms:
                tile //= 2
        fields["pixel_tile"] = tile
    fields["pixel_tile"] = min(max(fields["pixel_tile"], min_tile), hid_p)
    fields["row_tile"] = min(max(fields["row_tile"], 16), hid_p)
    return LaunchPlan(hid_p=hid_p, pixel_warps=4 if hid_p <= 32 else 8, **fields)


def act_interleaved(t: torch.Tensor) -> torch.Tensor:
    """``(..., HID)`` -> ``concat_elu`` interleaved ``(..., 2*HID)``: ``elu(t_c), elu(-t_c)``."""
    return torch.stack([F.elu(t), F.elu(-t)], dim=-1).flatten(-2)


def deinterleave(a: torch.Tensor) -> torch.Tensor:
    """Interleaved ``(..., 2*HID)`` -> the channel order of ``concat_elu`` (pos, then neg)."""
    return a.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)

