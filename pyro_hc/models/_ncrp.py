"""What the nCRP-family models share: node parameters that follow a growing and shrinking tree.

Every node parameter lives in a tensor preallocated for ``capacity`` nodes and indexed directly by
the node's id in the :class:`~pyro_hc.tree.ClusterTree` (whose ids are the smallest free
integers, so they stay below the capacity). GROW, PRUNE and MERGE change which rows are in use;
the optimiser never has to be rebuilt, and every training step is one vectorised computation over
paths x levels driven by the cached :class:`~pyro_hc.distributions.PathIndex`.
"""

from __future__ import annotations

import warnings

import torch
from pyro.nn import PyroModule

from ..distributions import BIRTH, PathIndex, add_child_in_order, path_index
from ..infer import distributed
from ..infer.row_reset import reset_optimizer_rows
from ..tree import ClusterTree

__all__ = ["NCRPTreeModule", "add_child_in_order", "chain_tree"]


def chain_tree(depth: int) -> ClusterTree:
    """A single root-to-leaf path with ``depth`` levels (HCRL Algorithm 1, line 2)."""
    if depth < 2:
        raise ValueError(f"an nCRP tree needs depth >= 2 levels (root and leaves), got {depth}")
    tree = ClusterTree()
    tree.graph.nodes[tree.root][BIRTH] = 0
    node = tree.root
    for _ in range(depth - 1):
        node = add_child_in_order(tree, node)
    return tree


