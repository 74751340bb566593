"""The scikit-learn-style face shared by every model: ``fit`` / ``predict`` / ``save`` / ``evaluate``.

A concrete model subclasses :class:`ClusterEstimator`, stores its configuration in ``__init__``
(nothing else happens there), and implements

- ``_build_module()`` -> the ``PyroModule`` with ``model``/``guide`` (and a ``tree``),
- ``_fit(x, epochs, batch_size, seed, progress, callbacks)`` -> training through
  :meth:`ClusterEstimator._run`, which drives the one SVI engine,
- ``_leaf_log_proba(x)`` -> log-probabilities over the tree's leaves (``tree.leaves()`` order),
- ``_embed(x)`` -> the embedding returned by :meth:`transform`.

Fitted attributes end in ``_`` (``module_``, ``history_``, ``data_spec_``, ``device_``); methods of
an unfitted model raise :class:`NotFittedError`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from . import metrics
from .data import Dataset, validate_data
from .infer import Callback, History, SVIEngine, local_params, resolve_device, save_checkpoint, set_seed
from .tree import ClusterTree

__all__ = ["ClusterEstimator", "NotFittedError", "DataSpec", "evaluate", "as_tensor"]

FORMAT_VERSION = 1


class NotFittedError(RuntimeError):
    """A method that needs a fitted model was called before ``fit``."""


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

    # configuration ---------------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [p.name for p in signature.parameters.values() if p.name != "self" and p.kind in named]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments this model was configured with."""
        return {name: getattr(self, name) for name in self._param_names()}

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
    ) -> "ClusterEstimator":
        """Train on ``data``; ``epochs``/``batch_size`` override the configured ones. Returns ``self``.

        ``cuda_graphs=True`` replays each training step from a CUDA graph on a GPU (see
        :class:`~pyro_hc.infer.SVIEngine`); it changes speed, not the computation.
        ``monitor_labels`` (``N`` class labels) are for monitoring only: models that support it
        record the ACC / NMI of their intermediate clusterings in ``history_``; training never sees them.
        """
        x = as_tensor(data)
        self._monitor_labels = _monitor_labels(monitor_labels, x.shape[0])
        likelihood = self._likelihood_for(data)
        validate_data(x, likelihood)
        epochs = self.epochs if epochs is None else int(epochs)
        batch_size = self.batch_size if batch_size is None else int(batch_size)
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        set_seed(seed)
        self.device_ = resolve_device(device)
        image_shape = tuple(x.shape[1:]) if x.dim() == 4 else None
        self.data_spec_ = DataSpec(int(np.prod(x.shape[1:])), image_shape, likelihood)
        self._check_config(x)
        self.module_ = self._new_module().to(self.device_)
        self.history_ = History()
        self._cuda_graphs = bool(cuda_graphs)
        started = time.perf_counter()
        with local_params():  # every module built during the fit (pretraining ones too) stays local
            self._fit(x.to(self.device_), epochs=epochs, batch_size=batch_size, seed=seed, progress=progress,
                      callbacks=tuple(callbacks))
        self.fit_info_ = {
            "device": str(self.device_), "seed": seed, "epochs": epochs, "batch_size": batch_size,
            "n_train": int(x.shape[0]), "seconds": time.perf_counter() - started, "cuda_graphs": bool(cuda_graphs),
        }
        return self

    def _likelihood_for(self, data: Any) -> str:
        configured = getattr(self, "likelihood", None)
        if configured is not None:
            return configured
        if isinstance(data, Dataset):
            return data.likelihood
        return "bernoulli"

    def _check_config(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` for configurations that cannot work on ``x`` (override to extend)."""

    def _new_module(self) -> torch.nn.Module:
        """``_build_module()`` in module-local parameter mode (Pyro fixes the mode at construction)."""
        with local_params():
            return self._build_module()

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
        """Train ``module`` with the shared engine; its epochs land in ``self.history_``."""
        optim.setdefault("cuda_graphs", getattr(self, "_cuda_graphs", False) and optim.get("optimizer", "adam") == "adam")
        engine = SVIEngine(module, loss=loss, callbacks=callbacks, history=self.history_, progress=progress,
                           phase=phase, checkpoint_extra=self._checkpoint_header(), **optim)
        engine.fit(x, epochs=epochs, batch_size=batch_size, seed=seed)
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
                                batch_size: int = 256) -> float:
        """Mean ``-log p(x)`` in nats by importance sampling from the guide (the IWAE bound).

        ``log p(x) ≈ log (1/S) Σ_s p(x, z_s) / q(z_s | x)`` with ``S = num_samples`` draws
        ``z_s ~ q(z | x)`` (Burda et al. 2016; the HCRL paper uses S = 100). Each model's
        ``log_importance_weights`` says which latent variables it samples and which global ones
        it fixes at their posterior means.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        x = self._prepare_input(data)
        if not callable(getattr(self.module_, "log_importance_weights", None)):
            raise TypeError(f"{type(self).__name__} is not a density model (its module has no "
                            "log_importance_weights), so it has no likelihood to estimate")

        def log_marginal(batch: torch.Tensor) -> torch.Tensor:
            log_w = self.module_.log_importance_weights(batch, num_samples)
            return torch.logsumexp(log_w, 0) - np.log(num_samples)

        return float(-self._batched(log_marginal, x, batch_size).mean())

    def reconstruction_error(self, data: Dataset | torch.Tensor | np.ndarray) -> float:
        """Mean squared reconstruction error ``Σ_d (x_d − E[x_d | z = E q(z|x)])²`` per datum."""
        x = self._prepare_input(data)
        module = self.module_

        def squared_error(batch: torch.Tensor) -> torch.Tensor:
            recon = module.decoder.mean(module.encoder.embed(batch))
            return (recon - batch.reshape(batch.shape[0], -1)).pow(2).sum(-1)

        return float(self._batched(squared_error, x).mean())

    # persistence ----------------------------------------------------------------------------

    def _checkpoint_header(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "config": self.get_params(),
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
