"""The cluster tree shared by every hierarchical model in pyro_hc.

A :class:`ClusterTree` wraps a :class:`networkx.DiGraph` whose edges point from parent
to child.  The graph is exposed live as :attr:`ClusterTree.graph` so that node attributes
can be read and written freely, but *structural* changes (adding, removing, merging or
splicing nodes) must go through the tree's methods: each of them increments
:attr:`ClusterTree.version`, and every derived quantity (preorder, levels, leaves, paths,
the index tensors of :meth:`ClusterTree.to_tensors`) is computed by one depth-first
traversal and cached for that version only.  A structural change made directly on the
graph is detected (node or edge count no longer matches the cache) and reported instead of
silently serving stale paths.

Design decisions
----------------
Node ids are small, reused integers.
    Models keep the parameters of every node in tensors preallocated for a maximum number
    of nodes and indexed *directly* by node id (``loc[node_id]``).  A new node therefore
    receives the smallest non-negative integer not used by a live node, so ids never
    outgrow the preallocated tensors however often the tree grows and shrinks.  An id is
    stable for as long as its node lives; after removal it may be handed out again, which
    is why callers reset the parameters of a reused slot when they grow the tree.

Paths are padded by repeating their last node.
    :meth:`ClusterTree.to_tensors` returns a ``[P, L + 1]`` matrix of node ids, one row per
    root-to-leaf path.  Shorter paths are padded with their own last node rather than with
    a sentinel such as ``-1``: every entry is then a valid index into a parameter tensor,
    so a model can gather ``param[paths]`` without clamping, and the padded columns simply
    repeat the leaf.  ``path_mask`` says which entries are real so that per-level sums can
    ignore the repeats.

Orders are deterministic.
    Traversals visit children in ascending id order, so :meth:`ClusterTree.leaves`,
    :meth:`ClusterTree.paths` and the tensor rows are reproducible and survive a JSON
    round trip.

Structural events (grow, prune, merge, split, ...) are not logged automatically, because
only the caller knows the epoch and step and what a change means; tree-editing heuristics
call :meth:`ClusterTree.log_event` after they edit the tree.  The log is saved with the
tree by :meth:`ClusterTree.to_json`.

Trees travel to other tools as scipy linkage matrices (:meth:`ClusterTree.to_linkage` /
:meth:`ClusterTree.from_linkage`, binary trees only; scipy's ``dendrogram``, ``fcluster`` and
``cophenet`` read them) and as Newick strings (:meth:`ClusterTree.to_newick` /
:meth:`ClusterTree.from_newick`, any tree).
"""

from __future__ import annotations

import copy
import json
import math
import operator
import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from ._files import atomic_write

__all__ = ["ClusterTree", "TreeTensors", "NodeNotFoundError"]

#: Identifies the JSON layout written by :meth:`ClusterTree.to_json`.
JSON_FORMAT = "pyro_hc.ClusterTree"
JSON_FORMAT_VERSION = 1

# Keys that networkx's node-link format uses itself; attributes with these names would be
# overwritten when the graph is serialised, so they are refused.
_RESERVED_NODE_ATTRS = frozenset({"id"})
_RESERVED_EDGE_ATTRS = frozenset({"source", "target"})
_EVENT_KEYS = ("kind", "nodes", "step", "epoch")


class NodeNotFoundError(KeyError, ValueError):
    """Raised when a node id is not in the tree.

    It derives from both :class:`KeyError` and :class:`ValueError` so that either can be
    caught.
    """

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""


def dataclass_to(obj, device: str | torch.device):
    """A copy of a frozen dataclass with every tensor field moved to ``device``."""
    moved = {f.name: getattr(obj, f.name).to(device) for f in fields(obj) if isinstance(getattr(obj, f.name), Tensor)}
    return replace(obj, **moved)


@dataclass(frozen=True)
class TreeTensors:
    """Index tensors that describe a :class:`ClusterTree` to a vectorised model.

    All ids are node ids of the tree, i.e. direct indices into parameter tensors that are
    preallocated per node id.  Do not modify the tensors in place: they are cached and
    shared by every caller until the tree changes.

    Attributes
    ----------
    nodes : Tensor
        ``long [M]``: ids of the live nodes, ascending.
    parent : Tensor
        ``long [M]``: parent id of each entry of ``nodes``; ``-1`` for the root.
    level : Tensor
        ``long [M]``: depth of each entry of ``nodes`` (root = 0).
    paths : Tensor
        ``long [P, L + 1]``: node ids along each root-to-leaf path, in the order of
        :meth:`ClusterTree.paths`; a path shorter than ``L + 1`` repeats its last node.
    path_mask : Tensor
        ``bool [P, L + 1]``: True where the entry of ``paths`` is a real node of the path.
    leaves : Tensor
        ``long [P]``: the last node of each path, in the order of
        :meth:`ClusterTree.leaves`.
    inner_paths : Tensor
        ``long [Q, L + 1]``: root-to-node paths of the internal nodes, in the order of
        :meth:`ClusterTree.inner_paths`, padded like ``paths``.
    inner_path_mask : Tensor
        ``bool [Q, L + 1]``: True where the entry of ``inner_paths`` is real.
    depth : int
        ``L``, the largest level of any node.
    """

    nodes: Tensor
    parent: Tensor
    level: Tensor
    paths: Tensor
    path_mask: Tensor
    leaves: Tensor
    inner_paths: Tensor
    inner_path_mask: Tensor
    depth: int

    def to(self, device: str | torch.device) -> TreeTensors:
        """Return a copy with every tensor moved to ``device``.

        Parameters
        ----------
        device : str or torch.device
            Target device.

        Returns
        -------
        TreeTensors
            A new instance holding the moved tensors.
        """
        return dataclass_to(self, device)


@dataclass(frozen=True)
class _Structure:
    """Everything derived from one traversal of the tree at one version."""

    version: int
    n_nodes: int
    n_edges: int
    preorder: tuple[int, ...]
    position: dict[int, int]  # node -> index in preorder
    parent: dict[int, int | None]
    level: dict[int, int]
    node_path: dict[int, tuple[int, ...]]  # root-to-node path of every node
    size: dict[int, int]  # number of nodes in the subtree
    leaves: tuple[int, ...]
    leaf_start: dict[int, int]  # index in `leaves` of the subtree's first leaf
    leaf_count: dict[int, int]  # number of leaves in the subtree
    internal: tuple[int, ...]
    depth: int


def _as_node_id(node: Any) -> int:
    """Convert an integer-like node argument (int, numpy or 0-d tensor integer) to int."""
    if isinstance(node, bool):
        raise TypeError(f"node ids are integers, got the bool {node!r}")
    try:
        return operator.index(node)
    except TypeError:
        raise TypeError(
            f"node ids are integers, got {node!r} of type {type(node).__name__}"
        ) from None


def _as_optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer or None, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer or None, got {value!r} of type {type(value).__name__}"
        ) from None


