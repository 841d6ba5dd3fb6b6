"""Weight normalization and data-dependent initialization (docs/design.md section 1.7).

As PixelCNN++ trains its networks (Salimans & Kingma 2016; Salimans et al. 2017): every
convolution's weight is ``W = g * V / ||V||``, the norm taken per *output* channel over
all other dimensions (``Conv2d`` weights are ``(out, in, kh, kw)``: dim 0;
``ConvTranspose2d`` weights are ``(in, out, kh, kw)``: dim 1), through
``torch.nn.utils.parametrizations.weight_norm``. The state dict then holds
``<conv>.parametrizations.weight.original0`` (``g``) and ``...original1`` (``V``), and
``conv.weight`` is computed from them on every read.

Data-dependent init (:func:`data_dependent_init`): one forward pass over a first batch
with hooks that initialize each weight-normed layer when it runs, in forward order, so
every layer is initialized given the already-initialized layers before it: with
``t = conv(x; V / ||V||)`` (no bias), per output channel mean ``m`` and standard
deviation ``s`` over the batch and positions, ``g = scale / s`` and ``b = -m * scale / s``,
so the layer's output (its pre-activation) starts at mean 0 and standard deviation
``scale``. ``scale`` is ``init_scale`` (1.0), and ``gate_scale`` (0.1, the reference's
``init_scale=0.1``) for the second conv of every gated residual block. Layers without a
bias (the conditioning projections) get only ``g``. A channel whose output does not vary
over the batch (``s < 1e-5``, e.g. a global cond that is the same for every image) keeps
unit scale instead of being divided by ~0.

Sampling folds the weights once, never per pixel: the C++ backend packs ``.weight``
once per :func:`source_key` (the model's own tensors, ``g`` and ``V`` included, which an
optimizer step changes in place), the Triton backend builds its layouts once per weight
version, the torch backend (which reads weights per row and per pixel) runs on
:func:`plain`, a copy with the folded weights as plain parameters, made once per weight
version, and the naive engine's forward passes run under :func:`folded`
(``torch.nn.utils.parametrize.cached``: each ``.weight`` computed once per call). Models
without weight norm are unaffected.
"""
from __future__ import annotations

import copy
import weakref

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm as _torch_weight_norm

CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
#: a channel whose output varies less than this over the init batch keeps unit scale
MIN_STD = 1e-5


