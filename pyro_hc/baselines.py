"""Two-stage reference trees: cluster an embedding first, build the hierarchy after.

What every benchmark prints beside a model, so a reader sees whether a gap is the representation or
the structure: :func:`kmeans_ward_tree` (k-means, then Ward linkage of the centroids) on any
embedding (raw data, a model's own embedding, a data set's true latents), :func:`leaves_ward_tree`
(any clustering's leaves linked by Ward's method: a model's own leaves, to tell what its leaves are
worth from what its grouping of them is worth), :func:`bisecting_kmeans_tree` (DeepECT's "AE + Bisecting" baseline) and
:func:`hierarchical_kmeans_tree` (HCRL's Table 2 "HKM"). They import no model and no engine and
return a :class:`~pyro_hc.tree.ClusterTree` plus each point's leaf; :func:`kmeans_ward_levels`
(built from :func:`kmeans_leaves` and :func:`ward_levels`) returns the same two-stage hierarchy
read at a fixed number of levels, as group labels (HCRL's initial tree), and
:func:`label_tree_groups` a true hierarchy in the same form.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import networkx as nx
import numpy as np

from .tree import ClusterTree

__all__ = ["initial_clusters_check", "kmeans_ward_tree", "leaves_ward_tree", "kmeans_ward_levels", "kmeans_leaves", "ward_levels", "level_group_counts",
           "best_ward_cut", "label_tree_groups", "bisecting_kmeans_tree", "hierarchical_kmeans_tree", "SPLIT_ATTR"]

#: the node attribute holding the 1-based order in which a node was split (DeepECT, bisecting k-means)
SPLIT_ATTR = "split"


@contextlib.contextmanager
def initial_clusters_check(points: Any, n_clusters: int, model: str) -> Iterator[None]:
    """Around a scikit-learn k-means or GMM start of ``n_clusters`` on ``points``: when the points
    have fewer distinct rows than that, one warning of ours that says so, in place of
    scikit-learn's ``ConvergenceWarning`` repeated at every restart ("Number of distinct clusters
    (1) found smaller than n_clusters"), which names neither the model nor the cause."""
    points = _as_points(points)
    # the first rows usually settle it; counting all of them (6 s on 70,000 raw MNIST images) only if they do not
    distinct = len(np.unique(points[:1024], axis=0))
    if distinct < n_clusters:
        distinct = len(np.unique(points, axis=0))
    if distinct >= n_clusters:
        yield
        return
    warnings.warn(f"{model}: its initial clustering sees {distinct} distinct point(s) for n_clusters={n_clusters} "
                  "(constant or duplicated data, or a collapsed embedding), so some clusters start as copies of "
                  "others", RuntimeWarning, stacklevel=3)
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Number of distinct clusters", category=ConvergenceWarning)
        yield


def kmeans_ward_tree(x: Any, n_clusters: int, seed: int = 0) -> tuple[ClusterTree, np.ndarray]:
    """The two-stage baseline hierarchy: k-means into ``n_clusters`` leaves, then Ward linkage of the centroids.

    The pipeline the HCRL paper argues against (clustering first, hierarchy after, no
    representation learning), used by the hierarchy-recovery test and benchmark. Given the true
    number of leaves it is an oracle on ``k``.

    Parameters
    ----------
    x : array-like
        ``[N, D]`` points (raw data, an embedding, or a data set's true ``latent``).
    n_clusters : int
        Number of k-means clusters, the leaves of the tree (>= 2, at most ``N``).
    seed : int
        k-means' ``random_state`` (10 restarts).

    Returns
    -------
    tree : ClusterTree
        A binary tree: leaves ``0 .. n_clusters - 1`` are the k-means clusters, the merge ``i`` of
        the linkage is node ``n_clusters + i``, and the root is ``2 n_clusters - 2``.
    leaves : numpy.ndarray
        ``[N]`` the leaf of each point.
    """
    x = _as_points(x)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"x must be a finite [N, D] array, got shape {x.shape}")
    if not isinstance(n_clusters, (int, np.integer)) or not 2 <= n_clusters <= x.shape[0]:
        raise ValueError(f"n_clusters must be an integer in [2, {x.shape[0]}], got {n_clusters!r}")
    centroids, leaves = kmeans_leaves(x, int(n_clusters), seed)
    return _ward_tree(centroids), leaves


