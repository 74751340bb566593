"""Tests for pyro_hc.tree.ClusterTree and TreeTensors.

The property-based tests drive a ClusterTree and an independent reference (a plain
``child -> parent`` dict with brute-force queries) through the same random mutation
sequences and compare them after every step.
"""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_hc.tree import ClusterTree, NodeNotFoundError, TreeTensors

PROPERTY_SETTINGS = settings(
    max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------------- reference model
class ReferenceTree:
    """Brute-force tree: a child -> parent dict, every query recomputed from scratch."""

    def __init__(self) -> None:
        self.parent: dict[int, int | None] = {0: None}
        self.root = 0

    def nodes(self) -> list[int]:
        return sorted(self.parent)

    def children(self, node: int) -> list[int]:
        return sorted(c for c, p in self.parent.items() if p == node)

    def ancestors(self, node: int) -> list[int]:
        chain = [node]
        while self.parent[chain[-1]] is not None:
            chain.append(self.parent[chain[-1]])
        return chain[::-1]

    def preorder(self, node: int | None = None) -> list[int]:
        node = self.root if node is None else node
        order = [node]
        for child in self.children(node):
            order.extend(self.preorder(child))
        return order

    def leaves(self) -> list[int]:
        return [n for n in self.preorder() if not self.children(n)]

    def internal(self) -> list[int]:
        return [n for n in self.preorder() if self.children(n)]

    def next_id(self) -> int:
        return min(set(range(len(self.parent) + 1)) - set(self.parent))

    def add(self, parent: int) -> int:
        node = self.next_id()
        self.parent[node] = parent
        return node

    def remove(self, node: int, prune: bool) -> list[int]:
        removed = []
        while True:
            parent = self.parent.pop(node)
            removed.append(node)
            if not prune or parent == self.root or self.children(parent):
                return removed
            node = parent

    def merge(self, keep: int, drop: int) -> None:
        for child in self.children(drop):
            self.parent[child] = keep
        del self.parent[drop]

    def splice(self, node: int) -> int:
        (child,) = self.children(node)
        self.parent[child] = self.parent.pop(node)
        if self.parent[child] is None:
            self.root = child
        return child


def assert_matches_reference(tree: ClusterTree, ref: ReferenceTree) -> None:
    assert tree.root == ref.root
    assert tree.nodes() == ref.nodes()
    assert sorted(tree.graph.edges) == sorted(
        (p, c) for c, p in ref.parent.items() if p is not None
    )
    assert tree.leaves() == ref.leaves()
    assert tree.internal_nodes() == ref.internal()
    assert tree.paths() == [tuple(ref.ancestors(leaf)) for leaf in ref.leaves()]
    assert tree.inner_paths() == [tuple(ref.ancestors(n)) for n in ref.internal()]
    for node in ref.nodes():
        assert tree.parent(node) == ref.parent[node]
        assert tree.children(node) == ref.children(node)
        assert tree.ancestors(node) == ref.ancestors(node)
        assert tree.level(node) == len(ref.ancestors(node)) - 1
        assert tree.subtree(node) == ref.preorder(node)
        assert tree.subtree_leaves(node) == [n for n in ref.leaves() if node in ref.ancestors(n)]
        assert tree.is_leaf(node) == (not ref.children(node))
    assert tree.depth() == max(len(ref.ancestors(n)) - 1 for n in ref.nodes())


def assert_invariants(tree: ClusterTree) -> None:
    """Graph-level invariants checked with networkx, independently of the tree's caches."""
    tree.check()
    graph = tree.graph
    roots = [n for n, d in graph.in_degree() if d == 0]
    assert roots == [tree.root]
    assert nx.is_weakly_connected(graph)
    assert nx.is_arborescence(graph)
    assert len(tree) == graph.number_of_nodes()
    graph_leaves = {n for n, d in graph.out_degree() if d == 0}
    paths = tree.paths()
    # every leaf has exactly one path and every path ends at a leaf
    assert [p[-1] for p in paths] == tree.leaves()
    assert sorted(p[-1] for p in paths) == sorted(graph_leaves)
    for path in paths:
        assert path[0] == tree.root
        assert all(graph.has_edge(u, v) for u, v in zip(path, path[1:]))
        assert graph.out_degree(path[-1]) == 0
    # inner paths end exactly at the internal nodes, each once
    inner_ends = [p[-1] for p in tree.inner_paths()]
    assert sorted(inner_ends) == sorted(set(graph) - graph_leaves)
    assert len(set(inner_ends)) == len(inner_ends)
    lengths = nx.single_source_shortest_path_length(graph, tree.root)
    for node in graph:
        assert tree.level(node) == lengths[node]
    # leaves come in depth-first order with children visited in ascending id order
    preorder = list(nx.dfs_preorder_nodes(nx.DiGraph(sorted(graph.edges)), tree.root)) if (
        graph.number_of_edges()
    ) else [tree.root]
    assert tree.leaves() == [n for n in preorder if n in graph_leaves]
    assert_tensors_match(tree, tree.to_tensors())


def assert_tensors_match(tree: ClusterTree, tt: TreeTensors) -> None:
    nodes = sorted(tree.graph.nodes)
    depth = max(tree.level(n) for n in nodes)
    assert tt.depth == depth == tree.depth()
    assert tt.nodes.dtype == torch.long and tt.nodes.tolist() == nodes
    assert tt.parent.tolist() == [-1 if tree.parent(n) is None else tree.parent(n) for n in nodes]
    assert tt.level.tolist() == [tree.level(n) for n in nodes]
    assert tt.leaves.tolist() == tree.leaves()
    for matrix, mask, paths in (
        (tt.paths, tt.path_mask, tree.paths()),
        (tt.inner_paths, tt.inner_path_mask, tree.inner_paths()),
    ):
        assert matrix.dtype == torch.long and mask.dtype == torch.bool
        assert tuple(matrix.shape) == tuple(mask.shape) == (len(paths), depth + 1)
        for row, row_mask, path in zip(matrix.tolist(), mask.tolist(), paths):
            assert row_mask == [True] * len(path) + [False] * (depth + 1 - len(path))
            assert row == list(path) + [path[-1]] * (depth + 1 - len(path))
        # levels of real entries equal their column
        if len(paths):
            level_of = dict(zip(nodes, tt.level.tolist()))
            columns = torch.arange(depth + 1).expand_as(matrix)
            real_levels = torch.tensor([[level_of[n] for n in row] for row in matrix.tolist()])
            assert torch.equal(real_levels[mask], columns[mask])


# ---------------------------------------------------------------------- random mutations
OPERATION = st.tuples(
    st.sampled_from(["add", "add", "add", "remove", "remove_prune", "merge", "splice"]),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)


def apply_operation(
    tree: ClusterTree, ref: ReferenceTree, operation: tuple[str, int, int], step: int
) -> None:
    """Apply one random operation to both trees (or check that an invalid one is refused)."""
    kind, a, b = operation
    nodes = ref.nodes()
    non_root = [n for n in nodes if n != ref.root]
    version = tree.version
    if kind == "add":
        parent = nodes[a % len(nodes)]
        expected = ref.add(parent)
        assert tree.add_child(parent, name=f"node{expected}", weight=a / 7, tags=[step]) == expected
        tree.log_event("grow", [parent, expected], step=step, epoch=step // 5, score=b / 3)
    elif kind in ("remove", "remove_prune"):
        candidates = [n for n in non_root if not ref.children(n)]
        if not candidates:
            return
        node = candidates[a % len(candidates)]
        prune = kind == "remove_prune"
        expected = ref.remove(node, prune)
        assert tree.remove_leaf(node, prune_empty_parents=prune) == expected
        tree.log_event("prune", expected, step=step)
    elif kind == "merge":
        if len(non_root) < 2:
            return
        keep = non_root[a % len(non_root)]
        others = [n for n in non_root if n != keep]
        drop = others[b % len(others)]
        if drop in ref.ancestors(keep):
            with pytest.raises(ValueError, match="descendant"):
                tree.merge(keep, drop)
            assert tree.version == version  # a refused merge changes nothing
            return
        ref.merge(keep, drop)
        assert tree.merge(keep, drop) is None
        tree.log_event("merge", [keep, drop], epoch=step)
    else:  # splice
        candidates = [n for n in nodes if len(ref.children(n)) == 1]
        if not candidates:
            return
        node = candidates[a % len(candidates)]
        assert tree.replace_with_child(node) == ref.splice(node)
    assert tree.version == version + 1


@PROPERTY_SETTINGS
@given(st.lists(OPERATION, max_size=30))
def test_random_mutations_keep_invariants_and_match_reference(operations):
    tree, ref = ClusterTree(), ReferenceTree()
    assert_invariants(tree)
    for step, operation in enumerate(operations):
        before_version = tree.version
        before = tree.to_tensors()
        apply_operation(tree, ref, operation, step)
        assert_matches_reference(tree, ref)
        assert_invariants(tree)
        after = tree.to_tensors()
        if tree.version != before_version:
            # cache invalidated: a new object that describes the new tree
            assert after is not before
        else:
            assert after is before


@PROPERTY_SETTINGS
@given(st.lists(OPERATION, max_size=25), st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
def test_json_round_trip_is_exact_and_ids_continue(operations, later_parents):
    tree, ref = ClusterTree(), ReferenceTree()
    for step, operation in enumerate(operations):
        apply_operation(tree, ref, operation, step)
    tree.graph.graph["dataset"] = "toy"
    data = tree.to_json()
    text = json.dumps(data)  # plain JSON, no custom encoder needed
    loaded = ClusterTree.from_json(json.loads(text))
    assert loaded.to_json() == data
    assert loaded.root == tree.root
    assert sorted(loaded.graph.edges) == sorted(tree.graph.edges)
    assert dict(loaded.graph.nodes(data=True)) == dict(tree.graph.nodes(data=True))
    assert loaded.graph.graph == {"dataset": "toy"}
    assert loaded.events == tree.events
    assert loaded.paths() == tree.paths()
    assert_invariants(loaded)
    # both trees allocate the same ids from here on, including reused gaps
    for a in later_parents:
        parent = tree.nodes()[a % len(tree)]
        assert loaded.add_child(parent) == tree.add_child(parent)
    assert sorted(loaded.graph.edges) == sorted(tree.graph.edges)


@PROPERTY_SETTINGS
@given(st.lists(OPERATION, max_size=25))
def test_lca_matches_brute_force_ancestor_intersection(operations):
    tree, ref = ClusterTree(), ReferenceTree()
    for step, operation in enumerate(operations):
        apply_operation(tree, ref, operation, step)
    depth_of = nx.single_source_shortest_path_length(tree.graph, tree.root)
    nodes = tree.nodes()
    for a in nodes:
        for b in nodes:
            common = (nx.ancestors(tree.graph, a) | {a}) & (nx.ancestors(tree.graph, b) | {b})
            expected = max(common, key=depth_of.__getitem__)
            assert tree.lca(a, b) == expected
        assert tree.lca(a, tree.root) == tree.root


# ---------------------------------------------------------------------- hand-built examples
def build_example() -> ClusterTree:
    r"""Return the tree

    0
    ├── 1
    │   ├── 3
    │   │   └── 5
    │   └── 4
    └── 2
    """
    tree = ClusterTree()
    assert tree.add_child(0) == 1
    assert tree.add_child(0) == 2
    assert tree.add_child(1) == 3
    assert tree.add_child(1) == 4
    assert tree.add_child(3) == 5
    return tree


def test_new_tree_is_a_single_root():
    tree = ClusterTree()
    assert (tree.root, len(tree), tree.version) == (0, 1, 0)
    assert tree.leaves() == [0] and tree.paths() == [(0,)]
    assert tree.internal_nodes() == [] and tree.inner_paths() == []
    tt = tree.to_tensors()
    assert tt.paths.tolist() == [[0]] and tt.path_mask.tolist() == [[True]]
    assert tuple(tt.inner_paths.shape) == (0, 1) and tt.inner_paths.dtype == torch.long
    assert tt.parent.tolist() == [-1] and tt.depth == 0


def test_example_queries_and_tensors():
    tree = build_example()
    assert tree.leaves() == [5, 4, 2]
    assert tree.paths() == [(0, 1, 3, 5), (0, 1, 4), (0, 2)]
    assert tree.internal_nodes() == [0, 1, 3]
    assert tree.inner_paths() == [(0,), (0, 1), (0, 1, 3)]
    assert [tree.level(n) for n in range(6)] == [0, 1, 1, 2, 2, 3]
    assert tree.depth() == 3
    assert tree.subtree(1) == [1, 3, 5, 4]
    assert tree.subtree_leaves(1) == [5, 4]
    assert tree.subtree_leaves(2) == [2]
    assert tree.subtree(0) == [0, 1, 3, 5, 4, 2]
    assert tree.lca(5, 4) == 1 and tree.lca(5, 2) == 0 and tree.lca(3, 5) == 3
    cousin = tree.add_child(2)  # level 2, like 3 and 4, but below 2
    assert tree.lca(cousin, 3) == 0 and tree.lca(4, cousin) == 0 and tree.lca(5, cousin) == 0
    tree.remove_leaf(cousin)
    assert tree.ancestors(5) == [0, 1, 3, 5]
    tt = tree.to_tensors()
    assert tt.nodes.tolist() == [0, 1, 2, 3, 4, 5]
    assert tt.parent.tolist() == [-1, 0, 0, 1, 1, 3]
    assert tt.level.tolist() == [0, 1, 1, 2, 2, 3]
    assert tt.paths.tolist() == [[0, 1, 3, 5], [0, 1, 4, 4], [0, 2, 2, 2]]
    assert tt.path_mask.tolist() == [
        [True, True, True, True],
        [True, True, True, False],
        [True, True, False, False],
    ]
    assert tt.leaves.tolist() == [5, 4, 2]
    assert tt.inner_paths.tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 3, 3]]
    assert tt.inner_path_mask.sum(1).tolist() == [1, 2, 3]
    # padded entries are valid indices into per-node parameters
    params = torch.arange(6.0) * 10
    assert params[tt.paths].tolist()[1] == [0.0, 10.0, 40.0, 40.0]


def test_ids_are_smallest_unused_and_reused():
    tree = build_example()
    assert tree.remove_leaf(4) == [4]
    assert tree.remove_leaf(2) == [2]
    assert tree.add_child(0) == 2
    assert tree.add_child(5) == 4
    assert tree.add_child(5) == 6
    tt = tree.to_tensors()
    assert tt.nodes.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert tt.parent.tolist() == [-1, 0, 0, 1, 5, 3, 5]


def test_remove_leaf_with_and_without_pruning():
    tree = build_example()
    assert tree.remove_leaf(5) == [5]
    assert 3 in tree and tree.is_leaf(3)
    tree.add_child(3)  # id 5 again
    assert tree.remove_leaf(5, prune_empty_parents=True) == [5, 3]
    assert tree.nodes() == [0, 1, 2, 4]
    # pruning stops at a parent that still has children, and never removes the root
    assert tree.remove_leaf(4, prune_empty_parents=True) == [4, 1]
    assert tree.remove_leaf(2, prune_empty_parents=True) == [2]
    assert tree.nodes() == [0] and tree.leaves() == [0]


def test_merge_reparents_children_and_keeps_attributes():
    tree = build_example()
    tree.graph.nodes[2]["name"] = "keep"
    tree.graph.nodes[1]["name"] = "drop"
    tree.merge(2, 1)
    assert tree.nodes() == [0, 2, 3, 4, 5]
    assert tree.children(2) == [3, 4]
    assert tree.graph.nodes[2] == {"name": "keep"}
    assert tree.paths() == [(0, 2, 3, 5), (0, 2, 4)]
    # merging into an ancestor splices the dropped node out
    tree.merge(2, 3)
    assert tree.paths() == [(0, 2, 4), (0, 2, 5)]
    # a parent left without children becomes a leaf
    tree = build_example()
    tree.merge(2, 5)
    assert tree.is_leaf(3) and tree.paths() == [(0, 1, 3), (0, 1, 4), (0, 2)]


def test_replace_with_child_including_root():
    tree = build_example()
    assert tree.replace_with_child(3) == 5
    assert tree.paths() == [(0, 1, 4), (0, 1, 5), (0, 2)]
    assert tree.level(5) == 2 and tree.parent(5) == 1
    tree = ClusterTree()
    tree.add_child(0)
    tree.add_child(1)
    assert tree.replace_with_child(0) == 1
    assert tree.root == 1 and tree.paths() == [(1, 2)]
    assert tree.add_child(1) == 0  # the root's old id is free again
    assert_invariants(tree)


def test_flat_tree():
    tree = ClusterTree.flat(4)
    assert tree.paths() == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert tree.to_tensors().paths.tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]
    with pytest.raises(ValueError, match="n_leaves=0"):
        ClusterTree.flat(0)


