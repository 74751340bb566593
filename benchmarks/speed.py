"""Training throughput of every model: Pyro's SVI step beside a plain-PyTorch step of the same loss.

For each model the script builds the module the estimator would train (paper-sized networks,
MNIST-shaped data: 784 Bernoulli features), and times

- ``pyro``: one step of the shared engine (``SVIEngine.loss_and_grad``: Pyro traces model and
  guide, enumerates the discrete sites with ``TraceEnum_ELBO``, backward, Adam);
- ``torch``: one step of plain PyTorch on the same module and batch: the negative single-sample
  ELBO written with tensors only (``-mean(log p(x, z) - log q(z | x))``, discrete sites summed
  out by ``logsumexp``, the global sticks at their guide means — the module's
  ``log_importance_weights`` with one reparameterised draw; for DeepECT and CoHiClust, whose losses
  enter through ``pyro.factor``, the loss itself), backward, Adam;

and reports examples per second, their ratio (Pyro's overhead) and the peak device memory. A
second table grows the nCRP trees (8 to 512 paths at depth 3 and 4) and k-DVAE's k to show how
a step's cost grows with the tree (and DeepECT's leaves, CoHiClust's tree height). ``--compare-pyro-elbo``
also times the engine with Pyro's own ``Trace_ELBO`` / ``TraceEnum_ELBO``, the "before" of the engine's
host-sync-free ELBOs (:mod:`pyro_hc.infer.elbo`). With ``--epoch`` it also times one full epoch of HCRL2 (depth
3, 20 paths) on 70,000 MNIST-shaped points through ``SVIEngine.fit`` with the GROW / PRUNE /
MERGE callback, as a user's run would do it.

    python benchmarks/speed.py --device cuda --out benchmarks/results/speed_h200.json
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time

import torch

import pyro_hc
from pyro_hc.estimator import DataSpec
from pyro_hc.infer import SVIEngine, local_params, resolve_device, set_seed
from pyro_hc.models import get_model, list_models
from pyro_hc.report import machine_record, write_record

N_FEATURES = 784
IMAGE_SHAPE = (1, 28, 28)
NUM_DATA = 70_000

#: configuration of each model for the throughput table (paper-sized networks by default)
MODEL_CONFIGS = {
    "vae": {},
    "vade": {"n_clusters": 10},
    "kdvae": {"n_clusters": 10},
    "hcrl2": {"depth": 3},
    "hcrl1": {"depth": 3},
    "vae_ncrp": {"depth": 3},
    "deepect": {"max_leaves": 8},
    "cohiclust": {"depth": 4},
}
NCRP_MODELS = ("hcrl2", "hcrl1", "vae_ncrp")
#: models trained on a loss (``pyro.factor``) instead of an ELBO; their reference step calls the loss directly
LOSS_MODELS = ("deepect", "cohiclust")


def balanced_branching(n_paths: int, depth: int) -> list[int]:
    """Branching factors of the ``depth - 1`` internal levels whose product is ``n_paths``, as even as possible."""
    levels = depth - 1
    factors = []
    remaining = n_paths
    for level in range(levels, 0, -1):
        b = max(1, round(remaining ** (1.0 / level)))
        while remaining % b:
            b -= 1
        factors.append(b)
        remaining //= b
    return factors


def grow_complete_tree(module: torch.nn.Module, branching: list[int]) -> None:
    """Turn the module's single initial path into a complete tree with the given branching per level."""
    frontier = [module.tree.root]
    for b in branching:
        for node in frontier:
            for _ in range(b - len(module.tree.children(node))):
                module.grow(node)
        frontier = [c for node in frontier for c in module.tree.children(node)]


def split_to_leaves(module: torch.nn.Module, n_leaves: int) -> None:
    """Split DeepECT's leaves breadth-first until the tree has ``n_leaves`` leaves."""
    generator = torch.Generator().manual_seed(0)
    while len(module.tree.leaves()) < n_leaves:
        leaf = min(module.tree.leaves(), key=module.tree.level)
        center = module.centers[leaf].detach().cpu()
        children = center + 0.1 * torch.randn(2, center.shape[0], generator=generator)
        module.split(leaf, children, torch.ones(2))


