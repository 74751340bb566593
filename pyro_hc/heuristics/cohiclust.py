"""CoHiClust's leaf pruning as an engine callback.

CoHiClust (Znalezniak et al., "Contrastive Hierarchical Clustering", Sec. 3, "Training") grows a
complete binary tree with ``2^T`` leaves and, to reach a requested number of clusters, removes
"the least significant leaf nodes ... with the lowest expected fraction of data points
``P_T^i = (1/|X|) Σ_x P_T^i(x)``", one per epoch, after a few epochs of tree training; training
then goes on with the final number of leaves.

On the :class:`~pyro_hc.tree.ClusterTree` a prune is two edits: the leaf is removed, and its
parent, now left with one child, is spliced out (:meth:`ClusterTree.replace_with_child`), so the
sibling takes the parent's place and the tree stays a full binary tree. A model that routes
through the tree's edges then sends the probability that used to reach the pruned leaf to its
sibling (the parent's decision no longer matters). Each prune is logged as a ``"prune"`` event.

The callback only reads what the model memoised during its training step (``node_mass``) and edits
the tree; it runs no forward pass of its own and never syncs with the device before the epoch ends.
Under ``torch.distributed`` the epoch's masses are summed over the ranks (each saw its share of
every batch) before a leaf is chosen, so every rank prunes the same leaf.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..infer import distributed
from ..infer.callbacks import Callback, FitState
from ..tree import ClusterTree

__all__ = ["LeafPruning", "LeafMassModel", "prune_leaf"]


@runtime_checkable
class LeafMassModel(Protocol):
    """What :class:`LeafPruning` needs from a model.

    Attributes
    ----------
    tree : ClusterTree
        The live tree; its routing must follow the tree's edges (a pruned leaf's probability
        goes to whatever replaced its parent).
    node_mass : Tensor or None
        After every training step: ``Σ_{x in batch} P(node | x)``, detached, indexed by node id
        (entries of nodes that are not leaves are ignored).
    """

    tree: ClusterTree
    node_mass: Tensor | None


def prune_leaf(tree: ClusterTree, leaf: int) -> tuple[int, int | None]:
    """Remove ``leaf`` and splice out its parent so that every internal node keeps two children.

    Returns ``(parent, sibling)``: the removed parent and the node that took its place (``None``
    when the parent had more than two children and stays).

    Raises
    ------
    ValueError
        If ``leaf`` is not a leaf or is the only leaf.
    """
    leaf = int(leaf)
    if not tree.is_leaf(leaf):
        raise ValueError(f"node {leaf} is not a leaf of the tree")
    if len(tree.leaves()) < 2:
        raise ValueError("cannot prune the last leaf of the tree")
    parent = tree.parent(leaf)
    tree.remove_leaf(leaf)
    siblings = tree.children(parent)
    if len(siblings) != 1:  # a parent with three or more children keeps the others
        return parent, None
    sibling = siblings[0]
    tree.replace_with_child(parent)
    return parent, sibling


class LeafPruning(Callback):
    """Prune the leaf with the lowest expected share of the data, one per epoch, down to ``n_leaves``.

    During an epoch the callback sums the model's per-batch ``node_mass`` on the device. At the
    end of epoch ``e`` (0-based, counted within the phase it is attached to) it prunes if
    ``e >= start_epoch``, ``(e - start_epoch) % every == 0`` and the tree has more than
    ``n_leaves`` leaves: the leaf with the smallest ``Σ_x P(leaf | x)`` over the epoch goes (ties:
    the first in ``tree.leaves()`` order). The event ``"prune"`` is logged with the leaf, its
    share of the data, the spliced parent and the sibling that took its place; the history gets
    ``pruned`` (0 or 1) every epoch (and records ``n_leaves`` itself), and ``pruned_share`` when a leaf went.

    Parameters
    ----------
    n_leaves : int
        Leaves to keep (>= 1).
    start_epoch : int, default 10
        First epoch at whose end a leaf may be pruned (paper: 10 for MNIST, 50 for colour images).
    every : int, default 1
        Epochs between prunes (paper: 1).
    """

    def __init__(self, n_leaves: int, start_epoch: int = 10, every: int = 1) -> None:
        for name, value, minimum in (("n_leaves", n_leaves, 1), ("start_epoch", start_epoch, 0), ("every", every, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        self.n_leaves = n_leaves
        self.start_epoch = start_epoch
        self.every = every
        self._mass: Tensor | None = None
        self._version: int | None = None

    @property
    def mass(self) -> Tensor | None:
        """``Σ_x P(node | x)`` accumulated this epoch, indexed by node id (None before the first step).

        Under ``torch.distributed``: this rank's share, until an epoch end that prunes sums it over the ranks.
        """
        return self._mass

    def on_epoch_start(self, state: FitState) -> None:
        self._mass = None
        self._version = None

    def on_step_end(self, state: FitState) -> None:
        module = state.module
        if not isinstance(module, LeafMassModel):
            raise TypeError(f"{type(module).__name__} has no `tree` and `node_mass`; LeafPruning needs both")
        mass = module.node_mass
        if mass is None:
            raise ValueError(f"{type(module).__name__}.node_mass is None after a training step")
        if self._version is not None and module.tree.version != self._version:
            raise RuntimeError("the tree changed during the epoch; LeafPruning's statistics assume a fixed tree")
        self._version = module.tree.version
        if self._mass is None:
            self._mass = mass.detach().float().clone()
        else:
            self._mass.add_(mass.detach())

    def on_epoch_end(self, state: FitState) -> None:
        module = state.module
        pruned = 0
        tree = getattr(module, "tree", None)
        if tree is None:
            raise TypeError(f"{type(module).__name__} has no `tree`; LeafPruning needs one")
        epoch = int(state.epoch)
        due = epoch >= self.start_epoch and (epoch - self.start_epoch) % self.every == 0
        if due and self._mass is not None and len(tree.leaves()) > self.n_leaves:
            distributed.all_reduce_sum_(self._mass)  # every rank's share of the epoch (no-op in one process)
            leaves = tree.leaves()
            leaf_mass = self._mass[torch.as_tensor(leaves, device=self._mass.device)].double().cpu()  # one sync
            total = float(leaf_mass.sum())
            pick = int(torch.argmin(leaf_mass))
            leaf = leaves[pick]
            share = float(leaf_mass[pick]) / total if total > 0 else 0.0
            parent, sibling = prune_leaf(tree, leaf)
            tree.log_event("prune", [leaf, parent], epoch=epoch, step=state.step, leaf=leaf, share=share,
                           parent=parent, sibling=sibling)
            state.logs["pruned_share"] = share
            pruned = 1
        state.logs["pruned"] = float(pruned)  # the history adds n_leaves after this
