"""Output distributions of a PixelCNN (docs/design.md section 1).

Each distribution maps the network output ``params`` at a pixel to a distribution
over that pixel's ``C`` integer channel values in ``[0, 2**bits)``.

* ``log_prob(params, x)``: ``params`` ``(B, P, H, W)``, ``x`` integer ``(B, C, H, W)``
  -> log-probability in nats per pixel, ``(B, H, W)`` (channels summed).
* ``sample(params, u, temperature)``: ``params`` ``(B, P, H, W)``, uniforms ``u``
  ``(B, H, W, U)`` in ``(0, 1)`` -> integer pixels ``(B, C, H, W)``. Deterministic:
  the randomness is all in ``u``, drawn by the caller (see ``pixelaux.uniforms``).
* ``sample_flat(params, u, temperature)``: the same on ``(N, P)`` and ``(N, U)``,
  returning ``(N, C)``; this is what the per-pixel engines call.

**Truncation** (consistent decoding, ``pixelaux.consistency``): ``log_prob(..., lo=, hi=)``
and ``sample_flat(..., bounds=)`` give each channel the model's distribution renormalised
over an interval ``[lo, hi]`` of values. Sampling stays inverse-CDF with the same uniform:

* categorical: the softmax over the levels in ``[lo, hi]`` (the others get probability
  0), the count of ``cdf <= u``, clamped to ``[lo, hi]``;
* logistic mixture, *per component*: the component is picked by ``u[0]`` as before; the
  channel is the component's logistic restricted to the continuous interval of the bins
  ``[lo, hi]`` (end bins open), by the inverse CDF of ``u`` mapped into that interval:
  with ``z_a``, ``z_b`` the interval's standardised ends (``-inf`` / ``+inf`` at the end
  bins), ``q = F(z_a) + u (F(z_b) - F(z_a))``, ``z = logit(q)`` -- computed with the
  survival function when ``z_a > 0`` (``q = S(z_a) - u (S(z_a) - S(z_b))``, ``z = -logit(q)``)
  so that a far tail keeps its precision -- then ``round``, clamped to ``[lo, hi]``.
  So the truncated mixture is ``sum_k pi_k prod_c p_k(x_c | x_<c) / P_k([lo_c, hi_c])``,
  whose log-probability ``log_prob`` gives exactly (bins' masses from the exact logistic
  CDF, so a one-value range has probability 1).

With ``lo = 0`` and ``hi = top`` nothing changes: the arithmetic is today's, bit for bit.

Every sampling engine (naive, cached torch / C++ / Triton) maps uniforms to pixels
with the same arithmetic, written out step by step here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_SCALE_MIN = -7.0
U_EPS = 1e-5


def _inverse_cdf_index(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index ``k`` of a categorical over the last axis of ``logits`` such that
    ``cdf[k-1] <= u < cdf[k]``: the number of cumulative probabilities ``<= u``."""
    cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)
    k = (cdf <= u.unsqueeze(-1)).sum(dim=-1)
    return k.clamp(max=logits.shape[-1] - 1)


def _to_flat(params: torch.Tensor) -> torch.Tensor:
    return params.permute(0, 2, 3, 1).reshape(-1, params.shape[1])


def _check_temperature(temperature: float) -> float:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _logsig(z):
    """``log(sigmoid(z))`` as every engine computes it: ``min(z, 0) - log1p(exp(-|z|))``."""
    return torch.clamp(z, max=0.0) - torch.log1p(torch.exp(-z.abs()))


def _log1mexp(d):
    """``log(1 - exp(d))`` for ``d <= 0``, accurate at both ends."""
    near = d > -0.6931471805599453
    return torch.where(near, torch.log(-torch.expm1(torch.where(near, d, -1.0))),   # each branch's input kept
                       torch.log1p(-torch.exp(torch.where(near, -1.0, d))))          # where it is finite


def _log1m_exp_neg_exp(lw):
    """``log(1 - exp(-w))`` from ``lw = log(w)`` (``w > 0``, may be ``inf``): ``lw`` itself
    for a tiny ``w`` (no ``1 / w`` in the gradient), 0 for a large one."""
    small, large = lw < -10.0, lw > 4.0
    mid = _log1mexp(-torch.exp(torch.clamp(lw, -10.0, 4.0)))
    tiny = lw - 0.5 * torch.exp(torch.clamp(lw, max=-10.0))
    return torch.where(small, tiny, torch.where(large, 0.0, mid))


