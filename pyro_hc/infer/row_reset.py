"""Reset Adam's state for some rows of a parameter: moments *and* step count, row by row.

Models with preallocated node parameters (one row per node id, e.g. the nCRP models) reuse rows
when a structural move creates a node. Adam's state of such a row is stale: a never-used row has
zero moments but the shared step count ``t`` of the whole tensor, so its first updates are
``lr · (1-β1) / sqrt(1-β2) ≈ 3 lr`` and grow to ≈ 6 lr (no bias correction left to damp them),
and a recycled row keeps the second moment of its former life (nearly frozen if it was large).

:func:`reset_optimizer_rows` zeroes the rows' moments and restarts their step count at 0. Torch
keeps one step count per tensor, so each reset row's own count ``k`` is kept here and a hook run
after every ``optimizer.step()`` replaces the update the shared count gave the row by the update
Adam would have made at step ``k`` (exact: both are functions of the row's moments after the
step). A row is forgotten once its bias corrections match the tensor's to float precision.
Supports ``torch.optim.Adam`` (also fused) and Pyro's ``ClippedAdam``; not under CUDA-graph
capture (there the reset rows keep the zeroed moments but the shared step count).
"""

from __future__ import annotations

import torch

__all__ = ["reset_optimizer_rows"]

_AGES = "_pyro_hc_row_ages"  # attribute on the optimiser: {parameter: long tensor of per-row ages, -1 = shared}


def _group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    raise ValueError("the parameter is not optimised by this optimizer")


def _bias_corrected_update(kind: str, lr: float, beta1: float, beta2: float, eps: float,
                           exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The update Adam subtracts from a parameter at (per-row broadcastable) step ``step``."""
    correction1 = 1 - beta1 ** step
    correction2 = 1 - beta2 ** step
    if kind == "clipped_adam":  # pyro.optim.ClippedAdam: eps outside the corrected root
        return lr * correction2.sqrt() / correction1 * exp_avg / (exp_avg_sq.sqrt() + eps)
    return lr / correction1 * exp_avg / (exp_avg_sq.sqrt() / correction2.sqrt() + eps)  # torch.optim.Adam


def _kind(optimizer: torch.optim.Optimizer) -> str:
    from pyro.optim.clipped_adam import ClippedAdam

    if isinstance(optimizer, ClippedAdam):
        return "clipped_adam"
    if type(optimizer) is torch.optim.Adam:
        return "adam"
    raise TypeError(f"reset_optimizer_rows supports torch.optim.Adam and ClippedAdam, got {type(optimizer).__name__}")


class _Tracked:
    """The reset rows of one parameter: their ids, own step counts and the parameter's group."""

    __slots__ = ("rows", "age", "group")

    def __init__(self, rows: torch.Tensor, age: torch.Tensor, group: dict) -> None:
        self.rows, self.age, self.group = rows, age, group


@torch.no_grad()
def _correct_after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    tracked: dict = getattr(optimizer, _AGES)
    if not tracked or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
        return
    kind = _kind(optimizer)
    for param in list(tracked):
        entry = tracked[param]
        state = optimizer.state.get(param, {})
        if "exp_avg" not in state or param.grad is None:  # no step was taken for this parameter
            continue
        entry.age += 1
        group = entry.group
        beta1, beta2 = group["betas"]
        lr = group["lr"]  # ClippedAdam decays its lr before the update, so this is the step's lr either way
        shared = float(state["step"])
        own = entry.age.reshape(-1, *([1] * (param.dim() - 1)))
        m, v = state["exp_avg"].index_select(0, entry.rows), state["exp_avg_sq"].index_select(0, entry.rows)
        taken = _bias_corrected_update(kind, lr, beta1, beta2, group["eps"], m, v,
                                       torch.as_tensor(shared, dtype=own.dtype))
        wanted = _bias_corrected_update(kind, lr, beta1, beta2, group["eps"], m, v, own)
        param.index_add_(0, entry.rows, (taken - wanted).to(param.dtype))
        # retire the rows whose corrections match the shared count's (to 1e-4), checked now and then
        if int(shared) % 64 == 0:
            keep = (beta2 ** entry.age > 1e-4) & (entry.age < shared)
            if not bool(keep.all()):
                if bool(keep.any()):
                    entry.rows, entry.age = entry.rows[keep], entry.age[keep]
                else:
                    del tracked[param]


def reset_optimizer_rows(optimizer: torch.optim.Optimizer, param: torch.Tensor, rows) -> None:
    """Restart Adam on ``param[rows]``: zero first and second moments, step count 0 for those rows.

    Parameters
    ----------
    optimizer:
        A ``torch.optim.Adam`` or ``pyro.optim.clipped_adam.ClippedAdam`` that optimises ``param``.
    param:
        A parameter whose first dimension indexes rows (e.g. one per node id).
    rows:
        Row indices (a sequence of ints or a long tensor).

    Raises
    ------
    ValueError
        If ``param`` is not optimised by ``optimizer`` or a row is out of range.
    TypeError
        For another optimiser, or one with ``amsgrad`` or ``maximize`` (not supported).
    """
    _kind(optimizer)
    group = _group_of(optimizer, param)
    if group.get("amsgrad", False) or group.get("maximize", False):
        raise TypeError("reset_optimizer_rows does not support amsgrad=True or maximize=True")
    rows = torch.as_tensor(rows, dtype=torch.long, device=param.device).flatten().unique()
    if rows.numel() == 0:
        return
    if int(rows.min()) < 0 or int(rows.max()) >= param.shape[0]:
        raise ValueError(f"rows {rows.tolist()} out of range for a parameter of {param.shape[0]} rows")
    state = optimizer.state.get(param, {})
    with torch.no_grad():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][rows] = 0.0
    if not hasattr(optimizer, _AGES):
        setattr(optimizer, _AGES, {})
        optimizer.register_step_post_hook(_correct_after_step)
    tracked: dict = getattr(optimizer, _AGES)
    entry = tracked.get(param)
    if entry is None:
        tracked[param] = _Tracked(rows, torch.zeros(len(rows), dtype=torch.float64, device=param.device), group)
        return
    others = ~torch.isin(entry.rows, rows)
    entry.rows = torch.cat([entry.rows[others], rows])
    entry.age = torch.cat([entry.age[others], torch.zeros(len(rows), dtype=entry.age.dtype, device=param.device)])
