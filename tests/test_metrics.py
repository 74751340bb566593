"""Tests for pyro_hc.metrics: brute-force comparisons, hand-computed values, error cases."""

from __future__ import annotations

import itertools
import time

import networkx as nx
import numpy as np
import pytest
import torch

from pyro_hc import metrics
from pyro_hc.metrics import ari, cluster_acc, dendrogram_purity, hierarchical_f_score, leaf_purity, nmi

# ---------------------------------------------------------------------------------------------
# helpers: random trees and brute-force reference implementations
# ---------------------------------------------------------------------------------------------


def random_rooted_tree(rng: np.random.Generator, n_nodes: int) -> nx.DiGraph:
    """A random rooted tree (edges parent -> child) with random, non-contiguous integer ids.

    Built from a uniformly random labelled tree oriented away from a random root, so depth and
    branching vary from seed to seed (chains, stars, single-child nodes all occur).
    """
    if n_nodes <= 2:
        undirected = nx.path_graph(n_nodes)
    else:
        # A uniformly random Pruefer sequence gives a uniformly random labelled tree.
        undirected = nx.from_prufer_sequence(rng.integers(0, n_nodes, size=n_nodes - 2).tolist())
    root = int(rng.integers(n_nodes))
    tree = nx.bfs_tree(undirected, root)
    # Node ids need not be 0..n-1 (ClusterTree reuses ids; DeepECT trees can be sparse).
    new_ids = rng.choice(10 * n_nodes + 10, size=n_nodes, replace=False)
    return nx.relabel_nodes(tree, {node: int(new_ids[index]) for index, node in enumerate(tree.nodes)})


def brute_force_dendrogram_purity(tree: nx.DiGraph, assignments, labels) -> float:
    """O(N^2) reference: explicit lca from ancestor sets, purity of its subtree, per pair."""
    root = next(node for node, degree in tree.in_degree() if degree == 0)
    depth = nx.shortest_path_length(tree, root)
    ancestors = {node: nx.ancestors(tree, node) | {node} for node in tree.nodes}
    subtree = {node: nx.descendants(tree, node) | {node} for node in tree.nodes}
    assignments, labels = list(assignments), list(labels)
    purities = []
    for i, j in itertools.combinations(range(len(labels)), 2):
        if labels[i] != labels[j]:
            continue
        common = ancestors[assignments[i]] & ancestors[assignments[j]]
        lca = max(common, key=lambda node: depth[node])
        inside = [k for k in range(len(labels)) if assignments[k] in subtree[lca]]
        same_class = sum(labels[k] == labels[i] for k in inside)
        purities.append(same_class / len(inside))
    return float(np.mean(purities))


def brute_force_leaf_purity(assignments, labels) -> float:
    correct = 0
    for node in set(assignments):
        classes = [label for a, label in zip(assignments, labels) if a == node]
        correct += max(classes.count(c) for c in set(classes))
    return correct / len(labels)


def brute_force_cluster_acc(labels_true, labels_pred) -> float:
    """Try every injective map between the smaller and the larger label set."""
    classes, clusters = sorted(set(labels_true)), sorted(set(labels_pred))
    best = 0
    if len(clusters) <= len(classes):
        for image in itertools.permutations(classes, len(clusters)):
            mapping = dict(zip(clusters, image))
            best = max(best, sum(mapping[p] == t for t, p in zip(labels_true, labels_pred)))
    else:
        for image in itertools.permutations(clusters, len(classes)):
            mapping = dict(zip(image, classes))
            best = max(best, sum(mapping.get(p) == t for t, p in zip(labels_true, labels_pred)))
    return best / len(labels_true)


class TreeHolder:
    """Stands in for ClusterTree: anything with a `.graph` DiGraph must be accepted."""

    def __init__(self, graph: nx.DiGraph) -> None:
        self.graph = graph


# The hand-worked example used in several tests.
#         0
#        / \
#       1   2        points: node 3: a a   node 4: a b   node 2: b b   node 1 (internal): b
#      / \
#     3   4
HAND_TREE = nx.DiGraph([(0, 1), (0, 2), (1, 3), (1, 4)])
HAND_ASSIGNMENTS = [3, 3, 4, 4, 2, 2, 1]
HAND_LABELS = [0, 0, 0, 1, 1, 1, 1]  # a = 0, b = 1


