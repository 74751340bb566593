"""HCRL2 on the bundled 8x8 digits: is the gap to a two-stage tree in its leaves or in its grouping?

Fits HCRL2 with tutorial 06's network and budget (depth 3, latent 6, 256-128, 20 pretraining and
40 SVI epochs, batch 64) under one or more settings (``--variants``, JSON: name -> settings on top of
the base) and seeds, and scores every fit's tree beside four trees read off the same fit:

* **own tree**: the model's tree and leaves (``predict``), dendrogram purity (DP), NMI, ACC;
* **own leaves, flat**: the same leaves all under one root (no grouping at all);
* **own leaves + Ward**: the same leaves linked by Ward's method on their centroids in the model's
  embedding (:func:`pyro_hc.baselines.leaves_ward_tree`): the best a grouping could add to them;
* **k-means + Ward** on the model's own embedding with as many leaves (the two-stage baseline), and
  its leaves flat.

own tree → own leaves + Ward is what the grouping loses; own leaves + Ward → k-means + Ward is what
the leaves lose. Also the number of leaves and of level-1 nodes (a tree with one level-1 node
groups nothing).

    python benchmarks/hcrl_digits.py --seeds 3 --variants '{"default": {}, "embedding": {"init_tree": "embedding"}}'
"""

from __future__ import annotations

import argparse
import json
import time

import networkx as nx
import numpy as np
import torch

import pyro_hc
from pyro_hc.baselines import kmeans_ward_tree, leaves_ward_tree
from pyro_hc.metrics import cluster_acc, dendrogram_purity, nmi
from pyro_hc.report import write_benchmark_result

#: tutorial 06's HCRL2 (its full run)
BASE = dict(depth=3, latent_dim=6, hidden_dims=(256, 128), pretrain_epochs=20, elbo_mean_coupling=1.0)


def flat_purity(leaves: np.ndarray, labels: np.ndarray) -> float:
    """DP of ``leaves`` all under one root."""
    star = nx.DiGraph()
    star.add_edges_from((-1, int(leaf)) for leaf in np.unique(leaves))
    return dendrogram_purity(star, leaves, labels)


def score_fit(model, data: pyro_hc.Dataset, seed: int) -> dict:
    labels = data.y.cpu().numpy()
    tree = model.tree
    leaves = model.predict(data).cpu().numpy()
    embedding = model.transform(data).cpu().numpy()
    n_leaves = len(tree.leaves())
    row = {"leaves": n_leaves, "level1_nodes": len(tree.children(tree.root)),
           "dp": dendrogram_purity(tree, leaves, labels), "nmi": nmi(labels, leaves), "acc": cluster_acc(labels, leaves),
           "own_leaves_flat_dp": flat_purity(leaves, labels)}
    if len(np.unique(leaves)) >= 2:
        relinked, relinked_leaves = leaves_ward_tree(embedding, leaves)
        row["own_leaves_ward_dp"] = dendrogram_purity(relinked, relinked_leaves, labels)
    if n_leaves >= 2:
        baseline, baseline_leaves = kmeans_ward_tree(embedding, n_leaves, seed=seed)
        row["kmeans_ward_dp"] = dendrogram_purity(baseline, baseline_leaves, labels)
        row["kmeans_flat_dp"] = flat_purity(baseline_leaves, labels)
        row["kmeans_nmi"] = nmi(labels, baseline_leaves)
    return row


def markdown(rows: list[dict]) -> str:
    def cell(row, key):
        return f"{row[key]:.3f}" if key in row else "–"

    lines = ["| variant | seed | leaves | level-1 nodes | own tree DP | NMI / ACC | own leaves flat | own leaves + Ward "
             "| k-means flat | k-means + Ward (own embedding) | k-means NMI | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['seed']} | {row['leaves']} | {row['level1_nodes']} | {row['dp']:.3f} "
                     f"| {row['nmi']:.3f} / {row['acc']:.3f} | {row['own_leaves_flat_dp']:.3f} "
                     f"| {cell(row, 'own_leaves_ward_dp')} | {cell(row, 'kmeans_flat_dp')} | {cell(row, 'kmeans_ward_dp')} "
                     f"| {cell(row, 'kmeans_nmi')} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default='{"default": {}}',
                        help="JSON object: variant name -> HCRL2 settings on top of tutorial 06's")
    parser.add_argument("--seeds", type=int, default=3, help="fit seeds 0 .. seeds-1")
    parser.add_argument("--n", type=int, default=None, help="a seeded subset of this many digits")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden-dims", default="256,128")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/hcrl_digits_cpu.json")
    args = parser.parse_args()
    try:
        variants = json.loads(args.variants)
    except json.JSONDecodeError as err:
        parser.error(f"--variants is not JSON: {err}")
    if not isinstance(variants, dict) or not variants or not all(isinstance(v, dict) for v in variants.values()):
        parser.error("--variants must be a JSON object of name -> settings object")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    base = dict(BASE, pretrain_epochs=args.pretrain_epochs,
                hidden_dims=tuple(int(h) for h in args.hidden_dims.split(",")))
    for name, settings in variants.items():  # a bad setting fails now, not after the first fits
        try:
            pyro_hc.get_model("hcrl2", **{**base, **settings})._validate_settings()
        except (TypeError, ValueError) as err:
            parser.error(f"variant {name!r}: {err}")
    data = pyro_hc.load_dataset("digits", n_samples=args.n)

    started = time.perf_counter()
    rows = []
    for name, settings in variants.items():
        for seed in range(args.seeds):
            clock = time.perf_counter()
            model = pyro_hc.get_model("hcrl2", **{**base, **settings}).fit(
                data, epochs=args.epochs, batch_size=args.batch_size, seed=seed, device=args.device, progress=False)
            row = {"variant": name, "settings": settings, "seed": seed, **score_fit(model, data, seed),
                   "seconds": time.perf_counter() - clock}
            rows.append(row)
            print(json.dumps(row), flush=True)

    budget = {"base": {k: list(v) if isinstance(v, tuple) else v for k, v in base.items()}, "n": len(data),
              "epochs": args.epochs, "batch_size": args.batch_size, "seeds": args.seeds}
    table = markdown(rows)
    write_benchmark_result(args.out, "hcrl_digits", str(pyro_hc.infer.resolve_device(args.device)),
                           time.perf_counter() - started, budget, rows, table)
    print(table)


if __name__ == "__main__":
    main()
