"""The sampling plan: one description of a model family's cached computation (docs/design.md 2.3).

A plan is data, not a second model: it names the model's own modules (by their path in
the model, e.g. ``"u_blocks.0.conv1"``), the buffers the cached algorithm keeps, and the
steps that fill them, in order. The executors walk it: ``cached_torch`` (the readable
reference) and the C++ engine (its packed form, ``cached_cpp.pack_plan``); the Triton
engines take their weight order from it.

**Scales and triggers.** Scale ``s`` (resolution ``H / 2**s``; a ``GatedPixelCNN`` has
one) has row ``p = i >> s`` and position ``(p, q) = (i >> s, j >> s)``, computed once, at
image pixel ``(2**s p, 2**s q)``: its *row steps* run when row ``i`` starts if
``i % 2**s == 0``, its *pixel steps* at ``(i, j)`` if also ``j % 2**s == 0``.
``row_steps`` and ``pixel_steps`` are lists of ``(scale, steps)`` in the order they run:
the up pass (scales ascending), then the down pass (scales descending).

**Buffers.**

* ``xin``, the input buffer: ``kh`` rows of top padding and ``pw = (kw - 1) // 2``
  columns each side around the encoded image, plus the ones channel marking the image.
* a :class:`Window` per conv input: the last ``rows`` rows of that input at its scale,
  ``left``/``right`` columns of zero padding; named by the conv that reads it. When a
  row of its scale starts, every window moves on one row (the new row is zeros).
* a :class:`Holder` per transposed conv: its output for the finer scale, two rows (by
  row parity) of ``W_s`` positions, kept until those rows / pixels come.
* values, named: a row value is ``(B, C, W_s)``, the current row of its scale; a pixel
  value ``(B, C)``, the current position. Names: ``u{s}.{k}`` / ``ul{s}.{k}`` the up pass
  after ``k`` blocks at scale ``s`` (``k = 0``: the stage's input), ``du{s}.{k}`` /
  ``dul{s}.{k}`` the down pass, ``row_term:ul_init`` the first layer's *row term* of ``ul``,
  ``row_term:{block}`` a ``ul`` block's row term (see :class:`RowTerm`).

**Steps** (one dataclass each): :class:`InputRow`, :class:`InputPixel` (the first layer,
from ``xin``), :class:`DownRow` / :class:`DownPixel` (the stride-2 convs between scales,
over a :class:`Window` of the finer scale), :class:`FromUp` (a value read from a
:class:`Holder` by row parity), :class:`RowBlock` / :class:`PixelBlock` (a gated
residual block: conv, gate, residual), :class:`RowTerm` (what a ``ul`` block's ``c1``
reads from rows above: its 1x1 projection of ``u``, its ``cond_c1`` term), :class:`Keep`
(a value written into a window, the stride-2 conv's input), :class:`UpRow` /
:class:`UpPixel` (the transposed convs into the finer scale), :class:`Head`.

**Weights** (:attr:`Plan.weights`): every module with weights, in the order the compiled
engines pack them, with its role; a weight-normed conv's ``.weight`` is its folded
``g * V / ||V||``. **Conditioning**: every block's ``(cond_c1, cond_c2)`` terms, at its
scale, computed once per image (:attr:`Plan.cond_blocks`, ``(block, scale)``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """The last ``rows`` rows of one conv input at ``scale``, ``left``/``right`` padding."""
    name: str
    scale: int
    channels: int
    rows: int
    left: int
    right: int


@dataclass(frozen=True)
class Holder:
    """A transposed conv's output into ``scale`` (the finer one): two rows by parity."""
    name: str
    scale: int
    channels: int


@dataclass(frozen=True)
class InputRow:
    """``out = u_conv`` ``(kh, kw)`` over input rows ``i-kh .. i-1``; ``out_ul = ul_conv``
    ``(1, kw)`` over row ``i-1`` (both zero at row 0)."""
    u_conv: str
    ul_conv: str
    out: str
    out_ul: str


@dataclass(frozen=True)
class InputPixel:
    """``out = row[j] + conv`` ``(kh, 1)`` over input rows ``i-kh+1 .. i`` at column ``j-1``
    (nothing at ``j = 0``)."""
    conv: str
    row: str
    out: str


@dataclass(frozen=True)
class DownRow:
    """``out`` = the stride-2 ``conv`` over the window ``src`` (the finer scale's two rows)."""
    conv: str
    src: str
    out: str


