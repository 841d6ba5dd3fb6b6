"""The sampling and scoring API: ``pixelaux.sample`` and ``pixelaux.bits_per_dim``.

A ``GatedPixelCNN`` is one sampling stage. The auxiliary-variable models chain
stages: ``GrayscalePixelCNN`` samples the 4-bit gray view, computes its conditioning
map once, then samples colour given gray; ``PyramidPixelCNN`` samples its smallest
level, then each larger level given the one below. The same machinery gives the
conditional tasks: colorization (colour given a user's gray view), super-resolution
(pyramid levels above a user's small image) and completion (``known`` pixels are
written instead of sampled).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from . import engines, resources
from .checks import check_cond, check_float, check_images, check_int, check_size, check_tensor_device
from .uniforms import ImageUniforms

logger = logging.getLogger("pixelaux")


#: Models sampled as one stage by an engine (the auxiliary-variable models chain them).
STAGE_KINDS = ("GatedPixelCNN", "PixelCNNpp")
MODEL_KINDS = STAGE_KINDS + ("GrayscalePixelCNN", "PyramidPixelCNN")


def _model_kind(model) -> str:
    kind = getattr(model, "kind", None)
    if kind not in MODEL_KINDS:
        raise TypeError(f"model must be a pixelaux {', '.join(MODEL_KINDS[:-1])} or {MODEL_KINDS[-1]}, "
                        f"got {type(model).__name__}")
    return kind


def _stages(model) -> list:
    """The sampling stages of ``model``, in the order they run."""
    kind = _model_kind(model)
    if kind in STAGE_KINDS:
        return [model]
    if kind == "GrayscalePixelCNN":
        return [model.prior, model.colour]
    return list(model.levels)


def resolve_engine(model, engine: str = "cached", backend: str = "auto") -> tuple[str, str | None]:
    """The ``(engine, backend)`` that ``sample(model, ..., engine=, backend=)`` runs: ``auto``
    resolved for the model's device and for every stage it samples with."""
    return engines.resolve(engine, backend, _model_device(model), kinds=tuple({st.kind for st in _stages(model)}))


def _model_device(model) -> torch.device:
    p = next(model.parameters(), None)
    if p is not None and p.device.type == "meta":
        raise ValueError("model is on the meta device (its weights hold no data); load it on 'cpu' or a GPU")
    return p.device if p is not None else torch.device("cpu")


def _check_known(known, n: int, channels: int, bits: int, size) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``known``: integer ``(n, C, H, W)`` or ``(C, H, W)``, ``-1`` marking unknown
    pixels -> (values with unknowns set to 0, mask ``(n, H, W)`` bool)."""
    if known is None:
        return None
    if not isinstance(known, torch.Tensor) or known.dtype.is_floating_point or known.dtype.is_complex \
            or known.dtype == torch.bool:
        got = known.dtype if isinstance(known, torch.Tensor) else type(known).__name__
        raise TypeError(f"known must be an integer torch.Tensor with -1 for unknown pixels, got {got}")
    check_tensor_device(known, "known")
    if known.dim() == 3:
        known = known.unsqueeze(0).expand(n, -1, -1, -1)
    expected = (n, channels, *size)
    if tuple(known.shape) != expected:
        raise ValueError(f"known must have shape {expected} (or {expected[1:]}), got {tuple(known.shape)}")
    known = known.long()
    mask = known >= 0
    if not (mask.all(dim=1) | (~mask).all(dim=1)).all():
        raise ValueError("known must mark whole pixels: all channels of a pixel -1 (unknown) or none")
    hi = int(known.max())
    if int(known.min()) < -1 or hi >= 2 ** bits:
        raise ValueError(f"known values must be -1 (unknown) or in [0, {2 ** bits - 1}], "
                         f"got range [{int(known.min())}, {hi}]")
    return known.clamp(min=0), mask[:, 0]


def _run_stage(stage, n, size, uniforms: ImageUniforms, cond, known, temperature, engine, backend, progress):
    """Sample ``n`` images of one ``GatedPixelCNN`` stage."""
    h, w = size
    device = _model_device(stage)
    x = torch.zeros(n, stage.channels, h, w, dtype=torch.long, device=device)
    mask = None
    if known is not None:
        x, mask = known[0].to(device), known[1].to(device)
    if stage.kind == "PixelCNNpp":
        stage.check_size(size, "size")
    u = uniforms.draw(h, w, stage.dist.num_uniforms)
    run = engines.runner(engine, backend, stage.kind)
    return run(stage, x, mask, cond, u, temperature, progress=progress)


def _pool_known(known, factor: int):
    """Known pixels of a pyramid level ``factor`` times smaller: a pixel is known where
    its whole block is known, with the block's rounded mean as value."""
    if known is None:
        return None
    values, mask = known
    if factor == 1:
        return values, mask
    pooled = torch.round(F.avg_pool2d(values.float(), factor)).long()
    m = F.avg_pool2d(mask.float().unsqueeze(1), factor)[:, 0] == 1.0
    return pooled, m


