"""Triton backend of the cached engine (placeholder until the kernels land)."""
from __future__ import annotations


def status(device):
    return False, "the Triton backend is not implemented yet"


def run(*args, **kwargs):
    raise RuntimeError("backend='triton' is not available: the Triton backend is not implemented yet")
