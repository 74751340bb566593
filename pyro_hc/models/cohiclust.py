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
from ..infer import Callback, FitState, distributed
from ..tree import ClusterTree
from ._registry import register_model
from .networks import data_plate

__all__ = [
    "CoHiClust", "CoHiClustModule", "SimCLRPretraining", "BatchAugment", "SmallCNN", "BatchNormStatsSync",
    "BACKBONES", "AUGMENTATIONS", "complete_binary_tree", "heap_ancestors", "routing_masks",
    "node_log_probs", "level_probs", "cohi_loss", "balance_loss", "nt_xent",
]

BACKBONES = ("resnet18", "resnet34", "resnet50", "small_cnn")
AUGMENTATIONS = ("digits", "simclr", "none")
HEADS = ("linear", "mlp", "identity")


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


def balance_loss(log_p: torch.Tensor, nodes: torch.Tensor | None = None) -> torch.Tensor:
    """R1: Σ over internal nodes of the cross-entropy between ``[½, ½]`` and the batch's routing there.

    Frosst & Hinton (2017): ``α_h = Σ_x P_h(x) p_h(x) / Σ_x P_h(x)``, the path-weighted average
    probability of going left at node ``h``, and the penalty is ``−½ log α_h − ½ log(1 − α_h)``.
    Since ``P_h(x) p_h(x) = P_{2h+1}(x)``, ``log α_h = logsumexp_x log P_{2h+1} − logsumexp_x log P_h``.
    ``nodes`` (``long``, heap ids) are the internal nodes that count, by default all ``K``; for a
    pruned tree pass its internal nodes (the decisions that are still free).
    """
    if nodes is None:
        nodes = torch.arange((log_p.shape[1] - 1) // 2, device=log_p.device)
    mass = torch.logsumexp(log_p[:, torch.cat([nodes, 2 * nodes + 1, 2 * nodes + 2])], 0)  # per node, over x
    node, left, right = mass.chunk(3)
    return (node - 0.5 * left - 0.5 * right).sum()


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


# networks ------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """A three-layer convolutional backbone for fast tests: 32-64-128 channels, global average pooling."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_backbone(name: str, image_shape: Sequence[int]) -> tuple[nn.Module, int]:
    """``g``: a torchvision ResNet without its classifier, or :class:`SmallCNN`; returns it and ``N``.

    For inputs of at most 32 × 32 pixels the ResNet stem is a 3 × 3 convolution with stride 1 and no
    max-pool (the usual CIFAR variant); grayscale images get a one-channel stem.
    """
    channels, height, width = image_shape
    if name == "small_cnn":
        net = SmallCNN(channels)
        return net, net.out_features
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if min(height, width) <= 32:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    out_features = net.fc.in_features
    net.fc = nn.Identity()
    return net, out_features


def make_head(kind: str, in_features: int, out_features: int, hidden: int) -> nn.Module:
    """``"linear"``: one layer; ``"mlp"``: ``in → hidden → out`` with a ReLU; ``"identity"``: nothing."""
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")


# augmentations -------------------------------------------------------------------------------------


class BatchAugment(nn.Module):
    """Random views of a whole batch on its own device, every image with its own random parameters.

    ``torchvision.transforms.v2`` draws one set of parameters per call, so a batch tensor would get
    the same crop and colour change for every image; contrastive learning needs each view to differ.
    Here the geometric part is one per-image affine map applied by ``F.affine_grid`` /
    ``F.grid_sample`` (bilinear, zero padding), the photometric part per-image factors broadcast over
    the batch, and the grey conversion is torchvision's ``v2.functional.rgb_to_grayscale``.

    ``kind="simclr"`` (SimCLR's set, Chen et al. 2020, as used by CC and CoHiClust for colour
    images): random resized crop (area ``crop_scale``, aspect ratio 3/4–4/3), horizontal flip
    (p = ½), colour jitter (brightness, contrast, saturation 0.4, hue 0.1; p = 0.8, applied in that
    fixed order; the hue shift is a rotation of the chroma plane in YIQ space) and grey scale
    (p = 0.2). One-channel images get the crop, flip, brightness and contrast only.

    ``kind="digits"``: random resized crop (area ``crop_scale``) composed with a rotation of up to
    ``rotation`` degrees and a shear of up to ``shear``; no flip (digits are not mirror-symmetric)
    and no colour change.

    ``kind="none"``: the identity (two "views" are the same image).
    """

    def __init__(self, kind: str, crop_scale: tuple[float, float] = (0.08, 1.0), rotation: float = 15.0,
                 shear: float = 0.15) -> None:
        super().__init__()
        if kind not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}")
        low, high = (float(s) for s in crop_scale)
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        self.kind = kind
        self.crop_scale = (low, high)
        self.rotation = float(rotation)
        self.shear = float(shear)
        # RGB <-> YIQ for the hue shift, kept on the module's device (no host copy inside a step)
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        self.register_buffer("to_yiq", to_yiq, persistent=False)
        self.register_buffer("from_yiq", torch.linalg.inv(to_yiq), persistent=False)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, crop_scale={self.crop_scale}, rotation={self.rotation}, shear={self.shear}"

    @staticmethod
    def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(n, device=like.device, dtype=like.dtype).uniform_(low, high)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        scale = self._uniform(n, *self.crop_scale, x)
        log_ratio = self._uniform(n, math.log(3 / 4), math.log(4 / 3), x)
        width = torch.sqrt(scale * log_ratio.exp()).clamp(max=1.0)  # crop size as a fraction of the side
        height = torch.sqrt(scale / log_ratio.exp()).clamp(max=1.0)
        shift_x = self._uniform(n, -1.0, 1.0, x) * (1 - width)  # the crop stays inside the image
        shift_y = self._uniform(n, -1.0, 1.0, x) * (1 - height)
        linear = torch.diag_embed(torch.stack([width, height], -1))  # output -> input coordinates
        if self.kind == "simclr":
            flip = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
            linear = linear * torch.stack([flip, torch.ones_like(flip)], -1).unsqueeze(-2)
        else:  # digits: rotation and shear inside the crop
            angle = self._uniform(n, -self.rotation, self.rotation, x) * (math.pi / 180)
            cos, sin = angle.cos(), angle.sin()
            rotate = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
            shear = torch.zeros_like(rotate)
            shear[:, 0, 0] = shear[:, 1, 1] = 1.0
            shear[:, 0, 1] = self._uniform(n, -self.shear, self.shear, x)
            linear = linear @ rotate @ shear
        theta = torch.cat([linear, torch.stack([shift_x, shift_y], -1).unsqueeze(-1)], -1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2.functional import rgb_to_grayscale

        n, channels = x.shape[0], x.shape[1]
        jitter = torch.rand(n, device=x.device) < 0.8

        def factor(low: float, high: float) -> torch.Tensor:
            value = self._uniform(n, low, high, x)
            return torch.where(jitter, value, torch.ones_like(value)).view(n, 1, 1, 1)

        def grey(images: torch.Tensor) -> torch.Tensor:
            return rgb_to_grayscale(images) if channels == 3 else images

        x = (x * factor(0.6, 1.4)).clamp(0, 1)  # brightness
        mean = grey(x).mean((1, 2, 3), keepdim=True)
        x = ((x - mean) * factor(0.6, 1.4) + mean).clamp(0, 1)  # contrast
        if channels == 3:
            g = grey(x)
            x = ((x - g) * factor(0.6, 1.4) + g).clamp(0, 1)  # saturation
            hue = factor(-0.1, 0.1).view(n) * (2 * math.pi)
            x = self._rotate_hue(x, torch.where(jitter, hue, torch.zeros_like(hue)))
            to_grey = (torch.rand(n, device=x.device) < 0.2).view(n, 1, 1, 1)
            x = torch.where(to_grey, grey(x).expand_as(x), x)
        return x

    def _rotate_hue(self, x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Rotate the chroma (I, Q) plane of YIQ by ``angle`` radians per image; luma is kept."""
        cos, sin = angle.cos(), angle.sin()
        one, zero = torch.ones_like(cos), torch.zeros_like(cos)
        rotate = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                              torch.stack([zero, sin, cos], -1)], -2)  # n x 3 x 3
        matrix = self.from_yiq @ rotate @ self.to_yiq
        return torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        x = self._geometry(x)
        if self.kind == "simclr":
            x = self._colour(x)
        return x


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
        augment: str = "digits",
        crop_scale: tuple[float, float] = (0.5, 1.0),
        rotation: float = 15.0,
        shear: float = 0.15,
        beta1: float | None = None,
        beta2: float = 1.0,
        temperature: float = 0.5,
        amp: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = int(depth)
        self.n_decisions = 2**self.depth - 1
        self.backbone, self.feature_dim = make_backbone(backbone, image_shape)
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
        r1 = balance_loss(log_p, self.routing(log_p.device)[2])
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
        ``"auto"``: ``"digits"`` (crop, rotation, shear) for one-channel images, ``"simclr"`` for colour.
    crop_scale:
        Area range of the random resized crop; ``None``: (0.5, 1) for digits, (0.08, 1) for SimCLR.
    rotation, shear:
        Largest rotation (degrees) and shear of the digits augmentation.
    beta1, beta2, temperature:
        Eq. 2's weights (``beta1=None``: ``2^-T``) and the NT-Xent temperature.
    epochs, pretrain_epochs, batch_size, lr, weight_decay:
        Budget and Adam settings (shared by both phases; ``fit`` arguments override ``epochs`` and
        ``batch_size``). Paper, MNIST: 200 pretraining + 100 tree epochs, batch 256.
    prune_start, prune_every:
        When pruning starts (an epoch of the tree phase, 0-based) and how often it removes a leaf.
    amp, channels_last:
        bfloat16 autocast of the backbone on CUDA, channels-last images (see :class:`CoHiClustModule`).
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
        batch_size: int = 256,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        prune_start: int = 10,
        prune_every: int = 1,
        amp: bool = False,
        channels_last: bool = False,
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

    # configuration -----------------------------------------------------------------------------

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
        augment = ("simclr" if colour else "digits") if self.augment == "auto" else self.augment
        crop_scale = self.crop_scale or ((0.08, 1.0) if augment == "simclr" else (0.5, 1.0))
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
            **self._resolved(),
        )

    # training ----------------------------------------------------------------------------------

    def _fit(self, x, *, epochs, batch_size, seed, progress, callbacks: Sequence[Callback]) -> None:
        module = self.module_
        optim = dict(lr=self.lr, weight_decay=self.weight_decay)
        if self.pretrain_epochs > 0:
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

    # fitted model ------------------------------------------------------------------------------

    def _leaf_log_proba(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_.leaf_log_probs(x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.module_.embed(x)