# ---------------------------------------------------------------------------------------------
# dendrogram purity and leaf purity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(60))
def test_dendrogram_and_leaf_purity_match_brute_force_on_random_trees(seed):
    rng = np.random.default_rng(seed)
    n_nodes = int(rng.integers(1, 15))
    tree = random_rooted_tree(rng, n_nodes)
    nodes = np.array(list(tree.nodes))
    n_points = int(rng.integers(2, 40))
    # Assign to any node, internal ones included; few classes so same-class pairs exist.
    assignments = rng.choice(nodes, size=n_points)
    labels = rng.integers(0, int(rng.integers(1, 5)), size=n_points)
    labels[1] = labels[0]  # at least one same-class pair, so purity is defined
    # Arbitrary (negative, sparse) class values must not matter.
    labels = labels * 7 - 3

    expected = brute_force_dendrogram_purity(tree, assignments, labels)
    assert dendrogram_purity(tree, assignments, labels) == pytest.approx(expected, abs=1e-12)
    expected_leaf = brute_force_leaf_purity(assignments.tolist(), labels.tolist())
    assert leaf_purity(tree, assignments, labels) == pytest.approx(expected_leaf, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_dendrogram_purity_matches_brute_force_with_points_on_leaves_only(seed):
    rng = np.random.default_rng(1000 + seed)
    tree = random_rooted_tree(rng, int(rng.integers(2, 25)))
    leaves = np.array([node for node in tree.nodes if tree.out_degree(node) == 0])
    assignments = rng.choice(leaves, size=50)
    labels = rng.integers(0, 3, size=50)
    expected = brute_force_dendrogram_purity(tree, assignments, labels)
    assert dendrogram_purity(tree, assignments, labels) == pytest.approx(expected, abs=1e-12)


def test_dendrogram_purity_hand_example():
    # Class a = points p1, p2 (node 3), p3 (node 4). Pairs:
    #   (p1,p2): lca 3, subtree {p1,p2} -> 2/2 = 1
    #   (p1,p3), (p2,p3): lca 1, subtree {p1,p2,p3,p4,p7} has 3 a of 5 -> 0.6 each
    # Class b = p4 (node 4), p5, p6 (node 2), p7 (node 1). Pairs:
    #   (p4,p5), (p4,p6), (p5,p7), (p6,p7): lca 0, all 7 points, 4 b -> 4/7 each
    #   (p4,p7): lca 1, 2 b of 5 -> 0.4
    #   (p5,p6): lca 2, 2/2 -> 1
    # DP = (1 + 0.6 + 0.6 + 4 * 4/7 + 0.4 + 1) / 9 = (18/5 + 16/7) / 9 = 206/315 ~= 0.653968
    assert dendrogram_purity(HAND_TREE, HAND_ASSIGNMENTS, HAND_LABELS) == pytest.approx(206 / 315)
    assert brute_force_dendrogram_purity(HAND_TREE, HAND_ASSIGNMENTS, HAND_LABELS) == pytest.approx(206 / 315)


def test_leaf_purity_hand_example():
    # Majority counts per node: node 3 -> 2 (a a), node 4 -> 1 (a b), node 2 -> 2 (b b),
    # node 1 -> 1 (b). LP = (2 + 1 + 2 + 1) / 7 = 6/7.
    assert leaf_purity(HAND_TREE, HAND_ASSIGNMENTS, HAND_LABELS) == pytest.approx(6 / 7)


def test_all_points_on_one_node():
    # Every pair has the root as lca; a class-k pair has purity n_k / N.
    tree = nx.DiGraph([(0, 1), (0, 2)])
    labels = np.array([0, 0, 0, 1, 1])
    assignments = np.zeros(5, dtype=int)
    # DP = (3 pairs * 3/5 + 1 pair * 2/5) / 4 = (9/5 + 2/5) / 4 = 11/20
    assert dendrogram_purity(tree, assignments, labels) == pytest.approx(11 / 20)
    assert leaf_purity(tree, assignments, labels) == pytest.approx(3 / 5)


def test_perfect_hierarchical_clustering_scores_one():
    tree = nx.balanced_tree(2, 3, create_using=nx.DiGraph)  # 8 leaves, ids 7..14
    leaves = [node for node in tree.nodes if tree.out_degree(node) == 0]
    labels = np.repeat(np.arange(8), 5)
    assignments = np.repeat(leaves, 5)
    assert dendrogram_purity(tree, assignments, labels) == 1.0
    assert leaf_purity(tree, assignments, labels) == 1.0
    assert cluster_acc(labels, assignments) == 1.0
    assert nmi(labels, assignments) == pytest.approx(1.0)
    assert ari(labels, assignments) == pytest.approx(1.0)


def test_purity_of_a_single_node_tree():
    tree = nx.DiGraph()
    tree.add_node(5)
    assert dendrogram_purity(tree, [5, 5, 5], [1, 1, 2]) == pytest.approx(2 / 3)
    assert leaf_purity(tree, [5, 5, 5], [1, 1, 2]) == pytest.approx(2 / 3)


def test_dendrogram_purity_without_same_class_pairs_is_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="undefined"):
        value = dendrogram_purity(HAND_TREE, [3, 4, 2], [0, 1, 2])
    assert np.isnan(value)


