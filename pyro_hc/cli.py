"""``pyro-hc``: list models and data sets, fit a model, evaluate a saved run.

    pyro-hc list
    pyro-hc fit vade --dataset digits --epochs 50 --out runs/vade-digits
    pyro-hc evaluate runs/vade-digits
    torchrun --nproc_per_node 2 -m pyro_hc.cli fit hcrl2 --dataset mnist   # one process per GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .data import list_datasets, load_dataset
from .estimator import evaluate
from .infer import CheckpointEvery, distributed
from .models import get_model, get_model_class, list_models, load

MODEL_FILE = "model.pt"
TREE_FILE = "tree.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"


def _parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, lists, null), else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def _model_name(text: str) -> str:
    """Registry names are lower case with '_' for '-' (argparse checks choices after this)."""
    return text.strip().lower().replace("-", "_")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-hc", description="Deep hierarchical clustering models in Pyro.")
    parser.add_argument("--version", action="version", version=f"pyro_hc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("list", help="list the registered models and the known data sets")

    fit = commands.add_parser("fit", help="train a model on a data set and save the run")
    fit.add_argument("model", type=_model_name, choices=list_models(), metavar="MODEL",
                     help=f"one of: {', '.join(list_models())}")
    fit.add_argument("--dataset", default="digits", metavar="NAME",
                     help=f"one of: {', '.join(list_datasets())} (default: digits)")
    fit.add_argument("--split", default="all", choices=("all", "train", "test"), help="which part to train on")
    fit.add_argument("--data-root", default=None, help="data folder (default: $PYRO_HC_DATA or ~/.cache/pyro_hc)")
    fit.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's)")
    fit.add_argument("--batch-size", type=int, default=None, help="mini-batch size (default: the model's)")
    fit.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--set", dest="settings", type=_parse_setting, action="append", default=[],
                     metavar="KEY=VALUE", help="model configuration, e.g. --set n_clusters=10 (repeatable)")
    fit.add_argument("--out", default=None, help="output folder (default: runs/MODEL-DATASET-TIME)")
    fit.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                     help="also write OUT/checkpoint.pt (parameters, optimiser, tree) every N epochs")
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    ev = commands.add_parser("evaluate", help="score a saved run on its data set")
    ev.add_argument("run_dir", help="a folder written by 'pyro-hc fit'")
    ev.add_argument("--split", default=None, choices=("all", "train", "test"), help="default: the run's split")
    ev.add_argument("--data-root", default=None)

    pl = commands.add_parser("plot", help="draw the pictures of a saved run (tree, embedding, distances, history)")
    pl.add_argument("run_dir", help="a folder written by 'pyro-hc fit'")
    pl.add_argument("--out", default=None, help="folder for the PNG files (default: RUN_DIR/plots)")
    pl.add_argument("--split", default=None, choices=("all", "train", "test"), help="default: the run's split")
    pl.add_argument("--data-root", default=None)
    pl.add_argument("--embedding", default="auto", choices=("auto", "pca", "tsne"),
                    help="2-D projection of the embedding (default: the embedding itself if 2-D, else PCA)")
    pl.add_argument("--images", default="auto", choices=("auto", "decoded", "mean", "members", "none"),
                    help="what each tree node shows (default: decoded node means when the model has them)")
    pl.add_argument("--max-points", type=int, default=3000, metavar="N",
                    help="data drawn per picture, a seeded random subset (default: 3000)")
    return parser


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column text table of metric names and values."""
    width = max(len(k) for k in metrics)
    rule = "-" * (width + 12)
    rows = [f"{'metric':<{width}}  {'value':>8}", rule]
    rows += [f"{k:<{width}}  {v:>8.4f}" for k, v in metrics.items()]
    return "\n".join(rows)


