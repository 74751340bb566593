"""CoHiClust: contrastive hierarchical clustering (Znalezniak, Rola, Kaszuba, Tabor & Śmieja, ECML PKDD 2023).

A backbone network ``g`` is distilled into a soft binary decision tree of height ``T``: a projection
head ``π`` gives one sigmoid per internal node (``K = 2^T − 1`` of them), the probability of taking
the left branch there, and the probability ``P_t^i(x)`` of reaching node ``(t, i)`` is the product
of the edge probabilities on its path. Two augmented views of a datum should follow the same path
(the Bhattacharyya similarity of their path distributions, summed over levels, is maximised) while
different data should not (Eq. 2: ``CoHiLoss + β1 R1 + β2 R2``, with the node-balancing
regulariser R1 of Frosst & Hinton and SimCLR's NT-Xent R2 on ``φ(g(x))``).

CoHiClust has no generative story and no latent random variable: like the autoencoder pretraining
(:mod:`pyro_hc.models.pretrain`) its loss enters the one SVI engine through ``pyro.factor`` with an
empty guide, so the engine's optimiser, progress bar, NaN check, history, checkpoints and callbacks
(here :class:`~pyro_hc.heuristics.LeafPruning`) serve it unchanged.

Node ids. The tree's nodes carry *heap* ids: the root is 0 and node ``h`` has children ``2h + 1``
(left) and ``2h + 2`` (right); the paper's node ``(t, i)`` is ``2^t − 1 + i`` and its output neuron
``n = 2^t + i`` (1-based) is column ``h`` of ``π``. Pruning a leaf removes it from the
:class:`~pyro_hc.tree.ClusterTree` and splices out its parent, so a surviving edge may skip heap
levels. The routing follows the tree: an internal node of the pruned tree decides with its own
sigmoid, a spliced-out node sends everything towards its surviving side (probability 1), so the mass
of a pruned leaf goes to its sibling, the leaf probabilities still sum to one, and every level ``t``
of the complete tree still carries a distribution ``P_t``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pyro
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from ..estimator import ClusterEstimator, as_setting_tuple
from ..heuristics.cohiclust import LeafPruning
from ..infer import Callback, FitState, distributed, load_checkpoint
from ..tree import ClusterTree
from ._registry import register_model
from ..nn import AUGMENTATIONS, BACKBONES, HEADS, STEMS, BatchAugment, make_backbone, make_head
from ._plate import data_plate

__all__ = [
    "CoHiClust", "CoHiClustModule", "SimCLRPretraining", "BatchNormStatsSync", "complete_binary_tree", "heap_ancestors", "routing_masks",
    "node_log_probs", "level_probs", "cohi_loss", "balance_loss", "nt_xent", "R1_FORMS", "simclr_crop_scale",
    "auto_batch_size", "MIN_STEPS_PER_EPOCH",
]


# the tree: heap ids, ancestors, routing ----------------------------------------------------------


def complete_binary_tree(depth: int) -> ClusterTree:
    """A complete binary tree of height ``depth`` whose node ids are heap ids (children ``2h+1``, ``2h+2``)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    tree = ClusterTree()
    for node in range(2**depth - 1):  # breadth first: add_child hands out 2h+1 and 2h+2
        left, right = tree.add_child(node), tree.add_child(node)
        assert (left, right) == (2 * node + 1, 2 * node + 2)
    return tree


def heap_ancestors(depth: int) -> torch.Tensor:
    """``long [2^(T+1) − 1, T]``: row ``v`` lists the nodes on the path to ``v`` at levels ``1..level(v)``.

    The rest of the row is padded with 0 (the root, whose "edge" has log-probability 0), so
    ``edge_log_prob[:, heap_ancestors].sum(-1)`` is ``log P(v)`` for every node at once.
    """
    n_nodes = 2 ** (depth + 1) - 1
    table = np.zeros((n_nodes, depth), dtype=np.int64)
    for v in range(1, n_nodes):
        level = int(math.floor(math.log2(v + 1)))
        node = v
        for t in range(level, 0, -1):
            table[v, t - 1] = node
            node = (node - 1) // 2
    return torch.as_tensor(table)


