"""Pictures of a fitted model: its tree with images, its embedding, class distances, training curves.

matplotlib and networkx only (no Graphviz). Every function takes a fitted model of the zoo and
reads what every :class:`~pyro_hc.estimator.ClusterEstimator` has — ``tree``, ``predict``,
``transform``, ``history_`` — so it works for any model; a model that offers more is drawn with
more (all optional):

- ``decode_nodes()`` -> ``(node ids, images)``: each node's mean decoded to data space (HCRL1/2,
  VAE-nCRP); VaDE's decoded cluster means and k-DVAE's decoders at ``z = 0`` are found by
  :func:`pyro_hc.inspect.node_prototypes`;
- ``node_embeddings()`` or ``node_centers()`` -> ``(node ids, M x latent_dim)``: node means in
  the embedding (DeepECT's centers; HCRL's node Gaussians and VaDE's cluster means are found by
  :func:`pyro_hc.inspect.node_embeddings`); without them a node sits at the mean embedding of its
  data. With node means and a ``decoder`` the decoded means are the node images.

Each function returns the :class:`matplotlib.figure.Figure`; ``path=`` also writes it (PNG for a
``.png`` name). A model that is not fitted raises :class:`~pyro_hc.estimator.NotFittedError`.

=============================  ================================================================
:func:`plot_tree`              the tree top-down, each node with its decoded mean, the mean of
                               its data or a few member images (HCRL Fig. 1, DeepECT Fig. 7,
                               CoHiClust Fig. 7), sized by its share of the data, framed by the
                               purity of its majority class
:func:`plot_embedding`         the embedding in 2-D (PCA or t-SNE) with the node means as
                               numbered squares coloured by level, parent-child edges drawn
                               (HCRL Fig. 6)
:func:`plot_class_distance`    mean tree distance between the points of two classes
                               (CoHiClust Fig. 4)
:func:`plot_history`           loss per training phase, tree size with the structural events
                               marked, logged metrics
:func:`plot_node_samples`      data generated from chosen nodes (posterior predictive)
:func:`plot_level_reconstructions`  each datum beside the decoded node means along its path
=============================  ================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .data import Dataset
from .estimator import ClusterEstimator, as_tensor
from .inspect import node_embeddings, node_prototypes, reconstruct_by_level, sample_node
from .models.kdvae import KDVAE
from .tree import ClusterTree

__all__ = [
    "tree_layout", "node_statistics", "plot_tree", "plot_embedding", "plot_class_distance", "plot_history",
    "plot_node_samples", "plot_level_reconstructions", "IMAGE_MODES", "LEVEL_COLOURS", "KNOWN_METRICS",
]

#: how :func:`plot_tree` draws a node
IMAGE_MODES = ("auto", "decoded", "mean", "members", "none")
#: node colour by level in the embedding plot (HCRL Fig. 6: red root, green internal, blue leaves)
LEVEL_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:purple", "tab:orange", "tab:brown", "tab:pink")
#: history keys :func:`plot_history` draws as metrics unless told otherwise (``metrics=``)
KNOWN_METRICS = ("acc", "nmi", "ari", "dendrogram_purity", "leaf_purity", "f_score", "hierarchical_f_score", "purity",
                 "nll", "reconstruction_error")
_EVENT_COLOURS = {"grow": "tab:green", "prune": "tab:red", "merge": "tab:purple", "split": "tab:blue"}
_LEVEL_SPACING = 1.7  # vertical distance between levels, in units of the distance between leaves


# shared helpers ------------------------------------------------------------------------------


def _check_model(model: Any, what: str) -> None:
    if not isinstance(model, ClusterEstimator):
        raise TypeError(f"{what} needs a pyro_hc model (a ClusterEstimator), got {type(model).__name__}")
    model._check_fitted()


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def _labels(data: Any, labels: Any) -> np.ndarray | None:
    if labels is not None:
        return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(int)
    if isinstance(data, Dataset) and data.y is not None:
        return data.y.cpu().numpy()
    return None


def _class_name(names: Sequence[str] | None, label: int) -> str:
    return str(names[label]) if names is not None and 0 <= label < len(names) else str(label)


def _subsample(data: Any, labels: np.ndarray | None, max_points: int | None, seed: int | None):
    """At most ``max_points`` rows of ``data`` (and its labels), drawn without replacement."""
    n = len(data)
    if max_points is None or n <= max_points:
        return data, labels
    rows = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    if isinstance(data, Dataset):
        data = data.subset(torch.as_tensor(rows))
    else:
        data = as_tensor(data)[torch.as_tensor(rows)]
    return data, None if labels is None else labels[rows]


def _display(image: torch.Tensor | np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image ``C x H x W`` (or a vector ``D``) as something ``imshow`` draws, with its colour map."""
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=float)
    if array.ndim == 1:  # a feature vector: one row of a heat map
        return array[None, :], "viridis"
    if array.shape[0] == 1:
        return np.clip(array[0], 0.0, 1.0), "gray_r"
    return np.clip(np.moveaxis(array[:3], 0, -1), 0.0, 1.0), None


