"""Hierarchy recovery on `synthetic_tree` data: the tree models against two-stage baselines.

Three coarse clusters of three fine clusters each (``synthetic_tree(depth=2, branching=3)``),
drawn at several noise levels and mapped to 50 features by the data set's fixed random decoder.
Each tree model (HCRL2, HCRL1, VAE-nCRP, DeepECT) grows its own tree on the raw features; the table reports the dendrogram
purity of its tree against the true leaf labels, the micro-averaged F-score of its nodes against
every node of the true hierarchy (HCRL's Table 2 measure; coarse groups count), NMI and the
number of leaves, averaged over seeds. The baselines are the pipeline the HCRL paper argues against (its Table 2 compares
HKM, and VaDE + HKM): k-means into the true number of leaves, then Ward linkage of the
centroids (:func:`pyro_hc.hierarchy.kmeans_ward_tree`) —

- on the raw features (``kmeans+ward``),
- on a VaDE embedding fitted with the same network (``vade+ward``, the paper's pipelined
  "VaDE + clustering" rows),
- on the true latent points before the decoder (``oracle: latent kmeans+ward``): what a perfect
  encoder plus the baseline would reach.

All baselines are given the true number of leaves; the tree models are not.

    python benchmarks/hierarchy_recovery.py --noise 0.5 0.75 1.0 --seeds 3

Writes JSON and a Markdown table next to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import pyro
import torch

import pyro_hc
from pyro_hc.baselines import kmeans_ward_tree
from pyro_hc.metrics import dendrogram_purity, hierarchical_f_score, nmi

#: the true tree: 3 coarse clusters of 3 fine clusters
DATA_DEPTH, BRANCHING = 2, 3
#: the leaf-heavy level prior of the recovery test: synthetic_tree emits from its leaves only
LEAF_HEAVY = (0.1, 0.2, 8.0)


def model_configs(hidden: tuple[int, ...], latent_dim: int, pretrain_epochs: int, n_leaves: int) -> dict[str, dict]:
    """The tree models, one configuration each (nCRP depth 3: root, coarse, fine).

    DeepECT may grow to twice the true number of leaves (its paper allows 20 for 10 classes), one
    split every 40 steps, with the learning rate of a small network.
    """
    shared = dict(latent_dim=latent_dim, hidden_dims=hidden, pretrain_epochs=pretrain_epochs)
    ncrp = dict(depth=3, lock_epochs=5, stick_concentration=3.0, **shared)
    return {
        "hcrl2": dict(name="hcrl2", level_concentration=LEAF_HEAVY, **ncrp),
        "hcrl2 (symmetric α=1)": dict(name="hcrl2", level_concentration=1.0, **ncrp),
        "hcrl1": dict(name="hcrl1", level_concentration=LEAF_HEAVY, **ncrp),
        "vae_ncrp": dict(name="vae_ncrp", depth=3, **shared),
        "deepect": dict(name="deepect", max_leaves=2 * n_leaves, grow_interval=40, lr=1e-3, pretrain_lr=1e-3,
                        **shared),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 0.75, 1.0],
                        help="standard deviations of the points around their leaf mean (latent space)")
    parser.add_argument("--separation", type=float, default=4.0, help="root-to-coarse distance; halves below")
    parser.add_argument("--n-per-leaf", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3, help="model seeds 0 .. seeds-1 (the data seed is 0)")
    parser.add_argument("--models", default="hcrl2,hcrl2 (symmetric α=1),hcrl1,vae_ncrp,deepect,vade+ward",
                        help="comma-separated subset of the default")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--hidden-dims", default="64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (tiny networks: 1 is fastest)")
    parser.add_argument("--out", default="benchmarks/results/hierarchy_recovery.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hidden = tuple(int(h) for h in args.hidden_dims.split(","))
    configs = model_configs(hidden, args.latent_dim, args.pretrain_epochs, n_leaves=BRANCHING**DATA_DEPTH)
    names = [name.strip() for name in args.models.split(",")]
    unknown = sorted(set(names) - set(configs) - {"vade+ward"})
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(configs) + ['vade+ward']}")

    rows = []
    for noise in args.noise:
        data = pyro_hc.synthetic_tree(depth=DATA_DEPTH, branching=BRANCHING, noise=noise, separation=args.separation,
                                      n_per_leaf=args.n_per_leaf, seed=0)
        labels = data.y.numpy()

        def scores(name: str, tree, assigned) -> dict:
            return {"model": name, "dendrogram_purity": dendrogram_purity(tree, assigned, labels),
                    "hierarchical_f_score": hierarchical_f_score(tree, assigned, labels, label_tree=data.tree),
                    "nmi": nmi(labels, assigned), "n_leaves": len(tree.leaves())}

        def baseline_row(name: str, points: torch.Tensor, seed: int) -> dict:
            tree, leaves = kmeans_ward_tree(points, data.n_classes, seed=seed)
            return scores(name, tree, leaves)

        runs = {"kmeans+ward": [baseline_row("kmeans+ward", data.flat(), seed) for seed in range(args.seeds)],
                "oracle: latent kmeans+ward": [baseline_row("oracle", data.latent, seed)
                                               for seed in range(args.seeds)]}
        for name in names:
            runs[name] = []
            for seed in range(args.seeds):
                if name == "vade+ward":
                    vade = pyro_hc.get_model("vade", n_clusters=data.n_classes, latent_dim=args.latent_dim,
                                             hidden_dims=hidden, pretrain_epochs=args.pretrain_epochs)
                    vade.fit(data, epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                             device=args.device, progress=False)
                    row = baseline_row(name, vade.transform(data), seed)
                else:
                    config = dict(configs[name])
                    model = pyro_hc.get_model(config.pop("name"), **config)
                    model.fit(data, epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                              device=args.device, progress=False)
                    row = scores(name, model.tree, model.predict(data).cpu().numpy())
                runs[name].append(row)
        for name, per_seed in runs.items():
            purity = [r["dendrogram_purity"] for r in per_seed]
            summary = {"noise": noise, "model": name, "dendrogram_purity": float(np.mean(purity)),
                       "dendrogram_purity_per_seed": purity,
                       "hierarchical_f_score": float(np.mean([r["hierarchical_f_score"] for r in per_seed])),
                       "nmi": float(np.mean([r["nmi"] for r in per_seed])),
                       "n_leaves": [r["n_leaves"] for r in per_seed]}
            rows.append(summary)
            print(json.dumps(summary), flush=True)

    record = {
        "benchmark": "hierarchy_recovery", "device": str(pyro_hc.infer.resolve_device(args.device)),
        "device_name": platform.machine(), "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "pyro": pyro.__version__,
        "budget": {k: getattr(args, k) for k in ("separation", "n_per_leaf", "seeds", "epochs", "pretrain_epochs",
                                                  "batch_size", "latent_dim", "hidden_dims")},
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False))
    lines = ["| noise | model | dendrogram purity (mean) | per seed | hierarchical F | NMI | leaves |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        per_seed = ", ".join(f"{p:.2f}" for p in row["dendrogram_purity_per_seed"])
        lines.append(f"| {row['noise']} | {row['model']} | {row['dendrogram_purity']:.3f} | {per_seed} | "
                     f"{row['hierarchical_f_score']:.3f} | {row['nmi']:.3f} | {row['n_leaves']} |")
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(f"device {record['device']}, budget {record['budget']}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