def build_module(name: str, config: dict, device: torch.device, hidden_dims: tuple[int, ...] | None,
                 n_paths: int | None = None, backbone: str = "resnet18") -> tuple[torch.nn.Module, str]:
    """The module the estimator would train (grown to ``n_paths`` paths or leaves for the tree models) and its
    loss (an ELBO's name; ``"trace"`` for the ``pyro.factor`` losses)."""
    config = dict(config)
    if name == "cohiclust":
        config["backbone"] = backbone  # a CNN: ``hidden_dims`` does not apply
    elif hidden_dims is not None:
        config["hidden_dims"] = hidden_dims
    if name == "deepect" and n_paths is not None:
        config["max_leaves"] = max(n_paths, 2)
    if name in NCRP_MODELS and n_paths is not None:
        branching = balanced_branching(n_paths, config["depth"])
        config["capacity"] = 1 + sum(math.prod(branching[:i + 1]) for i in range(len(branching))) + 1
    estimator = get_model(name, **config)
    estimator.data_spec_ = DataSpec(N_FEATURES, IMAGE_SHAPE, "bernoulli")
    estimator.device_ = device
    module = estimator._new_module().to(device)
    if name in NCRP_MODELS and n_paths is not None:
        with local_params(), torch.no_grad():
            grow_complete_tree(module, branching)
        assert len(module.tree.leaves()) == n_paths, (len(module.tree.leaves()), n_paths)
    if name == "deepect":
        with torch.no_grad():
            split_to_leaves(module, config["max_leaves"])
    return module, getattr(estimator, "loss", "trace")


def reference_loss(name: str, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The loss the engine optimises, computed with tensors only (no Pyro), scaled to ``NUM_DATA`` points
    like the engine's subsampled data plate."""
    scale = NUM_DATA / x.shape[0]
    if name == "deepect":
        terms = module.loss_terms(x)  # Eq. 6: the plate's per-datum terms, then L_NC scaled like the plate
        return scale * (terms["rec"] + terms["dc"]).sum() + NUM_DATA * terms["nc"]
    if name == "cohiclust":
        return NUM_DATA * module.losses(x)["loss"]  # Eq. 2, one factor per datum of the plate
    return -module.log_importance_weights(x, 1).mean() * NUM_DATA  # the single-sample ELBO


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, steps: int, warmup: int) -> tuple[float, float | None]:
    """Seconds per step (after ``warmup`` steps) and the peak device memory in MiB (CUDA only)."""
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return elapsed, peak


def pyro_builtin_elbo(loss: str):
    """Pyro's own ELBO class for ``loss`` (what the engine used before its host-sync-free ELBOs)."""
    from pyro.infer import Trace_ELBO, TraceEnum_ELBO

    return (TraceEnum_ELBO if loss == "trace_enum" else Trace_ELBO)(max_plate_nesting=1)


def measure(name: str, config: dict, device: torch.device, batch_size: int, steps: int, warmup: int,
            hidden_dims: tuple[int, ...] | None, n_paths: int | None = None, cuda_graphs: bool = False,
            compare_pyro_elbo: bool = False, backbone: str = "resnet18") -> dict:
    """Pyro engine step vs plain-PyTorch step of one model; returns a result row.

    With ``compare_pyro_elbo`` the row also times the engine with Pyro's own ``Trace_ELBO`` /
    ``TraceEnum_ELBO`` (``builtin_*``), the "before" of the engine's host-sync-free ELBOs.
    """
    set_seed(0)
    x = torch.rand(batch_size, *IMAGE_SHAPE, device=device).bernoulli()
    index = torch.arange(batch_size, device=device)
    row = {"model": name, "batch_size": batch_size}
    with local_params():
        module, loss = build_module(name, config, device, hidden_dims, n_paths, backbone)
        module.train()
        if getattr(module, "tree", None) is not None:
            row["n_paths"] = len(module.tree.leaves())
            row["n_nodes"] = len(module.tree)
        engine = SVIEngine(module, loss=loss, progress=False, lr=1e-4)
        pyro_step, pyro_peak = time_steps(lambda: engine.loss_and_grad(x, index, NUM_DATA), device, steps, warmup)
        if compare_pyro_elbo:
            builtin = SVIEngine(module, loss=pyro_builtin_elbo(loss), progress=False, lr=1e-4)
            builtin_step, _ = time_steps(lambda: builtin.loss_and_grad(x, index, NUM_DATA), device, steps, warmup)
            row.update(builtin_ms_per_step=1e3 * builtin_step, builtin_examples_per_s=batch_size / builtin_step)

        optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-4,
                                     fused=True if device.type == "cuda" else None)  # as the engine does

        def torch_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            reference_loss(name, module, x).backward()
            optimizer.step()

        torch_step_s, torch_peak = time_steps(torch_step, device, steps, warmup)
        if device.type == "cuda" and cuda_graphs:  # the engine's step replayed from a CUDA graph (experimental)
            graph_engine = SVIEngine(module, loss=loss, progress=False, lr=1e-4, cuda_graphs=True)
            graph_step, graph_peak = time_steps(lambda: graph_engine._step(x, index, NUM_DATA, batch_size), device,
                                                steps, warmup)
            row.update(graph_examples_per_s=batch_size / graph_step, graph_ms_per_step=1e3 * graph_step,
                       graph_overhead_ratio=graph_step / torch_step_s, graph_peak_mib=graph_peak,
                       graph_captured=graph_engine.graph_captures > 0)
    row.update(
        pyro_examples_per_s=batch_size / pyro_step, torch_examples_per_s=batch_size / torch_step_s,
        pyro_ms_per_step=1e3 * pyro_step, torch_ms_per_step=1e3 * torch_step_s,
        pyro_overhead_ratio=pyro_step / torch_step_s, pyro_peak_mib=pyro_peak, torch_peak_mib=torch_peak,
    )
    return row


