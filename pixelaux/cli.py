"""The ``pixelaux`` command line.

    pixelaux sample   --out samples.png            samples from a model (default: "default")
    pixelaux colorize GRAY.png --out colour.png    colourings of a gray photo
    pixelaux upscale  SMALL.png --out up.png       super-resolution through the pyramid levels
    pixelaux complete IMAGE.png --keep-rows 16     completions of the unknown pixels
    pixelaux score    IMAGE...                     bits/dim (with the gray/colour split)
    pixelaux train    --out runs/x                 train a model
    pixelaux bench                                 naive vs cached sampling benchmark
    pixelaux models                                the embedded models
    pixelaux import-pixelcnnpp CKPT --out M.safetensors   convert a PixelCNN++ checkpoint

Every error is one line on stderr and a non-zero exit status: 2 for a usage error
(an option the parser refuses), 1 for anything else. Output paths and optional
dependencies are checked before any work starts. Sizes are written HxW (height
first), as ``--size H W`` takes them.

Argument parsing lives here only; the library modules take plain Python values.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import time
import warnings

from . import run_config

EXIT_USAGE = 2
EXIT_ERROR = 1


class CliError(Exception):
    """A user-facing error: printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(f"{self.prog}: {message}")

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        check = getattr(self, "post_parse_check", None)     # a sub-command's checks across its options
        if check is not None:
            check(self, ns)
        return ns, rest


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v


def _nonneg_int(text):
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    return v


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _seed(text):
    v = _int(text)
    if not -2 ** 63 <= v < 2 ** 64:
        raise argparse.ArgumentTypeError(f"expected a seed in [-2**63, 2**64), got {v}")
    return v


def _seed_nonneg(text):
    v = _int(text)
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**63), got {v}")
    return v


def _data_spec(text):
    from .data import check_spec
    try:
        check_spec(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected patches, folder:PATH or cifar10:PATH, "
                                         f"got {text!r}") from None
    return text


class _SizeAction(argparse.Action):
    """``--size N`` or ``--size H W`` -> ``(H, W)``; anything else is a usage error."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (1, 2):
            parser.error(f"argument {option_string}: expected N or H W, got {len(values)} values "
                         f"({' '.join(str(v) for v in values)})")
        setattr(namespace, self.dest, (values[0], values[-1]))


def _add_size_option(p, help_text):
    p.add_argument("--size", type=_positive_int, nargs="+", action=_SizeAction, default=None,
                   metavar="N", help=f"{help_text}: N (square) or H W")


class _VersionAction(argparse.Action):
    """``--version``: the version and the backends this install has (computed only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


def _temperature(text):
    from .sampling import TEMPERATURE_RANGE
    v = _positive_float(text)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"expected a temperature from {lo:g} to {hi:g} (below, every pixel is its "
                                         f"distribution's mode; above, the samples are noise), got {text}")
    return v


def _add_consistent_option(p):
    p.add_argument("--consistent", action=argparse.BooleanOptionalAction, default=None,
                   help="consistent decoding (exact likelihoods; samples keep their gray view / lower level): "
                        "default as the checkpoint says (on for models trained with it, off for older ones)")


