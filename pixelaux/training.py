"""Training: Adam + EMA + optional gradient clipping, atomic checkpoints, exact resume, DDP, a metrics log.

:func:`train` minimises bits/dim, ``-log_prob(x) / (C*H*W*ln 2)``, of any pixelaux
model that takes just ``x`` (unconditional :class:`~pixelaux.GatedPixelCNN` and
:class:`~pixelaux.PixelCNNpp`, the grayscale and pyramid composites), or of a
class-conditional ``GatedPixelCNN`` / ``PixelCNNpp`` (``cond_channels = K``: data items
``(image, label)``, ``cond`` the one-hot label ``(B, K)``). What it writes to ``out_dir``:

* ``model.safetensors``: the EMA weights via :func:`pixelaux.checkpoint.save`, so
  :func:`pixelaux.checkpoint.load` gives a sampling-ready model; its header also holds
  ``step``, ``train_bpd`` and (when evaluated at that step) ``test_bpd``.
* ``training_state.safetensors``: raw and EMA weights, Adam state, step, RNG states
  and the run settings (:func:`pixelaux.checkpoint.save_training_state`, no pickle).
* ``metrics.jsonl``: one line per evaluation step and at the end (step, train and
  test bits/dim with the test's parts, lr, images/s, wall time), appended across
  resumes, one line per step (:mod:`pixelaux.metrics`).

Both are written every ``ckpt_every`` steps and at the end, each atomically (a crash
or Ctrl-C leaves the previous complete file, never a partial one). ``resume=True``
continues from ``training_state.safetensors``; since the batch of step ``t`` is a
function of ``(seed, t)`` only, 10 + resume 10 steps give the same weights as 20
straight steps.

Data order: epoch ``e`` is a permutation of the training set drawn from ``(seed, e)``;
step ``t`` takes the next ``batch_size * world_size`` indices and rank ``r`` its
``r``-th slice (the sharding of ``DistributedSampler``, indexed by step so a resumed
run continues mid-epoch without replaying the loader). Incomplete tail batches of an
epoch are skipped.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the
process group is initialised here (NCCL on CUDA, Gloo on CPU) unless it already is,
the model is wrapped in ``DistributedDataParallel``, every rank evaluates a shard of
the test set (summed with ``all_reduce``) and only rank 0 writes files and logs.
``batch_size`` is per process: with the data order above, ``N`` processes of batch ``b``
see step ``t``'s global batch of one process of batch ``N*b``, and DDP averages their
gradients, so (with dropout 0, whose masks differ per rank) they end with its weights up
to the order of float sums (``tests/test_distributed.py``).

``amp`` and ``compile`` act on CUDA only; on CPU they are ignored, with a log line.

CPU threads: a small model (fewer than :data:`SMALL_LAYER_VALUES` activations per layer
and batch) trains with one intra-op thread unless ``threads`` says otherwise. Its
operations are too small to gain from a second thread, and on a machine whose cores
are busy with other work every OpenMP barrier waits for a descheduled thread: an 8x8
model with 8 channels took 0.62 s per step with two threads next to one busy process,
against 0.06 s with one (``benchmarks/bench_train_threads.py``, results in
``benchmarks/results/training.md``).

The settings of a run are one :class:`TrainConfig`; it is saved in the training state,
so :func:`read_run` (and ``pixelaux train --resume``) can continue a run without
repeating them.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import weight_norm
from .checkpoint import (check_state_dict, load_training_state, model_class, remove_stale_temp_files,
                         save, save_training_state, unwrap)
from .checks import check_float, check_int
from .metrics import METRICS_FILE, MetricsLog

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"
LN2 = math.log(2.0)
from .resources import SMALL_LAYER_VALUES  # noqa: E402 (one thread below it, as the samplers)


@dataclass(frozen=True)
class TrainConfig:
    """The settings of a training run (see :func:`train` for their meaning).

    Checked when built: ``TypeError`` / ``ValueError`` naming the field. Saved in the
    training state as a dict (:meth:`to_dict`), read back by :func:`read_run`; a field
    added later takes, when an older run's dict lacks it, the value that run trained with.
    The defaults are this library's recipe (its embedded models); the reference
    PixelCNN++ one is ``adam_betas=(0.95, 0.9995)``, ``ema_decay=0.9995``, ``grad_clip=0``
    with ``lr=1e-3``, ``lr_decay=0.999995`` and the models' ``dropout=0.5``.

    * ``steps``: optimizer steps in total (resumed ones included), >= 1.
    * ``batch_size``: images per step and process, >= 1.
    * ``lr``: Adam's learning rate at the first step, > 0.
    * ``lr_decay``: per-step exponential decay, in (0, 1]: step ``t`` (from 1) uses
      ``lr * lr_decay**(t-1)``; 1 keeps ``lr``.
    * ``adam_betas``: Adam's ``(beta1, beta2)``, each in [0, 1).
    * ``ema_decay``: decay of the EMA (Polyak average) of the weights, in [0, 1]; step
      ``t`` uses ``min(ema_decay, (1+t)/(10+t))``; 0 makes the EMA the raw weights.
    * ``grad_clip``: the global gradient norm is clipped to this value; ``0`` turns
      clipping off (``None``, as older runs saved "off", is read as ``0``).
    * ``amp``: ``False``, ``True``, ``"bf16"`` or ``"fp16"`` (CUDA only); the test
      evaluation is float32 whatever it is.
    * ``compile``: ``torch.compile`` the likelihood (CUDA only).
    * ``eval_every``: test (and write a ``metrics.jsonl`` line) every N steps; ``None``:
      at the end only. ``ckpt_every``: checkpoint every N steps; ``None``: at the end only.
    * ``seed``: data order and dropout RNG; ``device``; ``threads``: CPU intra-op threads.

    Dropout is not a training setting: it is the model's (its ``dropout``, element-wise,
    saved in its config), so a resumed run keeps it with the model.
    """
    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    lr_decay: float = 0.999995
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    adam_betas: tuple = (0.9, 0.999)
    amp: bool | str = False
    compile: bool = False
    eval_every: int | None = None
    ckpt_every: int | None = 1000
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self):
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        fix("steps", check_int(self.steps, "steps", min_value=1))
        fix("batch_size", check_int(self.batch_size, "batch_size", min_value=1))
        fix("lr", check_float(self.lr, "lr", min_value=0.0, min_exclusive=True))
        fix("lr_decay", check_float(self.lr_decay, "lr_decay", min_value=0.0, max_value=1.0, min_exclusive=True))
        fix("ema_decay", check_float(self.ema_decay, "ema_decay", min_value=0.0, max_value=1.0))
        fix("grad_clip", 0.0 if self.grad_clip is None else check_float(self.grad_clip, "grad_clip", min_value=0.0))
        betas = self.adam_betas
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"adam_betas must be a pair (beta1, beta2), got {betas!r}")
        betas = tuple(check_float(b, f"adam_betas[{i}]", min_value=0.0) for i, b in enumerate(betas))
        for i, b in enumerate(betas):
            if b >= 1.0:
                raise ValueError(f"adam_betas[{i}] must be < 1, got {b}")
        fix("adam_betas", betas)
        if self.amp not in (False, True, "bf16", "fp16"):
            raise ValueError(f"amp must be False, True, 'bf16' or 'fp16', got {self.amp!r}")
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be a bool, got {type(self.compile).__name__} {self.compile!r}")
        for name in ("eval_every", "ckpt_every", "threads"):
            if getattr(self, name) is not None:
                fix(name, check_int(getattr(self, name), name, min_value=1))
        fix("seed", check_int(self.seed, "seed", min_value=0))
        if not isinstance(self.device, (str, torch.device)):
            raise TypeError(f"device must be a str or torch.device, got {type(self.device).__name__}")
        fix("device", str(self.device))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)            # as JSON gives it back
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; unknown keys are ignored (older or newer runs)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``step``: optimizer steps done in total (resumed ones included); ``train_bpd``:
    mean training bits/dim of the raw model over the last (up to 100) steps run in
    this call, ``None`` if none ran; ``test_bpd``: bits/dim of the EMA model on
    ``test_data`` at the end, ``None`` without test data; ``checkpoint`` and
    ``training_state``: the files in ``out_dir``; ``ema_model``: the EMA model (what
    ``checkpoint`` holds), in eval mode on the training device.
    """
    step: int
    train_bpd: float | None
    test_bpd: float | None
    checkpoint: Path
    training_state: Path
    ema_model: nn.Module | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- data

