"""Gaussian drift down a tree: every node's mean is its parent's plus Normal noise (VAE-nCRP).

Goyal et al. (2017) tie the cluster means of their nCRP prior together: the root's mean is drawn
around a fixed point and each child's mean around its parent's, ``α_c ~ Normal(α_par(c), σ_N² I)``
(HCRL paper, Eq. 2, term 3.1). One joint distribution over all node means makes that prior a
single Pyro sample site with a vectorised ``log_prob``.
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

__all__ = ["GaussianTreeDrift"]


class GaussianTreeDrift(TorchDistribution):
    """Joint Normal over the ``M x d`` means of a tree's nodes with parent-to-child drift.

    Parameters
    ----------
    root_loc:
        ``[..., d]`` centre of the root's mean (``α*``); its leading dims are the batch shape.
    root_scale:
        Standard deviation of the root's mean around ``root_loc`` (positive scalar tensor).
    drift_scale:
        ``σ_N``: standard deviation of a child's mean around its parent's (positive scalar tensor).
    parent:
        ``[M]`` long: position (0..M-1) of each node's parent among the M nodes, ``-1`` for a root.
        Parents must come before their children's level (checked), any order otherwise.
    level:
        ``[M]`` long: depth of each node (roots 0), used for ancestral sampling level by level.
    """

    arg_constraints = {
        "root_loc": constraints.real_vector,
        "root_scale": constraints.positive,
        "drift_scale": constraints.positive,
    }
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, root_loc: Tensor, root_scale, drift_scale, parent: Tensor, level: Tensor,
                 validate_args=None) -> None:
        self.root_loc = root_loc
        self.root_scale = torch.as_tensor(root_scale, dtype=root_loc.dtype, device=root_loc.device)
        self.drift_scale = torch.as_tensor(drift_scale, dtype=root_loc.dtype, device=root_loc.device)
        parent = torch.as_tensor(parent, dtype=torch.long, device=root_loc.device)
        level = torch.as_tensor(level, dtype=torch.long, device=root_loc.device)
        if parent.dim() != 1 or level.shape != parent.shape or len(parent) == 0:
            raise ValueError(f"parent and level must be equal-length non-empty vectors, got "
                             f"{tuple(parent.shape)} and {tuple(level.shape)}")
        has_parent = parent >= 0
        if bool((parent >= len(parent)).any()) or bool((level[has_parent] != level[parent[has_parent]] + 1).any()) \
                or bool((level[~has_parent] != 0).any()):
            raise ValueError("parent/level do not describe a forest: a child's level must be its parent's + 1 "
                             "and roots must sit at level 0")
        self.parent, self.level, self._has_parent = parent, level, has_parent
        batch_shape = root_loc.shape[:-1]
        event_shape = torch.Size((len(parent), root_loc.shape[-1]))
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def _conditional(self, value: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and scale of each node given its parent's value in ``value``."""
        parent_value = value[..., self.parent.clamp_min(0), :]
        root = self.root_loc.unsqueeze(-2).expand_as(parent_value)
        has_parent = self._has_parent[:, None]
        loc = torch.where(has_parent, parent_value, root)
        scale = torch.where(has_parent, self.drift_scale, self.root_scale).expand_as(loc)
        return loc, scale

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        loc, scale = self._conditional(value)
        # Σ_nodes log Normal(α_i; α_par(i), σ_N² I)  (root: around α*)
        return torch.distributions.Normal(loc, scale).log_prob(value).sum((-2, -1))

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.root_loc.dtype, device=self.root_loc.device)
        value = torch.zeros(shape, dtype=self.root_loc.dtype, device=self.root_loc.device)
        for depth in range(int(self.level.max()) + 1):  # ancestral: a loop over levels, not nodes
            rows = self.level == depth
            loc, scale = self._conditional(value)
            value = torch.where(rows[:, None], loc + scale * noise, value)
        return value

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GaussianTreeDrift, _instance)
        batch_shape = torch.Size(batch_shape)
        new.root_loc = self.root_loc.expand(batch_shape + self.root_loc.shape[-1:])
        new.root_scale, new.drift_scale = self.root_scale, self.drift_scale
        new.parent, new.level, new._has_parent = self.parent, self.level, self._has_parent
        super(GaussianTreeDrift, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new