def leaves_ward_tree(x: Any, assignments: Any) -> tuple[ClusterTree, np.ndarray]:
    """Any clustering's leaves, linked by Ward's method on their centroids in ``x``.

    The second stage of :func:`kmeans_ward_tree`, for leaves found by something else: a model's own
    leaves (``model.predict``) re-linked in its own embedding separate what its leaves are worth from
    what its grouping of them is worth.

    Parameters
    ----------
    x : array-like
        ``[N, D]`` points.
    assignments : array-like of int
        ``[N]`` each point's cluster (any ids; at least two distinct).

    Returns
    -------
    tree : ClusterTree
        A binary tree whose leaves ``0 .. K - 1`` are the clusters in ascending order of their ids; the
        merge ``i`` of the linkage is node ``K + i``.
    leaves : numpy.ndarray
        ``[N]`` the leaf of each point.
    """
    x = _as_points(x)
    assignments = np.asarray(assignments.detach().cpu() if hasattr(assignments, "detach") else assignments)
    if x.ndim != 2 or assignments.shape != (x.shape[0],):
        raise ValueError(f"need [N, D] points and [N] assignments, got {x.shape} and {assignments.shape}")
    ids, leaves = np.unique(assignments, return_inverse=True)
    n_clusters = len(ids)
    if n_clusters < 2:
        raise ValueError("Ward's method needs at least two clusters to link, got one")
    counts = np.bincount(leaves, minlength=n_clusters)
    centroids = np.zeros((n_clusters, x.shape[1]))
    np.add.at(centroids, leaves, x)
    centroids /= counts[:, None]
    return _ward_tree(centroids), leaves.astype(np.int64)


def _as_points(x: Any) -> np.ndarray:
    """A tensor or array-like as a float64 NumPy array (on the host)."""
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)


def _ward_tree(centroids: np.ndarray) -> ClusterTree:
    """The Ward linkage of ``[K, D]`` centroids as a binary tree: leaves ``0 .. K - 1``, merge ``i`` is node ``K + i``."""
    from sklearn.cluster import AgglomerativeClustering

    n_clusters = len(centroids)
    ward = AgglomerativeClustering(n_clusters=1, linkage="ward", compute_full_tree=True).fit(centroids)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n_clusters))
    for merge, (a, b) in enumerate(ward.children_):
        graph.add_edges_from([(n_clusters + merge, int(a)), (n_clusters + merge, int(b))])
    return ClusterTree.from_graph(graph)


def level_group_counts(n_leaves: int, depth: int) -> list[int]:
    """Groups per level of a ``depth``-level tree over ``n_leaves`` leaves, levels 1 .. depth-1:
    ``round(n_leaves ** (l / (depth - 1)))``, an even fan-out (20 leaves at depth 3: 4 groups of
    about 5; at depth 4: 3, 7, 20), never decreasing and never more than the leaves."""
    counts, previous = [], 1
    for level in range(1, depth):
        count = min(n_leaves, max(previous, int(round(n_leaves ** (level / (depth - 1))))))
        counts.append(count)
        previous = count
    return counts


def kmeans_ward_levels(x: Any, n_leaves: int, depth: int, seed: int = 0,
                       group_counts: Sequence[int] | None = None) -> np.ndarray:
    """k-means into ``n_leaves`` leaves, then the Ward linkage of the centroids cut into nested groups
    at every level of a ``depth``-level tree (``group_counts`` groups at levels ``1 .. depth - 2``;
    default :func:`level_group_counts`, an even fan-out).

    The two-stage hierarchy of :func:`kmeans_ward_tree`, read at fixed levels: an nCRP tree has
    every leaf at full depth, so this is the shape a model of ``depth`` levels can start from.

    Returns
    -------
    numpy.ndarray
        ``int64 [N, depth - 1]``: each point's group at levels ``1 .. depth - 1`` (the last column
        is its k-means leaf, ``0 .. n_leaves - 1``; a column's groups are ``0 .. g - 1``). Groups are
        nested: points of one group at level ``l`` share their group at every level above.

    Raises
    ------
    ValueError
        If ``x`` is not a finite ``[N, D]`` array, ``n_leaves`` is not in ``[1, N]``, ``depth < 2``,
        or ``group_counts`` does not hold ``depth - 2`` non-decreasing counts in ``[1, n_leaves]``.
    """
    points = _as_points(x)
    if points.ndim != 2 or not np.all(np.isfinite(points)):
        raise ValueError(f"x must be a finite [N, D] array, got shape {points.shape}")
    if isinstance(n_leaves, bool) or not isinstance(n_leaves, (int, np.integer)) or not 1 <= n_leaves <= len(points):
        raise ValueError(f"n_leaves must be an integer in [1, {len(points)}], got {n_leaves!r}")
    if depth < 2:
        raise ValueError(f"depth must be >= 2 levels (root and leaves), got {depth}")
    centroids, leaf = kmeans_leaves(points, int(n_leaves), seed)
    counts = level_group_counts(int(n_leaves), depth)[:-1] if group_counts is None else list(group_counts)
    return ward_levels(centroids, leaf, counts)


