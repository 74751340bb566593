"""Nested stick-breaking over the paths of a truncated :class:`~pyro_hc.tree.ClusterTree`.

The nested Chinese restaurant process (nCRP) is represented by its nested stick-breaking
construction (Wang & Blei 2009), truncated to the current tree as in HCRL's first phase
(Shin, Song & Moon, AAAI 2020, Eq. 3).  Every non-root node ``i`` owns a stick variable
``v_i`` in ``(0, 1)``; its weight among its siblings is the GEM weight::

    pi_i = v_i * prod_{earlier siblings j of i} (1 - v_j)

where siblings are ordered by *creation* (:func:`sibling_order`: the ``"birth"`` node attribute
that the nCRP models stamp on every node they add, else ascending node id).  Node ids are
reused after a removal, so ordering by id would let a child grown after a prune jump ahead of
its older siblings and take their prior mass.  The probability of a *full* (root-to-leaf) path is the
product of ``pi_i`` over its non-root nodes.  The mass that the truncation leaves for a new
child below an internal node ``u`` forms one *inner path* per internal node::

    p(inner path of u) = prod_{non-root i on root..u} pi_i * prod_{children c of u} (1 - v_c)

and full plus inner path probabilities sum to one.  HCRL's GROW and PRUNE heuristics read
the inner-path mass (an inner path "ends with an internal node", HCRL Sec. 3.3).

Vectorisation
-------------
Every log path probability is a sum of ``log v_i`` and ``log(1 - v_j)`` terms with integer
coefficients, so all of them are one matrix product (:func:`path_index` builds the
coefficients once per tree structure)::

    log_p = stick_coef @ log(v) + remainder_coef @ log1p(-v)          # [..., K]

with ``v`` indexed directly by node id, like every per-node parameter in pyro_hc.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.distributions import Categorical, constraints
from torch import Tensor
from torch.distributions.utils import clamp_probs

from ..tree import ClusterTree, dataclass_to

__all__ = ["BIRTH", "NestedStickBreaking", "PathIndex", "add_child_in_order", "path_index", "sibling_order"]

#: Node attribute holding a node's creation rank (an integer, increasing over the tree's life).
BIRTH = "birth"


def sibling_order(tree: ClusterTree, parent: int) -> list[int]:
    """The children of ``parent`` in the order of the stick-breaking: by creation.

    Creation is read from the :data:`BIRTH` node attribute; if any child lacks it, the children
    are ordered by ascending id (the order of :meth:`ClusterTree.children`), as for a tree that
    was built by hand.
    """
    children = tree.children(parent)
    attributes = tree.graph.nodes
    if all(BIRTH in attributes[child] for child in children):
        return sorted(children, key=lambda child: (attributes[child][BIRTH], child))
    return children


def add_child_in_order(tree: ClusterTree, parent: int) -> int:
    """Add a child under ``parent`` stamped with the next creation rank (:data:`BIRTH`).

    The stick-breaking orders siblings by this rank, not by id: ids are reused after a removal,
    ranks never are, so a new child always comes after its older siblings.
    """
    attributes = tree.graph.nodes
    rank = 1 + max((attributes[node][BIRTH] for node in tree.nodes() if BIRTH in attributes[node]), default=0)
    return tree.add_child(parent, **{BIRTH: rank})


@dataclass(frozen=True)
class PathIndex:
    """Coefficients and index tensors that turn stick variables into path probabilities.

    Rows ``0 .. n_full - 1`` are the full paths in the order of :meth:`ClusterTree.paths`;
    rows ``n_full .. K - 1`` are the inner paths in the order of
    :meth:`ClusterTree.inner_paths`.  Build it with :func:`path_index`.  Do not modify the
    tensors in place.

    Attributes
    ----------
    stick_coef : Tensor
        ``float [K, capacity]``: coefficient of ``log v_i`` in each log path probability.
    remainder_coef : Tensor
        ``float [K, capacity]``: coefficient of ``log(1 - v_i)`` in each log path probability.
    path_nodes : Tensor
        ``long [K, L]`` with ``L = depth + 1``: node id per level, a path shorter than ``L``
        repeating its last node (the convention of :attr:`TreeTensors.paths`).
    path_mask : Tensor
        ``bool [K, L]``: True where ``path_nodes`` holds a real node of the path.
    is_inner : Tensor
        ``bool [K]``: True for the inner paths.
    last_node : Tensor
        ``long [K]``: the node a path ends at (a leaf, or the internal node of an inner path).
    used : Tensor
        ``bool [capacity]``: True for the ids whose sticks enter some path probability (the
        live non-root nodes); the other entries of ``v`` are ignored.
    n_full : int
        Number of full (root-to-leaf) paths.
    n_inner : int
        Number of inner paths (= number of internal nodes).
    capacity : int
        Size of the last dimension of the stick tensor.
    tree_version : int
        :attr:`ClusterTree.version` of the tree the index was built from.
    """

    stick_coef: Tensor
    remainder_coef: Tensor
    path_nodes: Tensor
    path_mask: Tensor
    is_inner: Tensor
    last_node: Tensor
    used: Tensor
    n_full: int
    n_inner: int
    capacity: int
    tree_version: int

    @property
    def n_paths(self) -> int:
        """int: ``K = n_full + n_inner``, the number of values of the path variable."""
        return self.n_full + self.n_inner

    @property
    def device(self) -> torch.device:
        """torch.device: device of the tensors."""
        return self.stick_coef.device

    def to(self, device: str | torch.device) -> PathIndex:
        """Return a copy with every tensor moved to ``device``.

        Parameters
        ----------
        device : str or torch.device
            Target device.

        Returns
        -------
        PathIndex
            A new instance holding the moved tensors.
        """
        return dataclass_to(self, device)

    def log_path_probs(self, sticks: Tensor) -> Tensor:
        """Return the log probabilities of all K paths.

        Parameters
        ----------
        sticks : Tensor
            ``[..., capacity]`` stick variables in ``[0, 1]`` indexed by node id.  Entries
            of unused ids (the root, free ids) are ignored, whatever their value.  Sticks
            are clamped to ``[eps, 1 - eps]`` of their dtype (as
            :func:`torch.distributions.utils.clamp_probs` does), so that exact zeros and
            ones give finite logs and no ``0 * inf``.

        Returns
        -------
        Tensor
            ``[..., K]`` log path probabilities; ``logsumexp`` over the last dim is 0.

        Raises
        ------
        ValueError
            If ``sticks.shape[-1] != capacity``.
        """
        if sticks.dim() < 1 or sticks.shape[-1] != self.capacity:
            raise ValueError(
                f"sticks must have shape [..., {self.capacity}] (one entry per node id up to "
                f"the capacity of the index), got {tuple(sticks.shape)}"
            )
        used = self.used.to(sticks.device)
        # Unused entries may hold anything (even NaN); replace them before taking logs.
        v = clamp_probs(torch.where(used, sticks, torch.full_like(sticks, 0.5)))
        stick_coef = self.stick_coef.to(device=sticks.device, dtype=v.dtype)
        remainder_coef = self.remainder_coef.to(device=sticks.device, dtype=v.dtype)
        # HCRL Eq. 3 / Wang & Blei 2009: log p(path) = sum_i log pi_i, with
        # log pi_i = log v_i + sum_{earlier siblings j} log(1 - v_j); inner paths add
        # sum_{children c of u} log(1 - v_c).
        return torch.log(v) @ stick_coef.T + torch.log1p(-v) @ remainder_coef.T


def path_index(
    tree: ClusterTree,
    capacity: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> PathIndex:
    """Build the :class:`PathIndex` of ``tree``.

    This walks the tree in plain Python, so call it only after structural changes: a model
    should cache the result per :attr:`ClusterTree.version` (for instance, keep the index
    and rebuild it when ``index.tree_version != tree.version``), not rebuild it every step.

    Parameters
    ----------
    tree : ClusterTree
        The truncated tree.
    capacity : int
        Number of preallocated node slots; every node id must be smaller.
    device : str or torch.device, default "cpu"
        Device of the returned tensors.
    dtype : torch.dtype, optional
        Floating dtype of the coefficient matrices; default ``torch.get_default_dtype()``.
        :meth:`PathIndex.log_path_probs` casts them to the sticks' dtype anyway.

    Returns
    -------
    PathIndex

    Raises
    ------
    ValueError
        If ``capacity < 1`` or a node id is ``>= capacity``.
    """
    capacity = int(capacity)
    if capacity < 1:
        raise ValueError(f"capacity must be positive, got {capacity}")
    too_large = [node for node in tree.nodes() if node >= capacity]
    if too_large:
        raise ValueError(
            f"node id(s) {too_large[:10]} do not fit a capacity of {capacity}; node ids must be "
            "smaller than the number of preallocated node slots"
        )
    dtype = torch.get_default_dtype() if dtype is None else dtype
    tensors = tree.to_tensors()  # cpu, cached per version
    root = tree.root
    full_paths = tree.paths()
    inner_paths = tree.inner_paths()
    n_full, n_inner = len(full_paths), len(inner_paths)
    n_paths = n_full + n_inner

    # Earlier siblings of every non-root node (siblings in creation order).
    earlier: dict[int, list[int]] = {}
    for parent in tree.internal_nodes():
        children = sibling_order(tree, parent)
        for position, child in enumerate(children):
            earlier[child] = children[:position]

    stick_coef = torch.zeros(n_paths, capacity, dtype=torch.float64)
    remainder_coef = torch.zeros(n_paths, capacity, dtype=torch.float64)
    for row, path in enumerate(list(full_paths) + list(inner_paths)):
        for node in path:
            if node == root:
                continue
            stick_coef[row, node] += 1.0  # v_i of pi_i
            for sibling in earlier[node]:
                remainder_coef[row, sibling] += 1.0  # (1 - v_j) of pi_i
        if row >= n_full:  # inner path of u = path[-1]: the stick left after u's children
            for child in tree.children(path[-1]):
                remainder_coef[row, child] += 1.0

    used = torch.zeros(capacity, dtype=torch.bool)
    non_root = [node for node in tree.nodes() if node != root]
    if non_root:
        used[torch.tensor(non_root, dtype=torch.long)] = True
    path_nodes = torch.cat([tensors.paths, tensors.inner_paths], dim=0)
    path_mask = torch.cat([tensors.path_mask, tensors.inner_path_mask], dim=0)
    is_inner = torch.cat(
        [torch.zeros(n_full, dtype=torch.bool), torch.ones(n_inner, dtype=torch.bool)]
    )
    index = PathIndex(
        stick_coef=stick_coef.to(dtype),
        remainder_coef=remainder_coef.to(dtype),
        path_nodes=path_nodes,
        path_mask=path_mask,
        is_inner=is_inner,
        last_node=path_nodes[:, -1].clone(),  # padding repeats the last node
        used=used,
        n_full=n_full,
        n_inner=n_inner,
        capacity=capacity,
        tree_version=tree.version,
    )
    return index.to(device)


class NestedStickBreaking(Categorical):
    """Distribution of the path of one datum under a truncated nested stick-breaking prior.

    The value is a path index ``k`` in ``{0, ..., K - 1}`` into a :class:`PathIndex`: rows
    ``k < index.n_full`` are root-to-leaf paths, the others inner paths.  It is a
    :class:`pyro.distributions.Categorical` whose logits are the log path probabilities
    (HCRL Eq. 3 / Wang & Blei 2009), so sampling, ``log_prob``, ``enumerate_support`` and
    Pyro's parallel enumeration (``TraceEnum_ELBO``) behave exactly as for a categorical;
    gradients flow from the logits to ``sticks``.

    Parameters
    ----------
    sticks : Tensor
        ``[..., capacity]`` stick variables ``v`` in ``[0, 1]``, indexed by node id.  The
        leading dims are the batch shape.  Entries of the root and of free ids are ignored
        (they must still lie in ``[0, 1]`` when arguments are validated).
    index : PathIndex
        Built by :func:`path_index` for the current tree, with ``capacity ==
        sticks.shape[-1]``.
    validate_args : bool, optional
        Whether to validate ``sticks`` and the values given to ``log_prob``.
    full_paths_only : bool, default False
        If True, the support is the ``index.n_full`` full paths only and their probabilities are
        renormalised: ``p(ζ = k | ζ is a full path)``, the prior of the truncated tree's mixture
        (the inner paths' mass is the part of the nCRP no grown node explains; a model that
        trains only on grown nodes conditions it away).
    logits : Tensor, optional
        Only without ``sticks`` and ``index``: a categorical over paths with these logits. Pyro
        builds enumerated sites' posteriors this way (``TraceEnum_ELBO.compute_marginals``).

    Examples
    --------
    >>> from pyro_hc.tree import ClusterTree
    >>> tree = ClusterTree.flat(2)
    >>> index = path_index(tree, capacity=4)
    >>> d = NestedStickBreaking(torch.full((4,), 0.5), index)
    >>> d.probs          # paths (0, 1), (0, 2) and the inner path (0,)
    tensor([0.5000, 0.2500, 0.2500])
    """

    arg_constraints = {"sticks": constraints.unit_interval}

    def __init__(
        self,
        sticks: Tensor | None = None,
        index: PathIndex | None = None,
        validate_args: bool | None = None,
        *,
        full_paths_only: bool = False,
        logits: Tensor | None = None,
    ) -> None:
        self.full_paths_only = bool(full_paths_only)
        if logits is not None and sticks is None and index is None:
            # Pyro rebuilds enumerated sites' posteriors as ``type(d)(logits=...)``
            # (TraceEnum_ELBO.compute_marginals): a categorical over paths with no sticks.
            self.sticks, self.index = None, None
            self.arg_constraints = {}
            super().__init__(logits=logits, validate_args=validate_args)
            return
        if not isinstance(index, PathIndex):
            raise TypeError(f"index must be a PathIndex, got {type(index).__name__}")
        if not isinstance(sticks, Tensor) or not sticks.is_floating_point():
            raise TypeError("sticks must be a floating-point tensor")
        self.sticks = sticks
        self.index = index
        logits = index.log_path_probs(sticks)
        if self.full_paths_only:
            logits = logits[..., : index.n_full]  # Categorical renormalises its logits
        super().__init__(logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # noqa: D102 (see Distribution.expand)
        new = self._get_checked_instance(NestedStickBreaking, _instance)
        new.full_paths_only = self.full_paths_only
        batch_shape = torch.Size(batch_shape)
        if self.sticks is None:  # a posterior over paths built from logits
            new.sticks, new.index, new.arg_constraints = None, None, {}
        else:
            new.sticks = self.sticks.expand(batch_shape + (self.index.capacity,))
            new.index = self.index
        # Categorical.expand copies logits/probs and finishes the initialisation.
        return super().expand(batch_shape, _instance=new)
