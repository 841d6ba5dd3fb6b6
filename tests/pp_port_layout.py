"""State dicts in the layout of the public PyTorch port of PixelCNN++, and a reference of
that code's forward pass and loss, written here from its documented structure (no code
of that project): key names, shapes, weight norm (``weight_g``, ``weight_v``, ``bias``),
the shifted convolutions, the cropped transposed convolutions, the gated resnet, the
U-net wiring, the ``nin_out`` output layout and ``discretized_mix_logistic_loss``.

Everything here is functional and reads the port-layout state dict directly, so it
shares nothing with ``pixelaux.PixelCNNpp`` or ``pixelaux.pixelcnnpp_import``.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

SCALES = 3


# ----------------------------------------------------------------------------- layout

def layer_specs(nr_resnet: int, nr_filters: int, nr_logistic_mix: int, input_channels: int = 3):
    """``[(prefix, kind, weight shape)]`` with kind ``conv`` / ``deconv`` / ``lin``; the
    weight shapes are PyTorch's: conv ``(out, in, kh, kw)``, transposed conv
    ``(in, out, kh, kw)``, linear ``(out, in)``."""
    f, cin = nr_filters, input_channels + 1
    specs = [("u_init.conv", "conv", (f, cin, 2, 3)),
             ("ul_init.0.conv", "conv", (f, cin, 1, 3)),
             ("ul_init.1.conv", "conv", (f, cin, 2, 1))]

    def resnet(p, kernel, skip):
        specs.append((f"{p}.conv_input.conv", "conv", (f, 2 * f) + kernel))
        if skip:
            specs.append((f"{p}.nin_skip.lin_a", "lin", (f, 2 * skip * f)))
        specs.append((f"{p}.conv_out.conv", "conv", (2 * f, 2 * f) + kernel))

    for i in range(SCALES):
        for k in range(nr_resnet):
            resnet(f"up_layers.{i}.u_stream.{k}", (2, 3), 0)
            resnet(f"up_layers.{i}.ul_stream.{k}", (2, 2), 1)
    for i in range(SCALES):
        for k in range(nr_resnet if i == 0 else nr_resnet + 1):
            resnet(f"down_layers.{i}.u_stream.{k}", (2, 3), 1)
            resnet(f"down_layers.{i}.ul_stream.{k}", (2, 2), 2)
    for i in range(SCALES - 1):
        specs += [(f"downsize_u_stream.{i}.conv", "conv", (f, f, 2, 3)),
                  (f"downsize_ul_stream.{i}.conv", "conv", (f, f, 2, 2)),
                  (f"upsize_u_stream.{i}.deconv", "deconv", (f, f, 2, 3)),
                  (f"upsize_ul_stream.{i}.deconv", "deconv", (f, f, 2, 2))]
    num_mix = 10 if input_channels == 3 else 3
    specs.append(("nin_out.lin_a", "lin", (num_mix * nr_logistic_mix, f)))
    return specs


def make_state_dict(nr_resnet=1, nr_filters=8, nr_logistic_mix=3, input_channels=3, *, seed=0,
                    style="weight_norm", g_scale=1.0):
    """A random state dict with the port's keys and shapes.

    ``style``: ``"weight_norm"`` (``weight_g``/``weight_v``, what that code saves),
    ``"parametrize"`` (``parametrizations.weight.original0``/``original1``) or ``"plain"``
    (``weight``). ``g`` has ``weight_norm``'s shape ``(shape[0], 1, ...)`` and values
    around ``g_scale``, so each effective output filter (input filter for a transposed
    conv) has norm ``g``.
    """
    gen = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for prefix, kind, shape in layer_specs(nr_resnet, nr_filters, nr_logistic_mix, input_channels):
        v = torch.randn(shape, generator=gen)
        g = g_scale * (0.5 + torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=gen))
        out_ch = shape[1] if kind == "deconv" else shape[0]
        b = 0.1 * torch.randn(out_ch, generator=gen)
        if style == "weight_norm":
            sd[f"{prefix}.weight_g"], sd[f"{prefix}.weight_v"] = g, v
        elif style == "parametrize":
            sd[f"{prefix}.parametrizations.weight.original0"] = g
            sd[f"{prefix}.parametrizations.weight.original1"] = v
        elif style == "plain":
            sd[f"{prefix}.weight"] = weight_norm_weight(g, v)
        else:
            raise ValueError(style)
        sd[f"{prefix}.bias"] = b
    return sd


# ----------------------------------------------------------------------------- layers

def weight_norm_weight(g, v):
    """``g * v / ||v||``, the norm over all axes but 0 (per output channel of a conv or
    linear layer, per input channel of a transposed conv)."""
    dims = tuple(range(1, v.dim()))
    return g * v / torch.sqrt((v * v).sum(dim=dims, keepdim=True))


def weight(sd, prefix):
    if f"{prefix}.weight_g" in sd:
        return weight_norm_weight(sd[f"{prefix}.weight_g"], sd[f"{prefix}.weight_v"])
    if f"{prefix}.parametrizations.weight.original0" in sd:
        return weight_norm_weight(sd[f"{prefix}.parametrizations.weight.original0"],
                                  sd[f"{prefix}.parametrizations.weight.original1"])
    return sd[f"{prefix}.weight"]


def shift_down(x):
    """Row ``i`` of the result is row ``i-1`` of ``x`` (zeros in row 0)."""
    out = torch.zeros_like(x)
    out[:, :, 1:] = x[:, :, :-1]
    return out


def shift_right(x):
    out = torch.zeros_like(x)
    out[:, :, :, 1:] = x[:, :, :, :-1]
    return out


def down_shifted_conv(sd, prefix, x, stride=1):
    """Zero-pad ``kh-1`` rows on top and ``(kw-1)/2`` columns each side, then conv."""
    w = weight(sd, prefix)
    kh, kw = w.shape[2:]
    x = F.pad(x, ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0))
    return F.conv2d(x, w, sd[f"{prefix}.bias"], stride=stride)


def down_right_shifted_conv(sd, prefix, x, stride=1):
    """Zero-pad ``kh-1`` rows on top and ``kw-1`` columns on the left, then conv."""
    w = weight(sd, prefix)
    kh, kw = w.shape[2:]
    x = F.pad(x, (kw - 1, 0, kh - 1, 0))
    return F.conv2d(x, w, sd[f"{prefix}.bias"], stride=stride)


def transposed_conv_full(x, w, b):
    """Stride-2 transposed conv with ``output_padding=1``, written as its scatter:
    input ``(p, q)`` adds ``w[:, :, a, c]^T x[:, p, q]`` to output ``(2p + a, 2q + c)``.
    Output ``(2(H-1) + kh + 1, 2(W-1) + kw + 1)`` (the ``+1``: output padding)."""
    n, _, h, wd = x.shape
    kh, kw = w.shape[2:]
    out = torch.zeros(n, w.shape[1], 2 * (h - 1) + kh + 1, 2 * (wd - 1) + kw + 1, dtype=x.dtype)
    for a in range(kh):
        for c in range(kw):
            out[:, :, a:a + 2 * h:2, c:c + 2 * wd:2] += torch.einsum("nihw,io->nohw", x, w[:, :, a, c])
    return out + b.view(1, -1, 1, 1)


def crop_down_shifted(y, kh, kw):
    """The port's crop after ``down_shifted_deconv2d``: drop the last ``kh-1`` rows and
    ``(kw-1)/2`` columns on each side."""
    return y[:, :, :y.shape[2] - kh + 1, (kw - 1) // 2:y.shape[3] - (kw - 1) // 2]


def crop_down_right_shifted(y, kh, kw):
    """The port's crop after ``down_right_shifted_deconv2d``: drop the last ``kh-1`` rows
    and the last ``kw-1`` columns."""
    return y[:, :, :y.shape[2] - kh + 1, :y.shape[3] - kw + 1]


def down_shifted_deconv(sd, prefix, x):
    w = weight(sd, prefix)
    return crop_down_shifted(transposed_conv_full(x, w, sd[f"{prefix}.bias"]), *w.shape[2:])


def down_right_shifted_deconv(sd, prefix, x):
    w = weight(sd, prefix)
    return crop_down_right_shifted(transposed_conv_full(x, w, sd[f"{prefix}.bias"]), *w.shape[2:])


def nin(sd, prefix, x):
    """Linear over the channels at every position: ``(B, in, H, W)`` -> ``(B, out, H, W)``."""
    w, b = weight(sd, prefix), sd[f"{prefix}.bias"]
    y = x.permute(0, 2, 3, 1) @ w.t() + b
    return y.permute(0, 3, 1, 2)


def concat_elu(x):
    return F.elu(torch.cat((x, -x), dim=1))


def gated_resnet(sd, prefix, conv, og_x, a=None):
    x = conv(sd, f"{prefix}.conv_input.conv", concat_elu(og_x))
    if a is not None:
        x = x + nin(sd, f"{prefix}.nin_skip.lin_a", concat_elu(a))
    x = concat_elu(x)                                   # dropout: identity at inference
    x = conv(sd, f"{prefix}.conv_out.conv", x)
    a_, b_ = torch.chunk(x, 2, dim=1)
    return og_x + a_ * torch.sigmoid(b_)


def _count_blocks(sd, prefix):
    k = 0
    while any(key.startswith(f"{prefix}.{k}.") for key in sd):
        k += 1
    return k


def forward(sd, x):
    """The port's ``PixelCNN.forward`` on ``x`` in ``[-1, 1]`` ``(B, C, H, W)`` ->
    ``nin_out`` output ``(B, P, H, W)`` in the port's layout."""
    x = torch.cat((x, torch.ones_like(x[:, :1])), dim=1)
    u_list = [shift_down(down_shifted_conv(sd, "u_init.conv", x))]
    ul_list = [shift_down(down_shifted_conv(sd, "ul_init.0.conv", x))
               + shift_right(down_right_shifted_conv(sd, "ul_init.1.conv", x))]
    for i in range(SCALES):
        u, ul = u_list[-1], ul_list[-1]
        for k in range(_count_blocks(sd, f"up_layers.{i}.u_stream")):
            u = gated_resnet(sd, f"up_layers.{i}.u_stream.{k}", down_shifted_conv, u)
            ul = gated_resnet(sd, f"up_layers.{i}.ul_stream.{k}", down_right_shifted_conv, ul, a=u)
            u_list.append(u)
            ul_list.append(ul)
        if i != SCALES - 1:
            u_list.append(down_shifted_conv(sd, f"downsize_u_stream.{i}.conv", u_list[-1], stride=2))
            ul_list.append(down_right_shifted_conv(sd, f"downsize_ul_stream.{i}.conv", ul_list[-1], stride=2))
    u, ul = u_list.pop(), ul_list.pop()
    for i in range(SCALES):
        for k in range(_count_blocks(sd, f"down_layers.{i}.u_stream")):
            u = gated_resnet(sd, f"down_layers.{i}.u_stream.{k}", down_shifted_conv, u, a=u_list.pop())
            ul = gated_resnet(sd, f"down_layers.{i}.ul_stream.{k}", down_right_shifted_conv, ul,
                              a=torch.cat((u, ul_list.pop()), 1))
        if i != SCALES - 1:
            u = down_shifted_deconv(sd, f"upsize_u_stream.{i}.deconv", u)
            ul = down_right_shifted_deconv(sd, f"upsize_ul_stream.{i}.deconv", ul)
    assert not u_list and not ul_list
    return nin(sd, "nin_out.lin_a", F.elu(ul))


