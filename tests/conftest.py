"""Shared test set-up: a fixed seed, Triton's CPU interpreter switched on before
anything imports the kernels (the variable is read when ``@triton.jit`` runs), and a
Triton cache directory of this session's own, unless ``TRITON_CACHE_DIR`` is set:
the shared ``~/.triton/cache`` races with other processes compiling at the same time
(Triton reads back files another process is replacing: ``FileNotFoundError``)."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")

_OWN_TRITON_CACHE = None
if not os.environ.get("TRITON_CACHE_DIR"):
    _OWN_TRITON_CACHE = tempfile.mkdtemp(prefix="pixelaux-tests-triton-")
    os.environ["TRITON_CACHE_DIR"] = _OWN_TRITON_CACHE          # subprocesses inherit it
    atexit.register(shutil.rmtree, _OWN_TRITON_CACHE, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield


@pytest.fixture(scope="session")
def own_triton_cache():
    """The Triton cache directory this session made, or None when the user set one."""
    return _OWN_TRITON_CACHE