@dataclass(frozen=True)
class DownPixel:
    """``out`` = the stride-2 ``conv`` at ``q`` over the window ``src`` (its 2x2 taps)."""
    conv: str
    src: str
    out: str


@dataclass(frozen=True)
class FromUp:
    """``out`` = the holder ``src`` at the current row's parity (row phase: the whole row;
    pixel phase: position ``q``)."""
    src: str
    out: str


@dataclass(frozen=True)
class RowBlock:
    """A ``u`` gated residual block over the row: ``windows`` hold ``concat_elu`` of ``x`` and
    of ``c1``; ``skip`` (or None): the value its 1x1 projection reads."""
    block: str
    x: str
    out: str
    windows: tuple
    skip: str | None = None


@dataclass(frozen=True)
class RowTerm:
    """A ``ul`` block's *row term*: what its ``c1`` adds at every position of the row that
    does not depend on the row's own ``ul`` values, computed once when the row starts:
    its 1x1 projection of ``concat_elu(src)`` (of ``u``; with ``split``, the ``u`` half of
    a projection of ``cat(u, ul)``) and ``cond_c1``. The compiled engines fold more into
    the same term (the conv biases and the taps of the rows above, as one GEMM over the
    row, for ``c1`` and ``c2``); it keeps its name ``row_term`` in every language."""
    block: str
    src: str
    out: str
    split: bool = False


@dataclass(frozen=True)
class PixelBlock:
    """A ``ul`` gated residual block at the current position: ``c1`` adds the row term
    ``term`` at ``q`` and, with ``skip``, the ``ul`` half of a split projection of it."""
    block: str
    x: str
    out: str
    windows: tuple
    term: str
    skip: str | None = None


@dataclass(frozen=True)
class Keep:
    """Write ``src`` into the window ``window`` (row phase: the row; pixel phase: at ``q``)."""
    src: str
    window: str


@dataclass(frozen=True)
class UpRow:
    """The transposed ``conv`` of the row ``src`` into the holder ``dst``: both finer rows."""
    conv: str
    src: str
    dst: str


@dataclass(frozen=True)
class UpPixel:
    """The transposed ``conv`` of the position ``src`` into ``dst``: the 2x2 block it feeds."""
    conv: str
    src: str
    dst: str


@dataclass(frozen=True)
class Head:
    """The distribution's parameters ``conv(elu(src))`` at the current pixel."""
    conv: str
    src: str


@dataclass(frozen=True)
class Weight:
    """A module with weights, in packing order; ``role``: ``input``, ``conv``, ``skip``,
    ``cond`` (no bias), ``down``, ``up`` or ``head``."""
    module: str
    role: str


@dataclass(frozen=True)
class Plan:
    family: str
    scales: int
    hidden: int
    kh: int                 # rows every conv reads
    kw: int                 # the u stream's conv width (input padding pw = (kw - 1) // 2)
    windows: tuple
    holders: tuple
    row_steps: tuple        # ((scale, (step, ...)), ...) in order
    pixel_steps: tuple
    weights: tuple
    cond_blocks: tuple      # ((block, scale), ...): blocks with cond terms
    dist_spec: tuple        # the distribution's ``engine_spec``: (kind, L)

    @property
    def pw(self) -> int:
        return (self.kw - 1) // 2

    def weight_tensors(self, model, cond: bool = True) -> list:
        """The weights in packing order: ``weight, bias`` per module (``weight`` only for
        ``cond``); without the ``cond`` modules when ``cond`` is False. Read from the
        modules, so a weight-normed conv gives its folded weight."""
        out = []
        for w in self.weights:
            if w.role == "cond" and not cond:
                continue
            m = model.get_submodule(w.module)
            out += [m.weight] if w.role == "cond" else [m.weight, m.bias]
        return out

    def weight_names(self, cond: bool = True) -> list:
        """The names of :meth:`weight_tensors`, in its order (``"u_init.weight"``, ...)."""
        return [f"{w.module}.{p}" for w in self.weights if cond or w.role != "cond"
                for p in (("weight",) if w.role == "cond" else ("weight", "bias"))]


def _block_weights(block: str, has_skip: bool, has_cond: bool) -> list:
    out = [Weight(f"{block}.conv1", "conv")]
    if has_skip:
        out.append(Weight(f"{block}.nin_skip", "skip"))
    out.append(Weight(f"{block}.conv2", "conv"))
    if has_cond:
        out += [Weight(f"{block}.cond_c1", "cond"), Weight(f"{block}.cond_c2", "cond")]
    return out


