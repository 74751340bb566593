"""DeepECT and DeepECT + Aug on MNIST and USPS, beside AE + bisecting k-means, in one run.

For each data set (``--datasets``): pretrain one denoising autoencoder (Eq. 1, 20% corruption),
then, all from that same autoencoder as in the paper (Sec. 3.1),

- AE + Bisecting: bisecting k-means (largest-SSE split) with ``--max-leaves`` leaves on its embedding,
- DeepECT and DeepECT + Aug: ``--steps`` optimisation steps, a split every ``--grow-interval``
  steps up to ``--max-leaves`` leaves.

Reported: dendrogram purity (DP) and leaf purity (LP) of the full tree, NMI and ACC of the
``k``-cluster partition given by the first ``k − 1`` splits (k = number of classes), the paper's
protocol (Sec. 3.2), with wall time per phase, steps, device and versions.

Paper (Table 2–4; 50,000 steps of batch 256 after 20,000 layer-wise + 50,000 fine-tuning steps):
MNIST  DeepECT DP 0.82 LP 0.93 NMI 0.83 ACC 0.85; + Aug DP 0.94 NMI 0.93 ACC 0.95; AE+Bisecting DP 0.53.
USPS   DeepECT DP 0.72 LP 0.85 NMI 0.71 ACC 0.71; AE+Bisecting DP 0.39.

Reduced GPU budget, e.g. (see ``--help``)::

    python benchmarks/deepect_mnist.py --datasets mnist,usps --pretrain-steps 6000 --steps 6000 \\
        --grow-interval 250 --pretrain-lr 1e-3 --no-progress --out benchmarks/results/deepect_gpu.json

Writes JSON and a Markdown table next to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

import pyro_hc
import pyro_hc.models.deepect  # noqa: F401  (registers "deepect")
from pyro_hc import metrics
from pyro_hc.infer import Callback
from pyro_hc.baselines import bisecting_kmeans_tree
from pyro_hc.models.deepect import DeepECT, flat_assignments
from pyro_hc.report import machine_record, write_record

PAPER = {
    "mnist": {"deepect": {"dp": 0.82, "lp": 0.93, "nmi": 0.83, "acc": 0.85},
              "deepect_aug": {"dp": 0.94, "nmi": 0.93, "acc": 0.95},
              "ae_bisecting": {"dp": 0.53}},
    "usps": {"deepect": {"dp": 0.72, "lp": 0.85, "nmi": 0.71, "acc": 0.71},
             "ae_bisecting": {"dp": 0.39}},
}


def scores(tree, leaves, labels, n_clusters: int) -> dict[str, float]:
    """DP and LP of the tree; NMI and ACC of the first-splits partition into ``k`` clusters (fewer if
    the tree has fewer leaves; ``k`` is recorded)."""
    k = min(n_clusters, len(tree.leaves()))
    flat = flat_assignments(tree, leaves, k)
    return {"dp": metrics.dendrogram_purity(tree, leaves, labels), "lp": metrics.leaf_purity(tree, leaves, labels),
            "nmi": metrics.nmi(labels, flat), "acc": metrics.cluster_acc(labels, flat), "k": k,
            "n_leaves": len(tree.leaves())}


class StopAfter(Callback):
    """End training at the first epoch end after ``seconds`` (a wall-clock guard for fixed budgets)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def on_fit_start(self, state) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, state) -> None:
        if self.seconds is not None and time.perf_counter() - self.started > self.seconds:
            state.stop = True


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_dataset(name: str, args, device: str, workdir: Path, report) -> list[dict]:
    data = pyro_hc.load_dataset(name, split="all")
    if args.n is not None and args.n < len(data):
        data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.n])
    labels = data.y.numpy()
    k = data.n_classes
    hidden = tuple(int(h) for h in args.hidden_dims.split(","))
    common = dict(max_leaves=args.max_leaves, grow_interval=args.grow_interval, latent_dim=args.latent_dim,
                  hidden_dims=hidden, batch_size=args.batch_size, lr=args.lr, pretrain_lr=args.pretrain_lr,
                  corruption=args.corruption, grow_sample=args.grow_sample, reconstruction=args.reconstruction)
    fit = dict(device=args.device, seed=args.seed, progress=not args.no_progress, cuda_graphs=args.cuda_graphs)
    rows = []

    started = time.perf_counter()
    epochs_for = partial(DeepECT.epochs_for_steps, n=len(data), batch_size=args.batch_size)  # steps, rounded up
    autoencoder = pyro_hc.get_model("deepect", epochs=0, pretrain_epochs=epochs_for(args.pretrain_steps), **common)
    autoencoder.fit(data, **fit)
    synchronize(device)
    pretrain_seconds = time.perf_counter() - started
    path = autoencoder.save(workdir / f"{name}_autoencoder.pt")
    pretrain_steps = autoencoder.history_["step"][-1] if len(autoencoder.history_) else 0
    print(json.dumps({"dataset": name, "phase": "pretrain", "steps": pretrain_steps,
                      "seconds": round(pretrain_seconds, 1)}), flush=True)
    base = {"dataset": name, "n": len(data), "pretrain_steps": pretrain_steps, "pretrain_seconds": pretrain_seconds}

    started = time.perf_counter()
    embedding = autoencoder.transform(data).numpy()
    tree, leaves = bisecting_kmeans_tree(embedding, args.max_leaves, seed=args.seed)
    rows.append({**base, "model": "ae_bisecting", **scores(tree, leaves, labels, k), "steps": 0,
                 "fit_seconds": time.perf_counter() - started})
    report(rows[-1])

    for variant in args.variants.split(","):
        if variant not in ("deepect", "deepect_aug"):
            raise ValueError(f"unknown variant {variant!r}; choose deepect and/or deepect_aug")
        started = time.perf_counter()
        model = pyro_hc.get_model("deepect", augment=variant == "deepect_aug", epochs=epochs_for(args.steps),
                                  pretrained=str(path), **common)
        model.fit(data, callbacks=[StopAfter(args.max_seconds)], **fit)
        synchronize(device)
        seconds = time.perf_counter() - started
        events = model.tree.events
        row = {**base, "model": variant, **scores(model.tree, model.predict(data).numpy(), labels, k),
               "steps": model.history_["step"][-1], "fit_seconds": seconds,
               "splits": sum(e["kind"] == "split" for e in events), "prunes": sum(e["kind"] == "prune" for e in events),
               "final_loss": model.history_["loss"][-1],
               "stopped_by_time": model.history_["step"][-1] < model.fit_info_["epochs"] * -(-len(data) // args.batch_size)}
        rows.append(row)
        report(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="mnist,usps", help="comma-separated: mnist, usps")
    parser.add_argument("--variants", default="deepect,deepect_aug", help="deepect and/or deepect_aug")
    parser.add_argument("--n", type=int, default=None, help="a seeded subset of this many points per data set")
    parser.add_argument("--pretrain-steps", type=int, default=50_000, help="rounded up to whole epochs")
    parser.add_argument("--steps", type=int, default=50_000, help="DeepECT steps, rounded up to whole epochs")
    parser.add_argument("--grow-interval", type=int, default=500, help="steps between splits (paper: 500)")
    parser.add_argument("--max-leaves", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--pretrain-lr", type=float, default=1e-4)
    parser.add_argument("--corruption", type=float, default=0.2)
    parser.add_argument("--reconstruction", default="sum", choices=["sum", "mean"],
                        help="Eq. 1 summed over pixels (the paper read literally) or their mean (authors' scripts)")
    parser.add_argument("--hidden-dims", default="500,500,2000")
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--grow-sample", type=int, default=10_000, help="points used to choose and split a leaf")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="wall-clock guard per DeepECT fit: stop at the first epoch end after this")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each training step from a CUDA graph (GPU only; see SVIEngine)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/deepect_mnist.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(pyro_hc.infer.resolve_device(args.device))

    started = time.perf_counter()
    results: list[dict] = []

    def report(row: dict) -> None:
        """Print a result and rewrite the output files, so a run cut short keeps what it finished."""
        results.append(row)
        print(json.dumps(row), flush=True)
        write(args, device, results, time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as workdir:
        for name in args.datasets.split(","):
            run_dataset(name.strip().lower(), args, device, Path(workdir), report)
    write(args, device, results, time.perf_counter() - started, final=True)


def write(args, device: str, results: list[dict], wall_seconds: float, final: bool = False) -> None:
    record = {
        "benchmark": "deepect_mnist", "datasets": args.datasets, **machine_record(device),
        "budget": {k: getattr(args, k) for k in ("n", "pretrain_steps", "steps", "grow_interval", "max_leaves",
                                                  "batch_size", "lr", "pretrain_lr", "corruption", "reconstruction", "hidden_dims",
                                                  "latent_dim", "grow_sample", "max_seconds", "seed", "cuda_graphs")},
        "wall_seconds": wall_seconds, "complete": final,
        "paper": PAPER,
        "results": results,
    }
    lines = ["| data | model | DP | LP | NMI (k) | ACC (k) | leaves | steps | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['model']} | {r['dp']:.3f} | {r['lp']:.3f} | {r['nmi']:.3f} | {r['acc']:.3f} | "
              f"{r['n_leaves']} | {r['steps']} | {r['fit_seconds']:.0f} |" for r in results]
    pretraining = ", ".join(sorted({"%s: %d steps, %.0f s" % (r["dataset"], r["pretrain_steps"], r["pretrain_seconds"])
                                    for r in results}))
    write_record(Path(args.out), record,
                 f"device {record['device_name']} ({device}), budget {record['budget']}, "
                 f"wall {record['wall_seconds']:.0f} s; pretraining {pretraining}\n\n" + "\n".join(lines) + "\n")
    if final:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
