"""GROW, PRUNE and MERGE of HCRL's Algorithm 1 as an engine callback.

HCRL (Shin, Song & Moon, AAAI 2020) places its clusters on the paths of a tree drawn from a
nested stick-breaking process.  Unlike a Chinese restaurant process, stick breaking never
creates a component for a datum, so the paper refines the hierarchy with three heuristics run
at the end of an epoch (Algorithm 1, "Training Algorithm of Clustering Hierarchy"):

GROW (every ``t_grow`` epochs)
    Sample a path ``zeta*`` with probability proportional to ``sum_n q(zeta_n = zeta*)`` over
    all paths, full and inner.  If ``zeta*`` is an *inner* path (it ends at an internal node),
    add a new branch under that node; if it is a full path nothing grows.
PRUNE (only if the tree did not change this epoch and ``t >= t_lock``)
    Remove a randomly chosen *minor* full path, one whose share of the responsibility mass
    ``sum_n q(zeta_n = zeta*) / sum_{n, zeta} q(zeta_n = zeta)`` is below ``delta``; parents
    left without children go too.
MERGE (only if PRUNE did nothing)
    Fold together the two full paths whose responsibility vectors
    ``q_i = [q(zeta_1 = zeta_i), ..., q(zeta_N = zeta_i)]`` have the largest cosine
    similarity ``J = q_i q_j^T / (|q_i| |q_j|)``, if it exceeds a threshold.

The lock counter ``t`` restarts at 0 whenever the tree changed and counts the epochs since,
so a changed hierarchy is fitted for at least ``t_lock`` epochs before PRUNE or MERGE may act
again.  (The extracted text of Algorithm 1, line 15, reads "if T(e) = T(e-1) then t <- 0 else
t <- t + 1"; the prose says "after performing any operation, we initialize t to 0", which is
what is implemented here.)

The callback only decides; the model performs every edit (:class:`NCRPTreeModel`), because only
the model knows how its node parameters follow a structural change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..infer import distributed
from ..infer.callbacks import Callback, FitState
from ..tree import ClusterTree

__all__ = ["NCRPHeuristics", "NCRPTreeModel", "MOVES"]

#: The structural moves :class:`NCRPHeuristics` can make.
MOVES = ("grow", "prune", "merge")

# relative tolerance on sum_n sum_zeta q(zeta_n = zeta) == number of data seen
_ROW_SUM_RTOL = 1e-3


@runtime_checkable
class NCRPTreeModel(Protocol):
    """What :class:`NCRPHeuristics` needs from a model with a nested stick-breaking tree.

    Every full path of :attr:`tree` runs from the root to a leaf at the same depth ``L``.

    Attributes
    ----------
    tree : ClusterTree
        The live tree.
    """

    tree: ClusterTree

    # Optional: a model may also define ``reset_path_observations()`` (called at every epoch
    # start) and ``observe_path_responsibilities(x, resp)`` (called with every batch and its
    # responsibilities) to collect what it needs to initialise the branches GROW asks for.

    def path_responsibilities(self, x: Tensor) -> Tensor:
        """Return ``q(zeta_n = path)`` for a batch, without gradient.

        Parameters
        ----------
        x : Tensor
            A mini-batch ``[B, ...]``.

        Returns
        -------
        Tensor
            ``[B, n_full + n_inner]``, rows summing to 1; columns are ``tree.paths()`` in
            order, then ``tree.inner_paths()`` in order.
        """
        ...

    def grow(self, node: int) -> list[int]:
        """Add a new child under internal node ``node`` and extend it down to full depth.

        The new nodes' parameters start at the parent's Gaussian plus a small perturbation.

        Returns
        -------
        list of int
            The new node ids, top first.
        """
        ...

    def prune(self, leaf: int) -> list[int]:
        """Remove the full path ending at ``leaf`` and any parents left childless.

        Returns
        -------
        list of int
            The removed node ids.
        """
        ...

    def merge(self, keep_leaf: int, drop_leaf: int) -> list[int]:
        """Fold the full path ending at ``drop_leaf`` into the one ending at ``keep_leaf``.

        The model moves what it must, then removes ``drop_leaf``'s path like :meth:`prune`.

        Returns
        -------
        list of int
            The removed node ids.
        """
        ...


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_fraction(value: Any, name: str, low: float, high: float, low_open: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    inside = (low < number if low_open else low <= number) and number <= high
    if not inside:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")
    return number


class NCRPHeuristics(Callback):
    """GROW / PRUNE / MERGE of HCRL's Algorithm 1 as an :class:`~pyro_hc.infer.SVIEngine` callback.

    During an epoch the callback asks the model for the path responsibilities of every
    mini-batch and accumulates, on the training device and without host syncs, the mass
    ``sum_n q(zeta_n = zeta)`` of every path and each datum's full-path responsibilities.  At
    the end of epoch ``e`` (1-based, ``state.epoch + 1``) it runs Algorithm 1, lines 8-15:

    1. if ``e % grow_every == 0``: GROW;
    2. if the tree did not change and the lock counter ``t >= lock_epochs``: PRUNE, and if
       PRUNE did nothing, MERGE;
    3. ``t = 0`` if the tree changed this epoch, else ``t = t + 1``.

    Every change is logged with :meth:`ClusterTree.log_event` (kinds ``"grow"``, ``"prune"``,
    ``"merge"``, with the epoch and step), and the epoch's numbers go into ``state.logs`` and
    thus the engine's history: ``n_paths`` and ``n_inner_paths`` (after the moves), ``grew``,
    ``pruned`` and ``merged`` (0 or 1), ``lock_counter`` (``t`` after the update) and, when
    MERGE was evaluated, ``max_similarity``.

    The statistics are collected for the tree as it is during the epoch; the model's tree must
    not change between :meth:`on_epoch_start` and :meth:`on_epoch_end` (a change raises
    :class:`RuntimeError`).  Collecting them costs one extra call of
    ``module.path_responsibilities`` per step and an ``[N, n_full]`` buffer on the device
    (only while MERGE is enabled).

    Parameters
    ----------
    grow_every : int, default 1
        ``t_grow``: GROW runs at the end of every ``grow_every``-th epoch.
    lock_epochs : int, default 5
        ``t_lock``: epochs a changed tree is left alone before PRUNE or MERGE may act.  The
        counter starts at 0, so nothing is pruned or merged during the first ``lock_epochs``
        epochs either.
    prune_threshold : float, default 0.01
        ``delta``: a full path whose share of the responsibility mass is below this may be
        pruned.  The paper gives its value only in its supplementary material, which we do
        not have; 0.01 (one percent of the data) is our choice.
    merge_threshold : float, default 0.95
        Two full paths are merged only if the cosine similarity of their responsibility
        vectors is at least this (responsibilities are non-negative, so the similarity lies
        in [0, 1]).
    max_leaves : int, optional
        If given, GROW does nothing while the tree has this many leaves or more.  Not in the
        paper; a guard for models with preallocated node parameters.
    seed : int, optional
        Seed of the callback's own ``torch.Generator`` (on the CPU) that makes the random
        choices of GROW and PRUNE.  By default it is seeded from torch's global generator
        when the callback is built, so ``torch.manual_seed`` makes runs reproducible too.
    enabled_moves : iterable of str, default ("grow", "prune", "merge")
        The moves that may run; the others are skipped (and MERGE's buffer is not kept).

    Raises
    ------
    ValueError
        For a setting out of range or an unknown move.

    Examples
    --------
    >>> heuristics = NCRPHeuristics(grow_every=2, lock_epochs=5, seed=0)
    >>> engine = SVIEngine(model, callbacks=[heuristics])  # doctest: +SKIP
    """

    def __init__(
        self,
        grow_every: int = 1,
        lock_epochs: int = 5,
        prune_threshold: float = 0.01,
        merge_threshold: float = 0.95,
        max_leaves: int | None = None,
        seed: int | None = None,
        enabled_moves: Iterable[str] = MOVES,
    ) -> None:
        self.grow_every = _check_int(grow_every, "grow_every", 1)
        self.lock_epochs = _check_int(lock_epochs, "lock_epochs", 0)
        self.prune_threshold = _check_fraction(prune_threshold, "prune_threshold", 0.0, 1.0, False)
        self.merge_threshold = _check_fraction(merge_threshold, "merge_threshold", 0.0, 1.0, True)
        self.max_leaves = None if max_leaves is None else _check_int(max_leaves, "max_leaves", 1)
        if isinstance(enabled_moves, str):
            enabled_moves = (enabled_moves,)
        moves = tuple(enabled_moves)
        unknown = sorted(set(moves) - set(MOVES))
        if unknown:
            raise ValueError(f"unknown move(s) {unknown}; choose among {list(MOVES)}")
        self.enabled_moves = frozenset(moves)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        #: ``t`` of Algorithm 1: epochs since the tree last changed (Algorithm 1, line 3: t <- 0).
        self.lock_counter = 0
        self._mass: Tensor | None = None  # [n_full + n_inner] on the device
        self._resp: Tensor | None = None  # [N, n_full] on the device (MERGE only)
        self._n_seen = 0  # rows of responsibilities accumulated this epoch (host int)
        self._layout: tuple[int, int, int] | None = None  # (tree version, n_full, n_inner)

    # ------------------------------------------------------------------ statistics
    @property
    def path_mass(self) -> Tensor | None:
        """Tensor or None: ``sum_n q(zeta_n = zeta)`` per column, accumulated this epoch.

        Columns follow the tree as it was during the epoch (full paths, then inner paths);
        after :meth:`on_epoch_end` has changed the tree they describe the old layout.
        """
        return self._mass

    @property
    def responsibilities(self) -> Tensor | None:
        """Tensor or None: ``[N, n_full]`` full-path responsibilities of this epoch's data.

        Row ``n`` is datum ``n`` of the training set (rows not visited this epoch are zero);
        ``None`` when MERGE is disabled or no step ran.  Same layout caveat as
        :attr:`path_mass`.
        """
        return self._resp

    def on_epoch_start(self, state: FitState) -> None:
        """Reset the epoch's statistics; buffers are (re)allocated at the first step."""
        self._mass = None
        self._n_seen = 0
        self._layout = None
        reset = getattr(state.module, "reset_path_observations", None)
        if reset is not None:  # optional: models that initialise GROW from the data they saw
            reset()

    def _begin(self, state: FitState, resp: Tensor, n_full: int) -> None:
        """Allocate (or zero and reuse) the epoch's buffers for the current layout."""
        # the mass is summed in at least single precision even if the model answers in half
        mass_dtype = torch.promote_types(resp.dtype, torch.float32)
        self._mass = torch.zeros(resp.shape[1], dtype=mass_dtype, device=resp.device)
        if "merge" not in self.enabled_moves:
            self._resp = None
            return
        num_data = int(state.num_data)
        if num_data < 1:
            raise ValueError(f"FitState.num_data must be the training-set size (>= 1), got {num_data}")
        shape = (num_data, n_full)
        old = self._resp
        if old is not None and old.shape == shape and old.dtype == resp.dtype and old.device == resp.device:
            old.zero_()
        else:
            self._resp = torch.zeros(shape, dtype=resp.dtype, device=resp.device)

    def on_step_end(self, state: FitState) -> None:
        """Accumulate the batch's path mass and store its full-path responsibilities."""
        module = state.module
        if self._layout is None and not isinstance(module, NCRPTreeModel):
            raise TypeError(
                f"{type(module).__name__} does not implement NCRPTreeModel (a `tree` and the "
                "methods path_responsibilities, grow, prune and merge)"
            )
        if state.batch_x is None:
            raise ValueError("FitState.batch_x is None; on_step_end needs the mini-batch")
        tree = module.tree
        if self._layout is not None and tree.version != self._layout[0]:
            raise RuntimeError(
                "the tree changed during the epoch (version "
                f"{self._layout[0]} -> {tree.version}); NCRPHeuristics collects per-path "
                "statistics for a fixed tree, so structural edits belong at epoch end"
            )
        version, n_full, n_inner = tree.version, len(tree.leaves()), len(tree.internal_nodes())
        with torch.no_grad():
            resp = module.path_responsibilities(state.batch_x).detach()
        expected = (state.batch_x.shape[0], n_full + n_inner)
        if resp.dim() != 2 or tuple(resp.shape) != expected:
            raise ValueError(
                f"path_responsibilities returned shape {tuple(resp.shape)}, expected {expected} "
                f"(batch, {n_full} full paths + {n_inner} inner paths)"
            )
        if self._layout is None:
            self._begin(state, resp, n_full)
            self._layout = (version, n_full, n_inner)
        assert self._mass is not None
        observe = getattr(module, "observe_path_responsibilities", None)
        if observe is not None:
            with torch.no_grad():
                observe(state.batch_x, resp)
        self._mass += resp.sum(0)
        self._n_seen += resp.shape[0]
        if self._resp is not None:
            if state.batch_index is None:
                raise ValueError("FitState.batch_index is None; MERGE needs each datum's index")
            index = state.batch_index.to(device=self._resp.device, dtype=torch.long)
            self._resp.index_copy_(0, index, resp[:, :n_full])

    # ------------------------------------------------------------------ the moves
    def on_epoch_end(self, state: FitState) -> None:
        """Run GROW, then PRUNE or MERGE, then update the lock counter (Algorithm 1, 8-15)."""
        if self._mass is None:  # no step ran this epoch: nothing to decide on
            return
        module = state.module
        tree = module.tree
        if self._layout is None or tree.version != self._layout[0]:
            raise RuntimeError(
                "the tree changed after the epoch's last step and before NCRPHeuristics ran; "
                "the collected statistics no longer match its paths"
            )
        if distributed.is_distributed():  # every rank saw its share of the epoch: decide on the sums
            seen = torch.tensor([float(self._n_seen)], dtype=self._mass.dtype, device=self._mass.device)
            distributed.all_reduce_sum_(self._mass, seen, *([] if self._resp is None else [self._resp]))
            self._n_seen = int(seen.item())
            reduce_observations = getattr(module, "all_reduce_path_observations", None)
            if reduce_observations is not None:
                reduce_observations()
        full_paths, inner_paths = tree.paths(), tree.inner_paths()
        n_full = len(full_paths)
        mass = self._mass.detach().to("cpu", torch.float64)  # the epoch's one host sync
        total = float(mass.sum())
        if not torch.isfinite(mass).all() or bool((mass < 0).any()):
            raise ValueError("path_responsibilities produced negative or non-finite values this epoch")
        if abs(total - self._n_seen) > _ROW_SUM_RTOL * self._n_seen:
            raise ValueError(
                f"path_responsibilities rows must sum to 1: {self._n_seen} rows summed to {total:.6g}"
            )
        epoch = int(state.epoch) + 1  # Algorithm 1 counts epochs from 1
        version = tree.version
        grew = pruned = merged = 0
        logs: dict[str, float] = {}

        # Algorithm 1, lines 8-10: GROW every t_grow epochs
        if "grow" in self.enabled_moves and epoch % self.grow_every == 0:
            if self.max_leaves is None or n_full < self.max_leaves:
                grew = self._grow(state, module, mass, full_paths, inner_paths)

        # lines 11-14: PRUNE, else MERGE, on an unchanged tree after t_lock epochs
        if not grew and self.lock_counter >= self.lock_epochs:
            if "prune" in self.enabled_moves:
                pruned = self._prune(state, module, mass, full_paths, total)
            if not pruned and "merge" in self.enabled_moves and self._resp is not None:
                merged, similarity = self._merge(state, module, mass, full_paths)
                if similarity is not None:
                    logs["max_similarity"] = similarity

        # line 15: restart the lock after a change, else count the epoch
        changed = bool(grew or pruned or merged)
        if changed and module.tree is tree and tree.version == version:
            raise RuntimeError(
                "NCRPHeuristics: the model's grow/prune/merge returned without changing the tree "
                "(edit it through ClusterTree's methods so that its version advances)"
            )
        tree = module.tree
        self.lock_counter = 0 if changed else self.lock_counter + 1
        reset_rows = getattr(module, "reset_node_optimizer_state", None)
        optimizer = getattr(state.engine, "optimizer", None)
        if changed and reset_rows is not None and optimizer is not None:
            reset_rows(optimizer)  # new or reused node rows start Adam afresh
        logs.update(
            n_paths=float(len(tree.leaves())),
            n_inner_paths=float(len(tree.internal_nodes())),
            grew=float(grew),
            pruned=float(pruned),
            merged=float(merged),
            lock_counter=float(self.lock_counter),
        )
        state.logs.update(logs)

    def _grow(self, state, module, mass: Tensor, full_paths, inner_paths) -> int:
        """GROW: sample a path proportional to its mass; branch out if it is an inner path."""
        if float(mass.sum()) <= 0.0:
            return 0
        column = int(torch.multinomial(mass, 1, generator=self.generator))
        if column < len(full_paths):  # a full path was sampled: nothing grows
            return 0
        node = inner_paths[column - len(full_paths)][-1]
        new_nodes = list(module.grow(node))
        if not new_nodes:  # the tree is at capacity: the model warned and skipped the move
            return 0
        module.tree.log_event("grow", new_nodes, epoch=state.epoch, step=state.step, parent=node)
        return 1

    def _prune(self, state, module, mass: Tensor, full_paths, total: float) -> int:
        """PRUNE: remove a random full path whose mass share is below ``prune_threshold``."""
        n_full = len(full_paths)
        if n_full < 2 or total <= 0.0:  # never prune the last full path
            return 0
        share = mass[:n_full] / total
        candidates = torch.nonzero(share < self.prune_threshold).flatten()
        if candidates.numel() == 0:
            return 0
        pick = int(candidates[torch.randint(candidates.numel(), (), generator=self.generator)])
        leaf = full_paths[pick][-1]
        removed = list(module.prune(leaf))
        module.tree.log_event(
            "prune", removed, epoch=state.epoch, step=state.step, leaf=leaf, share=float(share[pick])
        )
        return 1

    def _merge(self, state, module, mass: Tensor, full_paths) -> tuple[int, float | None]:
        """MERGE: fold the most similar pair of full paths if their cosine similarity is high."""
        n_full = len(full_paths)
        if n_full < 2:
            return 0, None
        resp = self._resp
        assert resp is not None
        # J(zeta_i, zeta_j) = q_i q_j^T / (|q_i| |q_j|) for all pairs: normalise, one matmul
        unit = resp / resp.norm(dim=0, keepdim=True).clamp_min(torch.finfo(resp.dtype).tiny)
        similarity = unit.T @ unit
        upper = torch.ones(n_full, n_full, dtype=torch.bool, device=resp.device).triu(1)
        similarity = similarity.masked_fill(~upper, float("-inf"))
        best = int(similarity.argmax())
        i, j = divmod(best, n_full)
        value = float(similarity[i, j])
        if value < self.merge_threshold:
            return 0, value
        keep, drop = (i, j) if mass[i] >= mass[j] else (j, i)  # keep the heavier path
        keep_leaf, drop_leaf = full_paths[keep][-1], full_paths[drop][-1]
        removed = list(module.merge(keep_leaf, drop_leaf))
        module.tree.log_event(
            "merge", removed, epoch=state.epoch, step=state.step,
            keep=keep_leaf, drop=drop_leaf, similarity=value,
        )
        return 1, value

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Return the lock counter and the generator state, for resuming a run exactly."""
        return {"lock_counter": self.lock_counter, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.lock_counter = int(state["lock_counter"])
        self.generator.set_state(state["generator"])
