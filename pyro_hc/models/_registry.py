"""The model registry: ``register_model``, ``get_model``, ``list_models``, ``load``.

Names are normalised to lower case with ``-`` read as ``_``, so ``get_model("VAE-nCRP")`` and
``get_model("vae_ncrp")`` are the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T", bound=type)

__all__ = ["register_model", "get_model", "get_model_class", "list_models", "load"]

_MODELS: dict[str, type] = {}


def _normalise(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"model names are strings, got {type(name).__name__}")
    return name.strip().lower().replace("-", "_")


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: make an estimator available as ``get_model(name)``."""

    def wrap(cls: T) -> T:
        key = _normalise(name)
        if key in _MODELS and _MODELS[key] is not cls:
            raise ValueError(f"a model named {key!r} is already registered ({_MODELS[key].__name__})")
        _MODELS[key] = cls
        cls.name = key
        return cls

    return wrap


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def get_model_class(name: str) -> type:
    key = _normalise(name)
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _MODELS[key]


def get_model(name: str, **config: Any):
    """An unfitted estimator of the named model, configured by ``config`` (its constructor's arguments)."""
    return get_model_class(name)(**config)


def load(path: str | Path, device: str | torch.device = "cpu"):
    """Restore a fitted model saved by ``model.save(path)`` (or a training checkpoint), tree included."""
    from ..infer.checkpoint import ModelFileError, load_checkpoint

    payload = load_checkpoint(path, map_location="cpu")  # ModelFileError for an empty/truncated/damaged file
    if not all(key in payload for key in ("model", "config", "data_spec", "module")):
        raise ModelFileError(path, "foreign", "not a pyro_hc model file (no 'model'/'config'/'module' entries)")
    try:
        estimator = get_model(payload["model"], **payload["config"])
        estimator._restore(payload, device=device)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelFileError(path, "mismatch", f"not loadable: its parameters do not fit its {payload['model']!r} "
                             f"configuration ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    return estimator
