"""The SVI engine shared by every model: fit loop, callbacks, history, checkpoints, devices."""

from .callbacks import Callback, CheckpointEvery, EpochMetrics, FitState, History
from .checkpoint import ModelFileError, load_checkpoint, save_checkpoint
from .device import local_params, resolve_device, set_seed
from .engine import ELBOS, OPTIMIZERS, DivergenceError, NonFiniteLossError, SVIEngine, make_elbo, rng_state, set_rng_state

__all__ = [
    "SVIEngine", "DivergenceError", "NonFiniteLossError", "ModelFileError", "rng_state", "set_rng_state", "make_elbo", "ELBOS", "OPTIMIZERS",
    "Callback", "FitState", "History", "EpochMetrics", "CheckpointEvery",
    "save_checkpoint", "load_checkpoint", "resolve_device", "set_seed", "local_params",
]