def _fit(args: argparse.Namespace) -> int:
    config = dict(args.settings)
    cls = get_model_class(args.model)
    unknown = sorted(set(config) - set(cls._param_names()))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for {args.model}; valid: {', '.join(cls._param_names())}")
    # under `torchrun --nproc_per_node N -m pyro_hc.cli fit ...` every rank trains; rank 0 writes the run
    distributed.init_from_env()
    main_process = distributed.is_main_process()
    dataset = load_dataset(args.dataset, root=args.data_root, split=args.split)
    model = get_model(args.model, **config)
    out = Path(args.out) if args.out else Path("runs") / f"{args.model}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    callbacks = [] if args.checkpoint_every is None else [CheckpointEvery(out / CHECKPOINT_FILE, args.checkpoint_every)]
    model.fit(dataset, epochs=args.epochs, batch_size=args.batch_size, device=args.device, seed=args.seed,
              progress=main_process and not args.no_progress, callbacks=callbacks)
    if not main_process:
        return 0
    scores = evaluate(model, dataset)
    model.save(out / MODEL_FILE)
    model.tree.save(out / TREE_FILE)
    record = {"model": args.model, "dataset": args.dataset, "split": args.split, "data_root": args.data_root,
              "config": model.get_params(), "fit": model.fit_info_, "metrics": scores}
    (out / METRICS_FILE).write_text(json.dumps(record, indent=2, default=str))
    print(f"{args.model} on {args.dataset} ({len(dataset)} points, {model.fit_info_['device']}, "
          f"{model.fit_info_['seconds']:.1f} s)")
    print(format_metrics(scores))
    print(f"saved to {out.resolve()}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    record_path = run_dir / METRICS_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {METRICS_FILE}; is it a folder written by 'pyro-hc fit'?")
    record = json.loads(record_path.read_text())
    model = load(run_dir / MODEL_FILE)
    dataset = load_dataset(record["dataset"], root=args.data_root or record.get("data_root"),
                           split=args.split or record["split"])
    print(f"{record['model']} on {record['dataset']} ({len(dataset)} points)")
    print(format_metrics(evaluate(model, dataset)))
    return 0


def _plot(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    record_path = run_dir / METRICS_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {METRICS_FILE}; is it a folder written by 'pyro-hc fit'?")
    if args.max_points < 1:
        raise ValueError(f"--max-points must be >= 1, got {args.max_points}")
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, whatever the environment says
    import matplotlib.pyplot as plt

    from . import plot

    record = json.loads(record_path.read_text())
    model = load(run_dir / MODEL_FILE)
    dataset = load_dataset(record["dataset"], root=args.data_root or record.get("data_root"),
                           split=args.split or record["split"])
    if len(dataset) > args.max_points:
        rows = np.sort(np.random.default_rng(0).choice(len(dataset), args.max_points, replace=False))
        dataset = dataset.subset(rows)
    out = Path(args.out) if args.out else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    pictures = {
        "tree.png": lambda path: plot.plot_tree(model, dataset, images=args.images, path=path),
        "embedding.png": lambda path: plot.plot_embedding(model, dataset, method=args.embedding, path=path),
        "history.png": lambda path: plot.plot_history(model, path=path),
        "node_samples.png": lambda path: plot.plot_node_samples(model, path=path),
        "level_reconstructions.png": lambda path: plot.plot_level_reconstructions(model, dataset, path=path),
    }
    if dataset.y is not None:
        pictures["class_distance.png"] = lambda path: plot.plot_class_distance(model, dataset, path=path)
    print(f"{record['model']} on {record['dataset']} ({len(dataset)} points drawn)")
    for name, draw in pictures.items():
        try:
            figure = draw(out / name)
        except TypeError as err:  # a picture this model cannot make (no node means, nothing to sample)
            print(f"skipped {name}: {err}")
            continue
        plt.close(figure)
        print(f"wrote {out / name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print("models:   " + ", ".join(list_models()))
            print("datasets: " + ", ".join(list_datasets()))
            return 0
        if args.command == "fit":
            return _fit(args)
        if args.command == "plot":
            return _plot(args)
        return _evaluate(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"pyro-hc: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
