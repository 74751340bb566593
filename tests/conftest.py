"""Shared fixtures: small data sets and a fitted tiny VaDE reused by several test files."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro_hc  # noqa: E402

# Tiny networks keep the suite inside its CPU budget; the paper-sized default is tested once.
TINY_VADE = dict(n_clusters=10, latent_dim=4, hidden_dims=(32,), pretrain_epochs=2)


@pytest.fixture(scope="session")
def digits():
    return pyro_hc.load_dataset("digits")


@pytest.fixture(scope="session")
def tiny_vade(digits):
    torch.set_num_threads(2)
    return pyro_hc.get_model("vade", **TINY_VADE).fit(digits, epochs=2, seed=0, progress=False)


@pytest.fixture(scope="session")
def default_vade(digits):
    """VaDE at its defaults on the digits, seed 0, two threads: fitted once, for the VaDE defaults test
    and as the start (``init_from``) of the k-DVAE quality test (about 100 s of the suite)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return pyro_hc.get_model("vade").fit(digits, seed=0, progress=False)
    finally:
        torch.set_num_threads(previous)