def best_ward_cut(centroids: np.ndarray, leaf: np.ndarray, depth: int,
                  score: Callable[[np.ndarray], float]) -> tuple[np.ndarray, float]:
    """The Ward linkage of ``centroids`` cut into the number of level-1 groups (``1 .. K``) whose
    nested groups (:func:`ward_levels`; levels below the first at an even fan-out, never fewer
    groups than the level above) score highest under ``score`` — e.g. a model's
    ``structure_elbo(data, groups)`` — so a two-stage tree is read at the depth a model has, judged
    by the model's own objective. Returns the groups, ``int64 [N, depth - 1]``, and their score."""
    n_leaves = len(centroids)
    finer = level_group_counts(n_leaves, depth)[1:-1]
    best = None
    for count in range(1, n_leaves + 1):
        groups = ward_levels(centroids, leaf, [count] + [max(count, c) for c in finer])
        value = float(score(groups))
        if best is None or value > best[1]:
            best = (groups, value)
    return best


def label_tree_groups(label_tree: Any, labels: Any, depth: int) -> np.ndarray:
    """A true hierarchy as nested group labels: each datum's node of ``label_tree`` at levels
    ``1 .. depth - 1`` below the root, in the form :func:`kmeans_ward_levels` returns (and
    ``HCRL.structure_elbo`` scores), so a model can score the true tree beside its own.

    A leaf above full depth is repeated down to it (its node id again at every lower level: a chain
    that holds the same data). Node ids of ``label_tree`` serve as the group labels.

    Parameters
    ----------
    label_tree : networkx.DiGraph or object with a ``.graph`` DiGraph
        Rooted tree, edges parent -> child, with each class on the leaf that carries it in a
        ``"label"`` attribute (``Dataset.tree`` of ``synthetic_tree`` and ``20newsgroups``).
    labels : array-like of int, shape (N,)
        Each datum's class.
    depth : int
        Levels of the tree to fill, the root included (a model's ``depth``).

    Returns
    -------
    numpy.ndarray
        ``int64 [N, depth - 1]``.

    Raises
    ------
    ValueError
        A label on an internal node (its data are emitted above the leaves, which leaf groups
        cannot say), a class of ``labels`` on no leaf, or a leaf deeper than ``depth - 1`` levels.
    """
    graph = label_tree if isinstance(label_tree, nx.DiGraph) else label_tree.graph  # (a DiGraph's .graph is a dict)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} and dtype {labels.dtype}")
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 2:
        raise ValueError(f"depth must be an integer >= 2 levels (root and leaves), got {depth!r}")
    root = next(node for node in graph if graph.in_degree(node) == 0)
    node_of_label = {label: node for node, label in graph.nodes(data="label") if label is not None}
    inner = sorted(label for label, node in node_of_label.items() if graph.out_degree(node) > 0)
    if inner:
        raise ValueError(f"classes {inner} sit on internal nodes of label_tree: their data are not a leaf's")
    missing = sorted(set(np.unique(labels).tolist()) - set(node_of_label))
    if missing:
        raise ValueError(f"classes {missing} of labels are on no leaf of label_tree")
    rows = np.zeros((max(node_of_label) + 1, depth - 1), dtype=np.int64)  # one row per class, read per datum
    for label, leaf in node_of_label.items():
        path = nx.shortest_path(graph, root, leaf)[1:]
        if len(path) > depth - 1:
            raise ValueError(f"class {label} sits {len(path)} levels below the root, deeper than "
                             f"depth - 1 = {depth - 1}")
        rows[label] = path + path[-1:] * (depth - 1 - len(path))
    return rows[labels]


