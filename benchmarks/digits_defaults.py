"""DeepECT and CoHiClust at their defaults on the bundled 8 x 8 digits, beside the bars of issue 16.

Where a newcomer starts: ``get_model("deepect", max_leaves=20).fit(digits)`` and
``get_model("cohiclust", n_leaves=10, backbone="small_cnn").fit(digits)``, nothing else set. Each
seed's fit is scored beside baselines measured in the same run on the raw pixels:

- DeepECT: dendrogram purity (DP), leaf purity, ACC and NMI at ``predict(x, n_clusters=10)``, and the
  CPU seconds of the fit, against ClustPy's DeepECT at its defaults on the same data (DP 0.672,
  ACC@10 0.679 in 184 s, measured when issue 16 was filed) and k-means + Ward on the raw pixels at
  the same number of leaves (the bar a deep tree should clear);
- CoHiClust: ACC, NMI, DP at its 10 leaves, against k-means (10 clusters) on the raw pixels.

    python benchmarks/digits_defaults.py --threads 1                     # both models, seeds 0-4
    python benchmarks/digits_defaults.py --models cohiclust --cohiclust-settings '{"lr": 0.003}'

Rows are appended to ``<out>.rows.jsonl`` as each fit ends, so a stopped run resumes; the JSON
record and a Markdown table (per seed, then the mean) are written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

import pyro_hc
import pyro_hc.models.cohiclust  # noqa: F401  (registers "cohiclust")
import pyro_hc.models.deepect  # noqa: F401  (registers "deepect")
from pyro_hc import metrics
from pyro_hc.baselines import kmeans_ward_tree
from pyro_hc.report import ResultRows, machine_record, write_record

#: ClustPy's DeepECT at its defaults on the digits, as measured when issue 16 was filed
CLUSTPY_DEEPECT = {"dendrogram_purity": 0.672, "acc_at_10": 0.679, "cpu_seconds": 184.0}
MODELS = ("deepect", "cohiclust")


def fit_deepect(data, seed: int, settings: dict, progress: bool) -> dict:
    model = pyro_hc.get_model("deepect", **{"max_leaves": 20, **settings})
    seconds = _timed(lambda: model.fit(data, seed=seed, progress=progress))
    y = data.y.numpy()
    leaves = model.predict(data).numpy()
    n_leaves = len(model.tree.leaves())
    row = {**seconds, "n_leaves": n_leaves, "dendrogram_purity": metrics.dendrogram_purity(model.tree, leaves, y),
           "leaf_purity": metrics.leaf_purity(model.tree, leaves, y)}
    if n_leaves >= 10:
        flat = model.predict(data, n_clusters=10).numpy()
        row.update(acc_at_10=metrics.cluster_acc(y, flat), nmi_at_10=metrics.nmi(y, flat))
    tree, assignments = kmeans_ward_tree(data.flat().numpy(), n_leaves, seed=seed)
    row["raw_kmeans_ward_dendrogram_purity"] = metrics.dendrogram_purity(tree, assignments, y)
    return row


def fit_cohiclust(data, seed: int, settings: dict, progress: bool) -> dict:
    model = pyro_hc.get_model("cohiclust", **{"n_leaves": 10, "backbone": "small_cnn", **settings})
    seconds = _timed(lambda: model.fit(data, seed=seed, progress=progress))
    y = data.y.numpy()
    leaves = model.predict(data).numpy()
    n_leaves = len(model.tree.leaves())
    raw = KMeans(n_leaves, n_init=10, random_state=seed).fit(data.flat().numpy()).labels_
    return {**seconds, "n_leaves": n_leaves, "acc": metrics.cluster_acc(y, leaves),
            "nmi": metrics.nmi(y, leaves), "dendrogram_purity": metrics.dendrogram_purity(model.tree, leaves, y),
            "raw_kmeans_acc": metrics.cluster_acc(y, raw), "raw_kmeans_nmi": metrics.nmi(y, raw)}


def _timed(fit) -> dict:
    cpu, wall = time.process_time(), time.perf_counter()
    fit()
    return {"cpu_seconds": time.process_time() - cpu, "wall_seconds": time.perf_counter() - wall}


#: (column, bar, +1 where more is better or -1 where less is) per model: the bar is ClustPy's number
#: or the name of a baseline column of the same row
BARS = {
    "deepect": [("dendrogram_purity", "ClustPy", +1), ("acc_at_10", "ClustPy", +1), ("cpu_seconds", "ClustPy", -1),
                ("dendrogram_purity", "raw_kmeans_ward_dendrogram_purity", +1)],
    "cohiclust": [("acc", "raw_kmeans_acc", +1), ("nmi", "raw_kmeans_nmi", +1)],
}
COLUMNS = {
    "deepect": ["n_leaves", "dendrogram_purity", "leaf_purity", "acc_at_10", "nmi_at_10",
                "raw_kmeans_ward_dendrogram_purity", "cpu_seconds"],
    "cohiclust": ["n_leaves", "acc", "nmi", "dendrogram_purity", "raw_kmeans_acc", "raw_kmeans_nmi", "cpu_seconds"],
}


def table(model: str, rows: dict[int, dict]) -> str:
    """Markdown: one line per seed, the mean, and how many seeds clear each bar."""
    columns = COLUMNS[model]
    lines = [f"| seed | {' | '.join(columns)} |", "|" + "---|" * (len(columns) + 1)]
    def cell(column, value):
        if value is None:
            return "—"
        return f"{value:.1f}" if column in ("cpu_seconds", "n_leaves") else f"{value:.3f}"

    for seed, row in sorted(rows.items()):
        lines.append(f"| {seed} | {' | '.join(cell(c, row.get(c)) for c in columns)} |")
    means = {c: _mean([row.get(c) for row in rows.values()]) for c in columns}
    lines.append(f"| mean | {' | '.join(cell(c, means[c]) for c in columns)} |")
    verdicts = []
    for column, bar, sign in BARS[model]:
        if means[column] is None:
            continue
        bars = [CLUSTPY_DEEPECT[column] if bar == "ClustPy" else row[bar] for row in rows.values()]
        cleared = sum(row.get(column) is not None and sign * (row[column] - b) > 0
                      for row, b in zip(rows.values(), bars))
        verdicts.append(f"{column} {cell(column, means[column])} against {bar} {cell(column, _mean(bars))} in the "
                        f"mean; {'above' if sign > 0 else 'below'} it at {cleared} of {len(rows)} seeds")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: deepect, cohiclust")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--deepect-settings", default="{}", help="JSON: get_model arguments beyond max_leaves=20")
    parser.add_argument("--cohiclust-settings", default="{}",
                        help="JSON: get_model arguments beyond n_leaves=10, backbone='small_cnn'")
    parser.add_argument("--n", type=int, default=None, help="a seeded subset of this many digits (smoke runs)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/digits_defaults_cpu.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {MODELS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"deepect": json.loads(args.deepect_settings), "cohiclust": json.loads(args.cohiclust_settings)}
    fits = {"deepect": fit_deepect, "cohiclust": fit_cohiclust}

    data = pyro_hc.load_dataset("digits")
    if args.n is not None:
        data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: args.n])
    out = Path(args.out)
    started = time.perf_counter()
    results, markdown = {}, [f"digits (n = {len(data)}) at the defaults, CPU, {torch.get_num_threads()} thread(s)\n"]
    for model in models:
        rows = ResultRows(out.with_suffix(".rows.jsonl"), {"model": model, "n": len(data), "settings": settings[model]})
        by_seed = {}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = rows.get(seed, model)
            if row is None:
                row = fits[model](data, seed, settings[model], progress=not args.no_progress)
                rows.append(seed, model, row)
            by_seed[seed] = row
            print(json.dumps({"model": model, "seed": seed, **row}, default=float))
        results[model] = {"settings": settings[model], "rows": {str(s): r for s, r in by_seed.items()}}
        markdown.append(f"## {model} {json.dumps(settings[model]) if settings[model] else '(defaults)'}\n\n"
                        f"{table(model, by_seed)}")
    record = {"benchmark": "digits_defaults", **machine_record("cpu"), "n": len(data),
              "seconds": time.perf_counter() - started, "clustpy_deepect_reference": CLUSTPY_DEEPECT,
              "results": results}
    write_record(out, record, "\n".join(markdown))
    print("\n".join(markdown))


if __name__ == "__main__":
    main()
