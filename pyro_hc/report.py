"""The learned tree as text for the terminal, and the two-stage baseline printed beside it.

:func:`format_tree` draws one line per node, indented by depth::

    node            size  majority     share of the data
    0               1797  3       10%  ████████████████████████
    ├─ 1             903  0       20%  ████████████
    │  ├─ 3          178  0       99%  ██▍
    ...

with the number of points in the node's subtree, their majority class and its share, and a bar
as long as the subtree's share of all points. :func:`baseline_comparison` scores k-means + Ward on
the raw features with as many leaves as the tree has, the reference every tree is measured against
(:func:`pyro_hc.baselines.kmeans_ward_tree`). ``pyro-hc fit`` and ``pyro-hc show`` print both.

Like :mod:`pyro_hc.metrics`, this module imports no model and no engine: it reads a tree, the node
each point is assigned to and the labels. :class:`ResultRows` keeps the finished rows of a long
benchmark (a paper's table on a CPU takes hours) so that a stopped run resumes where it was;
:func:`machine_record` names the machine and command behind a benchmark's numbers, and
:func:`write_record` writes its JSON record and Markdown table, atomically, for every script in
``benchmarks/``.
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from ._files import atomic_write
from .baselines import kmeans_ward_tree
from .tree import ClusterTree

__all__ = ["format_tree", "subtree_class_counts", "baseline_comparison", "format_comparison", "CHARSETS",
           "ResultRows", "machine_record", "write_record", "write_benchmark_result"]

#: connectors and bar blocks; "ascii" for terminals that cannot print box-drawing characters
CHARSETS: dict[str, dict[str, Any]] = {
    "unicode": {"branch": "├─ ", "last": "└─ ", "pipe": "│  ", "blank": "   ",
                "blocks": " ▏▎▍▌▋▊▉█"},
    "ascii": {"branch": "|- ", "last": "`- ", "pipe": "|  ", "blank": "   ", "blocks": " #"},
}


def _as_int_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D array of integers, got dtype {array.dtype} and shape {array.shape}")
    return array.astype(np.int64)


def subtree_class_counts(tree: ClusterTree, assignments: Any, labels: Any = None) -> dict[int, np.ndarray]:
    """The class counts of the points in every node's subtree (one count, all points, without labels).

    Parameters
    ----------
    tree : ClusterTree
    assignments : array-like of int, shape (N,)
        Node of each point (``model.predict``).
    labels : array-like of int, shape (N,), optional
        Class of each point.

    Returns
    -------
    dict
        ``node -> int64 [n_classes]`` (``[1]`` without labels), for every node of the tree.
    """
    assignments = _as_int_array(assignments, "assignments")
    nodes = tree.nodes()
    unknown = np.setdiff1d(np.unique(assignments), nodes)
    if unknown.size:
        raise ValueError(f"assignments name node(s) {unknown[:10].tolist()} that are not in the tree")
    if labels is None:
        classes = np.zeros_like(assignments)
        n_classes = 1
    else:
        classes = _as_int_array(labels, "labels")
        if classes.shape != assignments.shape:
            raise ValueError(f"labels and assignments differ in length: {classes.shape[0]} != {assignments.shape[0]}")
        if classes.size and classes.min() < 0:
            raise ValueError("labels must be non-negative")
        n_classes = int(classes.max()) + 1 if classes.size else 1
    row = {node: i for i, node in enumerate(nodes)}
    counts = np.zeros((len(nodes), n_classes), dtype=np.int64)
    np.add.at(counts, (np.searchsorted(np.asarray(nodes), assignments), classes), 1)  # nodes ascend
    for node in reversed(tree.subtree(tree.root)):  # children before parents
        parent = tree.parent(node)
        if parent is not None:
            counts[row[parent]] += counts[row[node]]
    return {node: counts[row[node]] for node in nodes}


def format_tree(
    tree: ClusterTree,
    assignments: Any = None,
    labels: Any = None,
    *,
    class_names: Sequence[str] | None = None,
    bar_width: int = 24,
    charset: str = "unicode",
) -> str:
    """The tree as indented text, one line per node (see the module docstring).

    Parameters
    ----------
    tree : ClusterTree
    assignments : array-like of int, shape (N,), optional
        Node of each point; without it only the shape of the tree is drawn.
    labels : array-like of int, shape (N,), optional
        Class of each point, for the majority column.
    class_names : sequence of str, optional
        ``class_names[label]`` is printed instead of the label.
    bar_width : int
        Characters of the bar of the root (all points).
    charset : {"unicode", "ascii"}
        Box-drawing characters and eighth-blocks, or plain ASCII.

    Returns
    -------
    str
        The lines, joined by newlines (no trailing newline).
    """
    if charset not in CHARSETS:
        raise ValueError(f"charset must be one of {sorted(CHARSETS)}, got {charset!r}")
    if bar_width < 1:
        raise ValueError(f"bar_width must be >= 1, got {bar_width}")
    chars = CHARSETS[charset]
    order = tree.subtree(tree.root)  # preorder, children ascending
    prefixes = {tree.root: ("", "")}  # node -> (prefix of its own line, prefix its children continue)
    for node in order:
        _, below = prefixes[node]
        children = tree.children(node)
        for k, child in enumerate(children):
            last = k == len(children) - 1
            prefixes[child] = (below + (chars["last"] if last else chars["branch"]),
                               below + (chars["blank"] if last else chars["pipe"]))
    names = [prefixes[node][0] + str(node) for node in order]
    name_width = max(len("node"), *(len(n) for n in names))
    n_leaves, n_nodes = len(tree.leaves()), len(tree)
    summary = (f"{n_nodes} node{'s' * (n_nodes != 1)}, {n_leaves} lea{'ves' if n_leaves != 1 else 'f'}, "
               f"depth {tree.depth()}")
    if assignments is None:
        return "\n".join([f"tree: {summary}", *names])

    counts = subtree_class_counts(tree, assignments, labels)
    total = int(counts[tree.root].sum())
    with_labels = labels is not None
    label_text = {}
    if with_labels:
        for node in order:
            best = int(np.argmax(counts[node]))
            name = class_names[best] if class_names is not None and best < len(class_names) else str(best)
            label_text[node] = name
    label_width = max([len("majority") - 5, *(len(t) for t in label_text.values())]) if with_labels else 0
    size_width = max(len("size"), len(str(total)))
    header = f"{'node':<{name_width}}  {'size':>{size_width}}"
    if with_labels:
        header += f"  {'majority':<{label_width + 5}}"
    header += "  share of the data"
    lines = [f"tree: {summary}; {total} point{'s' * (total != 1)}", header]
    blocks = chars["blocks"]
    for node, name in zip(order, names):
        size = int(counts[node].sum())
        line = f"{name:<{name_width}}  {size:>{size_width}}"
        if with_labels:
            if size:
                share = counts[node].max() / size
                line += f"  {label_text[node]:<{label_width}} {share:>4.0%}"
            else:
                line += f"  {'-':<{label_width}} {'':>4}"
        eighths = round(bar_width * (len(blocks) - 1) * size / total) if total else 0
        full, rest = divmod(eighths, len(blocks) - 1)
        bar = blocks[-1] * full + (blocks[rest] if rest else "")
        lines.append(f"{line}  {bar}".rstrip())
    return "\n".join(lines)


def baseline_comparison(tree: ClusterTree, assignments: Any, x: Any, labels: Any, seed: int = 0) -> dict[str, Any]:
    """Dendrogram purity of ``tree`` beside k-means + Ward on ``x`` with the same number of leaves.

    Parameters
    ----------
    tree, assignments : the model's tree and the node of each point.
    x : array-like, ``[N, ...]``
        The raw features (flattened here).
    labels : array-like of int, shape (N,)
    seed : int
        k-means' ``random_state``.

    Returns
    -------
    dict
        ``n_leaves``, ``dendrogram_purity`` (the tree's), ``baseline_dendrogram_purity``,
        ``baseline`` (its description) and ``seed``.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    labels = _as_int_array(labels, "labels")
    n_leaves = len(tree.leaves())
    if n_leaves < 2:
        raise ValueError("the tree has a single leaf; there is no hierarchy to compare")
    baseline_tree, baseline_leaves = kmeans_ward_tree(x, n_leaves, seed=seed)
    return {
        "n_leaves": n_leaves,
        "dendrogram_purity": metrics.dendrogram_purity(tree, assignments, labels),
        "baseline_dendrogram_purity": metrics.dendrogram_purity(baseline_tree, baseline_leaves, labels),
        "baseline": "k-means + Ward on the raw features",
        "seed": seed,
    }


def format_comparison(comparison: dict[str, Any], model_name: str = "model") -> str:
    """One line for :func:`baseline_comparison`: both purities and their difference."""
    ours, theirs = comparison["dendrogram_purity"], comparison["baseline_dendrogram_purity"]
    return (f"dendrogram purity with {comparison['n_leaves']} leaves: {model_name} {ours:.4f} | "
            f"{comparison['baseline']} {theirs:.4f} | difference {ours - theirs:+.4f}")


class ResultRows:
    """The finished ``(seed, model)`` rows of a benchmark, one JSON line each, with the budget they ran at.

    Every row is appended to ``path`` as soon as it is measured; a run started again with the same
    ``budget`` (any JSON-able dict: epochs, data size, network) reads the rows back instead of
    refitting them, while rows of another budget are ignored. ``benchmarks/hcrl_20newsgroups.py``
    and ``benchmarks/hcrl_mnist.py`` keep their tables this way.
    """

    def __init__(self, path: str | Path, budget: dict[str, Any]) -> None:
        self.path = Path(path)
        self.budget = json.loads(json.dumps(budget))  # as it reads back from the file
        self.rows: dict[tuple[int, str], dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                saved = json.loads(line)
                if saved.pop("budget", None) == self.budget:
                    self.rows[(saved.pop("seed"), saved.pop("model"))] = saved

    def get(self, seed: int, model: str) -> dict[str, Any] | None:
        """The saved row of ``(seed, model)`` at this budget, or None."""
        return self.rows.get((seed, model))

    def append(self, seed: int, model: str, row: dict[str, Any]) -> None:
        """Keep ``row`` and append it to the file (created with its folder if need be)."""
        self.rows[(seed, model)] = dict(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as rows_file:
            rows_file.write(json.dumps({"seed": seed, "model": model, "budget": self.budget, **row}) + "\n")


def machine_record(device: Any) -> dict[str, Any]:
    """Which machine measured a benchmark, and how it was called: the fields every result file carries.

    Parameters
    ----------
    device : str or torch.device
        The device the benchmark ran on (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Returns
    -------
    dict
        ``command`` (``python`` and ``sys.argv``, shell-quoted), ``device`` (as a string),
        ``device_name`` (the GPU's name on an available CUDA device, else the processor or, where
        the platform names none, the architecture), ``processor``, ``cpu_threads`` (torch's), and
        the ``torch`` and ``pyro`` versions.
    """
    import pyro
    import torch

    device = str(device)
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    return {
        "command": shlex.join(["python", *sys.argv]), "device": device,
        "device_name": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
        "processor": platform.processor(), "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "pyro": pyro.__version__,
    }


def write_record(out: str | Path, record: dict[str, Any], markdown: str | None = None) -> None:
    """Write a benchmark's JSON ``record`` to ``out`` and its ``markdown`` beside it (``.md``), atomically.

    Each file goes through :func:`~pyro_hc._files.atomic_write`: a run stopped while it writes (or a
    value JSON cannot encode) leaves the previous file whole, never half a file. The JSON is indented,
    keeps non-ASCII characters, and writes NumPy scalars as floats. ``markdown`` is written as given
    (end it with a newline); without it only the JSON is written. Parent folders are created.
    """
    out = Path(out)
    atomic_write(out, lambda handle: json.dump(record, handle, indent=2, ensure_ascii=False, default=float),
                 text=True)
    if markdown is not None:
        atomic_write(out.with_suffix(".md"), lambda handle: handle.write(markdown), text=True)


def write_benchmark_result(out: str | Path, benchmark: str, device: str, seconds: float, budget: dict[str, Any],
                           results: list[dict[str, Any]], table: str) -> dict[str, Any]:
    """Write a benchmark's JSON record to ``out`` and its Markdown table beside it (``.md``), atomically.

    The record names the command line, the device and the machine (:func:`machine_record`), the wall
    ``seconds``, the ``budget`` and the ``results`` rows: what a reader needs to know on which device
    and budget a number was measured. Written by :func:`write_record`; returns it.
    """
    record = {"benchmark": benchmark, **machine_record(device), "seconds": seconds, "budget": budget,
              "results": results}
    write_record(out, record, f"device {device} ({record['cpu_threads']} thread(s)), {seconds:.0f} s, "
                              f"budget {budget}\n\n{table}\n")
    return record