def test_structure_is_computed_once_per_version(monkeypatch):
    tree = build_example()
    calls = []
    original = ClusterTree._compute_structure

    def counting(self):
        calls.append(self.version)
        return original(self)

    monkeypatch.setattr(ClusterTree, "_compute_structure", counting)
    tree.leaves(), tree.paths(), tree.inner_paths(), tree.level(5), tree.lca(4, 5)
    tree.subtree(1), tree.depth(), tree.to_tensors(), tree.to_tensors()
    assert calls == [tree.version]
    tree.add_child(2)
    tree.leaves(), tree.paths()
    assert calls == [tree.version - 1, tree.version]


def test_tensor_cache_per_version_and_device():
    tree = build_example()
    first = tree.to_tensors()
    assert tree.to_tensors("cpu") is first
    assert tree.to_tensors(torch.device("cpu")) is first
    tree.graph.nodes[1]["note"] = "attributes do not invalidate"
    assert tree.to_tensors() is first
    new = tree.add_child(4)
    second = tree.to_tensors()
    assert second is not first
    assert first.paths.tolist() == [[0, 1, 3, 5], [0, 1, 4, 4], [0, 2, 2, 2]]
    assert second.paths.tolist() == [[0, 1, 3, 5], [0, 1, 4, new], [0, 2, 2, 2]]
    assert second.nodes.tolist() == [0, 1, 2, 3, 4, 5, new]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_tensors_on_cuda():
    tree = build_example()
    cuda = tree.to_tensors("cuda")
    assert cuda.paths.is_cuda and cuda.path_mask.is_cuda
    assert tree.to_tensors("cuda") is cuda
    assert torch.equal(cuda.paths.cpu(), tree.to_tensors().paths)


