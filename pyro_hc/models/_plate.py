"""The one data plate every model uses."""

from __future__ import annotations

import pyro
import torch

__all__ = ["data_plate"]


def data_plate(x: torch.Tensor, index: torch.Tensor | None, num_data: int | None) -> pyro.plate:
    """The one data plate of every model: ``pyro.plate("data", N, subsample=index)``.

    ``index`` holds the mini-batch's positions in the full data set, so Pyro scales the batch's
    log-likelihood by ``N / len(index)``; without it the batch *is* the data.
    """
    if index is None:
        return pyro.plate("data", x.shape[0])
    size = int(num_data) if num_data is not None else x.shape[0]
    return pyro.plate("data", size, subsample=index)