def _add_sampling_options(p, n_default=16, n_name="--n", model_default="default", out_default="samples.png"):
    p.add_argument("--model", default=model_default,
                   help=f"embedded model name (see `pixelaux models`) or checkpoint path (default: {model_default})")
    _add_consistent_option(p)
    names = [n_name, "-n"] if n_name == "--n" else [n_name]     # -n: torchrun's parser takes --n as its own
    p.add_argument(*names, dest="n", type=_positive_int, default=n_default,
                   help=f"number of samples (default: {n_default})")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument("--engine", choices=["cached", "naive"], default="cached",
                   help="cached (fast, exact) or naive (a full forward pass per pixel)")
    p.add_argument("--backend", choices=["auto", "torch", "cpp", "triton"], default="auto",
                   help="backend of the cached engine (default: auto)")
    p.add_argument("--temperature", type=_temperature, default=1.0,
                   help="sampling temperature, 0.01 to 10: below 1 sharper, above 1 more varied (default: 1)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default=None, metavar="GRID",
                   help=f"grid image to write (default: {out_default}, replaced if it exists; none when only "
                        "--out-dir is given), in the format its extension names: .png, .webp (both lossless), "
                        ".jpg/.jpeg (lossy)")
    p.add_argument("--out-dir", default=None, help="also write each image as a PNG in this folder")
    p.add_argument("--scale", type=_positive_int, default=4, help="enlarge the grid image by this factor (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


SIZE_RULE = ("an image is used at its own size when the model can take it (gated and grayscale models: "
             "any size; pyramid and PixelCNN++ models: sides divisible by their factor); another size is "
             "refused unless --resize, which resizes it to the model's size and says so")

#: ``pixelaux train --model-kind`` -> model class name (``gray-pyramid``: the grayscale
#: model whose 4-bit gray view is itself a pyramid, docs/design.md section 1.3)
TRAIN_MODEL_KINDS = run_config.MODEL_KIND_NAMES

#: ``pixelaux train``'s defaults (run_config.default_config). An option left out takes
#: this value on a new run (unless --preset or --config set it) and the saved one with
#: --resume.
TRAIN_DEFAULTS = dict(model_kind="gated", data="patches", size=None, hidden=64, blocks=4, dropout=0.0,
                      steps=10000, batch_size=32, lr=1e-3, lr_decay=0.999995, adam_betas=(0.9, 0.999),
                      ema=0.999, clip=1.0, seed=0, eval_every=1000, ckpt_every=1000, device="auto",
                      threads=None)

#: the options of a run's configuration, in the order they are applied over --preset and
#: --config (``--model-kind`` first: it replaces the model; ``--arch`` next: it may change
#: a stage's kind; then each --set, then the others: :func:`_train_layers`)
TRAIN_CONFIG_OPTIONS = ("model_kind", "arch", "hidden", "blocks", "dropout", "scales", "nr_mix", "weight_norm",
                        "size", "data", "class_cond", "steps", "batch_size", "global_batch", "lr", "lr_decay",
                        "adam_betas", "ema", "clip", "seed", "eval_every", "ckpt_every", "device", "threads")


def _number_in(lo, hi, lo_open=False, hi_open=False):
    """An argparse type: a finite number in the interval ``lo .. hi`` (open where said)."""
    shown = (f"{'(' if lo_open else '['}{lo:g}, " + ("inf)" if hi is None else f"{hi:g}{')' if hi_open else ']'}"))

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = (v != v or v in (float("inf"), float("-inf")) or v < lo or (lo_open and v == lo)
               or (hi is not None and (v > hi or (hi_open and v == hi))))
        if bad:
            raise argparse.ArgumentTypeError(f"expected a number in {shown}, got {text}")
        return v
    return parse


def _key_value(text):
    """``--set PATH=VALUE`` -> ``(PATH, VALUE)``, VALUE read as JSON (a bare word: a string)."""
    import json
    path, eq, value = text.partition("=")
    if not eq or not path.strip():
        raise argparse.ArgumentTypeError(f"expected PATH=VALUE such as model.encoder_blocks=8, got {text!r}")
    try:
        parsed = json.loads(value, parse_constant=lambda c: c)      # NaN / Infinity: kept as text, refused later
    except ValueError:
        parsed = value
    return path.strip(), parsed


def _check_train_args(parser, ns):
    """After parsing ``train``: --out is required unless --print-config (a usage error)."""
    if ns.out is None and not ns.print_config:
        parser.error("the following arguments are required: --out (the run directory; not needed with "
                     "--print-config)")


def _add_train_options(p):
    d = TRAIN_DEFAULTS
    p.post_parse_check = _check_train_args
    p.add_argument("--preset", choices=list(run_config.PRESETS), default=None, metavar="NAME",
                   help="start from a built-in configuration of a paper's run (each says which in its comment; "
                        f"see --print-config): {', '.join(run_config.PRESETS)}")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a run configuration, JSON (what --print-config prints, edited), over --preset; the "
                        "options given override both")
    p.add_argument("--set", action="append", type=_key_value, default=None, metavar="PATH=VALUE",
                   help="set one key of the configuration, VALUE as JSON, e.g. model.encoder_blocks=8 or "
                        "model.prior.hidden=32 (repeatable; over --config, --model-kind and --arch, under the "
                        "other options)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration as JSON (the model's kind and every constructor "
                        "argument, optimizer, data, batch, steps) and exit without training; --out not needed")
    p.add_argument("--model-kind", choices=sorted(TRAIN_MODEL_KINDS), default=None,
                   help="gated: one GatedPixelCNN; pixelcnnpp: one PixelCNN++; grayscale: 4-bit gray then colour "
                        "given gray; pyramid: multi-scale; gray-pyramid: the gray view as a pyramid, then colour "
                        f"(default: {d['model_kind']})")
    p.add_argument("--arch", choices=["gated", "pixelcnnpp"], default=None,
                   help="the network of every part: gated (GatedPixelCNN) or pixelcnnpp (PixelCNN++ over --scales "
                        "resolutions)")
    p.add_argument("--scales", type=_positive_int, default=None,
                   help="resolutions of every PixelCNN++ network (sides divisible by 2**(scales-1))")
    p.add_argument("--nr-mix", type=_positive_int, default=None,
                   help="logistic mixture components of every network (default: 10)")
    p.add_argument("--weight-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="weight-normalize every conv, with data-dependent init from the first batch, as "
                        "PixelCNN++ (default: off)")
    p.add_argument("--data", type=_data_spec, default=None,
                   help="patches (built-in natural-image patches, needs scikit-image), "
                        "folder:PATH (PNG/JPEG files, no test set; for --class-cond one sub-folder per class) or "
                        "cifar10:PATH "
                        f"(cifar-10-python.tar.gz or its extracted folder) (default: {d['data']})")
    _add_size_option(p, "image size (default: 32; folder: the images' own size, otherwise they are resized)")
    p.add_argument("--hidden", type=_positive_int, default=None, help=f"channels per layer (default: {d['hidden']})")
    p.add_argument("--blocks", type=_nonneg_int, default=None,
                   help=f"gated residual blocks (default: {d['blocks']})")
    p.add_argument("--dropout", type=_number_in(0, 1, hi_open=True), default=None,
                   help="dropout rate in [0, 1) of every network of the model, element-wise as PixelCNN++ "
                        f"(reference: 0.5) (default: {d['dropout']:g})")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help=f"optimizer steps in total (default: {d['steps']}; with --resume: the saved total)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"images per step and process (default: {d['batch_size']})")
    p.add_argument("--global-batch", type=_positive_int, default=None,
                   help="images per step over all processes, instead of --batch-size: each of torchrun's "
                        "WORLD_SIZE processes takes an equal share (the presets: 128, the reference's 16 x 8 GPUs)")
    p.add_argument("--class-cond", action=argparse.BooleanOptionalAction, default=None,
                   help="class-conditional: the label as a one-hot global cond (--data cifar10:PATH, or "
                        "folder:PATH with one sub-folder per class; a gated or pixelcnnpp model); sample with "
                        "`pixelaux sample --class K`")
    p.add_argument("--lr", type=_positive_float, default=None, help=f"Adam learning rate (default: {d['lr']})")
    p.add_argument("--lr-decay", type=_number_in(0, 1, lo_open=True), default=None,
                   help=f"per-step decay of the learning rate, in (0, 1]: step t uses lr * lr_decay**(t-1) "
                        f"(default: {d['lr_decay']})")
    p.add_argument("--adam-betas", type=_number_in(0, 1, hi_open=True), nargs=2, default=None, metavar=("B1", "B2"),
                   help="Adam's beta1 and beta2, each in [0, 1) (default: 0.9 0.999; reference PixelCNN++: "
                        "0.95 0.9995)")
    p.add_argument("--ema", type=_number_in(0, 1), default=None,
                   help=f"decay of the EMA (Polyak average) of the weights that is tested and saved, in [0, 1] "
                        f"(default: {d['ema']}; reference: 0.9995)")
    p.add_argument("--clip", type=_number_in(0, None), default=None,
                   help=f"clip the gradients' global norm to this; 0: no clipping (default: {d['clip']:g}; "
                        "reference: 0)")
    p.add_argument("--out", default=None,
                   help="run directory: the checkpoints, the training state, metrics.jsonl and the resolved "
                        "config.json; with --plot-metrics: the PNG to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its saved model, data and settings (its config.json); "
                        "an option that contradicts them is refused (--steps, --eval-every, --ckpt-every, --device "
                        "and --threads may change)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--seed", type=_seed_nonneg, default=None,
                   help=f"seed of the initial weights and the data order (default: {d['seed']})")
    p.add_argument("--eval-every", type=_positive_int, default=None,
                   help=f"test, and append a line to metrics.jsonl, every N steps (default: {d['eval_every']})")
    p.add_argument("--ckpt-every", type=_positive_int, default=None,
                   help=f"checkpoint every N steps (default: {d['ckpt_every']})")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU intra-op threads (default: one for small models, where a second thread gains "
                        "little and costs much on a busy machine; torch's default otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--plot-metrics", default=None, nargs="+", metavar="RUN_DIR",
                   help="instead of training: draw the curves of RUN_DIR/metrics.jsonl (train and test bits/dim, "
                        "learning rate) into the PNG --out (needs matplotlib); several RUN_DIRs: their test and "
                        "train curves in one picture, to compare runs")


