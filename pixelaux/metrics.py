"""The metrics log of a training run: ``metrics.jsonl`` in its directory (docs/design.md section 7).

One JSON object per line, one line per logged step, in step order:

* ``step``: optimizer steps done;
* ``train_bpd``: mean training bits/dim of the raw model over the steps since the
  previous line (its running sum is kept in the training state, so a resumed run
  writes the line an uninterrupted one would);
* ``test_bpd``: bits/dim of the EMA model on the test set, in float32, or ``null``
  when the step was not evaluated; ``test_bpd_parts``: its parts for an
  auxiliary-variable model (``{"gray": .., "colour": ..}``, they add up to
  ``test_bpd``), absent otherwise;
* ``lr``: the learning rate of that step's update;
* ``images_per_s``: training images per second (all processes) over the steps this
  process ran since its previous line, evaluation excluded;
* ``wall_s``: seconds of training up to this step, summed over the processes that
  led to it (kept in the training state; the time an interrupted process spent after
  its last checkpoint is not counted).

The file is appended, never rewritten, by rank 0 only; every line is one ``write``
followed by ``fsync``. A run resumed from its checkpoint at step ``k`` first cuts the
file after its last complete line with ``step <= k``: the lines an interrupted
process wrote after that checkpoint (and a line cut short by a kill) are dropped, and
the resumed run writes them again, so the log has one line per step. A new run (no
checkpoint yet) starts the file afresh.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def _parse(line: bytes):
    """A complete line -> its object, or ``None`` when it is not one of ours."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("step"), int):
        return None
    return obj


def _kept_length(data: bytes, last_step: int) -> tuple[int, int]:
    """-> (bytes to keep, lines dropped): the prefix of complete lines with ``step <= last_step``."""
    keep, pos, dropped = 0, 0, 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:                                   # cut short by a kill
            dropped += 1
            break
        obj = _parse(data[pos:end])
        if obj is None or obj["step"] > last_step:
            dropped += data.count(b"\n", pos) + (not data.endswith(b"\n"))
            break
        keep = pos = end + 1
    return keep, dropped


def _finite(obj):
    """NaN and infinities as ``null`` (JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class MetricsLog:
    """Appends lines to ``out_dir/metrics.jsonl`` (rank 0 only: the others pass ``enabled=False``).

    ``last_step``: the step the run starts from (0 for a new run): lines after it are
    cut first (see the module notes); ``dropped`` says how many were.
    """

    def __init__(self, out_dir, last_step: int, enabled: bool = True):
        self.path = Path(out_dir) / METRICS_FILE
        self.enabled, self.dropped = enabled, 0
        if not enabled:
            return
        if self.path.exists():
            data = self.path.read_bytes()
            keep, self.dropped = _kept_length(data, last_step)
            if keep < len(data):
                os.truncate(self.path, keep)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(_finite(record), allow_nan=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def read_metrics(run_dir) -> list[dict]:
    """The lines of ``run_dir/metrics.jsonl`` (a last line cut short is left out).

    ``ValueError`` naming the path when there is none or it holds no line.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"{str(Path(run_dir))!r} has no {METRICS_FILE} (runs write it as they train)")
    data = path.read_bytes()
    rows = [obj for obj in map(_parse, data.split(b"\n")[:-1]) if obj is not None]
    if not rows:
        raise ValueError(f"{str(path)!r} holds no metrics yet")
    return rows


def check_plot(run_dir) -> list[dict]:
    """What :func:`plot_metrics` needs, checked before any work: matplotlib and the log."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("plotting needs matplotlib: pip install matplotlib")
    return read_metrics(run_dir)


def plot_metrics(run_dir, out) -> Path:
    """Draw the curves of ``run_dir/metrics.jsonl`` into the image ``out`` (PNG): train and
    test bits/dim (and the test parts) against the step, the learning rate in a second
    panel. ``ImportError`` without matplotlib, ``ValueError`` without a log."""
    rows = check_plot(run_dir)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key, part=None):
        pts = [(r["step"], r[key] if part is None else (r.get(key) or {}).get(part)) for r in rows]
        pts = [(s, v) for s, v in pts if isinstance(v, (int, float)) and math.isfinite(v)]
        return [s for s, _ in pts], [v for _, v in pts]

    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(*series("train_bpd"), label="train (raw weights)")
    steps, test = series("test_bpd")
    if steps:
        ax.plot(steps, test, marker="o", ms=3, label="test (EMA)")
    parts = sorted({p for r in rows for p in (r.get("test_bpd_parts") or {})})
    for p in parts:
        ax.plot(*series("test_bpd_parts", p), ls="--", lw=1, label=f"test: {p}")
    ax.set_ylabel("bits/dim")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{Path(run_dir).resolve().name}: {rows[-1]['step']} steps")
    ax_lr.plot(*series("lr"), color="gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return Path(out)


def plot_comparison(run_dirs, out) -> Path:
    """Several runs in one picture (PNG ``out``): each run's test bits/dim (EMA, solid,
    with markers) and train bits/dim (raw weights, faint) against the step, labelled by
    the run directory's name; for recipe comparisons at the same budget."""
    runs = [(Path(d).resolve().name, check_plot(d)) for d in run_dirs]
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(rows, key):
        pts = [(r["step"], r.get(key)) for r in rows]
        pts = [(s, v) for s, v in pts if isinstance(v, (int, float)) and math.isfinite(v)]
        return [s for s, _ in pts], [v for _, v in pts]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (name, rows) in enumerate(runs):
        color = f"C{k % 10}"
        ax.plot(*series(rows, "train_bpd"), color=color, alpha=0.3, lw=1)
        steps, test = series(rows, "test_bpd")
        label = f"{name}: test {test[-1]:.3f}" if test else name
        ax.plot(steps, test, color=color, marker="o", ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim (test: EMA, solid; train: faint)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return Path(out)
