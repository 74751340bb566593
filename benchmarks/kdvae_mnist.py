"""k-DVAE (hard and soft), k-DAE and VaDE on MNIST in one run: ACC and NMI with budget and device.

Paper ("A mixture of variational autoencoders for deep clustering", Table 1, MNIST ACC):
k-DVAE 97.87 %, k-DAE 96.51 %, VaDE 94.43 %. Every model trains on the same images with the same
seed. One VaDE (trained here with ``--vade-*``, or read from ``--vade-file``, e.g. saved by
``vade_mnist.py --save-model``) starts every k-DVAE variant (``init_from``): k-means in its
embedding, then each variant's warm-up and main phase. Each row has the accuracy of its start
(k-means in the VaDE's embedding; for VaDE itself the GMM on its pretrained embedding) beside its
final one; labels are only watched (``monitor_labels``), never trained on.

    python benchmarks/kdvae_mnist.py --n 10000 --epochs 10 --vade-epochs 10 --vade-pretrain-epochs 5 \\
        --warmup-epochs 5
    python benchmarks/kdvae_mnist.py --vade-file vade_mnist.pt       # the paper's k-DVAE schedule from a saved VaDE

Writes JSON and a Markdown table next to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import pyro_hc
from pyro_hc.report import machine_record, write_record


def number(value: float | None, digits: int = 4) -> str:
    """A table cell: the value, or a dash where there is none (a loaded VaDE fitted without labels)."""
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--n", type=int, default=None, help="a seeded subset of this many images (default: all)")
    parser.add_argument("--epochs", type=int, default=100, help="main epochs of every model")
    parser.add_argument("--warmup-epochs", type=int, default=20)
    parser.add_argument("--vade-epochs", type=int, default=30, help="epochs of the VaDE that starts every variant")
    parser.add_argument("--vade-pretrain-epochs", type=int, default=20)
    parser.add_argument("--vade-lr", type=float, default=5e-4,
                        help="the VaDE's learning rate (k-DVAE's short-budget default; the paper's 300 epochs: 2e-3)")
    parser.add_argument("--vade-init-candidates", type=int, default=None, help="VaDE's GMM candidates (default: VaDE's)")
    parser.add_argument("--vade-file", default=None, help="start from this saved VaDE instead of training one")
    parser.add_argument("--hidden-dims", default="500,100", help="per-cluster encoder (decoder mirrors it)")
    parser.add_argument("--vade-hidden-dims", default="500,500,2000")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay each training step from a CUDA graph (GPU only; see SVIEngine)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/kdvae_mnist.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = pyro_hc.load_dataset(args.dataset, split="all")
    if args.n is not None:
        data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.n])
    hidden = tuple(int(h) for h in args.hidden_dims.split(","))
    vade_hidden = tuple(int(h) for h in args.vade_hidden_dims.split(","))
    labels = data.y
    started = time.perf_counter()
    if args.vade_file:
        vade = pyro_hc.load(args.vade_file, device=args.device)
        vade_seconds = float(vade.fit_info_.get("seconds", float("nan")))
    else:
        options = {} if args.vade_init_candidates is None else {"init_candidates": args.vade_init_candidates}
        vade = pyro_hc.get_model("vade", n_clusters=data.n_classes, hidden_dims=vade_hidden, lr=args.vade_lr,
                                 pretrain_epochs=args.vade_pretrain_epochs, **options)
        vade.fit(data, epochs=args.vade_epochs, batch_size=args.batch_size, device=args.device, seed=args.seed,
                 progress=False, cuda_graphs=args.cuda_graphs, monitor_labels=labels)
        vade_seconds = time.perf_counter() - started
    vade_start = next((r for r in vade.history_.records if r["phase"] == "init"), {})
    results = [{"model": "vade", "start_acc": vade_start.get("acc"), "start_nmi": vade_start.get("nmi"),
                **pyro_hc.evaluate(vade, data), "fit_seconds": vade_seconds}]
    print(json.dumps(results[-1]), flush=True)
    mixture = dict(n_clusters=data.n_classes, hidden_dims=hidden, warmup_epochs=args.warmup_epochs, init_from=vade)
    runs = [
        ("kdvae-hard", "kdvae", dict(objective="hard", **mixture)),
        ("kdvae-soft", "kdvae", dict(objective="soft", **mixture)),
        ("kdae", "kdae", dict(mixture)),
    ]
    for label, name, config in runs:
        started = time.perf_counter()
        model = pyro_hc.get_model(name, **config).fit(data, epochs=args.epochs, batch_size=args.batch_size,
                                                      device=args.device, seed=args.seed, progress=False,
                                                      cuda_graphs=args.cuda_graphs, monitor_labels=labels)
        start = next(r for r in model.history_.records if r["phase"] == "init")
        row = {"model": label, "start_acc": start["acc"], "start_nmi": start["nmi"], **pyro_hc.evaluate(model, data),
               "fit_seconds": time.perf_counter() - started}
        results.append(row)
        print(json.dumps(row), flush=True)

    device = str(pyro_hc.infer.resolve_device(args.device))
    record = {
        "benchmark": "kdvae_mnist", "dataset": args.dataset, "n": len(data), **machine_record(device),
        "budget": {k: getattr(args, k) for k in ("epochs", "warmup_epochs", "vade_epochs", "vade_pretrain_epochs",
                                                  "vade_lr", "vade_file", "batch_size", "hidden_dims",
                                                  "vade_hidden_dims", "cuda_graphs")},
        "vade_config": {k: v for k, v in vade.get_params().items()},
        "paper_acc": {"kdvae": 0.9787, "kdae": 0.9651, "vade": 0.9443},
        "results": results,
    }
    lines = ["| model | start acc | start nmi | acc | nmi | ari | fit_seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {number(r['start_acc'])} | {number(r['start_nmi'])} | {r['acc']:.4f} | "
              f"{r['nmi']:.4f} | {r['ari']:.4f} | {number(r['fit_seconds'], 0)} |" for r in results]
    write_record(Path(args.out), record, f"device {device}, n={len(data)}, budget {record['budget']}; one VaDE "
                                         "starts every k-DVAE variant (start: k-means in its embedding; VaDE's "
                                         "start: the GMM on its pretrained embedding)\n\n"
                                         + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