def _tile(images: torch.Tensor) -> torch.Tensor:
    """A few ``C x H x W`` images as one square-ish mosaic with one-pixel white gaps."""
    count, channels, height, width = images.shape
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    mosaic = torch.zeros(channels, rows * (height + 1) - 1, cols * (width + 1) - 1)
    for i in range(count):
        r, c = divmod(i, cols)
        mosaic[:, r * (height + 1):r * (height + 1) + height, c * (width + 1):c * (width + 1) + width] = images[i]
    return mosaic


# the tree ----------------------------------------------------------------------------------


def tree_layout(tree: ClusterTree) -> dict[int, tuple[float, float]]:
    """Top-down positions: leaves at ``x = 0, 1, ...`` in depth-first order, a parent centred over
    its children, level ``l`` at ``y = -l * 1.7``."""
    pos: dict[int, tuple[float, float]] = {}
    leaf_x = {leaf: float(i) for i, leaf in enumerate(tree.leaves())}
    for node in reversed(tree.subtree(tree.root)):  # children before parents
        children = tree.children(node)
        x = leaf_x[node] if not children else float(np.mean([pos[c][0] for c in children]))
        pos[node] = (x, -_LEVEL_SPACING * tree.level(node))
    return pos


def node_statistics(model: ClusterEstimator, data: Any, labels: Any = None) -> dict[int, dict[str, Any]]:
    """Per node (its whole subtree): ``n`` data assigned by ``predict``, their ``share``, and — with
    labels — the ``majority`` class and its share, the ``purity``."""
    _check_model(model, "node_statistics")
    tree = model.tree
    labels = _labels(data, labels)
    assigned = model.predict(data).numpy()
    leaves = tree.leaves()
    index = np.full(max(leaves) + 1, -1)
    index[leaves] = np.arange(len(leaves))
    leaf_of = index[assigned]
    n_classes = int(labels.max()) + 1 if labels is not None and labels.size else 1
    counts = np.zeros((len(leaves), n_classes))
    np.add.at(counts, (leaf_of, labels if labels is not None else np.zeros_like(leaf_of)), 1.0)
    total = max(len(assigned), 1)
    stats = {}
    for node in tree.nodes():
        held = counts[[index[leaf] for leaf in tree.subtree_leaves(node)]].sum(0)
        n = int(held.sum())
        entry: dict[str, Any] = {"n": n, "share": n / total}
        if labels is not None and n > 0:
            entry["majority"] = int(held.argmax())
            entry["purity"] = float(held.max() / n)
        stats[node] = entry
    return stats


