"""The scikit-learn-style face shared by every model: ``fit`` / ``predict`` / ``save`` / ``evaluate``.

A concrete model subclasses :class:`ClusterEstimator`, stores its configuration in ``__init__``
(nothing else happens there), and implements

- ``_build_module()`` -> the ``PyroModule`` with ``model``/``guide`` (and a ``tree``),
- ``_fit(x, epochs, batch_size, seed, progress, callbacks)`` -> training through
  :meth:`ClusterEstimator._run`, which drives the one SVI engine,
- ``_leaf_log_proba(x)`` -> log-probabilities over the tree's leaves (``tree.leaves()`` order),
- ``_embed(x)`` -> the embedding returned by :meth:`transform`.

Fitted attributes end in ``_`` (``module_``, ``history_``, ``data_spec_``, ``device_``, ``labels_``,
``fit_info_``); methods of an unfitted model raise :class:`NotFittedError`.

Robustness contract:

- every setting is checked, by its declared type and range, before any work starts
  (:class:`InvalidSettingError` names it);
- a fit is transactional: if it raises (a diverged loss, a Ctrl-C, a bad callback), the estimator
  keeps the fitted state it had before (or stays unfitted) and nothing of the failed fit is left;
- ``fit(..., checkpoint=path)`` writes a resumable checkpoint after every ``checkpoint_every``
  epochs of every training phase; ``fit(..., checkpoint=path, resume=True)`` continues an
  interrupted fit from it to the same result as an uninterrupted fit with the same seed;
- model files carry a checksum (:mod:`pyro_hc.infer.checkpoint`); a damaged one raises
  :class:`~pyro_hc.infer.ModelFileError`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import numpy as np
import torch

from . import metrics
from .data import Dataset, validate_data
from .infer import Callback, History, SVIEngine, local_params, resolve_device, save_checkpoint, set_seed
from .infer.checkpoint import ModelFileError, load_checkpoint
from .infer.engine import set_rng_state
from .tree import ClusterTree

__all__ = ["ClusterEstimator", "NotFittedError", "InvalidSettingError", "DataSpec", "evaluate", "as_tensor",
           "setting_hints", "describe_hint", "as_setting_tuple"]

FORMAT_VERSION = 1


class NotFittedError(RuntimeError):
    """A method that needs a fitted model was called before ``fit``."""


class InvalidSettingError(ValueError, TypeError):
    """A setting (a constructor or ``fit`` argument) of the wrong type or out of range; ``setting`` names it.

    A subclass of both ``ValueError`` and ``TypeError`` (as scikit-learn's ``InvalidParameterError``),
    so code that catches either keeps working.
    """

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(message)


# settings: declared types and common ranges ------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def setting_hints(cls: type) -> dict[str, Any]:
    """The constructor's declared type of every setting of ``cls`` (resolved annotations)."""
    if cls not in _HINTS:
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # noqa: BLE001 - an annotation that does not resolve is simply not checked
            hints = {}
        hints.pop("return", None)
        _HINTS[cls] = hints
    return _HINTS[cls]


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the declared type ``hint`` (ints are not bools; floats not NaN; no truncation)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return _is_bool(value)
    if hint is int:
        return isinstance(value, (int, np.integer)) and not _is_bool(value)
    if hint is float:
        return (isinstance(value, (int, float, np.integer, np.floating)) and not _is_bool(value)
                and not math.isnan(float(value)))
    if hint is str:
        return isinstance(value, str)
    if hint in (Path, os.PathLike):
        return isinstance(value, (str, os.PathLike))
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        return len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))
    if origin in (Sequence, list, typing.Sequence):
        return isinstance(value, (tuple, list)) and all(_type_ok(v, args[0]) for v in value) if args else True
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def describe_hint(hint: Any) -> str:
    """``int | None`` -> "an integer or None" (for error messages)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_hint(a) for a in args)
    names = {type(None): "None", bool: "True or False", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {describe_hint(args[0]).removeprefix('an ').removeprefix('a ')}s"
        return f"a tuple of {len(args)} " + ", ".join(describe_hint(a).removeprefix("an ").removeprefix("a ") + "s"
                                                     for a in dict.fromkeys(args))
    if origin in (Sequence, list, typing.Sequence) and args:
        return f"a list of {describe_hint(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return getattr(hint, "__name__", str(hint))


def as_setting_tuple(value: Any) -> Any:
    """A list or tuple setting stored as a tuple; anything else stored as given (``fit`` then names it).

    Constructors only store their configuration: a wrong value must reach ``fit``'s check, not
    fail in ``tuple(5)``.
    """
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _at_least(name: str, value: Any, minimum: float) -> None:
    if value < minimum:
        raise InvalidSettingError(name, f"{name} must be >= {minimum:g}, got {value!r}")


def _check_common_ranges(params: dict[str, Any]) -> None:
    """Ranges every model shares, by the settings' names (budgets, learning rates, sizes)."""
    from .data import LIKELIHOODS

    for name, value in params.items():
        if value is None or _is_bool(value):
            continue
        numeric = isinstance(value, (int, float, np.integer, np.floating))
        if name in ("batch_size", "latent_dim", "n_clusters", "lr_decay_every") and numeric:
            _at_least(name, value, 1)
        elif (name == "epochs" or name.endswith("_epochs")) and numeric:
            _at_least(name, value, 0)
        elif (name == "lr" or name.endswith("_lr")) and numeric:
            if not (0 < value < math.inf):
                raise InvalidSettingError(name, f"{name} must be a positive, finite learning rate, got {value!r}")
        elif name == "lr_decay" and numeric:
            if not 0 < value <= 1:
                raise InvalidSettingError(name, f"{name} must lie in (0, 1], got {value!r}")
        elif name == "weight_decay" and numeric:
            if not 0 <= value < math.inf:
                raise InvalidSettingError(name, f"{name} must be >= 0 and finite, got {value!r}")
        elif name.endswith("hidden_dims") and isinstance(value, (tuple, list)):
            if any(v < 1 for v in value):
                raise InvalidSettingError(name, f"every layer width in {name} must be >= 1, got {tuple(value)!r}")
        elif name == "likelihood" and isinstance(value, str) and value not in LIKELIHOODS:
            raise InvalidSettingError(name, f"unknown likelihood {value!r}; choose one of {LIKELIHOODS} or None")


