"""The sampling and scoring API: ``pixelaux.sample`` and ``pixelaux.bits_per_dim``.

A ``GatedPixelCNN`` (or ``PixelCNNpp``) is one sampling stage. An auxiliary-variable
model (``AuxiliaryPixelCNN``: ``GrayscalePixelCNN``, ``PyramidPixelCNN`` and any nesting
of them) is unrolled into its chain of stages (``pixelaux.auxiliary.chain``), sampled
innermost first: the innermost stage unconditionally, then for each stage outwards its
encoder's map of the image just sampled, computed once, and the stage given it. E.g.
a grayscale model with a pyramid prior: gray 8x8, gray 16x16, gray 32x32, colour. The
same machinery gives the conditional tasks: colorization (colour given a user's gray
view), super-resolution (the stages above a user's small image) and completion
(``known`` pixels are written instead of sampled, and their views are known in the
stages below).
"""
from __future__ import annotations

import contextlib
import logging
import math

import torch

from . import consistency, engines, resources
from .auxiliary import check_chain_size, is_composite, stages
from .checks import check_cond, check_float, check_images, check_int, check_size, check_tensor_device
from .engines import unet_encoder_cpp
from .engines.progress import stage_label
from .uniforms import ImageUniforms

logger = logging.getLogger("pixelaux")

#: temperatures where sampling means something: below, every pixel is the mode of its
#: distribution (flat images); above, the distributions are flattened to noise. The
#: command line refuses others; ``sample`` warns.
TEMPERATURE_RANGE = (0.01, 10.0)


#: Models sampled as one stage by an engine (the auxiliary-variable models chain them).
STAGE_KINDS = ("GatedPixelCNN", "PixelCNNpp")
MODEL_KINDS = STAGE_KINDS + ("GrayscalePixelCNN", "PyramidPixelCNN", "AuxiliaryPixelCNN")


def _model_kind(model) -> str:
    kind = getattr(model, "kind", None)
    if kind not in MODEL_KINDS and not is_composite(model):
        raise TypeError(f"model must be a pixelaux {', '.join(MODEL_KINDS[:-1])} or {MODEL_KINDS[-1]}, "
                        f"got {type(model).__name__}")
    return kind


def _stages(model) -> list:
    """The sampling stages of ``model``, in the order they run."""
    _model_kind(model)
    return stages(model)


def resolve_engine(model, engine: str = "cached", backend: str = "auto") -> tuple[str, str | None]:
    """The ``(engine, backend)`` that ``sample(model, ..., engine=, backend=)`` runs: ``auto``
    resolved for the model's device and for every stage it samples with."""
    return engines.resolve(engine, backend, model_device(model), kinds=tuple({st.kind for st in _stages(model)}))


def model_device(model) -> torch.device:
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
    given = tuple(known.shape)
    if known.dim() == 3:
        known = known.unsqueeze(0).expand(n, -1, -1, -1)
    expected = (n, channels, *size)
    if tuple(known.shape) != expected:
        raise ValueError(f"known must have shape {expected} (or {expected[1:]}), got {given}")
    known = known.long()
    mask = known >= 0
    if not (mask.all(dim=1) | (~mask).all(dim=1)).all():
        raise ValueError("known must mark whole pixels: all channels of a pixel -1 (unknown) or none")
    hi = int(known.max())
    if int(known.min()) < -1 or hi >= 2 ** bits:
        raise ValueError(f"known values must be -1 (unknown) or in [0, {2 ** bits - 1}], "
                         f"got range [{int(known.min())}, {hi}]")
    return known.clamp(min=0), mask[:, 0]


def _run_stage(stage, n, size, uniforms: ImageUniforms, cond, known, temperature, engine, backend, progress,
               label="", window=None):
    """Sample ``n`` images of one ``GatedPixelCNN`` stage (``label`` names its progress bar;
    ``window``: consistent decoding's ``pixelaux.consistency.Window``, or None)."""
    h, w = size
    device = model_device(stage)
    x = torch.zeros(n, stage.channels, h, w, dtype=torch.long, device=device)
    mask = None
    if known is not None:
        x, mask = known[0].to(device), known[1].to(device)
    stage.check_size(size, "size")
    u = uniforms.draw(h, w, stage.dist.num_uniforms)
    run = engines.runner(engine, backend, stage.kind)
    threads = _stage_threads(stage, engine, backend, n, size)
    with contextlib.nullcontext() if threads is None else resources.num_threads(threads), stage_label(label):
        extra = {} if window is None else {"window": window.to(device)}
        return run(stage, x, mask, cond, u, temperature, progress=progress, **extra)


