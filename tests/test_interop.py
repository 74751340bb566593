"""Trees travel: ClusterTree <-> scipy linkage matrices and Newick strings."""

from __future__ import annotations

import itertools
import re

import networkx as nx
import numpy as np
import pytest
from scipy.cluster import hierarchy

from pyro_hc import metrics
from pyro_hc.tree import ClusterTree, NodeNotFoundError


def random_binary_tree(n_leaves: int, seed: int) -> ClusterTree:
    """Split a random leaf in two until there are ``n_leaves`` (ids then are not in any linkage layout)."""
    rng = np.random.default_rng(seed)
    tree = ClusterTree()
    while len(tree.leaves()) < n_leaves:
        leaf = tree.leaves()[rng.integers(len(tree.leaves()))]
        tree.add_child(leaf)
        tree.add_child(leaf)
    return tree


def random_tree(n_nodes: int, seed: int) -> ClusterTree:
    """Any shape: every new node hangs below a random existing one."""
    rng = np.random.default_rng(seed)
    tree = ClusterTree()
    for _ in range(n_nodes - 1):
        tree.add_child(tree.nodes()[rng.integers(len(tree))])
    return tree


def scipy_parents(linkage: np.ndarray) -> dict[int, int]:
    """Parent cluster index of every cluster, read off scipy's own tree (``to_tree``)."""
    parents = {}
    stack = [hierarchy.to_tree(linkage)]
    while stack:
        node = stack.pop()
        for child in (node.get_left(), node.get_right()):
            if child is not None:
                parents[child.get_id()] = node.get_id()
                stack.append(child)
    return parents


def reference_dendrogram_purity(linkage: np.ndarray, observation_labels: list[np.ndarray],
                                merge_ties: bool = False) -> float:
    """DP by brute force over all same-class pairs of points, on scipy's tree (``to_tree``).

    ``observation_labels[i]`` holds the classes of the points that sit on observation ``i`` of the
    linkage. The lca of two points is the lowest scipy node above both (their observation itself when
    they share one). With ``merge_ties`` a merge at the same height as its parent belongs to the
    parent (ties form one multi-way node), the usual reading of tied dendrogram heights.
    """
    root = hierarchy.to_tree(linkage)
    parent, dist, below = {}, {}, {}
    stack = [root]
    while stack:
        node = stack.pop()
        dist[node.get_id()] = node.dist
        below[node.get_id()] = node.pre_order()
        for child in (node.get_left(), node.get_right()):
            if child is not None:
                parent[child.get_id()] = node.get_id()
                stack.append(child)

    def lifted(node: int) -> int:
        while merge_ties and node in parent and dist[parent[node]] == dist[node]:
            node = parent[node]
        return node

    def path(node: int) -> list[int]:
        out = [node]
        while out[-1] in parent:
            out.append(parent[out[-1]])
        return out

    points = [(obs, label) for obs, labels in enumerate(observation_labels) for label in labels]
    total = purity = 0.0
    for (obs_a, label_a), (obs_b, label_b) in itertools.combinations(points, 2):
        if label_a != label_b:
            continue
        above_a = set(path(obs_a))
        lca = lifted(next(node for node in path(obs_b) if node in above_a))
        members = np.concatenate([observation_labels[obs] for obs in below[lca]])
        purity += np.mean(members == label_a)
        total += 1
    return purity / total


# linkage --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linkage_of_clusters_is_the_tree_through_scipy(seed):
    tree = random_binary_tree(9, seed)
    linkage, nodes = tree.to_linkage(return_nodes=True)
    assert linkage.shape == (8, 4) and hierarchy.is_valid_linkage(linkage) and hierarchy.is_monotonic(linkage)
    leaves = tree.leaves()
    assert nodes[:9].tolist() == leaves and sorted(nodes.tolist()) == tree.nodes()
    # scipy's tree, mapped back through `nodes`, has exactly the tree's edges
    edges = {(int(nodes[p]), int(nodes[c])) for c, p in scipy_parents(linkage).items()}
    assert edges == set(tree.graph.edges)
    # dendrogram draws the observations in the tree's leaf order; counts are leaves below
    assert hierarchy.dendrogram(linkage, no_plot=True)["leaves"] == list(range(9))
    for row, node in zip(linkage, nodes[9:]):
        assert row[3] == len(tree.subtree_leaves(int(node)))
        # default heights: the subtree height in edges
        assert row[2] == max(tree.level(leaf) for leaf in tree.subtree_leaves(int(node))) - tree.level(int(node))


