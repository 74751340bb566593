"""Density estimation on binarised MNIST: VAE, VaDE, VAE-nCRP, HCRL1, HCRL2 with one encoder/decoder.

The HCRL paper's Table 1 (MNIST, test NLL by importance sampling with 100 samples): VAE 230.71,
VaDE 217.20, VAE-nCRP-L3 718.78, HCRL1-L3 209.59, HCRL2-L3 203.24. Every model here trains on
the same binarised training images (pixel > 0.5) with the same encoder/decoder shapes, in one run;
the table reports test NLL (IWAE, ``--nll-samples``), reconstruction error (squared error per
image at the encoder mean), and for the tree models the learned tree's size and purities.

    python benchmarks/hcrl_mnist.py --n-train 10000 --n-test 2000 --epochs 10 --pretrain-epochs 5

Writes JSON and a Markdown table next to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import pyro
import torch

import pyro_hc
from pyro_hc.data import Dataset


def binarised(data: Dataset, n: int | None, seed: int) -> Dataset:
    """The first ``n`` images of a seeded permutation, thresholded at 0.5 (fixed binarisation)."""
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return Dataset(x=(data.x[index] > 0.5).float(), y=data.y[index], name=f"{data.name}_binarised",
                   likelihood="bernoulli", n_classes=data.n_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vae,vade,vae_ncrp,hcrl1,hcrl2")
    parser.add_argument("--depths", default="3,4", help="tree depths (levels) for the nCRP models")
    parser.add_argument("--n-train", type=int, default=None, help="training images (default: all 60,000)")
    parser.add_argument("--n-test", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--hidden-dims", default="500,500,2000")
    parser.add_argument("--nll-samples", type=int, default=100)
    parser.add_argument("--level-concentration", type=float, nargs="+", default=[1.0],
                        help="HCRL's Dirichlet α on the levels: one number (symmetric) or two (every internal "
                             "level, then the leaf level)")
    parser.add_argument("--stick-lr-factor", type=float, default=None,
                        help="the sticks' learning-rate factor of the nCRP models (default: as the nodes)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each training step from a CUDA graph (GPU only; see SVIEngine)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/hcrl_mnist.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train = binarised(pyro_hc.load_dataset("mnist", split="train"), args.n_train, args.seed)
    test = binarised(pyro_hc.load_dataset("mnist", split="test"), args.n_test, args.seed)
    hidden = tuple(int(h) for h in args.hidden_dims.split(","))
    shared = dict(latent_dim=args.latent_dim, hidden_dims=hidden)
    runs: list[tuple[str, dict]] = []
    for name in args.models.split(","):
        if name in ("vae_ncrp", "hcrl1", "hcrl2"):
            for depth in (int(d) for d in args.depths.split(",")):
                config = dict(name=name, depth=depth, pretrain_epochs=args.pretrain_epochs,
                              stick_lr_factor=args.stick_lr_factor, **shared)
                if name != "vae_ncrp":  # VAE-nCRP has no levels
                    alpha = args.level_concentration
                    if len(alpha) not in (1, 2):
                        parser.error("--level-concentration takes one number or two (internal levels, leaves)")
                    config["level_concentration"] = (alpha[0] if len(alpha) == 1
                                                     else (alpha[0],) * (depth - 1) + (alpha[1],))
                runs.append((f"{name}-L{depth}", config))
        elif name == "vade":
            runs.append((name, dict(name=name, n_clusters=10, pretrain_epochs=args.pretrain_epochs, **shared)))
        else:
            runs.append((name, dict(name=name, **shared)))

    results = []
    for label, config in runs:
        name = config.pop("name")
        started = time.perf_counter()
        model = pyro_hc.get_model(name, **config).fit(train, epochs=args.epochs, batch_size=args.batch_size,
                                                      device=args.device, seed=args.seed, progress=False,
                                                      cuda_graphs=args.cuda_graphs)
        fit_seconds = time.perf_counter() - started
        row = {
            "model": label,
            "test_nll": model.negative_log_likelihood(test, num_samples=args.nll_samples),
            "test_re": model.reconstruction_error(test),
            "fit_seconds": fit_seconds,
            "n_nodes": len(model.tree),
            "n_leaves": len(model.tree.leaves()),
        }
        if name != "vae":
            row.update(pyro_hc.evaluate(model, test))
        results.append(row)
        print(json.dumps(row), flush=True)

    device = str(pyro_hc.infer.resolve_device(args.device))
    record = {
        "benchmark": "hcrl_mnist", "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.machine(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "pyro": pyro.__version__,
        "budget": {k: getattr(args, k) for k in ("n_train", "n_test", "epochs", "pretrain_epochs", "batch_size",
                                                  "nll_samples", "latent_dim", "hidden_dims", "cuda_graphs",
                                                  "level_concentration", "stick_lr_factor")},
        "paper_test_nll": {"vae": 230.71, "vade": 217.20, "vae_ncrp-L3": 718.78, "vae_ncrp-L4": 721.00,
                           "hcrl1-L3": 209.59, "hcrl1-L4": 212.31, "hcrl2-L3": 203.24, "hcrl2-L4": 203.91},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    columns = ["model", "test_nll", "test_re", "n_leaves", "acc", "nmi", "dendrogram_purity", "leaf_purity",
               "fit_seconds"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in results:
        cells = [row.get(c, "") for c in columns]
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(f"device {device}, budget {record['budget']}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