def _node_images(model: ClusterEstimator, mode: str, data: Any, n_members: int, seed: int | None,
                 ) -> tuple[dict[int, torch.Tensor], str]:
    """The image of each node for ``mode`` and a phrase saying what the images are."""
    tree = model.tree
    if mode == "decoded":
        nodes, images = node_prototypes(model)
        found = {node: image for node, image in zip(nodes, images)}
        missing = [node for node in tree.nodes() if node not in found]
        if missing and data is not None:
            found.update(_node_images(model, "mean", data, n_members, seed)[0])
            found.update({node: image for node, image in zip(nodes, images)})
            return found, f"decoded node means (node{'s' if len(missing) > 1 else ''} " \
                          f"{', '.join(map(str, missing))}: mean of {'their' if len(missing) > 1 else 'its'} data)"
        return found, "decoded node means"
    x = as_tensor(data).cpu()
    if x.dim() == 2 and model.data_spec_.image_shape is not None:
        x = x.reshape(x.shape[0], *model.data_spec_.image_shape)
    assigned = model.predict(data).numpy()
    generator = np.random.default_rng(seed)
    found = {}
    for node in tree.nodes():
        rows = np.flatnonzero(np.isin(assigned, tree.subtree_leaves(node)))
        if rows.size == 0:
            continue
        if mode == "mean":
            found[node] = x[torch.as_tensor(rows)].mean(0)
        else:
            pick = generator.choice(rows, size=min(n_members, rows.size), replace=False)
            members = x[torch.as_tensor(pick)]
            found[node] = _tile(members) if members.dim() == 4 else members.mean(0)
    return found, "mean of the data in each subtree" if mode == "mean" else f"{n_members} random members per node"