def _stage_name(link) -> str:
    """A stage's part name with its size: ``"colour 32x32"``, ``"level1_16x16"``."""
    hw = f"{link.size[0]}x{link.size[1]}"
    return link.name if link.name.endswith(hw) else f"{link.name} {hw}"


def _stage_threads(stage, engine: str, backend, n: int, size) -> int | None:
    """Intra-op threads for the PyTorch engines on CPU, as training picks them: one when a
    step's layer is small (:data:`resources.SMALL_LAYER_VALUES`: the naive engine's step
    is a whole forward pass, the torch backend's a row), else torch's setting (``None``).
    The C++ backend runs its own thread team."""
    if model_device(stage).type != "cpu" or (engine == "cached" and backend != "torch"):
        return None
    hidden = int(getattr(stage, "config", {}).get("hidden", 64))
    positions = size[0] * size[1] if engine == "naive" else size[1]
    return 1 if n * hidden * positions < resources.SMALL_LAYER_VALUES else None


@torch.no_grad()
def sample(model, n: int, *, size=None, engine: str = "cached", backend: str = "auto",
           generator: torch.Generator | None = None, cond=None, known=None,
           temperature: float = 1.0, progress: bool = True, offset: int = 0) -> torch.Tensor:
    """Draw ``n`` images from a pixelaux model: images ``offset .. offset+n-1`` of the
    generator's sequence.

    Args:
        model: ``GatedPixelCNN``, ``PixelCNNpp``, ``GrayscalePixelCNN``, ``PyramidPixelCNN``
            or any ``AuxiliaryPixelCNN`` (nested ones included).
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
            ``(n, cond_channels, H, W)``, or a vector per image ``(n, cond_channels)``
            (global conditioning, e.g. ``F.one_hot(labels, 10).float()``; broadcast over
            all positions, its per-block terms computed once per image).
            Auxiliary-variable models: one of the model's auxiliary images, integer; the
            stages below it are not sampled. ``GrayscalePixelCNN``: the gray view
            ``(n, 1, H, W)`` in ``[0, 2**gray_bits)`` (colorization), or with a pyramid
            prior a smaller gray level. ``PyramidPixelCNN``: a smaller level
            ``(n, C, h, w)`` with ``h = H / 2**k`` (super-resolution from that level).
            Matched by shape; where two auxiliary images have the same shape, the
            outermost one.
        known: integer ``(n, C, H, W)`` or ``(C, H, W)``, ``-1`` for the pixels to
            sample; the others are kept (completion).
        temperature: > 0; scales the logits and logistic scales.
        progress: show a tqdm bar over pixels.
        offset: int >= 0, the index of the first image in the generator's sequence.
            ``sample(model, n, generator=g, offset=k)`` equals
            ``sample(model, k + n, generator=g)[k:]`` for a generator in the same state
            (image ``k`` depends only on the generator state and ``k``), without
            sampling the first ``k``; the generator ends ``offset + n`` draws further on,
            as after the big call. ``cond`` and ``known`` hold the ``n`` images returned
            (slice per-image ones ``[k:k + n]``). This is how processes split one seed's
            images (``pixelaux sample`` under ``torchrun``).

    Returns:
        ``(n, C, H, W)`` int64 pixels in ``[0, 2**bits)`` on the model's device.

    Raises ``TypeError`` / ``ValueError`` for bad arguments, and
    ``pixelaux.resources.InsufficientMemoryError`` (a ``MemoryError``) up front when the
    estimated memory exceeds what is available (``PIXELAUX_MEMORY_CHECK=0`` skips it).
    """
    _model_kind(model)
    n = check_int(n, "n", min_value=1)
    offset = check_int(offset, "offset", min_value=0)
    size = model.image_size if size is None else check_size(size)
    temperature = check_float(temperature, "temperature", min_value=0.0, min_exclusive=True)
    if not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
        import warnings
        warnings.warn(f"temperature={temperature:g} is outside [{TEMPERATURE_RANGE[0]:g}, {TEMPERATURE_RANGE[1]:g}]: "
                      "below it every pixel is the mode of its distribution, above it the samples are noise",
                      UserWarning, stacklevel=3)
    engine, backend = resolve_engine(model, engine, backend)
    logger.info("pixelaux.sample: engine=%s backend=%s", engine, backend)
    resources.check_memory(resources.estimate_sampling_bytes(model, n, size, engine, backend),
                           model_device(model), f"pixelaux.sample(n={n}, size={size}, engine={engine!r})", n=n)
    uniforms = ImageUniforms(n, generator, offset=offset)
    kw = dict(temperature=temperature, engine=engine, backend=backend, progress=progress)
    with eval_mode(model):
        if not is_composite(model):
            known = _check_known(known, n, model.channels, model.bits, size)
            cond = check_cond(cond, "cond", batch=n, channels=model.cond_channels, size=size,
                              device=model_device(model), scales=getattr(model, "scales", 1))
            return _run_stage(model, n, size, uniforms, cond, known, **kw)
        return _sample_chain(model, n, size, uniforms, cond, known, kw)


