"""Callbacks: how structural heuristics, logging and checkpoints hook into the one training loop.

A callback sees a :class:`FitState` after every optimisation step and at the end of every epoch.
Structural heuristics (GROW / PRUNE / MERGE, DeepECT's split and prune, CoHiClust's leaf pruning)
are callbacks that read statistics the model accumulated during the epoch and mutate its
``ClusterTree``; they never own a training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .distributed import is_main_process

if TYPE_CHECKING:  # pragma: no cover
    from .engine import SVIEngine

__all__ = ["Callback", "FitState", "History", "CheckpointEvery", "EpochMetrics"]


@dataclass
class FitState:
    """What the engine exposes to callbacks while it trains.

    Attributes
    ----------
    epoch, step:
        Epoch (0-based) and global optimisation step (counted over the whole fit).
    num_data:
        Size of the training set.
    batch_index, batch_x:
        Indices (on the training device) and data of the current mini-batch; ``None`` at epoch end.
    loss:
        Detached loss of the last step (a 0-d tensor on the device; no host sync is forced).
    epoch_loss:
        Mean per-datum loss over the epoch, a float; set at epoch end only.
    stop:
        A callback sets this to ``True`` to end training after the current epoch.
    """

    engine: "SVIEngine"
    epoch: int = 0
    step: int = 0
    num_data: int = 0
    batch_index: torch.Tensor | None = None
    batch_x: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    epoch_loss: float | None = None
    stop: bool = False
    logs: dict[str, float] = field(default_factory=dict)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module


class Callback:
    """Base class: override the hooks you need; each receives the engine's :class:`FitState`."""

    def on_fit_start(self, state: FitState) -> None:
        pass

    def on_epoch_start(self, state: FitState) -> None:
        pass

    def on_step_end(self, state: FitState) -> None:
        pass

    def on_epoch_end(self, state: FitState) -> None:
        pass

    def on_fit_end(self, state: FitState) -> None:
        pass


class History(Callback):
    """Per-epoch record of the loss, the learning rate, tree size and anything callbacks log.

    ``records`` is a list of plain dicts (JSON-able), one per epoch, so it travels in checkpoints.
    """

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        self.records: list[dict[str, Any]] = list(records) if records is not None else []

    def on_epoch_end(self, state: FitState) -> None:
        record: dict[str, Any] = {
            "phase": state.engine.phase,
            "epoch": state.epoch,
            "step": state.step,
            "loss": state.epoch_loss,
            "lr": state.engine.optimizer.param_groups[0]["lr"],
        }
        tree = state.engine.tree
        if tree is not None:
            record["n_nodes"] = len(tree)
            record["n_leaves"] = len(tree.leaves())
        record.update(state.logs)
        self.records.append(record)

    def __getitem__(self, key: str) -> list[Any]:
        """Column access: ``history["loss"]`` lists the loss of every epoch (None where not logged)."""
        if not isinstance(key, str):  # without this, ``iter`` would probe 0, 1, 2, ... forever
            raise TypeError(f"History columns are named by strings, got {key!r}; use .records for the rows")
        return [r.get(key) for r in self.records]

    def keys(self) -> list[str]:
        """The column names, in the order they first appear."""
        return list(dict.fromkeys(k for r in self.records for k in r))

    def __contains__(self, key: object) -> bool:
        return any(key in r for r in self.records)

    def __len__(self) -> int:
        """The number of epochs recorded."""
        return len(self.records)


class EpochMetrics(Callback):
    """Evaluate ``metric_fn(module) -> dict`` every ``every`` epochs and log it into the history."""

    def __init__(self, metric_fn, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.metric_fn = metric_fn
        self.every = every

    def on_epoch_end(self, state: FitState) -> None:
        if (state.epoch + 1) % self.every == 0:
            state.logs.update({k: float(v) for k, v in self.metric_fn(state.module).items()})


class CheckpointEvery(Callback):
    """Write a checkpoint (parameters, optimiser, tree, history) every ``every`` epochs."""

    def __init__(self, path: str | Path, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.path = Path(path)
        self.every = every

    def on_epoch_end(self, state: FitState) -> None:
        # in a torch.distributed run only rank 0 writes (every rank holds the same state)
        if (state.epoch + 1) % self.every == 0 and is_main_process():
            state.engine.save_checkpoint(self.path, epoch=state.epoch)
