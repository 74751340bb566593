"""Clustering metrics: flat (accuracy, NMI, ARI) and hierarchical (dendrogram and leaf purity, F-score).

Every function is pure and depends only on numpy, scipy, scikit-learn and networkx, so the
module can be used on its own. Hierarchical metrics take the tree either as a
``networkx.DiGraph`` whose edges point parent -> child, or as any object with a ``.graph``
attribute holding such a graph (for example :class:`pyro_hc.tree.ClusterTree`).

Label-like inputs may be Python sequences, numpy arrays or torch tensors; they are converted
to 1-D ``int64`` numpy arrays. Invalid inputs (empty, length mismatch, NaN, non-integral
values, assignment to a node that is not in the tree, a graph that is not a rooted tree) raise
``ValueError``.
"""

from __future__ import annotations

import warnings
from typing import Any

import networkx as nx
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = [
    "cluster_acc",
    "nmi",
    "ari",
    "dendrogram_purity",
    "leaf_purity",
    "hierarchical_f_score",
    "cut_assignments",
]


# ---------------------------------------------------------------------------------------------
# input conversion and validation
# ---------------------------------------------------------------------------------------------


def _as_int_array(values: Any, name: str) -> np.ndarray:
    """Convert a list, numpy array or torch tensor to a non-empty 1-D ``int64`` numpy array.

    Raises
    ------
    ValueError
        If the input is not 1-D, is empty, or holds NaN, infinite or non-integral values.
    """
    # Duck-type torch tensors so that this module does not need to import torch.
    if hasattr(values, "detach") and hasattr(values, "cpu") and hasattr(values, "numpy"):
        tensor = values.detach().cpu()
        # numpy has no bfloat16; float64 holds every integer-valued float exactly up to 2**53.
        if tensor.is_floating_point():
            tensor = tensor.double()
        values = tensor.numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} could not be converted to an array: {err}") from err
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if array.dtype.kind in "biu":
        return array.astype(np.int64, copy=False)
    if array.dtype.kind == "f":
        if np.isnan(array).any():
            raise ValueError(f"{name} contains NaN")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains infinite values")
        if not np.array_equal(array, np.round(array)):
            raise ValueError(f"{name} contains non-integral values")
        return array.astype(np.int64)
    if array.dtype.kind == "O":
        # e.g. a list mixing Python ints and numpy ints, or holding None
        try:
            converted = array.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must hold integers: {err}") from err
        return _as_int_array(converted, name)
    raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")


def _check_same_length(first: np.ndarray, first_name: str, second: np.ndarray, second_name: str) -> None:
    if first.shape[0] != second.shape[0]:
        raise ValueError(
            f"{first_name} and {second_name} differ in length: {first.shape[0]} != {second.shape[0]}"
        )


