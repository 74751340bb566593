"""HCRL's Table 1 on MNIST (test NLL and reconstruction error), and each model's tree at one budget.

The paper (Shin, Song & Moon, AAAI 2020, Table 1; ten replications) reports on MNIST the test
negative log-likelihood, "estimated with 100 samples", and the reconstruction error (RE):

    VAE 230.71 / 10.46, VaDE 217.20 / 10.35, VAE-nCRP-L3 718.78 / 32.67, VAE-nCRP-L4 721.00 / 32.53,
    HCRL1-L3 209.59 / 9.28, HCRL1-L4 212.31 / 8.31, HCRL2-L3 203.24 / 8.70, HCRL2-L4 203.91 / 8.16.

Choices where the paper is silent (it gives no network, budget, binarisation or estimator):

- **grey levels**, scored by the Bernoulli likelihood (binary cross-entropy on intensities in
  [0, 1], as VaDE's code does): REs of 8–12 squared-error units per image are grey-level errors
  (binarised images give about 20). ``--binarise`` thresholds at 0.5 instead, as an earlier
  version of this script did. A grey-level Bernoulli NLL includes the pixels' own entropy, so it
  is not comparable with binarised-MNIST NLLs from other papers.
- every model has the same encoder / decoder (``--hidden-dims``), the same autoencoder
  pretraining (``--pretrain-epochs``; the VAE too: "pretrained like the others") and the same
  SVI epochs; the nCRP models run their own defaults (structure search included) at depths
  ``--depths``; VaDE has 10 clusters.
- two estimators of ``-log p(x)`` with ``--nll-samples`` draws each (``negative_log_likelihood``):
  the IWAE bound (``z`` from the encoder; ``test_nll``) and ``z`` drawn from the model's prior
  (``test_nll_prior``), which at 100 draws is far looser; it tests whether the paper's scale
  (200+ nats where IWAE gives about 80 on binarised MNIST) comes from such an estimator.
- RE: squared error per image between the image and its reconstruction at the encoder mean.

Clustering (every model but the VAE) is scored on all 70,000 images (train and test): the leaves'
ACC / NMI, the tree cut to 10 nodes (:func:`pyro_hc.metrics.cut_assignments`, heaviest node
first; DeepECT's ``predict(x, n_clusters=10)`` is the same idea for its binary tree; a tree with
more than 10 nodes below the root has no such cut and scores as one cluster; ``*_at_10_partial``:
the cut that expands the heaviest node in part when all of its children do not fit, exactly 10
clusters), the partition by the
root's children (``top_level_nodes`` of them), dendrogram
and leaf purity, and the two-stage baseline measured in the same run on the model's own
embedding: k-means into 10 clusters + Ward linkage (for VaDE this is the "VaDE + Ward" row of
issue 15's acceptance). Rows are per (seed, model); the Markdown table gives the mean over seeds.

    python benchmarks/hcrl_mnist.py --seeds 3                                  # the full table
    python benchmarks/hcrl_mnist.py --models vade,hcrl2 --depths 3 --seeds 1 --epochs 15 \\
        --pretrain-epochs 5 --label cpu_reduced                              # a CPU budget
    python benchmarks/hcrl_mnist.py --models hcrl2 --depths 3 --first-seed 1 --seeds 1 ...  # seed 1 alone

Every finished (seed, model) row goes to ``<out>.rows.jsonl`` with its budget, and every fit
checkpoints under ``--workdir``: the same command run again after a stop reads the rows back and
resumes the fit that was running.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyro
import torch

import pyro_hc
from pyro_hc import metrics
from pyro_hc.baselines import kmeans_ward_tree
from pyro_hc.data import Dataset
from pyro_hc.report import ResultRows, machine_record, write_record

#: Table 1, MNIST: (NLL, RE), means over ten replications
PAPER = {"vae": (230.71, 10.46), "vade": (217.20, 10.35), "vae_ncrp-L3": (718.78, 32.67),
         "vae_ncrp-L4": (721.00, 32.53), "hcrl1-L3": (209.59, 9.28), "hcrl1-L4": (212.31, 8.31),
         "hcrl2-L3": (203.24, 8.70), "hcrl2-L4": (203.91, 8.16)}
TREE_MODELS = ("vae_ncrp", "hcrl1", "hcrl2")
N_CLASSES = 10


def subset(data: Dataset, n: int | None, seed: int, binarise: bool) -> Dataset:
    """The first ``n`` images of a seeded permutation (all of them when ``n`` is None), grey or binarised."""
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    x = data.x[index]
    return Dataset(x=(x > 0.5).float() if binarise else x, y=data.y[index],
                   name=f"{data.name}{'_binarised' if binarise else ''}", likelihood="bernoulli",
                   n_classes=data.n_classes)


def clustering_scores(model, data: Dataset, seed: int) -> dict:
    """Leaves, the 10-node cut and the own-embedding k-means + Ward baseline, on ``data``."""
    labels = data.y.numpy()
    leaves = model.predict(data).numpy()
    cut = metrics.cut_assignments(model.tree, leaves, N_CLASSES)
    partial = metrics.cut_assignments(model.tree, leaves, N_CLASSES, partial=True)
    tree = model.tree
    top = {leaf: tree.ancestors(leaf)[min(1, tree.level(leaf))] for leaf in set(leaves.tolist())}  # level-1 ancestor
    top_level = np.array([top[leaf] for leaf in leaves])
    ward_tree, ward = kmeans_ward_tree(model.transform(data).numpy(), N_CLASSES, seed=seed)
    return {
        "acc": metrics.cluster_acc(labels, leaves), "nmi": metrics.nmi(labels, leaves),
        "acc_at_10": metrics.cluster_acc(labels, cut), "nmi_at_10": metrics.nmi(labels, cut),
        "clusters_at_10": int(len(np.unique(cut))),
        # exactly 10 clusters: the heaviest node expanded in part when all of its children do not fit
        "acc_at_10_partial": metrics.cluster_acc(labels, partial), "nmi_at_10_partial": metrics.nmi(labels, partial),
        "top_level_nodes": len(tree.children(tree.root)),
        "acc_top_level": metrics.cluster_acc(labels, top_level), "nmi_top_level": metrics.nmi(labels, top_level),
        "dendrogram_purity": metrics.dendrogram_purity(model.tree, leaves, labels),
        "leaf_purity": metrics.leaf_purity(model.tree, leaves, labels),
        "own_kmeans_ward_dp": metrics.dendrogram_purity(ward_tree, ward, labels),
        "own_kmeans_ward_acc": metrics.cluster_acc(labels, ward), "own_kmeans_ward_nmi": metrics.nmi(labels, ward),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vae,vade,vae_ncrp,hcrl1,hcrl2")
    parser.add_argument("--depths", default="3,4", help="tree depths (levels, root included) of the nCRP models")
    parser.add_argument("--seeds", type=int, default=3, help="how many model seeds: first-seed .. first-seed + seeds - 1")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first model seed (a later seed alone, or more seeds for a table already written)")
    parser.add_argument("--n-train", type=int, default=None, help="training images (default: all 60,000)")
    parser.add_argument("--n-test", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--binarise", action="store_true", help="threshold the images at 0.5 (default: grey levels)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--hidden-dims", default="500,500,2000")
    parser.add_argument("--nll-samples", type=int, default=100)
    parser.add_argument("--tree-settings", type=json.loads, default={},
                        help='JSON settings for the nCRP models beyond depth and network, e.g. \'{"init_tree": "embedding"}\'')
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each training step from a CUDA graph (GPU only; see SVIEngine)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="fit nothing: write the table of the rows already in <out>.rows.jsonl (a run still going)")
    parser.add_argument("--rescore-from", default=None,
                        help="fit nothing: score the finished fits of another run again with this build's predict "
                             "(its <out>.rows.jsonl and checkpoint folder); the NLL and RE columns are copied")
    parser.add_argument("--label", default=None,
                        help="names the result files (default: the device, plus '_reduced' below the full budget)")
    parser.add_argument("--workdir", default=None,
                        help="fit checkpoints (default: <out> without its suffix, plus '_work')")
    parser.add_argument("--out", default=None, help="result path (default benchmarks/results/hcrl_mnist_<label>.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden = tuple(int(h) for h in args.hidden_dims.split(","))
    device = pyro_hc.infer.resolve_device(args.device)
    full_budget = (args.seeds >= 3 and args.n_train is None and args.n_test is None and args.epochs >= 100
                   and args.pretrain_epochs >= 20 and hidden == (500, 500, 2000))
    label = args.label or f"{device.type}{'' if full_budget else '_reduced'}"
    out = Path(args.out or f"benchmarks/results/hcrl_mnist_{label}.json")
    workdir = Path(args.workdir or f"{out.with_suffix('')}_work")

    shared = dict(latent_dim=args.latent_dim, hidden_dims=hidden, pretrain_epochs=args.pretrain_epochs)
    runs: list[tuple[str, str, dict]] = []  # (row label, registry name, constructor settings)
    for name in (n.strip() for n in args.models.split(",")):
        if name in TREE_MODELS:
            runs += [(f"{name}-L{d}", name, dict(depth=d, **shared, **args.tree_settings))
                     for d in map(int, args.depths.split(","))]
        elif name == "vade":
            runs.append((name, name, dict(n_clusters=N_CLASSES, **shared)))
        elif name == "vae":
            runs.append((name, name, dict(shared)))
        else:
            parser.error(f"unknown model {name!r}; choose from vae, vade, {', '.join(TREE_MODELS)}")

    budget_key = {k: getattr(args, k) for k in ("n_train", "n_test", "binarise", "epochs", "pretrain_epochs",
                                                 "batch_size", "latent_dim", "hidden_dims", "nll_samples",
                                                 "tree_settings")}
    done = ResultRows(out.with_suffix(".rows.jsonl"), budget_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (args.report_only or args.rescore_from):
        workdir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    data_seed = 0  # the same images for every model seed
    train = subset(pyro_hc.load_dataset("mnist", split="train"), args.n_train, data_seed, args.binarise)
    test = subset(pyro_hc.load_dataset("mnist", split="test"), args.n_test, data_seed, args.binarise)
    everything = Dataset(x=torch.cat([train.x, test.x]), y=torch.cat([train.y, test.y]), name=train.name,
                         likelihood="bernoulli", n_classes=train.n_classes)

    per_seed: dict[str, list[dict]] = {row_label: [] for row_label, _, _ in runs}
    if args.rescore_from is not None:  # the earlier run's rows and checkpoints
        source = Path(args.rescore_from)
        earlier_rows = ResultRows(source.with_suffix(".rows.jsonl"), budget_key)
        earlier_workdir = Path(args.workdir or f"{source.with_suffix('')}_work")
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for row_label, name, settings in runs:
            saved = done.get(seed, row_label)
            if saved is not None:
                per_seed[row_label].append(saved)
                print(json.dumps({"seed": seed, "model": row_label, "resumed": True}), flush=True)
                continue
            if args.report_only:
                continue
            checkpoint = workdir / f"{row_label}-seed{seed}.ckpt"
            if args.rescore_from is not None:
                earlier = earlier_rows.get(seed, row_label)
                checkpoint = earlier_workdir / checkpoint.name
                if earlier is None or not checkpoint.exists():
                    print(json.dumps({"seed": seed, "model": row_label, "rescored": False}), flush=True)
                    continue
                model = pyro_hc.get_model(name, **settings).fit(  # a finished fit resumes without a step
                    train, epochs=args.epochs, batch_size=args.batch_size, device=device, seed=seed,
                    progress=False, checkpoint=checkpoint, resume=True)
                row = dict(earlier, rescored_from=str(source))
                if name != "vae":
                    row.update(clustering_scores(model, everything, seed))
                per_seed[row_label].append(row)
                print(json.dumps({"seed": seed, "model": row_label, **row}), flush=True)
                done.append(seed, row_label, row)
                continue
            began = time.perf_counter()
            model = pyro_hc.get_model(name, **settings).fit(
                train, epochs=args.epochs, batch_size=args.batch_size, device=device, seed=seed,
                progress=not args.no_progress, cuda_graphs=args.cuda_graphs, checkpoint=checkpoint,
                resume=checkpoint.exists())
            row = {"fit_seconds": time.perf_counter() - began, "n_leaves": len(model.tree.leaves())}
            began = time.perf_counter()
            pyro.set_rng_seed(seed)
            row["test_nll"] = model.negative_log_likelihood(test, num_samples=args.nll_samples)
            row["test_nll_prior"] = model.negative_log_likelihood(test, num_samples=args.nll_samples,
                                                                  proposal="prior")
            row["test_re"] = model.reconstruction_error(test)
            if name != "vae":
                row.update(clustering_scores(model, everything, seed))
            row["eval_seconds"] = time.perf_counter() - began
            per_seed[row_label].append(row)
            print(json.dumps({"seed": seed, "model": row_label, **row}), flush=True)
            done.append(seed, row_label, row)  # (the checkpoint stays: it loads as the fitted model)

    results = []
    for row_label, rows in per_seed.items():
        if not rows:  # (--report-only: not measured yet)
            continue
        # (numbers every seed's row has: a row from an older version of this script may lack a column)
        keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and all(k in r for r in rows)]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        std = {k: float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else float("nan") for k in keys}
        paper = PAPER.get(row_label)
        results.append({"model": row_label, "seeds": len(rows), "mean": mean, "std": std, "per_seed": rows,
                        "paper": None if paper is None else {"test_nll": paper[0], "test_re": paper[1]}})
    record = {
        "benchmark": "hcrl_mnist", "budget_label": "full" if full_budget else "reduced",
        **machine_record(device),
        "budget": {**budget_key, "seeds": args.seeds, "first_seed": args.first_seed},
        "data": {"train": len(train), "test": len(test), "clustering_scored_on": len(everything),
                 "grey_levels": not args.binarise},
        "seconds": time.perf_counter() - started, "results": results,
    }

    def cell(result: dict, key: str) -> str:
        if key not in result["mean"]:
            return ""
        value, spread = result["mean"][key], result["std"][key]
        return f"{value:.3f}" + ("" if np.isnan(spread) else f" ± {spread:.3f}")

    columns = ["test_nll", "test_nll_prior", "test_re", "n_leaves", "acc", "nmi", "acc_at_10", "nmi_at_10",
               "acc_at_10_partial",
               "top_level_nodes", "nmi_top_level", "dendrogram_purity", "own_kmeans_ward_dp", "fit_seconds"]
    lines = [f"# HCRL Table 1, MNIST ({'grey levels' if not args.binarise else 'binarised'}, Bernoulli decoder)"
             + ("" if full_budget else " — REDUCED BUDGET")
             + (" — PARTIAL: the rows measured so far (--report-only)" if args.report_only else ""), "",
             f"Device {record['device']} ({record['device_name']}, {record['cpu_threads']} thread(s)); "
             f"{len(train)} training / {len(test)} test images; budget {record['budget']}; "
             f"{record['seconds']:.0f} s in this run. Mean ± sd over the seeds; the paper's (NLL, RE) in the "
             "second column. Clustering scored on all train + test images; `own_kmeans_ward_dp`: k-means "
             "(10) + Ward on the model's own embedding.", "",
             f"Command: `{record['command']}`", "",
             "| model | seeds | paper NLL / RE | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for result in results:
        paper = result["paper"]
        paper_cell = "" if paper is None else f"{paper['test_nll']} / {paper['test_re']}"
        lines.append(f"| {result['model']} | {result['seeds']} | {paper_cell} | "
                     + " | ".join(cell(result, c) for c in columns) + " |")
    write_record(out, record, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
