"""DeepECT's tree growth and pruning (Mautz, Plant & Böhm 2020, Secs. 2.6–2.7) as an engine callback.

GROW (every ``grow_interval`` optimisation steps, until ``max_leaves``)
    Embed the data set (or a fixed representative sample of it), assign every point to its nearest
    leaf, pick the leaf with the largest sum of squared distances between its center and its
    points, and split it: two new leaves whose centers are found by 2-means on that leaf's points.
    The first growth step runs before the first optimisation step and splits the lone root.
PRUNE (when a node's weight falls below ``prune_threshold``)
    A node that no longer gets points has a weight (Eq. 4) that decays towards zero. It is
    removed with its subtree, and its sibling takes the place of their parent.

After every optimisation step the callback also applies the node-weight moving average of Eq. 4
(``module.update_weights()``), from the leaf counts the model recorded for that batch.

Under ``torch.distributed`` (:mod:`pyro_hc.infer.distributed`) every rank makes the same moves at
the same steps: the Eq. 4 leaf counts are summed over the ranks' shares of the batch (in the model's
``update_weights``), so the weights PRUNE reads agree; GROW embeds each rank's share of ``data``,
sums the per-leaf squared errors and counts over the ranks, gathers the chosen leaf's points from
all ranks, and rank 0's 2-means result goes to all of them.

The callback decides and the model edits (:class:`DeepECTTreeModel`), because only the model
knows how its preallocated node rows follow a structural change. Every change is logged with
:meth:`~pyro_hc.tree.ClusterTree.log_event` (kinds ``"split"`` and ``"prune"``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import Tensor

from ..infer import distributed
from ..infer.callbacks import Callback, FitState
from ..tree import ClusterTree

__all__ = ["DeepECTHeuristics", "DeepECTTreeModel"]


@runtime_checkable
class DeepECTTreeModel(Protocol):
    """What :class:`DeepECTHeuristics` needs from a model with a DeepECT cluster tree.

    Attributes
    ----------
    tree : ClusterTree
        The live binary tree.
    centers : Tensor
        ``C x d`` center rows indexed by node id (leaf rows are the leaves' centers).
    weights : Tensor
        ``C`` node weights (Eq. 4) indexed by node id.
    """

    tree: ClusterTree
    centers: Tensor
    weights: Tensor

    def embed(self, x: Tensor) -> Tensor:
        """The embedding ``enc(x)`` of a batch."""
        ...

    def assign(self, z: Tensor) -> Tensor:
        """Position in ``tree.leaves()`` of each embedding's nearest leaf."""
        ...

    def update_weights(self) -> None:
        """Apply Eq. 4 with the leaf counts of the last batch, summed over ``torch.distributed`` ranks."""
        ...

    def dead_nodes(self, threshold: float) -> list[int]:
        """Non-root nodes with weight below ``threshold``, shallowest first."""
        ...

    def split(self, leaf: int, child_centers: Tensor, child_weights: Tensor) -> list[int]:
        """Give ``leaf`` two children with these centers and weights; return their ids."""
        ...

    def prune(self, node: int) -> tuple[list[int], int]:
        """Remove ``node``'s subtree, splice out its parent; return the removed ids and the sibling."""
        ...


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class DeepECTHeuristics(Callback):
    """DeepECT's GROW and PRUNE, and the Eq. 4 weight update, as an :class:`~pyro_hc.infer.SVIEngine` callback.

    Parameters
    ----------
    data : Tensor
        The points a split is chosen on and initialised from (the training set or a fixed
        sample of it), on the training device.
    grow_interval : int, default 500
        Optimisation steps between splits (the paper's 500).
    max_leaves : int, default 20
        No split once the tree has this many leaves (the paper's 20 for the image data sets).
    prune_threshold : float, default 0.1
        A non-root node whose weight is below this is pruned (the paper's 0.1).
    prune_check_every : int, default 10
        Steps between the (host-synchronising) checks for dead nodes; 1 checks after every step
        as the paper does.
    n_init : int, default 10
        Restarts of the 2-means that initialises a split.
    embed_batch_size : int, default 4096
        Points embedded at once when choosing a split.
    seed : int, optional
        Seed of the 2-means restarts (under ``torch.distributed`` only rank 0 runs the 2-means).

    The epoch's record in the history gets ``n_leaves``, ``splits`` and ``prunes`` (the moves of
    that epoch).
    """

    def __init__(
        self,
        data: Tensor,
        grow_interval: int = 500,
        max_leaves: int = 20,
        prune_threshold: float = 0.1,
        prune_check_every: int = 10,
        n_init: int = 10,
        embed_batch_size: int = 4096,
        seed: int | None = None,
    ) -> None:
        if not isinstance(data, Tensor) or data.shape[0] < 2:
            raise ValueError("data must be a tensor of at least two points")
        self.data = data
        self.grow_interval = _positive_int(grow_interval, "grow_interval")
        self.max_leaves = _positive_int(max_leaves, "max_leaves")
        self.prune_check_every = _positive_int(prune_check_every, "prune_check_every")
        self.n_init = _positive_int(n_init, "n_init")
        self.embed_batch_size = _positive_int(embed_batch_size, "embed_batch_size")
        if float(prune_threshold) < 0:
            raise ValueError(f"prune_threshold must be >= 0, got {prune_threshold}")
        self.prune_threshold = float(prune_threshold)
        self.seed = seed
        self._splits = 0
        self._prunes = 0

    @staticmethod
    def _check_module(module) -> None:
        if not isinstance(module, DeepECTTreeModel):
            raise TypeError(f"{type(module).__name__} does not implement DeepECTTreeModel (tree, centers, "
                            "weights, embed, assign, update_weights, dead_nodes, split, prune)")

    # engine hooks ---------------------------------------------------------------------------

    def on_fit_start(self, state: FitState) -> None:
        """The first growth step: split the lone root (Sec. 2.6)."""
        module = state.module
        self._check_module(module)
        if len(module.tree.leaves()) < 2:
            self.grow(state)

    def on_epoch_start(self, state: FitState) -> None:
        self._splits = self._prunes = 0

    def on_step_end(self, state: FitState) -> None:
        module = state.module
        module.update_weights()  # Eq. 4
        if state.step % self.prune_check_every == 0:
            self.prune(state)
        n_leaves = len(module.tree.leaves())
        if n_leaves < 2 or (state.step % self.grow_interval == 0 and n_leaves < self.max_leaves):
            self.grow(state)

    def on_epoch_end(self, state: FitState) -> None:
        state.logs.update(n_leaves=float(len(state.module.tree.leaves())), splits=float(self._splits),
                          prunes=float(self._prunes))

    # the moves ------------------------------------------------------------------------------

    @torch.no_grad()
    def _embed(self, module) -> Tensor:
        """The embedding of this rank's share ``data[rank::world_size]`` (all of it in one process)."""
        data = self.data[distributed.rank()::distributed.world_size()]
        was_training = module.training
        module.eval()
        z = torch.cat([module.embed(data[i:i + self.embed_batch_size])
                       for i in range(0, data.shape[0], self.embed_batch_size)])
        module.train(was_training)
        return z

    @torch.no_grad()
    def grow(self, state: FitState) -> list[int]:
        """Split the leaf with the largest sum of squared distances to its points; returns the new ids."""
        module = state.module
        tree = module.tree
        leaves = tree.leaves()
        if len(leaves) >= self.max_leaves:
            return []
        z = self._embed(module)  # this rank's share of the points
        position = module.assign(z)
        n_leaves, world, rank = len(leaves), distributed.world_size(), distributed.rank()
        leaf_ids = torch.as_tensor(leaves, device=z.device)
        squared = (z - module.centers[leaf_ids][position]).double().square().sum(-1)
        # row r: rank r's points per leaf; the last row: the squared distances. Summed over ranks,
        # every rank holds the same table and picks the same leaf.
        stats = torch.zeros(world + 1, n_leaves, dtype=torch.float64, device=z.device)
        stats[rank].index_add_(0, position, torch.ones_like(squared))
        stats[world].index_add_(0, position, squared)
        distributed.all_reduce_sum_(stats)
        rank_counts, sse = stats[:world], stats[world]
        counts = rank_counts.sum(0)
        sse = torch.where(counts > 1, sse, torch.full_like(sse, -1.0))  # 2-means needs two points
        pick = int(sse.argmax())
        if float(sse[pick]) < 0:
            return []
        leaf = leaves[pick]
        # gather the leaf's points from all ranks (each fills its own rows, the others add zeros), in rank order
        per_rank = [int(n) for n in rank_counts[:, pick].tolist()]
        start = sum(per_rank[:rank])
        points = torch.zeros(sum(per_rank), z.shape[-1], dtype=torch.float64, device=z.device)
        points[start:start + per_rank[rank]] = z[position == pick].double()
        distributed.all_reduce_sum_(points)
        # 2-means on rank 0; its two centers and shares reach the other ranks as a sum with their zeros
        dim = z.shape[-1]
        result = torch.zeros(2 * dim + 2, dtype=torch.float64, device=z.device)
        if distributed.is_main_process():
            kmeans = KMeans(2, n_init=self.n_init, random_state=self.seed).fit(points.cpu().numpy())
            result[:2 * dim] = torch.as_tensor(kmeans.cluster_centers_.reshape(-1), device=z.device)
            result[2 * dim:] = torch.as_tensor(np.bincount(kmeans.labels_, minlength=2) / points.shape[0],
                                               device=z.device)
        distributed.all_reduce_sum_(result)
        child_centers, shares = result[:2 * dim].view(2, dim).to(z.dtype), result[2 * dim:]
        # the children split the parent's weight by their share of its points, so Eq. 3 holds from the start
        child_weights = module.weights[leaf] * shares.to(z.dtype)
        children = list(module.split(leaf, child_centers, child_weights))
        self._reset_optimizer_rows(state, module, children)
        tree.log_event("split", [leaf, *children], step=state.step, epoch=state.epoch,
                       sse=float(sse[pick]), n_points=int(points.shape[0]), shares=shares.tolist())
        self._splits += 1
        return children

    @torch.no_grad()
    def prune(self, state: FitState) -> list[int]:
        """Prune every node whose weight is below the threshold; returns the removed ids."""
        module = state.module
        removed_all: list[int] = []
        for node in module.dead_nodes(self.prune_threshold):
            tree = module.tree
            if node not in tree or node == tree.root or node in removed_all:
                continue
            weight = float(module.weights[node])
            parent = tree.parent(node)
            removed, sibling = module.prune(node)
            tree.log_event("prune", removed, step=state.step, epoch=state.epoch, node=node, parent=parent,
                           sibling=sibling, weight=weight)
            removed_all += removed
            self._prunes += 1
        return removed_all

    @staticmethod
    def _reset_optimizer_rows(state: FitState, module, rows: list[int]) -> None:
        """Forget Adam's moments of reused center rows (an id freed by pruning may come back)."""
        optimizer = getattr(state.engine, "optimizer", None)
        if optimizer is None:
            return
        slot = optimizer.state.get(module.centers)
        if not slot:
            return
        index = torch.as_tensor(rows, device=module.centers.device)
        for value in slot.values():
            if isinstance(value, Tensor) and value.shape == module.centers.shape:
                value[index] = 0.0
