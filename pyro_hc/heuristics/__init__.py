"""Structural heuristics: engine callbacks that edit a model's :class:`~pyro_hc.tree.ClusterTree`.

They read statistics collected during an epoch and change the tree at its end; none owns a
training loop.

- :class:`NCRPHeuristics`: GROW / PRUNE / MERGE of HCRL's Algorithm 1 (Shin, Song & Moon, 2020)
  for models with a nested stick-breaking tree (:class:`NCRPTreeModel`).
- :class:`ELBOStructureMoves`: leaf births and merges accepted only when they raise the ELBO, with
  conjugate node priors (Hughes & Sudderth's memoized-VI moves), for HCRL's ``structure="elbo"``.
  (It imports :mod:`pyro_hc.distributions` for the Normal–Gamma node prior.)
- :class:`DeepECTHeuristics`: DeepECT's split and prune (Mautz, Plant & Böhm, 2020) and its
  node-weight moving average, for models with a DeepECT cluster tree (:class:`DeepECTTreeModel`).
- :class:`LeafPruning`: CoHiClust's pruning of the leaf with the lowest expected share of the data
  (Znalezniak et al., 2023), one per epoch down to a requested number of leaves (:class:`LeafMassModel`).
"""

from .cohiclust import LeafMassModel, LeafPruning, prune_leaf
from .deepect import DeepECTHeuristics, DeepECTTreeModel
from .elbo_moves import ELBOStructureMoves
from .ncrp import MOVES, NCRPHeuristics, NCRPTreeModel

__all__ = ["NCRPHeuristics", "NCRPTreeModel", "MOVES", "ELBOStructureMoves", "DeepECTHeuristics", "DeepECTTreeModel",
           "LeafPruning", "LeafMassModel", "prune_leaf"]