def _add_bench_options(p):
    from .bench import PRESETS, PROVIDERS
    p.add_argument("--preset", default="bench-32", choices=sorted(PRESETS),
                   help="model configuration (flat-pp64 / pyramid-64 and the -128 pair: a flat PixelCNN++ against "
                        "a pyramid with small upper levels; a composite adds the encoders' share, enc %%)")
    p.add_argument("--batch", type=_positive_int, nargs="+", default=[1, 16], help="batch sizes (default: 1 16)")
    p.add_argument("--providers", nargs="+", default=["naive", "cached-torch", "cached-cpp"],
                   choices=[q for q in PROVIDERS if q != "forward"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=_seed_nonneg, default=0)
    p.add_argument("--naive-pixels", type=_positive_int, default=8,
                   help="naive engine: pixels timed, then extrapolated (default: 8)")
    p.add_argument("--repeat", type=_positive_int, default=1, help="timed repetitions, the minimum is kept (default: 1)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--csv", default=None, help="append rows to this CSV")
    p.add_argument("--plot", default=None, help="write a PNG bar chart here (needs matplotlib)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pixelaux", description="PixelCNN models with auxiliary variables and fast exact sampling.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Run `pixelaux COMMAND --help` for a command's options. Sizes: " + SIZE_RULE + ".")
    p.add_argument("--version", action=_VersionAction, help="the version and the backends this install has")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("sample", help="sample images into a grid image")
    _add_sampling_options(s)
    _add_size_option(s, "image size (default: the model's)")
    s.add_argument("--class", dest="class_label", default=None, metavar="K",
                   help="a class-conditional model (train --class-cond): sample class K, a number from 0 or a "
                        "class name its checkpoint lists, for every image")

    c = sub.add_parser("colorize", help="colourings of a gray photo, side by side with it")
    c.add_argument("image", help="gray (or colour, taken as gray) image file")
    _add_sampling_options(c, n_default=4, n_name="--samples", out_default="colorized.png")
    c.add_argument("--max-side", type=_positive_int, default=64,
                   help="resize (keeping the aspect ratio) when a side is longer than this; said when done "
                        "(default: 64)")

    u = sub.add_parser("upscale", help="super-resolution through the pyramid levels")
    u.add_argument("image", help="small image; must be a lower pyramid level size unless --resize")
    _add_sampling_options(u, n_default=4, n_name="--samples", model_default="pyramid", out_default="upscaled.png")
    u.add_argument("--resize", action="store_true",
                   help="resize the image to the pyramid's second-largest level first (said when done)")

    k = sub.add_parser("complete", help="completions of the unknown part of an image")
    k.add_argument("image", help="image file")
    g = k.add_mutually_exclusive_group(required=True)
    g.add_argument("--mask", help="mask image of the same size: white pixels are completed, black ones kept")
    g.add_argument("--keep-rows", type=_positive_int, help="keep the top N rows, complete the rest")
    _add_sampling_options(k, n_default=4, n_name="--samples", out_default="completed.png")
    k.add_argument("--resize", action="store_true",
                   help="resize image (and mask) to the model's image size first (said when done)")

    sc = sub.add_parser("score", help="bits/dim of images (gray/colour or per-level split)")
    sc.add_argument("images", nargs="+", help="image files")
    sc.add_argument("--model", default="default", help="embedded model name or checkpoint path")
    _add_consistent_option(sc)
    sc.add_argument("--resize", action="store_true",
                    help="resize each image to the model's image size first (said when done); without it an "
                         "image is scored at its own size if the model can take it")
    sc.add_argument("--device", default="cpu")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="train a model (see --help)")
    _add_train_options(t)

    b = sub.add_parser("bench", help="naive vs cached sampling benchmark")
    _add_bench_options(b)

    sub.add_parser("models", help="list the embedded models")

    ip = sub.add_parser("import-pixelcnnpp", help="convert a PixelCNN++ checkpoint (PyTorch port) to pixelaux")
    ip.add_argument("checkpoint", help="state dict saved with torch.save(model.state_dict(), path); read with "
                                       "torch.load(weights_only=True) only")
    ip.add_argument("--out", required=True, help="pixelaux checkpoint to write (.safetensors)")
    ip.add_argument("--size", type=_positive_int, nargs=2, default=(32, 32), metavar=("H", "W"),
                    help="the model's default image size, divisible by 4 (default: 32 32)")
    return p


# ----------------------------------------------------------------------------- helpers

def _load(args):
    import torch

    from .pretrained import load
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CliError(f"--device: not a torch device: {args.device!r}") from None
    try:
        return load(args.model, map_location=device, consistent=getattr(args, "consistent", None))
    except ValueError as e:
        if "consistent" not in str(e):
            raise
        raise CliError(f"--consistent: {e}") from None


def _sample_kwargs(args):
    import torch
    return dict(engine=args.engine, backend=args.backend, temperature=args.temperature,
                generator=torch.Generator().manual_seed(args.seed), progress=not args.no_progress)


def _hw(size) -> str:
    """``(H, W)`` -> ``"HxW"``, the one way sizes are written on the command line."""
    return f"{size[0]}x{size[1]}"


def _say_engine(args, model):
    """Print the engine and backend that will run, with the reason when ``auto`` fell back
    to the torch backend (instead of a RuntimeWarning later)."""
    import torch

    from .engines import REGISTRY
    from .sampling import resolve_engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # said on the engine line instead
        engine, backend = resolve_engine(model, args.engine, args.backend)
    note = ""
    if engine == "cached" and args.backend == "auto" and backend == "torch":
        device = torch.device(args.device)
        for b in REGISTRY.values():                          # the ones auto would have taken here
            ok, why = b.available(device) if device.type in b.auto_on else (True, "")
            if not ok:
                note = f" (the {b.label} backend is unavailable: {why})"
                break
    print(f"engine: {engine}" + (f", backend: {backend}" if backend else "") + note)


def _check_file_output(path, flag):
    """``CliError`` unless ``path`` can be written as a file: not a folder, and its nearest
    existing parent is a writable folder."""
    if os.path.isdir(path):
        raise CliError(f"{flag} {path}: is a folder, expected a file name")
    _check_parent(os.path.dirname(os.path.abspath(path)), flag, path)


