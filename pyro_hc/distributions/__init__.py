"""Distributions and approximations shared by the hierarchical models of pyro_hc.

* :class:`NestedStickBreaking` with :func:`path_index` / :class:`PathIndex`: the truncated
  nested stick-breaking prior over the full and inner paths of a
  :class:`~pyro_hc.tree.ClusterTree` (Wang & Blei 2009; HCRL phase 1).
* :class:`GaussianTreeDrift`: parent-to-child Gaussian drift of node means (VAE-nCRP).
* :func:`dirichlet_laplace_approximation`: the logistic-normal approximation of a
  Dirichlet prior (MacKay 1998; Srivastava & Sutton 2017; HCRL phase 2).
"""

from .logistic_normal import dirichlet_laplace_approximation
from .nested_stick_breaking import BIRTH, NestedStickBreaking, PathIndex, path_index, sibling_order
from .tree_drift import GaussianTreeDrift

__all__ = ["BIRTH", "GaussianTreeDrift", "NestedStickBreaking", "PathIndex", "dirichlet_laplace_approximation",
           "path_index", "sibling_order"]