def gated_plan(model) -> Plan:
    """``GatedPixelCNN``: one scale; ``kh = (k+1)//2`` rows per conv, ``u`` convs ``(kh, k)``,
    ``ul`` convs ``(kh, kh)``."""
    f, kh, kw, n = model.hidden, model.kh, model.kw, len(model.u_blocks)
    pw, cond = (kw - 1) // 2, bool(model.cond_channels)
    windows, weights, cond_blocks = [], [], []
    rows = [InputRow("u_init", "ul_init_v", "u0.0", "row_term:ul_init")]
    pixels = [InputPixel("ul_init_h", "row_term:ul_init", "ul0.0")]
    for k in range(n):
        ub, lb = f"u_blocks.{k}", f"ul_blocks.{k}"
        uw = (f"{ub}.conv1", f"{ub}.conv2")
        lw = (f"{lb}.conv1", f"{lb}.conv2")
        windows += [Window(w, 0, 2 * f, kh, pw, pw) for w in uw] + [Window(w, 0, 2 * f, kh, kh - 1, 0) for w in lw]
        rows += [RowBlock(ub, f"u0.{k}", f"u0.{k + 1}", uw), RowTerm(lb, f"u0.{k + 1}", f"row_term:{lb}")]
        pixels.append(PixelBlock(lb, f"ul0.{k}", f"ul0.{k + 1}", lw, f"row_term:{lb}"))
        if cond:
            cond_blocks += [(ub, 0), (lb, 0)]
    pixels.append(Head("head", f"ul0.{n}"))
    weights = [Weight(m, "input") for m in ("u_init", "ul_init_v", "ul_init_h")]
    for k in range(n):
        weights += _block_weights(f"u_blocks.{k}", False, cond)
    for k in range(n):
        weights += _block_weights(f"ul_blocks.{k}", True, cond)
    weights.append(Weight("head", "head"))
    return Plan("GatedPixelCNN", 1, f, kh, kw, tuple(windows), (), ((0, tuple(rows)),), ((0, tuple(pixels)),),
                tuple(weights), tuple(cond_blocks), model.dist.engine_spec)


