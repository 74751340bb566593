"""Device selection and seeding shared by every fit."""

from __future__ import annotations

import random

import numpy as np
import pyro
import torch

from . import distributed

__all__ = ["resolve_device", "set_seed", "local_params"]


def local_params():
    """Context in which ``PyroModule`` parameters stay inside their module (not Pyro's global store).

    pyro_hc builds, trains and queries every model inside it, so two models in one process never
    share or overwrite parameters. Pyro fixes the mode of a ``PyroModule`` when it is *built*, and a
    module used outside the context registers its parameters globally again: wrap your own calls to
    ``model.module_.model``/``guide`` in ``with pyro_hc.infer.local_params():``.
    """
    return pyro.settings.context(module_local_params=True)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None`` into CUDA when available (``cuda:LOCAL_RANK`` under ``torchrun``), else
    CPU; validate anything else.

    Raises
    ------
    ValueError
        For a device string torch does not understand, or a CUDA device on a machine without one.
    """
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if distributed.is_distributed():  # one GPU per rank under torchrun
            return distributed.local_device()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return resolved


def set_seed(seed: int | None) -> None:
    """Seed Python, NumPy, torch (all devices) and Pyro so that a fit is reproducible."""
    if seed is None:
        return
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    pyro.set_rng_seed(int(seed))  # seeds torch (CPU and CUDA) as well