@contextlib.contextmanager
def eval_mode(model):
    """``model`` in eval mode inside; afterwards each module is back in its own mode. Only
    the modules in training mode are touched (``model.eval()`` and ``model.train()`` set
    every module, which costs a few ms per call on a model of hundreds of modules)."""
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield model
    finally:
        for m in training:
            m.training = True


def _given_level(model, links, n, given, size):
    """The index of the link whose image the user gave as ``cond`` (>= 1), and that image."""
    if not isinstance(given, torch.Tensor):
        raise TypeError(f"cond must be an integer torch.Tensor (one of the model's auxiliary images), "
                        f"got {type(given).__name__}")
    shapes = [(n, link.channels, *link.size) for link in links[1:]]
    if model.kind == "GrayscalePixelCNN":
        what = "the gray view"
    elif model.kind == "PyramidPixelCNN":
        what = "a low-resolution image"
    else:
        what = "an auxiliary image"
    got = tuple(given.shape)
    for d, s in enumerate(shapes, start=1):
        if given.dim() == 4 and tuple(given.shape[1:]) == s[1:]:
            link = links[d]
            x = check_images(given, "cond", channels=link.channels, bits=link.bits)
            if x.shape[0] != n:
                raise ValueError(f"cond ({what}) must hold n={n} images, got {x.shape[0]}")
            return d, x
    raise ValueError(f"cond must be {what} of this {model.kind}: one of the shapes "
                     f"{', '.join(str(s) for s in shapes)} at size={tuple(size)}, got {got}")


def _sample_chain(model, n, size, uniforms, given, known, kw):
    """Sample an auxiliary-variable model through its chain of stages, innermost first."""
    links = check_chain_size(model, size)
    known = _check_known(known, n, model.channels, model.bits, size)
    device = model_device(model)
    start = len(links) - 1                           # the link sampled first
    image = None
    if given is not None:
        if len(links) == 1:
            raise ValueError(f"cond must be None for a {model.kind} with a single stage, "
                             f"got {type(given).__name__}")
        start, image = _given_level(model, links, n, given, size)
        image = image.to(device)
        for link in reversed(links[start:]):         # keep each stage's uniforms in place
            uniforms.draw(*link.size, link.stage.dist.num_uniforms)
        start -= 1
    knowns = None if known is None else [(v.to(device), m.to(device)) for v, m in
                                         model.known_views(known[0].to(device), known[1].to(device))]
    boxes = None if known is None else _known_boxes(model, known[0].to(device), known[1].to(device), links)
    for i in range(start, -1, -1):
        link = links[i]
        cond = window = None
        if i + 1 < len(links):                                     # once per image
            cond = _encode(link, image)
            window = link.owner.window(image, None if boxes is None else boxes[i])
        if window is None and boxes is not None and i > 0 and links[i - 1].owner.consistent:
            window = consistency.box_window(*boxes[i])     # the stage above needs what known pixels allow
        image = _run_stage(link.stage, n, link.size, uniforms, cond, None if knowns is None else knowns[i],
                           label=_stage_name(link) + f" ({start - i + 1}/{start + 1})", window=window, **kw)
    return image