def _check_dir_output(path, flag):
    """``CliError`` unless ``path`` is a folder or can be created as one."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise CliError(f"{flag} {path}: exists and is not a folder")
        if not os.access(path, os.W_OK):
            raise CliError(f"{flag} {path}: the folder is not writable")
        _check_parent(path, flag, path)
        return
    _check_parent(os.path.dirname(os.path.abspath(path)), flag, path)


def _check_parent(parent, flag, path):
    """The nearest existing folder above ``path`` takes new files: a probe file is created
    there and removed (``os.access`` says yes for root in /proc and /sys, where nothing
    can be created)."""
    import tempfile
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CliError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise CliError(f"{flag} {path}: cannot create it, {parent} is not writable")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".pixelaux-probe-")
    except OSError as e:
        raise CliError(f"{flag} {path}: cannot create files in {parent} ({e.strerror or e})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.remove(probe)


def _check_sampling_outputs(args, default_out):
    """Before any work: the grid's format and every output path (``--out``, ``--out-dir``)."""
    from .images import image_format
    out = args.out or (None if args.out_dir else default_out)
    if out:
        _check_file_output(out, "--out")
        try:
            image_format(out)
        except ValueError as e:
            raise CliError(f"--out: {e}") from None
    if args.out_dir:
        _check_dir_output(args.out_dir, "--out-dir")


def _check_grid(args, n: int, size, nrow=None) -> int:
    """Before sampling: the grid of ``n`` images of ``size`` enlarged by ``--scale`` fits its
    format and the memory (else ``CliError``); returns the bytes writing it takes."""
    from .images import check_grid
    from .resources import InsufficientMemoryError
    out = args.out or (None if args.out_dir else "default.png")       # the defaults are PNG
    if not out:
        return 0
    for scale in dict.fromkeys((1, args.scale)):    # at scale 1 first: is it the images or --scale?
        try:
            gh, gw = check_grid(out, n, size[0], size[1], nrow=nrow, scale=scale)
        except (ValueError, InsufficientMemoryError) as e:
            what = f"--scale {scale}" if scale > 1 else f"a grid of {n} images of {_hw(size)}"
            raise CliError(f"{what}: {e}") from None
    return 3 * gh * gw + n * 3 * size[0] * size[1]


def _write_outputs(args, images, bits, default_out, nrow=None):
    from .images import save_grid, save_images
    out = args.out or (None if args.out_dir else default_out)
    if out:
        replaced = os.path.exists(out)
        save_grid(images, out, bits=bits, nrow=nrow, scale=args.scale)
        print(f"wrote {out}" + (" (replaced the file that was there)" if replaced else ""))
    if args.out_dir:
        paths = save_images(images, args.out_dir, bits=bits)
        print(f"wrote {len(paths)} images to {args.out_dir}")


def _read_image(path, channels: int):
    """``images.read_image``, its conversions said on stderr (a note each)."""
    from .images import read_image
    try:
        return read_image(path, channels=channels, say=lambda msg: print(f"note: {msg}", file=sys.stderr))
    except IsADirectoryError as e:
        raise CliError(str(e)) from None


def _fit(img, size, resize, what, why=None, wanted="the model takes"):
    """Resize ``img`` to ``size`` when asked (and say so); otherwise refuse a mismatch
    (``wanted``: what sets the size, in the message)."""
    from .images import resize as do_resize
    if tuple(img.shape[1:]) == tuple(size):
        return img
    if not resize:
        reason = f" ({why})" if why else ""
        raise CliError(f"{what} is {_hw(img.shape[1:])} but {wanted} {_hw(size)}{reason}; "
                       "pass --resize to resize it")
    print(f"resized {what} from {_hw(img.shape[1:])} to {_hw(size)}")
    return do_resize(img, size)


def _size_problem(model, size) -> str | None:
    """Why ``model`` cannot take images of ``size`` ``(H, W)``, or ``None`` if it can."""
    check = getattr(model, "check_size", None)
    if callable(check):
        try:
            check(tuple(size), "size")
        except ValueError as e:
            return str(e)
        return None
    if getattr(model, "kind", None) == "PyramidPixelCNN":      # until every model has check_size
        f = 2 ** (model.num_levels - 1)
        if size[0] % f or size[1] % f:
            return f"a {model.num_levels}-level pyramid takes sides divisible by {f}"
    return None


def _fit_model(img, model, resize, what):
    """The one size rule (:data:`SIZE_RULE`): ``img`` at its own size if ``model`` takes it,
    else resized to the model's size with ``--resize``, else refused."""
    problem = _size_problem(model, img.shape[1:])
    if problem is None and not resize:
        return img
    return _fit(img, model.image_size, resize, what, why=problem)


# ----------------------------------------------------------------------------- commands

def _torchrun_world() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 outside torchrun."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise CliError(f"WORLD_SIZE must be a whole number, got {os.environ['WORLD_SIZE']!r}") from None