def _to_plain(value: Any, where: str) -> Any:
    """Return ``value`` as plain JSON data (dict/list/str/int/float/bool/None).

    Tensors and numpy arrays or scalars are converted with ``tolist()``; tuples become
    lists.  Anything else that :func:`json.dumps` could not write faithfully (sets,
    arbitrary objects, dicts with non-string keys) raises :class:`TypeError` naming
    ``where``.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        # numpy arrays and numpy scalars; avoids importing numpy just for isinstance.
        return _to_plain(value.tolist(), where)
    if isinstance(value, dict):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where}: dictionary key {key!r} is a {type(key).__name__}; JSON only "
                    "keeps string keys, so the round trip would not be exact"
                )
            plain[key] = _to_plain(item, f"{where}[{key!r}]")
        return plain
    if isinstance(value, (list, tuple)):
        return [_to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{where} has type {type(value).__name__}, which cannot be written to JSON; store "
        "plain numbers, strings, lists, dicts, numpy arrays or tensors instead"
    )


def _node_link_data(graph: nx.DiGraph) -> dict:
    try:  # networkx >= 3.4 names the edge list through `edges=`
        return nx.node_link_data(graph, edges="edges")
    except TypeError:  # older networkx only has `link=`
        return nx.node_link_data(graph, link="edges")


def _node_link_graph(data: dict, edges_key: str) -> nx.DiGraph:
    try:
        return nx.node_link_graph(data, directed=True, multigraph=False, edges=edges_key)
    except TypeError:
        return nx.node_link_graph(data, directed=True, multigraph=False, link=edges_key)


class ClusterTree:
    """A rooted tree of clusters with stable, reusable integer node ids.

    The tree starts as a single root with id 0.  Edges of :attr:`graph` point from parent
    to child.  See the module docstring for the design.

    Examples
    --------
    >>> tree = ClusterTree()
    >>> a = tree.add_child(tree.root)
    >>> b = tree.add_child(tree.root)
    >>> tree.add_child(a)
    3
    >>> tree.paths()
    [(0, 1, 3), (0, 2)]
    >>> tree.to_tensors().paths.tolist()
    [[0, 1, 3], [0, 2, 2]]
    """

    def __init__(self) -> None:
        self._graph = nx.DiGraph()
        self._graph.add_node(0)
        self._root = 0
        self._version = 0
        self._events: list[dict[str, Any]] = []
        self._structure_cache: _Structure | None = None
        self._tensor_cache: dict[str, TreeTensors] = {}

    # ------------------------------------------------------------------ properties
    @property
    def graph(self) -> nx.DiGraph:
        """nx.DiGraph: the live graph (edges parent -> child).

        Node attributes may be edited freely; structural edits must use the tree's
        methods so that :attr:`version` and the caches stay correct.
        """
        return self._graph

    @property
    def root(self) -> int:
        """int: id of the root node."""
        return self._root

    @property
    def version(self) -> int:
        """int: counter incremented by every structural mutation; caches key on it."""
        return self._version

    @property
    def events(self) -> list[dict[str, Any]]:
        """list of dict: a copy of the structural event log, oldest first.

        Each event has the keys ``kind``, ``nodes``, ``step`` and ``epoch`` plus any extra
        information given to :meth:`log_event`.
        """
        return copy.deepcopy(self._events)

    # ------------------------------------------------------------------ events
    @staticmethod
    def _make_event(
        kind: Any, nodes: Any, step: Any, epoch: Any, info: dict[str, Any]
    ) -> dict[str, Any]:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"event kind must be a non-empty string, got {kind!r}")
        if isinstance(nodes, (str, bytes)):
            raise TypeError(f"event nodes must be node ids, got the string {nodes!r}")
        if isinstance(nodes, Tensor):
            nodes = nodes.reshape(-1).tolist()
        try:
            node_list = [_as_node_id(nodes)]
        except TypeError:
            if not isinstance(nodes, Iterable):
                raise TypeError(
                    f"event nodes must be a node id or an iterable of node ids, got {nodes!r}"
                ) from None
            node_list = [_as_node_id(node) for node in nodes]
        event = {
            "kind": kind,
            "nodes": node_list,
            "step": _as_optional_int(step, "step"),
            "epoch": _as_optional_int(epoch, "epoch"),
        }
        for key, value in info.items():
            if key in _EVENT_KEYS:
                raise ValueError(f"event info may not redefine the key {key!r}")
            event[key] = _to_plain(value, f"event {kind!r} info {key!r}")
        return event

    def log_event(
        self,
        kind: str,
        nodes: int | Iterable[int],
        *,
        step: int | None = None,
        epoch: int | None = None,
        **info: Any,
    ) -> None:
        """Append a structural event to the log.

        Parameters
        ----------
        kind : str
            What happened, e.g. ``"grow"``, ``"prune"``, ``"merge"`` or ``"split"``.
        nodes : int or iterable of int
            The node ids involved.  They need not be live (a pruned node is logged after
            it was removed).
        step, epoch : int, optional
            Optimisation step and epoch at which the event happened.
        **info
            Extra JSON-able information (tensors and numpy values are converted to lists
            or numbers).

        Raises
        ------
        ValueError
            If ``kind`` is empty or ``info`` redefines ``kind``, ``nodes``, ``step`` or
            ``epoch``.
        TypeError
            If node ids, ``step`` or ``epoch`` are not integers, or ``info`` cannot be
            written to JSON.
        """
        self._events.append(self._make_event(kind, nodes, step, epoch, info))

    # ------------------------------------------------------------------ validation
    def _require(self, node: Any) -> int:
        """Return ``node`` as int, raising NodeNotFoundError if it is not in the tree."""
        node_id = _as_node_id(node)
        if node_id not in self._graph:
            raise NodeNotFoundError(
                f"node {node_id} is not in the tree (live nodes: {self._describe_nodes()})"
            )
        return node_id

    def _describe_nodes(self) -> str:
        nodes = sorted(self._graph.nodes)
        if len(nodes) > 20:
            return f"{nodes[:20]}[:20] of {len(nodes)}"
        return str(nodes)

    def _mutated(self) -> None:
        self._version += 1
        self._structure_cache = None
        self._tensor_cache = {}

    def _smallest_free_id(self) -> int:
        # The smallest unused id is at most len(graph); a scan costs O(n) like the cache
        # rebuild every mutation triggers anyway, and stays correct whatever the history.
        node_id = 0
        while node_id in self._graph:
            node_id += 1
        return node_id

    # ------------------------------------------------------------------ mutations
    def add_child(self, parent: int, **attrs: Any) -> int:
        """Add a new leaf below ``parent``.

        Parameters
        ----------
        parent : int
            Id of the parent node.
        **attrs
            Node attributes of the new node.

        Returns
        -------
        int
            The new node's id: the smallest non-negative integer not used by a live node.

        Raises
        ------
        NodeNotFoundError
            If ``parent`` is not in the tree.
        ValueError
            If an attribute is named ``"id"`` (reserved by the JSON format).
        """
        parent = self._require(parent)
        reserved = _RESERVED_NODE_ATTRS.intersection(attrs)
        if reserved:
            raise ValueError(
                f"node attribute name(s) {sorted(reserved)} are reserved by the JSON format"
            )
        node = self._smallest_free_id()
        self._graph.add_node(node, **attrs)
        self._graph.add_edge(parent, node)
        self._mutated()
        return node

    def remove_leaf(self, node: int, prune_empty_parents: bool = False) -> list[int]:
        """Remove a leaf, and optionally the ancestors it leaves without children.

        Parameters
        ----------
        node : int
            Id of a leaf other than the root.
        prune_empty_parents : bool, default False
            If True, a parent left without children is removed too, recursively up to
            (never including) the root.

        Returns
        -------
        list of int
            Removed ids, bottom-up, starting with ``node``.

        Raises
        ------
        NodeNotFoundError
            If ``node`` is not in the tree.
        ValueError
            If ``node`` is the root or has children.
        """
        node = self._require(node)
        if node == self._root:
            raise ValueError(f"cannot remove the root (node {node})")
        if self._graph.out_degree(node) > 0:
            raise ValueError(
                f"node {node} is not a leaf (children {self.children(node)}); remove its "
                "descendants first or use merge/replace_with_child"
            )
        removed = []
        while True:
            parent = next(iter(self._graph.predecessors(node)))
            self._graph.remove_node(node)
            removed.append(node)
            if not prune_empty_parents or parent == self._root:
                break
            if self._graph.out_degree(parent) > 0:
                break
            node = parent
        self._mutated()
        return removed

    def merge(self, keep: int, drop: int) -> None:
        """Merge ``drop`` into ``keep``.

        ``drop``'s children become children of ``keep`` and ``drop`` is removed together
        with its attributes; ``keep``'s attributes are unchanged.  A parent left without
        children by the removal stays in the tree (as a leaf).

        Parameters
        ----------
        keep : int
            Node that survives.
        drop : int
            Node that is removed.

        Raises
        ------
        NodeNotFoundError
            If either node is not in the tree.
        ValueError
            If ``keep == drop``, either is the root, or ``keep`` is a descendant of
            ``drop`` (re-parenting would create a cycle).
        """
        keep = self._require(keep)
        drop = self._require(drop)
        if keep == drop:
            raise ValueError(f"cannot merge node {keep} into itself")
        for name, node in (("keep", keep), ("drop", drop)):
            if node == self._root:
                raise ValueError(f"cannot merge the root (node {node}, given as {name})")
        structure = self._structure()
        start = structure.position[drop]
        if start <= structure.position[keep] < start + structure.size[drop]:
            raise ValueError(
                f"cannot merge node {drop} into its own descendant {keep}: node {drop} is an "
                f"ancestor of node {keep}"
            )
        for child in list(self._graph.successors(drop)):
            self._graph.add_edge(keep, child)
        self._graph.remove_node(drop)
        self._mutated()

    def move(self, node: int, new_parent: int) -> None:
        """Re-parent ``node`` (with its whole subtree) below ``new_parent``.

        Attributes are kept. A parent left without children stays in the tree (as a leaf).

        Raises
        ------
        NodeNotFoundError
            If either node is not in the tree.
        ValueError
            If ``node`` is the root, or ``new_parent`` is ``node`` or one of its descendants
            (re-parenting would create a cycle).
        """
        node = self._require(node)
        new_parent = self._require(new_parent)
        if node == self._root:
            raise ValueError(f"cannot move the root (node {node})")
        structure = self._structure()
        start = structure.position[node]
        if start <= structure.position[new_parent] < start + structure.size[node]:
            raise ValueError(f"cannot move node {node} below itself or its descendant {new_parent}")
        old_parent = next(iter(self._graph.predecessors(node)))
        if old_parent == new_parent:
            return
        self._graph.remove_edge(old_parent, node)
        self._graph.add_edge(new_parent, node)
        self._mutated()

    def replace_with_child(self, node: int) -> int:
        """Splice out a node that has exactly one child; the child takes its place.

        Parameters
        ----------
        node : int
            Node with exactly one child.  If it is the root, the child becomes the root.

        Returns
        -------
        int
            Id of the child, which now occupies ``node``'s position.

        Raises
        ------
        NodeNotFoundError
            If ``node`` is not in the tree.
        ValueError
            If ``node`` does not have exactly one child.
        """
        node = self._require(node)
        children = self.children(node)
        if len(children) != 1:
            raise ValueError(
                f"node {node} has {len(children)} children {children}; replace_with_child "
                "needs exactly one"
            )
        (child,) = children
        parent = self.parent(node)
        self._graph.remove_node(node)
        if parent is None:
            self._root = child
        else:
            self._graph.add_edge(parent, child)
        self._mutated()
        return child

    # ------------------------------------------------------------------ traversal
    def _structure(self) -> _Structure:
        cached = self._structure_cache
        graph = self._graph
        if cached is not None:
            if (cached.n_nodes, cached.n_edges) != (
                graph.number_of_nodes(),
                graph.number_of_edges(),
            ):
                raise RuntimeError(
                    "the tree's graph was changed directly (node or edge count differs from "
                    "the cached structure); use add_child/remove_leaf/merge/replace_with_child "
                    "so that version and caches stay correct"
                )
            return cached
        structure = self._compute_structure()
        self._structure_cache = structure
        return structure

    def _compute_structure(self) -> _Structure:
        """One iterative preorder traversal (children ascending) computing everything."""
        graph = self._graph
        root = self._root
        if root not in graph:
            raise RuntimeError(f"the root {root} is not in the graph")
        preorder: list[int] = []
        parent: dict[int, int | None] = {root: None}
        level: dict[int, int] = {root: 0}
        node_path: dict[int, tuple[int, ...]] = {root: (root,)}
        leaf_start: dict[int, int] = {}
        sorted_children: dict[int, list[int]] = {}
        leaves: list[int] = []
        internal: list[int] = []
        stack = [root]
        while stack:
            node = stack.pop()
            preorder.append(node)
            leaf_start[node] = len(leaves)
            children = sorted(graph.successors(node))
            sorted_children[node] = children
            if children:
                internal.append(node)
            else:
                leaves.append(node)
            for child in reversed(children):  # reversed so the smallest id pops first
                if child in parent:
                    raise RuntimeError(
                        f"the graph is not a tree: node {child} is reached twice"
                    )
                parent[child] = node
                level[child] = level[node] + 1
                node_path[child] = node_path[node] + (child,)
                stack.append(child)
        if len(preorder) != graph.number_of_nodes() or graph.in_degree(root) != 0:
            raise RuntimeError(
                "the graph is not a tree rooted at node "
                f"{root}: {graph.number_of_nodes() - len(preorder)} node(s) unreachable "
                f"or the root has a parent"
            )
        size: dict[int, int] = {}
        leaf_count: dict[int, int] = {}
        for node in reversed(preorder):  # children before parents
            children = sorted_children[node]
            size[node] = 1 + sum(size[child] for child in children)
            leaf_count[node] = sum(leaf_count[child] for child in children) if children else 1
        return _Structure(
            version=self._version,
            n_nodes=graph.number_of_nodes(),
            n_edges=graph.number_of_edges(),
            preorder=tuple(preorder),
            position={node: index for index, node in enumerate(preorder)},
            parent=parent,
            level=level,
            node_path=node_path,
            size=size,
            leaves=tuple(leaves),
            leaf_start=leaf_start,
            leaf_count=leaf_count,
            internal=tuple(internal),
            depth=max(level.values()),
        )

    # ------------------------------------------------------------------ queries
    def nodes(self) -> list[int]:
        """Return the live node ids, ascending."""
        return sorted(self._graph.nodes)

    def parent(self, node: int) -> int | None:
        """Return the parent of ``node``, or None for the root."""
        node = self._require(node)
        return self._structure().parent[node]

    def children(self, node: int) -> list[int]:
        """Return the children of ``node`` in ascending id order."""
        node = self._require(node)
        return sorted(self._graph.successors(node))

    def is_leaf(self, node: int) -> bool:
        """Return True if ``node`` has no children (a lone root is a leaf)."""
        node = self._require(node)
        return self._graph.out_degree(node) == 0

    def leaves(self) -> list[int]:
        """Return the leaves in preorder (depth first, children in ascending id order)."""
        return list(self._structure().leaves)

    def internal_nodes(self) -> list[int]:
        """Return the nodes that have children, in preorder."""
        return list(self._structure().internal)

    def paths(self) -> list[tuple[int, ...]]:
        """Return the root-to-leaf paths, in the order of :meth:`leaves`."""
        structure = self._structure()
        return [structure.node_path[leaf] for leaf in structure.leaves]

    def inner_paths(self) -> list[tuple[int, ...]]:
        """Return the root-to-node path of every internal node, in preorder."""
        structure = self._structure()
        return [structure.node_path[node] for node in structure.internal]

    def level(self, node: int) -> int:
        """Return the depth of ``node`` (the root has level 0)."""
        node = self._require(node)
        return self._structure().level[node]

    def depth(self) -> int:
        """Return the largest level of any node (0 for a lone root)."""
        return self._structure().depth

    def ancestors(self, node: int) -> list[int]:
        """Return the path from the root to ``node``, both included."""
        node = self._require(node)
        return list(self._structure().node_path[node])

    def lca(self, a: int, b: int) -> int:
        """Return the lowest common ancestor of ``a`` and ``b`` (a node is its own ancestor).

        Parameters
        ----------
        a, b : int
            Node ids.

        Returns
        -------
        int
            The deepest node that is an ancestor of both.
        """
        a = self._require(a)
        b = self._require(b)
        structure = self._structure()
        parent, level = structure.parent, structure.level
        while level[a] > level[b]:
            a = parent[a]
        while level[b] > level[a]:
            b = parent[b]
        while a != b:
            a, b = parent[a], parent[b]
        return a

    def subtree(self, node: int) -> list[int]:
        """Return ``node`` and all its descendants, in preorder."""
        node = self._require(node)
        structure = self._structure()
        start = structure.position[node]
        return list(structure.preorder[start : start + structure.size[node]])

    def subtree_leaves(self, node: int) -> list[int]:
        """Return the leaves below ``node`` (``[node]`` for a leaf), in :meth:`leaves` order."""
        node = self._require(node)
        structure = self._structure()
        start = structure.leaf_start[node]
        return list(structure.leaves[start : start + structure.leaf_count[node]])

    # ------------------------------------------------------------------ tensors
    def to_tensors(self, device: str | torch.device = "cpu") -> TreeTensors:
        """Return the index tensors of the current tree on ``device``.

        The result is cached per (version, device): repeated calls without a mutation
        return the same object, and any mutation invalidates it.

        Parameters
        ----------
        device : str or torch.device, default "cpu"
            Device of the returned tensors.

        Returns
        -------
        TreeTensors
            See :class:`TreeTensors`.
        """
        # _mutated() empties the tensor cache, so anything found in it is current.
        structure = self._structure()  # also detects direct graph edits
        key = str(torch.device(device))
        cached = self._tensor_cache.get(key)
        if cached is not None:
            return cached
        cpu_key = str(torch.device("cpu"))
        host = self._tensor_cache.get(cpu_key)
        if host is None:
            host = self._build_tensors(structure)
            self._tensor_cache[cpu_key] = host
        result = host if key == cpu_key else host.to(device)
        self._tensor_cache[key] = result
        return result

    @staticmethod
    def _padded(
        paths: list[tuple[int, ...]], width: int
    ) -> tuple[Tensor, Tensor]:
        if not paths:
            return (
                torch.zeros((0, width), dtype=torch.long),
                torch.zeros((0, width), dtype=torch.bool),
            )
        rows = [path + (path[-1],) * (width - len(path)) for path in paths]
        mask = [[True] * len(path) + [False] * (width - len(path)) for path in paths]
        return torch.tensor(rows, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)

    @staticmethod
    def _build_tensors(structure: _Structure) -> TreeTensors:
        nodes = sorted(structure.preorder)
        parent = [structure.parent[node] for node in nodes]
        width = structure.depth + 1
        paths, path_mask = ClusterTree._padded(
            [structure.node_path[leaf] for leaf in structure.leaves], width
        )
        inner_paths, inner_path_mask = ClusterTree._padded(
            [structure.node_path[node] for node in structure.internal], width
        )
        return TreeTensors(
            nodes=torch.tensor(nodes, dtype=torch.long),
            parent=torch.tensor([-1 if p is None else p for p in parent], dtype=torch.long),
            level=torch.tensor([structure.level[node] for node in nodes], dtype=torch.long),
            paths=paths,
            path_mask=path_mask,
            leaves=torch.tensor(structure.leaves, dtype=torch.long),
            inner_paths=inner_paths,
            inner_path_mask=inner_path_mask,
            depth=structure.depth,
        )

    # ------------------------------------------------------------------ serialisation
    def to_json(self) -> dict[str, Any]:
        """Return the tree as plain JSON data.

        The dictionary is networkx node-link data (edge list under ``"edges"``) extended
        with ``"root"``, ``"events"``, ``"format"`` and ``"format_version"``; it can be
        passed to :func:`json.dumps` as is and read back by :meth:`from_json`.  Tensor and
        numpy attribute values are converted to (nested) lists or numbers, so they come
        back as lists.

        Returns
        -------
        dict
            JSON-able description of the tree.

        Raises
        ------
        TypeError
            If a node, edge or graph attribute cannot be written to JSON.
        ValueError
            If a node attribute is named ``"id"`` or an edge attribute ``"source"`` or
            ``"target"`` (names the node-link format uses itself).
        """
        self._structure()  # refuse to save a graph that was edited behind the tree's back
        for node, attrs in self._graph.nodes(data=True):
            reserved = _RESERVED_NODE_ATTRS.intersection(attrs)
            if reserved:
                raise ValueError(
                    f"node {node} has attribute(s) {sorted(reserved)}, reserved by the JSON format"
                )
        for source, target, attrs in self._graph.edges(data=True):
            reserved = _RESERVED_EDGE_ATTRS.intersection(attrs)
            if reserved:
                raise ValueError(
                    f"edge ({source}, {target}) has attribute(s) {sorted(reserved)}, reserved "
                    "by the JSON format"
                )
        data = _node_link_data(self._graph)
        plain = {
            "directed": True,
            "multigraph": False,
            "graph": _to_plain(data["graph"], "graph attribute"),
            "nodes": [
                _to_plain(entry, f"node {entry['id']} attributes") for entry in data["nodes"]
            ],
            "edges": [
                _to_plain(entry, f"edge ({entry['source']}, {entry['target']}) attributes")
                for entry in data["edges"]
            ],
        }
        plain["root"] = self._root
        plain["events"] = copy.deepcopy(self._events)
        plain["format"] = JSON_FORMAT
        plain["format_version"] = JSON_FORMAT_VERSION
        return plain

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterTree:
        """Rebuild a tree written by :meth:`to_json`.

        Parameters
        ----------
        data : dict
            Output of :meth:`to_json` (possibly after ``json.loads(json.dumps(...))``).

        Returns
        -------
        ClusterTree
            A tree with the same nodes, edges, attributes, root and events.  Node ids
            allocated afterwards follow the same rule, so they match the original's.

        Raises
        ------
        ValueError
            If ``data`` is not a valid description of a rooted tree.
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected a dict from ClusterTree.to_json, got {type(data).__name__}")
        fmt = data.get("format", JSON_FORMAT)
        if fmt != JSON_FORMAT:
            raise ValueError(f"unknown tree format {fmt!r}, expected {JSON_FORMAT!r}")
        fmt_version = data.get("format_version", JSON_FORMAT_VERSION)
        if fmt_version != JSON_FORMAT_VERSION:
            raise ValueError(
                f"unsupported tree format_version {fmt_version!r}, expected {JSON_FORMAT_VERSION}"
            )
        missing = [key for key in ("nodes", "root") if key not in data]
        if missing:
            raise ValueError(f"tree JSON lacks the key(s) {missing}")
        if data.get("directed", True) is not True or data.get("multigraph", False):
            raise ValueError("tree JSON must describe a directed graph without multi-edges")
        # Accept the pre-3.4 networkx default edge key as well.
        edges_key = "edges" if "edges" in data or "links" not in data else "links"
        link_data = {
            key: data[key] for key in ("directed", "multigraph", "graph", "nodes") if key in data
        }
        link_data[edges_key] = data.get(edges_key, [])
        # networkx silently numbers nodes that lack an id; a tree file must name every node.
        for key, required in (("nodes", ("id",)), (edges_key, ("source", "target"))):
            entries = link_data[key]
            if not isinstance(entries, list):
                raise ValueError(f"tree JSON {key!r} must be a list, got {type(entries).__name__}")
            for entry in entries:
                if not isinstance(entry, dict) or not all(name in entry for name in required):
                    raise ValueError(
                        f"malformed node-link data in tree JSON: every entry of {key!r} needs "
                        f"the key(s) {list(required)}, got {entry!r}"
                    )
        link_data.setdefault("graph", {})
        try:
            graph = _node_link_graph(link_data, edges_key)
        except (KeyError, TypeError, nx.NetworkXError) as error:
            raise ValueError(f"malformed node-link data in tree JSON: {error!r}") from error
        tree = cls.from_graph(graph, root=data["root"])
        events = data.get("events", [])
        if not isinstance(events, list):
            raise ValueError(f"tree JSON 'events' must be a list, got {type(events).__name__}")
        for index, event in enumerate(events):
            if not isinstance(event, dict) or not {"kind", "nodes"} <= set(event):
                raise ValueError(f"event {index} must be a dict with 'kind' and 'nodes': {event!r}")
            info = {key: value for key, value in event.items() if key not in _EVENT_KEYS}
            tree._events.append(
                cls._make_event(
                    event["kind"], event["nodes"], event.get("step"), event.get("epoch"), info
                )
            )
        return tree

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` as a JSON file, atomically: an interrupted save leaves the
        file that was there before, never half a tree."""
        text = json.dumps(self.to_json(), indent=1)
        atomic_write(path, lambda handle: handle.write(text), text=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClusterTree:
        """Read a tree written by :meth:`save`."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_json(json.load(handle))

    # ------------------------------------------------------------------ interoperability
    def _binary_children(self, structure: _Structure) -> dict[int, list[int]]:
        """Children (ascending) of every internal node; ``ValueError`` unless each has exactly two."""
        children = {node: sorted(self._graph.successors(node)) for node in structure.internal}
        bad = [node for node, kids in children.items() if len(kids) != 2]
        if bad:
            counts = ", ".join(f"node {node}: {len(children[node])}" for node in bad[:10])
            raise ValueError(
                "a linkage matrix describes binary trees only (every merge joins two clusters), but "
                f"{len(bad)} internal node(s) have another number of children ({counts}"
                f"{', ...' if len(bad) > 10 else ''}); export the tree with to_newick() or to_json() instead"
            )
        return children

    def _merge_heights(self, structure: _Structure, children: dict[int, list[int]]) -> dict[int, float]:
        """Height of every node: its ``"height"`` attribute when every node has one, else the subtree height.

        The subtree height counts edges down to the deepest leaf (0 at the leaves), so it rises along
        every path from a leaf to the root, as a dendrogram needs.
        """
        attrs = self._graph.nodes
        given = [attrs[node].get("height") for node in structure.preorder]
        if all(isinstance(h, (int, float)) and not isinstance(h, bool) for h in given):
            heights = {node: float(h) for node, h in zip(structure.preorder, given)}
            for node, kids in children.items():
                for child in kids:
                    if not heights[child] <= heights[node]:
                        raise ValueError(
                            f"node {node} has height {heights[node]} below its child {child}'s "
                            f"{heights[child]}; the 'height' attributes must not decrease towards the root"
                        )
            return heights
        heights = {}
        for node in reversed(structure.preorder):  # children first
            kids = children.get(node, ())
            heights[node] = 1.0 + max(heights[child] for child in kids) if kids else 0.0
        return heights

    def to_linkage(
        self, assignments: Any = None, *, return_nodes: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Return the tree as a scipy linkage matrix (``scipy.cluster.hierarchy``).

        Without ``assignments`` the linkage's observations are the tree's leaves: observation ``i``
        is ``self.leaves()[i]``, and row ``j`` merges two clusters into cluster ``n_leaves + j``, one
        row per internal node. With ``assignments`` (the node of each data point, as ``predict``
        returns) the observations are the data points: the points of each leaf are merged first, at
        height 0, then the leaves' clusters as in the tree; subtrees without points are left out, so a
        node left with one non-empty child is the same cluster as that child.

        Merge heights are the nodes' ``"height"`` attributes when every node has one (a tree from
        :meth:`from_linkage` keeps its distances), else each node's subtree height in edges. Rows are
        sorted by height (children before parents among equal heights), and the two merged clusters
        of a row are the node's children in ascending id order, so ``scipy.cluster.hierarchy.dendrogram``
        draws the leaves in the order of :meth:`leaves`.

        Parameters
        ----------
        assignments : array-like of int, shape (N,), optional
            Leaf node id of each data point.
        return_nodes : bool, default False
            Also return ``nodes``: ``nodes[c]`` is the tree node of linkage cluster ``c``
            (``0 .. 2 n - 2`` for ``n`` observations); ``-1`` for a data point and for a partial
            merge of one leaf's points.

        Returns
        -------
        numpy.ndarray
            ``float64 [n - 1, 4]``: the two merged cluster indices, the height and the number of
            observations of the new cluster, as :func:`scipy.cluster.hierarchy.linkage` returns.

        Raises
        ------
        ValueError
            If an internal node does not have exactly two children (a linkage only merges pairs),
            there are fewer than two observations, an assignment is not a leaf of the tree, or
            ``"height"`` attributes decrease towards the root.
        """
        structure = self._structure()
        children = self._binary_children(structure)
        heights = self._merge_heights(structure, children)
        position = structure.position
        # rows are collected as (height, -preorder position, order, left, right, count, node) and sorted
        # at the end; a node's children sit later in preorder, so equal heights keep children first
        rows: list[tuple[float, int, int, Any, Any, int, int]] = []
        cluster_of: dict[int, Any] = {}  # tree node -> its cluster reference (None: no points)
        count_of: dict[int, int] = {}
        if assignments is None:
            if len(structure.leaves) < 2:
                raise ValueError("a linkage matrix needs at least two observations; this tree is a lone root")
            n_obs = len(structure.leaves)
            for index, leaf in enumerate(structure.leaves):
                cluster_of[leaf], count_of[leaf] = ("obs", index), 1
        else:
            points = np.asarray(assignments.detach().cpu() if isinstance(assignments, Tensor) else assignments)
            if points.ndim != 1 or points.dtype.kind not in "iu":
                raise ValueError(
                    f"assignments must be a 1-D array of integer node ids, got dtype {points.dtype} "
                    f"and shape {points.shape}"
                )
            n_obs = int(points.shape[0])
            if n_obs < 2:
                raise ValueError(f"a linkage matrix needs at least two observations, got {n_obs} point(s)")
            used, inverse = np.unique(points, return_inverse=True)
            unknown = [int(node) for node in used if int(node) not in self._graph]
            if unknown:
                raise NodeNotFoundError(f"assignments name node(s) {unknown[:10]} that are not in the tree")
            inner = [int(node) for node in used if self._graph.out_degree(int(node)) > 0]
            if inner:
                raise ValueError(
                    f"points are assigned to internal node(s) {inner[:10]}; in a linkage matrix every "
                    "point is an observation below the merges, so points must sit on leaves"
                )
            order = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[order], np.arange(len(used) + 1))
            members = {int(node): order[bounds[k]: bounds[k + 1]] for k, node in enumerate(used)}
            for leaf in structure.leaves:
                group = members.get(leaf)
                if group is None:
                    cluster_of[leaf], count_of[leaf] = None, 0
                    continue
                previous: Any = ("obs", int(group[0]))
                for k in range(1, len(group)):  # a chain of merges at height 0 inside the leaf
                    rows.append((0.0, -position[leaf], len(rows), previous, ("obs", int(group[k])), k + 1,
                                 leaf if k == len(group) - 1 else -1))
                    previous = ("row", rows[-1][2])
                cluster_of[leaf], count_of[leaf] = previous, len(group)
        for node in reversed(structure.preorder):
            if node not in children:
                continue
            left, right = (cluster_of[child] for child in children[node])
            count_of[node] = sum(count_of[child] for child in children[node])
            if left is None or right is None:  # an empty side: the node is its other child's cluster
                cluster_of[node] = right if left is None else left
                continue
            rows.append((heights[node], -position[node], len(rows), left, right, count_of[node], node))
            cluster_of[node] = ("row", rows[-1][2])
        rows.sort(key=lambda row: (row[0], row[1], row[2]))
        index_of_row = {row[2]: n_obs + k for k, row in enumerate(rows)}

        def index(ref: tuple[str, int]) -> int:
            return ref[1] if ref[0] == "obs" else index_of_row[ref[1]]

        linkage = np.array([[index(row[3]), index(row[4]), row[0], row[5]] for row in rows], dtype=np.float64)
        linkage = linkage.reshape(-1, 4)
        if not return_nodes:
            return linkage
        nodes = np.full(2 * n_obs - 1, -1, dtype=np.int64)
        if assignments is None:
            nodes[:n_obs] = structure.leaves
        else:  # a leaf with a single point is that point's observation
            for leaf, ref in cluster_of.items():
                if ref is not None and ref[0] == "obs" and leaf in structure.leaves and count_of[leaf] == 1:
                    nodes[ref[1]] = leaf
        for k, row in enumerate(rows):
            nodes[n_obs + k] = row[6]
        return linkage, nodes

    @classmethod
    def from_linkage(cls, linkage: Any) -> ClusterTree:
        """Build a tree from a scipy linkage matrix (``scipy.cluster.hierarchy.linkage`` and friends).

        Node ``i < n`` is observation ``i`` of the linkage and row ``j`` becomes node ``n + j`` with the
        row's two clusters as children (in the row's order), so the root is ``2 n - 2``, the layout of
        scipy's own cluster indices. Every node gets a ``"height"`` attribute: the row's distance, 0
        for the observations. :meth:`to_linkage` of the result describes the same tree with the same
        heights (so the same cophenetic distances); its observations follow :meth:`leaves`, and
        ``return_nodes=True`` maps them back to these node ids.

        Raises
        ------
        ValueError
            If ``linkage`` is not a valid linkage matrix (scipy's ``is_valid_linkage`` says why).
        """
        from scipy.cluster.hierarchy import is_valid_linkage

        matrix = np.asarray(linkage.detach().cpu() if isinstance(linkage, Tensor) else linkage)
        if matrix.ndim != 2 or matrix.shape[1] != 4 or matrix.shape[0] < 1 or matrix.dtype.kind not in "iuf":
            raise ValueError(
                "a linkage matrix is a numeric [n - 1, 4] array with at least one row, got "
                f"shape {matrix.shape} and dtype {matrix.dtype}"
            )
        matrix = matrix.astype(np.float64)
        if not np.all(np.isfinite(matrix)):
            raise ValueError("the linkage matrix holds NaN or infinite values")
        try:
            is_valid_linkage(matrix, throw=True, name="linkage")
        except (ValueError, TypeError) as error:
            raise ValueError(f"not a valid scipy linkage matrix: {error}") from error
        n_obs = matrix.shape[0] + 1
        graph = nx.DiGraph()
        graph.add_nodes_from(range(n_obs), height=0.0)
        for row, (left, right, height, _) in enumerate(matrix):
            node = n_obs + row
            graph.add_node(node, height=float(height))
            graph.add_edge(node, int(left))
            graph.add_edge(node, int(right))
        return cls.from_graph(graph, root=2 * n_obs - 2)

    def to_newick(self, *, branch_lengths: bool = True) -> str:
        """Return the tree as a Newick string, e.g. ``"((3,4)1,2)0;"``.

        Every node, internal ones included, is labelled: by its ``"name"`` attribute where it has
        one, else by its id. Labels that Newick reserves characters in (spaces, ``()[]':;,``) are
        quoted. With ``branch_lengths`` the edge to each node carries a length: the nodes'
        ``"length"`` attributes when every non-root node has one (a tree read by
        :meth:`from_newick` keeps them), else the parent's minus the node's ``"height"`` when every
        node has a height (a tree from :meth:`from_linkage`); otherwise no lengths are written.

        Raises
        ------
        ValueError
            If two nodes get the same label (the string could not be read back into this tree) or
            a branch length is not a finite number.
        """
        structure = self._structure()
        attrs = self._graph.nodes
        labels = {node: str(attrs[node].get("name", node)) for node in structure.preorder}
        seen: dict[str, int] = {}
        for node, label in labels.items():
            if label in seen:
                raise ValueError(
                    f"nodes {seen[label]} and {node} would both be labelled {label!r} in Newick; "
                    "give them distinct 'name' attributes"
                )
            seen[label] = node
        lengths: dict[int, float] = {}
        if branch_lengths:
            non_root = [node for node in structure.preorder if node != self._root]

            def numeric(value: Any) -> bool:
                return isinstance(value, (int, float)) and not isinstance(value, bool)

            if non_root and all(numeric(attrs[node].get("length")) for node in non_root):
                lengths = {node: float(attrs[node]["length"]) for node in non_root}
                if numeric(attrs[self._root].get("length")):
                    lengths[self._root] = float(attrs[self._root]["length"])
            elif all(numeric(attrs[node].get("height")) for node in structure.preorder):
                lengths = {
                    node: float(attrs[structure.parent[node]]["height"]) - float(attrs[node]["height"])
                    for node in non_root
                }
            bad = {node: value for node, value in lengths.items() if not math.isfinite(value)}
            if bad:
                raise ValueError(f"branch lengths must be finite numbers, got {dict(list(bad.items())[:5])}")
        text: dict[int, str] = {}
        for node in reversed(structure.preorder):  # children first, no recursion for deep trees
            kids = sorted(self._graph.successors(node))
            piece = "(" + ",".join(text.pop(child) for child in kids) + ")" if kids else ""
            piece += _newick_label(labels[node])
            if node in lengths:
                piece += f":{lengths[node]!r}"
            text[node] = piece
        return text[self._root] + ";"

    @classmethod
    def from_newick(cls, text: str) -> ClusterTree:
        """Read a Newick string (one rooted tree ending in ``;``) into a tree.

        When every node carries a distinct non-negative integer label (what :meth:`to_newick`
        writes for a tree without names), the labels are the node ids. Otherwise nodes are numbered
        0, 1, ... in the order they appear (preorder, the root 0) and their labels are kept in a
        ``"name"`` attribute. Branch lengths go to a ``"length"`` attribute. Quoted labels
        (``'...'`` with ``''`` for a quote) and comments in square brackets are understood.

        Raises
        ------
        ValueError
            For malformed Newick, naming the character position.
        """
        if not isinstance(text, str):
            raise TypeError(f"from_newick expects a string, got {type(text).__name__}")
        parsed = _parse_newick(text)
        labels = [entry["label"] for entry in parsed]
        as_ids = all(label is not None and re.fullmatch(r"[0-9]+", label) for label in labels)
        ids = [int(label) for label in labels] if as_ids else list(range(len(parsed)))
        if as_ids and len(set(ids)) != len(ids):
            ids, as_ids = list(range(len(parsed))), False
        graph = nx.DiGraph()
        for entry, node in zip(parsed, ids):
            node_attrs: dict[str, Any] = {}
            if not as_ids and entry["label"] is not None:
                node_attrs["name"] = entry["label"]
            if entry["length"] is not None:
                node_attrs["length"] = entry["length"]
            graph.add_node(node, **node_attrs)
            if entry["parent"] is not None:
                graph.add_edge(ids[entry["parent"]], node)
        return cls.from_graph(graph, root=ids[0])

    # ------------------------------------------------------------------ construction
    def copy(self, events: bool = True) -> ClusterTree:
        """Return an independent deep copy (graph, attributes and, unless ``events=False``, events).

        ``events=False`` gives a copy with an empty event log, for scratch trees that score a
        proposed move: copying a long fit's log (every proposal it scored) dominated their cost.
        """
        tree = ClusterTree.__new__(type(self))
        tree._graph = copy.deepcopy(self._graph)
        tree._root = self._root
        tree._version = 0
        tree._events = copy.deepcopy(self._events) if events else []
        tree._structure_cache = None
        tree._tensor_cache = {}
        return tree

    @classmethod
    def from_graph(cls, graph: nx.DiGraph, root: int | None = None) -> ClusterTree:
        """Build a tree from a directed graph (edges parent -> child).

        The graph and its attributes are deep-copied; integer-like ids (e.g. numpy
        integers) become Python ints.

        Parameters
        ----------
        graph : nx.DiGraph
            A rooted tree (arborescence) with non-negative integer node ids.
        root : int, optional
            Expected root; by default the unique node without a parent.

        Returns
        -------
        ClusterTree

        Raises
        ------
        TypeError
            If ``graph`` is not a ``DiGraph`` or a node id is not an integer.
        ValueError
            If the graph is empty, has negative ids, is not a rooted tree, or ``root`` is
            not its root.
        """
        if not isinstance(graph, nx.DiGraph) or graph.is_multigraph():
            raise TypeError(
                "expected a networkx.DiGraph with edges parent -> child, got "
                f"{type(graph).__name__}"
            )
        if graph.number_of_nodes() == 0:
            raise ValueError("the graph is empty; a tree needs at least a root")
        ids = {}
        for node in graph.nodes:
            node_id = _as_node_id(node)
            if node_id < 0:
                raise ValueError(f"node ids must be non-negative, got {node_id}")
            ids[node] = node_id
        if not nx.is_arborescence(graph):
            roots = [node for node, degree in graph.in_degree() if degree == 0]
            raise ValueError(
                "the graph is not a rooted tree (arborescence): "
                f"{len(roots)} node(s) without parent {sorted(ids[r] for r in roots)[:10]}, "
                f"weakly connected: {nx.is_weakly_connected(graph)}, "
                f"acyclic: {nx.is_directed_acyclic_graph(graph)}"
            )
        (found_root,) = [ids[node] for node, degree in graph.in_degree() if degree == 0]
        if root is not None and _as_node_id(root) != found_root:
            raise ValueError(f"node {root} is not the root of the graph; the root is {found_root}")
        copied = nx.DiGraph()
        copied.graph.update(copy.deepcopy(graph.graph))
        for node, attrs in graph.nodes(data=True):
            copied.add_node(ids[node], **copy.deepcopy(attrs))
        for source, target, attrs in graph.edges(data=True):
            copied.add_edge(ids[source], ids[target], **copy.deepcopy(attrs))
        tree = cls.__new__(cls)
        tree._graph = copied
        tree._root = found_root
        tree._version = 0
        tree._events = []
        tree._structure_cache = None
        tree._tensor_cache = {}
        return tree

    @classmethod
    def flat(cls, n_leaves: int) -> ClusterTree:
        """Return a root 0 with leaves ``1, ..., n_leaves`` (the tree of a flat model).

        Raises
        ------
        ValueError
            If ``n_leaves < 1``.
        """
        n_leaves = _as_node_id(n_leaves)
        if n_leaves < 1:
            raise ValueError(f"a flat tree needs at least one leaf, got n_leaves={n_leaves}")
        tree = cls()
        for _ in range(n_leaves):
            tree.add_child(tree.root)
        return tree

    def check(self) -> None:
        """Verify the tree's invariants.

        Raises
        ------
        AssertionError
            If the graph is not an arborescence rooted at :attr:`root` with non-negative
            integer ids.
        """
        graph = self._graph
        assert isinstance(graph, nx.DiGraph), "graph is not a DiGraph"
        assert not graph.is_multigraph(), "graph is a multigraph"
        assert graph.number_of_nodes() > 0, "graph is empty"
        for node in graph.nodes:
            assert type(node) is int and node >= 0, f"node id {node!r} is not a non-negative int"
        assert self._root in graph, f"root {self._root} is not in the graph"
        assert graph.in_degree(self._root) == 0, f"root {self._root} has a parent"
        roots = [node for node, degree in graph.in_degree() if degree == 0]
        assert roots == [self._root], f"nodes without parent {roots}, expected [{self._root}]"
        assert nx.is_arborescence(graph), "graph is not an arborescence"
        cached = self._structure_cache
        if cached is not None:
            assert cached.version == self._version, "cached structure is stale"
            assert cached.n_nodes == graph.number_of_nodes(), "graph changed behind the cache"
            assert cached.n_edges == graph.number_of_edges(), "graph changed behind the cache"

    # ------------------------------------------------------------------ dunder
    def __len__(self) -> int:
        return self._graph.number_of_nodes()

    def __contains__(self, node: object) -> bool:
        if isinstance(node, bool):
            return False
        try:
            return operator.index(node) in self._graph  # type: ignore[arg-type]
        except TypeError:
            return False

    def __repr__(self) -> str:
        structure = self._structure_cache
        if structure is None:
            try:
                structure = self._structure()
            except RuntimeError:
                return f"ClusterTree(<invalid graph>, nodes={len(self)}, root={self._root})"
        return (
            f"ClusterTree(nodes={structure.n_nodes}, leaves={len(structure.leaves)}, "
            f"depth={structure.depth}, root={self._root}, version={self._version})"
        )


# ---------------------------------------------------------------------------------------------
# Newick
# ---------------------------------------------------------------------------------------------

#: characters that end an unquoted Newick label (or may not appear in one)
_NEWICK_SPECIAL = set("()[]':;, \t\r\n")


def _newick_label(label: str) -> str:
    """``label`` as a Newick token: as is when it is plain, else single-quoted with ``''`` for ``'``."""
    if label and not any(char in _NEWICK_SPECIAL for char in label):
        return label
    return "'" + label.replace("'", "''") + "'"


def _parse_newick(text: str) -> list[dict[str, Any]]:
    """The nodes of one Newick tree in preorder: ``{"parent": index or None, "label", "length"}``.

    An iterative scanner (no recursion, so a deep tree cannot exhaust the stack).
    """
    nodes: list[dict[str, Any]] = [{"parent": None, "label": None, "length": None, "children": 0, "closed": False}]
    current = 0
    i, n = 0, len(text)

    def fail(message: str, at: int) -> ValueError:
        snippet = text[max(0, at - 15): at + 15].replace("\n", " ")
        return ValueError(f"malformed Newick at character {at}: {message} (near {snippet!r})")

    def new_child(parent: int) -> int:
        nodes[parent]["children"] += 1
        nodes.append({"parent": parent, "label": None, "length": None, "children": 0, "closed": False})
        return len(nodes) - 1

    ended = False
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "[":  # a comment
            close = text.find("]", i)
            if close < 0:
                raise fail("unterminated comment '['", i)
            i = close + 1
        elif ended:
            raise fail("text after the closing ';'", i)
        elif char == "(":
            node = nodes[current]
            if node["closed"] or node["label"] is not None or node["length"] is not None or node["children"]:
                raise fail("'(' after a node's label or length", i)
            current = new_child(current)
            i += 1
        elif char == ",":
            parent = nodes[current]["parent"]
            if parent is None:
                raise fail("',' outside parentheses", i)
            current = new_child(parent)
            i += 1
        elif char == ")":
            parent = nodes[current]["parent"]
            if parent is None:
                raise fail("')' without a matching '('", i)
            current = parent
            nodes[current]["closed"] = True
            i += 1
        elif char == ";":
            if nodes[current]["parent"] is not None:
                raise fail("';' before every '(' was closed", i)
            ended = True
            i += 1
        elif char == ":":
            node = nodes[current]
            if node["length"] is not None:
                raise fail("a second branch length", i)
            match = re.compile(r"\s*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)").match(text, i + 1)
            if match is None:
                raise fail("':' not followed by a number", i)
            node["length"] = float(match.group(1))
            i = match.end()
        else:
            node = nodes[current]
            if node["label"] is not None or node["length"] is not None:
                raise fail(f"unexpected {char!r} after a node's label or length", i)
            if char == "'":
                chars, j = [], i + 1
                while True:
                    if j >= n:
                        raise fail("unterminated quoted label", i)
                    if text[j] == "'":
                        if j + 1 < n and text[j + 1] == "'":
                            chars.append("'")
                            j += 2
                            continue
                        break
                    chars.append(text[j])
                    j += 1
                node["label"], i = "".join(chars), j + 1
            else:
                j = i
                while j < n and text[j] not in _NEWICK_SPECIAL:
                    j += 1
                node["label"], i = text[i:j], j
    if not ended:
        raise fail("a Newick tree must end with ';'", n)
    return [{key: node[key] for key in ("parent", "label", "length")} for node in nodes]
