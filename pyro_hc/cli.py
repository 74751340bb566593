"""``pyro-hc``: list models and data sets, fit a model, evaluate a saved run.

    pyro-hc list
    pyro-hc fit vade --dataset digits --epochs 50 --out runs/vade-digits
    pyro-hc evaluate runs/vade-digits
    pyro-hc fit deepect --data x.npz --labels y --out runs/mine   # your own data (see --help)
    pyro-hc show runs/mine                                        # the learned tree, again
    torchrun --nproc_per_node 2 -m pyro_hc.cli fit hcrl2 --dataset mnist   # one process per GPU

A run folder belongs to one run: ``fit`` refuses an ``--out`` that already holds files unless
``--overwrite`` (which removes the old run's files first) or ``--resume`` (which continues the
interrupted run whose checkpoint is there). Default folders are claimed atomically, so runs
started at the same second never share one. Heavy modules (torch, the models) load only when a
command needs them: ``--help`` and ``list`` answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from ._catalog import DATASETS, FILE_FORMATS, MODELS
from ._files import atomic_write

if TYPE_CHECKING:  # annotations only: the commands import the data module when they run
    from .data import Dataset

MODEL_FILE = "model.pt"
TREE_FILE = "tree.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".pyro-hc.lock"
#: what a run writes: --overwrite removes exactly these (and nothing else of the user's)
RUN_FILES = (MODEL_FILE, TREE_FILE, METRICS_FILE, CHECKPOINT_FILE, "plots", "tree.txt", "baseline.json", "tree.png")


class CommandError(Exception):
    """A mistake on the command line or in a run folder: printed as one line, no traceback."""


def _parse_setting(text: str) -> tuple[str, str]:
    """``key=value``; the value is read by the setting's declared type once the model is known."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), raw.strip()


