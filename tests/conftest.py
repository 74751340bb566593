"""Shared fixtures: small data sets and a fitted tiny VaDE reused by several test files."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro_hc  # noqa: E402

#: torch threads of the fitting fixtures: one per pytest-xdist worker (``make test`` runs two, one per
#: core, and subprocesses inherit OMP_NUM_THREADS), two when the suite runs in a single process
IN_WORKER = "PYTEST_XDIST_WORKER" in os.environ
FIT_THREADS = 1 if IN_WORKER else 2
if IN_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block at ``n`` torch threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Tiny networks keep the suite inside its CPU budget; the paper-sized default is tested once.
TINY_VADE = dict(n_clusters=10, latent_dim=4, hidden_dims=(32,), pretrain_epochs=2)


@pytest.fixture(scope="session")
def digits():
    return pyro_hc.load_dataset("digits")


@pytest.fixture(scope="session")
def tiny_vade(digits):
    torch.set_num_threads(FIT_THREADS)
    return pyro_hc.get_model("vade", **TINY_VADE).fit(digits, epochs=2, seed=0, progress=False)