def log_interval_mass(za: torch.Tensor, zb: torch.Tensor, log_width: torch.Tensor) -> torch.Tensor:
    """``log(sigmoid(zb) - sigmoid(za))`` for ``za < zb`` (either may be infinite), with the
    log of the interval's width ``zb - za`` given on its own (exact, where ``zb - za`` of two
    large standardised ends would round away, and a bin of a very wide logistic far below
    float32's range), through ``sigmoid(zb) - sigmoid(za) = sigmoid(zb) sigmoid(-za)
    (1 - exp(za - zb))``: no difference of nearby numbers, accurate in both tails and for
    narrow intervals alike, with finite gradients."""
    return _logsig(zb) + _logsig(-za) + _log1m_exp_neg_exp(log_width)


def _truncated_cdf_index(logits, u, lo, hi):
    """``_inverse_cdf_index`` of the softmax restricted to ``[lo, hi]`` (``logits`` ``(N, L)``)."""
    levels = torch.arange(logits.shape[-1], device=logits.device)
    inside = (levels >= lo.unsqueeze(-1)) & (levels <= hi.unsqueeze(-1))
    cdf = torch.cumsum(torch.softmax(logits.masked_fill(~inside, float("-inf")), dim=-1), dim=-1)
    k = (cdf <= u.unsqueeze(-1)).sum(dim=-1)
    return torch.minimum(torch.maximum(k, lo), hi)


class Distribution:
    """Shared shape plumbing; subclasses define ``num_params``, ``num_uniforms``,
    ``log_prob_flat`` and ``sample_flat``."""

    channels: int
    bits: int

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    def log_prob(self, params: torch.Tensor, x: torch.Tensor, lo=None, hi=None) -> torch.Tensor:
        """Per-pixel log-probability ``(B, H, W)``; with ``lo``/``hi`` ``(B, C, H, W)`` each
        channel's distribution truncated to ``[lo, hi]`` (module notes)."""
        b, _, h, w = params.shape
        flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, self.channels)  # noqa: E731
        if lo is None:
            return self.log_prob_flat(_to_flat(params), flat(x)).reshape(b, h, w)
        return self.log_prob_flat(_to_flat(params), flat(x), flat(lo), flat(hi)).reshape(b, h, w)

    def sample(self, params: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        b, _, h, w = params.shape
        out = self.sample_flat(_to_flat(params), u.reshape(-1, self.num_uniforms), temperature)
        return out.reshape(b, h, w, self.channels).permute(0, 3, 1, 2).contiguous()

    def config(self) -> dict:
        raise NotImplementedError

    @property
    def engine_spec(self) -> tuple[int, int]:
        """``(kind, L)``, how the compiled engines (C++, Triton) sample this distribution:
        kind 0 is a categorical over ``L = levels`` values per channel, kind 1 a mixture of
        ``L`` discretized logistics. The one place a distribution tells them what it is: a
        distribution they cannot sample says so here instead of being run as another."""
        raise NotImplementedError(f"the compiled engines (backend 'cpp' and 'triton') do not sample "
                                  f"{type(self).__name__}; use backend='torch'")


class Categorical(Distribution):
    """Independent softmax over ``2**bits`` values per channel.

    ``params`` per pixel: ``C * levels`` logits, channel-major. With ``C > 1`` the
    channels of one pixel are independent given the past (no within-pixel coupling);
    it is meant for 1-channel images such as the 4-bit gray view.
    Uniforms per pixel: one per channel.
    """

    def __init__(self, channels: int = 1, bits: int = 4):
        self.channels, self.bits = channels, bits

    @property
    def num_params(self) -> int:
        return self.channels * self.levels

    @property
    def num_uniforms(self) -> int:
        return self.channels

    def log_prob_flat(self, params, x, lo=None, hi=None):
        logits = params.float().reshape(-1, self.channels, self.levels)
        if lo is not None:
            levels = torch.arange(self.levels, device=logits.device)
            inside = (levels >= lo.unsqueeze(-1)) & (levels <= hi.unsqueeze(-1))
            logits = logits.masked_fill(~inside, float("-inf"))
        logp = F.log_softmax(logits, dim=-1)
        return logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1).sum(-1)

    def sample_flat(self, params, u, temperature: float = 1.0, bounds=None):
        t = _check_temperature(temperature)
        logits = params.float().reshape(-1, self.channels, self.levels) / t
        if bounds is None:
            return _inverse_cdf_index(logits, u.float())
        out = torch.empty(logits.shape[0], self.channels, dtype=torch.long, device=params.device)
        for ch in range(self.channels):
            lo, hi = bounds(ch, out)
            out[:, ch] = _truncated_cdf_index(logits[:, ch], u[:, ch].float(), lo, hi)
        return out

    def config(self):
        return {"dist": "categorical", "channels": self.channels, "bits": self.bits}

    @property
    def engine_spec(self) -> tuple[int, int]:
        return 0, self.levels


