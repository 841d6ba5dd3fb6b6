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

Every error is one line on stderr and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

EXIT_USAGE = 2
EXIT_ERROR = 1


class CliError(Exception):
    """A user-facing error: printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(f"{self.prog}: {message}")


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
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


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


def _add_sampling_options(p, n_default=16, n_name="--n", model_default="default"):
    p.add_argument("--model", default=model_default,
                   help=f"embedded model name (see `pixelaux models`) or checkpoint path (default: {model_default})")
    p.add_argument(n_name, dest="n", type=_positive_int, default=n_default,
                   help=f"number of samples (default: {n_default})")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument("--engine", choices=["cached", "naive"], default="cached",
                   help="cached (fast, exact) or naive (a full forward pass per pixel)")
    p.add_argument("--backend", choices=["auto", "torch", "cpp", "triton"], default="auto",
                   help="backend of the cached engine (default: auto)")
    p.add_argument("--temperature", type=_positive_float, default=1.0, help="sampling temperature (default: 1)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default=None, help="PNG grid to write")
    p.add_argument("--out-dir", default=None, help="also write each image as a PNG in this folder")
    p.add_argument("--scale", type=_positive_int, default=4, help="enlarge the grid PNG by this factor (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from . import bench
    p = _Parser(prog="pixelaux", description="PixelCNN models with auxiliary variables and fast exact sampling.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Run `pixelaux COMMAND --help` for a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("sample", help="sample images into a PNG grid")
    _add_sampling_options(s)
    s.add_argument("--size", type=_positive_int, nargs="+", default=None, metavar="N",
                   help="image size: N or H W (default: the model's)")

    c = sub.add_parser("colorize", help="colourings of a gray photo, side by side with it")
    c.add_argument("image", help="gray (or colour, taken as gray) image file")
    _add_sampling_options(c, n_default=4, n_name="--samples")
    c.add_argument("--max-side", type=_positive_int, default=64,
                   help="resize (keeping the aspect ratio) when a side is longer than this; said when done "
                        "(default: 64)")

    u = sub.add_parser("upscale", help="super-resolution through the pyramid levels")
    u.add_argument("image", help="small image; must be a lower pyramid level size unless --resize")
    _add_sampling_options(u, n_default=4, n_name="--samples", model_default="pyramid")
    u.add_argument("--resize", action="store_true",
                   help="resize the image to the pyramid's second-largest level first (said when done)")

    k = sub.add_parser("complete", help="completions of the unknown part of an image")
    k.add_argument("image", help="image file")
    g = k.add_mutually_exclusive_group(required=True)
    g.add_argument("--mask", help="mask image of the same size: white pixels are completed, black ones kept")
    g.add_argument("--keep-rows", type=_positive_int, help="keep the top N rows, complete the rest")
    _add_sampling_options(k, n_default=4, n_name="--samples")
    k.add_argument("--resize", action="store_true",
                   help="resize image (and mask) to the model's image size first (said when done)")

    sc = sub.add_parser("score", help="bits/dim of images (gray/colour or per-level split)")
    sc.add_argument("images", nargs="+", help="image files")
    sc.add_argument("--model", default="default", help="embedded model name or checkpoint path")
    sc.add_argument("--resize", action="store_true", help="resize each image to the model's image size first")
    sc.add_argument("--device", default="cpu")

    t = sub.add_parser("train", help="train a model (see --help)")
    from .training import add_train_arguments
    add_train_arguments(t)

    b = sub.add_parser("bench", help="naive vs cached sampling benchmark")
    bench.add_arguments(b)

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
    return load(args.model, map_location=device)


def _sample_kwargs(args):
    import torch
    return dict(engine=args.engine, backend=args.backend, temperature=args.temperature,
                generator=torch.Generator().manual_seed(args.seed), progress=not args.no_progress)


def _say_engine(args, model):
    from .sampling import resolve_engine
    engine, backend = resolve_engine(model, args.engine, args.backend)
    print(f"engine: {engine}" + (f", backend: {backend}" if backend else ""))


def _write_outputs(args, images, bits, default_out, nrow=None):
    from .images import save_grid, save_images
    out = args.out or (None if args.out_dir else default_out)
    if out:
        save_grid(images, out, bits=bits, nrow=nrow, scale=args.scale)
        print(f"wrote {out}")
    if args.out_dir:
        paths = save_images(images, args.out_dir, bits=bits)
        print(f"wrote {len(paths)} images to {args.out_dir}")


def _fit(img, size, resize, what):
    """Resize ``img`` to ``size`` when asked (and say so); otherwise refuse a mismatch."""
    from .images import resize as do_resize
    if tuple(img.shape[1:]) == tuple(size):
        return img
    if not resize:
        raise CliError(f"{what} is {img.shape[2]}x{img.shape[1]} (WxH) but the model needs {size[1]}x{size[0]}; "
                       "pass --resize to resize it")
    print(f"resized {what} from {img.shape[2]}x{img.shape[1]} to {size[1]}x{size[0]} (WxH)")
    return do_resize(img, size)


# ----------------------------------------------------------------------------- commands

def cmd_sample(args):
    from .checks import check_size
    from .sampling import sample
    model = _load(args)
    size = None
    if args.size:
        if len(args.size) > 2:
            raise CliError("--size: give N or H W")
        size = check_size(tuple(args.size) if len(args.size) == 2 else args.size[0])
    _say_engine(args, model)
    t0 = time.perf_counter()
    x = sample(model, args.n, size=size, **_sample_kwargs(args))
    dt = time.perf_counter() - t0
    h, w = x.shape[2:]
    print(f"sampled {args.n} images {w}x{h} from {args.model!r} in {dt:.2f} s")
    _write_outputs(args, x, model.bits, "samples.png")


def cmd_colorize(args):
    import torch

    from .applications import colorize
    from .images import read_image
    from .images import resize as do_resize
    model = _load(args)
    if getattr(model, "kind", None) != "GrayscalePixelCNN":
        raise CliError(f"colorize needs a grayscale-auxiliary model, {args.model!r} is a {model.kind}")
    img = read_image(args.image, channels=1)
    h, w = img.shape[1:]
    if max(h, w) > args.max_side:
        f = args.max_side / max(h, w)
        new = (max(1, round(h * f)), max(1, round(w * f)))
        print(f"resized {args.image} from {w}x{h} to {new[1]}x{new[0]} (WxH) to fit --max-side {args.max_side}")
        img = do_resize(img, new)
    _say_engine(args, model)
    t0 = time.perf_counter()
    out = colorize(model, img.unsqueeze(0).long(), samples=args.n, **_sample_kwargs(args))[0]
    print(f"colorized {args.image} ({args.n} samples) in {time.perf_counter() - t0:.2f} s")
    shown = torch.cat([img.long().expand(3, -1, -1).unsqueeze(0), out])   # input first
    _write_outputs(args, shown, model.bits, "colorized.png", nrow=len(shown))


def cmd_upscale(args):
    import torch

    from .applications import upscale
    from .images import read_image
    from .images import resize as do_resize
    model = _load(args)
    if getattr(model, "kind", None) != "PyramidPixelCNN":
        raise CliError(f"upscale needs a pyramid model, {args.model!r} is a {model.kind}")
    img = read_image(args.image, channels=model.channels)
    sizes = [tuple(s) for s in model.level_sizes]
    if tuple(img.shape[1:]) not in sizes[:-1]:
        if not args.resize:
            raise CliError(f"{args.image} is {img.shape[2]}x{img.shape[1]} but upscale takes one of the "
                           f"pyramid's lower levels {[f'{w}x{h}' for h, w in sizes[:-1]]}; pass --resize")
        img = _fit(img, sizes[-2], True, args.image)
    _say_engine(args, model)
    t0 = time.perf_counter()
    out = upscale(model, img.unsqueeze(0).long(), samples=args.n, **_sample_kwargs(args))[0]
    print(f"upscaled {args.image} from {img.shape[2]}x{img.shape[1]} to {out.shape[3]}x{out.shape[2]} "
          f"({args.n} samples) in {time.perf_counter() - t0:.2f} s")
    big = do_resize(img, tuple(out.shape[2:]), nearest=True).long()
    _write_outputs(args, torch.cat([big.unsqueeze(0), out]), model.bits, "upscaled.png", nrow=len(out) + 1)


def cmd_complete(args):
    import torch

    from .applications import complete
    from .images import read_image
    model = _load(args)
    img = _fit(read_image(args.image, channels=model.channels), model.image_size, args.resize, args.image)
    h, w = img.shape[1:]
    if args.mask:
        m = _fit(read_image(args.mask, channels=1), (h, w), args.resize, f"mask {args.mask}")
        mask = m[0] >= 128
    else:
        if args.keep_rows >= h:
            raise CliError(f"--keep-rows must be < the image height {h}, got {args.keep_rows}")
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[args.keep_rows:] = True
    if not mask.any():
        raise CliError("the mask marks no pixel to complete (white = complete)")
    _say_engine(args, model)
    t0 = time.perf_counter()
    out = complete(model, img.unsqueeze(0).long(), mask, samples=args.n, **_sample_kwargs(args))[0]
    print(f"completed {int(mask.sum())} of {h * w} pixels ({args.n} samples) in {time.perf_counter() - t0:.2f} s")
    shown = img.long().clone()
    shown[:, mask] = 0
    _write_outputs(args, torch.cat([shown.unsqueeze(0), out]), model.bits, "completed.png", nrow=len(out) + 1)


def cmd_score(args):
    from .images import read_image
    from .sampling import bits_per_dim
    model = _load(args)
    for path in args.images:
        img = read_image(path, channels=model.channels)
        if getattr(model, "kind", None) == "PyramidPixelCNN" or args.resize:
            img = _fit(img, model.image_size, args.resize, path)
        parts = bits_per_dim(model, img.unsqueeze(0).long().to(args.device), parts=True)
        extra = "  ".join(f"{k}={v[0]:.3f}" for k, v in parts.items() if k != "total")
        print(f"{path}: {parts['total'][0]:.3f} bits/dim" + (f"  ({extra})" if extra else ""))


def cmd_models(args):
    from .pretrained import list_models
    for m in list_models():
        status = "" if m["present"] else "  [missing from this install]"
        print(f"{m['name']:<10} {m['description']}{status}")
        for k in ("test_bpd", "test_bpd_parts", "step"):
            if k in m:
                print(f"{'':<10} {k}: {m[k]}")


def cmd_train(args):
    from .training import run_train_command
    run_train_command(args)
    return 0


def cmd_bench(args):
    from .bench import run_from_args
    return run_from_args(args)


def cmd_import_pixelcnnpp(args):
    from .checkpoint import save
    from .pixelcnnpp_import import describe, import_pixel_cnn_pp
    if not os.path.isfile(args.checkpoint):
        raise CliError(f"{args.checkpoint}: no such file")
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
    try:
        rc = COMMANDS[args.command](args)
        return int(rc or 0)
    except CliError as e:
        print(f"pixelaux {args.command}: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"pixelaux {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, ImportError,
            RuntimeError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"pixelaux {args.command}: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