@torch.no_grad()
def sample(model, n: int, *, size=None, engine: str = "cached", backend: str = "auto",
           generator: torch.Generator | None = None, cond=None, known=None,
           temperature: float = 1.0, progress: bool = True) -> torch.Tensor:
    """Draw ``n`` images from a pixelaux model.

    Args:
        model: ``GatedPixelCNN``, ``PixelCNNpp``, ``GrayscalePixelCNN`` or ``PyramidPixelCNN``.
        n: number of images (>= 1).
        size: ``(H, W)`` or ``int``; defaults to ``model.image_size``. Pyramid sizes must
            be divisible by ``2**(levels-1)``, ``PixelCNNpp`` sizes by ``2**(scales-1)``.
        engine: ``"cached"`` (default; exact and about one forward pass per image) or
            ``"naive"`` (one forward pass per pixel, the reference).
        backend: for ``cached``: ``"auto"`` (cpp on CPU, triton on CUDA, else torch),
            ``"torch"``, ``"cpp"`` or ``"triton"``.
        generator: a CPU ``torch.Generator``; image ``k`` depends only on the generator
            state and ``k``, not on ``n``, the engine or the backend.
        cond: the auxiliary input. ``GatedPixelCNN``/``PixelCNNpp`` with ``cond_channels``: a float map
            ``(n, cond_channels, H, W)``. ``GrayscalePixelCNN``: the gray view
            ``(n, 1, H, W)`` integer in ``[0, 2**gray_bits)`` (colorization).
            ``PyramidPixelCNN``: a smaller level ``(n, C, h, w)`` integer with
            ``h = H / 2**k`` (super-resolution from that level).
        known: integer ``(n, C, H, W)`` or ``(C, H, W)``, ``-1`` for the pixels to
            sample; the others are kept (completion).
        temperature: > 0; scales the logits and logistic scales.
        progress: show a tqdm bar over pixels.

    Returns:
        ``(n, C, H, W)`` int64 pixels in ``[0, 2**bits)`` on the model's device.

    Raises ``TypeError`` / ``ValueError`` for bad arguments, and
    ``pixelaux.resources.InsufficientMemoryError`` (a ``MemoryError``) up front when the
    estimated memory exceeds what is available (``PIXELAUX_MEMORY_CHECK=0`` skips it).
    """
    kind = _model_kind(model)
    n = check_int(n, "n", min_value=1)
    size = model.image_size if size is None else check_size(size)
    temperature = check_float(temperature, "temperature", min_value=0.0, min_exclusive=True)
    engine, backend = resolve_engine(model, engine, backend)
    logger.info("pixelaux.sample: engine=%s backend=%s", engine, backend)
    resources.check_memory(resources.estimate_sampling_bytes(model, n, size, engine, backend),
                           _model_device(model), f"pixelaux.sample(n={n}, size={size}, engine={engine!r})", n=n)
    uniforms = ImageUniforms(n, generator)
    kw = dict(temperature=temperature, engine=engine, backend=backend, progress=progress)
    was_training = model.training
    model.eval()
    try:
        if kind in STAGE_KINDS:
            known = _check_known(known, n, model.channels, model.bits, size)
            cond = check_cond(cond, "cond", batch=n, channels=model.cond_channels, size=size,
                              device=_model_device(model))
            return _run_stage(model, n, size, uniforms, cond, known, **kw)
        if kind == "GrayscalePixelCNN":
            return _sample_grayscale(model, n, size, uniforms, cond, known, kw)
        return _sample_pyramid(model, n, size, uniforms, cond, known, kw)
    finally:
        model.train(was_training)