def test_tree_tensors_to_moves_every_tensor():
    tt = build_example().to_tensors().to("cpu")
    assert tt.paths.device.type == "cpu" and tt.depth == 3


def test_direct_structural_edit_is_detected():
    tree = build_example()
    tree.leaves()
    tree.graph.add_edge(2, 9)
    with pytest.raises(RuntimeError, match="changed directly"):
        tree.paths()


# ---------------------------------------------------------------------- events and JSON
def test_event_log_and_conversion():
    tree = build_example()
    tree.log_event("split", 3, step=np.int64(12), epoch=2, score=torch.tensor(0.5))
    tree.log_event("merge", [1, 2], step=None, children=np.array([3, 4]))
    assert tree.events == [
        {"kind": "split", "nodes": [3], "step": 12, "epoch": 2, "score": 0.5},
        {"kind": "merge", "nodes": [1, 2], "step": None, "epoch": None, "children": [3, 4]},
    ]
    # the property returns a copy
    tree.events[0]["kind"] = "changed"
    assert tree.events[0]["kind"] == "split"
    with pytest.raises(ValueError, match="non-empty"):
        tree.log_event("", [1])
    with pytest.raises(TypeError, match="step"):
        tree.log_event("grow", [1], step=1.5)
    with pytest.raises(TypeError, match="node ids"):
        tree.log_event("grow", ["a"])
    with pytest.raises(TypeError, match="cannot be written to JSON"):
        tree.log_event("grow", [1], payload=object())
    assert len(tree.events) == 2