def test_accepts_object_with_graph_attribute():
    holder = TreeHolder(HAND_TREE)
    assert dendrogram_purity(holder, HAND_ASSIGNMENTS, HAND_LABELS) == pytest.approx(206 / 315)
    assert leaf_purity(holder, HAND_ASSIGNMENTS, HAND_LABELS) == pytest.approx(6 / 7)


def test_accepts_numpy_and_torch_inputs():
    expected = 206 / 315
    as_numpy = (np.array(HAND_ASSIGNMENTS, dtype=np.int32), np.array(HAND_LABELS, dtype=np.uint8))
    as_torch = (torch.tensor(HAND_ASSIGNMENTS), torch.tensor(HAND_LABELS))
    as_float = (torch.tensor(HAND_ASSIGNMENTS, dtype=torch.float32), np.array(HAND_LABELS, dtype=float))
    for assignments, labels in (as_numpy, as_torch, as_float):
        assert dendrogram_purity(HAND_TREE, assignments, labels) == pytest.approx(expected)
    assert cluster_acc(torch.tensor([0, 0, 1]), torch.tensor([4, 4, 9])) == 1.0


def test_dendrogram_purity_scales_linearly():
    rng = np.random.default_rng(0)
    tree = random_rooted_tree(rng, 200)
    nodes = np.array(list(tree.nodes))
    assignments = rng.choice(nodes, size=100_000)
    labels = rng.integers(0, 10, size=100_000)
    start = time.perf_counter()
    dendrogram_purity(tree, assignments, labels)
    leaf_purity(tree, assignments, labels)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"took {elapsed:.2f}s"


# ---------------------------------------------------------------------------------------------
# flat metrics
# ---------------------------------------------------------------------------------------------


def test_cluster_acc_is_invariant_to_label_permutation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=200)
    renaming = np.array([40, 3, 17, -2, 8, 1000])  # arbitrary ids, e.g. tree node ids
    assert cluster_acc(labels, renaming[labels]) == 1.0


def test_cluster_acc_hand_examples():
    # More clusters than classes: contingency {5: 2x class 0, 7: 1x class 0, 9: 3x class 1};
    # best matching 5 -> 0, 9 -> 1, cluster 7 unmatched -> 5/6.
    assert cluster_acc([0, 0, 0, 1, 1, 1], [5, 5, 7, 9, 9, 9]) == pytest.approx(5 / 6)
    # Fewer clusters than classes: cluster 0 covers classes 0 and 1 (2 each), cluster 1 = class 2;
    # one of classes 0/1 is lost -> 4/6.
    assert cluster_acc([0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1]) == pytest.approx(4 / 6)
    # Greedy matching fails here: contingency c0 = {class 0: 3, class 1: 2}, c1 = {class 0: 2}.
    # Greedy takes c0 -> 0 (3) leaving c1 -> 1 (0) = 3/7; the optimum is c0 -> 1 (2) plus
    # c1 -> 0 (2) = 4/7.
    true = [0, 0, 0, 1, 1, 0, 0]
    pred = [0, 0, 0, 0, 0, 1, 1]
    assert cluster_acc(true, pred) == pytest.approx(4 / 7)


