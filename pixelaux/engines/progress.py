"""A tqdm progress bar over pixels (or a no-op one)."""
from __future__ import annotations

import contextlib


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
