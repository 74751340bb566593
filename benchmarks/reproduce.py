"""Run a model's paper recipe on a named data set, resumable, with the paper's numbers beside the result.

    python benchmarks/reproduce.py --list
    python benchmarks/reproduce.py deepect mnist                       # the paper's budget (hours on a CPU)
    python benchmarks/reproduce.py deepect_aug usps --set reconstruction=sum
    python benchmarks/reproduce.py deepect usps --scale 0.1            # a tenth of every budget
    python benchmarks/reproduce.py cohiclust mnist --device cuda

A run is a sequence of stages, each cached under ``--workdir`` and reused by later runs:

1. **pretraining** (DeepECT: the denoising autoencoder, layer-wise then end to end; CoHiClust: the
   SimCLR backbone). Written to ``pretrained-<key>.pt``, where the key hashes the data set, seed and
   every setting the pretraining depends on, so DeepECT and DeepECT + Aug, under either
   reconstruction weighting of the main phase (the autoencoder is always trained on the per-feature
   mean, as the authors train it), start from the same file, as the DeepECT paper runs every method
   from the same autoencoders (Sec. 3.1).
2. **two-stage baselines on the pretrained embedding**, measured in the same run: bisecting k-means
   (largest-SSE split) and k-means + Ward with ``max_leaves`` leaves.
3. **the model's main phase**, from the pretrained file.

Every engine phase writes a checkpoint (parameters, optimiser, tree, history, epoch) every
``--checkpoint-every`` epochs; a run stopped at any point (Ctrl-C, a lost machine) and started again
with the same command resumes from the last checkpoint of the stage it was in. The result is written
as JSON and Markdown (``--out``; default ``benchmarks/results/reproduce_<recipe>_<data>_<device>[_scale].json``)
with the device, the budget actually run, the seed(s), wall times, and the paper's numbers beside ours.

Adding a recipe is one :class:`Recipe` entry in :data:`RECIPES`: the registry name, constructor
parameters, a budget (steps or epochs per phase), the paper's numbers and, when the model has a
pretraining stage of its own that should be shared and cached, its kind (:data:`PRETRAINERS`). A
model without such a stage (VaDE, k-DVAE, k-DAE: ``pretrain=None``) runs its own ``fit`` as the
main stage, phases and all, through the estimator's own resumable checkpoint
(``fit(checkpoint=..., resume=True)``); ``phase_params`` says which constructor parameter each
budget phase sets, and its two-stage baselines are measured on the fitted model's own embedding.
A recipe with ``start_from`` begins from the fitted model of another recipe on the same data and
seed (k-DVAE and k-DAE from the VaDE recipe, through ``init_from``): that recipe is run first if
its model file is not in ``--workdir`` yet, so one VaDE serves every variant (``--start-scale``
sets its budget apart from the variant's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import pyro_hc
import pyro_hc.models.cohiclust  # noqa: F401  (registers "cohiclust")
import pyro_hc.models.deepect  # noqa: F401  (registers "deepect")
from pyro_hc import metrics
from pyro_hc.baselines import bisecting_kmeans_tree, kmeans_ward_tree
from pyro_hc.infer import Callback, SVIEngine, load_checkpoint, save_checkpoint
from pyro_hc.models.cohiclust import BatchNormStatsSync, SimCLRPretraining
from pyro_hc.models.deepect import LayerwisePretraining, flat_assignments
from pyro_hc.models.pretrain import AutoencoderPretraining
from pyro_hc.report import machine_record, write_record

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Recipe:
    """One paper run: what to build, how long to train it, and what the paper reports.

    ``budget`` maps a phase (``"layerwise"``, ``"pretrain"``, ``"train"``) to its length in
    ``unit`` (``"steps"``: optimisation steps, rounded up to whole epochs; ``"epochs"``); ``--scale``
    multiplies every entry. ``params`` are constructor parameters of the model (the budget's
    epochs are added). ``pretrain`` names an entry of :data:`PRETRAINERS` or is None.
    """

    model: str
    params: dict[str, Any]
    budget: dict[str, int]
    unit: str
    paper: dict[str, float]
    source: str
    pretrain: str | None = None
    split: str = "all"
    baselines: bool = True
    paper_baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    phase_params: dict[str, str] = field(default_factory=lambda: {"train": "epochs"})
    start_from: str | None = None


# the DeepECT paper (Mautz, Plant & Böhm 2020, Sec. 3.1): D-500-500-2000-10, Adam lr 1e-4, batch 256,
# 20,000 layer-wise steps per layer with 20% dropout, 50,000 fine-tuning steps with 20% corruption,
# 50,000 DeepECT steps, a split every 500 steps, up to 20 leaves; MNIST and USPS are train + test.
_DEEPECT = dict(max_leaves=20, grow_interval=500, prune_threshold=0.1, latent_dim=10, hidden_dims=(500, 500, 2000),
                batch_size=256, lr=1e-4, pretrain_lr=1e-4, corruption=0.2, pretrain_dropout=0.2,
                reconstruction="mean")
_DEEPECT_BUDGET = {"layerwise": 20_000, "pretrain": 50_000, "train": 50_000}
_DEEPECT_SOURCE = "Mautz et al. 2020, Tables 2-4 (means over ten autoencoders)"

RECIPES: dict[tuple[str, str], Recipe] = {
    ("deepect", "mnist"): Recipe(
        "deepect", {**_DEEPECT, "augment": False}, _DEEPECT_BUDGET, "steps",
        {"dp": 0.82, "lp": 0.93, "nmi": 0.83, "acc": 0.85}, _DEEPECT_SOURCE, pretrain="autoencoder",
        paper_baselines={"ae_bisecting": {"dp": 0.53, "lp": 0.78}, "ae_kmeans": {"nmi": 0.70, "acc": 0.77}}),
    ("deepect_aug", "mnist"): Recipe(
        "deepect", {**_DEEPECT, "augment": True}, _DEEPECT_BUDGET, "steps",
        {"dp": 0.94, "nmi": 0.93, "acc": 0.95}, _DEEPECT_SOURCE, pretrain="autoencoder",
        paper_baselines={"ae_bisecting": {"dp": 0.53, "lp": 0.78}, "ae_kmeans": {"nmi": 0.70, "acc": 0.77}}),
    ("deepect", "usps"): Recipe(
        "deepect", {**_DEEPECT, "augment": False}, _DEEPECT_BUDGET, "steps",
        {"dp": 0.72, "lp": 0.85, "nmi": 0.71, "acc": 0.71}, _DEEPECT_SOURCE, pretrain="autoencoder",
        paper_baselines={"ae_bisecting": {"dp": 0.39, "lp": 0.69}, "ae_kmeans": {"nmi": 0.49, "acc": 0.56}}),
    ("deepect_aug", "usps"): Recipe(
        "deepect", {**_DEEPECT, "augment": True}, _DEEPECT_BUDGET, "steps",
        {"acc": 0.82}, "Mautz et al. 2020, Table 4 (average ACC)", pretrain="autoencoder",
        paper_baselines={"ae_bisecting": {"dp": 0.39, "lp": 0.69}, "ae_kmeans": {"nmi": 0.49, "acc": 0.56}}),
    # CoHiClust (Znalezniak et al. 2023, Sec. 4 and the official code): ResNet-18, a tree of height 4
    # pruned to 10 leaves one per epoch from epoch 10, 200 SimCLR + 100 tree epochs of batch 256,
    # Adam lr 1e-3 and weight decay 1e-6, SimCLR's augmentations, R1 decayed by 2^-depth;
    # trained and scored on the MNIST training set.
    ("cohiclust", "mnist"): Recipe(
        "cohiclust", dict(depth=4, n_leaves=10, backbone="resnet18", stem="imagenet", augment="simclr",
                          r1="depth_decayed", batch_size=256, lr=1e-3, weight_decay=1e-6, prune_start=10),
        {"pretrain": 200, "train": 100}, "epochs", {"acc": 0.99, "nmi": 0.97, "dp": 0.97},
        "Znalezniak et al. 2023, Tables 2 and 4", pretrain="simclr", split="train"),
    # VaDE (Jiang et al. 2017, Sec. 4 and the authors' Keras code): D-500-500-2000-10, batch 100, Adam lr 2e-3
    # decayed by 0.9 every 10 epochs, 300 epochs after the autoencoder's pretraining (our default 50 epochs;
    # the paper's pretrained weights came without their training code); train + test.
    ("vade", "mnist"): Recipe(
        "vade", dict(n_clusters=10, hidden_dims=(500, 500, 2000), batch_size=100, lr=2e-3, lr_decay=0.9,
                     lr_decay_every=10),
        {"pretrain": 50, "train": 300}, "epochs", {"acc": 0.9446}, "Jiang et al. 2017, Table 2",
        phase_params={"pretrain": "pretrain_epochs", "train": "epochs"}),
    # k-DVAE and k-DAE (the k-DVAE paper, Sec. 4.2): k-means in a pretrained VaDE's embedding starts one
    # 500-100-10 VAE (autoencoder) per cluster; the paper gives no schedule, so the models' defaults
    # (20 warm-up + 100 epochs, batch 100) run. Their VaDE is the ("vade", data) recipe's model, whose record
    # has the two-stage baselines on its embedding; theirs would be meaningless (each datum's z lives in its own
    # cluster's latent space), and their start (k-means in the VaDE's embedding) is in the start column.
    ("kdvae", "mnist"): Recipe(
        "kdvae", dict(n_clusters=10, objective="hard", hidden_dims=(500, 100), batch_size=100),
        {"warmup": 20, "train": 100}, "epochs", {"acc": 0.9787}, "k-DVAE paper, Table 2 (mean of ten runs)",
        phase_params={"warmup": "warmup_epochs", "train": "epochs"}, start_from="vade", baselines=False),
    ("kdae", "mnist"): Recipe(
        "kdae", dict(n_clusters=10, hidden_dims=(500, 100), batch_size=100),
        {"warmup": 20, "train": 100}, "epochs", {"acc": 0.9651}, "k-DVAE paper, Table 2 (mean of ten runs)",
        phase_params={"warmup": "warmup_epochs", "train": "epochs"}, start_from="vade", baselines=False),
}


# checkpoints and resume ------------------------------------------------------------------------------


def save_state(engine: SVIEngine, path: Path, finished: int) -> None:
    """The engine's state (parameters, optimiser, tree, history) with the number of epochs finished."""
    payload = engine.state_dict()
    payload["epoch"] = int(finished)
    save_checkpoint(path, payload)


