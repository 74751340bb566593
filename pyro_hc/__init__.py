"""pyro_hc: a Pyro model zoo for deep hierarchical clustering.

Every model is a Pyro model/guide pair (or a Pyro module whose loss SVI optimises), trained by one
SVI engine (:mod:`pyro_hc.infer`) over one cluster tree (:class:`pyro_hc.tree.ClusterTree`).

>>> import pyro_hc
>>> data = pyro_hc.load_dataset("digits")
>>> model = pyro_hc.get_model("vade", n_clusters=10).fit(data, epochs=5)   # doctest: +SKIP
>>> pyro_hc.evaluate(model, data)                                          # doctest: +SKIP
"""

from .data import Dataset, list_datasets, load_dataset, synthetic_tree
from .estimator import ClusterEstimator, NotFittedError, evaluate
from .models import get_model, list_models, load
from .tree import ClusterTree

__version__ = "0.1.0"

__all__ = [
    "ClusterEstimator", "ClusterTree", "Dataset", "NotFittedError", "evaluate", "get_model",
    "list_datasets", "list_models", "load", "load_dataset", "synthetic_tree", "__version__",
]