def time_hcrl2_epoch(device: torch.device, n_paths: int, batch_size: int, hidden_dims,
                     cuda_graphs: bool = False) -> dict:
    """One full epoch of HCRL2 through ``SVIEngine.fit`` with the GROW / PRUNE / MERGE callback."""
    from pyro_hc.heuristics import NCRPHeuristics

    set_seed(0)
    x = torch.rand(NUM_DATA, *IMAGE_SHAPE, device=device).bernoulli()
    with local_params():
        module, _ = build_module("hcrl2", {"depth": 3}, device, hidden_dims, n_paths)
        heuristics = NCRPHeuristics(grow_every=10**9, lock_epochs=10**9)  # statistics only: keep the tree
        engine = SVIEngine(module, loss="trace_enum", progress=False, lr=2e-3, callbacks=[heuristics],
                           cuda_graphs=cuda_graphs)
        engine.fit(x[:batch_size * 4], epochs=1, batch_size=batch_size, seed=0)  # warm-up
        _sync(device)
        start = time.perf_counter()
        engine.fit(x, epochs=1, batch_size=batch_size, seed=0)
        _sync(device)
        seconds = time.perf_counter() - start
    return {"model": "hcrl2", "n_paths": n_paths, "num_data": NUM_DATA, "batch_size": batch_size,
            "cuda_graphs": engine.cuda_graphs, "graph_captures": engine.graph_captures, "epoch_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on the CPU")
    parser.add_argument("--models", nargs="+", default=list(MODEL_CONFIGS), choices=list(MODEL_CONFIGS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=None,
                        help="override every model's hidden layers (default: the paper's 500-500-2000)")
    parser.add_argument("--paths", type=int, nargs="+", default=[8, 32, 128, 512],
                        help="tree sizes of the scaling table (nCRP models)")
    parser.add_argument("--depths", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--clusters", type=int, nargs="+", default=[5, 10, 20, 40], help="k of the k-DVAE scaling")
    parser.add_argument("--leaves", type=int, nargs="+", default=[2, 8, 32, 128], help="leaves of the DeepECT scaling")
    parser.add_argument("--cohiclust-depths", type=int, nargs="+", default=[2, 4, 6, 8],
                        help="tree heights of the CoHiClust scaling (2^depth leaves)")
    parser.add_argument("--cohiclust-backbone", default="resnet18", help="CoHiClust's backbone (paper: resnet18)")
    parser.add_argument("--compare-pyro-elbo", action="store_true",
                        help="also time the engine with Pyro's own Trace_ELBO / TraceEnum_ELBO (the 'before')")
    parser.add_argument("--no-scaling", action="store_true", help="skip the tree-size table")
    parser.add_argument("--epoch", action="store_true", help="also time one full HCRL2 epoch on 70,000 points")
    parser.add_argument("--epoch-batch-sizes", type=int, nargs="+", default=[100, 256])
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also time the engine's experimental CUDA-graph step (a failed capture ends the run)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--no-progress", action="store_true", help="accepted for symmetry; nothing is shown")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    hidden = tuple(args.hidden_dims) if args.hidden_dims else None
    record = {
        "benchmark": "speed", **machine_record(device), "pyro_hc": pyro_hc.__version__,
        "python": sys.version.split()[0], "threads": torch.get_num_threads(), "tf32": bool(args.tf32),
        "budget": {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
                   "hidden_dims": hidden or "paper (500, 500, 2000)", "cohiclust_backbone": args.cohiclust_backbone},
        "results": [], "scaling": [], "epoch": [],
    }

    def write() -> None:
        if args.out:
            write_record(args.out, record)

    for name in args.models:
        row = measure(name, MODEL_CONFIGS[name], device, args.batch_size, args.steps, args.warmup, hidden,
                      n_paths=8 if name in NCRP_MODELS else None, cuda_graphs=args.cuda_graphs,
                      compare_pyro_elbo=args.compare_pyro_elbo, backbone=args.cohiclust_backbone)
        record["results"].append(row)
        graph = (f"  graph {row['graph_examples_per_s']:9.0f} ex/s (x{row['graph_overhead_ratio']:.2f}, "
                 f"captured {row['graph_captured']})" if "graph_examples_per_s" in row else "")
        builtin = (f"  pyro's own ELBO {row['builtin_examples_per_s']:9.0f} ex/s"
                   if "builtin_examples_per_s" in row else "")
        print(f"{name:9s} pyro {row['pyro_examples_per_s']:9.0f} ex/s  torch {row['torch_examples_per_s']:9.0f} "
              f"ex/s  overhead x{row['pyro_overhead_ratio']:.2f}{builtin}{graph}", flush=True)
        write()
    if not args.no_scaling:
        for name in [m for m in args.models if m in NCRP_MODELS]:
            for depth in args.depths:
                for n_paths in args.paths:
                    row = measure(name, {**MODEL_CONFIGS[name], "depth": depth}, device, args.batch_size,
                                  args.steps, args.warmup, hidden, n_paths=n_paths, cuda_graphs=args.cuda_graphs)
                    row["depth"] = depth
                    record["scaling"].append(row)
                    graph = f"  graph {row['graph_ms_per_step']:8.2f} ms/step" if "graph_ms_per_step" in row else ""
                    print(f"{name:9s} depth {depth} paths {n_paths:4d}: pyro {row['pyro_ms_per_step']:8.2f} ms/step"
                          f"  torch {row['torch_ms_per_step']:8.2f} ms/step{graph}", flush=True)
                    write()
        if "kdvae" in args.models:
            for k in args.clusters:
                row = measure("kdvae", {"n_clusters": k}, device, args.batch_size, args.steps, args.warmup, hidden,
                              cuda_graphs=args.cuda_graphs)
                row["n_clusters"] = k
                record["scaling"].append(row)
                print(f"kdvae     k {k:3d}: pyro {row['pyro_ms_per_step']:8.2f} ms/step"
                      f"  torch {row['torch_ms_per_step']:8.2f} ms/step", flush=True)
                write()
        tree_sizes = {"deepect": [("n_leaves", n, {"max_leaves": n}) for n in args.leaves],
                      "cohiclust": [("depth", d, {"depth": d}) for d in args.cohiclust_depths]}
        for name in [m for m in args.models if m in LOSS_MODELS]:
            for key, value, override in tree_sizes[name]:
                row = measure(name, {**MODEL_CONFIGS[name], **override}, device, args.batch_size, args.steps,
                              args.warmup, hidden, cuda_graphs=args.cuda_graphs, backbone=args.cohiclust_backbone)
                row[key] = value
                record["scaling"].append(row)
                print(f"{name:9s} leaves {row.get('n_paths', 2 ** value if key == 'depth' else value):4d}: pyro "
                      f"{row['pyro_ms_per_step']:8.2f} ms/step  torch {row['torch_ms_per_step']:8.2f} ms/step",
                      flush=True)
                write()
    if args.epoch:
        for batch_size in args.epoch_batch_sizes:
            for cuda_graphs in ((False, True) if device.type == "cuda" and args.cuda_graphs else (False,)):
                row = time_hcrl2_epoch(device, 20, batch_size, hidden, cuda_graphs)
                record["epoch"].append(row)
                print(f"hcrl2 epoch (70,000 points, 20 paths, batch {batch_size}, cuda graphs {row['cuda_graphs']}): "
                      f"{row['epoch_seconds']:.2f} s", flush=True)
                write()
    record["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