def plot_tree(
    model: ClusterEstimator,
    data: Dataset | torch.Tensor | np.ndarray | None = None,
    images: str = "auto",
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    n_members: int = 4,
    max_points: int | None = 20000,
    seed: int | None = 0,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """The learned tree top-down, each node drawn with an image (or a disc) and its numbers.

    Parameters
    ----------
    model:
        A fitted model.
    data:
        Data to assign with ``predict``: node sizes follow each subtree's share of it, and with
        labels (a labelled :class:`~pyro_hc.data.Dataset`, or ``labels=``) each node shows its
        majority class and purity (frame colour). Without data every node has the same size.
    images:
        ``"decoded"``: each node's mean decoded to data space (HCRL Fig. 1; see the module
        docstring for the models that have them); ``"mean"``: the mean image of the node's data
        (CoHiClust Fig. 7); ``"members"``: ``n_members`` random members tiled (DeepECT Fig. 7);
        ``"none"``: discs; ``"auto"``: decoded if the model has node means, else the mean image,
        for image data; discs otherwise.
    class_names:
        Names of the label values (``class_names[label]``).
    max_points:
        Data beyond this many are subsampled (seeded by ``seed``) before ``predict``.
    path:
        Where to write the figure.
    """
    _check_model(model, "plot_tree")
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {IMAGE_MODES}, got {images!r}")
    if images in ("mean", "members") and data is None:
        raise ValueError(f"images={images!r} draws the data of each node: pass data")
    tree = model.tree
    labels = _labels(data, labels) if data is not None else None
    if data is not None:
        data, labels = _subsample(data, labels, max_points, seed)
    is_image = model.data_spec_.image_shape is not None
    if images == "auto":
        if not is_image:
            images = "none"
        else:
            try:
                node_prototypes(model)
                images = "decoded"
            except TypeError:
                images = "mean" if data is not None else "none"
    pictures, what = ({}, "") if images == "none" else _node_images(model, images, data, n_members, seed)
    stats = node_statistics(model, data, labels) if data is not None else None

    pos = tree_layout(tree)
    n_leaves, depth = len(tree.leaves()), tree.depth()
    width = min(max(6.0, 1.25 * n_leaves + 1.5), 36.0)
    height = 1.0 + 2.0 * (depth + 1) * (width / max(6.0, 1.25 * n_leaves + 1.5))
    fig, ax = plt.subplots(figsize=(width, max(height, 3.0)))
    cmap = matplotlib.colormaps["RdYlGn"]
    for parent, child in tree.graph.edges:
        (x0, y0), (x1, y1) = pos[parent], pos[child]
        ax.plot([x0, x0, x1, x1], [y0, (y0 + y1) / 2, (y0 + y1) / 2, y1], color="0.55", lw=1.2, zorder=1)
    max_size, min_size = 0.92, 0.42
    for node, (x, y) in pos.items():
        share = stats[node]["share"] if stats is not None else 1.0
        size = min_size + (max_size - min_size) * np.sqrt(share) if stats is not None else 0.8
        purity = stats[node].get("purity") if stats is not None else None
        edge = cmap(purity) if purity is not None else "0.25"
        if node in pictures:
            image, image_cmap = _display(pictures[node])
            aspect = image.shape[0] / image.shape[1]
            h = size * min(aspect, 1.0) if image.shape[0] > 1 else size * 0.3
            w = size / max(aspect, 1.0) if image.shape[0] > 1 else size
            ax.imshow(image, cmap=image_cmap, vmin=None if image_cmap == "viridis" else 0.0,
                      vmax=None if image_cmap == "viridis" else 1.0,
                      extent=(x - w / 2, x + w / 2, y - h / 2, y + h / 2),
                      zorder=3, interpolation="nearest")
            ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, fill=False, lw=3.0 if purity is not None else 1.0,
                                   edgecolor=edge, zorder=4))
            bottom = y - h / 2
        else:
            radius = size / 2
            ax.add_patch(plt.Circle((x, y), radius, facecolor=edge if purity is not None else "white",
                                    edgecolor="0.25", lw=1.2, zorder=3))
            bottom = y - radius
        note = [f"#{node}"]
        if stats is not None:
            note.append(f"n={stats[node]['n']} ({100 * share:.0f}%)")
            if purity is not None:
                note.append(f"majority {_class_name(class_names, stats[node]['majority'])} ({100 * purity:.0f}%)")
        ax.text(x, bottom - 0.05, "\n".join(note), ha="center", va="top", fontsize=7.5, zorder=5, linespacing=1.1,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.6, alpha=0.9))
    ax.set_xlim(-0.75, n_leaves - 0.25)
    ax.set_ylim(-_LEVEL_SPACING * depth - 1.25, 0.65)
    ax.set_aspect("equal")
    ax.axis("off")
    if stats is not None and labels is not None:
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=cmap), ax=ax,
                           fraction=0.025, pad=0.01, shrink=0.7)
        bar.set_label("purity (share of the majority class)", fontsize=8)
    caption = f"{type(model).__name__} tree: {len(tree)} nodes, {n_leaves} leaves"
    if what:
        caption += f"; images: {what}"
    if stats is not None:
        caption += "\nunder each node: #id, data in its subtree (share)" + (", majority class (its share)"
                                                                           if labels is not None else "")
    ax.set_title(title or caption, fontsize=10)
    return _finish(fig, path)


# the embedding -----------------------------------------------------------------------------


def _project(points: np.ndarray, extra: np.ndarray, method: str, seed: int | None,
             ) -> tuple[np.ndarray, np.ndarray, str]:
    """2-D coordinates of ``points`` and of ``extra`` (node means), and the axis label prefix."""
    d = points.shape[1]
    if method == "auto":
        method = "latent" if d <= 2 else "pca"
    if method == "latent":
        if d > 2:
            raise ValueError(f"method='latent' needs a 2-D embedding, this one has {d} dimensions")
        pad = (lambda a: np.pad(a, ((0, 0), (0, 2 - d)))) if d < 2 else (lambda a: a)
        return pad(points), pad(extra), "z"
    if method == "pca":
        from sklearn.decomposition import PCA

        if d < 2:
            raise ValueError("PCA to 2-D needs an embedding with at least 2 dimensions")
        pca = PCA(2, random_state=seed).fit(points)
        return pca.transform(points), pca.transform(extra) if len(extra) else extra, "PC"
    if method == "tsne":
        from sklearn.manifold import TSNE

        stacked = np.concatenate([points, extra]) if len(extra) else points
        perplexity = float(min(30.0, max(2.0, (len(stacked) - 1) / 3)))
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(stacked)
        return xy[: len(points)], xy[len(points):], "t-SNE "
    raise ValueError(f"method must be 'auto', 'latent', 'pca' or 'tsne', got {method!r}")