class DiscretizedLogisticMixture(Distribution):
    """PixelCNN++ mixture of discretized logistics with linear channel coupling.

    ``params`` per pixel, for ``M = nr_mix`` components and ``C`` channels:
    ``[logits (M), means (C*M), log_scales (C*M), coeffs (C(C-1)/2 * M)]``, each block
    channel-major. Channel ``c`` of component ``k`` has mean
    ``means[c, k] + sum_{c' < c} tanh(coeffs[(c, c'), k]) * x[c']`` (R -> G -> B for
    RGB), with the pairs ``(c, c')`` ordered ``(1,0), (2,0), (2,1), ...``.
    Pixels map to ``[-1, 1]`` on a grid of ``levels`` points, bins of width
    ``2 / (levels - 1)``; the two end bins extend to infinity. Log-scales are clamped
    at -7.

    Uniforms per pixel: ``1 + C``; the first picks the component by inverse CDF, the
    others give each channel by the logistic inverse CDF, then round to the grid.
    Temperature ``T`` divides the mixture logits and multiplies the scales.
    """

    def __init__(self, channels: int = 3, bits: int = 8, nr_mix: int = 10):
        self.channels, self.bits, self.nr_mix = channels, bits, nr_mix

    @property
    def num_coeffs(self) -> int:
        return self.channels * (self.channels - 1) // 2

    @property
    def num_params(self) -> int:
        return self.nr_mix * (1 + 2 * self.channels + self.num_coeffs)

    @property
    def num_uniforms(self) -> int:
        return 1 + self.channels

    def split(self, params: torch.Tensor):
        """``(N, P)`` -> logits ``(N, M)``, means, log_scales ``(N, C, M)``, coeffs ``(N, C(C-1)/2, M)``."""
        m, c = self.nr_mix, self.channels
        p = params.float()
        logits = p[:, :m]
        means = p[:, m:m + c * m].reshape(-1, c, m)
        log_scales = p[:, m + c * m:m + 2 * c * m].reshape(-1, c, m).clamp(min=LOG_SCALE_MIN)
        coeffs = torch.tanh(p[:, m + 2 * c * m:].reshape(p.shape[0], self.num_coeffs, m))
        return logits, means, log_scales, coeffs

    def _coupled_means(self, means, coeffs, xs):
        """Means after coupling with the scaled channel values ``xs`` ``(N, C)``."""
        out = [means[:, 0]]
        pair = 0
        for c in range(1, self.channels):
            mc = means[:, c]
            for cp in range(c):
                mc = mc + coeffs[:, pair] * xs[:, cp:cp + 1]
                pair += 1
            out.append(mc)
        return torch.stack(out, dim=1)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * (2.0 / (self.levels - 1)) - 1.0

    def _edges(self, lo, hi):
        """Standardisable ends, in ``[-1, 1]`` units, of the bins ``[lo, hi]`` ``(N, C, 1)``
        (``-inf`` / ``+inf`` at the open end bins)."""
        half = 1.0 / (self.levels - 1)
        a = torch.where(lo == 0, float("-inf"), self.to_unit(lo) - half)
        b = torch.where(hi == self.levels - 1, float("inf"), self.to_unit(hi) + half)
        return a.unsqueeze(-1), b.unsqueeze(-1)

    def log_prob_flat(self, params, x, lo=None, hi=None):
        logits, means, log_scales, coeffs = self.split(params)
        xs = self.to_unit(x)                                     # (N, C)
        mean = self._coupled_means(means, coeffs, xs)            # (N, C, M)
        if lo is not None:                                       # truncated: exact bin masses
            inv_s = torch.exp(-log_scales)
            xa, xb = self._edges(x.long(), x.long())
            ra, rb = self._edges(lo.long(), hi.long())
            def mass(a, b):          # log-mass of [a, b] under each component; inf * 0 kept from NaN
                fin = lambda e: torch.where(torch.isinf(e), 0.0, e)  # noqa: E731
                za = torch.where(torch.isinf(a), a, (fin(a) - mean) * inv_s)
                zb = torch.where(torch.isinf(b), b, (fin(b) - mean) * inv_s)
                open_ = torch.isinf(a) | torch.isinf(b)
                span = torch.where(open_, 1.0, fin(b) - fin(a))
                return log_interval_mass(za, zb, torch.where(open_, float("inf"), torch.log(span) - log_scales))
            lp = mass(xa, xb) - mass(ra, rb)
            out = torch.logsumexp(lp.sum(1) + F.log_softmax(logits, dim=-1), dim=-1)
            outside = ((x.long() < lo) | (x.long() > hi)).any(1)
            return torch.where(outside, float("-inf"), out)
        centered = xs.unsqueeze(-1) - mean
        inv_s = torch.exp(-log_scales)
        half = 1.0 / (self.levels - 1)
        plus_in = inv_s * (centered + half)
        min_in = inv_s * (centered - half)
        log_cdf_plus = plus_in - F.softplus(plus_in)             # log sigmoid(plus_in)
        log_one_minus_cdf_min = -F.softplus(min_in)              # log (1 - sigmoid(min_in))
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_s * centered
        log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
        inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)),
                            log_pdf_mid + math.log(2 * half))
        xi = x.long().unsqueeze(-1)
        lp = torch.where(xi == 0, log_cdf_plus,
                         torch.where(xi == self.levels - 1, log_one_minus_cdf_min, inner))
        return torch.logsumexp(lp.sum(1) + F.log_softmax(logits, dim=-1), dim=-1)

    def sample_flat(self, params, u, temperature: float = 1.0, bounds=None):
        t = _check_temperature(temperature)
        logits, means, log_scales, coeffs = self.split(params)
        u = u.float()
        k = _inverse_cdf_index(logits / t, u[:, 0])              # (N,)
        pick = lambda a: a.gather(-1, k.view(-1, 1, 1).expand(-1, a.shape[1], 1)).squeeze(-1)
        mu, log_s = pick(means), pick(log_scales)
        co = pick(coeffs) if self.num_coeffs else None
        n, c = mu.shape
        top = self.levels - 1
        pixels = torch.empty(n, c, dtype=torch.long, device=params.device)
        xs = torch.empty(n, c, dtype=torch.float32, device=params.device)
        pair = 0
        for ch in range(c):
            mean = mu[:, ch]
            for cp in range(ch):
                mean = mean + co[:, pair] * xs[:, cp]
                pair += 1
            uc = u[:, 1 + ch].clamp(U_EPS, 1.0 - U_EPS)
            val = mean + torch.exp(log_s[:, ch]) * t * (torch.log(uc) - torch.log1p(-uc))
            pix = torch.round((val + 1.0) * (top / 2.0)).clamp(0, top)
            pix = torch.nan_to_num(pix, nan=0.0)
            if bounds is not None:            # a full range keeps the arithmetic above, bit for bit
                lo, hi = bounds(ch, pixels)
                cut = self._truncated_channel(mean, torch.exp(log_s[:, ch]) * t, uc, lo, hi)
                pix = torch.where((lo == 0) & (hi == top), pix, cut)
            pixels[:, ch] = pix.long()
            xs[:, ch] = pix * (2.0 / top) - 1.0
        return pixels

    def _truncated_channel(self, mean, scale, uc, lo, hi):
        """One channel of the truncated logistic (module notes), float32 step by step as
        the compiled engines compute it, in log space so that an interval deep in a tail
        keeps its precision: ``(N,)`` pixel values as float."""
        top = self.levels - 1
        unit = 2.0 / top
        half = 1.0 / top
        loF, hiF = lo.float(), hi.float()
        za = torch.where(lo == 0, float("-inf"), ((loF * unit - 1.0) - half - mean) / scale)
        zb = torch.where(hi == top, float("inf"), ((hiF * unit - 1.0) + half - mean) / scale)
        upper = za > 0                    # the interval above the mean: through the survival function
        small = _logsig(torch.where(upper, -zb, za))        # log of the smaller end's cdf
        big = _logsig(torch.where(upper, -za, zb))          # and of the larger's
        ed = torch.exp(small - big)
        lq = big + torch.log(torch.where(upper, (1.0 - uc) + uc * ed, uc + ed - uc * ed))
        z = lq - _log1mexp(lq)                              # logit of the cdf (survival) value
        val = mean + scale * torch.where(upper, -z, z)
        pix = torch.round((val + 1.0) * (top / 2.0))
        pix = torch.where(torch.isnan(pix), loF, pix)
        return torch.minimum(torch.maximum(pix, loF), hiF)

    def config(self):
        return {"dist": "logistic", "channels": self.channels, "bits": self.bits, "nr_mix": self.nr_mix}

    @property
    def engine_spec(self) -> tuple[int, int]:
        return 1, self.nr_mix


#: The output distributions by the name a model's ``dist`` argument and config use.
#: Adding one: its class here (``num_params``, ``num_uniforms``, ``log_prob_flat``,
#: ``sample_flat``, ``config``; the torch engines then sample it), this entry and its
#: name among the config file's choices (``run_config.py``, which stays torch-free); for
#: the compiled engines also ``engine_spec`` and its sampler in ``csrc/cpu/sampling.cpp``
#: and the Triton heads (docs/design.md 1.2).
DISTRIBUTIONS = {
    "logistic": lambda channels, bits, nr_mix: DiscretizedLogisticMixture(channels, bits, nr_mix),
    "categorical": lambda channels, bits, nr_mix: Categorical(channels, bits),
}


def make_distribution(dist: str, channels: int, bits: int, nr_mix: int = 10) -> Distribution:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"dist must be {' or '.join(map(repr, DISTRIBUTIONS))}, got {dist!r}")
    return DISTRIBUTIONS[dist](channels, bits, nr_mix)