@contextlib.contextmanager
def _process_group(args):
    """Under torchrun (``WORLD_SIZE`` > 1): a ``torch.distributed`` process group for the
    command, gloo on CPU and nccl on CUDA (``--device cuda`` becomes ``cuda:LOCAL_RANK``),
    destroyed at the end; yields ``(world, rank)``. Outside torchrun: ``(1, 0)``."""
    if _torchrun_world() <= 1:
        yield 1, 0
        return
    import torch
    import torch.distributed as dist
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CliError(f"--device: not a torch device: {args.device!r}") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        args.device = str(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_world_size(), dist.get_rank()
    finally:
        dist.destroy_process_group()


def _share(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share of images ``0 .. n-1``: ``(first index, count)``;
    the first ``n % world`` ranks take one image more."""
    base, extra = divmod(n, world)
    return rank * base + min(rank, extra), base + (rank < extra)


def _gather_images(x, n: int, world: int, rank: int):
    """On rank 0: the images of every rank in rank order, ``(n, C, H, W)``; else ``None``."""
    import torch
    import torch.distributed as dist
    most = _share(n, world, 0)[1]                      # rank 0 has the largest share
    buf = torch.zeros((most, *x.shape[1:]), dtype=x.dtype, device=x.device)
    buf[:len(x)] = x
    parts = [torch.empty_like(buf) for _ in range(world)] if rank == 0 else None
    dist.gather(buf, parts, dst=0)
    if rank != 0:
        return None
    return torch.cat([p[:_share(n, world, r)[1]] for r, p in enumerate(parts)])


#: the share of the available memory one chunk of images may take (the rest: the kept
#: images, Python, the grid, and what the estimate does not count)
CHUNK_MEMORY_FRACTION = 0.7


def _memory_check_on() -> bool:
    return os.environ.get("PIXELAUX_MEMORY_CHECK", "1").strip().lower() not in ("0", "false", "no", "off")


def _sampling_memory(model, size, args):
    """``(available, first image, each further image)`` bytes of sampling ``size`` images
    (``resources.estimate_sampling_bytes``, linear in n), or ``None`` when the memory is
    unknown or its check is off; ``CliError`` in one line when not even one image fits."""
    import torch

    from . import resources
    from .resources import format_bytes
    from .sampling import resolve_engine
    device = torch.device(args.device)
    avail = resources.available_bytes(device) if _memory_check_on() else None
    if avail is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        engine, backend = resolve_engine(model, args.engine, args.backend)
    one = resources.estimate_sampling_bytes(model, 1, size, engine, backend)
    usable = int(avail * CHUNK_MEMORY_FRACTION)
    if one > usable:
        raise CliError(f"one {_hw(size)} image needs about {format_bytes(one)} of {device.type} memory to sample, "
                       f"but only {format_bytes(usable)} can be used ({format_bytes(avail)} available); "
                       "use a smaller --size (PIXELAUX_MEMORY_CHECK=0 skips this check)")
    return avail, one, max(1, resources.estimate_sampling_bytes(model, 2, size, engine, backend) - one)


def _chunk_size(count: int, memory, reserved: int = 0) -> int:
    """The most images one ``sample`` call may take within ``memory``
    (:func:`_sampling_memory`) after ``reserved`` bytes (the grid), at most ``count``.
    Images sampled in chunks are the images of one call (each chunk starts at its own
    offset of the seed's sequence)."""
    if memory is None:
        return count
    avail, one, per_image = memory
    budget = int(avail * CHUNK_MEMORY_FRACTION) - reserved
    return max(1, min(count, 1 + (budget - one) // per_image))


def _class_cond(args, model):
    """``sample --class K``: the one-hot cond ``(1, K)`` of a class-conditional model (a
    gated / PixelCNN++ model with ``cond_channels``), or ``None`` without --class; one line
    for --class on another model, a class out of range or unknown, and for a
    class-conditional model without --class."""
    import torch

    from .checkpoint import read_header
    from .training import class_count
    n = class_count(model)
    label = getattr(args, "class_label", None)
    if label is None:
        if n:
            raise CliError(f"{args.model!r} is class-conditional ({n} classes): give --class K, 0 to {n - 1}")
        return None
    if not n:
        raise CliError(f"--class {label}: {args.model!r} is not class-conditional (a {model.kind} without a "
                       "class cond; train one with --class-cond)")
    names = None
    if os.path.isfile(args.model):
        with contextlib.suppress(ValueError, OSError):
            names = read_header(args.model).get("classes")
    names = names if isinstance(names, list) and len(names) == n else None
    if label.lstrip("-").isdigit():
        k = int(label)
        if not 0 <= k < n:
            raise CliError(f"--class {label}: the model has {n} classes, 0 to {n - 1}")
    elif names and label in names:
        k = names.index(label)
    else:
        known = f"one of {', '.join(names)} or 0 to {n - 1}" if names else f"a number from 0 to {n - 1}"
        raise CliError(f"--class {label}: expected {known}")
    return torch.nn.functional.one_hot(torch.tensor([k]), n).float().to(args.device)


def _sample_share(model, args, size, first: int, count: int, keep: bool, rank: int = 0, cond=None):
    """Images ``first .. first+count-1`` of the seed's sequence, sampled in chunks that
    fit in memory; each chunk's ``--out-dir`` files are written as soon as it is done.
    Returns the images as uint8 ``(count, C, H, W)`` when ``keep`` (for the grid), else
    ``None``. ``cond``: one cond ``(1, K)`` for every image (``sample --class``)."""
    import torch

    from .images import save_images, to_uint8
    from .sampling import sample
    out = args.out or (None if args.out_dir else "samples.png")
    memory = _sampling_memory(model, size, args)   # one image must fit: said first, it names --size
    reserved = _check_grid(args, args.n, size) if keep and out else 0
    chunk = _chunk_size(count, memory, reserved)
    chunks = -(-count // chunk)
    if chunks > 1 and rank == 0:
        print(f"sampling in {chunks} chunks of up to {chunk} images (what fits in memory; the images are "
              "the same as in one go)")
    kept = []
    kw = _sample_kwargs(args)
    kw["progress"] = kw["progress"] and rank == 0
    for done in range(0, count, chunk):
        k = min(chunk, count - done)
        kw["generator"] = torch.Generator().manual_seed(args.seed)
        x = sample(model, k, size=args.size, offset=first + done,
                   cond=None if cond is None else cond.expand(k, -1), **kw)
        if args.out_dir:
            save_images(x, args.out_dir, model.bits, start=first + done)
        if keep:
            kept.append(to_uint8(x, model.bits))
        del x
    if not keep:
        return None
    return torch.cat(kept) if kept else torch.zeros((0, model.channels, *size), dtype=torch.uint8)


def cmd_sample(args):
    """``pixelaux sample``. The images are sampled in chunks that fit in memory (the same
    images as one call: :func:`_sample_share`). Under ``torchrun --nproc_per_node N -m
    pixelaux sample`` rank ``r`` samples its contiguous share of images ``0 .. n-1``
    (:func:`_share`, ``sample(..., offset=first)``) and writes its ``--out-dir`` files
    named by global index, so the folder holds the files of one process; a grid
    (``--out``) is gathered to rank 0, which writes it. Only rank 0 prints and shows
    progress."""
    import torch

    from .images import save_grid
    _check_sampling_outputs(args, "samples.png")
    with _process_group(args) as (world, rank):
        model = _load(args)
        cond = _class_cond(args, model)
        size = tuple(args.size or model.image_size)
        if args.size is not None:
            problem = _size_problem(model, args.size)
            if problem:
                raise CliError(f"--size {args.size[0]} {args.size[1]}: {problem}")
        if rank == 0:
            _say_engine(args, model)
        first, count = _share(args.n, world, rank)
        out = args.out or (None if args.out_dir else "samples.png")
        if world > 1:
            torch.distributed.barrier()                # time the sampling, not the start-up skew
        t0 = time.perf_counter()
        x = _sample_share(model, args, size, first, count, keep=bool(out), rank=rank, cond=cond)
        if world > 1:
            torch.distributed.barrier()
        dt = time.perf_counter() - t0
        on = "" if world == 1 else f" on {world} processes"
        if world > 1 and out:
            x = _gather_images(x, args.n, world, rank)
        if world > 1:
            torch.distributed.barrier()                # every rank's files are written
        if rank != 0:
            return
        of = "" if cond is None else f" of class {args.class_label}"
        print(f"sampled {args.n} images {_hw(size)}{of} from {args.model!r} in {dt:.2f} s{on}")
        if out:
            replaced = os.path.exists(out)
            save_grid(x, out, bits=8, scale=args.scale)
            print(f"wrote {out}" + (" (replaced the file that was there)" if replaced else ""))
        if args.out_dir:
            print(f"wrote {args.n} images to {args.out_dir}")


def cmd_colorize(args):
    import torch

    from .applications import colorize
    from .images import resize as do_resize
    _check_sampling_outputs(args, "colorized.png")
    model = _load(args)
    if getattr(model, "kind", None) != "GrayscalePixelCNN":
        raise CliError(f"colorize needs a grayscale-auxiliary model, {args.model!r} is a {model.kind}")
    img = _read_image(args.image, 1)
    h, w = img.shape[1:]
    if max(h, w) > args.max_side:
        f = args.max_side / max(h, w)
        new = (max(1, round(h * f)), max(1, round(w * f)))
        print(f"resized {args.image} from {_hw((h, w))} to {_hw(new)} to fit --max-side {args.max_side}")
        img = do_resize(img, new)
    problem = _size_problem(model, img.shape[1:])
    if problem:
        raise CliError(f"{args.image} is {_hw(img.shape[1:])}: {problem}")
    _check_grid(args, args.n + 1, img.shape[1:], nrow=args.n + 1)
    _say_engine(args, model)
    t0 = time.perf_counter()
    out = colorize(model, img.unsqueeze(0).long(), samples=args.n, **_sample_kwargs(args))[0]
    print(f"colorized {args.image} ({args.n} samples) in {time.perf_counter() - t0:.2f} s")
    shown = torch.cat([img.long().expand(3, -1, -1).unsqueeze(0), out])   # input first
    _write_outputs(args, shown, model.bits, "colorized.png", nrow=len(shown))


def cmd_upscale(args):
    import torch

    from .applications import upscale
    from .images import resize as do_resize
    _check_sampling_outputs(args, "upscaled.png")
    model = _load(args)
    if getattr(model, "kind", None) != "PyramidPixelCNN":
        raise CliError(f"upscale needs a pyramid model, {args.model!r} is a {model.kind}")
    img = _read_image(args.image, model.channels)
    sizes = [tuple(s) for s in model.level_sizes]
    if tuple(img.shape[1:]) not in sizes[:-1]:
        if not args.resize:
            raise CliError(f"{args.image} is {_hw(img.shape[1:])} but upscale takes one of the pyramid's lower "
                           f"levels ({', '.join(_hw(s) for s in sizes[:-1])}); pass --resize")
        img = _fit(img, sizes[-2], True, args.image)
    _check_grid(args, args.n + 1, sizes[-1], nrow=args.n + 1)
    _say_engine(args, model)
    t0 = time.perf_counter()
    out = upscale(model, img.unsqueeze(0).long(), samples=args.n, **_sample_kwargs(args))[0]
    print(f"upscaled {args.image} from {_hw(img.shape[1:])} to {_hw(out.shape[2:])} "
          f"({args.n} samples) in {time.perf_counter() - t0:.2f} s")
    big = do_resize(img, tuple(out.shape[2:]), nearest=True).long()
    _write_outputs(args, torch.cat([big.unsqueeze(0), out]), model.bits, "upscaled.png", nrow=len(out) + 1)


def cmd_complete(args):
    import torch

    from .applications import complete
    _check_sampling_outputs(args, "completed.png")
    model = _load(args)
    img = _fit_model(_read_image(args.image, model.channels), model, args.resize, args.image)
    h, w = img.shape[1:]
    if args.mask:
        m = _fit(_read_image(args.mask, 1), (h, w), args.resize, f"mask {args.mask}",
                 wanted=f"the image {args.image} is")
        mask = m[0] >= 128
    else:
        if args.keep_rows >= h:
            raise CliError(f"--keep-rows must be < the image height {h}, got {args.keep_rows}")
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[args.keep_rows:] = True
    if not mask.any():
        raise CliError("the mask marks no pixel to complete (white = complete)")
    _check_grid(args, args.n + 1, (h, w), nrow=args.n + 1)
    _say_engine(args, model)
    t0 = time.perf_counter()
    out = complete(model, img.unsqueeze(0).long(), mask, samples=args.n, **_sample_kwargs(args))[0]
    print(f"completed {int(mask.sum())} of {h * w} pixels ({args.n} samples) in {time.perf_counter() - t0:.2f} s")
    shown = img.long().clone()
    shown[:, mask] = 0
    _write_outputs(args, torch.cat([shown.unsqueeze(0), out]), model.bits, "completed.png", nrow=len(out) + 1)


def cmd_score(args):
    from tqdm.auto import tqdm

    from .sampling import bits_per_dim
    folders = [p for p in args.images if os.path.isdir(p)]
    if folders:
        raise CliError(f"{folders[0]} is a folder, expected an image file")
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        raise CliError(f"image file not found: {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                 if len(missing) > 1 else ""))
    model = _load(args)
    from .sampling import model_device
    model_device(model)                        # a meta-device model: refused before the bar starts
    images = [_fit_model(_read_image(p, model.channels), model, args.resize, p) for p in args.images]
    pixels = model.image_size[0] * model.image_size[1]
    with tqdm(list(zip(args.images, images)), desc="score", unit="img", disable=args.no_progress,
              leave=False) as bar:
        for path, img in bar:
            factor = img.shape[1] * img.shape[2] / pixels
            if factor >= 4:                     # one forward pass: no finer progress to show
                bar.write(f"scoring {path} at its own size {_hw(img.shape[1:])}, {factor:.0f}x the pixels of "
                          f"the model's {_hw(model.image_size)} (--resize scores it at that size)",
                          file=sys.stderr)
            parts = bits_per_dim(model, img.unsqueeze(0).long().to(args.device), parts=True)
            extra = "  ".join(f"{k}={v[0]:.3f}" for k, v in parts.items() if k != "total")
            bar.write(f"{path}: {parts['total'][0]:.3f} bits/dim" + (f"  ({extra})" if extra else ""),
                      file=sys.stdout)


def _bpd(value) -> str:
    """Bits/dim as printed: 3 decimals (a dict of parts: each, with their names)."""
    if isinstance(value, dict):
        return " + ".join(f"{k} {_bpd(v)}" for k, v in value.items() if k != "total")
    return f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


def backends_text() -> str:
    """One line: the sampling backends this install has, and why a missing one is missing."""
    import torch

    from . import native
    from .engines import triton_status
    cpp = f"cpp yes ({native.info()})" if native.available() else f"cpp NO ({native.reason()})"
    ok, why = triton_status(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return f"backends: naive yes; torch yes; {cpp}; triton {'yes' if ok else 'no'} ({why})"


def version_text() -> str:
    import platform

    import torch

    from . import __version__
    return (f"pixelaux {__version__} (torch {torch.__version__}, python {platform.python_version()})\n"
            + backends_text())


def cmd_models(args):
    from .pretrained import list_models
    for m in list_models():
        status = "" if m["present"] else "  [missing from this install]"
        print(f"{m['name']:<10} {m['description']}{status}")
        if "test_bpd" in m:
            parts = f" = {_bpd(m['test_bpd_parts'])}" if isinstance(m.get("test_bpd_parts"), dict) else ""
            print(f"{'':<10} test bits/dim: {_bpd(m['test_bpd'])}{parts}")
        if "step" in m:
            print(f"{'':<10} trained steps: {m['step']}")
    print(backends_text())


# ----------------------------------------------------------------------------- train

def _shown(v) -> str:
    """A setting as the command line writes it: pairs space-separated."""
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _train_layers(args) -> list:
    """What the command line puts over the base configuration, lowest first: --preset,
    --config, --model-kind and --arch (which choose the model that --set then tunes),
    each --set, then the other options given (:data:`TRAIN_CONFIG_OPTIONS`); each as
    ``(label, function of a config -> config)``, the label naming the option."""
    import json

    def option(name):
        value = getattr(args, name)
        if value is not None:
            layers.append((f"--{name.replace('_', '-')}",
                           lambda c, n=name, v=value: run_config.apply_option(c, n, v)))
    layers = []
    if args.preset is not None:
        data = run_config.preset(args.preset)
        layers.append((f"--preset {args.preset}", lambda c, d=data: run_config.merge(c, d)))
    if args.config is not None:
        try:
            data = run_config.load_file(args.config)
        except run_config.ConfigError as e:
            raise CliError(f"--config {args.config}: {e}") from None
        layers.append((f"--config {args.config}", lambda c, d=data: run_config.merge(c, d)))
    option("model_kind")
    option("arch")
    for path, value in args.set or ():
        try:
            partial = run_config.from_path(path, value)
        except run_config.ConfigError as e:
            raise CliError(f"--set: {e}") from None
        shown = value if isinstance(value, str) else json.dumps(value)
        layers.append((f"--set {path}={shown}", lambda c, d=partial: run_config.merge(c, d)))
    for name in TRAIN_CONFIG_OPTIONS[2:]:
        option(name)
    return layers


def _conflict_text(label, diff, saved_cfg, args) -> str:
    """One contradiction of --resume, as the option that made it: ``--hidden (saved 4, given 8)``;
    a file, preset or --set with the keys it changes."""
    name = label[2:].replace("-", "_")
    if name in TRAIN_CONFIG_OPTIONS:
        saved = run_config.option_value(saved_cfg, name)
        return f"{label} (saved {_shown(saved)}, given {_shown(getattr(args, name))})"
    keys = "; ".join(f"{path}: saved {_shown(a)}, given {_shown(b)}" for path, a, b in diff[:3])
    return f"{label} ({keys}{'; ...' if len(diff) > 3 else ''})"


def _train_config(args):
    """The run's configuration, resolved (``run_config.resolve``), its class names, and the
    saved run with --resume (else ``None``). A new run: the defaults under --preset,
    --config, --set and the options. --resume: the saved configuration (the run's
    config.json; for a run from before config files, its saved settings) under the same
    layers, refusing in one line every option that contradicts it."""
    from .training import read_run
    layers = _train_layers(args)
    try:
        if args.resume:
            saved = read_run(args.out)
            base, unknown = run_config.saved_config(saved, args.out)
            cfg, conflicts = run_config.overlay(base, layers, fixed=True, unknown=unknown)
            if conflicts:
                parts = [_conflict_text(label, diff, base, args) for label, diff in conflicts]
                raise CliError(f"--resume: {', '.join(parts)} contradict the run in {args.out}; resume takes the "
                               "saved settings: leave these options out, or train into a new --out")
        else:
            saved = None
            cfg, _ = run_config.overlay(run_config.default_config(), layers)
    except run_config.ConfigError as e:
        raise CliError(str(e)) from None
    if not args.print_config:
        _check_train_data(cfg["data"])
    try:
        resolved, classes = run_config.resolve(cfg)
    except run_config.ConfigError as e:
        raise CliError(str(e)) from None
    except ValueError as e:                        # from the data: a folder's images, ...
        raise CliError(f"--data {cfg['data']}: {' '.join(str(e).split())}") from None
    return resolved, classes, saved


def _check_train_data(spec):
    """The optional dependency and the path of ``--data``, before the data is read."""
    from .data import check_spec
    kind, path = check_spec(spec)
    if kind == "patches" and importlib.util.find_spec("skimage") is None:
        raise CliError("--data patches needs scikit-image (its photographs): pip install scikit-image")
    if kind == "folder" and not os.path.isdir(path):
        raise CliError(f"--data {spec}: {path} is not a folder")
    if kind == "cifar10" and not os.path.exists(path):
        raise CliError(f"--data {spec}: {path} does not exist")


def _train_data(spec, size, labels=False):
    """``--data`` -> (train, test) at ``size`` ``(H, W)``; with ``labels`` items are
    ``(image, label)``."""
    from .data import from_spec
    _check_train_data(spec)
    try:
        return from_spec(spec, tuple(size), labels=labels)
    except ValueError as e:
        raise CliError(f"--data {spec}: {' '.join(str(e).split())}") from None


def _plot_metrics_command(args):
    """``pixelaux train --plot-metrics RUN_DIR --out curve.png``: matplotlib, the log and
    --out checked first, then the plot."""
    from .metrics import METRICS_FILE, check_plot, plot_comparison, plot_metrics
    given = [f"--{name.replace('_', '-')}" for name in TRAIN_CONFIG_OPTIONS + ("preset", "config", "set")
             if getattr(args, name) is not None]
    given += [flag for flag, on in (("--resume", args.resume), ("--print-config", args.print_config)) if on]
    if given:
        raise CliError(f"--plot-metrics draws a run's curves and takes only --out; leave out {', '.join(given)}")
    if importlib.util.find_spec("matplotlib") is None:
        raise CliError("--plot-metrics needs matplotlib: pip install matplotlib")
    for run_dir in args.plot_metrics:
        if not os.path.isdir(run_dir):
            raise CliError(f"--plot-metrics {run_dir}: not a folder (a run directory, train --out)")
        if not os.path.isfile(os.path.join(run_dir, METRICS_FILE)):
            raise CliError(f"--plot-metrics {run_dir}: no {METRICS_FILE} there (a run writes it as it trains)")
    _check_file_output(args.out, "--out")
    if os.path.splitext(args.out)[1].lower() != ".png":
        raise CliError(f"--out {args.out}: the plot is a PNG image; name it NAME.png")
    rows = [check_plot(d) for d in args.plot_metrics]
    if len(rows) == 1:
        plot_metrics(args.plot_metrics[0], args.out)
        print(f"wrote {args.out}: {len(rows[0])} points of {os.path.join(args.plot_metrics[0], METRICS_FILE)}, "
              f"steps {rows[0][0]['step']} to {rows[0][-1]['step']}")
    else:
        plot_comparison(args.plot_metrics, args.out)
        print(f"wrote {args.out}: {len(rows)} runs, " + ", ".join(
            f"{os.path.basename(os.path.normpath(d))} ({len(r)} points)" for d, r in zip(args.plot_metrics, rows)))


def _train_command(args):
    """``pixelaux train``: check the run directory, resolve the configuration (new run or
    --resume), print it with --print-config, else build data and model, keep the
    configuration in --out/config.json and :func:`pixelaux.training.train`."""
    import torch

    from .checkpoint import from_config
    from .training import MODEL_FILE, STATE_FILE, train
    if args.print_config and not args.resume:
        resolved, _, _ = _train_config(args)
        print(run_config.dumps(resolved), end="")
        return None
    if args.out is None:
        raise CliError("--out is required: the run directory (not needed with --print-config)")
    _check_dir_output(args.out, "--out")
    holds_run = any(os.path.exists(os.path.join(args.out, f)) for f in (STATE_FILE, MODEL_FILE))
    if args.resume and not os.path.isfile(os.path.join(args.out, STATE_FILE)):
        raise CliError(f"--resume: {args.out} holds no run to resume (no {STATE_FILE}); "
                       "leave out --resume to start one")
    if not args.resume and holds_run:
        raise CliError(f"--out {args.out} already holds a run; add --resume to continue it, or choose "
                       "another --out")
    resolved, classes, saved = _train_config(args)
    if args.print_config:                                  # with --resume: what it would train with
        print(run_config.dumps(resolved), end="")
        return None
    t = resolved["train"]
    try:
        batch = run_config.process_batch(t, _torchrun_world())
    except run_config.ConfigError as e:
        raise CliError(str(e)) from None
    device = t["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    train_data, test_data = _train_data(resolved["data"], resolved["model"]["image_size"], labels=bool(classes))
    torch.manual_seed(t["seed"])
    if saved is not None:
        model = from_config(saved.kind, saved.config)   # the weights come from the state
    else:
        model = run_config.build_model(resolved["model"])
    if int(os.environ.get("RANK", "0")) == 0:
        run_config.write(args.out, resolved)
    meta = {"data": resolved["data"], **({"classes": classes} if classes else {})}
    return train(model, train_data, test_data=test_data, steps=t["steps"], batch_size=batch, lr=t["lr"],
                 lr_decay=t["lr_decay"], adam_betas=tuple(t["adam_betas"]), ema_decay=t["ema_decay"],
                 grad_clip=t["grad_clip"], amp=t["amp"], compile=t["compile"], out_dir=args.out,
                 resume=args.resume, eval_every=t["eval_every"], ckpt_every=t["ckpt_every"], seed=t["seed"],
                 device=device, threads=t["threads"], meta=meta, progress=not args.no_progress)


def cmd_train(args):
    if args.plot_metrics is not None:
        _plot_metrics_command(args)
    else:
        _train_command(args)
    return 0


def cmd_bench(args):
    from .bench import check_arguments, check_csv, run_benchmark
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise CliError("--plot needs matplotlib: pip install matplotlib (or leave --plot out)")
    for flag, path in (("--csv", args.csv), ("--plot", args.plot)):
        if path:
            _check_file_output(path, flag)
    try:
        check_csv(args.csv, "--csv")
    except ValueError as e:
        raise CliError(str(e)) from None
    check_arguments(args.preset, args.batch, args.providers, args.naive_pixels, args.repeat, args.threads,
                    args.plot)
    run_benchmark(args.preset, args.batch, args.providers, args.device, args.seed, args.naive_pixels,
                  args.repeat, args.csv, args.plot, args.threads)
    return 0


def cmd_import_pixelcnnpp(args):
    from .checkpoint import save
    from .pixelcnnpp_import import describe, import_pixel_cnn_pp
    if os.path.isdir(args.checkpoint):
        raise CliError(f"{args.checkpoint}: is a folder, expected a checkpoint file")
    if not os.path.isfile(args.checkpoint):
        raise CliError(f"{args.checkpoint}: no such file")
    if not args.out.lower().endswith(".safetensors"):
        raise CliError(f"--out {args.out}: a pixelaux checkpoint is a .safetensors file; name it NAME.safetensors")
    _check_file_output(args.out, "--out")
    model = import_pixel_cnn_pp(args.checkpoint, image_size=tuple(args.size))
    save(model, args.out, extra={"imported_from": "PixelCNN++ (PyTorch port) state dict "
                                                  f"{os.path.basename(args.checkpoint)}"})
    print(f"imported {args.checkpoint}: PixelCNN++ {describe(model)} -> wrote {args.out}")


COMMANDS = {"sample": cmd_sample, "colorize": cmd_colorize, "upscale": cmd_upscale, "complete": cmd_complete,
            "score": cmd_score, "train": cmd_train, "bench": cmd_bench, "models": cmd_models,
            "import-pixelcnnpp": cmd_import_pixelcnnpp}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except CliError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:                     # --help, --version
        return int(e.code or 0)
    except KeyboardInterrupt:                   # (pixelaux.cli imports no torch: this covers the start)
        print("pixelaux: interrupted", file=sys.stderr)
        return 130
    try:
        rc = COMMANDS[args.command](args)
        return int(rc or 0)
    except CliError as e:
        print(f"pixelaux {args.command}: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"pixelaux {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:                    # InsufficientMemoryError: the estimate, up front
        msg = " ".join(str(e).split()) or "out of memory"
        print(f"pixelaux {args.command}: error: {msg}", file=sys.stderr)
    except (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, ImportError,
            RuntimeError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"pixelaux {args.command}: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