# ----------------------------------------------------------------------------- loss

def split_output(l, channels):
    """Port layout ``(B, P, H, W)`` -> logits ``(B, H, W, M)``, and means, log_scales,
    coeffs ``(B, H, W, C, M)`` (coeffs ``None`` for 1 channel), unclamped, pre-tanh."""
    l = l.permute(0, 2, 3, 1)
    per = 10 if channels == 3 else 3
    m = l.shape[-1] // per
    logits = l[..., :m]
    rest = l[..., m:].reshape(l.shape[:3] + (channels, -1))   # per channel: means, log_scales (, coeffs)
    means, log_scales = rest[..., :m], rest[..., m:2 * m]
    coeffs = rest[..., 2 * m:3 * m] if channels == 3 else None
    return logits, means, log_scales, coeffs


def to_pixelaux_layout(l, channels):
    """Port output ``(B, P, H, W)`` -> pixelaux's ``[logits, means (C*M), log_scales (C*M),
    coeffs (3*M)]`` (channel-major blocks), raw values: what the imported head must give."""
    logits, means, log_scales, coeffs = split_output(l, channels)
    flat = lambda t: t.reshape(t.shape[:3] + (-1,))  # noqa: E731 - (B, H, W, C, M) -> (B, H, W, C*M)
    parts = [logits, flat(means), flat(log_scales)] + ([flat(coeffs)] if coeffs is not None else [])
    return torch.cat(parts, dim=-1).permute(0, 3, 1, 2)