class Checkpoint(Callback):
    """Write the engine's state every ``every`` epochs and at the end of the phase."""

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = Path(path), int(every)

    def on_epoch_end(self, state) -> None:
        if (state.epoch + 1) % self.every == 0:  # the engine counts the epoch after this hook
            save_state(state.engine, self.path, state.epoch + 1)

    def on_fit_end(self, state) -> None:
        save_state(state.engine, self.path, state.engine.epoch)


class ResumeFrom(Callback):
    """At the start of a phase, restore a :class:`Checkpoint` of it (if one exists)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_fit_start(self, state) -> None:
        if self.path.exists():
            state.engine.load_checkpoint(self.path)


def finished_epochs(path: Path) -> int:
    return int(load_checkpoint(path)["epoch"]) if Path(path).exists() else 0


def run_engine(module, x, *, phase: str, epochs: int, batch_size: int, seed: int, progress: bool, workdir: Path,
               every: int, callbacks=(), **optim) -> None:
    """Train ``module`` for ``epochs`` epochs in the shared engine, resuming from its checkpoint."""
    path = workdir / f"checkpoint-{phase}.pt"
    done = finished_epochs(path)
    if done >= epochs:
        engine = SVIEngine(module, phase=phase, progress=False, **optim)
        engine.load_checkpoint(path)
        return
    engine = SVIEngine(module, phase=phase, progress=progress, callbacks=[*callbacks, Checkpoint(path, every)], **optim)
    if done:
        engine.load_checkpoint(path)
        print(json.dumps({"resume": phase, "from_epoch": done}), flush=True)
    engine.fit(x, epochs=epochs - done, batch_size=batch_size, seed=seed + done)


# pretraining stages: build the model without training it, train its networks, save it --------------------


def _pretrain_autoencoder(model, x, epochs: dict[str, int], args, workdir: Path) -> None:
    """DeepECT's autoencoder: layer-wise with dropout, then end to end with input corruption (Sec. 3.1)."""
    module = model.module_
    optim = dict(lr=model.pretrain_lr)
    for layer in range(len(model.hidden_dims) + 1) if epochs.get("layerwise", 0) > 0 else ():
        pair = LayerwisePretraining(module.encoder, module.decoder, layer, dropout=model.pretrain_dropout,
                                    reconstruction=model.reconstruction)
        run_engine(pair, x, phase=f"pretrain_layer{layer}", epochs=epochs["layerwise"], batch_size=model.batch_size,
                   seed=args.seed, progress=args.progress, workdir=workdir, every=args.checkpoint_every, **optim)
    if epochs.get("pretrain", 0) > 0:
        autoencoder = AutoencoderPretraining(module.encoder, module.decoder, corruption=model.corruption)
        run_engine(autoencoder, x, phase="pretrain", epochs=epochs["pretrain"], batch_size=model.batch_size,
                   seed=args.seed, progress=args.progress, workdir=workdir, every=args.checkpoint_every, **optim)


def _pretrain_simclr(model, x, epochs: dict[str, int], args, workdir: Path) -> None:
    """CoHiClust's SimCLR phase: R2 alone on the backbone and the contrastive head, each epoch's short
    last batch dropped as in the model's own fit (the official loader's ``drop_last=True``)."""
    run_engine(SimCLRPretraining(model.module_), x, phase="pretrain", epochs=epochs["pretrain"],
               batch_size=model.batch_size, seed=args.seed, progress=args.progress, workdir=workdir,
               every=args.checkpoint_every, callbacks=[BatchNormStatsSync()], lr=model.lr,
               weight_decay=model.weight_decay, drop_last=True)


@dataclass(frozen=True)
class Pretrainer:
    """A pretraining stage shared and cached across recipes.

    ``disable``: the model's parameters that turn off its own pretraining (the stage runs it instead);
    ``train``: ``(model, x, epochs, args, workdir)``, trains the built model's networks in place;
    ``main_only``: parameters only the main phase reads, left out of the pretraining's cache key;
    ``fixed``: parameters the stage sets whatever the main phase uses.
    """

    disable: dict[str, Any]
    train: Callable
    main_only: frozenset[str]
    fixed: dict[str, Any] = field(default_factory=dict)


#: pretraining stages by kind.
#: DeepECT's autoencoder is always trained on the per-feature mean of the squared error, as the
#: authors' scripts train it, so both ``reconstruction`` weightings of the main phase start from one
#: file and their rows differ in the main phase only (under Adam the pretraining alone barely depends
#: on the weighting: summing over the ``D`` features scales every gradient by ``D``).
PRETRAINERS: dict[str, Pretrainer] = {
    "autoencoder": Pretrainer({"pretrain_epochs": 0, "layerwise_pretrain_epochs": 0}, _pretrain_autoencoder,
                              frozenset({"augment", "max_leaves", "grow_interval", "prune_threshold", "lr",
                                         "grow_sample", "prune_check_every", "reconstruction"}),
                              {"reconstruction": "mean"}),
    "simclr": Pretrainer({"pretrain_epochs": 0}, _pretrain_simclr,
                         frozenset({"n_leaves", "prune_start", "prune_every", "r1", "beta1", "beta2", "depth",
                                    "tree_head"})),
}


# scores -------------------------------------------------------------------------------------------------


def tree_scores(tree, leaves, labels, k: int) -> dict[str, float]:
    """DP and LP of the tree; NMI and ACC of the first ``k − 1`` splits' partition (DeepECT's rule, Sec. 3.2)
    where the tree records its split order, else of the leaves."""
    leaves = np.asarray(leaves)
    try:
        flat = flat_assignments(tree, leaves, min(k, len(tree.leaves())))
    except ValueError:  # no split order: score the leaves
        flat = leaves
    return {"dp": metrics.dendrogram_purity(tree, leaves, labels), "lp": metrics.leaf_purity(tree, leaves, labels),
            "nmi": metrics.nmi(labels, flat), "acc": metrics.cluster_acc(labels, flat),
            "n_leaves": len(tree.leaves())}


def baseline_rows(embedding: np.ndarray, labels: np.ndarray, n_leaves: int, k: int, seed: int) -> list[dict]:
    rows = []
    started = time.perf_counter()
    tree, leaves = bisecting_kmeans_tree(embedding, n_leaves, seed=seed)
    rows.append({"model": "ae_bisecting", **tree_scores(tree, leaves, labels, k),
                 "seconds": time.perf_counter() - started})
    started = time.perf_counter()
    tree, leaves = kmeans_ward_tree(embedding, n_leaves, seed=seed)
    row = {"model": "ae_kmeans_ward", **tree_scores(tree, leaves, labels, k)}
    _, flat = kmeans_ward_tree(embedding, k, seed=seed)  # k-means with k clusters: "AE + k-means"
    row.update(nmi=metrics.nmi(labels, flat), acc=metrics.cluster_acc(labels, flat),
               seconds=time.perf_counter() - started)
    rows.append(row)
    return rows


# the run -----------------------------------------------------------------------------------------------


def key_of(payload: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def to_epochs(recipe: Recipe, phase: str, n: int, batch_size: int, scale: float) -> int:
    amount = recipe.budget.get(phase, 0) * scale
    if amount <= 0:
        return 0
    if recipe.unit == "epochs":
        return max(1, round(amount))
    return pyro_hc.models.deepect.DeepECT.epochs_for_steps(max(1, round(amount)), n, batch_size)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def result_name(args) -> str:
    """``reproduce_<recipe>_<data>_<device>[_scale<s>][_<name>-<value>...].json``."""
    device = str(pyro_hc.infer.resolve_device(args.device)).split(":")[0]
    suffix = "" if args.scale == 1 else f"_scale{args.scale:g}"
    suffix += "".join(f"_{name}-{value}" for name, value in sorted(parse_overrides(args.set).items())
                      if isinstance(value, (str, int, float)))
    return f"reproduce_{args.recipe}_{args.dataset}_{device}{suffix}.json"


def run(args) -> dict[str, Any]:
    recipe = RECIPES[(args.recipe, args.dataset)]
    data = pyro_hc.load_dataset(args.dataset, split=recipe.split)
    if args.n is not None and args.n < len(data):
        data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.n])
    labels, k = data.y.numpy(), data.n_classes
    params = {**recipe.params, **parse_overrides(args.set)}
    batch_size = int(params.get("batch_size", 256))
    epochs = {phase: to_epochs(recipe, phase, len(data), batch_size, args.scale) for phase in recipe.budget}
    fit = dict(device=args.device, seed=args.seed, progress=args.progress)
    device = str(pyro_hc.infer.resolve_device(args.device))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    rows: list[dict] = []

    pretrained = None
    if recipe.pretrain is not None:
        stage = PRETRAINERS[recipe.pretrain]
        shared = {k_: v for k_, v in params.items() if k_ not in stage.main_only}
        key = key_of({"model": recipe.model, "data": args.dataset, "split": recipe.split, "n": args.n,
                      "seed": args.seed, "params": shared, "epochs": {p: e for p, e in epochs.items() if p != "train"}})
        pretrained = workdir / f"pretrained-{key}.pt"
        stage_dir = workdir / f"pretrain-{key}"
        started = time.perf_counter()
        if not pretrained.exists():
            stage_dir.mkdir(exist_ok=True)
            model = pyro_hc.get_model(recipe.model, **{**params, **stage.disable, **stage.fixed}, epochs=0)
            model.fit(data, **{**fit, "progress": False})  # builds the module; trains nothing
            stage.train(model, model._prepare_input(data).to(model.device_), epochs, args, stage_dir)
            model.save(pretrained)
        timings["pretrain_seconds"] = time.perf_counter() - started
        if recipe.baselines:
            embedding = pyro_hc.models.load(pretrained).transform(data).numpy()
            for row in baseline_rows(embedding, labels, int(params.get("max_leaves", params.get("n_leaves", k))), k,
                                     args.seed):
                rows.append(row)
                print(json.dumps(row), flush=True)

    start_file = None
    if recipe.start_from is not None:  # the model this one starts from: its recipe's file, fitted first if need be
        start_scale = getattr(args, "start_scale", None)
        start_args = argparse.Namespace(**{**vars(args), "recipe": recipe.start_from, "set": [],
                                           "scale": args.scale if start_scale is None else start_scale})
        start_args.out = str(Path(args.out).parent / result_name(start_args))
        start_record = run(start_args)
        write(start_record, Path(start_args.out))
        start_file = start_record["model_file"]
        params["init_from"] = start_file

    main_key = key_of({"recipe": args.recipe, "data": args.dataset, "n": args.n, "seed": args.seed, "params": params,
                       "epochs": epochs, "pretrained": str(pretrained)})
    main_dir = workdir / f"main-{main_key}"
    main_dir.mkdir(exist_ok=True)
    model_file = main_dir / "model.pt"
    main_params = {**params, **{recipe.phase_params[phase]: n_epochs for phase, n_epochs in epochs.items()
                                if phase in recipe.phase_params}}
    started = time.perf_counter()
    if pretrained is not None:  # the main phase alone, resumed by the callbacks (its pretraining is a stage above)
        checkpoint = main_dir / "checkpoint-train.pt"
        main_params.update(PRETRAINERS[recipe.pretrain].disable, pretrained=str(pretrained))
        done = finished_epochs(checkpoint)
        model = pyro_hc.get_model(recipe.model, **main_params)
        model.fit(data, epochs=max(epochs.get("train", 0) - done, 0),
                  callbacks=[ResumeFrom(checkpoint), Checkpoint(checkpoint, args.checkpoint_every)], **fit)
        model.save(model_file)
    elif model_file.exists():  # fitted by an earlier run (for example as another recipe's start)
        model, done = pyro_hc.load(model_file, device=args.device), None
        started -= float(model.fit_info_.get("seconds", 0.0))  # the record keeps the fit's own time
    else:  # the model's whole fit, phases and all, through the estimator's resumable checkpoint
        checkpoint = main_dir / "checkpoint.pt"
        done = checkpoint.exists()
        model = pyro_hc.get_model(recipe.model, **main_params)
        model.fit(data, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every, resume=done,
                  monitor_labels=labels, **fit)
        model.save(model_file)
    timings["train_seconds"] = time.perf_counter() - started
    events = model.tree.events
    row = {"model": args.recipe, **tree_scores(model.tree, model.predict(data).numpy(), labels, k),
           "steps": int(model.history_["step"][-1]) if len(model.history_) else 0, "resumed_from_epoch": done,
           "splits": sum(e["kind"] == "split" for e in events), "prunes": sum(e["kind"] == "prune" for e in events),
           "seconds": float(model.fit_info_.get("seconds", timings["train_seconds"]))}
    start = next((r for r in model.history_.records if r.get("phase") == "init"), {})
    row.update({f"start_{name}": float(start[name]) for name in ("acc", "nmi") if name in start})
    rows.insert(0, row)
    print(json.dumps(row), flush=True)
    if recipe.pretrain is None and recipe.baselines:  # two-stage baselines on the fitted model's own embedding
        for baseline in baseline_rows(model.transform(data).numpy(), labels, k, k, args.seed):
            baseline["model"] = f"{args.recipe}_embedding_{baseline['model'].removeprefix('ae_')}"
            rows.append(baseline)
            print(json.dumps(baseline), flush=True)
    return {
        "benchmark": "reproduce", "recipe": args.recipe, "dataset": args.dataset, "model": recipe.model,
        "n": len(data), "split": recipe.split, **machine_record(device),
        "seeds": [args.seed], "scale": args.scale, "budget_epochs": epochs, "budget_paper": dict(recipe.budget),
        "budget_unit": recipe.unit, "params": {k_: list(v) if isinstance(v, tuple) else v for k_, v in params.items()},
        "paper": recipe.paper, "paper_baselines": recipe.paper_baselines, "source": recipe.source,
        **timings, "start_from": start_file, "model_file": str(model_file), "results": rows,
    }


