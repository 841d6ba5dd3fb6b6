"""A tqdm progress bar over pixels (or a no-op one), and ``run_native``: a native
sampling op run so that its bar moves row by row and Ctrl-C stops it within a row."""
from __future__ import annotations

import _thread
import contextlib
import contextvars
import threading

import torch


class _NoBar:
    def update(self, k=1):
        pass


@contextlib.contextmanager
def pixel_progress(total: int, enabled: bool, desc: str):
    """A bar over ``total`` pixels named ``"<stage> <desc>"`` (the stage from
    :func:`stage_label`, e.g. ``"colour 32x32 (2/2) cached[cpp]"``); it stays on screen
    when done, so a model's stages leave one finished bar each."""
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm
    label = _STAGE.get()
    with tqdm(total=total, desc=f"{label} {desc}" if label else desc, unit="px", leave=True) as bar:
        yield bar


_STAGE: contextvars.ContextVar[str] = contextvars.ContextVar("pixelaux_stage", default="")


@contextlib.contextmanager
def stage_label(label: str):
    """Names the bars of the sampling run inside the block (``pixelaux.sampling`` sets the
    stage being sampled: its part name, size and place in the model's chain)."""
    token = _STAGE.set(label)
    try:
        yield
    finally:
        _STAGE.reset(token)


POLL_SECONDS = 0.05  # how often the caller's thread looks at the op's row counter


def run_native(call, *, batch: int, height: int, width: int, progress: bool, desc: str):
    """``call(counter)`` runs a native sampling op that takes ``progress=counter``, an
    int64 tensor ``[rows done summed over the images, stop flag]``: the op adds each
    finished row of each image to ``counter[0]`` and stops at the next row start once
    ``counter[1]`` is set (see ``pixelaux.native``).

    The op runs in a worker thread (it releases the GIL, with the caller's number of
    intra-op threads); the calling thread polls the counter every ``POLL_SECONDS`` into
    the progress bar (``height * width`` pixels per image). When the calling thread is
    interrupted (Ctrl-C, i.e. ``KeyboardInterrupt``, or any exception, e.g. raised by the
    bar), it sets the stop flag, waits until the op has returned (it ends within one
    row), and re-raises, with a note of how far sampling got. Returns what ``call``
    returns.

    The calling thread never returns or raises while the op is still running: a process
    that ended then would end the worker inside the op (CPython ends a daemon thread that
    wants the GIL back once the interpreter is finalizing with ``pthread_exit``, whose
    forced unwind reaches the op's ``noexcept`` C++ frames: ``std::terminate``, SIGABRT),
    and a caught ``KeyboardInterrupt`` would leave the op running next to the caller's
    next one. Hence:

    * the end of the op is a flag of its own that the worker sets, not ``Thread.join`` or
      ``is_alive()``: on CPython < 3.13 a ``join`` that a ``KeyboardInterrupt`` cuts short
      marks a thread that is still running as stopped (cpython issue 90882, from the
      bpo-45274 fix), and later joins return at once;
    * the worker is not a daemon thread, so that the interpreter's exit waits until it
      is gone: it drops the op's inputs after it set that flag, and freeing a tensor
      releases the GIL inside torch's C++ (``THPVariable_clear``), the same abort at exit;
    * the worker calls the op only once the calling thread is past ``Thread.start()``
      (which an interrupt can end too, whether the thread started or not), and not at all
      if it was interrupted before (the worker then ends, whether it started or not);
      the worker reaches the op's tensors only through a dict that such a caller empties
      before it raises: a thread cut short before its bootstrap is not one the exit waits
      for, and if it held the last reference to a tensor it would free it while the
      interpreter finalizes (the SIGABRT above, seen about once in ten interrupted CLI runs);
    * the handlers are loops around a ``try``, entered with no call in between (a pending
      interrupt is raised at a call or a loop's backward jump): a second Ctrl-C while
      they wait is ignored, the op ends within a row anyway and the first exception is
      the one raised.
    """
    counter = torch.zeros(2, dtype=torch.int64)
    threads = torch.get_num_threads()
    # The worker reaches the op and its tensors only through `state` (its closure holds no
    # tensor): a start that an interrupt cut short takes them back before raising (below).
    state = {"call": call, "counter": counter}
    go = _thread.allocate_lock()      # held by the caller until the worker may call the op
    go.acquire()
    ended = _thread.allocate_lock()   # held until the worker is done with the op
    ended.acquire()

    def work():
        try:
            while not go.acquire(timeout=POLL_SECONDS):   # until the caller lets it go or gives up
                if state.get("cancelled"):
                    return
            if not state.get("cancelled"):
                torch.set_num_threads(threads)  # OpenMP's thread count is per calling thread
                state["out"] = state["call"](state["counter"])
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            state["error"] = e
        finally:
            state["ended"] = True         # (a plain store: seen even if the release below is missed)
            ended.release()

    total_rows = batch * height
    # Not a daemon: the interpreter's exit waits for it (threading._shutdown). The worker
    # drops its references (the op's inputs) after it set the end flag, and torch releases
    # the GIL while it frees a tensor: at exit, a daemon worker would be ended there too.
    worker = threading.Thread(target=work, name="pixelaux-native-sample", daemon=False)
    with pixel_progress(height * width, progress, desc) as bar:
        shown = 0

        def show():
            nonlocal shown
            done = int(counter[0]) * width // batch
            if done > shown:
                bar.update(done - shown)
                shown = done

        try:
            worker.start()
        except BaseException:
            while True:                   # (the handlers below are loops: see the docstring)
                try:
                    state["cancelled"] = True   # a worker that did start returns without the op
                    # ... and without the tensors: it may not be known to the interpreter's
                    # exit yet (cut short before its bootstrap), and freeing a tensor there,
                    # with the interpreter finalizing, would end it inside torch's C++.
                    state.pop("call", None)
                    state.pop("counter", None)
                    if go.locked():
                        go.release()
                    break
                except BaseException:  # noqa: BLE001 - the first exception is the one raised
                    pass
            raise
        try:
            go.release()
            while not ended.acquire(timeout=POLL_SECONDS):
                show()
            show()  # (the op may end before the first poll)
        except BaseException as e:
            while True:
                try:
                    counter[1] = 1
                    state.setdefault("asked", int(counter[0]))
                    state["cancelled"] = True   # not let go yet: no op at all, else it stops
                    if go.locked():             # at its next row start
                        go.release()
                    while not state.get("ended"):   # (set even if this thread missed the release)
                        ended.acquire(timeout=POLL_SECONDS)
                    break
                except BaseException:  # noqa: BLE001 - a second Ctrl-C: the op ends within a row
                    pass               # anyway, and the first exception is the one raised
            if hasattr(e, "add_note"):  # Python >= 3.11
                e.add_note(f"pixelaux: {desc} stopped after {int(counter[0])} of {total_rows} "
                           f"image rows (stop asked after {state['asked']})")
            raise
    if "error" in state:
        raise state["error"]
    return state["out"]