def _convert(raw: str, hint: Any) -> Any:
    """``raw`` as a value of the declared type ``hint``; ``ValueError`` if it is not one."""
    import types
    import typing
    from collections.abc import Sequence as AbcSequence

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.lower() in ("none", "null"):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(raw, arg)
            except ValueError:
                continue
        raise ValueError(raw)
    if hint is type(None):
        if raw.lower() in ("none", "null"):
            return None
        raise ValueError(raw)
    if hint is bool:
        words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if raw.lower() not in words:
            raise ValueError(raw)
        return words[raw.lower()]
    if hint is int:
        return int(raw)  # "5" yes; "5.0", "abc", "2.7" no
    if hint is float:
        return float(raw)  # ".001", "1e-3"
    if hint is str:
        return raw
    if origin is tuple or origin in (AbcSequence, list, typing.Sequence):
        text = raw.strip()
        if text.startswith(("[", "(")) and text.endswith(("]", ")")):
            text = text[1:-1]
        items = [item.strip() for item in text.split(",") if item.strip()]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            element_types = [args[0]] * len(items)
        elif origin is tuple:
            if len(items) != len(args):
                raise ValueError(raw)
            element_types = list(args)
        else:
            element_types = [args[0] if args else str] * len(items)
        return tuple(_convert(item, t) for item, t in zip(items, element_types))
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _settings(model: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``--set`` pairs read by the declared type of each setting of ``model``."""
    from .estimator import describe_hint, setting_hints
    from .models import get_model_class

    cls = get_model_class(model)
    names = cls._param_names()
    hints = setting_hints(cls)
    config: dict[str, Any] = {}
    for key, raw in pairs:
        if key not in names:
            raise CommandError(f"unknown setting {key!r} for {model}; valid: {', '.join(names)}")
        hint = hints.get(key)
        try:
            config[key] = _convert(raw, hint) if hint is not None else raw
        except ValueError:
            raise CommandError(f"--set {key}={raw}: {key} takes {describe_hint(hint)}") from None
    return config


def _model_name(text: str) -> str:
    """Registry names are lower case with '_' for '-' (argparse checks choices after this)."""
    return text.strip().lower().replace("-", "_")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-hc", description="Deep hierarchical clustering models in Pyro.")
    parser.add_argument("--version", action="version", version=f"pyro_hc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("list", help="list the registered models and the known data sets")

    fit = commands.add_parser("fit", help="train a model on a data set and save the run")
    fit.add_argument("model", type=_model_name, choices=MODELS, metavar="MODEL",
                     help=f"one of: {', '.join(MODELS)}")
    fit.add_argument("--dataset", default="digits", metavar="NAME",
                     help=f"one of: {', '.join(DATASETS)} (default: digits)")
    fit.add_argument("--split", default="all", choices=("all", "train", "test"), help="which part to train on")
    fit.add_argument("--data-root", default=None, help="data folder (default: $PYRO_HC_DATA or ~/.cache/pyro_hc)")
    fit.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's)")
    fit.add_argument("--batch-size", type=int, default=None, help="mini-batch size (default: the model's)")
    fit.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--set", dest="settings", type=_parse_setting, action="append", default=[],
                     metavar="KEY=VALUE", help="model configuration, e.g. --set n_clusters=10 (repeatable)")
    fit.add_argument("--out", default=None,
                     help="output folder, new or empty (default: a fresh runs/MODEL-DATASET-TIME)")
    fit.add_argument("--overwrite", action="store_true",
                     help="let --out be a folder with an earlier run: its run files are removed first")
    fit.add_argument("--resume", action="store_true",
                     help="continue the interrupted run in --out from its checkpoint (same command otherwise)")
    fit.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                     help="write OUT/checkpoint.pt every N epochs and keep it (default: every epoch, "
                          "removed once the run is saved)")
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_fit_data_options(fit)

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
    _add_show_parser(commands)
    return parser


def format_metrics(metrics: dict[str, float]) -> str:
    """A two-column text table of metric names and values."""
    if not metrics:
        return "no labels, so no metrics (--labels names them in your data)"
    width = max(len(k) for k in metrics)
    rule = "-" * (width + 12)
    rows = [f"{'metric':<{width}}  {'value':>8}", rule]
    rows += [f"{k:<{width}}  {v:>8.4f}" for k, v in metrics.items()]
    return "\n".join(rows)


def _claim_folder(args: argparse.Namespace) -> tuple[Path, bool]:
    """The run folder, claimed for this run; ``(folder, created)``.

    Default names get a numeric suffix until ``mkdir`` (atomic) succeeds, so concurrent runs never
    share one. An explicit ``--out`` must be new or empty, unless ``--overwrite`` (its run files
    are removed) or ``--resume`` (it must hold this run's checkpoint). A lock file keeps two runs
    out of one folder.
    """
    if args.out is None:
        if args.resume:
            raise CommandError("--resume needs --out, the folder of the interrupted run")
        base = Path("runs") / f"{args.model}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        base.parent.mkdir(parents=True, exist_ok=True)
        for suffix in range(1, 10_000):
            out = base if suffix == 1 else base.with_name(f"{base.name}-{suffix}")
            try:
                out.mkdir()
            except FileExistsError:
                continue
            _lock(out)
            return out, True
        raise CommandError(f"could not create a fresh run folder next to {base}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder; choose a folder for the run")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    _lock(out)
    try:
        held = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
        if args.resume:
            if not (out / CHECKPOINT_FILE).is_file():
                raise CommandError(f"--resume: {out} has no {CHECKPOINT_FILE} to continue from")
        elif held and args.overwrite:
            foreign = [name for name in held if name not in RUN_FILES]
            for name in held:
                if name in RUN_FILES:
                    path = out / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            if foreign:
                print(f"pyro-hc: --overwrite kept files that are not a run's: {', '.join(foreign)}", file=sys.stderr)
        elif held:
            shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
            raise CommandError(f"--out {out} already holds files ({shown}); choose a new folder, or pass "
                               "--overwrite to replace the run there (or --resume to continue it)")
    except BaseException:
        _unlock(out)
        raise
    return out, created


def _lock(out: Path) -> None:
    try:
        fd = os.open(out / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int((out / LOCK_FILE).read_text().strip() or 0)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            (out / LOCK_FILE).unlink(missing_ok=True)  # a stale lock of a run that died
            return _lock(out)
        raise CommandError(f"{out} is in use by another pyro-hc run (process {pid})") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))


def _unlock(out: Path) -> None:
    (out / LOCK_FILE).unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a temporary file and a rename)."""
    atomic_write(path, lambda handle: handle.write(text), text=True)


def _resume_command(argv: Sequence[str], out: Path) -> str:
    words = list(argv)
    if "--out" not in words and not any(w.startswith("--out=") for w in words):
        words += ["--out", str(out)]
    words = [w for w in words if w != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return "pyro-hc " + shlex.join(words)


def _fit(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .infer import distributed

    config = _settings(args.model, args.settings)
    for flag in ("epochs", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "epochs" else 1):
            raise CommandError(f"--{flag.replace('_', '-')} must be >= {0 if flag == 'epochs' else 1}, got {value}")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise CommandError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    from .estimator import evaluate
    from .models import get_model

    # settings first (no data, no folder): a mistake is reported at once
    model = get_model(args.model, **config)
    model._validate_settings()
    # under `torchrun --nproc_per_node N -m pyro_hc.cli fit ...` every rank trains; rank 0 writes the run
    distributed.init_from_env()
    main_process = distributed.is_main_process()
    dataset = _fit_dataset(args)
    if not main_process:  # rank 0 owns the folder; the others only read a checkpoint they resume from
        checkpoint = Path(args.out) / CHECKPOINT_FILE if args.out and args.resume else None
        model.fit(dataset, epochs=args.epochs, batch_size=args.batch_size, device=args.device, seed=args.seed,
                  progress=False, checkpoint=checkpoint, resume=checkpoint is not None)
        return 0
    out, created = _claim_folder(args)
    checkpoint = out / CHECKPOINT_FILE
    try:
        try:
            model.fit(dataset, epochs=args.epochs, batch_size=args.batch_size, device=args.device, seed=args.seed,
                      progress=not args.no_progress, checkpoint=checkpoint,
                      checkpoint_every=args.checkpoint_every or 1, resume=args.resume)
        except Exception:
            if args.checkpoint_every is None and not args.resume:
                checkpoint.unlink(missing_ok=True)  # a failed (not interrupted) run: nothing worth resuming
            raise
        except KeyboardInterrupt:
            if checkpoint.is_file():
                print(f"\npyro-hc: interrupted; {out} keeps the last checkpoint ({CHECKPOINT_FILE}). "
                      f"Resume with:\n  {_resume_command(argv, out)}", file=sys.stderr)
            else:
                print("\npyro-hc: interrupted before the first epoch ended; nothing to resume", file=sys.stderr)
            return 130
        scores = evaluate(model, dataset) if dataset.y is not None else {}
        model.save(out / MODEL_FILE)
        model.tree.save(out / TREE_FILE)  # atomic
        record = {"model": args.model, "dataset": args.dataset, "split": args.split, "data_root": args.data_root,
                  "config": model.get_params(), "fit": model.fit_info_, "metrics": scores,
                  "data_file": _data_file_record(args)}
        _write_text(out / METRICS_FILE, json.dumps(record, indent=2, default=str))
        if args.checkpoint_every is None:
            checkpoint.unlink(missing_ok=True)  # the run is saved; an every-epoch checkpoint has served
    finally:
        _unlock(out)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves no empty folder behind
    print(f"{args.model} on {args.dataset} ({len(dataset)} points, {model.fit_info_['device']}, "
          f"{model.fit_info_['seconds']:.1f} s)")
    print(format_metrics(scores))
    _report_tree(model, dataset, out, args.model, baseline=args.baseline, picture=args.plot_tree, seed=args.seed)
    print(f"saved to {out.resolve()}")
    return 0


def _read_run(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``metrics.json``, checked to be one that ``pyro-hc fit`` wrote."""
    record_path = run_dir / METRICS_FILE
    if not record_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {METRICS_FILE}; is it a folder written by 'pyro-hc fit'?")
    try:
        record = json.loads(record_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommandError(f"{record_path} is not a pyro-hc run record (not valid JSON: {err})") from None
    missing = [key for key in ("model", "dataset", "split") if not isinstance(record, dict) or key not in record]
    if missing:
        raise CommandError(f"{record_path} is not a pyro-hc run record (no {', '.join(missing)})")
    return record


def _open_run(args: argparse.Namespace) -> tuple[dict[str, Any], Any, Dataset]:
    """A saved run's record, model and data set (``evaluate`` and ``show``), announced in one line."""
    from .models import load

    run_dir = Path(args.run_dir)
    record = _read_run(run_dir)
    model = load(run_dir / MODEL_FILE)
    dataset = _run_dataset(record, args.split, args.data_root)
    print(f"{record['model']} on {record['dataset']} ({len(dataset)} points)")
    return record, model, dataset


def _evaluate(args: argparse.Namespace) -> int:
    from .estimator import evaluate

    _, model, dataset = _open_run(args)
    print(format_metrics(evaluate(model, dataset)))
    return 0


def _plot(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    record = _read_run(run_dir)
    if args.max_points < 1:
        raise ValueError(f"--max-points must be >= 1, got {args.max_points}")
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, whatever the environment says
    import matplotlib.pyplot as plt

    import numpy as np

    from . import plot
    from .models import load

    model = load(run_dir / MODEL_FILE)
    dataset = _run_dataset(record, args.split, args.data_root)
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


# users' own data, the tree in the terminal, `show` ----------------------------------------------


def _image_size(text: str) -> tuple[int, int]:
    """``H`` or ``HxW``."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"--image-size expects H or HxW in pixels, e.g. 28 or 32x48, got {text!r}")
    return (size[0], size[0]) if len(size) == 1 else size  # type: ignore[return-value]


def _add_fit_data_options(fit: argparse.ArgumentParser) -> None:
    own = fit.add_argument_group("your own data (instead of --dataset)")
    own.add_argument("--data", default=None, metavar="PATH",
                     help=f"a {' / '.join(FILE_FORMATS)} file of N x D or N x C x H x W floats, or an image folder "
                          "(root/<class>/<image>, torchvision's ImageFolder layout)")
    own.add_argument("--labels", default=None, metavar="NAME",
                     help="the labels: an array of the .npz / .pt file, a column of the CSV (header or 0-based "
                          "index), or a second .npy file; optional (without labels nothing is scored)")
    own.add_argument("--data-key", default=None, metavar="NAME",
                     help="the data array of a .npz / .pt file (default: 'x', 'X', 'data' or the only one)")
    own.add_argument("--image-size", type=_image_size, default=None, metavar="H[xW]",
                     help="image folders: resize every image to this size (default: their common size)")
    own.add_argument("--channels", type=int, choices=(1, 3), default=None,
                     help="image folders: 1 grey or 3 RGB (default: 1 when every image is grey)")
    report = fit.add_argument_group("report")
    report.add_argument("--baseline", action="store_true",
                        help="also score k-means + Ward on the raw features with as many leaves as the learned "
                             "tree and print its dendrogram purity beside the model's (needs labels)")
    report.add_argument("--plot-tree", action="store_true",
                        help="also draw the tree with node images into OUT/tree.png (pyro_hc.plot.plot_tree)")


def _add_show_parser(commands) -> None:
    show = commands.add_parser("show", help="print the learned tree of a saved run (one line a node)")
    show.add_argument("run_dir", help="a folder written by 'pyro-hc fit'")
    show.add_argument("--split", default=None, choices=("all", "train", "test"), help="default: the run's split")
    show.add_argument("--data-root", default=None)
    show.add_argument("--baseline", action="store_true",
                      help="also print k-means + Ward's dendrogram purity with as many leaves (needs labels)")


def _resolve_data_file(args: argparse.Namespace) -> None:
    """With ``--data`` the run is named after the file; ``--dataset`` must then be left alone."""
    if args.data is None:
        for option in ("labels", "data_key", "image_size", "channels"):
            if getattr(args, option) is not None:
                raise ValueError(f"--{option.replace('_', '-')} describes your own data; pass the file with --data")
        return
    if args.dataset != "digits":
        raise ValueError(f"--data {args.data} and --dataset {args.dataset} both name the training data; pass one")
    if not Path(args.data).expanduser().exists():
        raise FileNotFoundError(f"--data {args.data}: no such file or folder")
    args.dataset = Path(args.data).expanduser().resolve().name.split(".")[0] or "data"


def _data_file_record(args: argparse.Namespace) -> dict[str, Any] | None:
    """How ``--data`` was read, saved in metrics.json so that evaluate / plot / show read it again."""
    if args.data is None:
        return None
    labels = args.labels
    if labels is not None and Path(args.data).suffix.lower() == ".npy":  # a second file: keep it findable
        labels = str(Path(labels).expanduser().resolve())
    return {"path": str(Path(args.data).expanduser().resolve()), "labels": labels, "data_key": args.data_key,
            "image_size": None if args.image_size is None else list(args.image_size), "channels": args.channels}


def _split_of(dataset: Dataset, split: str) -> Dataset:
    """The fixed split of data without an official one (:data:`pyro_hc.data.TEST_FRACTION`)."""
    if split == "all":
        return dataset
    import torch

    from .data import _split_index

    return dataset.subset(torch.from_numpy(_split_index(len(dataset), split)))


def _read_data_file(source: dict[str, Any], split: str) -> Dataset:
    from .data import Dataset

    image_size = source.get("image_size")
    dataset = Dataset.from_file(source["path"], source.get("labels"), x_key=source.get("data_key"),
                                image_size=None if image_size is None else tuple(image_size),
                                channels=source.get("channels"))
    return _split_of(dataset, split)


def _fit_dataset(args: argparse.Namespace) -> Dataset:
    from .data import load_dataset

    if args.data is not None:
        return _read_data_file(_data_file_record(args), args.split)
    return load_dataset(args.dataset, root=args.data_root, split=args.split)


def _run_dataset(record: dict[str, Any], split: str | None, data_root: str | None) -> Dataset:
    """The data set a saved run was fitted on (its own file, or a named data set)."""
    from .data import load_dataset

    split = split or record["split"]
    if record.get("data_file"):
        return _read_data_file(record["data_file"], split)
    return load_dataset(record["dataset"], root=data_root or record.get("data_root"), split=split)


def _charset() -> str:
    """Box-drawing characters where stdout can print them, else ASCII."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "├─│└█▏".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "ascii"
    return "unicode"


def _report_tree(model, dataset: Dataset, out: Path | None, model_name: str, *, baseline: bool = False,
                 picture: bool = False, seed: int = 0) -> None:
    """Print the tree (and the baseline beside it); with ``out``, keep the text and the picture there."""
    from .report import baseline_comparison, format_comparison, format_tree

    assignments = model.predict(dataset).numpy()
    labels = None if dataset.y is None else dataset.y.cpu().numpy()
    text = format_tree(model.tree, assignments, labels, class_names=dataset.class_names, charset=_charset())
    print(text)
    if out is not None:
        _write_text(out / "tree.txt", format_tree(model.tree, assignments, labels, class_names=dataset.class_names)
                    + "\n")
    if baseline:
        if labels is None:
            print("no labels, so no baseline comparison")
        elif len(model.tree.leaves()) < 2:
            print("the tree has a single leaf, so no baseline comparison")
        else:
            comparison = baseline_comparison(model.tree, assignments, dataset.x, labels, seed=seed)
            print(format_comparison(comparison, model_name))
            if out is not None:
                _write_text(out / "baseline.json", json.dumps(comparison, indent=2))
    if picture and out is not None:
        import matplotlib

        matplotlib.use("Agg")  # a file only
        import matplotlib.pyplot as plt

        from . import plot

        plt.close(plot.plot_tree(model, dataset, class_names=dataset.class_names, path=out / "tree.png"))
        print(f"tree picture: {(out / 'tree.png').resolve()}")


def _show(args: argparse.Namespace) -> int:
    record, model, dataset = _open_run(args)
    seed = record.get("fit", {}).get("seed") or 0
    _report_tree(model, dataset, None, record["model"], baseline=args.baseline, seed=seed)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print("models:   " + ", ".join(MODELS))
            print("datasets: " + ", ".join(DATASETS))
            return 0
        if args.command == "fit":
            _resolve_data_file(args)
            return _fit(args, argv)
        if args.command == "show":
            return _show(args)
        if args.command == "plot":
            return _plot(args)
        return _evaluate(args)
    except KeyboardInterrupt:
        print("\npyro-hc: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, TypeError, OSError, FloatingPointError) as err:
        # bad settings, data, files (ModelFileError is a ValueError), a diverged fit (DivergenceError)
        name = type(err).__name__
        prefix = "" if isinstance(err, (CommandError, ValueError, FileNotFoundError)) else f"{name}: "
        print(f"pyro-hc: error: {prefix}{err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
