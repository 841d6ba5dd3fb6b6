"""Shared test set-up: a fixed seed, and Triton's CPU interpreter switched on before
anything imports the kernels (the variable is read when ``@triton.jit`` runs)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield
