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