def pixelcnnpp_plan(model) -> Plan:
    """``PixelCNNpp``: a U-net over ``scales`` resolutions, every conv reading 2 rows (``u``
    ``(2, 3)``, ``ul`` ``(2, 2)``). Up pass: ``blocks`` blocks per scale, the stride-2 convs
    between scales, every value kept; down pass: ``blocks``, then ``blocks + 1`` per scale,
    each reading the up pass's values of its scale last-in-first-out, joined by the
    transposed convs."""
    S, nb, f = model.scales, model.blocks, model.hidden
    cond = bool(model.cond_channels)
    windows, holders, cond_blocks = [], [], []
    row_steps, pixel_steps = [], []

    def block_windows(block, stream, s):
        names = (f"{block}.conv1", f"{block}.conv2")
        right = 1 if stream == "u" else 0
        windows.extend(Window(n, s, 2 * f, 2, 1, right) for n in names)
        return names

    for s in range(S):                                     # up pass, scales ascending
        rows, pixels = [], []
        if s == 0:
            rows.append(InputRow("u_init", "ul_init_v", "u0.0", "row_term:ul_init"))
            pixels.append(InputPixel("ul_init_h", "row_term:ul_init", "ul0.0"))
        else:
            rows.append(DownRow(f"downsize_u.{s - 1}", f"downsize_u.{s - 1}", f"u{s}.0"))
            pixels.append(DownPixel(f"downsize_ul.{s - 1}", f"downsize_ul.{s - 1}", f"ul{s}.0"))
        for k in range(nb):
            ub, lb = f"up_layers.{s}.u_stream.{k}", f"up_layers.{s}.ul_stream.{k}"
            rows += [RowBlock(ub, f"u{s}.{k}", f"u{s}.{k + 1}", block_windows(ub, "u", s)),
                     RowTerm(lb, f"u{s}.{k + 1}", f"row_term:{lb}")]
            pixels.append(PixelBlock(lb, f"ul{s}.{k}", f"ul{s}.{k + 1}", block_windows(lb, "ul", s), f"row_term:{lb}"))
            if cond:
                cond_blocks += [(ub, s), (lb, s)]
        if s < S - 1:                                      # the stride-2 convs' inputs
            windows += [Window(f"downsize_u.{s}", s, f, 2, 1, 1), Window(f"downsize_ul.{s}", s, f, 2, 1, 0)]
            rows.append(Keep(f"u{s}.{nb}", f"downsize_u.{s}"))
            pixels.append(Keep(f"ul{s}.{nb}", f"downsize_ul.{s}"))
        row_steps.append((s, tuple(rows)))
        pixel_steps.append((s, tuple(pixels)))
    for s in reversed(range(S)):                           # down pass, scales descending
        t = S - 1 - s                                      # down_layers[t], upsize_*[t] out of scale s
        u_skips = [f"u{s}.{k}" for k in range(nb + 1)]
        ul_skips = [f"ul{s}.{k}" for k in range(nb + 1)]
        rows, pixels = [], []
        if s == S - 1:
            u, ul = u_skips.pop(), ul_skips.pop()
        else:
            u, ul = f"du{s}.0", f"dul{s}.0"
            rows.append(FromUp(f"upsize_u.{t - 1}", u))
            pixels.append(FromUp(f"upsize_ul.{t - 1}", ul))
        n = nb if t == 0 else nb + 1
        for k in range(n):
            ub, lb = f"down_layers.{t}.u_stream.{k}", f"down_layers.{t}.ul_stream.{k}"
            rows += [RowBlock(ub, u, f"du{s}.{k + 1}", block_windows(ub, "u", s), skip=u_skips.pop()),
                     RowTerm(lb, f"du{s}.{k + 1}", f"row_term:{lb}", split=True)]
            pixels.append(PixelBlock(lb, ul, f"dul{s}.{k + 1}", block_windows(lb, "ul", s), f"row_term:{lb}",
                                     skip=ul_skips.pop()))
            u, ul = f"du{s}.{k + 1}", f"dul{s}.{k + 1}"
            if cond:
                cond_blocks += [(ub, s), (lb, s)]
        if s > 0:                                          # into scale s-1
            holders += [Holder(f"upsize_u.{t}", s - 1, f), Holder(f"upsize_ul.{t}", s - 1, f)]
            rows.append(UpRow(f"upsize_u.{t}", u, f"upsize_u.{t}"))
            pixels.append(UpPixel(f"upsize_ul.{t}", ul, f"upsize_ul.{t}"))
        else:
            pixels.append(Head("head", ul))
        row_steps.append((s, tuple(rows)))
        pixel_steps.append((s, tuple(pixels)))
    weights = [Weight(m, "input") for m in ("u_init", "ul_init_v", "ul_init_h")]
    for s in range(S):
        weights += [w for k in range(nb) for w in _block_weights(f"up_layers.{s}.u_stream.{k}", False, cond)]
        weights += [w for k in range(nb) for w in _block_weights(f"up_layers.{s}.ul_stream.{k}", True, cond)]
    for t in range(S):
        n = nb if t == 0 else nb + 1
        for stream in ("u_stream", "ul_stream"):
            weights += [w for k in range(n) for w in _block_weights(f"down_layers.{t}.{stream}.{k}", True, cond)]
    for t in range(S - 1):
        weights += [Weight(f"downsize_u.{t}", "down"), Weight(f"downsize_ul.{t}", "down")]
    for t in range(S - 1):
        weights += [Weight(f"upsize_u.{t}", "up"), Weight(f"upsize_ul.{t}", "up")]
    weights.append(Weight("head", "head"))
    return Plan("PixelCNNpp", S, f, 2, 3, tuple(windows), tuple(holders), tuple(row_steps), tuple(pixel_steps),
                tuple(weights), tuple(cond_blocks), model.dist.engine_spec)


#: model kind -> its plan builder; a new family is one builder here.
BUILDERS = {"GatedPixelCNN": gated_plan, "PixelCNNpp": pixelcnnpp_plan}


def plan_of(model) -> Plan:
    """The sampling plan of a stage model (``model.kind`` in :data:`BUILDERS`)."""
    kind = getattr(model, "kind", None)
    if kind not in BUILDERS:
        raise TypeError(f"model: no sampling plan for {type(model).__name__} (kind {kind!r}); "
                        f"families with one: {sorted(BUILDERS)}")
    return BUILDERS[kind](model)
