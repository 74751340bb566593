"""DeepECT: the Deep Embedded Cluster Tree (Mautz, Plant & Böhm, Data Science and Engineering 2020).

DeepECT is not Bayesian. It is a deterministic autoencoder whose embedding is clustered by a
binary tree of centers that grows top-down while the embedding is trained. Its loss
``L = L_DC + L_NC + L_rec`` (Eq. 6) enters the shared SVI engine through ``pyro.factor`` with an
empty guide (as :mod:`pyro_hc.models.pretrain` does), so DeepECT trains in the same engine, on the
same :class:`~pyro_hc.tree.ClusterTree`, with the same metrics and checkpoints as the Bayesian
models. Equation numbers are the paper's.

Every node lives in a row of tensors preallocated for ``capacity = 2 * max_leaves - 1`` nodes and
indexed by the node's id in the tree (ids are the smallest free integers, so they stay below the
capacity): ``centers`` (a parameter; only leaf rows are used as such, split-node centers follow
from their children by Eq. 3) and ``weights`` (a buffer, Eq. 4). Assignment, both losses and the
weight update are tensor operations over all nodes at once, driven by index tensors rebuilt only
when the tree changes. Growing and pruning are engine callbacks
(:class:`~pyro_hc.heuristics.DeepECTHeuristics`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import pyro
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from sklearn.cluster import BisectingKMeans
from torch import nn

from ..estimator import ClusterEstimator, as_setting_tuple
from ..heuristics.deepect import DeepECTHeuristics
from ..infer import Callback, distributed, load_checkpoint
from ..nn import mlp
from ..tree import ClusterTree
from ._registry import register_model
from .networks import data_plate
from .pretrain import AutoencoderPretraining

__all__ = [
    "DeepECT", "DeepECTModule", "MLPEncoder", "MSEDecoder", "random_affine", "flat_nodes", "flat_assignments",
    "bisecting_kmeans_tree", "ACTIVATIONS",
]

#: activations the autoencoder can use (the paper: ReLU)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU,
                                           "tanh": nn.Tanh}

#: the node attribute holding the 1-based order in which a node was split
SPLIT_ATTR = "split"


# networks -----------------------------------------------------------------------------------


class MLPEncoder(nn.Module):
    """The feed-forward encoder ``enc``: ``D -> hidden_dims -> latent_dim`` (paper: D-500-500-2000-10)."""

    def __init__(self, n_features: int, hidden_dims: Sequence[int], latent_dim: int,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.net = mlp([n_features, *hidden_dims, latent_dim], activation=activation)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``enc(x)``, ``N x latent_dim`` (images are flattened)."""
        return self.net(x.reshape(x.shape[0], -1))

    forward = embed


class MSEDecoder(nn.Module):
    """The mirrored decoder ``dec``: ``latent_dim -> reversed(hidden_dims) -> D``, linear output."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], n_features: int,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.net = mlp([latent_dim, *hidden_dims, n_features], activation=activation)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """``dec(z)``, ``N x D``."""
        return self.net(z)

    forward = mean

    def reconstruction_loss(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``‖x − dec(z)‖²₂`` per datum; its batch mean is Eq. 1."""
        return (self.net(z) - x.reshape(x.shape[0], -1)).square().sum(-1)


# augmentation (Sec. 2.8 and 3.1) ----------------------------------------------------------------