def _sample_grayscale(model, n, size, uniforms, gray, known, kw):
    known = _check_known(known, n, model.channels, model.bits, size)
    device = _model_device(model)
    if gray is None:
        gray_known = None if known is None else (model.gray(known[0]).to(device), known[1])
        gray = _run_stage(model.prior, n, size, uniforms, None, gray_known, **kw)
    else:
        gray = check_images(gray, "cond", channels=1, bits=model.gray_bits, size=size)
        if gray.shape[0] != n:
            raise ValueError(f"cond (the gray view) must hold n={n} images, got {gray.shape[0]}")
        uniforms.draw(*size, model.prior.dist.num_uniforms)   # keep each stage's uniforms in place
        gray = gray.to(device)
    cond = model.cond(gray)
    return _run_stage(model.colour, n, size, uniforms, cond, known, **kw)


def _sample_pyramid(model, n, size, uniforms, low, known, kw):
    levels = len(model.levels)
    f = 2 ** (levels - 1)
    if size[0] % f or size[1] % f:
        raise ValueError(f"size must be divisible by {f} for a {levels}-level pyramid, got {tuple(size)}")
    sizes = [(size[0] * 2 ** k // f, size[1] * 2 ** k // f) for k in range(levels)]
    known = _check_known(known, n, model.channels, model.bits, size)
    device = _model_device(model)
    start = 0
    if low is not None:
        if not isinstance(low, torch.Tensor) or low.dim() != 4 or tuple(low.shape[2:]) not in sizes[:-1]:
            got = tuple(low.shape) if isinstance(low, torch.Tensor) else type(low).__name__
            raise ValueError(f"cond must be a low-resolution image (n, {model.channels}, h, w) with (h, w) one of "
                             f"{sizes[:-1]}, got {got}")
        start = sizes.index(tuple(low.shape[2:]))
        x = check_images(low, "cond", channels=model.channels, bits=model.bits).to(device)
        if x.shape[0] != n:
            raise ValueError(f"cond must hold n={n} images, got {x.shape[0]}")
    for k in range(levels):
        u_shape = (*sizes[k], model.levels[k].dist.num_uniforms)
        if k <= start and low is not None:
            uniforms.draw(*u_shape)                          # keep each level's uniforms in place
            continue
        cond = model.cond(k, x) if k > 0 else None
        level_known = _pool_known(known, 2 ** (levels - 1 - k))
        x = _run_stage(model.levels[k], n, sizes[k], uniforms, cond, level_known, **kw)
    return x


@torch.no_grad()
def bits_per_dim(model, images: torch.Tensor, cond=None, *, parts: bool = False, batch_size: int = 64):
    """Negative log-likelihood of integer images ``(B, C, H, W)`` in bits per dimension
    (over ``C*H*W``).

    Returns ``(B,)`` float, or with ``parts=True`` a dict of ``(B,)`` tensors with
    ``"total"`` and, for the auxiliary models, the parts that add up to it
    (``"gray"``/``"colour"``, or one entry per pyramid level).
    """
    kind = _model_kind(model)
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    device = _model_device(model)
    x = check_images(images, "images", channels=model.channels, bits=model.bits)
    if kind in STAGE_KINDS:
        cond = check_cond(cond, "cond", batch=x.shape[0], channels=model.cond_channels, size=tuple(x.shape[2:]))
    elif cond is not None:
        raise ValueError(f"cond must be None for a {kind}: its auxiliary inputs are computed from the images, "
                         f"got {type(cond).__name__}")
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size].to(device)
            if kind in STAGE_KINDS:
                cb = None if cond is None else cond[s:s + batch_size].to(device)
                dims = xb[0].numel() * math.log(2)
                chunks.append({"total": -model.log_prob(xb, cb) / dims})
            else:
                chunks.append(model.bits_per_dim(xb))
        out = {k: torch.cat([c[k] for c in chunks]).cpu() for k in chunks[0]}
    finally:
        model.train(was_training)
    return out if parts else out["total"]