def _known_boxes(model, values, mask, links):
    """Per link, ``(box_lo, box_hi)``: the range each pixel of its image can still take given
    the known pixels of ``X`` (every transform is monotone, so the views of ``X`` with its
    unknown pixels at 0 and at the top value bound them)."""
    top = torch.full_like(values, 2 ** model.bits - 1)
    full = torch.where(mask[:, None], values, top)
    return list(zip(model.views(values), model.views(full)))[:len(links)]


def _encode(link, image: torch.Tensor):
    """``link``'s conditioning map(s) of the auxiliary ``image``, computed once per batch:
    a ``UNetEncoder`` on CPU in C++ (``engines/unet_encoder_cpp.py``, 1.5-3.6x faster
    than oneDNN on its narrow convs), any other encoder in torch with
    :func:`_encoder_threads`. When that runs on torch's threads (large layers), the image
    goes in channels-last, oneDNN's faster layout for narrow convs (the bench pyramid's
    encoders at batch 16: 80-88 -> 45-56 ms; benchmarks/results/pyramid.md); the maps
    come back contiguous, as every engine reads them."""
    if unet_encoder_cpp.supports(link.owner.encoder, image, link.size):
        return unet_encoder_cpp.encode(link.owner.encoder, image)
    threads = _encoder_threads(link.owner.encoder, image.shape[0], link.size)
    if threads == 1:
        with resources.num_threads(1):
            return link.cond(image)
    if image.device.type == "cpu":
        image = image.contiguous(memory_format=torch.channels_last)
    out = link.cond(image)
    return tuple(o.contiguous() for o in out) if isinstance(out, (tuple, list)) else out.contiguous()


def _encoder_threads(encoder, n: int, size) -> int | None:
    """Intra-op threads for a conditioning encoder between stages on CPU, by the rule of
    :func:`_stage_threads`: one when its layers are small (``n x width x H x W`` under
    :data:`resources.SMALL_LAYER_VALUES`), else torch's setting (``None``)."""
    if model_device(encoder).type != "cpu":
        return None
    width = getattr(encoder, "hidden", None) or getattr(getattr(encoder, "stem", None), "out_channels", 64)
    return 1 if n * width * size[0] * size[1] < resources.SMALL_LAYER_VALUES else None


@torch.no_grad()
def bits_per_dim(model, images: torch.Tensor, cond=None, *, parts: bool = False, batch_size: int = 64):
    """Negative log-likelihood of integer images ``(B, C, H, W)`` in bits per dimension
    (over ``C*H*W``).

    ``cond``: for a conditional ``GatedPixelCNN``/``PixelCNNpp`` a map ``(B, cond_channels, H, W)``
    or a vector per image ``(B, cond_channels)``; ``None`` for the auxiliary models.

    Returns ``(B,)`` float, or with ``parts=True`` a dict of ``(B,)`` tensors with
    ``"total"`` and, for the auxiliary models, the parts that add up to it
    (``"gray"``/``"colour"``, one entry per pyramid level, ``"gray/level0_8x8"``, ... for a
    nested prior: one per stage).
    """
    kind = _model_kind(model)
    composite = is_composite(model)
    batch_size = check_int(batch_size, "batch_size", min_value=1)
    device = model_device(model)
    x = check_images(images, "images", channels=model.channels, bits=model.bits)
    if not composite:
        cond = check_cond(cond, "cond", batch=x.shape[0], channels=model.cond_channels, size=tuple(x.shape[2:]),
                          scales=getattr(model, "scales", 1))
    elif cond is not None:
        raise ValueError(f"cond must be None for a {kind}: its auxiliary inputs are computed from the images, "
                         f"got {type(cond).__name__}")
    with eval_mode(model):
        chunks = []
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size].to(device)
            if not composite:
                cb = (None if cond is None else cond[s:s + batch_size].to(device) if isinstance(cond, torch.Tensor)
                      else tuple(c[s:s + batch_size].to(device) for c in cond))
                dims = xb[0].numel() * math.log(2)
                chunks.append({"total": -model.log_prob(xb, cb) / dims})
            else:
                chunks.append(model.bits_per_dim(xb))
        out = {k: torch.cat([c[k] for c in chunks]).cpu() for k in chunks[0]}
    return out if parts else out["total"]