def discretized_mix_logistic_loss(x, l):
    """The port's loss: ``x`` in ``[-1, 1]`` ``(B, C, H, W)`` (C = 1 or 3), ``l`` its
    output; minus the total log-likelihood in nats (a scalar)."""
    c = x.shape[1]
    logits, means, log_scales, coeffs = split_output(l, c)
    log_scales = torch.clamp(log_scales, min=-7.0)
    xs = x.permute(0, 2, 3, 1).unsqueeze(-1)                  # (B, H, W, C, 1)
    if c == 3:
        coeffs = torch.tanh(coeffs)
        m1 = means[..., 0, :]
        m2 = means[..., 1, :] + coeffs[..., 0, :] * xs[..., 0, :]
        m3 = means[..., 2, :] + coeffs[..., 1, :] * xs[..., 0, :] + coeffs[..., 2, :] * xs[..., 1, :]
        means = torch.stack((m1, m2, m3), dim=3)
    centered = xs - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered + 1.0 / 255.0)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered - 1.0 / 255.0)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
    inner = torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                        log_pdf_mid - math.log(127.5))
    xb = xs.expand_as(centered)
    log_probs = torch.where(xb < -0.999, log_cdf_plus, torch.where(xb > 0.999, log_one_minus_cdf_min, inner))
    log_probs = log_probs.sum(dim=3) + F.log_softmax(logits, dim=-1)
    return -torch.logsumexp(log_probs, dim=-1).sum()


def to_unit(k):
    """8-bit integers -> the port's input scale ``2k/255 - 1``."""
    return k.float() * (2.0 / 255.0) - 1.0