def random_affine(
    images: torch.Tensor,
    degrees: float = 15.0,
    shear: float = 15.0,
    translate: float = 2.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random affine transform per image, batched on the images' device (no host round trip).

    Each image ``N x C x H x W`` gets its own parameters, drawn as
    ``torchvision.transforms.v2.RandomAffine(degrees, translate=(translate/W, translate/H),
    shear=shear)`` draws them: a rotation angle and an x-shear uniform in ``[-degrees, degrees]``
    and ``[-shear, shear]``, and a shift of ``round(U(-translate, translate))`` whole pixels along
    each axis. The warp is torchvision's ``affine`` (the same inverse matrix and sampling grid) with
    bilinear interpolation and zero fill, for all images in one ``grid_sample`` call; torchvision's
    own transform draws one parameter set per call, so it would give every image of a batch the
    same transform.
    """
    if images.dim() != 4:
        raise ValueError(f"random_affine needs images N x C x H x W, got shape {tuple(images.shape)}")
    n, dtype, device = images.shape[0], images.dtype, images.device

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, device=device, dtype=dtype) * 2 - 1) * bound

    angle = torch.deg2rad(uniform(degrees))
    shear_x = torch.deg2rad(uniform(shear))
    tx, ty = torch.round(uniform(translate)), torch.round(uniform(translate))
    return affine_images(images, angle, shear_x, tx, ty)


def affine_images(images: torch.Tensor, angle: torch.Tensor, shear_x: torch.Tensor, tx: torch.Tensor,
                  ty: torch.Tensor) -> torch.Tensor:
    """torchvision's ``affine(image, angle, [tx, ty], scale=1, shear=[shear_x, 0])`` per image.

    Angles in radians, one value per image. The inverse matrix is torchvision's
    ``_get_inverse_affine_matrix`` about the image center, vectorised over the batch.
    """
    n, _, height, width = images.shape
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear_x)
    a, c = cos, sin  # rotation-shear matrix [[a, b], [c, d]] (shear_y = 0)
    b = -(a * tan + sin)
    d = cos - c * tan
    m0, m1, m3, m4 = d, -b, -c, a  # its inverse (det = 1)
    theta = torch.stack([
        torch.stack([m0, m1, -(m0 * tx + m1 * ty)], -1),
        torch.stack([m3, m4, -(m3 * tx + m4 * ty)], -1),
    ], 1)  # N x 2 x 3
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=images.device, dtype=images.dtype)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=images.device,
                        dtype=images.dtype)
    base = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width),
                        torch.ones(height, width, device=images.device, dtype=images.dtype)], -1)
    grid = base.reshape(1, -1, 3) @ theta.transpose(1, 2)  # N x HW x 2, in pixels from the center
    grid = torch.stack([grid[..., 0] / (0.5 * width), grid[..., 1] / (0.5 * height)], -1)  # no host tensor
    return F.grid_sample(images, grid.reshape(n, height, width, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


# the module ---------------------------------------------------------------------------------


class DeepECTModule(PyroModule):
    """DeepECT's autoencoder, cluster tree and losses (Eqs. 1–9).

    Not a generative model: ``model`` scores a mini-batch ``B`` with the negative DeepECT loss
    through ``pyro.factor`` (the guide is empty)::

        z = enc(x)                                               # embedding
        a(x) = argmin_{n ∈ L} ‖μ_n − z‖                          # nearest leaf (Sec. 2.2)
        L_rec = 1/|B| Σ_x ‖x − dec(z)‖²                          # Eq. 1
        L_NC  = 1/|L| Σ_{n ∈ L} ‖μ_n − 1/|B_n| Σ_{x ∈ B_n} sg[z]‖   # Eq. 2 (centers only)
        L_DC  = 1/(|N||B|) Σ_{n ∈ N} Σ_{x ∈ B_n} |p_nᵀ(sg[μ_n] − z)|  # Eq. 5 (encoder only)
        L = L_DC + L_NC + L_rec                                   # Eq. 6

    with ``B_n`` the batch points in the subtree of ``n``, ``N`` the non-root nodes and
    ``p_n = sg[(μ_n − μ_m)/‖μ_n − μ_m‖]`` the unit vector from ``n``'s sibling ``m`` (Eq. 5).
    Split-node centers are ``μ_n = (w_l μ_l + w_r μ_r)/(w_l + w_r)`` (Eq. 3). With
    ``augment=True`` every batch also goes through :func:`random_affine` and the loss is Eq. 9:
    ``L_DCA`` (Eq. 7) adds the same projected term for ``enc(aug(x))``, ``L_NCA`` (Eq. 8) pulls
    each leaf to the mean of ``(enc(x) + enc(aug(x)))/2``, and ``L_recA`` reconstructs both the
    original and the augmented objects (the two Eq. 1 terms are added, as Eq. 7 adds its two
    terms). Points are assigned by their original image only.

    The factors are per datum inside the data plate (``L_rec`` and ``L_DC``) plus ``num_data *
    L_NC`` outside it, so the engine's loss is ``num_data * L`` and its per-datum history is ``L``.

    The node weights (Eq. 4) are not trained: ``model`` keeps the batch's leaf counts (a tensor
    on the device; a CUDA-graph replay refreshes it in place) and :meth:`update_weights`, called
    by the heuristics once after each optimiser step, applies the moving average.
    """

    def __init__(
        self,
        n_features: int,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 500, 2000),
        activation: str = "relu",
        max_leaves: int = 20,
        augment: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if max_leaves < 2:
            raise ValueError(f"max_leaves must be >= 2, got {max_leaves}")
        act = ACTIVATIONS[activation]
        self.encoder = MLPEncoder(n_features, hidden_dims, latent_dim, act)
        self.decoder = MSEDecoder(latent_dim, list(reversed(list(hidden_dims))), n_features, act)
        self.latent_dim = int(latent_dim)
        self.max_leaves = int(max_leaves)
        self.capacity = 2 * self.max_leaves - 1  # a binary tree with max_leaves leaves
        self.augment = bool(augment)
        self.centers = nn.Parameter(torch.zeros(self.capacity, self.latent_dim))
        self.register_buffer("weights", torch.zeros(self.capacity))
        self.tree = ClusterTree()  # a single root; the first growth step splits it (Sec. 2.6)
        self.tree.graph.graph["n_splits"] = 0
        self._tree_cache: dict[str, object] = {}
        self._tree_cache_key: tuple | None = None
        self._batch_leaf_counts: torch.Tensor | None = None

    # the tree's index tensors (rebuilt only when the tree changes) ------------------------------

    def _device(self) -> torch.device:
        return self.centers.device

    def _tree_cached(self, name: str, build):
        key = (id(self.tree), self.tree.version, str(self._device()))
        if self._tree_cache_key != key:
            self._tree_cache, self._tree_cache_key = {}, key
        if name not in self._tree_cache:
            self._tree_cache[name] = build()
        return self._tree_cache[name]

    def tree_index(self) -> dict[str, torch.Tensor]:
        """Index tensors of the current tree on the module's device.

        ``leaves`` (``K``, ``tree.leaves()`` order), ``leaf_paths``/``leaf_path_mask``
        (``K x (depth+1)``, root-to-leaf node ids), ``path_row``/``path_col``/``path_node`` (the
        real entries of ``leaf_paths`` as integer indices), ``active`` (``C`` bool), ``non_root``
        (``C`` bool: the set ``N`` of Eq. 5), ``sibling`` (``C``, a node's own id where it has
        none) and ``member`` (``C x K`` bool: leaf ``k`` lies in the subtree of node ``n``).
        """
        return self._tree_cached("index", self._build_index)

    def _build_index(self) -> dict[str, torch.Tensor]:
        tree, capacity, device = self.tree, self.capacity, self._device()
        nodes = tree.nodes()
        if nodes[-1] >= capacity:
            raise RuntimeError(f"node id {nodes[-1]} exceeds the preallocated capacity {capacity}")
        tensors = tree.to_tensors()
        active = torch.zeros(capacity, dtype=torch.bool)
        active[tensors.nodes] = True
        non_root = active.clone()
        non_root[tree.root] = False
        sibling = torch.arange(capacity)
        for parent in tree.internal_nodes():
            children = tree.children(parent)
            if len(children) != 2:
                raise RuntimeError(f"DeepECT's tree is binary, but node {parent} has children {children}")
            sibling[children[0]], sibling[children[1]] = children[1], children[0]
        member = torch.zeros(capacity, len(tensors.leaves), dtype=torch.bool)
        path_row, path_col = tensors.path_mask.nonzero(as_tuple=True)  # the real entries of the leaf paths
        path_node = tensors.paths[path_row, path_col]
        member[path_node, path_row] = True
        index = dict(leaves=tensors.leaves, leaf_paths=tensors.paths, leaf_path_mask=tensors.path_mask,
                     path_row=path_row, path_col=path_col, path_node=path_node, active=active,
                     non_root=non_root, sibling=sibling, member=member)
        return {k: v.to(device) for k, v in index.items()}

    # centers, assignment, weights ------------------------------------------------------------

    @torch.no_grad()
    def node_centers(self) -> torch.Tensor:
        """Every node's center, ``C x latent_dim`` (zero rows for unused ids), without gradient.

        Leaves: their parameter rows. Split nodes: Eq. 3 applied recursively, which unrolls to
        ``μ_n = Σ_{leaves l below n} μ_l Π_{m on the path n → l, n excluded} w_m / (w_m + w_sib(m))``;
        the products come from a reverse cumulative product along each root-to-leaf path, so all
        nodes are computed at once.
        """
        index = self.tree_index()
        paths, mask, sibling = index["leaf_paths"], index["leaf_path_mask"], index["sibling"]
        w = self.weights
        total = w + w[sibling]
        share = torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), torch.full_like(w, 0.5))
        factors = torch.where(mask, share[paths], torch.ones_like(share[paths]))  # K x (depth+1)
        suffix = factors.flip(1).cumprod(1).flip(1)  # Π_{i >= j}
        below = torch.cat([suffix[:, 1:], torch.ones_like(suffix[:, :1])], 1)  # Π_{i > j}: path j -> leaf
        leaf_centers = self.centers[index["leaves"]].detach()
        rows, cols = index["path_row"], index["path_col"]  # integer indices: no host sync on a GPU
        contributions = below[rows, cols].unsqueeze(-1) * leaf_centers[rows]
        return torch.zeros_like(self.centers).index_add_(0, index["path_node"], contributions)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``enc(x)``."""
        return self.encoder.embed(x)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Position (in ``tree.leaves()`` order) of each embedding's nearest leaf center (Sec. 2.2)."""
        leaf_centers = self.centers[self.tree_index()["leaves"]].detach()
        return (z.detach().unsqueeze(1) - leaf_centers).square().sum(-1).argmin(-1)

    @torch.no_grad()
    def update_weights(self) -> None:
        """Eq. 4, ``w_n <- 0.5 w_n + 0.5 |B_n|``, for every node, from the last batch ``model`` saw.

        Under ``torch.distributed`` each rank saw its share of the batch: the leaf counts are summed
        over the ranks (one small all-reduce), so ``|B_n|`` counts the whole batch and every rank
        holds the same weights, from which PRUNE decides.
        """
        counts = self._batch_leaf_counts
        if counts is None:
            return
        if distributed.is_distributed():
            counts = counts.clone()
            distributed.all_reduce_sum_(counts)
        index = self.tree_index()
        if counts.shape[0] != index["member"].shape[1]:
            raise RuntimeError("the tree changed between the batch and the weight update")
        node_counts = index["member"].to(counts.dtype) @ counts  # |B_n| of every node
        self.weights.copy_(torch.where(index["active"], 0.5 * self.weights + 0.5 * node_counts, self.weights))

    # the losses -------------------------------------------------------------------------------

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The DeepECT loss of a batch, term by term.

        Returns ``rec`` and ``dc`` per datum (``B``; their batch means are ``L_rec`` and ``L_DC``,
        or ``L_recA`` and ``L_DCA`` with augmentation), ``nc`` (the scalar ``L_NC`` / ``L_NCA``),
        ``leaf`` (each datum's leaf position) and ``leaf_counts`` (``K``).
        """
        x_flat = x.reshape(x.shape[0], -1)
        z = self.encoder.embed(x_flat)
        rec = self.decoder.reconstruction_loss(z, x_flat)  # Eq. 1, per datum
        views = [z]
        if self.augment:
            x_aug = random_affine(x).detach()  # sg[aug(x)] (Eq. 7)
            z_aug = self.encoder.embed(x_aug)
            rec = rec + self.decoder.reconstruction_loss(z_aug, x_aug)  # L_recA (Eq. 9)
            views.append(z_aug)
        index = self.tree_index()
        leaves = index["leaves"]
        leaf = self.assign(z)  # by the original object only
        one_hot = (leaf.unsqueeze(-1) == torch.arange(leaves.shape[0], device=z.device)).to(z.dtype)  # B x K
        counts = one_hot.sum(0)

        # Eq. 2 / Eq. 8: each leaf center towards sg[mean of its points' embeddings]
        z_mean = (sum(views) / len(views)).detach()
        batch_means = (one_hot.T @ z_mean) / counts.clamp_min(1).unsqueeze(-1)
        distance = torch.linalg.vector_norm(self.centers[leaves] - batch_means, dim=-1)
        nc = torch.where(counts > 0, distance, torch.zeros_like(distance)).sum() / leaves.shape[0]

        # Eq. 5 / Eq. 7: projected compression against the sibling, every non-root node at once
        non_root = index["non_root"]
        n_compressed = len(self.tree) - 1  # |N|
        if n_compressed > 0:
            mu = self.node_centers()  # sg[μ_n]
            direction = mu - mu[index["sibling"]]
            p = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp_min(1e-12)  # sg[p_n]
            in_node = index["member"].T[leaf] & non_root  # B x C: x ∈ B_n
            offset = (mu * p).sum(-1)  # p_nᵀ μ_n
            dc = sum((in_node * (offset - v @ p.T).abs()).sum(-1) for v in views) / n_compressed
        else:
            dc = torch.zeros_like(rec)
        return {"rec": rec, "dc": dc, "nc": nc, "leaf": leaf, "leaf_counts": counts}

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        terms = self.loss_terms(x)
        self._batch_leaf_counts = terms["leaf_counts"].detach()
        scale = x.shape[0] if index is None else int(num_data if num_data is not None else x.shape[0])
        with data_plate(x, index, num_data):
            pyro.factor("reconstruction", -terms["rec"])  # Eq. 1 (Eq. 9: L_recA)
            pyro.factor("compression", -terms["dc"])  # Eq. 5 (Eq. 7)
        pyro.factor("node_centers", -scale * terms["nc"])  # Eq. 2 (Eq. 8), scaled like the plate

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """Empty: DeepECT has no latent random variables."""

    # structural edits (called by pyro_hc.heuristics.DeepECTHeuristics) --------------------------

    @torch.no_grad()
    def split(self, leaf: int, child_centers: torch.Tensor, child_weights: torch.Tensor) -> list[int]:
        """Give ``leaf`` two children with the given centers and weights; returns their ids.

        ``leaf`` becomes a split node (its center follows Eq. 3 from now on) and records its
        split order in the node attribute ``"split"``.
        """
        if not self.tree.is_leaf(leaf):
            raise ValueError(f"node {leaf} is not a leaf; DeepECT splits leaves")
        if len(self.tree) + 2 > self.capacity:
            raise RuntimeError(f"splitting node {leaf} would exceed the capacity of {self.capacity} nodes")
        graph = self.tree.graph
        graph.graph["n_splits"] = int(graph.graph.get("n_splits", 0)) + 1
        graph.nodes[leaf][SPLIT_ATTR] = graph.graph["n_splits"]
        children = [self.tree.add_child(leaf), self.tree.add_child(leaf)]
        rows = torch.as_tensor(children, device=self._device())
        self.centers[rows] = child_centers.to(self.centers)
        self.weights[rows] = child_weights.to(self.weights)
        return children

    @torch.no_grad()
    def prune(self, node: int) -> tuple[list[int], int]:
        """Remove ``node`` (and its subtree); its sibling takes the parent's place (Sec. 2.7).

        Returns the removed ids (the subtree, then the parent) and the sibling's id.
        """
        tree = self.tree
        parent = tree.parent(node)
        if parent is None:
            raise ValueError("the root cannot be pruned")
        (sibling,) = [c for c in tree.children(parent) if c != node]
        removed = []
        for descendant in reversed(tree.subtree(node)):  # children before their parents
            removed += tree.remove_leaf(descendant)
        tree.replace_with_child(parent)
        removed.append(parent)
        rows = torch.as_tensor(removed, device=self._device())
        self.weights[rows] = 0.0
        self.centers[rows] = 0.0
        return removed, sibling

    def dead_nodes(self, threshold: float) -> list[int]:
        """Non-root nodes whose weight is below ``threshold``, shallowest first (one host sync)."""
        index = self.tree_index()
        dead = torch.nonzero(index["non_root"] & (self.weights < threshold)).flatten().tolist()
        return sorted(dead, key=self.tree.level)


# flat clusterings and the bisecting k-means baseline -------------------------------------------


def flat_nodes(tree: ClusterTree, n_clusters: int) -> list[int]:
    """The ``n_clusters`` nodes that were leaves after the tree's first ``n_clusters − 1`` splits.

    This is the paper's rule for a flat partition (Sec. 3.2). Split nodes carry their split order
    in the node attribute ``"split"``; a parent is always split before its children, so the first
    ``k − 1`` live split nodes form a subtree at the root and their ``k`` children outside it are
    the clusters. Returned in the tree's preorder.
    """
    n_clusters = int(n_clusters)
    internal = tree.internal_nodes()
    missing = [n for n in internal if SPLIT_ATTR not in tree.graph.nodes[n]]
    if missing:
        raise ValueError(f"split nodes {missing[:5]} have no {SPLIT_ATTR!r} order attribute")
    if not 1 <= n_clusters <= len(internal) + 1:
        raise ValueError(f"n_clusters must lie in [1, {len(internal) + 1}] for a tree with "
                         f"{len(tree.leaves())} leaves, got {n_clusters}")
    if n_clusters == 1:
        return [tree.root]
    chosen = set(sorted(internal, key=lambda n: tree.graph.nodes[n][SPLIT_ATTR])[: n_clusters - 1])
    order = {node: i for i, node in enumerate(tree.subtree(tree.root))}
    frontier = [c for n in chosen for c in tree.children(n) if c not in chosen]
    return sorted(frontier, key=order.__getitem__)


def flat_assignments(tree: ClusterTree, leaf_assignments, n_clusters: int) -> np.ndarray:
    """Map leaf assignments (node ids) to the :func:`flat_nodes` ancestor of each leaf."""
    lookup = {}
    for node in flat_nodes(tree, n_clusters):
        for leaf in tree.subtree_leaves(node):
            lookup[leaf] = node
    leaf_assignments = np.asarray(leaf_assignments)
    ids, inverse = np.unique(leaf_assignments, return_inverse=True)
    return np.array([lookup[int(i)] for i in ids], dtype=np.int64)[inverse.reshape(-1)]


def bisecting_kmeans_tree(embedding, n_leaves: int, seed: int | None = 0,
                          n_init: int = 1) -> tuple[ClusterTree, np.ndarray]:
    """Bisecting k-means (scikit-learn, splitting the cluster with the largest SSE) as a ClusterTree.

    Returns the tree, whose split nodes carry their split order (``"split"``, so
    :func:`flat_nodes` applies), and each point's leaf node id. scikit-learn keeps its bisection
    history in the private ``_bisecting_tree``; with ``bisecting_strategy="biggest_inertia"`` it
    always splits the current leaf with the largest score, so replaying "split the frontier node
    with the largest score" recovers the split order.
    """
    embedding = np.asarray(embedding, dtype=np.float64)
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


# the estimator ------------------------------------------------------------------------------


@register_model("deepect")
class DeepECT(ClusterEstimator):
    """DeepECT, and DeepECT + Aug with ``augment=True`` (Mautz, Plant & Böhm 2020).

    The recipe:

    1. Pretrain the autoencoder as a denoising autoencoder (``corruption``: fraction of input
       features zeroed, paper 20%) with the MSE reconstruction loss (Eq. 1). The paper pretrains
       layer-wise with dropout and then fine-tunes end to end; here it is trained end to end only
       (:class:`~pyro_hc.models.pretrain.AutoencoderPretraining`).
    2. Start from a single root. The first growth step (before the first optimisation step)
       splits it into two leaves by 2-means on the pretrained embedding.
    3. Minimise ``L = L_DC + L_NC + L_rec`` (Eq. 6; Eq. 9 with ``augment``) with Adam. After every
       step the node weights follow Eq. 4; every ``grow_interval`` steps the leaf with the largest
       sum of squared distances to its points (on ``grow_sample`` points of the data) is split
       by 2-means, until ``max_leaves``; nodes whose weight falls below ``prune_threshold`` are
       pruned (:class:`~pyro_hc.heuristics.DeepECTHeuristics`). Both moves are logged in the
       tree's event log.

    Parameters
    ----------
    max_leaves, grow_interval, prune_threshold:
        Growth stops at ``max_leaves`` leaves (paper: 20); a split every ``grow_interval``
        optimisation steps (paper: 500); pruning below weight ``prune_threshold`` (paper: 0.1).
    augment:
        DeepECT + Aug: each batch also through :func:`random_affine` (rotation and shear in
        ±15°, shifts up to 2 pixels); needs image data ``N x C x H x W``.
    latent_dim, hidden_dims, activation:
        Encoder ``D-hidden_dims-latent_dim`` with ``activation``, decoder mirrored
        (paper: D-500-500-2000-10, ReLU).
    epochs, batch_size, lr:
        Main phase. The paper trains 50,000 steps of 256 (183 epochs of the 70,000 MNIST digits)
        with Adam at lr 1e-4 (β = 0.9, 0.999) in every phase. ``grow_interval`` counts steps, so
        ``max_leaves`` is reached after ``(max_leaves − 2) * grow_interval`` steps.
    pretrain_epochs, pretrain_lr, corruption:
        Pretraining budget (0 skips it), learning rate and input corruption.
    grow_sample:
        Points (a fixed random subset of the training data) embedded to choose and split a leaf;
        None uses all of them. The paper allows "the dataset (or a representative sub-sample)".
    prune_check_every:
        Steps between the checks for dead nodes (each check reads the weights back to the host).
        The paper checks after every step; a node with no points halves its weight each step, so
        a check every few steps only delays its removal by as many steps.
    pretrained:
        Path of a saved DeepECT (``model.save``) whose autoencoder this one starts from, skipping
        pretraining: the paper runs every method from the same pretrained autoencoders. Fit a
        DeepECT with ``epochs=0`` and save it to make one.
    """

    def __init__(
        self,
        max_leaves: int = 20,
        grow_interval: int = 500,
        prune_threshold: float = 0.1,
        augment: bool = False,
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 500, 2000),
        activation: str = "relu",
        epochs: int = 183,
        batch_size: int = 256,
        lr: float = 1e-4,
        pretrain_epochs: int = 183,
        pretrain_lr: float = 1e-4,
        corruption: float = 0.2,
        grow_sample: int | None = 10_000,
        prune_check_every: int = 10,
        pretrained: str | None = None,
    ) -> None:
        self.max_leaves = max_leaves
        self.grow_interval = grow_interval
        self.prune_threshold = prune_threshold
        self.augment = augment
        self.latent_dim = latent_dim
        self.hidden_dims = as_setting_tuple(hidden_dims)
        self.activation = activation
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.corruption = corruption
        self.grow_sample = grow_sample
        self.prune_check_every = prune_check_every
        self.pretrained = pretrained

    # fitting --------------------------------------------------------------------------------

    @staticmethod
    def epochs_for_steps(steps: int, n: int, batch_size: int) -> int:
        """Epochs of ``n`` points in batches of ``batch_size`` that make at least ``steps`` steps."""
        return math.ceil(steps / math.ceil(n / batch_size)) if steps > 0 else 0

    def _likelihood_for(self, data) -> str:
        return "gaussian"  # MSE reconstruction (Eq. 1): any finite data

    def _check_config(self, x: torch.Tensor) -> None:
        if self.max_leaves < 2:
            raise ValueError(f"max_leaves must be >= 2, got {self.max_leaves}")
        if self.max_leaves > x.shape[0]:
            raise ValueError(f"max_leaves={self.max_leaves} exceeds the number of data points ({x.shape[0]})")
        if self.grow_interval < 1 or self.prune_check_every < 1:
            raise ValueError("grow_interval and prune_check_every must be >= 1")
        if self.prune_threshold < 0:
            raise ValueError(f"prune_threshold must be >= 0, got {self.prune_threshold}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.corruption < 1.0:
            raise ValueError(f"corruption must lie in [0, 1), got {self.corruption}")
        if self.augment and x.dim() != 4:
            raise ValueError("augment=True needs images N x C x H x W (a pyro_hc image Dataset); "
                             f"got data of shape {tuple(x.shape)}")
        if self.grow_sample is not None and self.grow_sample < 2:
            raise ValueError(f"grow_sample must be >= 2 or None, got {self.grow_sample}")
        if self.pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        if self.pretrained is not None and not os.path.isfile(self.pretrained):
            raise FileNotFoundError(f"pretrained={self.pretrained!r}: no such model file")

    def _build_module(self) -> DeepECTModule:
        return DeepECTModule(self.data_spec_.n_features, self.latent_dim, self.hidden_dims, self.activation,
                             self.max_leaves, self.augment)

    def heuristics(self, data: torch.Tensor, seed: int | None = None) -> DeepECTHeuristics:
        """The growth and pruning callback configured like this model, choosing splits on ``data``."""
        return DeepECTHeuristics(data, grow_interval=self.grow_interval, max_leaves=self.max_leaves,
                                 prune_threshold=self.prune_threshold, prune_check_every=self.prune_check_every,
                                 seed=seed)

    def _fit(self, x, *, epochs, batch_size, seed, progress, callbacks: Sequence[Callback]) -> None:
        module = self.module_
        if self.pretrained is not None:
            self._load_autoencoder(self.pretrained)
        elif self.pretrain_epochs > 0:
            autoencoder = AutoencoderPretraining(module.encoder, module.decoder, corruption=self.corruption)
            self._run(autoencoder, x, phase="pretrain", epochs=self.pretrain_epochs, batch_size=batch_size,
                      seed=seed, progress=progress, lr=self.pretrain_lr)
        with torch.no_grad():
            module.weights[module.tree.root] = float(min(batch_size, x.shape[0]))  # |B| reaches the root
        sample = x
        if self.grow_sample is not None and self.grow_sample < x.shape[0]:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
            keep = torch.randperm(x.shape[0], generator=generator)[: self.grow_sample]
            sample = x[keep.to(x.device)]
        self._run(module, x, phase="train", epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                  callbacks=(self.heuristics(sample, seed), *callbacks), lr=self.lr)
        if len(module.tree.leaves()) < 2 and epochs > 0:
            warnings.warn("DeepECT ended with a single leaf (every split was pruned)", RuntimeWarning, stacklevel=2)

    def _load_autoencoder(self, path: str) -> None:
        """Copy the encoder and decoder of a saved DeepECT into this model's module."""
        payload = load_checkpoint(path, map_location=self.device_)
        if payload.get("model") != self.name:
            raise ValueError(f"{path} holds a {payload.get('model')!r} model, not a DeepECT")
        if int(payload["data_spec"]["n_features"]) != self.data_spec_.n_features:
            raise ValueError(f"{path} was fitted on {payload['data_spec']['n_features']} features, "
                             f"these data have {self.data_spec_.n_features}")
        networks = {k: v for k, v in payload["module"].items() if k.startswith(("encoder.", "decoder."))}
        own = {k for k in self.module_.state_dict() if k.startswith(("encoder.", "decoder."))}
        if set(networks) != own or any(v.shape != self.module_.state_dict()[k].shape for k, v in networks.items()):
            raise ValueError(f"the autoencoder in {path} does not match latent_dim={self.latent_dim}, "
                             f"hidden_dims={self.hidden_dims}")
        self.module_.load_state_dict(networks, strict=False)

    # fitted state ---------------------------------------------------------------------------

    def _leaf_log_proba(self, x: torch.Tensor) -> torch.Tensor:
        """DeepECT's assignment is hard: log 1 for the nearest leaf, log 0 elsewhere."""
        module = self.module_
        leaf = module.assign(module.encoder.embed(x))
        n_leaves = module.tree_index()["leaves"].shape[0]
        return torch.full((x.shape[0], n_leaves), float("-inf"), device=x.device).scatter_(1, leaf[:, None], 0.0)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_.encoder.embed(x)

    def predict(self, data, n_clusters: int | None = None) -> torch.Tensor:
        """Each datum's node id: its nearest leaf, or with ``n_clusters=k`` the node among the ``k``
        that were leaves after the first ``k − 1`` splits (the paper's flat clustering)."""
        leaves = super().predict(data)
        if n_clusters is None:
            return leaves
        return torch.as_tensor(flat_assignments(self.tree, leaves.numpy(), n_clusters))

    def flat_nodes(self, n_clusters: int) -> list[int]:
        """The ``n_clusters`` nodes of the paper's flat clustering (:func:`flat_nodes`)."""
        self._check_fitted()
        return flat_nodes(self.tree, n_clusters)

    def node_centers(self) -> tuple[list[int], torch.Tensor]:
        """Node ids (``tree.nodes()``) and their centers in the embedding (Eq. 3 for split nodes), on the CPU."""
        self._check_fitted()
        nodes = self.tree.nodes()
        return nodes, self.module_.node_centers()[torch.as_tensor(nodes, device=self.device_)].cpu()