@pytest.mark.parametrize("seed", range(30))
def test_cluster_acc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_points = int(rng.integers(1, 30))
    labels_true = rng.integers(0, int(rng.integers(1, 5)), size=n_points)
    labels_pred = rng.integers(0, int(rng.integers(1, 6)), size=n_points) * 3 + 11
    expected = brute_force_cluster_acc(labels_true.tolist(), labels_pred.tolist())
    assert cluster_acc(labels_true, labels_pred) == pytest.approx(expected)


def test_nmi_and_ari_sanity():
    # pred refines true: I = H(true) = ln 2, H(pred) = 1.5 ln 2 -> NMI = 1 / 1.25 = 0.8.
    assert nmi([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.8)
    # ARI for the same pair (sklearn documentation value): 0.5714...
    assert ari([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    assert nmi([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert ari([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert nmi([0, 0, 1, 1], [3, 3, 3, 3]) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    independent_true, independent_pred = rng.integers(0, 5, 20_000), rng.integers(0, 5, 20_000)
    assert abs(ari(independent_true, independent_pred)) < 0.01
    assert nmi(independent_true, independent_pred) < 0.01


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [cluster_acc, nmi, ari])
def test_flat_metric_errors(metric):
    with pytest.raises(ValueError, match="differ in length"):
        metric([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        metric([], [])
    with pytest.raises(ValueError, match="NaN"):
        metric([0.0, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="non-integral"):
        metric([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="one-dimensional"):
        metric(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="integers"):
        metric(["a", "b"], [0, 1])


@pytest.mark.parametrize("metric", [dendrogram_purity, leaf_purity, hierarchical_f_score])
def test_hierarchical_metric_errors(metric):
    with pytest.raises(ValueError, match="differ in length"):
        metric(HAND_TREE, [3, 4], [0])
    with pytest.raises(ValueError, match="empty"):
        metric(HAND_TREE, [], [])
    with pytest.raises(ValueError, match="NaN"):
        metric(HAND_TREE, [3, 4], torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match=r"not in the tree: \[42\]"):
        metric(HAND_TREE, [3, 42, 4], [0, 0, 1])
    with pytest.raises(ValueError, match="no nodes"):
        metric(nx.DiGraph(), [0], [0])

    two_roots = nx.DiGraph([(0, 1), (2, 3)])
    with pytest.raises(ValueError, match="2 nodes without a parent"):
        metric(two_roots, [1, 3], [0, 0])
    two_parents = nx.DiGraph([(0, 1), (0, 2), (1, 3), (2, 3)])
    with pytest.raises(ValueError, match=r"several parents \[3\]"):
        metric(two_parents, [3, 3], [0, 0])
    with_cycle = nx.DiGraph([(0, 1), (1, 2), (2, 1)])
    with pytest.raises(ValueError, match="not a rooted tree"):
        metric(with_cycle, [1, 2], [0, 0])
    child_to_parent = nx.DiGraph([(1, 0), (2, 0)])  # edges reversed
    with pytest.raises(ValueError, match="not a rooted tree"):
        metric(child_to_parent, [1, 2], [0, 0])

    with pytest.raises(TypeError, match="DiGraph"):
        metric(nx.Graph([(0, 1)]), [0, 1], [0, 0])
    with pytest.raises(TypeError, match="DiGraph"):
        metric(object(), [0, 1], [0, 0])


# ---------------------------------------------------------------------------------------------
# hierarchical F-score
# ---------------------------------------------------------------------------------------------


def brute_force_f_score(tree: nx.DiGraph, assignments, labels, clusters: dict) -> float:
    """Reference: explicit subtree point sets; ``clusters`` maps a cluster name to its set of classes."""
    assignments, labels = np.asarray(assignments), np.asarray(labels)
    total = weighted = 0.0
    for classes in clusters.values():
        members = np.isin(labels, list(classes))
        size = members.sum()
        best = 0.0
        for node in tree:
            inside = np.isin(assignments, list(nx.descendants(tree, node) | {node}))
            best = max(best, 2 * (inside & members).sum() / (size + inside.sum()))
        total, weighted = total + size, weighted + size * best
    return weighted / total


def test_hierarchical_f_score_hand_example():
    # Subtree counts (a, b): node 3 (2, 0), node 4 (1, 1), node 1 (3, 2), node 2 (0, 2), root (3, 4).
    # a (3 points): best node 3, 2*2/(3+2) = 0.8.  b (4 points): best the root, 2*4/(4+7) = 8/11.
    # F = (3 * 0.8 + 4 * 8/11) / 7 = 58.4 / 77
    assert hierarchical_f_score(HAND_TREE, HAND_ASSIGNMENTS, HAND_LABELS) == pytest.approx(58.4 / 77)


@pytest.mark.parametrize("seed", range(20))
def test_hierarchical_f_score_matches_brute_force_on_random_trees(seed):
    rng = np.random.default_rng(seed)
    tree = random_rooted_tree(rng, int(rng.integers(1, 12)))
    assignments = rng.choice(np.array(list(tree.nodes)), size=int(rng.integers(1, 30)))
    labels = rng.integers(0, 4, size=assignments.size) * 5 + 2  # arbitrary class values
    classes = {int(c): {int(c)} for c in np.unique(labels)}
    expected = brute_force_f_score(tree, assignments, labels, classes)
    assert hierarchical_f_score(tree, assignments, labels) == pytest.approx(expected)
    # a two-level truth over the same classes: each class, and classes grouped by value mod 2
    label_tree = nx.DiGraph()
    for c in sorted(classes):
        label_tree.add_edge("root", f"group{c % 2}")
        label_tree.add_edge(f"group{c % 2}", f"class{c}")
        label_tree.nodes[f"class{c}"]["label"] = c
    groups = {f"group{g}": {c for c in classes if c % 2 == g} for g in (0, 1) if any(c % 2 == g for c in classes)}
    expected = brute_force_f_score(tree, assignments, labels, {**classes, **groups})
    assert hierarchical_f_score(tree, assignments, labels, label_tree=label_tree) == pytest.approx(expected)


def test_hierarchical_f_score_needs_the_coarse_groups_too():
    import pyro_hc

    data = pyro_hc.synthetic_tree(depth=2, branching=3, n_per_leaf=10, seed=0)
    labels, truth = data.y.numpy(), data.tree
    leaf_of_label = {truth.nodes[n]["label"]: n for n in truth if "label" in truth.nodes[n]}
    on_true_leaves = np.array([leaf_of_label[label] for label in labels])
    assert hierarchical_f_score(truth, on_true_leaves, labels, label_tree=truth) == pytest.approx(1.0)
    # a flat tree with perfect leaves: every class matched, every coarse group only at F = 1/2
    # (its root: precision 1/3, recall 1; a leaf: precision 1, recall 1/3) -> (9 * 1 + 9 * 0.5) / 18
    star = nx.DiGraph([(100, label) for label in range(9)])
    assert hierarchical_f_score(star, labels, labels) == pytest.approx(1.0)
    assert hierarchical_f_score(star, labels, labels, label_tree=truth) == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"labels \[9\] are not on any leaf"):
        hierarchical_f_score(star, np.r_[labels, 0], np.r_[labels, 9], label_tree=truth)
    unlabelled = nx.DiGraph([(0, 1), (0, 2)])
    with pytest.raises(ValueError, match="'label' attribute"):
        hierarchical_f_score(star, labels[:2], [0, 0], label_tree=unlabelled)


def test_hierarchical_kmeans_tree_recovers_two_levels_of_separated_blobs():
    """HKM (HCRL's Table 2 baseline, in ``pyro_hc.baselines``): 2 groups of 2 blobs, branching 2, two levels."""
    from pyro_hc.baselines import hierarchical_kmeans_tree

    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0.0], [10.0, 3.0], [-10.0, 0.0], [-10.0, 3.0]])
    labels = np.repeat(np.arange(4), 30)
    points = centres[labels] + 0.2 * rng.standard_normal((120, 2))
    tree, assigned = hierarchical_kmeans_tree(points, branching=2, levels=2, seed=0)
    assert len(tree.leaves()) == 4 and all(tree.level(leaf) == 2 for leaf in tree.leaves())
    assert set(np.unique(assigned)) <= set(tree.leaves())
    assert dendrogram_purity(tree, assigned, labels) == pytest.approx(1.0)
    # the coarse level separates the two groups: each level-1 node holds the blobs of one group
    coarse = np.array([tree.ancestors(int(leaf))[1] for leaf in assigned])
    group_of = {label: set(coarse[labels == label]) for label in range(4)}
    assert all(len(nodes) == 1 for nodes in group_of.values())
    assert group_of[0] == group_of[1] and group_of[2] == group_of[3] and group_of[0] != group_of[2]
    with pytest.raises(ValueError, match="branching"):
        hierarchical_kmeans_tree(points, branching=1, levels=2)


def test_cut_assignments_expands_the_heaviest_node_within_the_budget():
    """A hand example: root -> {1, 2}; 1 -> {3, 4, 5}; 2 -> {6, 7}; node 2 also holds points itself."""
    graph = nx.DiGraph([(0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (2, 6), (2, 7)])
    points = np.array([3] * 5 + [4] * 3 + [5] * 2 + [6] * 4 + [7] * 3 + [2] * 2)
    assert set(metrics.cut_assignments(graph, points, 1)) == {0}
    # two clusters: the root's two children
    np.testing.assert_array_equal(metrics.cut_assignments(graph, points, 2), np.array([1] * 10 + [2] * 9))
    # three: node 1 (10 points) is the heaviest but needs four slots; node 2 (9 points) would need
    # four too (6, 7 and itself), so the cut stays at two
    assert set(metrics.cut_assignments(graph, points, 3)) == {1, 2}
    # four: node 1 expands into 3, 4, 5
    np.testing.assert_array_equal(metrics.cut_assignments(graph, points, 4),
                                  np.array([3] * 5 + [4] * 3 + [5] * 2 + [2] * 9))
    # six and more: every occupied node keeps its points (node 2 stands for its own two)
    np.testing.assert_array_equal(metrics.cut_assignments(graph, points, 6), points)
    np.testing.assert_array_equal(metrics.cut_assignments(graph, points, 60), points)


def test_partial_cut_splits_off_the_heaviest_children_to_reach_the_budget():
    """The hand example above with ``partial=True``: always the heaviest node, in part if need be."""
    graph = nx.DiGraph([(0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (2, 6), (2, 7)])
    points = np.array([3] * 5 + [4] * 3 + [5] * 2 + [6] * 4 + [7] * 3 + [2] * 2)
    # three: node 1 (10 points) needs four slots; its heaviest child 3 leaves, 1 keeps 4 and 5
    np.testing.assert_array_equal(metrics.cut_assignments(graph, points, 3, partial=True),
                                  np.array([3] * 5 + [1] * 5 + [2] * 9))
    # four fits the whole of node 1: as without partial
    np.testing.assert_array_equal(metrics.cut_assignments(graph, points, 4, partial=True),
                                  metrics.cut_assignments(graph, points, 4))
    # five: then node 2 (9 points) in part, child 6 (4) leaves; 2 keeps 7 and its own points
    np.testing.assert_array_equal(metrics.cut_assignments(graph, points, 5, partial=True),
                                  np.array([3] * 5 + [4] * 3 + [5] * 2 + [6] * 4 + [2] * 5))
    # eleven children below the root, ten clusters: the strict cut is one cluster, the partial one ten
    wide = nx.DiGraph([(0, child) for child in range(1, 12)])
    points = np.repeat(np.arange(1, 12), np.arange(20, 9, -1))  # child 1 the heaviest, child 11 the lightest
    assert set(metrics.cut_assignments(wide, points, 10)) == {0}
    cut = metrics.cut_assignments(wide, points, 10, partial=True)
    assert len(set(cut)) == 10
    np.testing.assert_array_equal(cut[points <= 9], points[points <= 9])
    assert set(cut[points >= 10]) == {0}  # the two lightest stay with the root


def test_cut_assignments_walks_down_single_child_chains_and_skips_empty_children():
    graph = nx.DiGraph([(0, 1), (1, 2), (1, 3), (0, 4), (2, 5), (2, 6)])  # 4 and 3 hold no points
    points = np.array([5, 5, 6, 6, 6])
    np.testing.assert_array_equal(metrics.cut_assignments(graph, points, 2), points)
    assert set(metrics.cut_assignments(graph, points, 1)) == {2}  # the chain's last node that holds them all
    with pytest.raises(ValueError, match="n_clusters must be >= 1"):
        metrics.cut_assignments(graph, points, 0)
    with pytest.raises(ValueError, match="not in the tree"):
        metrics.cut_assignments(graph, np.array([9]), 2)
