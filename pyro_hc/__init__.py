"""pyro_hc: a Pyro model zoo for deep hierarchical clustering.

Every model is a Pyro model/guide pair (or a Pyro module whose loss SVI optimises), trained by one
SVI engine (:mod:`pyro_hc.infer`) over one cluster tree (:class:`pyro_hc.tree.ClusterTree`).

>>> import pyro_hc
>>> data = pyro_hc.load_dataset("digits")
>>> model = pyro_hc.get_model("vade", n_clusters=10).fit(data, epochs=5)   # doctest: +SKIP
>>> pyro_hc.evaluate(model, data)                                          # doctest: +SKIP

The names below load on first use (PEP 562), so ``import pyro_hc`` and ``pyro-hc --help`` do not
pay for torch, Pyro and every model until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "Dataset": "data", "list_datasets": "data", "load_dataset": "data", "synthetic_tree": "data",
    "ClusterEstimator": "estimator", "NotFittedError": "estimator", "InvalidSettingError": "estimator",
    "evaluate": "estimator",
    "get_model": "models", "list_models": "models", "load": "models",
    "ClusterTree": "tree",
    "ModelFileError": "infer", "DivergenceError": "infer", "NonFiniteLossError": "infer",
}

_SUBMODULES = ("data", "distributions", "estimator", "guides", "heuristics", "hierarchy", "infer", "inspect",
               "metrics", "models", "nn", "plot", "tree")

__all__ = [
    "ClusterEstimator", "ClusterTree", "Dataset", "DivergenceError", "InvalidSettingError", "ModelFileError",
    "NonFiniteLossError", "NotFittedError", "evaluate", "get_model", "list_datasets", "list_models", "load",
    "load_dataset", "synthetic_tree", "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from .data import Dataset, list_datasets, load_dataset, synthetic_tree
    from .estimator import ClusterEstimator, InvalidSettingError, NotFittedError, evaluate
    from .infer import DivergenceError, ModelFileError, NonFiniteLossError
    from .models import get_model, list_models, load
    from .tree import ClusterTree


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        if name in ("get_model", "list_models", "load"):
            importlib.import_module(".models", __name__)  # importing the package registers every model
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pyro_hc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