def test_json_converts_arrays_and_rejects_unserialisable_attributes(tmp_path):
    tree = build_example()
    tree.graph.nodes[1]["mean"] = torch.tensor([1.5, 2.0])
    tree.graph.nodes[2]["count"] = np.int64(3)
    tree.graph.nodes[3]["cov"] = np.eye(2)
    data = tree.to_json()
    nodes = {entry["id"]: entry for entry in data["nodes"]}
    assert nodes[1]["mean"] == [1.5, 2.0]
    assert nodes[2]["count"] == 3 and type(nodes[2]["count"]) is int
    assert nodes[3]["cov"] == [[1.0, 0.0], [0.0, 1.0]]
    assert data["root"] == 0 and "edges" in data and data["format"] == "pyro_hc.ClusterTree"
    json.dumps(data)
    path = tmp_path / "tree.json"
    tree.save(path)
    loaded = ClusterTree.load(path)
    assert loaded.graph.nodes[1]["mean"] == [1.5, 2.0]
    assert loaded.paths() == tree.paths()

    tree.graph.nodes[4]["bad"] = {1, 2}
    with pytest.raises(TypeError, match=r"node 4 .*'bad'.*set"):
        tree.to_json()
    del tree.graph.nodes[4]["bad"]
    tree.graph.nodes[4]["keys"] = {1: "int key"}
    with pytest.raises(TypeError, match="string keys"):
        tree.to_json()
    del tree.graph.nodes[4]["keys"]
    tree.graph.nodes[4]["id"] = 7
    with pytest.raises(ValueError, match="reserved"):
        tree.to_json()