def write(record: dict[str, Any], out: Path) -> None:
    paper = {record["recipe"]: record["paper"], **record["paper_baselines"],
             "ae_kmeans_ward": record["paper_baselines"].get("ae_kmeans", {})}

    def cell(row: dict, name: str) -> str:
        ours = f"{row[name]:.3f}" if name in row else "–"
        theirs = paper.get(row["model"], {}).get(name)
        return f"{ours} ({theirs:.2f})" if theirs is not None else ours

    lines = [f"# {record['recipe']} on {record['dataset']} (n = {record['n']}, split {record['split']})", "",
             f"Device {record['device_name']} ({record['device']}, {record['cpu_threads']} CPU threads); seeds "
             f"{record['seeds']}; budget scale {record['scale']} of the paper's {record['budget_paper']} "
             f"({record['budget_unit']}), run as epochs {record['budget_epochs']}; pretraining "
             f"{record.get('pretrain_seconds', 0):.0f} s, main phase {record['train_seconds']:.0f} s (wall).",
             f"Paper: {record['source']}; in parentheses beside ours.", "",
             "| model | DP | LP | NMI (k) | ACC (k) | start NMI / ACC | leaves | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {cell(r, 'dp')} | {cell(r, 'lp')} | {cell(r, 'nmi')} | {cell(r, 'acc')} | "
              + (f"{r['start_nmi']:.3f} / {r['start_acc']:.3f}" if "start_acc" in r else "–")
              + f" | {r['n_leaves']} | {r['seconds']:.0f} |" for r in record["results"]]
    if record.get("start_from"):
        lines.append(f"\nStarted from the fitted model `{record['start_from']}` (`init_from`).")
    write_record(out, record, "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", help="a recipe name (see --list)")
    parser.add_argument("dataset", nargs="?", help="a data set name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every phase's budget (1: the paper's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a model parameter (JSON values), e.g. --set reconstruction=sum")
    parser.add_argument("--start-scale", type=float, default=None,
                        help="budget scale of the recipe this one starts from (start_from; default: --scale), "
                             "e.g. k-DVAE's full schedule from a shorter VaDE")
    parser.add_argument("--n", type=int, default=None, help="a seeded subset of this many points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    parser.add_argument("--workdir", default=None, help="cache of pretrained networks and checkpoints "
                        "(default: reproduce_work/ beside --out; *.pt files are not committed)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.list:
        for (name, dataset), recipe in RECIPES.items():
            print(f"{name:12s} {dataset:8s} {recipe.model:10s} budget {recipe.budget} {recipe.unit}; paper {recipe.paper}")
        return
    if (args.recipe, args.dataset) not in RECIPES:
        parser.error(f"no recipe ({args.recipe!r}, {args.dataset!r}); known: {sorted(RECIPES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or ROOT / "benchmarks" / "results" / result_name(args))
    args.out = str(out)
    args.workdir = args.workdir or str(out.parent / "reproduce_work")
    record = run(args)
    write(record, out)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
