"""A tqdm progress bar over pixels (or a no-op one), and ``run_native``: a native
sampling op run so that its bar moves row by row and Ctrl-C stops it within a row."""
from __future__ import annotations

import contextlib
import threading

import torch


class _NoBar:
    def update(self, k=1):
        pass


@contextlib.contextmanager
def pixel_progress(total: int, enabled: bool, desc: str):
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm
    with tqdm(total=total, desc=desc, unit="px", leave=False) as bar:
        yield bar


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
    bar), it sets the stop flag, waits for the op (it ends within one row), and re-raises,
    with a note of how far sampling got. Returns what ``call`` returns."""
    counter = torch.zeros(2, dtype=torch.int64)
    threads = torch.get_num_threads()
    result = {}

    def work():
        try:
            torch.set_num_threads(threads)  # OpenMP's thread count is per calling thread
            result["out"] = call(counter)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = e

    total_rows = batch * height
    worker = threading.Thread(target=work, name="pixelaux-native-sample", daemon=True)
    with pixel_progress(height * width, progress, desc) as bar:
        shown = 0

        def show():
            nonlocal shown
            done = int(counter[0]) * width // batch
            if done > shown:
                bar.update(done - shown)
                shown = done

        worker.start()
        try:
            while worker.is_alive():
                worker.join(POLL_SECONDS)
                show()
            show()  # (the op may end before the first poll)
        except BaseException as e:
            counter[1] = 1
            asked = int(counter[0])
            worker.join()  # every thread of the op stops at its next row start
            if hasattr(e, "add_note"):  # Python >= 3.11
                e.add_note(f"pixelaux: {desc} stopped after {int(counter[0])} of {total_rows} "
                           f"image rows (stop asked after {asked})")
            raise
    if "error" in result:
        raise result["error"]
    return result["out"]