def test_from_linkage_keeps_scipy_clusters_and_distances():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(loc, 0.3, size=(6, 2)) for loc in ((0, 0), (3, 0), (0, 3))])
    linkage = hierarchy.linkage(points, method="ward")
    tree = ClusterTree.from_linkage(linkage)
    n = len(points)
    assert tree.root == 2 * n - 2 and sorted(tree.leaves()) == list(range(n))
    for row, (left, right, height, _) in enumerate(linkage):
        assert tree.children(n + row) == sorted([int(left), int(right)])
        assert tree.graph.nodes[n + row]["height"] == height
    # back to a linkage: observations are renumbered to leaves() order, `nodes` maps them back,
    # and the cophenetic distance of every pair of points is unchanged
    again, nodes = tree.to_linkage(return_nodes=True)
    original = hierarchy.cophenet(linkage)
    order = np.argsort(nodes[:n])  # position in `again` of original observation i
    renumbered = hierarchy.cophenet(again)
    square = hierarchy.distance.squareform
    np.testing.assert_allclose(square(renumbered)[np.ix_(order, order)], square(original))
    # and the JSON round trip keeps it all
    assert np.array_equal(ClusterTree.from_json(tree.to_json()).to_linkage(), again)


def test_linkage_of_points_chains_each_leaf_at_height_zero():
    tree = random_binary_tree(6, seed=3)
    leaves = tree.leaves()
    rng = np.random.default_rng(1)
    assigned = rng.choice(leaves[:-1], size=40)  # the last leaf stays empty
    assigned[:5] = leaves[0]
    linkage, nodes = tree.to_linkage(assigned, return_nodes=True)
    assert linkage.shape == (39, 4) and hierarchy.is_valid_linkage(linkage) and hierarchy.is_monotonic(linkage)
    # cutting just above 0 gives back the leaves' partition of the points
    flat = hierarchy.fcluster(linkage, t=0.5, criterion="distance")
    assert metrics.ari(assigned, flat) == pytest.approx(1.0)
    for leaf in set(assigned.tolist()):
        assert (nodes == leaf).sum() == 1  # each occupied leaf is exactly one cluster
    assert leaves[-1] not in nodes.tolist()  # the empty leaf is no cluster
    # every point sits below the cluster of its own leaf
    parents = scipy_parents(linkage)
    for point, leaf in enumerate(assigned):
        node = point
        while nodes[node] != leaf:
            node = parents[node]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dendrogram_purity_on_the_exported_linkage_matches_metrics(seed):
    rng = np.random.default_rng(seed)
    tree = random_binary_tree(7, seed)
    leaves = tree.leaves()
    assigned = rng.choice(leaves, size=60)
    observation = np.array([leaves.index(leaf) for leaf in assigned])  # linkage observation of each point
    # labels that follow the tree a little, so purities are far from uniform
    labels = np.where(rng.random(60) < 0.6, observation % 3, rng.integers(0, 3, 60))
    expected = metrics.dendrogram_purity(tree, assigned, labels)
    # observations are the tree's leaves, each holding its points
    by_leaf = [labels[assigned == leaf] for leaf in leaves]
    assert reference_dendrogram_purity(tree.to_linkage(), by_leaf) == pytest.approx(expected, abs=1e-12)
    # observations are the points; the zero-height merges inside a leaf are one node, as in the tree
    by_point = [labels[i: i + 1] for i in range(60)]
    point_linkage = tree.to_linkage(assigned)
    assert reference_dendrogram_purity(point_linkage, by_point, merge_ties=True) == pytest.approx(expected, abs=1e-12)
    # ...and scipy's tree read back as a ClusterTree scores the same on its leaf clusters
    back = ClusterTree.from_linkage(tree.to_linkage())
    assert metrics.dendrogram_purity(back, observation, labels) == pytest.approx(expected)


def test_kmeans_ward_tree_exports_like_scipy():
    from pyro_hc.baselines import kmeans_ward_tree

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.2, size=(20, 3)) for c in range(4)])
    tree, assigned = kmeans_ward_tree(x, 4)
    linkage = tree.to_linkage(assigned)
    assert hierarchy.fcluster(linkage, t=4, criterion="maxclust").max() == 4
    assert metrics.ari(assigned, hierarchy.fcluster(linkage, t=4, criterion="maxclust")) == pytest.approx(1.0)