def check_weight_norm(value, name: str = "weight_norm") -> bool:
    """``value`` if it is ``True`` or ``False``; ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def output_dim(conv: nn.Module) -> int:
    """The weight dimension of the output channels: 1 for a transposed conv, else 0."""
    return 1 if isinstance(conv, nn.ConvTranspose2d) else 0


def is_weight_normed(module: nn.Module) -> bool:
    """Whether ``module.weight`` is weight-normed by :func:`apply`."""
    return (parametrize.is_parametrized(module, "weight")
            and any(type(p).__name__ == "_WeightNorm" for p in module.parametrizations.weight))


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, conv)`` of every weight-normed layer of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if is_weight_normed(m)]


def has_weight_norm(model: nn.Module) -> bool:
    return any(is_weight_normed(m) for m in model.modules())


def _mark_loaded(module, incompatible_keys) -> None:
    """``load_state_dict`` post-hook: weights from a state dict are trained (or saved)
    weights, not a fresh initialization: no data-dependent init for them."""
    module._wn_pending = False


def apply(network: nn.Module) -> nn.Module:
    """Weight-norm every ``Conv2d`` / ``ConvTranspose2d`` of ``network`` in place (per
    output channel) and mark it as waiting for :func:`data_dependent_init`. The
    function ``W`` is unchanged: ``g`` starts at ``||W||``. Returns ``network``."""
    for m in list(network.modules()):
        if isinstance(m, CONV_TYPES) and not is_weight_normed(m):
            _torch_weight_norm(m, "weight", dim=output_dim(m))
    network._wn_pending = True
    network.register_load_state_dict_post_hook(_mark_loaded)
    return network


def needs_init(model: nn.Module) -> bool:
    """Whether ``model`` holds a weight-normed network that was built but neither
    initialized by :func:`data_dependent_init` nor loaded from a state dict."""
    return any(getattr(m, "_wn_pending", False) for m in model.modules())


def gate_convs(model: nn.Module) -> set[int]:
    """``id`` of the second conv of every gated residual block (initialized at ``gate_scale``)."""
    from .layers import GatedResidualBlock
    return {id(m.conv2) for m in model.modules() if isinstance(m, GatedResidualBlock)}


def _run(model, x, cond):
    return model(x) if cond is None else model(x, cond)


@torch.no_grad()
def data_dependent_init(model: nn.Module, x, cond=None, *, init_scale: float = 1.0,
                        gate_scale: float = 0.1) -> nn.Module:
    """Initialize every weight-normed layer of ``model`` from one forward pass on ``x``.

    ``model(x)`` (or ``model(x, cond)``) is run once in eval mode (no dropout); each
    weight-normed layer, when it first runs, gets ``g = scale / s`` and ``bias = -m * scale / s``
    from the mean ``m`` and standard deviation ``s`` of its output channels over the batch
    and positions with ``g = 1, bias = 0``, and passes on its initialized output, so the
    layers after it see initialized inputs. ``scale``: ``gate_scale`` for the second conv
    of a gated residual block, ``init_scale`` otherwise. Works for any pixelaux network
    (``GatedPixelCNN``, ``PixelCNNpp``, the encoders) and for the auxiliary-variable
    models (``model(x)`` is then ``log_prob``, which runs every stage and encoder).
    ``ValueError`` when ``model`` has no weight norm, when a scale is not positive, or when
    the forward pass leaves some weight-normed layer unused (e.g. ``cond`` missing).
    Returns ``model``.
    """
    for value, name in ((init_scale, "init_scale"), (gate_scale, "gate_scale")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    todo = layers(model)
    if not todo:
        raise ValueError(f"data_dependent_init: the {type(model).__name__} has no weight-normed layers "
                         "(build it with weight_norm=True)")
    gates = gate_convs(model)
    done: set[int] = set()
    handles = []

    def pre(mod, args):
        if id(mod) in done:
            return
        mod.parametrizations.weight.original0.fill_(1.0)
        if mod.bias is not None:
            mod.bias.zero_()

    def post(mod, args, out):
        if id(mod) in done:
            return None
        done.add(id(mod))
        scale = gate_scale if id(mod) in gates else init_scale
        dims = [d for d in range(out.dim()) if d != 1]
        t = out.float()
        m = t.mean(dims)
        s = t.var(dims, unbiased=False).sqrt()
        s = torch.where(s < MIN_STD, torch.ones_like(s), s)
        k = scale / s
        g = mod.parametrizations.weight.original0
        g.copy_(k.reshape(g.shape).to(g.dtype))
        shape = [1] * out.dim()
        shape[1] = -1
        if mod.bias is None:
            return (t * k.view(shape)).to(out.dtype)
        mod.bias.copy_((-m * k).to(mod.bias.dtype))
        return ((t - m.view(shape)) * k.view(shape)).to(out.dtype)

    for _, mod in todo:
        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        _run(model, x, cond)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missed = [n for n, mod in todo if id(mod) not in done]
    if missed:
        raise ValueError(f"data_dependent_init: the forward pass on x did not use the weight-normed layers "
                         f"{missed[:5]}{' ...' if len(missed) > 5 else ''}; pass cond for a conditional model")
    for mod in model.modules():
        if getattr(mod, "_wn_pending", False):
            mod._wn_pending = False
    return model


def initialize(model: nn.Module, x, cond=None, **kw) -> bool:
    """What training calls once before the first step of a new run: the data-dependent
    init of ``model`` on the batch ``x`` when it has weight norm that is not initialized
    yet (:func:`needs_init`: built, not loaded from a state dict). Returns whether it ran."""
    if not needs_init(model):
        return False
    data_dependent_init(model, x, cond, **kw)
    return True


def folded():
    """Context in which every weight-normed ``.weight`` is computed once and reused
    (``torch.nn.utils.parametrize.cached``); the sampling engines run under it."""
    return parametrize.cached()


_PLAIN: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def plain(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no weight norm; otherwise a copy of it whose
    weight-normed convs hold their folded weights ``g * V / ||V||`` as plain parameters
    (the very tensors ``.weight`` computes), made once per :func:`source_key` and kept while
    ``model`` lives, in ``model``'s train / eval mode. Reading ``.weight`` of a plain conv
    is an attribute lookup; a parametrized one costs a Python call even when cached."""
    if not has_weight_norm(model):
        return model
    key = source_key(model)
    hit = _PLAIN.get(model)
    if hit is not None and hit[0] == key:
        twin = hit[1]
    else:
        with torch.no_grad():
            twin = copy.deepcopy(model)
            for _, m in layers(twin):
                if set(m.parametrizations.keys()) != {"weight"}:
                    continue                     # something else parametrized too: left as it is
                w = m.weight.detach().clone()
                # Not parametrize.remove_parametrizations: it deletes the property from the
                # parametrized class, which a deep copy shares with the original module.
                del m._modules["parametrizations"]
                m.__class__ = type(m).__bases__[0]
                m.weight = nn.Parameter(w)
            twin.requires_grad_(False)
        _PLAIN[model] = (key, twin)
    return twin.train(model.training)


def source_key(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in
    place: the key of anything derived from its weights (packed weights). For a
    weight-normed conv these are ``g`` and ``V``, not ``.weight``, which is a new tensor
    on every read."""
    return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype)
                 for t in (*model.parameters(), *model.buffers()))


__all__ = ["apply", "check_weight_norm", "data_dependent_init", "folded", "has_weight_norm",
           "initialize", "is_weight_normed", "layers", "needs_init", "output_dim", "plain", "source_key"]