def _check_fit_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or _is_bool(value):
        raise InvalidSettingError(name, f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidSettingError(name, f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _jsonable(value: Any) -> Any:
    """Configurations compared as JSON (tuples and lists alike)."""
    return json.loads(json.dumps(value, default=str))


@dataclass
class _CheckpointPlan:
    """Where a fit writes its resumable checkpoints, and the checkpoint it resumes from, if any."""

    path: Path
    every: int
    run: dict[str, Any]
    resume: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None
    written: list[str] = field(default_factory=list)  # "phase epoch/epochs" of the last write


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data to build its networks (saved with the model)."""

    n_features: int
    image_shape: tuple[int, ...] | None
    likelihood: str


def as_tensor(data: Dataset | torch.Tensor | np.ndarray) -> torch.Tensor:
    """The ``x`` of a :class:`Dataset`, or an array turned into a float32 tensor."""
    if isinstance(data, Dataset):
        return data.x
    if isinstance(data, np.ndarray):
        return torch.as_tensor(data, dtype=torch.float32)
    if isinstance(data, torch.Tensor):
        return data if data.dtype == torch.float32 else data.float()
    raise TypeError(f"expected a pyro_hc Dataset, a torch.Tensor or a numpy array, got {type(data).__name__}")


class ClusterEstimator:
    """Base class of every model in the zoo (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    #: ELBO the main phase trains with ("trace" or "trace_enum")
    loss: ClassVar[str] = "trace"
    #: whether the model defines a likelihood ``p(x)`` (k-DAE, a plain autoencoder, does not)
    density_model: ClassVar[bool] = True

    # configuration ---------------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [p.name for p in signature.parameters.values() if p.name != "self" and p.kind in named]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments this model was configured with (scikit-learn's ``get_params``).

        No setting is itself an estimator, so ``deep`` changes nothing; it exists for
        ``sklearn.base.clone`` and friends.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "ClusterEstimator":
        """Change settings (scikit-learn's ``set_params``); they take effect at the next ``fit``. Returns ``self``."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise InvalidSettingError(name, f"unknown setting {name!r} for {type(self).__name__}; "
                                                f"valid: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def _validate_settings(self) -> None:
        """Every setting against its declared type, then the ranges shared by all models."""
        hints = setting_hints(type(self))
        params = self.get_params()
        for name, value in params.items():
            hint = hints.get(name)
            if hint is not None and not _type_ok(value, hint):
                raise InvalidSettingError(name, f"{name} must be {describe_hint(hint)}, got {value!r}")
        _check_common_ranges(params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # fitting --------------------------------------------------------------------------------

    def fit(
        self,
        data: Dataset | torch.Tensor | np.ndarray,
        epochs: int | None = None,
        batch_size: int | None = None,
        device: str | torch.device = "auto",
        seed: int | None = 0,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        cuda_graphs: bool = False,
        monitor_labels: Any = None,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 1,
        resume: bool = False,
    ) -> "ClusterEstimator":
        """Train on ``data``; ``epochs``/``batch_size`` override the configured ones. Returns ``self``.

        ``cuda_graphs=True`` replays each training step from a CUDA graph on a GPU (see
        :class:`~pyro_hc.infer.SVIEngine`); it changes speed, not the computation, and does
        nothing elsewhere (with a warning).

        ``monitor_labels`` (``N`` class labels) are for monitoring only: models that support it
        record the ACC / NMI of their intermediate clusterings in ``history_``; training never sees them.

        ``checkpoint``: a file that receives a resumable checkpoint after every ``checkpoint_every``
        epochs of every training phase and at the end of each phase (written atomically; it also
        loads as a model with :func:`pyro_hc.load`). With ``resume=True`` the fit continues from
        that file, which must come from a fit with the same settings, data size, ``epochs``,
        ``batch_size`` and ``seed``; the result is that of the uninterrupted fit.

        Every setting is checked before any work starts. The fit is transactional: if it raises
        (or is interrupted), the model keeps the state it had before the call.
        """
        self._validate_settings()
        epochs = self.epochs if epochs is None else _check_fit_int("epochs", epochs, 0)
        batch_size = self.batch_size if batch_size is None else _check_fit_int("batch_size", batch_size, 1)
        if seed is not None:
            seed = _check_fit_int("seed", seed, 0)
        if not _is_bool(cuda_graphs) or not _is_bool(resume):
            raise InvalidSettingError("cuda_graphs" if not _is_bool(cuda_graphs) else "resume",
                                      f"cuda_graphs and resume must be True or False, got {cuda_graphs!r}, {resume!r}")
        callbacks = tuple(callbacks)
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise InvalidSettingError("callbacks", f"callbacks must be pyro_hc.infer.Callback objects, got {cb!r}")
        checkpoint_every = _check_fit_int("checkpoint_every", checkpoint_every, 1)
        if resume and checkpoint is None:
            raise InvalidSettingError("resume", "resume=True needs checkpoint=PATH, the checkpoint to continue from")
        x = as_tensor(data)
        batch_size = self._resolved_batch_size(batch_size, int(x.shape[0]))
        self._monitor_labels = _monitor_labels(monitor_labels, x.shape[0])
        likelihood = self._likelihood_for(data)
        validate_data(x, likelihood)
        fit_device = resolve_device(device)
        image_shape = tuple(x.shape[1:]) if x.dim() == 4 else None
        data_spec = DataSpec(int(np.prod(x.shape[1:])), image_shape, likelihood)
        previous = self._fitted_state()
        try:
            self.data_spec_, self.device_ = data_spec, fit_device
            self._check_config(x)
            plan = None
            if checkpoint is not None:
                run = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "n_train": int(x.shape[0])}
                plan = _CheckpointPlan(Path(checkpoint), checkpoint_every, run)
                if resume:
                    self._read_resume(plan)
            graphs = bool(cuda_graphs)
            if graphs and fit_device.type != "cuda":
                warnings.warn(f"cuda_graphs=True does nothing on {fit_device} (CUDA graphs need a GPU); "
                              "training eagerly", RuntimeWarning, stacklevel=2)
                graphs = False
            if getattr(self, "amp", False) and fit_device.type != "cuda":
                warnings.warn(f"amp=True does nothing on {fit_device} (bfloat16 autocast runs on CUDA only); "
                              "training in float32", RuntimeWarning, stacklevel=2)
            self._fit_params = self.get_params()  # what the module is built from, whatever changes later
            self._plan, self._phase_count, self._cuda_graphs = plan, 0, graphs
            resumed = plan.payload["resume"] if plan is not None and plan.payload is not None else {}
            self._fit_results = dict(resumed.get("fit_results") or {})
            set_seed(seed)
            self.module_ = self._new_module().to(self.device_)
            self.history_ = History()
            started = time.perf_counter()
            with local_params():  # every module built during the fit (pretraining ones too) stays local
                self._fit(x.to(self.device_), epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                          callbacks=callbacks)
            if plan is not None and plan.resume is not None:
                raise ModelFileError(plan.path, "mismatch", f"a checkpoint of phase {plan.resume['phase']!r} "
                                     f"(number {plan.resume['phase_index']}) that this fit never reached")
            self.fit_info_ = {
                "device": str(self.device_), "seed": seed, "epochs": epochs, "batch_size": batch_size,
                "n_train": int(x.shape[0]), "seconds": time.perf_counter() - started, "cuda_graphs": graphs,
            }
            if hasattr(self, "amp"):
                self.fit_info_["amp"] = bool(self.amp) and fit_device.type == "cuda"
            if resume:
                self.fit_info_["resumed_from"] = str(plan.path)
            self.labels_ = self.predict(x)
        except BaseException:
            self._set_fitted_state(previous)
            raise
        finally:
            self._plan, self._fit_results = None, {}
        return self

    def fit_predict(self, data: Dataset | torch.Tensor | np.ndarray, **fit_args: Any) -> torch.Tensor:
        """``fit(data, **fit_args)`` and return ``labels_``, each datum's leaf node id (as :meth:`predict`)."""
        return self.fit(data, **fit_args).labels_

    # transactional fits ------------------------------------------------------------------------

    #: private attributes that belong to a fitted state (restored with the public ``*_`` ones)
    _PRIVATE_FITTED: ClassVar[tuple[str, ...]] = ("_fit_params", "_cuda_graphs")

    def _fitted_state(self) -> dict[str, Any]:
        """The fitted attributes (names ending in ``_``) and their private companions, by reference."""
        names = [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]
        names += [k for k in self._PRIVATE_FITTED if k in vars(self)]
        return {k: vars(self)[k] for k in names}

    def _set_fitted_state(self, state: dict[str, Any]) -> None:
        """Drop every fitted attribute, then put back ``state`` (a previous fit's, or nothing: unfitted)."""
        for name in self._fitted_state():
            delattr(self, name)
        for name, value in state.items():
            setattr(self, name, value)

    # resumable checkpoints --------------------------------------------------------------------

    #: constructor settings that change only what :meth:`predict` reports, never the fit: a fit
    #: may resume from a checkpoint written under another value of them
    _PREDICTION_SETTINGS: ClassVar[tuple[str, ...]] = ()

    def _read_resume(self, plan: _CheckpointPlan) -> None:
        """Load and check the checkpoint a resumed fit continues from."""
        payload = load_checkpoint(plan.path, map_location=self.device_)
        resume = payload.get("resume")
        if not isinstance(resume, dict) or payload.get("model") != self.name:
            raise ModelFileError(plan.path, "mismatch", f"not a resumable checkpoint of a {self.name} fit "
                                 f"(it holds {payload.get('model')!r}{'' if resume else ', no resume state'})")
        compared = (set(payload["config"]) | set(self.get_params())) - set(self._PREDICTION_SETTINGS)
        differ = sorted(k for k in compared
                        if _jsonable(payload["config"].get(k)) != _jsonable(self.get_params().get(k)))
        differ += sorted(k for k in set(resume["run"]) | set(plan.run) if resume["run"].get(k) != plan.run.get(k))
        if payload.get("data_spec") != asdict(self.data_spec_):
            differ.append("data (shape or likelihood)")
        if differ:
            raise InvalidSettingError(differ[0], f"cannot resume from {plan.path}: it comes from a fit with other "
                                      f"{', '.join(differ)}; resume with the same settings, data, epochs, "
                                      "batch_size and seed")
        plan.resume, plan.payload = resume, payload

    def _write_checkpoint(self, plan: _CheckpointPlan, engine: SVIEngine, ordinal: int, epochs: int,
                          complete: bool) -> None:
        from .infer import distributed

        if not complete and engine.epoch % plan.every and engine.epoch != epochs:
            return
        if not distributed.is_main_process():
            return
        state = engine.state_dict()
        for key in ("tree", "history", "format_version", "model", "config", "data_spec"):
            state.pop(key, None)
        # the phase's module is often the model's own (or wraps its networks): save it only when distinct
        state["module"] = None if engine.module is self.module_ else state["module"]
        tree = getattr(self.module_, "tree", None)
        payload = {
            **self._checkpoint_header(),
            "module": {k: v.detach().cpu() for k, v in self.module_.state_dict().items()},
            "tree": tree.to_json() if tree is not None else None,
            "history": list(self.history_.records),
            "fit_info": {},
            "resume": {"phase_index": ordinal, "phase": engine.phase, "phase_epochs": epochs, "complete": complete,
                       "run": dict(plan.run), "engine": state, "fit_results": self._fit_results},
        }
        save_checkpoint(plan.path, payload)
        plan.written[:] = [f"{engine.phase} epoch {engine.epoch}/{epochs}"]

    def _resume_engine(self, plan: _CheckpointPlan, engine: SVIEngine) -> None:
        """Put the model, the phase's optimiser and counters back as the checkpoint saved them."""
        payload, resume = plan.payload, plan.resume
        plan.resume = plan.payload = None
        if payload.get("tree") is not None:
            self.module_.tree = ClusterTree.from_json(payload["tree"])
        self.module_.load_state_dict(payload["module"])
        state = resume["engine"]
        if state["module"] is not None:
            engine.module.load_state_dict(state["module"])
        engine.optimizer.load_state_dict(state["optimizer"])
        engine.scheduler.load_state_dict(state["scheduler"])
        engine.epoch, engine.step_count = int(state["epoch"]), int(state["step"])
        engine.loss_baseline = state.get("loss_baseline")
        engine._pending_resume = {key: state.get(key) for key in ("batcher", "callbacks", "rng")}
        self.history_.records[:] = payload["history"]

    def _likelihood_for(self, data: Any) -> str:
        configured = getattr(self, "likelihood", None)
        if configured is not None:
            return configured
        if isinstance(data, Dataset):
            return data.likelihood
        return "bernoulli"

    def _check_config(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` for configurations that cannot work on ``x`` (override to extend).

        Runs before any work: check here everything a later phase would reject, naming the setting.
        """

    def _new_module(self) -> torch.nn.Module:
        """``_build_module()`` in module-local parameter mode (Pyro fixes the mode at construction)."""
        with local_params():
            return self._build_module()

    def _resolved_batch_size(self, batch_size: int | None, n: int) -> int:
        """The batch size a fit on ``n`` points uses: ``batch_size`` itself; a model whose setting may be
        None (a size chosen from the data) overrides this."""
        if batch_size is None:
            raise InvalidSettingError("batch_size", f"{type(self).__name__} needs a batch_size, got None")
        return batch_size

    def _run(
        self,
        module: torch.nn.Module,
        x: torch.Tensor,
        *,
        phase: str,
        epochs: int,
        batch_size: int,
        seed: int | None,
        progress: bool,
        callbacks: Sequence[Callback] = (),
        loss: str = "trace",
        **optim: Any,
    ) -> SVIEngine:
        """Train ``module`` with the shared engine; its epochs land in ``self.history_``.

        Under ``fit(checkpoint=...)`` each phase (each call, counted in order) writes resumable
        checkpoints; when resuming, the phases the checkpoint had finished are skipped (their
        result comes back with the checkpoint) and the checkpoint's own phase continues from it.
        A skipped phase returns None, so a model must make the same calls in the same order on a
        resumed fit. What a model's finished steps produced outside ``module_`` and ``history_``
        (VaDE's pretrained autoencoder and its scored candidates) it keeps in ``self._fit_results``
        (tensors and plain containers): every checkpoint saves that dict and a resumed fit starts
        with it, so the model takes those results from there instead of recomputing them.
        """
        ordinal = getattr(self, "_phase_count", 0)
        self._phase_count = ordinal + 1
        plan: _CheckpointPlan | None = getattr(self, "_plan", None)
        resuming = plan is not None and plan.resume is not None
        if resuming and ordinal < plan.resume["phase_index"]:
            return None
        optim.setdefault("cuda_graphs", getattr(self, "_cuda_graphs", False) and optim.get("optimizer", "adam") == "adam")
        engine = SVIEngine(module, loss=loss, callbacks=callbacks, history=self.history_, progress=progress,
                           phase=phase, checkpoint_extra=self._checkpoint_header(), **optim)
        if plan is not None:
            engine.epoch_end_hooks.append(
                lambda eng: self._write_checkpoint(plan, eng, ordinal, epochs, complete=False))
        remaining = epochs
        if resuming and ordinal == plan.resume["phase_index"]:
            if plan.resume["phase"] != phase or plan.resume["phase_epochs"] != epochs:
                raise ModelFileError(plan.path, "mismatch", f"a checkpoint of phase {plan.resume['phase']!r}, "
                                     f"but this fit's phase number {ordinal} is {phase!r}")
            complete = plan.resume["complete"]
            self._resume_engine(plan, engine)
            if complete:  # the phase had ended: only its random state is left to continue from
                pending, engine._pending_resume = engine._pending_resume, None
                if pending.get("rng") is not None:
                    set_rng_state(pending["rng"])
                return engine
            remaining = epochs - engine.epoch
        engine.fit(x, epochs=remaining, batch_size=batch_size, seed=seed)
        if plan is not None:
            self._write_checkpoint(plan, engine, ordinal, epochs, complete=True)
        return engine

    # fitted state ---------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(data) first")

    @property
    def tree(self) -> ClusterTree:
        """The fitted cluster tree (a flat model's is a root with one leaf per cluster)."""
        self._check_fitted()
        return self.module_.tree

    def _prepare_input(self, data: Dataset | torch.Tensor | np.ndarray) -> torch.Tensor:
        self._check_fitted()
        x = as_tensor(data)
        n_features = int(np.prod(x.shape[1:])) if x.dim() > 1 else -1
        if n_features != self.data_spec_.n_features:
            raise ValueError(
                f"expected inputs with {self.data_spec_.n_features} features per datum "
                f"(shape N x ... ), got shape {tuple(x.shape)}"
            )
        shape = self.data_spec_.image_shape
        if shape is not None and x.dim() > 2 and tuple(x.shape[1:]) != shape:
            raise ValueError(f"this model was fitted on images of shape {shape} (C x H x W); got images of shape "
                             f"{tuple(x.shape[1:])} with as many pixels: reshape them to N x {' x '.join(map(str, shape))}")
        if shape is None and x.dim() > 2:
            raise ValueError(f"this model was fitted on flat data (N x {self.data_spec_.n_features}); got shape "
                             f"{tuple(x.shape)}: flatten it to N x {self.data_spec_.n_features}")
        validate_data(x, self.data_spec_.likelihood)
        return x

    @torch.no_grad()
    def _batched(self, fn, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Apply ``fn`` to device batches of ``x`` and gather the results on the CPU."""
        self.module_.eval()
        with local_params():
            outputs = [fn(x[i:i + batch_size].to(self.device_)).cpu() for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outputs)

    def predict_proba(self, data: Dataset | torch.Tensor | np.ndarray) -> torch.Tensor:
        """Posterior probability of each leaf, ``N x n_leaves`` in ``tree.leaves()`` order."""
        x = self._prepare_input(data)
        return self._batched(self._leaf_log_proba, x).exp()

    def predict(self, data: Dataset | torch.Tensor | np.ndarray) -> torch.Tensor:
        """Node id (in ``self.tree``) of the most probable leaf for each datum."""
        x = self._prepare_input(data)
        best = self._batched(self._leaf_log_proba, x).argmax(-1)
        return torch.as_tensor(self.tree.leaves(), dtype=torch.long)[best]

    def transform(self, data: Dataset | torch.Tensor | np.ndarray) -> torch.Tensor:
        """The embedding (mean of ``q(z | x)``) of each datum, ``N x latent_dim``."""
        x = self._prepare_input(data)
        return self._batched(self._embed, x)

    # density estimation ---------------------------------------------------------------------

    def negative_log_likelihood(self, data: Dataset | torch.Tensor | np.ndarray, num_samples: int = 100,
                                batch_size: int = 256, proposal: str = "posterior") -> float:
        """Mean ``-log p(x)`` in nats by importance sampling with ``S = num_samples`` draws.

        ``proposal="posterior"`` (the IWAE bound, Burda et al. 2016; the HCRL paper's S = 100):
        ``log p(x) ≈ log (1/S) Σ_s p(x, z_s) / q(z_s | x)`` with ``z_s ~ q(z | x)``. Each model's
        ``log_importance_weights`` says which latent variables it samples and which global ones
        it fixes at their posterior means.

        ``proposal="prior"``: ``log p(x) ≈ log (1/S) Σ_s p(x | z_s)`` with ``z_s ~ p(z)`` (the
        module's ``sample_latent_prior``, the same globals), fresh draws for every batch. Also a
        stochastic lower bound on ``log p(x)``, far looser at small ``S`` (few prior draws land
        near a datum's posterior), so its NLL is higher; it is here to test whether a paper's
        likelihoods were estimated this way.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if proposal not in ("posterior", "prior"):
            raise ValueError(f"proposal must be 'posterior' or 'prior', got {proposal!r}")
        x = self._prepare_input(data)
        module = self.module_
        if not self.density_model or not callable(getattr(module, "log_importance_weights", None)):
            raise TypeError(f"{type(self).__name__} is not a density model (its module has no "
                            "log_importance_weights), so it has no likelihood to estimate")
        if proposal == "prior" and not callable(getattr(module, "sample_latent_prior", None)):
            raise TypeError(f"{type(self).__name__}'s module has no sample_latent_prior, so proposal='prior' is not "
                            "available; proposal='posterior' (the IWAE bound) is")

        def log_marginal(batch: torch.Tensor) -> torch.Tensor:
            if proposal == "posterior":
                log_w = module.log_importance_weights(batch, num_samples)
            else:  # S x B: every draw scored against every datum of the batch
                z = module.sample_latent_prior(num_samples)
                log_w = module.decoder.distribution(z[:, None, :]).log_prob(batch.reshape(batch.shape[0], -1))
            return torch.logsumexp(log_w, 0) - np.log(num_samples)

        return float(-self._batched(log_marginal, x, batch_size).mean())

    def reconstruction_error(self, data: Dataset | torch.Tensor | np.ndarray) -> float:
        """Mean squared reconstruction error ``Σ_d (x_d − E[x_d | z = E q(z|x)])²`` per datum."""
        x = self._prepare_input(data)
        module = self.module_
        if not (hasattr(module, "decoder") and hasattr(module, "encoder")):
            raise TypeError(f"{type(self).__name__} has no decoder (it does not reconstruct its inputs), so it has "
                            "no reconstruction error")

        def squared_error(batch: torch.Tensor) -> torch.Tensor:
            recon = module.decoder.mean(module.encoder.embed(batch))
            return (recon - batch.reshape(batch.shape[0], -1)).pow(2).sum(-1)

        return float(self._batched(squared_error, x).mean())

    # persistence ----------------------------------------------------------------------------

    def _checkpoint_header(self) -> dict[str, Any]:
        # the configuration the fitted module was built from, even if an attribute changed since
        config = getattr(self, "_fit_params", None)
        return {
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "config": dict(config) if config is not None else self.get_params(),
            "data_spec": asdict(self.data_spec_),
        }

    def save(self, path: str | Path) -> Path:
        """Write configuration, parameters, tree and history to one file; ``pyro_hc.models.load`` reads it."""
        self._check_fitted()
        payload = {
            **self._checkpoint_header(),
            "module": {k: v.detach().cpu() for k, v in self.module_.state_dict().items()},
            "tree": self.tree.to_json(),
            "history": list(self.history_.records),
            "fit_info": dict(getattr(self, "fit_info_", {})),
        }
        return save_checkpoint(path, payload)

    def _restore(self, payload: dict[str, Any], device: str | torch.device = "cpu") -> None:
        spec = payload["data_spec"]
        image_shape = tuple(spec["image_shape"]) if spec["image_shape"] is not None else None
        self.data_spec_ = DataSpec(int(spec["n_features"]), image_shape, spec["likelihood"])
        self.device_ = resolve_device(device)
        self._fit_params = self.get_params()
        module = self._new_module()
        if payload.get("tree") is not None:
            module.tree = ClusterTree.from_json(payload["tree"])
        module.load_state_dict(payload["module"])
        self.module_ = module.to(self.device_).eval()
        self.history_ = History(payload.get("history", []))
        self.fit_info_ = dict(payload.get("fit_info", {}))


def _monitor_labels(labels: Any, n: int) -> np.ndarray | None:
    """``fit``'s ``monitor_labels`` as an ``N`` integer array (or None), checked against the data."""
    if labels is None:
        return None
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"monitor_labels must be {n} integer class labels (one per datum), "
                         f"got shape {labels.shape} and dtype {labels.dtype}")
    return labels


def evaluate(model: ClusterEstimator, dataset: Dataset) -> dict[str, float]:
    """ACC, NMI, ARI, dendrogram purity, leaf purity and F-score of a fitted model's leaf assignments.

    ``f_score`` matches the classes with the tree's nodes (:func:`~pyro_hc.metrics.hierarchical_f_score`);
    for a data set with a known hierarchy (``dataset.tree``, e.g. :func:`~pyro_hc.data.synthetic_tree`)
    ``hierarchical_f_score`` matches every node of that hierarchy too.
    """
    if dataset.y is None:
        raise ValueError(f"data set {dataset.name!r} has no labels; evaluate needs ground-truth classes")
    assigned = model.predict(dataset).numpy()
    labels = dataset.y.cpu().numpy()
    scores = {
        "acc": metrics.cluster_acc(labels, assigned),
        "nmi": metrics.nmi(labels, assigned),
        "ari": metrics.ari(labels, assigned),
        "dendrogram_purity": metrics.dendrogram_purity(model.tree, assigned, labels),
        "leaf_purity": metrics.leaf_purity(model.tree, assigned, labels),
        "f_score": metrics.hierarchical_f_score(model.tree, assigned, labels),
    }
    if dataset.tree is not None:
        scores["hierarchical_f_score"] = metrics.hierarchical_f_score(model.tree, assigned, labels,
                                                                      label_tree=dataset.tree)
    return scores
