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
from torch import nn

from ..estimator import ClusterEstimator, as_setting_tuple
from ..heuristics.deepect import DeepECTHeuristics
from ..infer import Callback, distributed, load_checkpoint
from ..baselines import SPLIT_ATTR
from ..nn import BatchAugment, MLPEncoder, MSEDecoder
from ..tree import ClusterTree
from ._plate import data_plate
from ._registry import register_model
from .pretrain import AutoencoderPretraining

__all__ = [
    "DeepECT", "DeepECTModule", "LayerwisePretraining", "flat_nodes", "flat_assignments", "ACTIVATIONS",
    "RECONSTRUCTIONS", "auto_grow_interval",
]

#: how the squared reconstruction error of a datum is reduced over its features (see :class:`DeepECT`)
RECONSTRUCTIONS = ("mean", "sum")

#: activations the autoencoder can use (the paper: ReLU)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU,
                                           "tanh": nn.Tanh}

# the module ---------------------------------------------------------------------------------


class DeepECTModule(PyroModule):
    """DeepECT's autoencoder, cluster tree and losses (Eqs. 1–9).

    Not a generative model: ``model`` scores a mini-batch ``B`` with the negative DeepECT loss
    through ``pyro.factor`` (the guide is empty)::

        z = enc(x)                                               # embedding
        a(x) = argmin_{n ∈ L} ‖μ_n − z‖                          # nearest leaf (Sec. 2.2)
        L_rec = 1/|B| Σ_x ‖x − dec(z)‖²  (/ D with "mean")        # Eq. 1
        L_NC  = 1/|L| Σ_{n ∈ L} ‖μ_n − 1/|B_n| Σ_{x ∈ B_n} sg[z]‖   # Eq. 2 (centers only)
        L_DC  = 1/(|N||B|) Σ_{n ∈ N} Σ_{x ∈ B_n} |p_nᵀ(sg[μ_n] − z)|  # Eq. 5 (encoder only)
        L = L_DC + L_NC + L_rec                                   # Eq. 6

    with ``B_n`` the batch points in the subtree of ``n``, ``N`` the non-root nodes and
    ``p_n = sg[(μ_n − μ_m)/‖μ_n − μ_m‖]`` the unit vector from ``n``'s sibling ``m`` (Eq. 5).
    Split-node centers are ``μ_n = (w_l μ_l + w_r μ_r)/(w_l + w_r)`` (Eq. 3). With
    ``augment=True`` every batch also goes through :class:`~pyro_hc.nn.BatchAugment` ``("affine")``
    (:func:`~pyro_hc.nn.random_affine`) and the loss is Eq. 9:
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
        reconstruction: str = "sum",
    ) -> None:
        super().__init__()
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"unknown reconstruction {reconstruction!r}; choose one of {RECONSTRUCTIONS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if max_leaves < 2:
            raise ValueError(f"max_leaves must be >= 2, got {max_leaves}")
        act = ACTIVATIONS[activation]
        self.encoder = MLPEncoder(n_features, hidden_dims, latent_dim, act)
        self.decoder = MSEDecoder(latent_dim, list(reversed(list(hidden_dims))), n_features, act,
                                  reduction=reconstruction)
        self.reconstruction = reconstruction
        self.latent_dim = int(latent_dim)
        self.max_leaves = int(max_leaves)
        self.capacity = 2 * self.max_leaves - 1  # a binary tree with max_leaves leaves
        self.augment = bool(augment)
        self.augmentation = BatchAugment("affine" if self.augment else "none")  # Sec. 2.8
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
            x_aug = self.augmentation(x).detach()  # sg[aug(x)] (Eq. 7)
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


class LayerwisePretraining(PyroModule):
    """Greedy layer-wise denoising pretraining of one encoder/decoder layer pair (Sec. 3.1).

    The paper pretrains "layer-wise with dropout after each layer (with a rate of 20%)", as DEC does
    (Xie et al. 2016, Sec. 3.2, the setup the paper cites): pair ``i`` is the encoder's ``i``-th
    linear layer (with its activation) and the decoder layer that mirrors it (with its activation,
    none for the output layer), trained as a one-hidden-layer denoising autoencoder on ``h_i``, the
    output of the encoder's frozen lower layers::

        h̃ = dropout(h_i);  y = dropout(act(W_enc h̃ + b));  L = ‖h_i − act'(W_dec y + b')‖²  (/ D_i with "mean")

    Only the pair's two linear layers are this module's parameters (the lower layers are held
    outside the module tree, so the optimiser never sees them). The loss enters the engine through
    ``pyro.factor`` with an empty guide, as :class:`~pyro_hc.models.pretrain.AutoencoderPretraining` does.
    """

    def __init__(self, encoder: MLPEncoder, decoder: MSEDecoder, layer: int, dropout: float = 0.2,
                 reconstruction: str = "mean") -> None:
        super().__init__()
        encoder_layers = [m for m in encoder.net if isinstance(m, nn.Linear)]
        n_layers = len(encoder_layers)
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer must lie in [0, {n_layers}), got {layer}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"unknown reconstruction {reconstruction!r}; choose one of {RECONSTRUCTIONS}")
        mirror = n_layers - 1 - layer
        self.encoder_layer = encoder.net[2 * layer]
        self.encoder_activation = encoder.net[2 * layer + 1] if layer < n_layers - 1 else nn.Identity()
        self.decoder_layer = decoder.net[2 * mirror]
        self.decoder_activation = decoder.net[2 * mirror + 1] if mirror < n_layers - 1 else nn.Identity()
        self._frozen = (encoder.net[: 2 * layer],)  # a tuple: not a submodule, so not trained here
        self.dropout = float(dropout)
        self.reconstruction = reconstruction

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        with torch.no_grad():
            target = self._frozen[0](x.reshape(x.shape[0], -1))
        hidden = self.encoder_activation(self.encoder_layer(F.dropout(target, self.dropout, self.training)))
        output = self.decoder_activation(self.decoder_layer(F.dropout(hidden, self.dropout, self.training)))
        squared = (output - target).square()
        loss = squared.mean(-1) if self.reconstruction == "mean" else squared.sum(-1)
        with data_plate(x, index, num_data):
            pyro.factor("reconstruction", -loss)

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """Empty: the autoencoder has no latent random variables."""


def auto_grow_interval(total_steps: int, max_leaves: int, paper_interval: int = 500) -> int:
    """Steps between splits so that the tree reaches ``max_leaves`` by half of ``total_steps``.

    The paper splits every 500 steps of a 50,000-step run (Sec. 3.1), so its 20 leaves are in place
    after 9,000 steps; on a small data set the same 500 steps can exceed the whole run. Here the
    ``max_leaves − 2`` splits after the first one are spread over the first half of the training
    budget, and never more than ``paper_interval`` apart: on MNIST's paper budget this is the
    paper's 500, on the 1,797 ``digits`` at 150 epochs (1,200 steps) it is 33 steps (4.1 epochs;
    ClustPy splits every 2 epochs of 200).
    """
    splits = max(int(max_leaves) - 2, 1)
    return max(1, min(int(paper_interval), (int(total_steps) // 2) // splits))


# flat clusterings (the bisecting k-means baseline is in pyro_hc.baselines) -------------------------------------------


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


# the estimator ------------------------------------------------------------------------------


@register_model("deepect")
class DeepECT(ClusterEstimator):
    """DeepECT, and DeepECT + Aug with ``augment=True`` (Mautz, Plant & Böhm 2020).

    The recipe:

    1. Pretrain the autoencoder as a denoising autoencoder (``corruption``: fraction of input
       features zeroed, paper 20%) with the squared reconstruction error (Eq. 1): optionally first
       layer by layer with dropout (``layerwise_pretrain_epochs`` per layer,
       :class:`LayerwisePretraining`, the paper's 20,000 steps per layer), then end to end for
       ``pretrain_epochs`` (:class:`~pyro_hc.models.pretrain.AutoencoderPretraining`).
    2. Start from a single root. The first growth step (before the first optimisation step)
       splits it into two leaves by 2-means on the pretrained embedding.
    3. Minimise ``L = L_DC + L_NC + L_rec`` (Eq. 6; Eq. 9 with ``augment``) with Adam. After every
       step the node weights follow Eq. 4; every ``grow_interval`` steps the leaf with the largest
       sum of squared distances to its points (on ``grow_sample`` points of the data) is split
       by 2-means, until ``max_leaves``; nodes whose weight falls below ``prune_threshold`` are
       pruned (:class:`~pyro_hc.heuristics.DeepECTHeuristics`). Both moves are logged in the
       tree's event log.

    Defaults and the paper. The defaults are sized to work on any data size, from the 1,797
    ``digits`` to MNIST: the split schedule follows the training budget (:func:`auto_grow_interval`:
    all splits within the first half of the steps, at most the paper's 500 steps apart) and the
    budgets are in epochs. The paper's own recipe (50,000 steps of batch 256 in every phase, a split
    every 500 steps, lr 1e-4, layer-wise pretraining) is an entry of ``benchmarks/reproduce.py``.

    Parameters
    ----------
    max_leaves, grow_interval, prune_threshold:
        Growth stops at ``max_leaves`` leaves (paper: 20); a split every ``grow_interval``
        optimisation steps (paper: 500; None: :func:`auto_grow_interval` of this fit's budget);
        pruning below weight ``prune_threshold`` (paper: 0.1; a weight counts batch points, so the
        threshold does not depend on the data size).
    augment:
        DeepECT + Aug: each batch also through :class:`~pyro_hc.nn.BatchAugment` ``("affine")``
        (rotation and shear in ±15°, shifts up to 2 pixels); needs image data ``N x C x H x W``.
    reconstruction:
        ``"sum"``: the squared error summed over the features (Eq. 1 read literally, so ``L_rec``
        weighs ``D`` times more against ``L_DC + L_NC``); ``"mean"``: averaged over them
        (``torch.nn.MSELoss``, as the authors' scripts and ClustPy train). Both pretraining and the
        main phase. The default is the one that measured better on ``digits`` (seed 0, one CPU
        thread): at 50 + 100 epochs "sum" gave DP 0.728 / ACC@10 0.752, "mean" DP 0.645 / 0.695; at
        the default 60 + 150 epochs "sum" DP 0.736 / 0.795, "mean" DP 0.701 / 0.736. On USPS at the
        paper's schedule, both main phases from one autoencoder pretrained on the mean
        (``benchmarks/reproduce.py``, seed 0): "sum" DP 0.721 / ACC 0.675 (paper 0.72 / 0.71), "mean"
        0.566 / 0.501; on MNIST at the paper's schedule, each weighting with its own autoencoder
        (seed 0): "sum" DP 0.814 / LP 0.928 / NMI 0.816 / ACC 0.851 (paper 0.82 / 0.93 / 0.83 /
        0.85), "mean" 0.796 / 0.918 / 0.819 / 0.835; DeepECT + Aug from the same autoencoders:
        "sum" DP 0.933 / LP 0.972 / NMI 0.928 / ACC 0.972 (paper 0.94 / – / 0.93 / 0.95), "mean"
        0.870 / 0.962 / 0.868 / 0.866; on USPS "sum" DP 0.889 / LP 0.941 / NMI 0.837 / ACC 0.795
        (paper ACC 0.82), "mean" 0.867 / 0.934 / 0.800 / 0.693: "sum" ahead in all four pairs.
    latent_dim, hidden_dims, activation:
        Encoder ``D-hidden_dims-latent_dim`` with ``activation``, decoder mirrored
        (paper: D-500-500-2000-10, ReLU).
    epochs, batch_size, lr:
        Main phase, with Adam at ``lr`` (paper: 50,000 steps of 256, i.e. 183 epochs of the 70,000
        MNIST digits, at lr 1e-4, β = 0.9, 0.999; ClustPy: 200 epochs). The default 150 epochs are
        41,000 steps on MNIST and 1,200 on ``digits``.
    pretrain_epochs, pretrain_lr, corruption:
        End-to-end pretraining budget (0 skips it), learning rate (paper 1e-4 for 50,000 steps;
        ClustPy 1e-3 for 50 epochs; the default 60 epochs at 1e-3) and input corruption.
    layerwise_pretrain_epochs, pretrain_dropout:
        Epochs of layer-wise pretraining per layer pair before the end-to-end phase (0: none) and its
        dropout rate (paper: 20%).
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
        grow_interval: int | None = None,
        prune_threshold: float = 0.1,
        augment: bool = False,
        reconstruction: str = "sum",
        latent_dim: int = 10,
        hidden_dims: Sequence[int] = (500, 500, 2000),
        activation: str = "relu",
        epochs: int = 150,
        batch_size: int = 256,
        lr: float = 1e-4,
        pretrain_epochs: int = 60,
        pretrain_lr: float = 1e-3,
        corruption: float = 0.2,
        layerwise_pretrain_epochs: int = 0,
        pretrain_dropout: float = 0.2,
        grow_sample: int | None = 10_000,
        prune_check_every: int = 10,
        pretrained: str | None = None,
    ) -> None:
        self.max_leaves = max_leaves
        self.grow_interval = grow_interval
        self.prune_threshold = prune_threshold
        self.augment = augment
        self.reconstruction = reconstruction
        self.latent_dim = latent_dim
        self.hidden_dims = as_setting_tuple(hidden_dims)
        self.activation = activation
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_lr = pretrain_lr
        self.corruption = corruption
        self.layerwise_pretrain_epochs = layerwise_pretrain_epochs
        self.pretrain_dropout = pretrain_dropout
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
        if (self.grow_interval is not None and self.grow_interval < 1) or self.prune_check_every < 1:
            raise ValueError("grow_interval (or None) and prune_check_every must be >= 1")
        if self.prune_threshold < 0:
            raise ValueError(f"prune_threshold must be >= 0, got {self.prune_threshold}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"unknown reconstruction {self.reconstruction!r}; choose one of {RECONSTRUCTIONS}")
        if not 0.0 <= self.corruption < 1.0:
            raise ValueError(f"corruption must lie in [0, 1), got {self.corruption}")
        if not 0.0 <= self.pretrain_dropout < 1.0:
            raise ValueError(f"pretrain_dropout must lie in [0, 1), got {self.pretrain_dropout}")
        if self.augment and x.dim() != 4:
            raise ValueError("augment=True needs images N x C x H x W (a pyro_hc image Dataset); "
                             f"got data of shape {tuple(x.shape)}")
        if self.grow_sample is not None and self.grow_sample < 2:
            raise ValueError(f"grow_sample must be >= 2 or None, got {self.grow_sample}")
        if self.pretrain_epochs < 0 or self.layerwise_pretrain_epochs < 0:
            raise ValueError("pretrain_epochs and layerwise_pretrain_epochs must be >= 0, got "
                             f"{self.pretrain_epochs} and {self.layerwise_pretrain_epochs}")
        if self.pretrained is not None and not os.path.isfile(self.pretrained):
            raise FileNotFoundError(f"pretrained={self.pretrained!r}: no such model file")

    def _build_module(self) -> DeepECTModule:
        return DeepECTModule(self.data_spec_.n_features, self.latent_dim, self.hidden_dims, self.activation,
                             self.max_leaves, self.augment, self.reconstruction)

    def resolved_grow_interval(self, n: int, epochs: int, batch_size: int) -> int:
        """``grow_interval``, or with None :func:`auto_grow_interval` of ``epochs`` over ``n`` points."""
        if self.grow_interval is not None:
            return int(self.grow_interval)
        return auto_grow_interval(epochs * math.ceil(n / batch_size), self.max_leaves)

    def heuristics(self, data: torch.Tensor, seed: int | None = None, grow_interval: int | None = None
                   ) -> DeepECTHeuristics:
        """The growth and pruning callback configured like this model, choosing splits on ``data``.

        ``grow_interval`` overrides the configured one (``fit`` passes the resolved interval).
        """
        if grow_interval is None:
            grow_interval = 500 if self.grow_interval is None else self.grow_interval
        return DeepECTHeuristics(data, grow_interval=grow_interval, max_leaves=self.max_leaves,
                                 prune_threshold=self.prune_threshold, prune_check_every=self.prune_check_every,
                                 seed=seed)

    def _fit(self, x, *, epochs, batch_size, seed, progress, callbacks: Sequence[Callback]) -> None:
        module = self.module_
        if self.pretrained is not None:
            self._load_autoencoder(self.pretrained)
        else:
            if self.layerwise_pretrain_epochs > 0:
                for layer in range(len(self.hidden_dims) + 1):
                    pair = LayerwisePretraining(module.encoder, module.decoder, layer, dropout=self.pretrain_dropout,
                                                reconstruction=self.reconstruction)
                    self._run(pair, x, phase=f"pretrain_layer{layer}", epochs=self.layerwise_pretrain_epochs,
                              batch_size=batch_size, seed=seed, progress=progress, lr=self.pretrain_lr)
            if self.pretrain_epochs > 0:
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
        #: the split interval this fit used (steps; ``grow_interval`` or :func:`auto_grow_interval`)
        self.grow_interval_ = self.resolved_grow_interval(x.shape[0], epochs, batch_size)
        self._run(module, x, phase="train", epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                  callbacks=(self.heuristics(sample, seed, self.grow_interval_), *callbacks), lr=self.lr)
        n_leaves, steps = len(module.tree.leaves()), epochs * math.ceil(x.shape[0] / batch_size)
        if n_leaves < 2 and epochs > 0:
            warnings.warn("DeepECT ended with a single leaf (every split was pruned)", RuntimeWarning, stacklevel=2)
        elif epochs > 0 and n_leaves < self.max_leaves and 1 + steps // self.grow_interval_ < self.max_leaves - 1:
            warnings.warn(f"DeepECT grew {n_leaves} of max_leaves={self.max_leaves} leaves: a split every "
                          f"{self.grow_interval_} steps fits {1 + steps // self.grow_interval_} splits into this "
                          f"fit's {steps} steps; lower grow_interval (None follows the budget) or train longer",
                          RuntimeWarning, stacklevel=2)

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