def routing_masks(tree: ClusterTree, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of the ``K`` heap decisions are free, and where the others send their mass.

    Returns ``free`` (``bool [K]``: the node is an internal node of ``tree`` and decides with its
    sigmoid) and ``forced_left`` (``bool [K]``: a spliced-out node whose left subtree survives
    routes everything left; otherwise right). Both follow from the set of surviving leaves.

    Raises
    ------
    ValueError
        If ``tree`` is not a complete heap-numbered binary tree of height ``depth`` with leaves
        removed by :func:`~pyro_hc.heuristics.cohiclust.prune_leaf`.
    """
    n_internal = 2**depth - 1
    leaves = np.asarray(tree.leaves(), dtype=np.int64)
    if leaves.min() < n_internal or leaves.max() > 2 * n_internal:
        raise ValueError(f"the tree's leaves {leaves.tolist()} are not all heap leaves of a depth-{depth} tree")
    alive = np.zeros(2 * n_internal + 1, dtype=bool)
    alive[leaves] = True
    for h in range(n_internal - 1, -1, -1):  # bottom-up over the K heap nodes (once per tree version)
        alive[h] = alive[2 * h + 1] or alive[2 * h + 2]
    heap = np.arange(n_internal)
    left_alive, right_alive = alive[2 * heap + 1], alive[2 * heap + 2]
    free = left_alive & right_alive
    expected = set(np.flatnonzero(free).tolist())
    if set(tree.internal_nodes()) != expected:
        raise ValueError(
            f"the tree's internal nodes {sorted(tree.internal_nodes())} are not those of the complete "
            f"depth-{depth} tree restricted to its leaves ({sorted(expected)})"
        )
    return torch.as_tensor(free), torch.as_tensor(left_alive & ~right_alive | ~(left_alive | right_alive))


def node_log_probs(logits: torch.Tensor, ancestors: torch.Tensor, free: torch.Tensor | None = None,
                   forced_left: torch.Tensor | None = None) -> torch.Tensor:
    """``log P(v | x)`` for every node ``v`` of the complete tree, ``[B, 2^(T+1) − 1]`` (heap order).

    ``logits`` (``[B, K]``) are the pre-sigmoid outputs of ``π``: the left edge of node ``h`` has
    probability ``σ(logits[:, h])`` (Sec. 3, "Tree generation"). ``P_t^i`` is the product of the
    edge probabilities on the path (Sec. 3, "Tree hierarchy"), here a sum of log-sigmoids gathered
    for all nodes at once. Decisions that are not ``free`` are forced (log-probability 0 towards
    ``forced_left``'s side, −inf away from it).
    """
    left, right = F.logsigmoid(logits), F.logsigmoid(-logits)
    if free is not None:
        zero, minus_inf = logits.new_zeros(()), logits.new_full((), -math.inf)
        left = torch.where(free, left, torch.where(forced_left, zero, minus_inf))
        right = torch.where(free, right, torch.where(forced_left, minus_inf, zero))
    edges = torch.stack([left, right], -1).reshape(logits.shape[0], -1)  # edge into 2h+1, 2h+2
    edges = torch.cat([logits.new_zeros(logits.shape[0], 1), edges], -1)  # the root: log 1
    return edges[:, ancestors].sum(-1)


def level_probs(log_p: torch.Tensor, level: int) -> torch.Tensor:
    """``P_t(x)``, the distribution over the ``2^t`` nodes of level ``t``, from :func:`node_log_probs`."""
    return log_p[:, 2**level - 1: 2 ** (level + 1) - 1].exp()


def cohi_loss(log_p: torch.Tensor, log_p_tilde: torch.Tensor) -> torch.Tensor:
    """CoHiLoss (Sec. 3) of a batch and its augmented view, from :func:`node_log_probs` of each.

    ``s(x1, x2) = Σ_t Σ_i sqrt(P_t^i(x1) P_t^i(x2))`` (Eq. 1 summed over the levels ``t = 1..T``:
    the root, always 1, would add the same constant to both terms, and the leaf level carries the
    last decisions), so ``S = sqrt(P) sqrt(P̃)ᵀ`` is one matrix product and

        CoHiLoss = 1/(N(N−1)) Σ_j Σ_{i≠j} s(x_j, x̃_i) − 1/N Σ_j s(x_j, x̃_j).

    A batch of one has no negative pair; its negative term is 0.
    """
    root_a, root_b = (0.5 * log_p[:, 1:]).exp(), (0.5 * log_p_tilde[:, 1:]).exp()
    similarity = root_a @ root_b.T
    n = similarity.shape[0]
    positive = similarity.diagonal()
    negative = (similarity.sum() - positive.sum()) / (n * (n - 1)) if n > 1 else similarity.new_zeros(())
    return negative - positive.mean()


#: the forms of R1 (:func:`balance_loss`)
R1_FORMS = ("depth_decayed", "uniform")


def balance_loss(log_p: torch.Tensor, nodes: torch.Tensor | None = None, form: str = "depth_decayed") -> torch.Tensor:
    """R1, the node-balancing regulariser of Frosst & Hinton (2017), over the internal ``nodes``.

    ``form="depth_decayed"`` (the default) is the official CoHiClust code's (``tree_losses.py``,
    ``regularization_loss``): for every free internal node ``h`` at depth ``d`` (heap depth, the root
    at 0) with children ``l = 2h+1`` and ``r = 2h+2`` at level ``d + 1``,

        R1 = Σ_h 2^−(d+1) · (−½ log P̄_l − ½ log P̄_r),   P̄_v = mean over the batch of P_v(x),

    so the penalty decays by half per level, as Frosst & Hinton's ``λ 2^−d``. Since
    ``P̄_l = α_h P̄_h`` (``α_h``, the path-weighted probability of going left at ``h``), each term is
    Frosst & Hinton's cross-entropy ``−½ log α_h − ½ log(1 − α_h)`` plus ``−log P̄_h``.

    ``form="uniform"``: the undecayed cross-entropy ``Σ_h (−½ log α_h − ½ log(1 − α_h))``, every
    node weighted alike (this package's form before the official code was followed; near the leaves
    it pushes 2^d times harder, towards equal leaf masses).

    ``nodes`` (``long``, heap ids) are the internal nodes that count, by default all ``K``; for a
    pruned tree pass its internal nodes (the decisions that are still free).
    """
    if form not in R1_FORMS:
        raise ValueError(f"unknown R1 form {form!r}; choose one of {R1_FORMS}")
    if nodes is None:
        nodes = torch.arange((log_p.shape[1] - 1) // 2, device=log_p.device)
    # log of the batch mean of P at each node and its two children, over x
    mass = torch.logsumexp(log_p[:, torch.cat([nodes, 2 * nodes + 1, 2 * nodes + 2])], 0) - math.log(log_p.shape[0])
    node, left, right = mass.chunk(3)
    if form == "uniform":
        return (node - 0.5 * left - 0.5 * right).sum()
    depth = torch.floor(torch.log2((nodes + 1).to(log_p.dtype)))  # heap depth of h
    return (torch.exp2(-(depth + 1)) * (-0.5 * left - 0.5 * right)).sum()


def _full_precision(z: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors (autocast outputs), anything else unchanged."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def nt_xent(z: torch.Tensor, z_tilde: torch.Tensor, temperature: float) -> torch.Tensor:
    """R2: SimCLR's NT-Xent (Chen et al. 2020) over the ``2N`` views; view ``j``'s positive is its twin."""
    n = z.shape[0]
    unit = F.normalize(_full_precision(torch.cat([z, z_tilde])), dim=1)
    logits = unit @ unit.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -math.inf)
    twin = torch.arange(2 * n, device=z.device).add(n).remainder(2 * n)  # j <-> j + n
    return F.cross_entropy(logits, twin)


def simclr_crop_scale(image_shape, smallest_side: float = 6.7) -> tuple[float, float]:
    """SimCLR's crop area range, ``(0.08, 1)``, raised on small images so a crop keeps ``smallest_side`` pixels.

    The official 0.08 of the area is a 7.9-pixel square of a 28-pixel MNIST digit but a 2.3-pixel one
    of an 8-pixel ``digits`` image, from which nothing is left to recognise: the lower bound is
    ``max(0.08, (smallest_side / side)²)`` (0.08 from 24 pixels a side up, 0.70 at 8 pixels).
    """
    side = min(int(image_shape[-1]), int(image_shape[-2]))
    return (min(1.0, max(0.08, (smallest_side / side) ** 2)), 1.0)


#: the fewest full batches an epoch of ``batch_size=None`` has (:func:`auto_batch_size`)
MIN_STEPS_PER_EPOCH = 10


def auto_batch_size(n: int, official: int = 256, smallest: int = 32) -> int:
    """The batch size of ``batch_size=None`` for ``n`` images: the official 256, halved (down to
    ``smallest``) until an epoch has at least :data:`MIN_STEPS_PER_EPOCH` full batches.

    The recipe's schedule counts epochs (pruning from tree epoch 10, one leaf an epoch), written for
    50,000–60,000 images, 195–235 steps an epoch. On small data an epoch of 256-image batches is a
    handful of steps: 7 on the 1,797 ``digits``, so the tree head had trained 70 steps when the
    first leaf was pruned. 256 on MNIST, USPS and CIFAR; 128 on the digits (14 steps an epoch).
    """
    batch = int(official)
    while batch > smallest and n // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    return batch


# the module ----------------------------------------------------------------------------------------


class CoHiClustModule(PyroModule):
    """CoHiClust's networks, its soft tree and the loss of Eq. 2 as a Pyro module loss.

    There is no generative story: ``model`` draws two augmented views ``x̃, x̃'`` of the batch, runs
    ``g`` once on both, and adds ``−(CoHiLoss + β1 R1 + β2 R2)`` through ``pyro.factor`` inside the
    data plate (each datum carries the batch's loss, so the engine's per-datum loss reads Eq. 2);
    the guide is empty.

    Parameters
    ----------
    image_shape:
        ``(C, H, W)``.
    depth:
        ``T``, the height of the complete tree (``2^T`` leaves, ``K = 2^T − 1`` decisions).
    backbone:
        One of :data:`BACKBONES`.
    tree_head, contrastive_head:
        ``π``: ``"linear"`` (paper, grey images) or ``"mlp"`` (colour); ``φ``: ``"identity"`` (grey)
        or ``"mlp"`` (colour).
    head_hidden, projection_dim:
        Hidden width of the MLP heads and output width of an MLP ``φ``.
    augment, crop_scale, rotation, shear:
        :class:`BatchAugment`'s settings.
    beta1, beta2, temperature:
        Weights of R1 and R2 (Eq. 2) and the NT-Xent temperature.
    r1:
        The form of R1 (:func:`balance_loss`): ``"depth_decayed"`` (the official code) or ``"uniform"``.
    stem:
        The ResNet stem (:func:`~pyro_hc.nn.make_backbone`).
    amp:
        Run the backbone under ``torch.autocast`` in bfloat16 on CUDA (the tree and the losses stay
        in float32).
    channels_last:
        Feed images to the backbone in channels-last memory format (faster convolutions on GPUs).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        depth: int = 4,
        backbone: str = "resnet18",
        tree_head: str = "linear",
        contrastive_head: str = "identity",
        head_hidden: int = 512,
        projection_dim: int = 128,
        augment: str = "simclr",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        rotation: float = 15.0,
        shear: float = 0.15,
        beta1: float | None = None,
        beta2: float = 1.0,
        temperature: float = 0.5,
        amp: bool = False,
        channels_last: bool = False,
        r1: str = "depth_decayed",
        stem: str = "auto",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if r1 not in R1_FORMS:
            raise ValueError(f"unknown r1 {r1!r}; choose one of {R1_FORMS}")
        self.r1 = r1
        self.depth = int(depth)
        self.n_decisions = 2**self.depth - 1
        self.backbone, self.feature_dim = make_backbone(backbone, image_shape, stem=stem)
        if tree_head == "identity":
            raise ValueError("the tree head π needs outputs, one per internal node; use 'linear' or 'mlp'")
        self.tree_head = make_head(tree_head, self.feature_dim, self.n_decisions, head_hidden)
        self.contrastive_head = make_head(contrastive_head, self.feature_dim, projection_dim, head_hidden)
        self.augment = BatchAugment(augment, crop_scale, rotation, shear)
        self.beta1 = 2.0 ** (-self.depth) if beta1 is None else float(beta1)  # Sec. 3: β1 = 2^-T
        self.beta2 = float(beta2)
        self.temperature = float(temperature)
        self.amp = bool(amp)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.register_buffer("ancestors", heap_ancestors(self.depth), persistent=False)
        self.tree = complete_binary_tree(self.depth)
        self._routing_key: tuple | None = None
        self._routing: tuple[torch.Tensor, ...] | None = None
        #: ``Σ_batch P(node | x)`` of the last training step (view-averaged), indexed by node id
        self.node_mass: torch.Tensor | None = None

    # the tree ------------------------------------------------------------------------------------

    def routing(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tensors that describe the current tree, on ``device``, cached per tree version.

        ``(free, forced_left)`` of :func:`routing_masks`, the heap ids of the free decisions (the
        tree's internal nodes) and of the leaves (``tree.leaves()`` order). Built once per tree
        version, so a training step never syncs with the host for them.
        """
        key = (id(self.tree), self.tree.version, str(device))
        if self._routing_key != key:
            free, forced_left = routing_masks(self.tree, self.depth)
            internal = torch.as_tensor(self.tree.internal_nodes(), dtype=torch.long)
            leaves = torch.as_tensor(self.tree.leaves(), dtype=torch.long)
            self._routing = tuple(t.to(device) for t in (free, forced_left, internal, leaves))
            self._routing_key = key
        return self._routing

    def node_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """``log P(v | x)`` for every heap node, routed through the current (possibly pruned) tree."""
        free, forced_left, _, _ = self.routing(logits.device)
        return node_log_probs(logits, self.ancestors, free, forced_left)

    # networks ------------------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``z = g(x)`` (float32 under ``amp``)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp and x.device.type == "cuda"):
            z = self.backbone(x)
        return _full_precision(z)

    def tree_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``π(z)`` before the sigmoid, ``[B, K]``: column ``h`` decides at heap node ``h``."""
        return self.tree_head(z)

    def leaf_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``log P_T(x)`` over ``tree.leaves()`` (no augmentation), ``[B, n_leaves]``."""
        log_p = self.node_log_probs(self.tree_logits(self.embed(x)))
        return log_p[:, self.routing(log_p.device)[3]]

    # the loss (Eq. 2) ----------------------------------------------------------------------------

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """Two augmented views of the batch, stacked: ``[2B, C, H, W]``."""
        return torch.cat([self.augment(x), self.augment(x)])

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cohi``, ``r1``, ``r2`` and ``loss`` (Eq. 2) of a batch; memoises ``node_mass``."""
        n = x.shape[0]
        z = self.embed(self.views(x))
        log_p = self.node_log_probs(self.tree_logits(z))
        cohi = cohi_loss(log_p[:n], log_p[n:])
        r1 = balance_loss(log_p, self.routing(log_p.device)[2], form=self.r1)
        projected = self.contrastive_head(z)
        r2 = nt_xent(projected[:n], projected[n:], self.temperature)
        self.node_mass = log_p.detach().exp().sum(0) * 0.5
        return {"cohi": cohi, "r1": r1, "r2": r2, "loss": cohi + self.beta1 * r1 + self.beta2 * r2}  # Eq. 2

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        loss = self.losses(x)["loss"]
        with data_plate(x, index, num_data):
            pyro.factor("cohiclust_loss", -loss.expand(x.shape[0]))

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """Empty: CoHiClust has no latent random variables."""


class SimCLRPretraining(nn.Module):
    """The pretraining phase (Sec. 3, "Training"): R2 alone, i.e. SimCLR on ``g`` and ``φ``.

    A plain ``nn.Module`` around the :class:`CoHiClustModule` (whose parameters stay its own), with
    the loss through ``pyro.factor`` and an empty guide like every module loss of the zoo.
    """

    def __init__(self, module: CoHiClustModule) -> None:
        super().__init__()
        self.module = module

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        module = self.module
        n = x.shape[0]
        projected = module.contrastive_head(module.embed(module.views(x)))
        loss = nt_xent(projected[:n], projected[n:], module.temperature)
        with data_plate(x, index, num_data):
            pyro.factor("simclr_loss", -loss.expand(n))

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None, num_data: int | None = None) -> None:
        """Empty: SimCLR is a module loss."""


class BatchNormStatsSync(Callback):
    """Average the batch-norm running statistics over ``torch.distributed`` ranks after every step.

    In training mode a batch-norm layer normalises with the statistics of its rank's share of the
    batch and moves its running mean and variance towards them, so within an epoch the ranks'
    buffers drift apart (``DistributedDataParallel`` copies rank 0's at the next forward, the engine
    at the end of the epoch). Averaging them after each step (one all-reduce of the buffers) keeps
    every rank's module identical at every step; with equal shares the mean of the ranks' running
    means moves exactly as it would with the whole batch's mean. A no-op in a single process.
    """

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []

    def on_fit_start(self, state: FitState) -> None:
        self._buffers = [
            buffer for layer in state.module.modules()
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats
            for buffer in (layer.running_mean, layer.running_var) if buffer is not None
        ]

    def on_step_end(self, state: FitState) -> None:
        if self._buffers and distributed.is_distributed():
            with torch.no_grad():
                distributed.all_reduce_sum_(*self._buffers)
                torch._foreach_div_(self._buffers, float(distributed.world_size()))


# the estimator --------------------------------------------------------------------------------------


@register_model("cohiclust")
class CoHiClust(ClusterEstimator):
    """CoHiClust: a backbone distilled into a soft binary tree by a hierarchical contrastive loss.

    The recipe (Sec. 3 and Appendix A):

    1. SimCLR pretraining of ``g`` (and ``φ``) with R2 alone for ``pretrain_epochs``.
    2. ``epochs`` of the full loss (Eq. 2) on the complete tree of height ``depth``.
    3. From epoch ``prune_start`` of step 2 on, every ``prune_every`` epochs, the leaf with the lowest
       expected share of the data is pruned (:class:`~pyro_hc.heuristics.LeafPruning`) until
       ``n_leaves`` remain; training goes on with the pruned tree.

    ``predict`` gives the most probable leaf (a node id of :attr:`tree`), ``predict_proba`` the leaf
    distribution ``P_T(x)``, ``transform`` the backbone embedding ``g(x)``. Distances in the tree are
    in :mod:`pyro_hc.hierarchy`.

    Under ``torch.distributed`` (``torchrun``) every rank trains on its share of each batch: the
    pruning sums the leaf masses over the ranks and :class:`BatchNormStatsSync` averages the
    batch-norm running statistics after every step, so every rank holds the same tree and module.
    CoHiLoss and NT-Xent take their negative pairs from the rank's own share of the batch.

    Parameters
    ----------
    depth:
        ``T`` (paper: 4 for MNIST, 16 leaves; 5 for CIFAR).
    n_leaves:
        Leaves to keep after pruning; ``None`` keeps all ``2^T``.
    backbone:
        ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (torchvision, untrained) or ``"small_cnn"``.
    tree_head, contrastive_head:
        ``"auto"`` follows the paper: a linear ``π`` and an identity ``φ`` for one-channel images, MLPs
        (``head_hidden`` wide, ``φ`` to ``projection_dim``) for colour images.
    augment:
        ``"auto"``: ``"simclr"``, the official code's transform for every data set, MNIST included
        (random resized crop, horizontal flip, brightness/contrast/saturation/hue jitter, grey scale;
        on one-channel images the crop, flip, brightness and contrast); ``"digits"``: this package's
        earlier set for grey images (crop, rotation, shear; no flip); ``"affine"``, ``"none"``: see
        :class:`~pyro_hc.nn.BatchAugment`. Measured on the 8 × 8 ``digits`` at every other default
        (small CNN, 200 + 100 epochs, seed 0, CPU): "simclr" ACC 0.689 / NMI 0.674, "digits" 0.718 /
        0.694 — both below k-means on the raw pixels (0.792 / 0.742). The crop's lower bound is
        what fails on 8 × 8 images: with crop 0.7–1, lr 3e-3, batch 128 and 10 + 30 epochs the
        same model reaches 0.859 / 0.816 (the settings of the test in ``tests/test_cohiclust.py``),
        with the official 0.08–1 crop at those settings 0.615 / 0.649; hence the size rule of
        ``crop_scale=None``, with which the defaults of the time (batch 256) measured 0.811 / 0.776
        (seed 0) and 0.696 / 0.747 (seed 1); for today's defaults see ``batch_size``.
    crop_scale:
        Area range of the random resized crop; ``None``: for SimCLR (0.08, 1) (torchvision's
        ``RandomResizedCrop`` default, as the official code) on images of 24 pixels a side or more,
        raised on smaller ones so a crop keeps about 6.7 pixels a side (:func:`simclr_crop_scale`:
        0.70 on the 8 × 8 ``digits``); (0.5, 1) for digits.
    rotation, shear:
        Largest rotation (degrees) and shear of the digits augmentation.
    beta1, beta2, temperature:
        Eq. 2's weights (``beta1=None``: ``2^-T``) and the NT-Xent temperature.
    r1:
        R1's form (:func:`balance_loss`): ``"depth_decayed"`` (official ``tree_losses.py``: 2^−depth)
        or ``"uniform"`` (every node alike).
    stem:
        ResNet stem (:func:`~pyro_hc.nn.make_backbone`): ``"auto"`` (3 × 3, stride 1, no max-pool
        for images of at most 32 pixels a side), ``"cifar"`` (always that) or ``"imagenet"``
        (torchvision's 7 × 7 stride-2 convolution and max-pool, which the official MNIST runs keep).
    epochs, pretrain_epochs, batch_size, lr, weight_decay:
        Budget and Adam settings (shared by both phases; ``fit`` arguments override ``epochs`` and
        ``batch_size``). Paper, MNIST: 200 pretraining + 100 tree epochs, batch 256; the official
        code's Adam: lr 1e-3, weight decay 1e-6 (``main.py``), and its loader drops each epoch's
        short last batch, as the fit does. ``batch_size=None`` (default): :func:`auto_batch_size`,
        the official 256 on data of at least 2,560 images, else halved until an epoch has 10 steps,
        because the schedule counts epochs. Measured on the 1,797 ``digits`` at every other default
        (small CNN, 200 + 100 epochs, seeds 0–4, CPU one thread;
        ``benchmarks/results/digits_defaults_cpu.md``): batch 128 (this rule) ACC 0.829 / 0.778 /
        0.824 / 0.787 / 0.816, NMI 0.861 / 0.809 / 0.872 / 0.838 / 0.854 (mean 0.807 / 0.847,
        against k-means on the raw pixels 0.793 / 0.742); batch 256 ACC 0.766 / 0.597 at seeds 0 / 1
        (0.811 / 0.696 / 0.706 / 0.682 at seeds 0–3 keeping the short batch), and with pruning
        delayed to tree epoch 50 instead (batch 256) mean 0.788 / 0.823; batch 64: 0.809 / 0.829
        and 0.730 / 0.832 at seeds 0 / 1.
    prune_start, prune_every:
        When pruning starts (an epoch of the tree phase, 0-based) and how often it removes a leaf.
    amp, channels_last:
        bfloat16 autocast of the backbone on CUDA, channels-last images (see :class:`CoHiClustModule`).
    pretrained:
        Path of a saved CoHiClust (``model.save``) whose backbone ``g`` and contrastive head ``φ``
        this one starts from, skipping the SimCLR phase (fit one with ``epochs=0`` to make one), so
        several tree runs can share one pretraining.
    """

    def __init__(
        self,
        depth: int = 4,
        n_leaves: int | None = None,
        backbone: str = "resnet18",
        tree_head: str = "auto",
        contrastive_head: str = "auto",
        head_hidden: int = 512,
        projection_dim: int = 128,
        augment: str = "auto",
        crop_scale: tuple[float, float] | None = None,
        rotation: float = 15.0,
        shear: float = 0.15,
        beta1: float | None = None,
        beta2: float = 1.0,
        temperature: float = 0.5,
        epochs: int = 100,
        pretrain_epochs: int = 200,
        batch_size: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        prune_start: int = 10,
        prune_every: int = 1,
        amp: bool = False,
        channels_last: bool = False,
        r1: str = "depth_decayed",
        stem: str = "auto",
        pretrained: str | None = None,
    ) -> None:
        self.depth = depth
        self.n_leaves = n_leaves
        self.backbone = backbone
        self.tree_head = tree_head
        self.contrastive_head = contrastive_head
        self.head_hidden = head_hidden
        self.projection_dim = projection_dim
        self.augment = augment
        self.crop_scale = as_setting_tuple(crop_scale)
        self.rotation = rotation
        self.shear = shear
        self.beta1 = beta1
        self.beta2 = beta2
        self.temperature = temperature
        self.epochs = epochs
        self.pretrain_epochs = pretrain_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.prune_start = prune_start
        self.prune_every = prune_every
        self.amp = amp
        self.channels_last = channels_last
        self.r1 = r1
        self.stem = stem
        self.pretrained = pretrained

    # configuration -----------------------------------------------------------------------------

    def _resolved_batch_size(self, batch_size: int | None, n: int) -> int:
        """``batch_size`` as given, or None: :func:`auto_batch_size` of the ``n`` training images."""
        return auto_batch_size(n) if batch_size is None else batch_size

    def _target_leaves(self) -> int:
        return 2**self.depth if self.n_leaves is None else int(self.n_leaves)

    def _check_config(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"CoHiClust needs images N x C x H x W, got shape {tuple(x.shape)}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or not 1 <= self.depth <= 12:
            raise ValueError(f"depth must be an integer in [1, 12], got {self.depth!r}")
        if not 1 <= self._target_leaves() <= 2**self.depth:
            raise ValueError(f"n_leaves must lie in [1, 2^depth = {2**self.depth}], got {self.n_leaves}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        if self.augment not in ("auto", *AUGMENTATIONS):
            raise ValueError(f"unknown augment {self.augment!r}; choose 'auto' or one of {AUGMENTATIONS}")
        for name in ("pretrain_epochs", "prune_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.prune_every < 1:
            raise ValueError(f"prune_every must be >= 1, got {self.prune_every}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.r1 not in R1_FORMS:
            raise ValueError(f"unknown r1 {self.r1!r}; choose one of {R1_FORMS}")
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; choose one of {STEMS}")
        for name in ("rotation", "shear", "beta2"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be >= 0 and finite, got {getattr(self, name)!r}")
        if self.beta1 is not None and not 0 <= self.beta1 < float("inf"):
            raise ValueError(f"beta1 must be >= 0 and finite (or None: 2^-depth), got {self.beta1!r}")
        for name in ("head_hidden", "projection_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale!r}")
        for name, choices in (("tree_head", ("auto", "linear", "mlp")), ("contrastive_head", ("auto", *HEADS))):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {choices}")

    def _resolved(self) -> dict:
        """The ``"auto"`` choices made concrete for the data's number of channels."""
        colour = self.data_spec_.image_shape[0] != 1
        augment = "simclr" if self.augment == "auto" else self.augment
        crop_scale = self.crop_scale or (simclr_crop_scale(self.data_spec_.image_shape) if augment == "simclr"
                                         else (0.5, 1.0))
        return {
            "tree_head": ("mlp" if colour else "linear") if self.tree_head == "auto" else self.tree_head,
            "contrastive_head": ("mlp" if colour else "identity") if self.contrastive_head == "auto"
            else self.contrastive_head,
            "augment": augment,
            "crop_scale": crop_scale,
        }

    def _build_module(self) -> CoHiClustModule:
        return CoHiClustModule(
            self.data_spec_.image_shape, depth=self.depth, backbone=self.backbone, head_hidden=self.head_hidden,
            projection_dim=self.projection_dim, rotation=self.rotation, shear=self.shear, beta1=self.beta1,
            beta2=self.beta2, temperature=self.temperature, amp=self.amp, channels_last=self.channels_last,
            r1=self.r1, stem=self.stem, **self._resolved(),
        )

    # training ----------------------------------------------------------------------------------

    def _fit(self, x, *, epochs, batch_size, seed, progress, callbacks: Sequence[Callback]) -> None:
        module = self.module_
        # the official loader drops the last incomplete batch (main.py, drop_last=True): on the 1,797
        # digits it would be 5 images, at batch 128 or 256 alike
        optim = dict(lr=self.lr, weight_decay=self.weight_decay, drop_last=True)
        if self.pretrained is not None:
            self._load_pretrained(self.pretrained)
        elif self.pretrain_epochs > 0:
            self._run(SimCLRPretraining(module), x, phase="pretrain", epochs=self.pretrain_epochs,
                      batch_size=batch_size, seed=seed, progress=progress, callbacks=[BatchNormStatsSync()], **optim)
        target = self._target_leaves()
        pruning: list[Callback] = []
        if target < 2**self.depth:
            pruning.append(LeafPruning(target, start_epoch=self.prune_start, every=self.prune_every))
        self._run(module, x, phase="train", epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                  callbacks=[BatchNormStatsSync(), *pruning, *callbacks], **optim)
        left = len(module.tree.leaves())
        if left > target:
            warnings.warn(
                f"CoHiClust: the tree still has {left} leaves, not the requested {target}: pruning removes one "
                f"leaf every {self.prune_every} epoch(s) from epoch {self.prune_start} of the {epochs} tree epochs; "
                "train longer or start pruning earlier", RuntimeWarning, stacklevel=3,
            )

    def _load_pretrained(self, path: str) -> None:
        """Copy the backbone and contrastive head of a saved CoHiClust into this model's module."""
        payload = load_checkpoint(path, map_location=self.device_)
        if payload.get("model") != self.name:
            raise ValueError(f"{path} holds a {payload.get('model')!r} model, not a CoHiClust")
        prefixes = ("backbone.", "contrastive_head.")
        networks = {k: v for k, v in payload["module"].items() if k.startswith(prefixes)}
        own = {k: v for k, v in self.module_.state_dict().items() if k.startswith(prefixes)}
        if set(networks) != set(own) or any(v.shape != own[k].shape for k, v in networks.items()):
            raise ValueError(f"the backbone in {path} does not match backbone={self.backbone!r}, "
                             f"contrastive_head={self.contrastive_head!r} and these images")
        self.module_.load_state_dict(networks, strict=False)

    # fitted model ------------------------------------------------------------------------------

    def _leaf_log_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_.leaf_log_probs(x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_.embed(x)
