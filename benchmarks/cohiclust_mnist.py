"""CoHiClust on MNIST (70,000 images): ACC, NMI, ARI, dendrogram purity, with budget, device and phase times.

Paper (Znalezniak et al. 2023, Table 5, MNIST): ACC 0.99, NMI 0.97, DP 0.97 with ResNet-18,
a tree of height 4 (16 leaves) pruned to 10 in tree epochs 10-15, 200 SimCLR pretraining epochs
and 100 tree epochs, batch 256. The full schedule needs a GPU; the flags shrink it:

    # the paper's schedule (hours on one GPU)
    python benchmarks/cohiclust_mnist.py --pretrain-epochs 200 --epochs 100
    # a few minutes on one H200 (bfloat16 autocast and channels-last are on by default on CUDA)
    python benchmarks/cohiclust_mnist.py --pretrain-epochs 12 --epochs 12 --prune-start 3 --batch-size 512
    # a CPU smoke run (seconds): small CNN, 300 images, tree of height 2 pruned to 3 leaves
    python benchmarks/cohiclust_mnist.py --n 300 --backbone small_cnn --depth 2 --n-leaves 3 \\
        --pretrain-epochs 1 --epochs 2 --prune-start 0 --batch-size 64 --no-progress

Writes a JSON record (metrics, the class-distance matrix of the paper's Figure 4, the tree's prune
events, per-epoch losses, wall time per phase, budget, device, versions) to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import pyro_hc
import pyro_hc.models.cohiclust  # noqa: F401  (registers "cohiclust")
from pyro_hc.hierarchy import class_distance_matrix
from pyro_hc.infer import Callback
from pyro_hc.report import machine_record, write_record

PAPER = {"acc": 0.99, "nmi": 0.97, "dendrogram_purity": 0.97}


class PhaseClock(Callback):
    """Wall-clock stamps of the tree phase and of each of its epochs (the epoch end already syncs the device)."""

    def __init__(self) -> None:
        self.start = self.end = None
        self.epoch_ends: list[float] = []

    def on_fit_start(self, state) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, state) -> None:
        self.epoch_ends.append(time.perf_counter())

    def on_fit_end(self, state) -> None:
        self.end = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--n", type=int, default=None, help="a seeded subset of this many images (default: all)")
    parser.add_argument("--backbone", default="resnet18", choices=pyro_hc.nn.BACKBONES)
    parser.add_argument("--depth", type=int, default=4, help="T: the tree starts with 2^T leaves")
    parser.add_argument("--n-leaves", type=int, default=10, help="leaves left after pruning")
    parser.add_argument("--pretrain-epochs", type=int, default=200, help="SimCLR epochs (R2 alone)")
    parser.add_argument("--epochs", type=int, default=100, help="tree epochs (Eq. 2)")
    parser.add_argument("--prune-start", type=int, default=10, help="tree epoch of the first prune")
    parser.add_argument("--prune-every", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="official main.py: 1e-3")
    parser.add_argument("--weight-decay", type=float, default=1e-6, help="official main.py: 1e-6")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--augment", default="auto", help="simclr (official; auto), digits (ours), affine, none")
    parser.add_argument("--crop-scale", default=None, help="area range of the random resized crop "
                        "(default: 0.08,1 for simclr, 0.5,1 for digits)")
    parser.add_argument("--r1", default="depth_decayed", choices=["depth_decayed", "uniform"])
    parser.add_argument("--stem", default="auto", choices=list(pyro_hc.nn.STEMS), help="ResNet stem")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bfloat16 autocast of the backbone (default: on for CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last images (default: on for CUDA)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each training step from a CUDA graph (fit(cuda_graphs=True))")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/cohiclust_mnist.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pyro_hc.infer.resolve_device(args.device)
    cuda = device.type == "cuda"
    amp = cuda if args.amp is None else args.amp
    channels_last = cuda if args.channels_last is None else args.channels_last
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed image and batch sizes

    started = time.perf_counter()
    data = pyro_hc.load_dataset(args.dataset, split="all")
    if args.n is not None:
        data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.n])
    load_seconds = time.perf_counter() - started
    crop_scale = None if args.crop_scale is None else tuple(float(s) for s in args.crop_scale.split(","))
    config = dict(depth=args.depth, n_leaves=args.n_leaves, backbone=args.backbone, crop_scale=crop_scale,
                  augment=args.augment, r1=args.r1, stem=args.stem, temperature=args.temperature,
                  pretrain_epochs=args.pretrain_epochs, lr=args.lr, weight_decay=args.weight_decay, prune_start=args.prune_start, prune_every=args.prune_every,
                  amp=amp, channels_last=channels_last)
    model = pyro_hc.get_model("cohiclust", **config)
    clock = PhaseClock()
    fit_started = time.perf_counter()
    model.fit(data, epochs=args.epochs, batch_size=args.batch_size, device=device, seed=args.seed,
              progress=not args.no_progress, callbacks=[clock], cuda_graphs=args.cuda_graphs)
    fit_ended = time.perf_counter()
    scores = pyro_hc.evaluate(model, data)
    leaves = model.predict(data).numpy()
    distances = class_distance_matrix(model.tree, leaves, data.y.numpy())
    eval_seconds = time.perf_counter() - fit_ended

    tree_start = clock.start if clock.start is not None else fit_ended
    tree_epochs = np.diff([tree_start, *clock.epoch_ends]).tolist()
    seconds = {
        "load_data": load_seconds,
        "pretrain": tree_start - fit_started,  # includes building the networks and moving the data
        "tree": (clock.end or fit_ended) - tree_start,
        "tree_per_epoch": tree_epochs,
        "evaluate": eval_seconds,
        "total": time.perf_counter() - started,
    }
    history = model.history_.records
    record = {
        "benchmark": "cohiclust_mnist",
        "dataset": args.dataset,
        "n": len(data),
        **machine_record(device),
        "budget": {"pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs, "batch_size": args.batch_size,
                   "backbone": args.backbone, "depth": args.depth, "n_leaves": args.n_leaves,
                   "prune_start": args.prune_start, "prune_every": args.prune_every, "lr": args.lr,
                   "weight_decay": args.weight_decay, "temperature": args.temperature,
                   "crop_scale": list(model.module_.augment.crop_scale), "augment": model.module_.augment.kind,
                   "r1": args.r1, "stem": args.stem, "amp_bf16": amp, "channels_last": channels_last,
                   "cuda_graphs": args.cuda_graphs},
        "metrics": scores,
        "paper": PAPER,
        "seconds": seconds,
        "leaves": model.tree.leaves(),
        "prune_events": model.tree.events,
        "class_distance_matrix": np.where(np.isnan(distances), None, distances).tolist(),
        "loss_per_epoch": [{"phase": r["phase"], "epoch": r["epoch"], "loss": r["loss"]} for r in history],
    }
    out = Path(args.out)
    write_record(out, record)
    print(f"CoHiClust ({args.backbone}) on {args.dataset} (n={len(data)}), {args.pretrain_epochs} pretraining + "
          f"{args.epochs} tree epochs on {device}: pretrain {seconds['pretrain']:.0f} s, tree {seconds['tree']:.0f} s")
    for name, value in scores.items():
        print(f"  {name:<18} {value:.4f}" + (f"   (paper {PAPER[name]})" if name in PAPER else ""))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
