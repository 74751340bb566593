"""Distributions and approximations shared by the hierarchical models of pyro_hc.

* :class:`NestedStickBreaking` with :func:`path_index` / :class:`PathIndex`: the truncated
  nested stick-breaking prior over the full and inner paths of a
  :class:`~pyro_hc.tree.ClusterTree` (Wang & Blei 2009; HCRL phase 1).
* :class:`NormalGamma`: the conjugate prior of a Gaussian's mean and precision, with its
  closed-form update and evidence from expected sufficient statistics (HCRL's ELBO-tested moves).
* :class:`GaussianTreeDrift`: parent-to-child Gaussian drift of node means (VAE-nCRP).
* :func:`dirichlet_laplace_approximation`: the logistic-normal approximation of a
  Dirichlet prior (MacKay 1998; Srivastava & Sutton 2017; HCRL phase 2).
"""

from .logistic_normal import dirichlet_laplace_approximation
from .normal_gamma import NormalGamma
from .nested_stick_breaking import BIRTH, NestedStickBreaking, PathIndex, add_child_in_order, path_index, sibling_order
from .tree_drift import GaussianTreeDrift

__all__ = ["BIRTH", "GaussianTreeDrift", "NestedStickBreaking", "NormalGamma", "PathIndex", "add_child_in_order",
           "dirichlet_laplace_approximation", "path_index", "sibling_order"]