def _pair(labels_true: Any, labels_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    true = _as_int_array(labels_true, "labels_true")
    pred = _as_int_array(labels_pred, "labels_pred")
    _check_same_length(true, "labels_true", pred, "labels_pred")
    return true, pred


def _as_digraph(tree: Any) -> nx.DiGraph:
    """Return the parent -> child DiGraph of ``tree`` after checking it is a rooted tree.

    Raises
    ------
    TypeError
        If ``tree`` is neither a DiGraph nor holds one in ``.graph``.
    ValueError
        If the graph is empty or not a rooted tree (arborescence).
    """
    # Check DiGraph first: a DiGraph also has a `.graph` attribute (its attribute dict).
    if isinstance(tree, nx.DiGraph):
        graph = tree
    elif isinstance(getattr(tree, "graph", None), nx.DiGraph):
        graph = tree.graph
    else:
        raise TypeError(
            "tree must be a networkx.DiGraph (edges parent -> child) or an object whose "
            f"`.graph` attribute is one; got {type(tree).__name__}"
        )
    if graph.number_of_nodes() == 0:
        raise ValueError("tree has no nodes")
    if not nx.is_arborescence(graph):
        roots = [node for node, degree in graph.in_degree() if degree == 0]
        multi_parent = [node for node, degree in graph.in_degree() if degree > 1]
        reasons = []
        if len(roots) != 1:
            reasons.append(f"{len(roots)} nodes without a parent {sorted(roots, key=repr)[:10]}")
        if multi_parent:
            reasons.append(f"nodes with several parents {sorted(multi_parent, key=repr)[:10]}")
        if not reasons:
            reasons.append("it contains a cycle or is not connected")
        raise ValueError("tree is not a rooted tree (arborescence): " + "; ".join(reasons))
    return graph


def _node_class_counts(tree: Any, assignments: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate the inputs and count the points of each class sitting on each node.

    Nodes are indexed by their position in a topological order of the tree (every parent
    before its children, so the root has index 0).

    Returns
    -------
    parent_index : np.ndarray
        ``int64 [n_nodes]``; index of each node's parent, -1 for the root.
    node_counts : np.ndarray
        ``int64 [n_nodes, n_classes]``; number of points of each class assigned to each node
        itself (descendants not included).
    """
    graph = _as_digraph(tree)
    assignments = _as_int_array(assignments, "assignments")
    labels = _as_int_array(labels, "labels")
    _check_same_length(assignments, "assignments", labels, "labels")

    order = list(nx.topological_sort(graph))
    position = {node: index for index, node in enumerate(order)}
    parent_index = np.full(len(order), -1, dtype=np.int64)
    for parent, child in graph.edges():
        parent_index[position[child]] = position[parent]

    # Map node ids through the (few) distinct assigned ids rather than point by point.
    assigned_ids, point_to_unique = np.unique(assignments, return_inverse=True)
    unknown = [int(node) for node in assigned_ids if int(node) not in position]
    if unknown:
        raise ValueError(
            f"assignments refer to node id(s) not in the tree: {unknown[:10]}"
            + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
        )
    unique_to_position = np.array([position[int(node)] for node in assigned_ids], dtype=np.int64)
    point_node = unique_to_position[point_to_unique.reshape(-1)]

    _, point_class = np.unique(labels, return_inverse=True)
    point_class = point_class.reshape(-1)
    n_nodes, n_classes = len(order), int(point_class.max()) + 1
    node_counts = np.bincount(
        point_node * n_classes + point_class, minlength=n_nodes * n_classes
    ).reshape(n_nodes, n_classes)
    return parent_index, node_counts.astype(np.int64)


def _subtree_counts(parent_index: np.ndarray, node_counts: np.ndarray) -> np.ndarray:
    """Class counts of every node's whole subtree, ``[n_nodes, n_classes]``.

    One pass over the nodes children-first (reverse topological order); index 0 is the root,
    which has no parent to pass its counts to.
    """
    subtree_counts = node_counts.copy()
    for node in range(node_counts.shape[0] - 1, 0, -1):
        subtree_counts[parent_index[node]] += subtree_counts[node]
    return subtree_counts


# ---------------------------------------------------------------------------------------------
# flat metrics
# ---------------------------------------------------------------------------------------------


def cluster_acc(labels_true: Any, labels_pred: Any) -> float:
    r"""Clustering accuracy under the best one-to-one matching of clusters to classes.

    .. math::

        \mathrm{ACC} = \max_{m} \frac{1}{N} \sum_{i=1}^{N} \mathbf{1}[y_i = m(c_i)]

    where :math:`m` ranges over injective maps between predicted clusters and classes, found
    with the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) on the
    contingency table. When there are more clusters than classes, only ``n_classes`` clusters
    are matched and the points of the other clusters count as errors (and symmetrically when
    there are fewer clusters than classes).

    Parameters
    ----------
    labels_true : array-like of int, shape (N,)
        Ground-truth classes; any integer values.
    labels_pred : array-like of int, shape (N,)
        Predicted clusters; any integer values (e.g. tree node ids), need not be contiguous.

    Returns
    -------
    float
        Accuracy in [0, 1].
    """
    true, pred = _pair(labels_true, labels_pred)
    _, true_index = np.unique(true, return_inverse=True)
    _, pred_index = np.unique(pred, return_inverse=True)
    n_classes, n_clusters = int(true_index.max()) + 1, int(pred_index.max()) + 1
    contingency = np.bincount(
        pred_index.reshape(-1) * n_classes + true_index.reshape(-1), minlength=n_clusters * n_classes
    ).reshape(n_clusters, n_classes)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    return float(contingency[rows, cols].sum() / true.shape[0])


def nmi(labels_true: Any, labels_pred: Any) -> float:
    r"""Normalized mutual information with arithmetic-mean normalisation.

    .. math::

        \mathrm{NMI}(Y, C) = \frac{I(Y; C)}{\tfrac{1}{2}\,(H(Y) + H(C))}

    Computed by :func:`sklearn.metrics.normalized_mutual_info_score`
    (``average_method="arithmetic"``).

    Parameters
    ----------
    labels_true, labels_pred : array-like of int, shape (N,)
        Ground-truth classes and predicted clusters.

    Returns
    -------
    float
        NMI in [0, 1].
    """
    true, pred = _pair(labels_true, labels_pred)
    return float(normalized_mutual_info_score(true, pred, average_method="arithmetic"))


def ari(labels_true: Any, labels_pred: Any) -> float:
    r"""Adjusted Rand index (Hubert & Arabie 1985).

    .. math::

        \mathrm{ARI} = \frac{\mathrm{RI} - \mathbb{E}[\mathrm{RI}]}{\max \mathrm{RI} - \mathbb{E}[\mathrm{RI}]}

    Computed by :func:`sklearn.metrics.adjusted_rand_score`.

    Parameters
    ----------
    labels_true, labels_pred : array-like of int, shape (N,)
        Ground-truth classes and predicted clusters.

    Returns
    -------
    float
        ARI; 1 for identical partitions, about 0 for independent ones, may be negative.
    """
    true, pred = _pair(labels_true, labels_pred)
    return float(adjusted_rand_score(true, pred))


# ---------------------------------------------------------------------------------------------
# hierarchical metrics
# ---------------------------------------------------------------------------------------------


def dendrogram_purity(tree: Any, assignments: Any, labels: Any) -> float:
    r"""Dendrogram purity (Heller & Ghahramani 2005; Kobren et al. 2017).

    The expected purity of the lowest common ancestor subtree of a pair of distinct points
    drawn uniformly from all pairs that share a class:

    .. math::

        \mathrm{DP} = \frac{1}{|\mathcal{P}|} \sum_{(i, j) \in \mathcal{P}}
            \frac{n_{y_i}(\mathrm{lca}(i, j))}{n(\mathrm{lca}(i, j))},
        \qquad \mathcal{P} = \{(i, j) : i < j,\ y_i = y_j\},

    where :math:`n_k(v)` is the number of points of class :math:`k` assigned to the subtree
    rooted at node :math:`v` (including points sitting on :math:`v` itself), :math:`n(v)` the
    number of all points there, and :math:`\mathrm{lca}(i, j)` the lowest common ancestor of the
    nodes the two points are assigned to (the node itself when both sit on the same node).

    It is computed bottom-up in :math:`O(\text{nodes} \times \text{classes})` instead of over
    all :math:`O(N^2)` pairs: the number of class-:math:`k` pairs whose lca is exactly
    :math:`v` is

    .. math::

        \binom{n_k(v)}{2} - \sum_{c \in \mathrm{children}(v)} \binom{n_k(c)}{2},

    and each of those pairs contributes :math:`n_k(v) / n(v)`.

    Parameters
    ----------
    tree : networkx.DiGraph or object with a ``.graph`` DiGraph
        Rooted tree with edges parent -> child.
    assignments : array-like of int, shape (N,)
        Node id each point is assigned to; usually a leaf, but internal nodes are allowed.
    labels : array-like of int, shape (N,)
        Ground-truth class of each point.

    Returns
    -------
    float
        Dendrogram purity in [0, 1]; ``nan`` (with a ``RuntimeWarning``) when no two points
        share a class, where it is undefined.
    """
    parent_index, node_counts = _node_class_counts(tree, assignments, labels)
    subtree_counts = _subtree_counts(parent_index, node_counts)

    same_class_pairs = subtree_counts * (subtree_counts - 1) // 2  # [n_nodes, n_classes]
    child_pairs = np.zeros_like(same_class_pairs)
    has_parent = parent_index >= 0
    np.add.at(child_pairs, parent_index[has_parent], same_class_pairs[has_parent])
    pairs_with_lca_here = same_class_pairs - child_pairs

    total_pairs = int(same_class_pairs[0].sum())  # all same-class pairs sit under the root
    if total_pairs == 0:
        warnings.warn(
            "dendrogram purity is undefined: no two points share a class; returning nan",
            RuntimeWarning,
            stacklevel=2,
        )
        return float("nan")

    subtree_sizes = subtree_counts.sum(axis=1, keepdims=True)
    # Nodes with empty subtrees have no pairs; avoid 0/0 there.
    purity = subtree_counts / np.maximum(subtree_sizes, 1)
    return float((pairs_with_lca_here * purity).sum() / total_pairs)


def leaf_purity(tree: Any, assignments: Any, labels: Any) -> float:
    r"""Leaf purity: the fraction of points whose class is the majority class of their node.

    .. math::

        \mathrm{LP} = \frac{1}{N} \sum_{v} \max_k m_k(v),

    where :math:`m_k(v)` is the number of points of class :math:`k` assigned to node
    :math:`v` itself (not to its descendants). Points usually sit on leaves; points assigned to
    an internal node count at that node, as if it were a leaf holding only them. This is the
    flat purity of the partition induced by the node assignment.

    Parameters
    ----------
    tree : networkx.DiGraph or object with a ``.graph`` DiGraph
        Rooted tree with edges parent -> child.
    assignments : array-like of int, shape (N,)
        Node id each point is assigned to.
    labels : array-like of int, shape (N,)
        Ground-truth class of each point.

    Returns
    -------
    float
        Leaf purity in (0, 1].
    """
    _, node_counts = _node_class_counts(tree, assignments, labels)
    return float(node_counts.max(axis=1).sum() / node_counts.sum())


def _true_clusters(label_tree: Any, classes: np.ndarray) -> np.ndarray:
    """``[n_clusters, n_classes]`` 0/1 membership of the classes in every non-root node of ``label_tree``.

    Its leaves carry the class in their ``"label"`` attribute (as :func:`pyro_hc.data.synthetic_tree`'s
    tree does); an internal node may carry one too (the points it emits itself,
    ``synthetic_tree(n_per_internal=...)``). A node's cluster is the set of classes on it and on
    the nodes below it.
    """
    graph = _as_digraph(label_tree)
    label_of = {node: graph.nodes[node].get("label") for node in graph}
    missing = sorted(node for node in graph if graph.out_degree(node) == 0 and label_of[node] is None)
    if missing:
        raise ValueError(f"label_tree's leaves must carry a 'label' attribute; missing on {missing[:10]}")
    column = {int(label): index for index, label in enumerate(classes)}
    on_tree = {int(label) for label in label_of.values() if label is not None}
    absent = sorted(set(column) - on_tree)
    if absent:
        raise ValueError(f"labels {absent[:10]} are not on any leaf or internal node of label_tree")
    (root,) = [node for node, degree in graph.in_degree() if degree == 0]
    clusters = [node for node in nx.topological_sort(graph) if node != root]
    membership = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    for row, node in enumerate(clusters):
        for member in (node, *nx.descendants(graph, node)):
            label = label_of[member]
            if label is not None and int(label) in column:
                membership[row, column[int(label)]] = 1
    return membership


def hierarchical_f_score(tree: Any, assignments: Any, labels: Any, label_tree: Any | None = None) -> float:
    r"""Micro-averaged F-score of a cluster tree against ground-truth clusters (Larsen & Aone 1999).

    Each ground-truth cluster :math:`c` is matched with the node :math:`v` of ``tree`` whose
    subtree fits it best,

    .. math::

        F(c) = \max_v \frac{2\, n_c(v)}{n_c + n(v)},
        \qquad
        F = \frac{\sum_c n_c\, F(c)}{\sum_c n_c},

    the harmonic mean of precision :math:`n_c(v) / n(v)` and recall :math:`n_c(v) / n_c`, where
    :math:`n(v)` counts the points in :math:`v`'s subtree (points on :math:`v` itself included)
    and :math:`n_c(v)` those of cluster :math:`c`; clusters are weighted by their size. This is
    the hierarchical clustering accuracy of HCRL's Table 2, which follows Xie, Girshick & Farhadi.

    The ground-truth clusters are the classes of ``labels``, or, with ``label_tree``, every
    non-root node of the true hierarchy (the classes on the leaves below it): a tree then scores
    1 only if it also recovers the coarse groups. The true root (all the data) is left out; it
    would match any tree's root perfectly.

    Parameters
    ----------
    tree : networkx.DiGraph or object with a ``.graph`` DiGraph
        Rooted tree with edges parent -> child.
    assignments : array-like of int, shape (N,)
        Node id each point is assigned to.
    labels : array-like of int, shape (N,)
        Ground-truth class of each point.
    label_tree : networkx.DiGraph or object with a ``.graph`` DiGraph, optional
        The true hierarchy over the classes; its leaves carry the class in a ``"label"``
        attribute (``synthetic_tree(...).tree``, ``load_dataset("20newsgroups").tree``), and
        so may internal nodes that hold points of their own (``synthetic_tree(n_per_internal=...)``).

    Returns
    -------
    float
        In (0, 1]; 1 for a tree that has a node holding exactly each true cluster.

    Raises
    ------
    ValueError
        Besides the inputs' checks: a label on no leaf of ``label_tree``, or a leaf without one.
    """
    parent_index, node_counts = _node_class_counts(tree, assignments, labels)
    subtree_counts = _subtree_counts(parent_index, node_counts).astype(np.float64)  # [V, K]
    classes = np.unique(_as_int_array(labels, "labels"))
    membership = (np.eye(len(classes), dtype=np.int64) if label_tree is None
                  else _true_clusters(label_tree, classes)).astype(np.float64)  # [C, K]
    in_both = subtree_counts @ membership.T  # n_c(v), [V, C]
    node_sizes = subtree_counts.sum(1, keepdims=True)  # n(v)
    cluster_sizes = node_counts.sum(0) @ membership.T  # n_c
    best = (2 * in_both / (cluster_sizes[None, :] + node_sizes)).max(0)
    return float((cluster_sizes * best).sum() / cluster_sizes.sum())


# ---------------------------------------------------------------------------------------------
# flat cuts of a tree
# ---------------------------------------------------------------------------------------------


def cut_assignments(tree: Any, assignments: Any, n_clusters: int, partial: bool = False) -> np.ndarray:
    """Map each point to its ancestor in a top-down cut of ``tree`` into at most ``n_clusters`` nodes.

    The cut starts at the root and repeatedly replaces the heaviest node of the current cut (the
    most points in its subtree) by its children that hold points, as long as the cut then has at
    most ``n_clusters`` nodes; it stops when no node can be expanded within that number. This
    scores a tree whose splits carry no order (an nCRP tree, whose nodes may have several
    children) at a fixed number of clusters, e.g. ``cluster_acc(labels, cut_assignments(tree,
    leaves, 10))``; DeepECT's cut by its split order (``pyro_hc.models.deepect.flat_nodes``)
    is the same idea for a binary tree grown one split at a time. A tree with at most
    ``n_clusters`` occupied leaves keeps its assignments.

    With several children per node the cut may stop short of ``n_clusters`` (on a tree with 11
    nodes below the root, at the root: one cluster). ``partial=True`` then expands the heaviest
    node in part: its heaviest children that still fit become clusters of their own and the node
    keeps the rest (the order a binary tree that split off its heaviest child first would cut
    in). The heaviest node is always the one expanded, so the cut has exactly ``n_clusters`` nodes
    whenever the tree has that many occupied leaves.

    Returns ``int64 [n_points]``: the node id (of ``tree``) of each point's cluster.
    """
    graph = _as_digraph(tree)
    assignments = _as_int_array(assignments, "assignments")
    n_clusters = int(n_clusters)
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    unknown = sorted({int(node) for node in np.unique(assignments)} - set(graph.nodes))
    if unknown:
        raise ValueError(f"assignments refer to node id(s) not in the tree: {unknown[:10]}")
    order = list(nx.topological_sort(graph))
    ids, counts = np.unique(assignments, return_counts=True)
    mass = dict.fromkeys(order, 0)
    mass.update({int(node): int(count) for node, count in zip(ids, counts)})
    for node in reversed(order):  # children first: every subtree's number of points
        for child in graph.successors(node):
            mass[node] += mass[child]
    parent = {child: node for node, child in graph.edges()}
    position = {node: i for i, node in enumerate(order)}  # ties go to the node nearer the root
    cut, settled = [order[0]], set()  # settled: nodes kept for their own points, never expanded
    while True:
        expandable = []
        for node in cut:
            if node in settled:
                continue
            occupied = [child for child in graph.successors(node) if mass[child] > 0]
            # points sitting on the node itself (an internal node that emits) keep it in the cut
            keeps_itself = mass[node] > sum(mass[child] for child in occupied)
            fits = len(cut) - 1 + len(occupied) + keeps_itself <= n_clusters
            if occupied and (fits or (partial and len(cut) < n_clusters)):
                expandable.append((mass[node], -position[node], node, occupied, keeps_itself, fits))
        if not expandable:
            break
        *_, node, occupied, keeps_itself, fits = max(expandable)
        if not fits:  # (partial) the heaviest children that fit leave; the node keeps the others
            occupied = sorted(occupied, key=lambda child: (-mass[child], position[child]))
            cut = cut + occupied[: n_clusters - len(cut)]
            settled.add(node)
            continue
        cut = [n for n in cut if n != node] + occupied
        if keeps_itself:
            cut.append(node)
            settled.add(node)
    in_cut = set(cut)
    representative = {}
    for node in (int(n) for n in ids):  # walk up to the cut (the few distinct assigned nodes)
        ancestor = node
        while ancestor not in in_cut:
            ancestor = parent[ancestor]
        representative[node] = ancestor
    return np.array([representative[int(node)] for node in assignments], dtype=np.int64)