def test_json_is_readable_by_networkx():
    tree = build_example()
    graph = nx.node_link_graph(tree.to_json(), directed=True, edges="edges")
    assert sorted(graph.edges) == sorted(tree.graph.edges)


def test_from_json_errors():
    data = build_example().to_json()
    with pytest.raises(ValueError, match="format"):
        ClusterTree.from_json({**data, "format": "something else"})
    with pytest.raises(ValueError, match="root"):
        ClusterTree.from_json({k: v for k, v in data.items() if k != "root"})
    with pytest.raises(ValueError, match="not the root"):
        ClusterTree.from_json({**data, "root": 1})
    with pytest.raises(ValueError, match="rooted tree"):
        ClusterTree.from_json({**data, "edges": data["edges"][:-1]})
    with pytest.raises(ValueError, match="event 0"):
        ClusterTree.from_json({**data, "events": [{"nodes": [1]}]})
    with pytest.raises(ValueError, match="malformed"):
        ClusterTree.from_json({**data, "nodes": [{"name": "no id"}]})
    with pytest.raises(ValueError, match="malformed"):
        ClusterTree.from_json({**data, "edges": [{"source": 0}]})


# ---------------------------------------------------------------------- from_graph
def test_from_graph_validates_and_copies():
    graph = nx.DiGraph([(np.int64(4), np.int64(2)), (np.int64(4), np.int64(7))])
    graph.nodes[np.int64(2)]["label"] = [1]
    tree = ClusterTree.from_graph(graph)
    assert tree.root == 4 and type(tree.root) is int
    assert all(type(n) is int for n in tree.graph)
    assert tree.paths() == [(4, 2), (4, 7)]
    assert tree.add_child(7) == 0  # smallest unused id
    tree.graph.nodes[2]["label"].append(2)
    assert graph.nodes[2]["label"] == [1]  # deep copy
    assert ClusterTree.from_graph(graph, root=4).root == 4
    with pytest.raises(ValueError, match="not the root"):
        ClusterTree.from_graph(graph, root=2)
    with pytest.raises(ValueError, match="rooted tree"):
        ClusterTree.from_graph(nx.DiGraph([(0, 1), (1, 0)]))
    with pytest.raises(ValueError, match="rooted tree"):
        ClusterTree.from_graph(nx.DiGraph([(0, 1), (2, 3)]))
    with pytest.raises(ValueError, match="rooted tree"):
        ClusterTree.from_graph(nx.DiGraph([(0, 2), (1, 2)]))
    with pytest.raises(ValueError, match="non-negative"):
        ClusterTree.from_graph(nx.DiGraph([(0, -1)]))
    with pytest.raises(TypeError, match="integers"):
        ClusterTree.from_graph(nx.DiGraph([("a", "b")]))
    with pytest.raises(TypeError, match="DiGraph"):
        ClusterTree.from_graph(nx.Graph([(0, 1)]))
    with pytest.raises(ValueError, match="empty"):
        ClusterTree.from_graph(nx.DiGraph())