def kmeans_leaves(x: Any, n_leaves: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k-means (10 restarts): the ``[n_leaves, D]`` centroids and each point's cluster, ``int64 [N]``."""
    from sklearn.cluster import KMeans

    kmeans = KMeans(int(n_leaves), n_init=10, random_state=seed).fit(_as_points(x))
    return kmeans.cluster_centers_, kmeans.labels_.astype(np.int64)


def ward_levels(centroids: np.ndarray, leaf: np.ndarray, group_counts: Sequence[int]) -> np.ndarray:
    """The Ward linkage of ``centroids`` cut into ``group_counts[l]`` nested groups for each level above the
    leaves; returns ``int64 [N, len(group_counts) + 1]`` (the last column ``leaf``), as :func:`kmeans_ward_levels`."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n_leaves = len(centroids)
    counts = [int(c) for c in group_counts]
    if any(not 1 <= c <= n_leaves for c in counts) or counts != sorted(counts):
        raise ValueError(f"group_counts must be non-decreasing counts in [1, {n_leaves}], got {counts}")
    columns = []
    merges = linkage(centroids, method="ward") if n_leaves > 1 and counts else None
    for count in counts:
        if merges is None:
            group_of_leaf = np.zeros(n_leaves, dtype=np.int64)
        else:
            _, group_of_leaf = np.unique(fcluster(merges, t=count, criterion="maxclust"), return_inverse=True)
        columns.append(group_of_leaf[leaf])  # 0 .. g-1 with no gaps
    return np.stack([*columns, leaf], axis=1).astype(np.int64)


def bisecting_kmeans_tree(embedding, n_leaves: int, seed: int | None = 0,
                          n_init: int = 1) -> tuple[ClusterTree, np.ndarray]:
    """Bisecting k-means (scikit-learn, splitting the cluster with the largest SSE) as a ClusterTree.

    Returns the tree, whose split nodes carry their split order (``"split"``, so
    :func:`flat_nodes` applies), and each point's leaf node id. scikit-learn keeps its bisection
    history in the private ``_bisecting_tree``; with ``bisecting_strategy="biggest_inertia"`` it
    always splits the current leaf with the largest score, so replaying "split the frontier node
    with the largest score" recovers the split order.
    """
    embedding = _as_points(embedding)
    from sklearn.cluster import BisectingKMeans

    model = BisectingKMeans(n_clusters=n_leaves, bisecting_strategy="biggest_inertia", random_state=seed,
                            n_init=n_init).fit(embedding)
    root = getattr(model, "_bisecting_tree", None)
    if root is None or not hasattr(root, "left"):
        raise RuntimeError("this scikit-learn version does not expose BisectingKMeans._bisecting_tree")
    tree = ClusterTree()
    label_to_node: dict[int, int] = {}
    frontier = {tree.root: root}
    split = 0
    while True:
        splittable = [(node, item) for node, item in frontier.items() if item.left is not None]
        if not splittable:
            break
        node, item = max(splittable, key=lambda pair: pair[1].score)
        split += 1
        tree.graph.nodes[node][SPLIT_ATTR] = split
        del frontier[node]
        for child_item in (item.left, item.right):
            frontier[tree.add_child(node)] = child_item
    tree.graph.graph["n_splits"] = split
    for node, item in frontier.items():
        label_to_node[int(item.label)] = node
    assignments = np.array([label_to_node[int(label)] for label in model.labels_], dtype=np.int64)
    return tree, assignments


def hierarchical_kmeans_tree(x: Any, branching: int, levels: int, seed: int = 0) -> tuple[ClusterTree, np.ndarray]:
    """Hierarchical k-means (Nistér & Stewénius 2006): k-means into ``branching`` clusters, recursively.

    HCRL's Table 2 baseline ("HKM", and "VaDE + HKM" on VaDE's embedding). Every node holding at
    least ``branching`` points is split by k-means (3 restarts) until ``levels`` levels below the
    root; a smaller node stays a leaf. The points end on the leaves.

    Returns
    -------
    (ClusterTree, numpy.ndarray)
        The tree and each point's leaf id.

    Raises
    ------
    ValueError
        If ``x`` is not ``[N, D]``, or ``branching < 2`` or ``levels < 1``.
    """
    from sklearn.cluster import KMeans

    points = _as_points(x)
    if points.ndim != 2:
        raise ValueError(f"x must be [N, D], got shape {points.shape}")
    if branching < 2 or levels < 1:
        raise ValueError(f"need branching >= 2 and levels >= 1, got branching={branching}, levels={levels}")
    tree = ClusterTree()
    assigned = np.full(points.shape[0], tree.root, dtype=np.int64)
    frontier = [(tree.root, np.arange(points.shape[0]))]
    for _ in range(levels):
        next_frontier = []
        for node, members in frontier:
            if members.size < branching:
                continue
            labels = KMeans(branching, n_init=3, random_state=seed).fit_predict(points[members])
            for cluster in range(branching):
                child = tree.add_child(node)
                assigned[members[labels == cluster]] = child
                next_frontier.append((child, members[labels == cluster]))
        frontier = next_frontier
    return tree, assigned
