"""One training step (ELBO, backward, Adam) recorded once as a CUDA graph and replayed per batch.

Experimental: on one H200 it reproduced eager training exactly for an autoencoder loss
(``tests/test_gpu.py``); capturing the Bayesian models' steps first met two host round trips
(Pyro's Dice mask check, Python-number distribution parameters), both removed since but not yet
re-run on a GPU.

Pyro builds its traces in Python at every step; on a GPU that host work, not the arithmetic,
bounds a step of these models (``benchmarks/speed.py`` measures it). A CUDA graph records the
kernels of one step once and replays them with a single launch, so Pyro's tracing runs only when
the graph is (re)captured: after a structural move changed the tree, after the learning rate
changed, or for a batch of a new shape.

What a graph needs, and this module provides:

- static inputs: each batch is copied into the buffers the graph reads;
- no host synchronisation inside the step: the engine's ELBOs (:mod:`pyro_hc.infer.elbo`) keep
  their bookkeeping on the device, and distribution validation (which reads support checks back)
  is off while capturing;
- optimiser state on the device: Adam with ``capturable=True``;
- warm-up steps on a side stream before capturing (lazily built caches and optimiser state); their
  parameter, optimiser-state and buffer updates are undone, so capturing does not change
  training.

Random numbers drawn on the device (the reparameterised samples) are fresh at every replay;
random numbers drawn on the host inside a step would be frozen into the graph, so modules that do
that set ``cuda_graph_safe = False`` and the engine trains them eagerly.
"""

from __future__ import annotations

from collections.abc import Hashable
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pyro
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .engine import SVIEngine

__all__ = ["CapturedStep", "WARMUP_STEPS"]

#: eager steps on a side stream before capturing (their updates are undone)
WARMUP_STEPS = 2


@contextmanager
def _capture_safe():
    """Distribution validation off: its support checks read tensors back to the host."""
    with pyro.validation_enabled(False):
        yield


class CapturedStep:
    """The engine's optimisation step for batches shaped like ``batch_x``, as a CUDA graph.

    ``key`` names what the graph was recorded for (tree version, learning rates, batch shape);
    the engine records a new one when its key changes.
    """

    def __init__(self, engine: "SVIEngine", batch_x: torch.Tensor, index: torch.Tensor, num_data: int,
                 key: Hashable) -> None:
        self.key = key
        device = batch_x.device
        self.static_x = batch_x.clone()
        self.static_index = index.clone()
        optimizer = engine.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved_params = [p.detach().clone() for p in params]
        buffers = list(engine.module.buffers())  # running statistics a step may update (DeepECT's node weights)
        saved_buffers = [b.clone() for b in buffers]
        saved_state = {
            p: {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
            for p in params if p in optimizer.state
        }
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), _capture_safe():
            for _ in range(WARMUP_STEPS):
                engine.loss_and_grad(self.static_x, self.static_index, num_data)
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():  # undo the warm-up updates
            for p, saved in zip(params, saved_params):
                p.copy_(saved)
            for b, saved in zip(buffers, saved_buffers):
                b.copy_(saved)
            for p in params:
                before = saved_state.get(p, {})
                for name, value in optimizer.state.get(p, {}).items():
                    if torch.is_tensor(value):
                        value.copy_(before[name]) if name in before else value.zero_()
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with _capture_safe(), torch.cuda.graph(self.graph):
            self.static_loss = engine._loss_module()(self.static_x, self.static_index, num_data)
            self.static_loss.backward()
            optimizer.step()

    def replay(self, batch_x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One optimisation step on this batch; returns the loss (a fresh device tensor)."""
        self.static_x.copy_(batch_x)
        self.static_index.copy_(index)
        self.graph.replay()
        return self.static_loss.detach().clone()
