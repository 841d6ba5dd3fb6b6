"""A pixelaux prior over the code grid of a small VQ-VAE, on this machine's CPU.

    python examples/vqvae_prior.py --out prior_samples.png            # ~10 min on 2 cores
    python examples/vqvae_prior.py --quick --out prior_samples.png    # < 3 min

The pipeline, one function per step:

1. ``load_patches``: the built-in 32x32 natural-image patches (``pixelaux.data.natural_patches``:
   cut from the photographs that scikit-image ships; nothing is downloaded).
2. ``train_vqvae``: a VQ-VAE written here: a conv encoder 32x32x3 -> 8x8xD, a codebook of
   ``2**bits`` vectors (nearest neighbour, straight-through gradient to the encoder,
   commitment loss; the codebook itself is learnt by exponential moving averages of the
   vectors assigned to each code, k-means style, with unused codes restarted on encoder
   outputs), a conv decoder back to 32x32x3. Plain Adam on mean squared error.
3. ``encode``: every patch -> an 8x8 grid of integer codes in ``[0, 2**bits)``.
4. ``train_prior``: a ``pixelaux.GatedPixelCNN(channels=1, bits=bits, dist="categorical",
   embed_dim=E)`` over the grids, trained by ``pixelaux.train``. Codes have no order, so
   the model reads each one through a learned embedding table, not as an intensity.
5. ``sample_and_time``: new grids from the prior with the cached engine, and the same grids
   (same generator) with the naive engine, timed; they must be equal.
6. ``write_figure``: decode and write one PNG: test patches, their reconstructions, and
   samples (rows, top to bottom).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import pixelaux
from pixelaux.data import natural_patches
from pixelaux.images import make_grid, write_image

#: the two presets; every entry can be overridden on the command line
PRESETS = {
    "quick": dict(bits=6, vq_hidden=32, code_dim=16, vq_steps=600, vq_batch=32,
                  prior_hidden=32, prior_blocks=3, embed_dim=16, prior_steps=700, prior_batch=16,
                  samples=16),
    "full": dict(bits=7, vq_hidden=48, code_dim=32, vq_steps=2000, vq_batch=32,
                 prior_hidden=48, prior_blocks=4, embed_dim=32, prior_steps=1500, prior_batch=16,
                 samples=16),
}


# --------------------------------------------------------------------------- data

def load_patches(limit: int | None = None):
    """``(train, test)`` uint8 ``(N, 3, 32, 32)``: the built-in patches (train with flips).
    ``limit`` keeps the first ``limit`` of each (for tests)."""
    train, test = natural_patches("train", 32, flip=True), natural_patches("test", 32)
    if limit is not None:
        train, test = train[:limit], test[:limit]
    return train, test


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(y: torch.Tensor) -> torch.Tensor:
    """floats in [-1, 1] -> uint8 pixels (clamped, rounded)."""
    return ((y.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


# --------------------------------------------------------------------------- the VQ-VAE

class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class EMACodebook(nn.Module):
    """``K`` code vectors of size ``D``, learnt by moving averages (not by gradients).

    ``forward(z)`` with ``z`` ``(B, D, H, W)`` -> ``(z_q, codes, commitment)``: ``z_q`` the
    nearest code vectors with the straight-through gradient (``z + (q - z).detach()``: the
    decoder's gradient passes to the encoder unchanged), ``codes`` ``(B, H, W)`` int64 and
    the commitment loss ``|z - sg(q)|^2`` that keeps the encoder near its codes. In
    training mode each code moves towards the mean of the vectors assigned to it
    (``decay`` per step), and a code that has gone unused is restarted on a random
    encoder output of the batch."""

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.num_codes, self.dim, self.decay, self.eps = num_codes, dim, decay, eps
        self.register_buffer("embed", torch.randn(num_codes, dim) * 0.1)
        self.register_buffer("count", torch.ones(num_codes))        # EMA of assignments per code
        self.register_buffer("total", self.embed.clone())            # EMA of the sum of their vectors
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` -> ``(N,)`` index of the nearest code vector (squared distance)."""
        d = flat.pow(2).sum(1, keepdim=True) - 2.0 * flat @ self.embed.t() + self.embed.pow(2).sum(1)
        return d.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` int codes -> ``(B, D, H, W)`` code vectors."""
        return self.embed[codes].permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def _restart(self, flat: torch.Tensor, which: torch.Tensor) -> None:
        pick = flat[torch.randint(len(flat), (int(which.sum()),), device=flat.device)]
        self.embed[which] = pick
        self.total[which] = pick
        self.count[which] = 1.0

    def forward(self, z: torch.Tensor):
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not self.ready:              # first batch: codes on encoder outputs
            self._restart(flat.detach(), torch.ones(self.num_codes, dtype=torch.bool, device=z.device))
            self.ready.fill_(True)
        codes = self.nearest(flat.detach())
        q = self.embed[codes]
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(codes, self.num_codes).type_as(flat)
                self.count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.total.mul_(self.decay).add_(onehot.t() @ flat.detach(), alpha=1 - self.decay)
                n = self.count.sum()
                smoothed = (self.count + self.eps) / (n + self.num_codes * self.eps) * n   # no 0 division
                self.embed.copy_(self.total / smoothed[:, None])
                dead = self.count < 0.03 * len(flat) / self.num_codes
                if dead.any():
                    self._restart(flat.detach(), dead)
        commitment = F.mse_loss(flat, q.detach())
        z_q = (flat + (q - flat).detach()).view(b, h, w, d).permute(0, 3, 1, 2)
        return z_q, codes.view(b, h, w), commitment


class VQVAE(nn.Module):
    """32x32x3 -> 8x8 grid of codes in ``[0, 2**bits)`` -> 32x32x3: two stride-2 convs down, two
    nearest-neighbour upsamplings each followed by a conv up (no checkerboard of transposed convs)."""

    def __init__(self, bits: int = 7, hidden: int = 64, code_dim: int = 32):
        super().__init__()
        self.bits = bits
        self.encoder = nn.Sequential(
            nn.Conv2d(3, hidden // 2, 4, stride=2, padding=1), nn.ReLU(),     # 16x16
            nn.Conv2d(hidden // 2, hidden, 4, stride=2, padding=1), nn.ReLU(),  # 8x8
            nn.Conv2d(hidden, hidden, 3, padding=1), ResBlock(hidden), ResBlock(hidden), nn.ReLU(),
            nn.Conv2d(hidden, code_dim, 1))
        self.codebook = EMACodebook(2 ** bits, code_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, hidden, 3, padding=1), ResBlock(hidden), ResBlock(hidden), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(hidden, hidden // 2, 3, padding=1), nn.ReLU(),  # 16x16
            nn.Upsample(scale_factor=2), nn.Conv2d(hidden // 2, 3, 3, padding=1))                # 32x32

    def forward(self, x):
        """float ``(B, 3, 32, 32)`` in [-1, 1] -> (reconstruction, codes, commitment)."""
        z_q, codes, commitment = self.codebook(self.encoder(x))
        return self.decoder(z_q), codes, commitment

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """uint8 ``(N, 3, 32, 32)`` -> codes ``(N, 1, 8, 8)`` int64, the layout a pixelaux model takes."""
        out = []
        for chunk in images.split(batch):
            z = self.encoder(to_float(chunk))
            b, d, h, w = z.shape
            out.append(self.codebook.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, 1, h, w))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``(N, 1, 8, 8)`` -> uint8 images ``(N, 3, 32, 32)``."""
        return to_uint8(self.decoder(self.codebook.lookup(codes[:, 0].long())))


def train_vqvae(train: torch.Tensor, *, bits: int, hidden: int, code_dim: int, steps: int,
                batch: int, lr: float = 1e-3, beta: float = 0.25, seed: int = 0, log=print) -> VQVAE:
    """Train a :class:`VQVAE` on uint8 patches: loss ``mse(x, x_hat) + beta * commitment``."""
    torch.manual_seed(seed)
    vq = VQVAE(bits, hidden, code_dim).train()
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    g = torch.Generator().manual_seed(seed)
    recent = []
    every = max(1, steps // 5)
    for step in range(1, steps + 1):
        x = to_float(train[torch.randint(len(train), (batch,), generator=g)])
        recon, _, commitment = vq(x)
        mse = F.mse_loss(recon, x)
        loss = mse + beta * commitment
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent.append(mse.item())
        if step % every == 0 or step == steps:
            used = int((vq.codebook.count > 1e-3).sum())
            log(f"  vq-vae step {step:5d}/{steps}: mse {sum(recent) / len(recent):.4f} "
                f"(PSNR {psnr(sum(recent) / len(recent)):.1f} dB), commitment {commitment.item():.4f}, "
                f"codes in use {used}/{2 ** bits}")
            recent = []
    return vq.eval()


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error measured on [-1, 1] pixels."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def reconstruction_mse(vq: VQVAE, images: torch.Tensor) -> float:
    """Mean squared error on [-1, 1] of ``decode(encode(images))``, the uint8 round trip included."""
    return F.mse_loss(to_float(vq.decode(vq.encode(images))), to_float(images)).item()


def code_entropy(codes: torch.Tensor, num_codes: int) -> float:
    """Entropy in bits of the codes' marginal frequencies: what a prior without context would pay."""
    p = torch.bincount(codes.flatten(), minlength=num_codes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


# --------------------------------------------------------------------------- the prior

def train_prior(codes_train: torch.Tensor, codes_test: torch.Tensor, *, bits: int, hidden: int, blocks: int,
                embed_dim: int, steps: int, batch: int, seed: int = 0, threads: int | None = None,
                out_dir=None, log=print):
    """A categorical ``GatedPixelCNN`` over code grids ``(N, 1, h, w)`` with token inputs,
    trained by ``pixelaux.train`` (Adam, EMA weights). ``out_dir``: where ``pixelaux.train``
    keeps the run (``model.safetensors`` is the prior); ``None``: a temporary directory.
    -> ``(prior, result)``; ``result.train_bpd`` / ``result.test_bpd`` are bits per code."""
    torch.manual_seed(seed)
    prior = pixelaux.GatedPixelCNN(channels=1, bits=bits, hidden=hidden, blocks=blocks, dist="categorical",
                                   embed_dim=embed_dim, image_size=tuple(codes_train.shape[2:]))
    say = log if out_dir is not None else (lambda s: log(s.split("; model: ")[0]))  # no path to a temp file
    with tempfile.TemporaryDirectory() as tmp:
        result = pixelaux.train(prior, codes_train, test_data=codes_test, steps=steps, batch_size=batch,
                                lr=2e-3, lr_decay=0.1 ** (1.0 / steps),      # to lr / 10 at the end
                                ckpt_every=None, eval_every=max(1, steps // 4), seed=seed, threads=threads,
                                out_dir=out_dir if out_dir is not None else tmp, progress=False,
                                log=lambda s: say("  prior: " + s))
    return result.ema_model.eval(), result


def sample_and_time(prior, n: int, *, seed: int = 0, backend: str = "auto", temperature: float = 1.0,
                    repeat: int = 2):
    """``n`` grids from ``prior`` with the naive engine and with the cached one (on the torch
    backend and on ``backend``, when that resolves to another), the same generator seed for
    each; every run timed after a one-grid warm-up, best of ``repeat``. -> dict with
    ``codes`` (the grids of the last cached run), ``seconds`` (``{"naive": s, "cached-torch": s,
    "cached-cpp": s, ...}``), ``equal`` (every run gave the very grids of the naive one) and
    ``agree`` (the smallest fraction of codes equal to the naive ones)."""
    runs = [("naive", "naive", None), ("cached-torch", "cached", "torch")]
    resolved = pixelaux.sampling.resolve_engine(prior, "cached", backend)[1]
    if resolved != "torch":
        runs.append(("cached-" + resolved, "cached", resolved))
    seconds, grids = {}, {}
    for name, engine, be in runs:
        kw = dict(engine=engine, backend=be or "auto", temperature=temperature, progress=False)
        pixelaux.sample(prior, 1, generator=torch.Generator().manual_seed(seed + 1), **kw)    # warm-up
        best = math.inf
        for _ in range(repeat):
            t = time.perf_counter()
            grids[name] = pixelaux.sample(prior, n, generator=torch.Generator().manual_seed(seed), **kw)
            best = min(best, time.perf_counter() - t)
        seconds[name] = best
    ref = grids["naive"]
    agree = min(float((g == ref).float().mean()) for g in grids.values())
    return dict(codes=grids[runs[-1][0]], seconds=seconds, agree=agree,
                equal=all(torch.equal(g, ref) for g in grids.values()))


# --------------------------------------------------------------------------- the picture

def write_figure(path, originals: torch.Tensor, recons: torch.Tensor, samples: torch.Tensor, *,
                 per_row: int = 8, scale: int = 2) -> tuple[int, int]:
    """One PNG: ``originals``, their ``recons`` and ``samples`` (uint8 ``(N, 3, 32, 32)``), each
    starting a new row of ``per_row``. -> the image's ``(width, height)`` in pixels."""
    rows = []
    for part in (originals, recons, samples):
        k = math.ceil(len(part) / per_row) * per_row
        pad = torch.full((k - len(part), *part.shape[1:]), 255, dtype=torch.uint8)
        rows.append(torch.cat([part, pad]))
    grid = make_grid(torch.cat(rows), nrow=per_row)
    write_image(grid, path, scale=scale)
    return grid.shape[2] * scale, grid.shape[1] * scale


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="prior_samples.png", help="the PNG to write")
    p.add_argument("--quick", action="store_true", help="the quick preset (< 3 min on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; these models are small, and on a machine whose cores are "
                        "busy a second thread mostly waits (10x slower steps measured)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "cpp", "triton"),
                   help="backend of the cached engine (timed next to torch's)")
    p.add_argument("--repeat", type=int, default=2, help="time each sampler this many times, keep the best")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the prior")
    p.add_argument("--prior-dir", default=None, help="keep the prior's training run (model.safetensors) here")
    p.add_argument("--limit", type=int, default=None, help="use only the first N patches of each split")
    for key, value in PRESETS["full"].items():
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                       help=f"default {PRESETS['quick'][key]} with --quick, else {value}")
    args = p.parse_args(argv)
    for key, value in PRESETS["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None, log=print) -> dict:
    """Run the pipeline; -> a dict of what it measured (the tests read it)."""
    args = parse_args(argv)
    pixelaux.images.image_format(args.out)            # a bad extension fails now, not after training
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    log(f"preset {'quick' if args.quick else 'full'}: {torch.get_num_threads()} torch threads, "
        f"codebook {2 ** args.bits} codes (bits={args.bits})")

    train, test = load_patches(args.limit)
    log(f"patches: {len(train)} train (with flips), {len(test)} test, 32x32")

    t = time.perf_counter()
    vq = train_vqvae(train, bits=args.bits, hidden=args.vq_hidden, code_dim=args.code_dim,
                     steps=args.vq_steps, batch=args.vq_batch, seed=args.seed, log=log)
    test_mse = reconstruction_mse(vq, test)
    t_vq = time.perf_counter() - t
    log(f"vq-vae: {t_vq:.1f} s; test reconstruction mse {test_mse:.4f} (PSNR {psnr(test_mse):.1f} dB)")

    codes_train, codes_test = vq.encode(train), vq.encode(test)
    used = int(torch.unique(codes_train).numel())
    entropy = code_entropy(codes_train, 2 ** args.bits)
    log(f"codes: grids {tuple(codes_train.shape[1:])}, {used}/{2 ** args.bits} codes used, "
        f"marginal entropy {entropy:.2f} bits/code")

    t = time.perf_counter()
    prior, result = train_prior(codes_train, codes_test, bits=args.bits, hidden=args.prior_hidden,
                                blocks=args.prior_blocks, embed_dim=args.embed_dim, steps=args.prior_steps,
                                batch=args.prior_batch, seed=args.seed, threads=args.threads,
                                out_dir=args.prior_dir, log=log)
    t_prior = time.perf_counter() - t
    log(f"prior: {t_prior:.1f} s; train {result.train_bpd:.3f}, test {result.test_bpd:.3f} bits/code "
        f"(marginal entropy {entropy:.2f}, uniform {args.bits})")

    timing = sample_and_time(prior, args.samples, seed=args.seed, backend=args.backend,
                             temperature=args.temperature, repeat=args.repeat)
    sec = timing["seconds"]
    log(f"sampling {args.samples} grids {tuple(codes_train.shape[2:])} (best of {args.repeat}): " + ", ".join(
        f"{name} {s:.3f} s" + ("" if name == "naive" else f" ({sec['naive'] / s:.1f}x)") for name, s in sec.items())
        + f"; grids equal: {timing['equal']} ({timing['agree']:.2%} of codes)")

    shown = test[torch.linspace(0, len(test) - 1, 8).long()]
    size = write_figure(args.out, shown, vq.decode(vq.encode(shown)), vq.decode(timing["codes"]))
    total = time.perf_counter() - t0
    log(f"wrote {args.out} ({size[0]}x{size[1]}: test patches, reconstructions, samples); total {total:.1f} s")
    return dict(args=args, vq=vq, prior=prior, codes_train=codes_train, codes_test=codes_test,
                test_mse=test_mse, entropy=entropy, train_bpc=result.train_bpd, test_bpc=result.test_bpd,
                timing=timing, figure_size=size, seconds=total)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