def test_copy_is_independent():
    tree = build_example()
    tree.graph.nodes[1]["name"] = ["a"]
    tree.log_event("grow", [1])
    clone = tree.copy()
    clone.graph.nodes[1]["name"].append("b")
    clone.remove_leaf(2)
    clone.log_event("prune", [2])
    assert tree.graph.nodes[1]["name"] == ["a"]
    assert 2 in tree and 2 not in clone
    assert len(tree.events) == 1 and len(clone.events) == 2
    assert clone.paths() == [(0, 1, 3, 5), (0, 1, 4)]


def test_copy_without_events_has_the_structure_and_an_empty_log():
    tree = build_example()
    tree.log_event("grow", [1])
    scratch = tree.copy(events=False)
    assert scratch.paths() == tree.paths() and scratch.events == [] and len(tree.events) == 1
    scratch.log_event("prune", [2])
    assert len(tree.events) == 1


# ---------------------------------------------------------------------- error cases
@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.add_child(42),
        lambda t: t.remove_leaf(42),
        lambda t: t.merge(42, 1),
        lambda t: t.merge(1, 42),
        lambda t: t.replace_with_child(42),
        lambda t: t.parent(42),
        lambda t: t.children(42),
        lambda t: t.is_leaf(42),
        lambda t: t.level(42),
        lambda t: t.ancestors(42),
        lambda t: t.lca(1, 42),
        lambda t: t.subtree(42),
        lambda t: t.subtree_leaves(42),
    ],
)
def test_unknown_node_raises_with_id_in_message(call):
    tree = build_example()
    with pytest.raises(NodeNotFoundError, match="node 42 is not in the tree"):
        call(tree)
    assert tree.version == 5  # nothing changed
    # catchable as either KeyError or ValueError
    with pytest.raises(KeyError):
        call(tree)
    with pytest.raises(ValueError):
        call(tree)


