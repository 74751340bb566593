"""HCRL's Table 2 on 20 Newsgroups: the hierarchical F-score of each model's tree at depth 4.

The paper (Shin, Song & Moon, AAAI 2020, Table 2; 10 replications, 95 % intervals) reports on
20 Newsgroups at depth four: HCRL2 0.601 ± 0.097, HCRL1 0.566 ± 0.048, VAE-nCRP 0.558 ± 0.027,
VaDE + HKM 0.485 ± 0.056 and HKM 0.410 ± 0.043. This script fits the same models on
``load_dataset("20newsgroups")`` (DEC's TF-IDF features of the 2,000 most frequent terms, Gaussian
likelihood; see :mod:`pyro_hc.data`) and scores every tree with
:func:`pyro_hc.metrics.hierarchical_f_score` against the topic hierarchy of the group names
(``Dataset.tree``: root, ``comp``, ``comp.sys``, ``comp.sys.ibm.pc.hardware``; every node of it is a
true cluster, so coarse groups count), the micro-averaged F-score the paper takes from Xie et al.

Rows:

- ``hcrl2``, ``hcrl1``, ``vae_ncrp``: depth 4 (the root and three levels), their own structure
  search, not told the number of groups; at their defaults, or with ``--tree-settings`` (a JSON
  object of constructor settings), which then name their rows (``hcrl2 elbo_coarsening=3000``), so
  a variant's rows sit beside the defaults' in one rows file and reuse its baseline rows;
- ``vade+hkm`` and ``vade+ward``: a VaDE with 20 clusters, then hierarchical k-means (the paper's
  HKM, Nister & Stewenius 2006: k-means with ``--hkm-branching`` children per node, recursively,
  ``--hkm-levels`` levels deep) or k-means into 20 leaves + Ward linkage of the centroids, on its
  embedding;
- ``hkm`` and ``kmeans+ward``: the same two on the raw TF-IDF features.

Beside every nCRP row, the two-stage trees on that model's own embedding (``transform``): its own
leaves linked by Ward's method, k-means into 20 leaves + Ward, and HKM, so that a reader sees whether
a gap is the representation (all three low) or the tree (its own leaves + Ward above its tree). With
``--objective-check`` the HCRL rows also give the structure ELBO (``HCRL.structure_elbo``) of their
own tree, of k-means + Ward cut to depth 4 and of the true hierarchy: whether the search missed a tree
its objective prefers, or the objective prefers another tree than the true one.

The paper does not give its networks, epochs or HKM branching (they are in a supplement we do not
have); the defaults here are VaDE's text network (``2000-500-500-2000-10``) and HCRL's own epoch
defaults. Each row is the mean over ``--seeds`` model seeds with a Student-t 95 % interval. The two
VaDE rows share one VaDE fit per seed, timed in the first of them.

    python benchmarks/hcrl_20newsgroups.py --device cuda                     # the full run: 5 seeds
    python benchmarks/hcrl_20newsgroups.py --seeds 1 --epochs 3 --pretrain-epochs 2 \\
        --hidden-dims 256 --label cpu_reduced                                  # a CPU check

Writes ``<out>.json`` and ``<out>.md`` with the paper's numbers beside ours, the device and the budget.
Every finished (seed, model) row also goes to ``<out>.rows.jsonl`` with its budget: the same command
run again after a stop (a CPU run takes hours) reads those rows back and fits only what is missing,
and every fit checkpoints under ``--workdir`` at each epoch's end, so the fit that was running resumes
where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import pyro_hc
from pyro_hc.baselines import (best_ward_cut, hierarchical_kmeans_tree, kmeans_leaves, kmeans_ward_tree,
                                label_tree_groups, leaves_ward_tree)
from pyro_hc.metrics import dendrogram_purity, hierarchical_f_score, nmi
from pyro_hc.report import ResultRows, machine_record, write_record

#: HCRL's Table 2, 20Newsgroups column: mean and 95 % half-width over 10 replications
PAPER = {"hcrl2": (0.601, 0.097), "hcrl1": (0.566, 0.048), "vae_ncrp": (0.558, 0.027),
         "vade+hkm": (0.485, 0.056), "hkm": (0.410, 0.043)}
MODELS = ("hcrl2", "hcrl1", "vae_ncrp", "vade+hkm", "vade+ward", "hkm", "kmeans+ward")
NCRP_MODELS = ("hcrl2", "hcrl1", "vae_ncrp")
DEPTH = 4  # the root and three levels, the paper's "depth of four"


def objective_scores(model, data: pyro_hc.Dataset, n_leaves: int, seed: int) -> dict[str, float]:
    """HCRL's structure ELBO (``structure_elbo``, every datum on its leaf) on its own embedding: of its
    tree, of k-means into ``n_leaves`` leaves under Ward's linkage (the level-1 count that scores
    highest, the level below at an even fan-out) and of the true topic hierarchy."""
    _, kmeans = best_ward_cut(*kmeans_leaves(model.transform(data), n_leaves, seed), DEPTH,
                              lambda groups: model.structure_elbo(data, groups))
    true = model.structure_elbo(data, label_tree_groups(data.tree, data.y.numpy(), DEPTH))
    return {"own": model.structure_elbo(data), "k-means + Ward": kmeans, "true": true}


def interval(values: list[float]) -> float:
    """Half-width of the Student-t 95 % interval of the mean (nan for one value)."""
    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of the default")
    parser.add_argument("--seeds", type=int, default=5, help="model seeds 0 .. seeds-1")
    parser.add_argument("--split", default="all", choices=("all", "train", "test"))
    parser.add_argument("--n", type=int, default=None, help="a fixed random subset of this many documents")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--pretrain-epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--hidden-dims", default="500,500,2000")
    parser.add_argument("--tree-settings", type=json.loads, default={},
                        help="JSON settings of the nCRP models beyond depth and network, e.g. "
                             "'{\"elbo_coarsening\": 3000}'; their rows and checkpoints are named by them")
    parser.add_argument("--hkm-branching", type=int, default=3, help="HKM's children per node")
    parser.add_argument("--hkm-levels", type=int, default=DEPTH - 1, help="HKM's levels below the root")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="fit nothing: write the table of the rows already in <out>.rows.jsonl (a run still going)")
    parser.add_argument("--label", default=None,
                        help="names the result files (default: the device, plus '_reduced' below the full budget)")
    parser.add_argument("--workdir", default=None,
                        help="fit checkpoints (default: <out> without its suffix, plus '_work')")
    parser.add_argument("--objective-check", action="store_true",
                        help="score each HCRL fit's tree, k-means + Ward's and the true hierarchy with its "
                             "structure ELBO")
    parser.add_argument("--out", default=None, help="result path (default benchmarks/results/hcrl_20newsgroups_<label>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [name.strip() for name in args.models.split(",")]
    if set(names) - set(MODELS):
        parser.error(f"unknown models {sorted(set(names) - set(MODELS))}; choose from {list(MODELS)}")
    if not isinstance(args.tree_settings, dict):
        parser.error(f"--tree-settings must be a JSON object, got {args.tree_settings!r}")
    for name in sorted(set(names) & set(NCRP_MODELS)):  # a setting a model does not take fails now, not after hours
        unknown = set(args.tree_settings) - set(pyro_hc.get_model(name).get_params())
        if unknown:
            parser.error(f"--tree-settings: {name} has no setting {sorted(unknown)}; leave it out of --models")
    hidden = tuple(int(h) for h in args.hidden_dims.split(","))
    device = pyro_hc.infer.resolve_device(args.device)
    full_budget = (args.seeds >= 5 and args.n is None and args.split == "all" and args.epochs >= 100
                   and args.pretrain_epochs >= 50 and hidden == (500, 500, 2000))
    label = args.label or f"{device.type}{'' if full_budget else '_reduced'}"
    out = Path(args.out or f"benchmarks/results/hcrl_20newsgroups_{label}.json")
    workdir = Path(args.workdir or f"{out.with_suffix('')}_work")

    started = time.perf_counter()
    data = pyro_hc.load_dataset("20newsgroups", split=args.split, n_samples=args.n)
    load_seconds = time.perf_counter() - started
    labels = data.y.numpy()
    n_groups = int(data.n_classes)

    def scores(tree, assigned) -> dict:
        return {"hierarchical_f_score": hierarchical_f_score(tree, assigned, labels, label_tree=data.tree),
                "flat_f_score": hierarchical_f_score(tree, assigned, labels),
                "dendrogram_purity": dendrogram_purity(tree, assigned, labels), "nmi": nmi(labels, assigned),
                "n_leaves": len(tree.leaves())}

    shared = dict(latent_dim=args.latent_dim, hidden_dims=hidden, pretrain_epochs=args.pretrain_epochs)
    fit = dict(epochs=args.epochs, batch_size=args.batch_size, device=device, progress=not args.no_progress)

    # an nCRP row run with --tree-settings is its own row (and checkpoint): "hcrl2 elbo_coarsening=3000"
    tree_suffix = "".join(f" {key}={value}" for key, value in sorted(args.tree_settings.items()))

    def row_name(name: str) -> str:
        return name + tree_suffix if name in NCRP_MODELS else name

    def fitted(name: str, seed: int, **settings):
        """``name`` fitted at ``seed``, checkpointed under ``workdir`` every epoch: a fit stopped part-way
        (the session ends, Ctrl-C) resumes there when the same command runs again."""
        workdir.mkdir(parents=True, exist_ok=True)
        checkpoint = workdir / f"{row_name(name).replace(' ', '_')}-seed{seed}.ckpt"
        model = pyro_hc.get_model(name, **shared, **settings)
        return model.fit(data, seed=seed, checkpoint=checkpoint, resume=checkpoint.exists(), **fit)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    # every finished (seed, model) row is appended to <out>.rows.jsonl with the budget it ran at, so a
    # run stopped part-way (a CPU run takes hours) starts again where it was: rows of the same budget
    # are read back instead of refitted
    done = ResultRows(out.with_suffix(".rows.jsonl"), {k: getattr(args, k) for k in (
        "split", "n", "epochs", "pretrain_epochs", "batch_size", "latent_dim", "hidden_dims", "hkm_branching",
        "hkm_levels")})
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in range(args.seeds):
        vade_embedding = None
        for name in names:
            saved = done.get(seed, row_name(name))
            if saved is not None:  # (a VaDE row left undone fits its own VaDE below)
                runs[name].append(saved)
                print(json.dumps({"seed": seed, "model": row_name(name), "resumed": True, **saved}), flush=True)
                continue
            if args.report_only:
                continue
            began = time.perf_counter()
            if name in NCRP_MODELS:
                model = fitted(name, seed, depth=DEPTH, **args.tree_settings)
                assigned = model.predict(data).cpu().numpy()
                row = scores(model.tree, assigned)
                # the two-stage trees on the model's own embedding: is a gap the representation or the tree?
                embedding = model.transform(data)
                row["own_embedding"] = {
                    # (a fit whose data all sit in one leaf has nothing for Ward to link: its tree is the same)
                    "own leaves + Ward": scores(*leaves_ward_tree(embedding, assigned)) if len(np.unique(assigned)) > 1
                    else scores(model.tree, assigned),
                    "k-means + Ward": scores(*kmeans_ward_tree(embedding, n_groups, seed=seed)),
                    "HKM": scores(*hierarchical_kmeans_tree(embedding, args.hkm_branching, args.hkm_levels,
                                                            seed=seed))}
                if args.objective_check and hasattr(model, "structure_elbo"):
                    row["structure_elbo"] = objective_scores(model, data, n_groups, seed)
            elif name.startswith("vade"):
                if vade_embedding is None:  # one VaDE per seed serves both of its rows
                    vade = fitted("vade", seed, n_clusters=n_groups)
                    vade_embedding = vade.transform(data)
                points = vade_embedding
            else:
                points = data.flat()
            if name.endswith("+hkm") or name == "hkm":
                row = scores(*hierarchical_kmeans_tree(points, args.hkm_branching, args.hkm_levels, seed=seed))
            elif name.endswith("+ward"):
                row = scores(*kmeans_ward_tree(points, n_groups, seed=seed))
            row["seconds"] = time.perf_counter() - began
            runs[name].append(row)
            print(json.dumps({"seed": seed, "model": row_name(name), **row}), flush=True)
            done.append(seed, row_name(name), row)

    rows = []
    for name, per_seed in runs.items():
        if not per_seed:  # (--report-only: not measured yet)
            continue
        f = [r["hierarchical_f_score"] for r in per_seed]
        paper = PAPER.get(name)
        rows.append({"model": row_name(name), "hierarchical_f_score": float(np.mean(f)), "interval_95": interval(f),
                     "per_seed": f, "paper": None if paper is None else {"mean": paper[0], "interval_95": paper[1]},
                     **{key: float(np.mean([r[key] for r in per_seed]))
                        for key in ("flat_f_score", "dendrogram_purity", "nmi", "seconds")},
                     "n_leaves": [r["n_leaves"] for r in per_seed]})
        own = [r["own_embedding"] for r in per_seed if "own_embedding" in r]
        if own:  # hierarchical F of each two-stage tree on the model's embedding, mean over the seeds
            rows[-1]["own_embedding_hierarchical_f_score"] = {
                baseline: float(np.mean([o[baseline]["hierarchical_f_score"] for o in own])) for baseline in own[0]}
        checks = [r["structure_elbo"] for r in per_seed if "structure_elbo" in r]
        if checks:  # (--objective-check) the structure ELBO of three trees, mean over the seeds
            rows[-1]["structure_elbo"] = {tree: float(np.mean([c[tree] for c in checks])) for tree in checks[0]}
    record = {
        "benchmark": "hcrl_20newsgroups", "budget_label": "full" if full_budget else "reduced",
        **machine_record(device),
        "data": {"name": data.name, "split": args.split, "n": len(data), "n_features": data.n_features,
                 "likelihood": data.likelihood, "load_seconds": load_seconds},
        "budget": {k: getattr(args, k) for k in ("seeds", "epochs", "pretrain_epochs", "batch_size", "latent_dim",
                                                  "hidden_dims", "tree_settings", "hkm_branching", "hkm_levels")},
        "seconds": time.perf_counter() - started, "results": rows,
    }

    def pm(mean: float, half: float) -> str:
        return f"{mean:.3f}" + ("" if np.isnan(half) else f" ± {half:.3f}")

    lines = [
        f"# HCRL Table 2, 20 Newsgroups, depth {DEPTH}: hierarchical F-score"
        + ("" if full_budget else " — REDUCED BUDGET, not comparable with the paper")
        + (" — PARTIAL: the rows measured so far (--report-only)" if args.report_only else ""),
        "",
        f"Device {record['device']} ({record['device_name']}, {record['cpu_threads']} thread(s)); "
        f"{len(data)} documents ({args.split}), {data.n_features} TF-IDF features; budget {record['budget']}; "
        f"{record['seconds']:.0f} s in all. Ours: mean ± Student-t 95 % interval over the seeds; "
        "the paper's: 10 replications, 95 % interval.",
        "",
        f"Command: `{record['command']}`",
        "",
        "| model | hierarchical F (ours) | per seed | paper | flat F | DP | NMI | leaves | s / fit "
        "| own embedding: own leaves + Ward / k-means + Ward / HKM | structure ELBO: own / k-means + Ward / true |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper = "" if row["paper"] is None else pm(row["paper"]["mean"], row["paper"]["interval_95"])
        own = row.get("own_embedding_hierarchical_f_score")
        own = "" if own is None else " / ".join(f"{value:.3f}" for value in own.values())
        elbo = row.get("structure_elbo")
        elbo = "" if elbo is None else " / ".join(f"{value:,.0f}" for value in elbo.values())
        lines.append(f"| {row['model']} | {pm(row['hierarchical_f_score'], row['interval_95'])} | "
                     f"{', '.join(f'{v:.3f}' for v in row['per_seed'])} | {paper} | {row['flat_f_score']:.3f} | "
                     f"{row['dendrogram_purity']:.3f} | {row['nmi']:.3f} | {row['n_leaves']} | {row['seconds']:.0f} "
                     f"| {own} | {elbo} |")
    write_record(out, record, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
