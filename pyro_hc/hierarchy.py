"""Distances read off a cluster tree: between points (edges between their nodes) and between classes.

CoHiClust (Znalezniak et al., "Contrastive Hierarchical Clustering", Sec. 4.1) measures how far
apart two examples are by the number of edges that connect the leaves they fall into, and how
related two ground-truth classes ``A`` and ``B`` are by the average of that distance over all
pairs, ``d(A, B) = (1 / Z) Σ_{a ∈ A} Σ_{b ∈ B} d(a, b)`` (the matrices of its Figure 4). Both work
for any model's tree: they need the tree and the node each point is assigned to (what
``model.predict`` returns), nothing else.

The two-stage baseline trees that tree models are measured against live in :mod:`pyro_hc.baselines`.

Like :mod:`pyro_hc.metrics`, this module imports no model and no engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .tree import ClusterTree

__all__ = ["hierarchy_distance", "class_distance_matrix", "node_distance_matrix"]


def _as_nodes(values: Any, name: str) -> np.ndarray:
    """Node ids as an ``int64`` array (lists, numpy arrays, torch tensors or a single int)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{name} must hold integer node ids")
    elif array.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer node ids, got dtype {array.dtype}")
    return array.astype(np.int64)


def _root_paths(tree: ClusterTree, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Root-to-node paths of ``nodes`` as a ``[len(nodes), depth + 1]`` matrix padded with -1, and their lengths."""
    paths = [tree.ancestors(int(node)) for node in nodes]  # raises NodeNotFoundError for unknown ids
    width = max((len(p) for p in paths), default=1)
    matrix = np.full((len(paths), width), -1, dtype=np.int64)
    for row, path in enumerate(paths):
        matrix[row, : len(path)] = path
    return matrix, np.array([len(p) for p in paths], dtype=np.int64)


def node_distance_matrix(tree: ClusterTree, nodes: Any | None = None) -> np.ndarray:
    """Edges between every pair of ``nodes`` (default: ``tree.leaves()``), a symmetric ``[n, n]`` matrix.

    ``d(u, v) = level(u) + level(v) − 2 level(lca(u, v))``; the diagonal is 0.
    """
    nodes = np.asarray(tree.leaves(), dtype=np.int64) if nodes is None else _as_nodes(nodes, "nodes").reshape(-1)
    paths, lengths = _root_paths(tree, nodes)
    # two root paths agree on a prefix (the path to the lca) and nowhere after it
    common = ((paths[:, None, :] == paths[None, :, :]) & (paths[:, None, :] >= 0)).sum(-1)
    return lengths[:, None] + lengths[None, :] - 2 * common


def hierarchy_distance(tree: ClusterTree, leaf_a: Any, leaf_b: Any) -> np.ndarray | int:
    """Number of edges between the nodes ``leaf_a`` and ``leaf_b`` of ``tree`` (CoHiClust Sec. 4.1).

    ``leaf_a`` and ``leaf_b`` are node ids (usually leaves, as ``model.predict`` returns), single
    ids or arrays that broadcast against each other; the result has their broadcast shape (an
    ``int`` for two scalars). Same leaf: 0; siblings: 2; leaves whose lowest common ancestor is
    the root of a complete binary tree of depth ``T``: ``2T``.

    The distances of the few distinct nodes are computed once and then gathered, so long arrays
    of points cost no Python loop over points.

    Raises
    ------
    NodeNotFoundError
        If an id is not a node of ``tree``.
    """
    a = _as_nodes(leaf_a, "leaf_a")
    b = _as_nodes(leaf_b, "leaf_b")
    a, b = np.broadcast_arrays(a, b)
    distinct, inverse = np.unique(np.concatenate([a.reshape(-1), b.reshape(-1)]), return_inverse=True)
    table = node_distance_matrix(tree, distinct)
    inverse = inverse.reshape(-1)
    ia, ib = inverse[: a.size].reshape(a.shape), inverse[a.size:].reshape(b.shape)
    result = table[ia, ib]
    return int(result) if result.ndim == 0 else result


def class_distance_matrix(tree: ClusterTree, leaves: Any, labels: Any) -> np.ndarray:
    """The average hierarchy distance between the points of every pair of classes (CoHiClust Fig. 4).

    ``D[A, B] = (1 / Z) Σ_{a ∈ A} Σ_{b ∈ B} d(leaf(a), leaf(b))`` with ``d`` from
    :func:`hierarchy_distance`. ``Z`` counts the pairs of *distinct* points: ``|A| |B|`` off the
    diagonal and ``|A| (|A| − 1)`` on it (a point's distance to itself, 0, is left out). A class
    with a single point has ``NaN`` on the diagonal.

    Parameters
    ----------
    tree:
        The fitted tree (``model.tree``).
    leaves:
        ``[N]`` node id of each point (``model.predict(x)``).
    labels:
        ``[N]`` integer class of each point.

    Returns
    -------
    numpy.ndarray
        ``float64 [C, C]``, symmetric, rows and columns in the order of ``np.unique(labels)``
        (for labels ``0..C-1`` that all occur, row ``c`` is class ``c``).
    """
    leaves = _as_nodes(leaves, "leaves").reshape(-1)
    labels = _as_nodes(labels, "labels").reshape(-1)
    if leaves.shape != labels.shape:
        raise ValueError(f"leaves and labels differ in length: {leaves.shape[0]} != {labels.shape[0]}")
    if leaves.size == 0:
        raise ValueError("leaves is empty")
    nodes, node_index = np.unique(leaves, return_inverse=True)
    classes, class_index = np.unique(labels, return_inverse=True)
    distance = node_distance_matrix(tree, nodes).astype(np.float64)
    counts = np.zeros((classes.size, nodes.size), dtype=np.float64)  # points of class c on node v
    np.add.at(counts, (class_index.reshape(-1), node_index.reshape(-1)), 1.0)
    totals = counts @ distance @ counts.T  # Σ over all ordered pairs; self pairs add d = 0
    sizes = counts.sum(1)
    pairs = np.outer(sizes, sizes) - np.diag(sizes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, totals / np.where(pairs > 0, pairs, 1.0), np.nan)
