"""The one SVI engine: every model of the zoo, Bayesian or a module loss, trains through it.

A trainable module exposes ``model(x, index, num_data)`` and ``guide(x, index, num_data)``
(Pyro's ``examples/vae`` shape). The engine draws shuffled index batches from data that already
sit on the training device, computes ``elbo.differentiable_loss`` and steps a torch optimiser over
``module.parameters()``. Training runs with Pyro's ``module_local_params`` setting so that every
model keeps its parameters inside its own ``PyroModule``: two models fitted in one process never
share Pyro's global parameter store, and checkpoints are ordinary ``state_dict``s. (Pyro fixes a
module's mode when it is built, so build modules inside :func:`~pyro_hc.infer.local_params` too.)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyro.infer import ELBO
from pyro.optim.clipped_adam import ClippedAdam
from tqdm import tqdm

from ..data import DeviceBatcher
from . import distributed
from .callbacks import Callback, FitState, History
from .checkpoint import load_checkpoint, save_checkpoint
from .device import local_params
from .elbo import DeviceTrace_ELBO, DeviceTraceEnum_ELBO
from .graphs import CapturedStep

__all__ = ["SVIEngine", "DivergenceError", "NonFiniteLossError", "make_elbo", "OPTIMIZERS", "ELBOS",
           "rng_state", "set_rng_state"]

OPTIMIZERS = ("adam", "clipped_adam")
ELBOS = ("trace", "trace_enum")


class _ELBOLoss(torch.nn.Module):
    """``forward`` = the differentiable negative ELBO, so ``DistributedDataParallel`` can wrap it."""

    def __init__(self, module: torch.nn.Module, elbo: ELBO) -> None:
        super().__init__()
        self.module = module
        self.elbo = elbo

    def forward(self, x: torch.Tensor, index: torch.Tensor | None, num_data: int) -> torch.Tensor:
        return self.elbo.differentiable_loss(self.module.model, self.module.guide, x, index, num_data)


class DivergenceError(FloatingPointError):
    """Training diverged; the message names the phase, epoch and step and says what to change.

    Raised when the loss grows ``divergence_factor`` times beyond its starting value (a loss that
    "trains" to 1e20 is no result); its subclass :class:`NonFiniteLossError` when the loss, a
    parameter or a distribution's parameter became NaN, infinite or left its support.
    """


class NonFiniteLossError(DivergenceError):
    """The loss (or a parameter, or a distribution's parameter) became NaN or infinite."""


_HINT = "lower the learning rate, check the data for extreme values, or use optimizer='clipped_adam'"


def _is_invalid_parameter(err: ValueError) -> bool:
    """torch.distributions' validation of a parameter (not of observed data): a sign of divergence."""
    text = str(err)
    return "Expected parameter" in text and "to satisfy the constraint" in text


def rng_state() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, NumPy, Python) as checkpointable tensors and tuples."""
    mt, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(mt), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    mt, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((mt, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_elbo(loss: str | ELBO, max_plate_nesting: int = 1, num_particles: int = 1) -> ELBO:
    """``"trace"`` -> ``Trace_ELBO``; ``"trace_enum"`` -> ``TraceEnum_ELBO`` (discrete sites summed out).

    Both in their host-sync-free form (:mod:`pyro_hc.infer.elbo`): same value, same gradient.
    """
    if isinstance(loss, ELBO):
        return loss
    if loss == "trace":
        return DeviceTrace_ELBO(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
    if loss == "trace_enum":
        return DeviceTraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
    raise ValueError(f"unknown loss {loss!r}; choose one of {ELBOS} or pass a pyro.infer.ELBO")


class SVIEngine:
    """Fit one module's ``model``/``guide`` by stochastic variational inference.

    Parameters
    ----------
    module:
        A ``torch.nn.Module`` (normally a ``PyroModule``) with ``model`` and ``guide`` methods,
        already on ``device``. If it has a ``tree`` attribute (a ``ClusterTree``), checkpoints
        save and restore it.
    loss:
        ``"trace"``, ``"trace_enum"`` or a ``pyro.infer.ELBO`` instance.
    optimizer:
        ``"adam"`` (``torch.optim.Adam``) or ``"clipped_adam"`` (Pyro's ``ClippedAdam``, with
        gradient clipping at ``clip_norm``).
    lr, lr_decay, lr_decay_every:
        Learning rate, multiplied by ``lr_decay`` every ``lr_decay_every`` epochs (a step
        schedule; ``lr_decay=1`` keeps it constant).
    callbacks:
        :class:`~pyro_hc.infer.callbacks.Callback` objects, run in order after every step and epoch.
    progress:
        Show a tqdm progress bar with the running loss.
    phase:
        A label for this fit ("pretrain", "train", ...) recorded in the history and errors.
    lr_multipliers:
        ``{name prefix: factor}``: parameters whose name starts with a prefix train at
        ``factor * lr`` (e.g. a mixture's node parameters faster than the networks).
    check_every:
        Steps between host syncs that read the loss, check it is finite and refresh the bar;
        the error still names the exact step at which the loss first went bad.
    cuda_graphs:
        Experimental. On a GPU, record each full-size batch's step as a CUDA graph and replay it
        (:mod:`pyro_hc.infer.graphs`): Pyro's tracing then runs only when the tree or the
        learning rate changed. Needs ``optimizer="adam"``; ignored on the CPU, under
        ``torch.distributed`` and for modules with ``cuda_graph_safe = False``. A step that
        cannot be captured raises ``RuntimeError``.
    divergence_factor:
        Raise :class:`DivergenceError` when a step's per-datum loss exceeds this many times the
        magnitude of the phase's first loss (at least 1); ``None`` turns the check off.
    drop_last:
        Skip each epoch's last batch when it is smaller than ``batch_size`` (as a ``DataLoader``
        with ``drop_last=True``; a contrastive loss drawn from a handful of images is noise, and
        batch norm would fold their statistics into its running ones). Data smaller than one
        batch still train, as one batch.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        loss: str | ELBO = "trace",
        max_plate_nesting: int = 1,
        num_particles: int = 1,
        optimizer: str = "adam",
        lr: float = 1e-3,
        lr_decay: float = 1.0,
        lr_decay_every: int = 1,
        clip_norm: float = 10.0,
        weight_decay: float = 0.0,
        callbacks: Sequence[Callback] = (),
        history: History | None = None,
        progress: bool = True,
        phase: str = "train",
        check_every: int = 10,
        checkpoint_extra: dict[str, Any] | None = None,
        lr_multipliers: dict[str, float] | None = None,
        cuda_graphs: bool = False,
        divergence_factor: float | None = 1e4,
        drop_last: bool = False,
    ) -> None:
        for method in ("model", "guide"):
            if not callable(getattr(module, method, None)):
                raise TypeError(f"{type(module).__name__} has no {method}() method; the engine needs both")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
        if cuda_graphs and optimizer != "adam":
            raise ValueError("cuda_graphs=True needs optimizer='adam' (its state can live on the device)")
        if lr <= 0 or not 0 < lr_decay <= 1 or lr_decay_every < 1 or check_every < 1:
            raise ValueError(
                f"need lr > 0, 0 < lr_decay <= 1, lr_decay_every >= 1, check_every >= 1; got "
                f"lr={lr}, lr_decay={lr_decay}, lr_decay_every={lr_decay_every}, check_every={check_every}"
            )
        self.module = module
        self.elbo = make_elbo(loss, max_plate_nesting, num_particles)
        params = self._param_groups(module, lr, lr_multipliers or {})
        if not params:
            raise ValueError(f"{type(module).__name__} has no trainable parameters")
        if optimizer == "adam":
            # the fused kernel updates every parameter in one pass instead of several per tensor: on a GPU
            # one launch; on a CPU 6x faster than the default per-tensor loop (3.6M parameters, one
            # thread: 6.8 ms against 43.7 ms a step, the same result to float precision)
            on_cuda = all(p.is_cuda for group in params for p in group["params"])
            fused = all(p.device.type in ("cpu", "cuda") for group in params for p in group["params"])
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=lr, weight_decay=weight_decay, fused=True if fused else None,
                capturable=bool(cuda_graphs and on_cuda),
            )
        else:
            self.optimizer = ClippedAdam(params, lr=lr, weight_decay=weight_decay, clip_norm=clip_norm)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=lr_decay_every, gamma=lr_decay)
        self.history = history if history is not None else History()
        # the history runs last so it records what the other callbacks logged and changed this epoch
        self.callbacks: list[Callback] = [*callbacks, self.history]
        self.progress = progress
        self.phase = phase
        self.check_every = check_every
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.epoch = 0
        self.step_count = 0
        self._loss_fn: torch.nn.Module | None = None  # the ELBO, wrapped in DDP under torch.distributed
        self.cuda_graphs = bool(cuda_graphs and getattr(module, "cuda_graph_safe", True))
        self._captured: CapturedStep | None = None
        self.graph_captures = 0  # how many times a step was recorded (each tree or lr change costs one)
        if divergence_factor is not None and not divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1 or None, got {divergence_factor}")
        self.divergence_factor = divergence_factor
        self.drop_last = bool(drop_last)
        self.loss_baseline: float | None = None  # |per-datum loss| of the phase's first step
        #: called with the engine after every completed epoch (history written, counters advanced)
        self.epoch_end_hooks: list[Callable[["SVIEngine"], None]] = []
        self.batcher: DeviceBatcher | None = None
        self._pending_resume: dict[str, Any] | None = None  # RNG, batcher and callback states to apply

    def _loss_module(self) -> torch.nn.Module:
        """The loss as a module; in a multi-process run, wrapped in ``DistributedDataParallel``.

        DDP averages the ranks' gradients during ``backward`` (each rank's loss is already an
        unbiased full-data estimate through the plate's ``num_data`` scaling) and broadcasts rank
        0's parameters when it wraps. Unused parameters are allowed: a phase may leave some of a
        module's networks idle.
        """
        if self._loss_fn is None:
            loss_fn = _ELBOLoss(self.module, self.elbo)
            if distributed.is_distributed():
                device = next(self.module.parameters()).device
                loss_fn = torch.nn.parallel.DistributedDataParallel(
                    loss_fn, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True,
                )
            self._loss_fn = loss_fn
        return self._loss_fn

    @staticmethod
    def _param_groups(module: torch.nn.Module, lr: float, multipliers: dict[str, float]) -> list[dict[str, Any]]:
        """One optimiser group per learning-rate multiplier, chosen by parameter-name prefix."""
        for prefix, factor in multipliers.items():
            if factor <= 0:
                raise ValueError(f"lr multiplier for {prefix!r} must be positive, got {factor}")
        groups: dict[float, list[torch.nn.Parameter]] = {}
        for name, param in module.named_parameters():
            if param.requires_grad:
                factor = next((f for prefix, f in multipliers.items() if name.startswith(prefix)), 1.0)
                groups.setdefault(factor, []).append(param)
        return [{"params": params, "lr": lr * factor} for factor, params in groups.items()]

    @property
    def tree(self):
        """The module's ``ClusterTree``, if it has one."""
        return getattr(self.module, "tree", None)

    def loss_and_grad(self, x: torch.Tensor, index: torch.Tensor | None, num_data: int) -> torch.Tensor:
        """One optimisation step on a batch; returns the detached loss (negative ELBO estimate)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss_module()(x, index, num_data)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _step(self, batch_x: torch.Tensor, index: torch.Tensor, num_data: int, batch_size: int) -> torch.Tensor:
        """One optimisation step: replayed from a CUDA graph where possible, else eagerly."""
        if not (self.cuda_graphs and batch_x.is_cuda and batch_x.shape[0] == batch_size
                and not distributed.is_distributed()):
            return self.loss_and_grad(batch_x, index, num_data)
        tree = self.tree
        # a callback may take parameters out of the steps mid-fit (HCRL's closed-form nodes): a graph
        # recorded with their gradients would go on stepping them, so which ones train is in the key
        key = (tree.version if tree is not None else None, tuple(g["lr"] for g in self.optimizer.param_groups),
               tuple(batch_x.shape), num_data,
               tuple(p.requires_grad for g in self.optimizer.param_groups for p in g["params"]))
        if self._captured is None or self._captured.key != key:
            self._captured = None  # release the old graph's memory before recording the next
            try:
                self._captured = CapturedStep(self, batch_x, index, num_data, key)
            except RuntimeError as err:
                # a failed capture leaves the CUDA random generator mid-capture, so training cannot
                # simply go on eagerly in this process
                raise RuntimeError(
                    f"{self.phase}: {type(self.module).__name__}'s step could not be recorded as a CUDA graph "
                    f"(something in it copies between host and device or reads a tensor back: {err}); "
                    "train with cuda_graphs=False"
                ) from err
            self.graph_captures += 1
        return self._captured.replay(batch_x, index)

    def fit(self, x: torch.Tensor, epochs: int, batch_size: int, seed: int | None = None) -> History:
        """Run ``epochs`` passes over ``x`` (already on the module's device) in shuffled batches.

        Returns the :class:`History`; raises :class:`NonFiniteLossError` naming the epoch and step
        at which the loss first became NaN or infinite.

        In a ``torch.distributed`` run every rank passes the whole ``x``; each takes its share
        (``batch[rank::world_size]``) of the same shuffled batches, so ``batch_size`` is the global
        batch.
        """
        if epochs < 0 or batch_size < 1:
            raise ValueError(f"need epochs >= 0 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}")
        num_data = x.shape[0]
        world, rank = distributed.world_size(), distributed.rank()
        if world > 1:
            if batch_size < world:
                raise ValueError(f"batch_size {batch_size} is smaller than the {world} ranks sharing each batch")
            # every rank must shuffle alike: rank 0's seed (or a fresh one) goes to all
            shared_seed = torch.tensor([-1 if seed is None else int(seed)], dtype=torch.long, device=x.device)
            if seed is None and rank == 0:
                shared_seed.fill_(int(torch.randint(0, 2**62, ())))
            torch.distributed.broadcast(shared_seed, src=0)
            seed = int(shared_seed.item())
            # ...but draw their own noise (reparameterised samples, augmentations) for their own data:
            # identical streams on every rank would correlate the halves of each batch. Parameters stay
            # identical (DDP averages the gradients; rank 0's structural initialisations are broadcast).
            torch.manual_seed((seed * 1_000_003 + self.epoch * 7919 + rank + 1) % 2**63)
        batcher = DeviceBatcher(num_data, batch_size, device=x.device, shuffle=True, seed=seed,
                                drop_last=self.drop_last and batch_size <= num_data)
        self.batcher = batcher
        state = FitState(engine=self, epoch=self.epoch, step=self.step_count, num_data=num_data)
        bar = tqdm(
            total=epochs * len(batcher), disable=not self.progress, desc=self.phase, unit="step", leave=False,
            dynamic_ncols=True,
        )
        self.module.train()
        with local_params(), bar:
            for cb in self.callbacks:
                cb.on_fit_start(state)
            self._apply_pending_resume()
            for _ in range(epochs):
                state.epoch, state.logs, state.epoch_loss = self.epoch, {}, None
                for cb in self.callbacks:
                    cb.on_epoch_start(state)
                pending: list[torch.Tensor] = []  # losses not yet read back from the device
                epoch_total, epoch_batches = 0.0, 0
                for index in batcher:
                    if world > 1:
                        if index.numel() < world:  # a last batch too small to give every rank a datum
                            continue
                        index = index[rank::world]
                    batch_x = x[index]
                    try:
                        loss = self._step(batch_x, index, num_data, batch_size)
                        self.step_count += 1
                        state.step, state.batch_index, state.batch_x, state.loss = (self.step_count, index,
                                                                                    batch_x, loss)
                        pending.append(loss)
                        for cb in self.callbacks:
                            cb.on_step_end(state)
                    except (ValueError, RuntimeError) as err:
                        # distribution validation rejects NaN parameters (a heuristic's sampling too):
                        # report where training broke,
                        # first from the losses not yet read back (the earliest bad step), else here
                        if pending:
                            self._drain(pending, num_data, bar)
                        self._raise_if_parameters_not_finite(err)
                        raise
                    if len(pending) >= self.check_every:
                        epoch_total += self._drain(pending, num_data, bar)
                        epoch_batches += len(pending)
                        pending = []
                if pending:
                    epoch_total += self._drain(pending, num_data, bar)
                    epoch_batches += len(pending)
                state.batch_index = state.batch_x = None
                if world > 1:  # the mean over all ranks' batches
                    totals = torch.tensor([epoch_total, float(epoch_batches)], dtype=torch.float64, device=x.device)
                    distributed.all_reduce_sum_(totals)
                    epoch_total, epoch_batches = float(totals[0]), int(totals[1])
                state.epoch_loss = epoch_total / max(epoch_batches, 1)
                if self.cuda_graphs:
                    state.logs["graph_captures"] = float(self.graph_captures)
                self.scheduler.step()
                try:
                    for cb in self.callbacks:
                        cb.on_epoch_end(state)
                except (ValueError, RuntimeError) as err:  # a heuristic evaluating a diverged model
                    self._raise_if_parameters_not_finite(err)
                    raise
                # a structural move may have drawn random node initialisations: rank 0's are the ones kept
                distributed.broadcast_module_(self.module)
                self.epoch += 1
                for hook in self.epoch_end_hooks:
                    hook(self)
                if state.stop:
                    break
            for cb in self.callbacks:
                cb.on_fit_end(state)
        self.module.eval()
        return self.history

    def _raise_if_parameters_not_finite(self, cause: Exception) -> None:
        bad = [name for name, p in self.module.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteLossError(
                f"{self.phase}: parameters {bad[:5]} became NaN or infinite before epoch {self.epoch}, "
                f"step {self.step_count + 1}; lower the learning rate or use optimizer='clipped_adam'"
            ) from cause
        if isinstance(cause, ValueError) and _is_invalid_parameter(cause):
            first = str(cause).split(" of distribution")[0].replace("Expected parameter ", "")
            raise NonFiniteLossError(
                f"{self.phase}: training diverged at epoch {self.epoch}, step {self.step_count + 1}: a "
                f"distribution's parameter ({first}) became NaN or left its support; {_HINT}"
            ) from cause

    def _drain(self, pending: list[torch.Tensor], num_data: int, bar: tqdm) -> float:
        """Read a run of step losses back to the host, check them, advance the bar; return their sum per datum."""
        values = torch.stack(pending).cpu()
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            first_bad = int((~finite).nonzero()[0, 0])
            bad_step = self.step_count - len(pending) + first_bad + 1
            raise NonFiniteLossError(
                f"{self.phase}: training diverged: the loss became {values[first_bad].item()} at epoch {self.epoch}, "
                f"step {bad_step}; {_HINT}"
            )
        per_datum = values / num_data
        if self.loss_baseline is None:
            self.loss_baseline = max(abs(float(per_datum[0])), 1.0)
        if self.divergence_factor is not None:
            too_big = per_datum.abs() > self.divergence_factor * self.loss_baseline
            if bool(too_big.any()):
                first_bad = int(too_big.nonzero()[0, 0])
                raise DivergenceError(
                    f"{self.phase}: training diverged at epoch {self.epoch}, step "
                    f"{self.step_count - len(pending) + first_bad + 1}: the loss per datum reached "
                    f"{per_datum[first_bad].item():.4g}, over {self.divergence_factor:g} times its start "
                    f"({self.loss_baseline:.4g}); {_HINT}"
                )
        bar.update(len(pending))
        bar.set_postfix(epoch=self.epoch, loss=f"{per_datum[-1].item():.4g}", refresh=False)
        return float(per_datum.sum())

    # checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Parameters, optimiser and schedule state, the tree (JSON), history and counters."""
        tree = self.tree
        return {
            **self.checkpoint_extra,
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "tree": tree.to_json() if tree is not None else None,
            "history": list(self.history.records),
            "epoch": self.epoch,
            "step": self.step_count,
            "phase": self.phase,
            "loss_baseline": self.loss_baseline,
            "batcher": self.batcher.state_dict() if self.batcher is not None else None,
            "callbacks": self._callback_states(),
            "rng": rng_state(),
        }

    def _stateful_callbacks(self) -> dict[str, Callback]:
        """Callbacks with a ``state_dict``, keyed ``"<class>#<i>"`` (i: its rank among those of its class).

        Keyed by class rather than by position, so that a resumed fit restores each state into the
        callback it came from even when other callbacks were added or removed around it (a fit
        resumed with an extra logging callback must not hand the heuristics' state to that one).
        """
        keyed, seen = {}, {}
        for cb in self.callbacks:
            if cb is self.history or not callable(getattr(cb, "state_dict", None)):
                continue
            name = type(cb).__qualname__
            keyed[f"{name}#{seen.get(name, 0)}"] = cb
            seen[name] = seen.get(name, 0) + 1
        return keyed

    def _callback_states(self) -> dict[str, Any]:
        """``state_dict()`` of every callback that has one, keyed by :meth:`_stateful_callbacks`."""
        return {key: cb.state_dict() for key, cb in self._stateful_callbacks().items()}

    def _apply_pending_resume(self) -> None:
        """After ``on_fit_start``: the random, batch-order and callback states a resumed fit continues from."""
        resume, self._pending_resume = self._pending_resume, None
        if resume is None:
            return
        if resume.get("batcher") is not None and self.batcher is not None:
            self.batcher.load_state_dict(resume["batcher"])
        states = resume.get("callbacks") or {}
        if isinstance(states, list):  # a checkpoint of an earlier version: one entry per callback, in order
            for cb, cb_state in zip(self.callbacks, states):
                if cb_state is not None and callable(getattr(cb, "load_state_dict", None)):
                    cb.load_state_dict(cb_state)
        else:
            for key, cb in self._stateful_callbacks().items():
                if states.get(key) is not None and callable(getattr(cb, "load_state_dict", None)):
                    cb.load_state_dict(states[key])
        if resume.get("rng") is not None:
            set_rng_state(resume["rng"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved, the tree included."""
        if state.get("tree") is not None:
            from ..tree import ClusterTree

            self.module.tree = ClusterTree.from_json(state["tree"])
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history.records[:] = state["history"]
        self.epoch, self.step_count = int(state["epoch"]), int(state["step"])
        self.loss_baseline = state.get("loss_baseline")

    def resume_from(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` and make the next :meth:`fit` continue that fit exactly.

        Besides :meth:`load_state_dict`: the batch order, the callbacks' states and the global
        random states, applied when ``fit`` starts (after ``on_fit_start``). Call ``fit`` with the
        same ``x``, ``batch_size`` and ``seed`` and the remaining epochs.
        """
        self.load_state_dict(state)
        self._pending_resume = {key: state.get(key) for key in ("batcher", "callbacks", "rng")}

    def save_checkpoint(self, path: str | Path, epoch: int | None = None) -> Path:
        """Write :meth:`state_dict` to ``path`` atomically."""
        return save_checkpoint(path, self.state_dict())

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` onto this engine's device."""
        device = next(self.module.parameters()).device
        self.load_state_dict(load_checkpoint(path, map_location=device))