def plot_embedding(
    model: ClusterEstimator,
    data: Dataset | torch.Tensor | np.ndarray,
    method: str = "auto",
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    max_points: int | None = 3000,
    seed: int | None = 0,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """The embedding (``model.transform``) in 2-D with the tree drawn into it (HCRL Figure 6).

    Points are coloured by label (or, without labels, by assigned leaf). Node means are numbered
    squares coloured by level — red root, green, blue, ... — joined parent to child; a model
    without node means in the embedding gets each node at the mean embedding of its data.
    ``method``: ``"latent"`` (the embedding itself, for 2-D ones), ``"pca"``, ``"tsne"``
    (scikit-learn's, fitted on the points and node means together) or ``"auto"`` (latent for
    2-D, else PCA). At most ``max_points`` data are drawn (a seeded subsample).
    """
    _check_model(model, "plot_embedding")
    tree = model.tree
    labels = _labels(data, labels)
    data, labels = _subsample(data, labels, max_points, seed)
    embedding = model.transform(data).double().numpy()
    assigned = model.predict(data).numpy()
    found = node_embeddings(model)
    if found is not None:
        nodes, means = list(found[0]), found[1].double().numpy()
        where = "node means of the model"
    else:
        nodes, rows = [], []
        for node in tree.nodes():
            held = np.isin(assigned, tree.subtree_leaves(node))
            if held.any():
                nodes.append(node)
                rows.append(embedding[held].mean(0))
        means = np.stack(rows) if rows else np.zeros((0, embedding.shape[1]))
        where = "nodes at the mean embedding of their data"
        if isinstance(model, KDVAE):
            where += "\n(k-DVAE: each cluster has its own latent space, so distances across clusters mean little)"
    xy, node_xy, axis = _project(embedding, means, method, seed)

    fig, ax = plt.subplots(figsize=(8.5, 7.0))
    colour_by = labels if labels is not None else np.searchsorted(np.array(tree.leaves()), assigned)
    values = np.unique(colour_by)
    palette = matplotlib.colormaps["tab10" if len(values) <= 10 else "tab20"]
    handles = []
    for i, value in enumerate(values):
        held = colour_by == value
        colour = palette(i % palette.N)
        ax.scatter(xy[held, 0], xy[held, 1], s=7, alpha=0.45, color=colour, linewidths=0, zorder=1)
        name = _class_name(class_names, int(value)) if labels is not None else f"leaf {tree.leaves()[int(value)]}"
        handles.append(Line2D([], [], marker="o", ls="", color=colour, label=name))
    position = {node: node_xy[i] for i, node in enumerate(nodes)}
    for parent, child in tree.graph.edges:
        if parent in position and child in position:
            (x0, y0), (x1, y1) = position[parent], position[child]
            ax.plot([x0, x1], [y0, y1], color="black", lw=1.0, alpha=0.7, zorder=2)
    levels_seen = set()
    for node, (x, y) in position.items():
        level = tree.level(node)
        levels_seen.add(level)
        colour = LEVEL_COLOURS[level % len(LEVEL_COLOURS)]
        ax.scatter([x], [y], marker="s", s=230, color=colour, edgecolors="black", linewidths=0.8, zorder=3)
        ax.text(x, y, str(node), ha="center", va="center", fontsize=7, color="white", fontweight="bold", zorder=4)
    level_handles = [Line2D([], [], marker="s", ls="", markersize=9, markeredgecolor="black",
                            color=LEVEL_COLOURS[level % len(LEVEL_COLOURS)],
                            label=f"level {level}" + (" (root)" if level == 0 else ""))
                     for level in sorted(levels_seen)]
    first = ax.legend(handles=handles, title="class" if labels is not None else "assigned leaf", fontsize=8,
                      title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.add_artist(first)
    ax.legend(handles=level_handles, title="node (id in square)", fontsize=8, title_fontsize=8, loc="lower left",
              bbox_to_anchor=(1.01, 0.0), frameon=False)
    ax.set_xlabel(f"{axis}1" if axis != "z" else "z[0]")
    ax.set_ylabel(f"{axis}2" if axis != "z" else "z[1]")
    ax.set_title(title or f"{type(model).__name__} embedding ({len(xy)} points); {where}", fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


# distances between classes -----------------------------------------------------------------


def plot_class_distance(
    model: ClusterEstimator | None = None,
    data: Dataset | torch.Tensor | np.ndarray | None = None,
    matrix: np.ndarray | None = None,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """The mean number of tree edges between the points of two classes (CoHiClust Figure 4).

    Either a fitted ``model`` and labelled ``data`` (the matrix is
    :func:`pyro_hc.hierarchy.class_distance_matrix` of ``model.predict(data)``) or a precomputed
    ``matrix`` (``C x C``, rows in the order of ``class_names``). Small values: the two classes
    share nearby leaves; the diagonal is the spread of a class over the tree.
    """
    if matrix is None:
        if model is None or data is None:
            raise ValueError("plot_class_distance needs a fitted model and labelled data, or a matrix")
        _check_model(model, "plot_class_distance")
        labels = _labels(data, labels)
        if labels is None:
            raise ValueError("plot_class_distance needs labels: a labelled Dataset or labels=")
        from .hierarchy import class_distance_matrix

        matrix = class_distance_matrix(model.tree, model.predict(data).numpy(), labels)
        present = np.unique(labels)
        names = [_class_name(class_names, int(c)) for c in present]
        source = f"{type(model).__name__}, {len(labels)} points"
    else:
        matrix = np.asarray(matrix, dtype=float)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {matrix.shape}")
        names = list(class_names) if class_names is not None else [str(i) for i in range(matrix.shape[0])]
        if len(names) != matrix.shape[0]:
            raise ValueError(f"{len(names)} class names for a {matrix.shape[0]} x {matrix.shape[0]} matrix")
        source = "precomputed"
    size = max(4.5, 0.55 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(matrix, cmap="viridis_r")
    finite = matrix[np.isfinite(matrix)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    if len(names) <= 20:
        for (i, j), value in np.ndenumerate(matrix):
            text = "–" if not np.isfinite(value) else f"{value:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(value) and value > middle else "black")
    ax.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right"
                  if max(map(len, names)) > 3 else "center")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("class")
    ax.set_ylabel("class")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label("mean edges between two points")
    ax.set_title(title or f"distance between classes in the tree ({source})", fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


# training curves ---------------------------------------------------------------------------


def _event_phase(event: dict, records: list[dict], phases: list[str]) -> str | None:
    """The phase whose epoch record ends at the event's epoch and step (the engine logs both).

    Every phase counts epochs and steps from 0, so several records may match; a phase whose
    module has a tree (its records carry ``n_leaves``) wins, the latest such one first.
    """
    matches = [r for r in records if r.get("epoch") == event.get("epoch") and r.get("step") == event.get("step")]
    with_tree = [r for r in matches if "n_leaves" in r]
    if with_tree or matches:
        return (with_tree or matches)[-1]["phase"]
    tree_phases = [p for p in phases if any(r["phase"] == p and "n_leaves" in r for r in records)]
    return tree_phases[-1] if tree_phases else None


def plot_history(
    model: ClusterEstimator,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Training curves from ``model.history_``: the loss of every phase in its own panel, the tree
    size over the phase whose tree changed, with the structural events of ``model.tree.events``
    marked (dashed lines, one colour per kind), and the logged ``metrics`` (default: those of
    :data:`KNOWN_METRICS` in the history, e.g. from an
    :class:`~pyro_hc.infer.EpochMetrics` callback; name any other logged value to draw it)."""
    _check_model(model, "plot_history")
    records = list(model.history_.records)
    if not records:
        raise ValueError(f"{type(model).__name__} has an empty training history (fitted with epochs=0?)")
    phases = list(dict.fromkeys(r["phase"] for r in records))
    events = [dict(e, phase=_event_phase(e, records, phases)) for e in model.tree.events]
    if metrics is None:
        metrics = [name for name in KNOWN_METRICS if any(isinstance(r.get(name), (int, float)) for r in records)]
    else:
        missing = [m for m in metrics if not any(m in r for r in records)]
        if missing:
            known = sorted({k for r in records for k in r})
            raise ValueError(f"metric(s) {missing} are not in the history; it has {known}")
    size_phases = [p for p in phases if len({(r.get("n_nodes"), r.get("n_leaves")) for r in records
                                             if r["phase"] == p and "n_nodes" in r}) > 1
                   or any(e["phase"] == p for e in events)]
    panels = [(kind, p) for p in phases for kind in ("loss", "size") if kind == "loss" or p in size_phases]
    panels += [("metrics", None)] if metrics else []
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    kinds_marked: set[str] = set()

    def mark_events(ax, phase: str) -> None:
        for event in events:
            if event["phase"] == phase and event.get("epoch") is not None:
                colour = _EVENT_COLOURS.get(event["kind"], "0.4")
                label = event["kind"] if event["kind"] not in kinds_marked else None
                kinds_marked.add(event["kind"])
                ax.axvline(event["epoch"], color=colour, ls="--", lw=1.0, alpha=0.7, label=label)

    for ax, (kind, phase) in zip(axes.flat, panels):
        part = [r for r in records if phase is None or r["phase"] == phase]
        epochs = [r["epoch"] for r in part]
        marker = "." if len(part) < 30 else None
        if kind == "loss":
            ax.plot(epochs, [r["loss"] for r in part], marker=marker)
            ax.set_title(f"{phase}: loss", fontsize=10)
            ax.set_ylabel("loss per datum")
            if phase in size_phases:
                mark_events(ax, phase)
        elif kind == "size":
            kinds_marked.clear()
            sized = [r for r in part if "n_nodes" in r]
            ax.step([r["epoch"] for r in sized], [r["n_leaves"] for r in sized], where="post", label="leaves")
            ax.step([r["epoch"] for r in sized], [r["n_nodes"] for r in sized], where="post", label="nodes")
            mark_events(ax, phase)
            ax.set_title(f"{phase}: tree size (events dashed)", fontsize=10)
            ax.set_ylabel("count")
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=7, loc="best")
        else:
            logged = [r for r in records if any(isinstance(r.get(name), (int, float)) for name in metrics)]
            one_phase = len({r["phase"] for r in logged}) == 1
            for name in metrics:
                points = [(r["epoch"] if one_phase else i, r[name]) for i, r in enumerate(records)
                          if isinstance(r.get(name), (int, float))]
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=name)
            ax.set_title(f"{logged[0]['phase']}: metrics" if one_phase else "metrics", fontsize=10)
            ax.set_xlabel("epoch" if one_phase else "epoch record (all phases, in order)")
            ax.legend(fontsize=7)
            continue
        ax.set_xlabel("epoch")
    fig.suptitle(title or f"{type(model).__name__} training history", fontsize=11)
    fig.tight_layout()
    return _finish(fig, path)


# posterior-predictive images ---------------------------------------------------------------


def _image_grid(rows: list[torch.Tensor], row_names: list[str], col_names: list[str] | None, title: str,
                path: str | Path | None) -> Figure:
    """Rows of images as one mosaic (one ``imshow``: fast however many images), rows and columns named."""
    shown = [[_display(image) for image in images] for images in rows]
    first, cmap = shown[0][0]
    height, width = first.shape[:2]
    gap = max(1, height // 8)
    n_cols = max(len(r) for r in shown)
    background = 0.0 if cmap == "gray_r" else (1.0 if cmap is None else np.nan)
    mosaic = np.full((len(shown) * (height + gap) - gap, n_cols * (width + gap) - gap, *first.shape[2:]), background)
    for r, images in enumerate(shown):
        for c, (image, _) in enumerate(images):
            mosaic[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = image
    cell = 0.8 if height > 1 else 0.25  # inches per image (vectors are thin strips)
    aspect = 1.0 if height > 1 else width / 12.0
    fig, ax = plt.subplots(figsize=(cell * n_cols * (width / max(height, 1) if height > 1 else 3.0) + 1.8,
                                    cell * len(shown) + 0.9))
    ax.imshow(mosaic, cmap=cmap, vmin=None if cmap == "viridis" else 0.0, vmax=None if cmap == "viridis" else 1.0,
              interpolation="nearest", aspect=aspect)
    ax.set_yticks([r * (height + gap) + (height - 1) / 2 for r in range(len(shown))], row_names, fontsize=8)
    if col_names is not None:
        ax.set_xticks([c * (width + gap) + (width - 1) / 2 for c in range(len(col_names))], col_names, fontsize=8)
        ax.xaxis.tick_top()
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=10, pad=24 if col_names is not None else 6)
    fig.tight_layout()
    return _finish(fig, path)


def plot_node_samples(
    model: ClusterEstimator,
    nodes: Sequence[int] | None = None,
    n: int = 8,
    data: Dataset | torch.Tensor | np.ndarray | None = None,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    seed: int | None = 0,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """``n`` data generated from each of ``nodes`` (default: every node the model can sample,
    in depth-first order), one row per node (:func:`pyro_hc.inspect.sample_node`). With labelled
    ``data`` each row also names the majority class of the node's data and its share."""
    _check_model(model, "plot_node_samples")
    tree = model.tree
    if nodes is None:
        nodes = []
        for node in tree.subtree(tree.root):
            try:
                sample_node(model, node, 1, seed=0)
                nodes.append(node)
            except (TypeError, ValueError):
                continue
        if not nodes:
            raise TypeError(f"{type(model).__name__} has no node it can generate data from")
    rows = [sample_node(model, node, n, seed=None if seed is None else seed + i) for i, node in enumerate(nodes)]
    names = [f"node {node}\n(level {tree.level(node)})" for node in nodes]
    if data is not None:
        stats = node_statistics(model, data, labels)
        names = [name + (f"\nmostly {_class_name(class_names, stats[node]['majority'])} "
                         f"({100 * stats[node]['purity']:.0f}%)" if "majority" in stats[node] else "")
                 for name, node in zip(names, nodes)]
    return _image_grid(rows, names, None, title or f"{type(model).__name__}: data generated from each node", path)


def plot_level_reconstructions(
    model: ClusterEstimator,
    data: Dataset | torch.Tensor | np.ndarray,
    n: int = 8,
    seed: int | None = 0,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """``n`` random data, each beside the decoded node means along its path, root to leaf
    (:func:`pyro_hc.inspect.reconstruct_by_level`)."""
    _check_model(model, "plot_level_reconstructions")
    chosen, _ = _subsample(data, None, n, seed)
    x = as_tensor(chosen).cpu()
    if x.dim() == 2 and model.data_spec_.image_shape is not None:
        x = x.reshape(x.shape[0], *model.data_spec_.image_shape)
    nodes, images = reconstruct_by_level(model, chosen)
    rows = [torch.cat([x[i:i + 1], images[i]]) for i in range(x.shape[0])]
    names = ["path " + "-".join(map(str, dict.fromkeys(nodes[i].tolist()))) for i in range(x.shape[0])]
    cols = ["datum"] + [f"level {level}" for level in range(images.shape[1])]
    return _image_grid(rows, names, cols, title or f"{type(model).__name__}: each datum and its path's node "
                                                   "means, root to leaf", path)