def test_linkage_errors_say_what_cannot_be_expressed():
    three = ClusterTree.flat(3)
    with pytest.raises(ValueError, match=r"binary trees only.*node 0: 3.*to_newick"):
        three.to_linkage()
    chain = ClusterTree()
    chain.add_child(0)
    with pytest.raises(ValueError, match="binary trees only"):
        chain.to_linkage()
    with pytest.raises(ValueError, match="lone root"):
        ClusterTree().to_linkage()
    two = ClusterTree.flat(2)
    with pytest.raises(ValueError, match="internal node"):
        two.to_linkage([1, 0, 2])
    with pytest.raises(NodeNotFoundError, match=r"\[7\]"):
        two.to_linkage([1, 7])
    with pytest.raises(ValueError, match="integer node ids"):
        two.to_linkage([1.0, 2.0])
    with pytest.raises(ValueError, match="at least two observations"):
        two.to_linkage([1])
    two.graph.nodes[0]["height"], two.graph.nodes[1]["height"], two.graph.nodes[2]["height"] = 1.0, 2.0, 0.0
    with pytest.raises(ValueError, match="must not decrease"):
        two.to_linkage()
    with pytest.raises(ValueError, match=r"\[n - 1, 4\]"):
        ClusterTree.from_linkage(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="not a valid scipy linkage"):
        ClusterTree.from_linkage([[0, 5, 1.0, 2], [1, 2, 2.0, 3]])


# Newick ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_newick_round_trip_keeps_ids_and_shape(seed):
    tree = random_tree(15, seed)
    text = tree.to_newick()
    assert text.endswith(";") and text.count("(") == text.count(")") == len(tree.internal_nodes())
    back = ClusterTree.from_newick(text)
    assert set(back.graph.edges) == set(tree.graph.edges) and back.root == tree.root
    assert back.to_newick() == text


def test_newick_reads_names_lengths_quotes_and_comments():
    text = "((A:1,'B c''d':2.5)E:0.5,(C:1e-1,D:2)F:1)G; [a comment]"
    tree = ClusterTree.from_newick(text)
    names = nx.get_node_attributes(tree.graph, "name")
    assert [names[node] for node in tree.subtree(tree.root)] == ["G", "E", "A", "B c'd", "F", "C", "D"]
    assert tree.root == 0 and [len(tree.children(n)) for n in (0, 1, 4)] == [2, 2, 2]
    lengths = nx.get_node_attributes(tree.graph, "length")
    assert lengths == {1: 0.5, 2: 1.0, 3: 2.5, 4: 1.0, 5: 0.1, 6: 2.0}
    assert tree.to_newick() == "((A:1.0,'B c''d':2.5)E:0.5,(C:0.1,D:2.0)F:1.0)G;"
    assert ClusterTree.from_newick(tree.to_newick()).to_newick() == tree.to_newick()
    unlabelled = ClusterTree.from_newick("((,),);")  # ids in order of appearance
    assert set(unlabelled.graph.edges) == {(0, 1), (1, 2), (1, 3), (0, 4)}


def test_newick_of_a_linkage_tree_has_its_merge_distances():
    linkage = np.array([[0, 1, 0.5, 2], [2, 3, 2.0, 3]])
    assert ClusterTree.from_linkage(linkage).to_newick() == "(2:2.0,(0:0.5,1:0.5)3:1.5)4;"
    assert ClusterTree.from_linkage(linkage).to_newick(branch_lengths=False) == "(2,(0,1)3)4;"


def test_deep_trees_need_no_recursion():
    chain = ClusterTree.from_newick("(" * 3000 + "x" + ")" * 3000 + ";")
    assert chain.depth() == 3000 and len(chain.to_newick()) > 6000


@pytest.mark.parametrize(
    "text, message",
    [
        ("((A,B),C", "end with ';'"),
        ("((A,B),C));", "without a matching"),
        ("((A,B),C;", "before every"),
        ("A,B;", "outside parentheses"),
        ("(A:x,B);", "not followed by a number"),
        ("(A,B)C(D);", "after a node's label"),
        ("(A,B);(C,D);", "after the closing"),
        ("('A,B);", "unterminated quoted"),
        ("(A,B)[x;", "unterminated comment"),
    ],
)
def test_malformed_newick_names_the_position(text, message):
    with pytest.raises(ValueError, match="malformed Newick at character [0-9]+: .*" + re.escape(message)):
        ClusterTree.from_newick(text)


def test_newick_refuses_labels_it_could_not_read_back():
    tree = ClusterTree.flat(2)
    tree.graph.nodes[1]["name"] = tree.graph.nodes[2]["name"] = "same"
    with pytest.raises(ValueError, match="both be labelled 'same'"):
        tree.to_newick()
    tree.graph.nodes[2]["name"] = "other"
    tree.graph.nodes[1]["length"], tree.graph.nodes[2]["length"] = 1.0, float("nan")
    with pytest.raises(ValueError, match="finite"):
        tree.to_newick()
    with pytest.raises(TypeError, match="string"):
        ClusterTree.from_newick(b"(A,B);")