def test_structural_errors():
    tree = build_example()
    with pytest.raises(ValueError, match="root"):
        tree.remove_leaf(0)
    with pytest.raises(ValueError, match="node 1 is not a leaf"):
        tree.remove_leaf(1)
    with pytest.raises(ValueError, match="itself"):
        tree.merge(3, 3)
    with pytest.raises(ValueError, match="root"):
        tree.merge(0, 1)
    with pytest.raises(ValueError, match="root"):
        tree.merge(1, 0)
    with pytest.raises(ValueError, match="cannot merge node 1 into its own descendant 5"):
        tree.merge(5, 1)
    with pytest.raises(ValueError, match="exactly one"):
        tree.replace_with_child(1)
    with pytest.raises(ValueError, match="exactly one"):
        tree.replace_with_child(4)
    with pytest.raises(ValueError, match="reserved"):
        tree.add_child(1, id=3)
    with pytest.raises(TypeError, match="integers"):
        tree.add_child("1")
    with pytest.raises(TypeError, match="bool"):
        tree.add_child(True)
    with pytest.raises(TypeError, match="integers"):
        tree.level(1.0)
    assert tree.version == 5 and tree.paths() == build_example().paths()


def test_integer_like_ids_are_accepted():
    tree = build_example()
    assert tree.level(np.int64(5)) == 3
    assert tree.level(torch.tensor(5)) == 3
    assert tree.add_child(torch.tensor(2)) == 6


def test_dunders():
    tree = build_example()
    assert len(tree) == 6
    assert 5 in tree and 6 not in tree and "a" not in tree and np.int64(3) in tree
    assert repr(tree) == "ClusterTree(nodes=6, leaves=3, depth=3, root=0, version=5)"


def test_check_detects_broken_graph():
    tree = build_example()
    tree.check()
    tree.graph.add_edge(5, 0)  # introduces a cycle through the root
    with pytest.raises(AssertionError):
        tree.check()


def test_nan_attribute_survives_json():
    tree = build_example()
    tree.graph.nodes[1]["loss"] = float("nan")
    loaded = ClusterTree.from_json(json.loads(json.dumps(tree.to_json())))
    assert math.isnan(loaded.graph.nodes[1]["loss"])


def test_move_reparents_a_subtree_and_refuses_cycles():
    tree = ClusterTree()  # 0 -> 1 -> {2, 3, 4}, 0 -> 5 -> 6
    coarse = tree.add_child(0)
    leaves = [tree.add_child(coarse) for _ in range(3)]
    other = tree.add_child(0)
    tree.add_child(other)
    version = tree.version
    tree.move(leaves[1], other)
    assert tree.parent(3) == 5 and tree.children(5) == [3, 6] and tree.version > version
    tree.check()
    with pytest.raises(ValueError, match="root"):
        tree.move(0, 1)
    with pytest.raises(ValueError, match="below itself"):
        tree.move(1, 2)
    with pytest.raises(ValueError, match="below itself"):
        tree.move(1, 1)