class _Images:
    """Random access to integer images ``(C, H, W)`` from a tensor ``(N, C, H, W)`` or
    a Dataset (items: a tensor / array, or a tuple whose first element is one)."""

    def __init__(self, data, name: str):
        self.name = name
        if isinstance(data, torch.Tensor):
            if data.dim() != 4:
                raise ValueError(f"{name} must be a tensor (N, C, H, W), got shape {tuple(data.shape)}")
            self.tensor, self.dataset = data, None
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self.tensor, self.dataset = None, data
        else:
            raise TypeError(f"{name} must be a torch Dataset or a tensor (N, C, H, W), "
                            f"got {type(data).__name__}")
        if len(self) == 0:
            raise ValueError(f"{name} is empty")

    def __len__(self) -> int:
        return self.tensor.shape[0] if self.tensor is not None else len(self.dataset)

    def _item(self, i: int) -> torch.Tensor:
        x = self.dataset[i]
        if isinstance(x, (tuple, list)):
            x = x[0]
        return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` ``(B,)`` int64 -> images ``(B, C, H, W)`` (the data set's integer dtype)."""
        if self.tensor is not None:
            return self.tensor[idx]
        return torch.stack([self._item(i) for i in idx.tolist()])

    def has_labels(self) -> bool:
        """Whether the items are ``(image, label, ...)``."""
        if self.tensor is not None:
            return False
        item = self.dataset[0]
        return isinstance(item, (tuple, list)) and len(item) >= 2

    def labelled_batch(self, idx: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``idx`` ``(B,)`` -> images ``(B, C, H, W)`` and their labels ``(B,)`` int64, each in
        ``[0, classes)`` (``ValueError`` naming the item otherwise); each item read once."""
        xs, ys = [], []
        for i in idx.tolist():
            x, y = self.dataset[i][:2]
            y = int(y.item() if isinstance(y, torch.Tensor) else y)
            if not 0 <= y < classes:
                raise ValueError(f"{self.name} item {i} has label {y}, outside [0, {classes}) "
                                 f"(the model's cond_channels = {classes} classes)")
            xs.append(x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)))
            ys.append(y)
        return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


class _Order:
    """Indices of the batch of step ``t`` for one rank; a function of ``(seed, t)``."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int):
        self.n, self.bs, self.world, self.rank, self.seed = n, batch_size, world, rank, seed
        self.per_epoch = n // (batch_size * world)
        if self.per_epoch == 0:
            raise ValueError(f"the training set has {n} images, fewer than one global batch "
                             f"(batch_size {batch_size} x {world} processes)")
        self._epoch, self._perm = None, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            s = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
            g = torch.Generator().manual_seed(int(s[0]) << 32 | int(s[1]))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        start = (b * self.world + self.rank) * self.bs
        return self._perm[start:start + self.bs]


# --------------------------------------------------------------------------- evaluation

class _NegLogProb(nn.Module):
    """``x`` ``(B, C, H, W)`` (and a class-conditional model's one-hot ``cond`` ``(B, K)``)
    -> ``-log_prob(x)`` ``(B,)`` nats. A module, so DDP's forward hooks and
    ``torch.compile`` see the likelihood, not just ``forward``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, cond=None):
        return -(self.model.log_prob(x) if cond is None else self.model.log_prob(x, cond))


def class_count(model) -> int:
    """``K`` for a class-conditional model (a ``GatedPixelCNN`` / ``PixelCNNpp`` with
    ``cond_channels = K > 0``, trained on one-hot labels), else 0. A composite's
    ``cond_channels`` is its encoder's width, not a class count."""
    from .auxiliary import is_stage
    return int(getattr(model, "cond_channels", 0) or 0) if is_stage(model) else 0


def _fetch(images: "_Images", idx: torch.Tensor, classes: int, dev):
    """The batch ``idx`` on ``dev``: ``(x, cond)``, ``cond`` the one-hot labels
    ``(B, classes)`` float32 for a class-conditional model, else ``None``."""
    if not classes:
        return images.batch(idx).to(dev, non_blocking=True), None
    x, y = images.labelled_batch(idx, classes)
    return x.to(dev, non_blocking=True), torch.nn.functional.one_hot(y.to(dev), classes).float()


def _dist():
    import torch.distributed as dist
    return dist


@torch.no_grad()
def _eval_parts(model, images: _Images, batch_size: int, dev, world=1, rank=0, classes=0) -> dict[str, float]:
    """Bits/dim of ``model`` on ``images``: ``{"total": ..., **parts}`` (the parts of an
    auxiliary-variable model's ``log_prob_parts``, which add up to the total; none for
    a single network). Always float32, never under autocast, whatever the training's
    ``amp``: bf16 mixture parameters move bits/dim by 0.002-0.012. Each rank takes
    every ``world``-th image; the sums are all-reduced. ``classes``: a class-conditional
    model's class count (each image scored given its own label)."""
    was_training = model.training
    model.eval()
    parts_of = getattr(model, "log_prob_parts", None)
    names, total = None, None
    idx = torch.arange(rank, len(images), world)
    # a rank without test images (fewer than processes) still learns the part names, counting nothing
    weight = 1.0 if len(idx) else 0.0
    with torch.autocast(dev.type, enabled=False):
        for chunk in idx.split(batch_size) if len(idx) else [torch.zeros(1, dtype=torch.long)]:
            x, cond = _fetch(images, chunk, classes, dev)
            if parts_of is not None:
                parts = parts_of(x)
            else:
                parts = {"total": model.log_prob(x) if cond is None else model.log_prob(x, cond)}
            if names is None:
                names = list(parts)
                total = torch.zeros(len(names) + 1, dtype=torch.float64, device=dev)   # nats, dims
            for i, k in enumerate(names):
                total[i] -= weight * parts[k].double().sum()
            total[-1] += weight * x.numel()
    if world > 1:
        _dist().all_reduce(total)
    model.train(was_training)
    bpd = {k: float(total[i] / (total[-1] * LN2)) for i, k in enumerate(names)}
    if parts_of is None:
        return bpd
    return {"total": float(total[:-1].sum() / (total[-1] * LN2)), **bpd}


def _eval_bpd(model, images: _Images, batch_size: int, dev, world=1, rank=0, classes=0) -> float:
    return _eval_parts(model, images, batch_size, dev, world, rank, classes)["total"]


def bits_per_dim(model: nn.Module, data, *, batch_size: int = 64, device=None) -> float:
    """Bits/dim of ``model`` on ``data`` (a Dataset or uint8 tensor ``(N, C, H, W)``; for a
    class-conditional model a Dataset of ``(image, label)``):
    ``sum(-log_prob) / (N*C*H*W*ln 2)``, in eval mode, without gradients."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    images = _Images(data, "data")
    classes = class_count(model)
    _check_labels(images, classes, model)
    return _eval_bpd(model, images, check_int(batch_size, "batch_size", min_value=1), dev, classes=classes)


def _check_labels(images: "_Images | None", classes: int, model) -> None:
    """A class-conditional model needs ``(image, label)`` items (``ValueError`` naming the data)."""
    if classes and images is not None and not images.has_labels():
        raise ValueError(f"{images.name}: this {model.kind} is class-conditional (cond_channels={classes}): "
                         "its items must be (image, label) with label in [0, cond_channels), e.g. "
                         "torch.utils.data.TensorDataset(images, labels)")


# --------------------------------------------------------------------------- helpers

@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _json_normal(obj):
    return json.loads(json.dumps(obj))


def _gather_rng(world: int, dev: torch.device) -> dict:
    """RNG states of every rank: ``{"torch": [uint8 ...], "cuda": [...]}`` (CPU tensors)."""
    states = {"torch": torch.get_rng_state()}
    if dev.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(dev)
    if world == 1:
        return {k: [v] for k, v in states.items()}
    dist, out = _dist(), {}
    comm = dev if dist.get_backend() == "nccl" else torch.device("cpu")
    for k, v in states.items():
        t = v.to(comm)
        bufs = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(bufs, t)
        out[k] = [b.cpu() for b in bufs]
    return out


def _setup_distributed(device) -> tuple[int, int, torch.device, bool]:
    """-> (world_size, rank, device, created_group). Single process unless WORLD_SIZE > 1."""
    dev = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 1, 0, dev, False
    dist = _dist()
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist.get_world_size(), dist.get_rank(), dev, created


def _amp_dtype(amp, dev: torch.device, say):
    if amp is False or amp is None:
        return None
    if amp not in (True, "bf16", "fp16"):
        raise ValueError(f"amp must be False, True, 'bf16' or 'fp16', got {amp!r}")
    if dev.type != "cuda":
        say(f"amp={amp!r} ignored: mixed precision is used on CUDA only (device {dev})")
        return None
    if amp == "fp16" or (amp is True and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


# --------------------------------------------------------------------------- train

def train(model: nn.Module, train_data, *, test_data=None, steps: int, batch_size: int = 32,
          lr: float = 1e-3, lr_decay: float = 0.999995, ema_decay: float = 0.999,
          grad_clip: float | None = 1.0, adam_betas=(0.9, 0.999), amp=False, compile: bool = False, out_dir,
          resume: bool = False, eval_every: int | None = None, ckpt_every: int | None = 1000,
          seed: int = 0, device="cpu", threads: int | None = None, meta: dict | None = None,
          progress: bool = True, log=print) -> TrainResult:
    """Train ``model`` in place for ``steps`` optimizer steps in total.

    ``train_data`` / ``test_data``: Datasets of integer images ``(C, H, W)`` (or tuples
    starting with one) or tensors ``(N, C, H, W)`` of ``uint8``/``int64``, matching the
    model's ``channels`` and ``image_size``. Loss: mean bits/dim of the batch. A
    class-conditional model (a ``GatedPixelCNN`` / ``PixelCNNpp`` with ``cond_channels = K``)
    takes items ``(image, label)``, label in ``[0, K)``, and is trained and tested given
    ``cond = one_hot(label, K)`` (``meta["classes"]``, the class names, also goes into
    ``model.safetensors``' header as ``classes``).

    Adam with ``betas=adam_betas`` and learning rate ``lr * lr_decay**(t-1)`` at step
    ``t`` (from 1); gradients clipped to global norm ``grad_clip`` (``0`` or ``None``: no
    clipping). An EMA of the weights with decay ``min(ema_decay, (1 + t) / (10 + t))``
    (warm-up, so short runs get a usable EMA) is the model that is evaluated every
    ``eval_every`` steps and at the end (``None``: at the end only) and saved as
    ``out_dir/model.safetensors``. Each of those steps (with or without test data) also
    appends a line to ``out_dir/metrics.jsonl`` (:mod:`pixelaux.metrics`). Dropout is
    the model's own (its ``dropout``). ``amp``: ``False``, ``True`` (bf16 where
    supported, else fp16 with a grad scaler), ``"bf16"`` or ``"fp16"``, for the training
    steps; the test evaluation is float32 always; ``compile``: ``torch.compile`` the
    likelihood; both CUDA only (ignored on CPU). ``seed`` fixes the data order and seeds
    torch's global RNG (dropout) at the start of a fresh run; the model's initial
    weights are the caller's. ``threads``: torch intra-op threads on CPU during the run (restored
    afterwards); ``None`` picks one thread for small models (see the module notes) and
    leaves torch's setting otherwise. ``meta``: JSON-serialisable entries saved with
    the run (the command line keeps its ``--data`` there). ``log``: a callable taking one
    string (rank 0 only); ``progress``: a tqdm bar with the loss in bits/dim.

    The settings are checked as one :class:`TrainConfig` and saved in the training
    state. ``resume=False`` refuses an ``out_dir`` that already holds a run;
    ``resume=True`` requires one, checks that its kind and config equal ``model``'s and
    continues at its step with weights, EMA, Adam state and RNG as saved (settings
    that differ from the saved ones are used, and logged as a warning).

    The ``model`` passed in ends with the raw (non-averaged) weights, in train mode;
    the EMA weights are ``result.ema_model`` and ``out_dir/model.safetensors``.

    Raises ``FloatingPointError`` naming the step on a non-finite loss or gradient
    norm, before anything is written for that step. ``KeyboardInterrupt`` propagates;
    the files in ``out_dir`` are then those of the last checkpoint.
    """
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, lr_decay=lr_decay, ema_decay=ema_decay,
                      grad_clip=grad_clip, adam_betas=adam_betas, amp=amp, compile=compile, eval_every=eval_every,
                      ckpt_every=ckpt_every, seed=seed, device=str(device), threads=threads)
    if meta is not None:
        try:
            meta = json.loads(json.dumps(meta, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta must be JSON-serialisable, got {meta!r}: {e}") from None
    if not callable(log):
        raise TypeError(f"log must be callable, got {type(log).__name__}")
    model = unwrap(model)
    kind = getattr(model, "kind", None)
    model_class(kind)  # ValueError now, not at the first checkpoint, for unknown kinds
    world, rank, dev, created = _setup_distributed(cfg.device)
    place = _Placement(world, rank, dev)
    before = torch.get_num_threads()
    try:
        n_threads = _cpu_threads(model, cfg, dev)
        if n_threads is not None and n_threads != before:
            torch.set_num_threads(n_threads)
            if rank == 0:
                why = "as asked" if cfg.threads is not None else (
                    f"a small model: {_layer_values(model, cfg.batch_size)} activations per layer")
                log(f"cpu: {n_threads} intra-op thread{'s' if n_threads > 1 else ''} ({why})")
        return _train(model, train_data, test_data, cfg, out_dir=Path(out_dir), resume=resume,
                      meta=meta, place=place, progress=progress, log=log)
    finally:
        torch.set_num_threads(before)
        if created:
            _dist().destroy_process_group()


@dataclass(frozen=True)
class _Placement:
    """Where this process trains: ``world`` processes, this one ``rank``, on ``dev``."""
    world: int
    rank: int
    dev: torch.device


def _layer_values(model, batch_size: int) -> int:
    """Activations of one hidden layer for one batch: ``batch x hidden x H x W``."""
    hidden = int(getattr(model, "config", {}).get("hidden", 64))
    h, w = getattr(model, "image_size", (32, 32))
    return batch_size * hidden * h * w


def _cpu_threads(model, cfg: TrainConfig, dev: torch.device) -> int | None:
    """The intra-op threads to train with on CPU, or ``None`` to leave torch's setting."""
    if dev.type != "cpu":
        return None
    if cfg.threads is not None:
        return cfg.threads
    return 1 if _layer_values(model, cfg.batch_size) < SMALL_LAYER_VALUES else None


def _train(model, train_data, test_data, cfg: TrainConfig, *, out_dir: Path, resume: bool, meta,
           place: _Placement, progress, log):
    from tqdm.auto import tqdm

    train_images = _Images(train_data, "train_data")
    test_images = None if test_data is None else _Images(test_data, "test_data")
    want = (model.channels, *model.image_size)
    for imgs in (train_images, test_images):
        if imgs is not None:
            got = tuple(imgs.batch(torch.zeros(1, dtype=torch.long)).shape[1:])
            if got != want:
                raise ValueError(f"{imgs.name} images are {got} (C, H, W); the {model.kind} "
                                 f"is built for {want}")
    classes = class_count(model)
    for imgs in (train_images, test_images):
        _check_labels(imgs, classes, model)
    world, rank, dev = place.world, place.rank, place.dev
    say = log if rank == 0 else (lambda s: None)

    model.to(dev).train()
    if not resume and weight_norm.needs_init(model):   # a new weight-normed model: data-dependent init
        first = _Order(len(train_images), cfg.batch_size, world, 0, cfg.seed)(0)   # rank 0's batch: every rank alike
        weight_norm.initialize(model, *_fetch(train_images, first, classes, dev))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    amp_dtype = _amp_dtype(cfg.amp, dev, say)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    autocast = ((lambda: torch.autocast(dev.type, dtype=amp_dtype)) if amp_dtype is not None
                else contextlib.nullcontext)
    loss_fn = _NegLogProb(model)
    if world > 1:
        loss_fn = nn.parallel.DistributedDataParallel(
            loss_fn, device_ids=[dev.index] if dev.type == "cuda" else None)
    if cfg.compile:
        if dev.type == "cuda":
            loss_fn = torch.compile(loss_fn)
        else:
            say(f"compile=True ignored: torch.compile is used on CUDA only (device {dev})")

    state_path, model_path = out_dir / STATE_FILE, out_dir / MODEL_FILE
    run = dict(seed=cfg.seed, batch_size=cfg.batch_size, world_size=world, n_train=len(train_images))
    start, tracked = 0, {}
    if resume:
        if not state_path.is_file():
            raise ValueError(f"resume=True but there is no {STATE_FILE} in {str(out_dir)!r}")
        st = load_training_state(state_path)
        start = _restore(st, state_path, model, ema, opt, scaler, run, cfg, place, say)
        tracked = st.get("metrics") or {}             # older runs: none
        say(f"resumed {str(state_path)!r} at step {start}")
    else:
        if state_path.exists() or model_path.exists():
            raise ValueError(f"{str(out_dir)!r} already holds a run ({STATE_FILE} / {MODEL_FILE}); "
                             "pass resume=True to continue it, or choose another out_dir")
        torch.manual_seed(cfg.seed + rank)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in remove_stale_temp_files(out_dir):
            say(f"removed {name!r}, left by an interrupted checkpoint write")
    metrics = MetricsLog(out_dir, start, enabled=rank == 0)
    if metrics.dropped:
        say(f"{METRICS_FILE}: dropped {metrics.dropped} line{'s' if metrics.dropped > 1 else ''} after step "
            f"{start}, written after the last checkpoint")
    # what metrics.jsonl needs across a resume: the training time so far and the running
    # sum of training bits/dim since its last line (kept in the training state)
    track = dict(wall_s=float(tracked.get("wall_s", 0.0)), bpd_sum=float(tracked.get("bpd_sum", 0.0)),
                 bpd_n=int(tracked.get("bpd_n", 0)))
    clock = dict(t0=time.perf_counter(), steps_s=0.0, images=0)

    def metrics_line(step, test):
        """Appends the line of ``step`` (rank 0) and starts the next interval."""
        record = dict(step=step, train_bpd=track["bpd_sum"] / track["bpd_n"] if track["bpd_n"] else None,
                      test_bpd=None if test is None else test["total"])
        if test is not None and len(test) > 1:
            record["test_bpd_parts"] = {k: v for k, v in test.items() if k != "total"}
        record.update(lr=cfg.lr * cfg.lr_decay ** (step - 1),
                      images_per_s=clock["images"] / clock["steps_s"] if clock["steps_s"] > 0 else None,
                      wall_s=track["wall_s"] + time.perf_counter() - clock["t0"])
        metrics.write(record)
        track.update(bpd_sum=0.0, bpd_n=0)
        clock.update(steps_s=0.0, images=0)

    def checkpoint(step, train_bpd, test_bpd):
        rng = _gather_rng(world, dev)                  # collective: every rank
        if rank == 0:
            save_training_state(state_path, dict(
                step=step, kind=model.kind, config=model.config, run=run, train=cfg.to_dict(),
                meta=meta, metrics=dict(track, wall_s=track["wall_s"] + time.perf_counter() - clock["t0"]),
                model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else None, rng=rng))
            extra = {"step": step, "train_bpd": train_bpd}
            if test_bpd is not None:
                extra["test_bpd"] = test_bpd
            if classes and (meta or {}).get("classes") is not None:
                extra["classes"] = meta["classes"]          # for `pixelaux sample --class NAME`
            save(ema, model_path, extra=extra)
        if world > 1:
            _dist().barrier()

    order = _Order(len(train_images), cfg.batch_size, world, rank, cfg.seed)
    # initial=start: a resumed run's bar starts where it stopped and its rate counts only
    # the steps of this process
    bar = tqdm(total=cfg.steps, initial=min(start, cfg.steps), desc="train",
               disable=not (progress and rank == 0), unit="step", dynamic_ncols=True)
    if log is print and not bar.disable:
        say = bar.write                                # keeps the bar intact
    window: collections.deque = collections.deque(maxlen=100)
    mean = lambda: sum(window) / len(window) if window else None
    steps, test_bpd, step = cfg.steps, None, start
    last_ckpt = f"step {start}" if resume else "none"
    try:
        for step in range(start + 1, steps + 1):       # `step` = steps done after this one
            t_step = time.perf_counter()
            x, cond = _fetch(train_images, order(step - 1), classes, dev)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * cfg.lr_decay ** (step - 1)
            with autocast():
                nll = loss_fn(x) if cond is None else loss_fn(x, cond)
            loss = nll.float().mean() / (x[0].numel() * LN2)
            value = loss.detach().clone()
            if world > 1:
                _dist().all_reduce(value)
                value /= world
            value = value.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"non-finite training loss ({value} bits/dim) at step {step}; stopped "
                    f"without writing a checkpoint for it (last checkpoint: {last_ckpt})")
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.unscale_(opt)
            # max_norm inf: the norm (for the check below), the gradients unchanged
            norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            if scaler is not None:                      # skips steps with inf gradients
                scaler.step(opt)
                scaler.update()
            else:
                if not torch.isfinite(norm):
                    raise FloatingPointError(
                        f"non-finite gradient norm at step {step}; stopped without writing a "
                        f"checkpoint for it (last checkpoint: {last_ckpt})")
                opt.step()
            _ema_update(ema, model, min(cfg.ema_decay, (1.0 + step) / (10.0 + step)))
            window.append(value)
            track["bpd_sum"] += value
            track["bpd_n"] += 1
            clock["images"] += x.shape[0] * world
            clock["steps_s"] += time.perf_counter() - t_step
            bar.update(1)
            bar.set_postfix(bpd=f"{value:.4f}")
            test_now = None
            if cfg.eval_every and step % cfg.eval_every == 0 and step != steps:
                test = None
                if test_images is not None:
                    test = _eval_parts(ema, test_images, cfg.batch_size, dev, world, rank, classes)
                    test_now = test_bpd = test["total"]
                    say(f"step {step}: train {mean():.4f} bits/dim, test (EMA) {test_bpd:.4f} bits/dim")
                metrics_line(step, test)
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step != steps:
                checkpoint(step, mean(), test_now)
                last_ckpt = f"step {step}"
        if start >= steps:
            say(f"the run in {str(out_dir)!r} is already at step {start}, not below the {steps} steps asked for; "
                "nothing to train")
        test = None
        if test_images is not None:
            test = _eval_parts(ema, test_images, cfg.batch_size, dev, world, rank, classes)
            test_bpd = test["total"]
        if start < steps:
            metrics_line(steps, test)
            checkpoint(steps, mean(), test_bpd)
            last_ckpt = f"step {steps}"
    except KeyboardInterrupt:
        say(f"interrupted at step {step}; last checkpoint in {str(out_dir)!r}: {last_ckpt}")
        raise
    finally:
        bar.close()
    summary = f"step {max(start, steps)}: " + (f"train {mean():.4f} bits/dim" if window else "no steps run")
    if test_bpd is not None:
        summary += f", test (EMA) {test_bpd:.4f} bits/dim"
    say(summary + f"; model: {str(model_path)!r}")
    return TrainResult(step=max(start, steps), train_bpd=mean(), test_bpd=test_bpd,
                       checkpoint=model_path, training_state=state_path, ema_model=ema)


def _restore(st, path, model, ema, opt, scaler, run, cfg: TrainConfig, place: _Placement, say) -> int:
    """Load a training state into model / ema / opt / scaler / RNG; -> the step."""
    what = f"training state {str(path)!r}"
    if st.get("kind") != model.kind or st.get("config") != _json_normal(model.config):
        raise ValueError(f"{what} is a {st.get('kind')} with config {st.get('config')}, but the "
                         f"model given is a {model.kind} with config {_json_normal(model.config)}")
    for name, module in (("model", model), ("ema", ema)):
        check_state_dict(module, st[name], f"{what} ({name})")
        module.load_state_dict(st[name], strict=True)
    opt.load_state_dict(st["optimizer"])
    for group in opt.param_groups:                     # the settings of this call (lr: set per step)
        group["betas"] = cfg.adam_betas
    if scaler is not None and st.get("scaler") is not None:
        scaler.load_state_dict(st["scaler"])
    saved_run = st.get("run", {})
    changed = {k: (saved_run.get(k), v) for k, v in run.items() if saved_run.get(k) != v}
    if changed:
        say(f"warning: resuming with changed settings {changed} (saved, now): the data order "
            "differs from an uninterrupted run")
    saved_cfg = st.get("train") or {}
    with contextlib.suppress(TypeError, ValueError):    # as this version reads it (None clip = 0, ...)
        saved_cfg = {k: v for k, v in TrainConfig.from_dict(saved_cfg).to_dict().items() if k in saved_cfg}
    ignore = {"steps", "eval_every", "ckpt_every", "device", "threads"} | set(run)
    differ = {k: (saved_cfg[k], v) for k, v in cfg.to_dict().items()
              if k in saved_cfg and k not in ignore and saved_cfg[k] != v}
    if differ:
        say(f"warning: resuming with changed settings {differ} (saved, now): the result differs "
            "from an uninterrupted run")
    world, rank, dev = place.world, place.rank, place.dev
    rng = st.get("rng", {})
    if len(rng.get("torch", [])) == world:
        torch.set_rng_state(rng["torch"][rank].cpu())
        if dev.type == "cuda" and len(rng.get("cuda", [])) == world:
            torch.cuda.set_rng_state(rng["cuda"][rank].cpu(), dev)
    else:
        torch.manual_seed(run["seed"] + rank + int(st["step"]))
    return int(st["step"])


# --------------------------------------------------------------------------- saved runs

@dataclass(frozen=True)
class SavedRun:
    """What :func:`read_run` finds in a run directory.

    ``kind`` and ``config``: the model (``pixelaux.checkpoint.from_config(kind, config)``
    rebuilds it); ``step``: optimizer steps done; ``settings``: the run's
    :class:`TrainConfig`, or ``None`` for a run saved before it was recorded (then
    ``run`` still holds its seed and batch size); ``meta``: the ``meta`` given to
    :func:`train` (``{}`` if none).
    """
    path: Path
    kind: str
    config: dict
    step: int
    settings: TrainConfig | None
    run: dict
    meta: dict


def read_run(out_dir) -> SavedRun:
    """The saved settings of the training run in ``out_dir`` (from its training state).

    ``ValueError`` naming the path when there is no run there or its state is damaged.
    """
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{str(Path(out_dir))!r} holds no training run (no {STATE_FILE})")
    st = load_training_state(path)
    saved = st.get("train")
    try:
        cfg = TrainConfig.from_dict(saved) if isinstance(saved, dict) else None
    except (TypeError, ValueError) as e:
        raise ValueError(f"training state {str(path)!r} holds invalid settings: {e}") from None
    return SavedRun(path=path, kind=st.get("kind"), config=st.get("config") or {}, step=int(st.get("step", 0)),
                    settings=cfg, run=st.get("run") or {}, meta=st.get("meta") or {})