class NCRPTreeModule(PyroModule):
    """Base of the nCRP models: the tree, its cached path index and the structural moves.

    Subclasses define ``_init_node(node, parent, target)``, which initialises the parameter rows of
    a node GROW has just created (``target``: mean and spread of its data in the embedding, or
    None), ``path_responsibilities(x)``, which the heuristics read, and ``node_parameter_names``,
    the parameters indexed by node id (whose optimiser state is reset row by row for every new or
    reused node, see :meth:`reset_node_optimizer_state`).
    """

    node_parameter_names: tuple[str, ...] = ()

    def __init__(self, depth: int, capacity: int) -> None:
        super().__init__()
        if capacity < depth:
            raise ValueError(f"capacity ({capacity}) must hold at least one path of depth {depth}")
        self.depth = depth
        self.capacity = capacity
        self.tree = chain_tree(depth)
        self._tree_cache: dict[str, object] = {}
        self._tree_cache_key: tuple | None = None
        self._warned_full = False
        self._observed: tuple[torch.Tensor, ...] | None = None
        self._anchors: tuple[torch.Tensor, torch.Tensor] | None = None  # per path: (Gumbel score, embedding)
        self._embedding_memo: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fresh_rows: set[int] = set()  # node rows (re)initialised since the optimiser last heard

    def mark_fresh_rows(self, nodes) -> None:
        """Record node ids whose parameter rows were just (re)initialised."""
        self._fresh_rows.update(int(node) for node in nodes)

    def reset_node_optimizer_state(self, optimizer: torch.optim.Optimizer) -> list[int]:
        """Restart Adam (moments and step count) on the rows of every node (re)initialised since the
        last call, in each of ``node_parameter_names``; returns those node ids.

        A fresh row otherwise keeps the tensor's shared step count with zero moments (its first
        steps ≈ 3–6 × the learning rate) and a reused row its former second moment (nearly frozen).
        """
        rows = sorted(self._fresh_rows)
        self._fresh_rows = set()
        if rows:
            for name in self.node_parameter_names:
                param = getattr(self, name)
                if param.requires_grad:  # a frozen one (closed-form sticks) is not the optimiser's
                    reset_optimizer_rows(optimizer, param, rows)
        return rows

    # the tree's tensors ---------------------------------------------------------------------

    def _param_device(self) -> torch.device:
        return next(self.parameters()).device

    def _tree_cached(self, name: str, build):
        """``build()`` computed once per tree version and device (a training step never loops over
        the tree's nodes in Python; only a structural change triggers a rebuild)."""
        device = self._param_device()
        # keyed on the tree object too: loading a checkpoint replaces the tree with a fresh one
        key = (id(self.tree), self.tree.version, str(device))
        if self._tree_cache_key != key:
            self._tree_cache, self._tree_cache_key = {}, key
        if name not in self._tree_cache:
            self._tree_cache[name] = build(device)
        return self._tree_cache[name]

    def path_index(self) -> PathIndex:
        """Path x level node table and stick coefficients, rebuilt only after a structural change."""
        return self._tree_cached("path_index", lambda device: path_index(self.tree, self.capacity, device=device))

    def active_sticks(self) -> torch.Tensor:
        """Ids of the nodes that carry a stick variable v_i (every non-root node), ascending."""
        return self._tree_cached("active_sticks", lambda device: torch.as_tensor(
            [n for n in self.tree.nodes() if n != self.tree.root], dtype=torch.long, device=device))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``E q(z | x)``, remembered for the last batch when no gradient is taken.

        The heuristics ask for a batch's path responsibilities and then hand the same batch to
        :meth:`observe_path_responsibilities`; without the memo the encoder would run twice per
        training step for the same tensor.
        """
        if torch.is_grad_enabled():
            return self.encoder.embed(x)
        cached = self._embedding_memo
        if cached is not None and cached[0] is x:
            return cached[1]
        z = self.encoder.embed(x)
        self._embedding_memo = (x, z)
        return z

    # structural moves (called by pyro_hc.heuristics.NCRPHeuristics) ----------------------------

    @torch.no_grad()
    def grow(self, node: int) -> list[int]:
        """Add a child under ``node`` and extend it down to the leaf level; returns the new ids."""
        levels_needed = self.depth - 1 - self.tree.level(node)
        if levels_needed < 1:
            raise ValueError(f"node {node} is a leaf at full depth; GROW adds children under internal nodes")
        if len(self.tree) + levels_needed > self.capacity:
            if not self._warned_full:
                warnings.warn(f"the tree reached its capacity of {self.capacity} nodes; GROW skipped "
                              f"(raise capacity= to allow larger trees)", RuntimeWarning, stacklevel=2)
                self._warned_full = True
            return []
        target = self._grow_target(node)
        new_nodes = []
        parent = node
        for _ in range(levels_needed):
            child = add_child_in_order(self.tree, parent)
            self._init_node(child, parent, target)
            self.mark_fresh_rows([child])
            new_nodes.append(child)
            parent = child
        return new_nodes

    # where a new branch starts: the data its inner path collected ------------------------------

    def reset_path_observations(self) -> None:
        """Forget the last epoch's per-path embedding sums (called by the heuristics)."""
        self._observed = None
        self._anchors = None
        self._embedding_memo = None  # the encoder changed since: never reuse an old embedding

    @torch.no_grad()
    def observe_path_responsibilities(self, x: torch.Tensor, resp: torch.Tensor) -> None:
        """Accumulate ``Σ_n q(ζ_n = k) E[z_n|x_n]``, its square and ``Σ_n q(ζ_n = k)`` per path over an
        epoch, and keep for every path one embedding drawn with probability ``∝ q(ζ_n = k)``.

        The draw is a Gumbel-max over the epoch: ``argmax_n log q(ζ_n = k) + G_nk`` with
        ``G ~ Gumbel(0, 1)`` is datum ``n`` with probability ``q(ζ_n = k) / Σ_m q(ζ_m = k)``, and
        the running maximum needs no buffer of the data.
        """
        z = self.embed(x)
        stats = (resp.T @ z, resp.T @ z.square(), resp.sum(0))
        uniform = torch.rand_like(resp).clamp_min(torch.finfo(resp.dtype).tiny)
        scores = resp.clamp_min(torch.finfo(resp.dtype).tiny).log() - torch.log(-torch.log(uniform))
        best, row = scores.max(0)  # K: this batch's draw for every path
        drawn = z[row]
        if self._observed is None or self._observed[-1].shape != stats[-1].shape:
            self._observed, self._anchors = stats, (best, drawn)
        else:
            self._observed = tuple(old + new for old, new in zip(self._observed, stats))
            old_best, old_drawn = self._anchors
            take = best > old_best
            self._anchors = (torch.where(take, best, old_best), torch.where(take[:, None], drawn, old_drawn))

    def all_reduce_path_observations(self) -> None:
        """Sum the epoch's per-path embedding statistics over ``torch.distributed`` ranks, and keep
        the draw of the rank whose Gumbel score is highest (the draw over all ranks' data)."""
        if self._observed is not None:
            distributed.all_reduce_sum_(*self._observed)
        if self._anchors is not None and distributed.is_distributed():
            best, z = self._anchors
            global_best = best.clone()
            distributed.all_reduce_max_(global_best)
            winners = (best == global_best).to(z.dtype)
            z = z * winners[:, None]
            distributed.all_reduce_sum_(z, winners)  # a tie (probability 0) averages the tied draws
            self._anchors = (global_best, z / winners.clamp_min(1)[:, None])

    def _grow_target(self, node: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Where the new branch under ``node`` starts: one embedding drawn from the data that chose
        ``node``'s inner path (``∝ q(ζ_n = inner path)``), with the spread of that data; None if
        (almost) none did.

        The inner path stands for a branch not yet grown under ``node``. Starting the new branch
        on that data, rather than at a random perturbation of the parent, lets it explain the data
        from its first step; starting it on one datum rather than at the data's mean keeps it on
        one of the clusters the inner path collected instead of between them (on ``synthetic_tree``
        data, HCRL2 with the level prior Dirichlet(0.1, 0.2, 8): dendrogram purity 0.74 against 0.63
        from the data's mean, three seeds each).
        """
        observed = getattr(self, "_observed", None)
        if observed is None:
            return None
        paths = self.path_index()
        inner_row = paths.n_full + self.tree.internal_nodes().index(node)
        weighted, weighted_sq, mass = observed
        if inner_row >= len(mass) or float(mass[inner_row]) < 1.0:
            return None
        mean = weighted[inner_row] / mass[inner_row]
        var = (weighted_sq[inner_row] / mass[inner_row] - mean.square()).clamp_min(1e-6)
        return self._anchors[1][inner_row], var.sqrt()

    # moves accepted on the ELBO (called by pyro_hc.heuristics.ELBOStructureMoves) --------------

    def _set_node_gaussian(self, node: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        # HCRL's nodes are point Gaussians it can place; VAE-nCRP's node means are random variables
        # with their own guides, which the ELBO-tested moves do not cover
        raise TypeError(f"{type(self).__name__} does not support ELBO-tested structure moves (HCRL1 / HCRL2 do)")

    @torch.no_grad()
    def split_leaf(self, leaf: int, keep: tuple[torch.Tensor, torch.Tensor],
                   new: tuple[torch.Tensor, torch.Tensor]) -> int:
        """Birth: a new sibling leaf of ``leaf``; ``keep`` and ``new`` are the ``(mean, std)`` of the
        two halves of the leaf's data. Returns the new leaf's id."""
        if not self.tree.is_leaf(leaf) or self.tree.level(leaf) != self.depth - 1:
            raise ValueError(f"node {leaf} is not a leaf at full depth")
        parent = self.tree.parent(leaf)
        child = add_child_in_order(self.tree, parent)
        self._init_node(child, parent, new)
        self._set_node_gaussian(child, *new)
        self._set_node_gaussian(leaf, *keep)
        self.mark_fresh_rows([leaf, child])
        return child

    @torch.no_grad()
    def merge_leaves(self, keep: int, drop: int, merged: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Merge of two sibling leaves: ``drop`` leaves the tree, ``keep`` takes the Gaussian of both's data."""
        if self.tree.parent(keep) != self.tree.parent(drop) or keep == drop:
            raise ValueError(f"leaves {keep} and {drop} are not two siblings")
        self.tree.remove_leaf(drop)
        self._set_node_gaussian(keep, *merged)
        self.mark_fresh_rows([keep])

    @torch.no_grad()
    def add_leaf(self, parent: int, gaussian: tuple[torch.Tensor, torch.Tensor]) -> int:
        """Birth from the data ``parent``'s ancestors emit: a new leaf below ``parent`` (one level
        above the leaves) with Gaussian ``(mean, std)``. Returns its id."""
        if self.tree.is_leaf(parent) or self.tree.level(parent) != self.depth - 2:
            raise ValueError(f"node {parent} is not an internal node one level above the leaves")
        leaf = add_child_in_order(self.tree, parent)
        self._init_node(leaf, parent, gaussian)
        self._place({leaf: gaussian})
        return leaf

    @torch.no_grad()
    def split_internal(self, node: int, moved: list[int], gaussians: dict[int, tuple[torch.Tensor, torch.Tensor]]
                       ) -> int:
        """Coarse birth: a new sibling of internal node ``node`` adopts its children ``moved``.

        ``gaussians`` maps node ids (the new node under the id it will get, see
        :func:`~pyro_hc.heuristics.elbo_moves.split_internal_tree`) to ``(mean, std)``. Returns
        the new node's id."""
        children = self.tree.children(node)
        if self.tree.is_leaf(node) or not moved or not set(moved) < set(children):
            raise ValueError(f"moved={moved} must be a non-empty proper subset of node {node}'s children {children}")
        parent = self.tree.parent(node)
        sibling = add_child_in_order(self.tree, parent)
        self._init_node(sibling, parent, None)
        for child in moved:
            self.tree.move(child, sibling)
        self._place(gaussians)
        return sibling

    @torch.no_grad()
    def merge_internal(self, keep: int, drop: int, gaussians: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Coarse merge of two internal siblings: ``drop``'s children move to ``keep``, ``drop`` leaves the tree."""
        if keep == drop or self.tree.parent(keep) != self.tree.parent(drop) or self.tree.is_leaf(keep) \
                or self.tree.is_leaf(drop):
            raise ValueError(f"nodes {keep} and {drop} are not two internal siblings")
        self.tree.merge(keep, drop)
        self._place(gaussians)

    @torch.no_grad()
    def reparent(self, node: int, new_parent: int, gaussians: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Move ``node``'s subtree below ``new_parent`` (a node of its parent's level that is not its parent)."""
        old_parent = self.tree.parent(node)
        if old_parent is None or new_parent == old_parent or self.tree.is_leaf(new_parent) \
                or self.tree.level(new_parent) != self.tree.level(old_parent) or len(self.tree.children(old_parent)) < 2:
            raise ValueError(f"cannot re-parent node {node} from {old_parent} to {new_parent}: the new parent must "
                             "be another internal node of the same level, and the old one keep a child")
        self.tree.move(node, new_parent)
        self._place(gaussians)

    def _place(self, gaussians: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for target, (mean, std) in gaussians.items():
            self._set_node_gaussian(target, mean, std)
        self.mark_fresh_rows(gaussians)

    def prune(self, leaf: int) -> list[int]:
        """Remove the full path ending at ``leaf`` and the parents it leaves childless."""
        return self.tree.remove_leaf(leaf, prune_empty_parents=True)

    def merge(self, keep_leaf: int, drop_leaf: int) -> list[int]:
        """Fold full path ``drop_leaf`` into ``keep_leaf``: the data of both follow ``keep_leaf``'s
        Gaussians, so the dropped path's nodes are removed (as PRUNE does)."""
        if keep_leaf == drop_leaf:
            raise ValueError("MERGE needs two distinct full paths")
        return self.prune(drop_leaf)
