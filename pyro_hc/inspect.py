"""Posterior inspection: ArviZ ``InferenceData`` from a fitted model, and posterior-predictive images.

:func:`to_inference_data` draws from the fitted guide and stores the draws with named dimensions,
so that ``arviz.summary`` and ArviZ's plots work on any of the zoo's variational models::

    idata = to_inference_data(model, data, num_samples=100)
    arviz.summary(idata, var_names=["v"], kind="stats")
    arviz.plot_forest(idata, var_names=["v"], combined=True)

What a draw holds
-----------------
Each draw ``s`` samples every latent variable of the guide *jointly* (the global ones once per
draw, the per-datum ones for every datum) and then, for the discrete variables that the model
enumerates (paths, levels, clusters), stores their exact conditional posterior given those draws:
``q(ζ_n, l_n | v_s, η_{n,s}, z_{n,s})`` for HCRL, ``p(c_n | z_{n,s})`` for VaDE. It is read off
the model itself (Pyro's ``TraceEnum_ELBO.compute_marginals`` on the model conditioned on the
draw), so it is the same posterior the ELBO sums over during training. The mean over draws of a
responsibility is the marginal posterior ``q(ζ_n | x_n)``; its spread over draws is the
uncertainty that the continuous latents carry into it.

Groups, variables and dimensions (``chain`` and ``draw`` come first in every posterior variable):

==========================  ====================================  ===============================
variable                    dimensions                            models
==========================  ====================================  ===============================
``z``                       ``datum, latent``                     every model (guide draw of z_n)
``leaf_proba``              ``datum, leaf``                       clustering models
``v``                       ``stick_node``                        HCRL1/2, VAE-nCRP (q(v_i))
``eta``                     ``datum, level`` (HCRL1: ``level``)   HCRL1/2 (softmax of q(h) draws)
``path_responsibility``     ``datum, path``                       HCRL1/2, VAE-nCRP
``level_responsibility``    ``datum, level``                      HCRL1/2
``node_mean``               ``node, latent``                      VAE-nCRP (q(α_i))
==========================  ====================================  ===============================

``constant_data`` holds the point-estimated parameters of the model (HCRL's node Gaussians
``node_mean`` / ``node_scale``, VaDE's ``cluster_mean`` / ``cluster_scale`` / ``mixture_weight``),
the tree (``parent`` and ``node_level`` per node) and, when the data carry labels, ``label`` per
datum. Coordinates: ``node`` and ``stick_node`` are node ids of ``model.tree`` (``stick_node``
leaves the root out: it has no stick), ``leaf`` the ids of ``tree.leaves()``, ``path`` names a
full path by its nodes (``"0-1-3"``) and an inner path — room for a new branch below its last
node, HCRL Sec. 3.3 — with a trailing ``*`` (``"0-1-*"``), ``datum`` the row of ``data``.

Posterior predictive
--------------------
:func:`sample_node` generates data from one node's (or cluster's) distribution in the embedding;
:func:`reconstruct_by_level` decodes, for every datum, the node means along its most probable
path (HCRL: "reconstruct data by the various abstraction levels"); :func:`node_prototypes`
decodes every node mean. ``to_inference_data(..., predictive=True)`` adds the decoded mean of
every draw of ``z`` as ``posterior_predictive["x"]`` beside ``observed_data["x"]`` (for
``arviz.plot_ppc``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import TraceEnum_ELBO
from pyro.poutine.util import site_is_subsample

from .data import Dataset
from .estimator import ClusterEstimator
from .infer import local_params
from .models.hcrl import HCRLModule
from .models.kdvae import KDVAE
from .models.vade import VaDEModule
from .models.vae import VAEModule
from .models.vae_ncrp import VAENCRPModule

__all__ = ["to_inference_data", "node_prototypes", "node_embeddings", "sample_node", "reconstruct_by_level",
           "path_names"]

#: dimensions of the guide's sample sites and the model's enumerated sites (after the datum axis)
SITE_DIMS: dict[str, tuple[str, ...]] = {
    "z": ("latent",),
    "level_logits": ("level",),
    "sticks": ("stick_node",),
    "node_means": ("node", "latent"),
    "path": ("path",),
    "level": ("level",),
    "cluster": ("leaf",),
}
#: the names the sites get in the InferenceData
SITE_NAMES: dict[str, str] = {
    "sticks": "v",
    "node_means": "node_mean",
    "path": "path_responsibility",
    "level": "level_responsibility",
    "cluster": "leaf_proba",
}


def _check_model(model: Any, what: str) -> None:
    if not isinstance(model, ClusterEstimator):
        raise TypeError(f"{what} needs a pyro_hc model (a ClusterEstimator), got {type(model).__name__}")
    model._check_fitted()


def path_names(tree) -> list[str]:
    """Names of the values of the nCRP path variable: full paths ``"0-1-3"``, then inner paths ``"0-1-*"``."""
    full = ["-".join(map(str, path)) for path in tree.paths()]
    inner = ["-".join(map(str, path)) + "-*" for path in tree.inner_paths()]
    return full + inner


def _labels_of(data: Any) -> np.ndarray | None:
    if isinstance(data, Dataset) and data.y is not None:
        return data.y.cpu().numpy()
    return None


# draws from the guide -----------------------------------------------------------------------


def _in_data_plate(site: dict) -> bool:
    return any(frame.name == "data" for frame in site["cond_indep_stack"])


def _empty_guide(*args, **kwargs) -> None:
    """The continuous latents are all conditioned on; only the enumerated sites remain."""


class _Collector:
    """Per-draw arrays of each variable (per-datum ones gathered over the data batches) and their dims."""

    def __init__(self) -> None:
        self.draws: list[dict[str, np.ndarray]] = []
        self.current: dict[str, list[np.ndarray]] = {}
        self.dims: dict[str, list[str]] = {}

    def add(self, name: str, value: torch.Tensor, per_datum: bool, dims: tuple[str, ...] | None = None) -> None:
        """Record ``value`` (``batch x ...`` when ``per_datum``) for the current draw."""
        array = value.detach().cpu().double().numpy()
        if name not in self.dims:
            trailing = list(dims) if dims is not None else []
            n_trailing = array.ndim - per_datum
            if len(trailing) != n_trailing:  # an unknown site: ArviZ-style default names
                trailing = [f"{name}_dim_{i}" for i in range(n_trailing)]
            self.dims[name] = (["datum"] if per_datum else []) + trailing
        self.current.setdefault(name, []).append(array)

    def end_draw(self) -> None:
        self.draws.append({name: np.concatenate(parts) if self.dims[name][:1] == ["datum"] else parts[0]
                           for name, parts in self.current.items()})
        self.current = {}

    def stacked(self, num_chains: int) -> dict[str, np.ndarray]:
        """``chain x draw x ...`` arrays."""
        out = {}
        for name in self.draws[0]:
            values = np.stack([draw[name] for draw in self.draws])
            out[name] = values.reshape(num_chains, -1, *values.shape[1:])
        return out


def _generic_draws(model: ClusterEstimator, x: torch.Tensor, collector: _Collector, batch_size: int,
                   predictive: bool) -> None:
    """One joint draw of the guide's latents, then the model's enumerated sites given that draw."""
    module = model.module_
    device = model.device_
    n_full = len(model.tree.leaves())
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    globals_: dict[str, torch.Tensor] | None = None
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size].to(device)
        guide = module.guide if globals_ is None else poutine.condition(module.guide, data=globals_)
        trace = poutine.trace(guide).get_trace(batch)
        sites = {name: site for name, site in trace.nodes.items()
                 if site["type"] == "sample" and not site_is_subsample(site)}
        if globals_ is None:
            if not sites:
                raise TypeError(f"{type(model).__name__}'s guide samples no latent variable: it has no "
                                "posterior for ArviZ (read predict_proba / transform instead)")
            globals_ = {name: site["value"] for name, site in sites.items() if not _in_data_plate(site)}
        values = {name: site["value"] for name, site in sites.items()}
        for name, value in values.items():
            per_datum = _in_data_plate(sites[name])
            collector.add(SITE_NAMES.get(name, name), value, per_datum, SITE_DIMS.get(name))
            if name == "level_logits":  # η = softmax(h): the level proportions (Laplace approximation)
                collector.add("eta", torch.softmax(value, -1), per_datum, ("level",))
        conditioned = poutine.condition(module.model, data=values)
        model_trace = poutine.trace(conditioned).get_trace(batch)
        enumerated = [name for name, site in model_trace.nodes.items()
                      if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
                      and site["infer"].get("enumerate") is not None]
        # a site with one value (a one-leaf tree's path) is a point mass; Pyro's contraction cannot target
        # its size-1 enumeration dim, so it is conditioned on that value and the others are enumerated
        supports = {name: model_trace.nodes[name]["fn"].enumerate_support(expand=False) for name in enumerated}
        single = {name: support[0].expand(batch.shape[0]) for name, support in supports.items() if len(support) == 1}
        if single:
            conditioned = poutine.condition(conditioned, data=single)
        marginals = {}
        if len(single) < len(enumerated):
            marginals = elbo.compute_marginals(conditioned, _empty_guide, batch)
        for name in enumerated:
            probs = batch.new_ones(batch.shape[0], 1) if name in single else marginals[name].probs
            collector.add(SITE_NAMES.get(name, name), probs, True, SITE_DIMS.get(name))
            if name == "path":  # the full paths, renormalised, are the leaves' posterior (predict_proba)
                full = probs[:, :n_full]
                collector.add("leaf_proba", full / full.sum(-1, keepdim=True), True, ("leaf",))
        if predictive:
            collector.add("x", module.decoder.mean(values["z"]), True, ("feature",))
    collector.end_draw()


def _kdvae_draws(model: KDVAE, x: torch.Tensor, collector: _Collector, batch_size: int, predictive: bool) -> None:
    """k-DVAE's guide (Algorithm 1): ``z_i ~ q(z | x, y = i)`` for every cluster, then ``q(y | x)``.

    ``objective="soft"``: ``q(y = i | x) ∝ α_i exp L_i(x)``; ``"hard"``: a point mass on the best
    ``L_i(x)`` (Eq. 5). ``z`` is the draw in the latent space of the cluster ``predict`` assigns.
    """
    module = model.module_
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size].to(model.device_)
        z_all, _, out_all, elbos = module.cluster_elbos(batch)
        if module.objective == "soft":
            proba = torch.softmax(module.log_weights + elbos.t(), -1)
        else:
            proba = torch.nn.functional.one_hot(elbos.argmax(0), module.n_clusters).to(elbos.dtype)
        rows = torch.arange(batch.shape[0], device=batch.device)
        assigned = model._leaf_log_proba(batch).argmax(-1)
        collector.add("leaf_proba", proba, True, ("leaf",))
        collector.add("z", z_all[assigned, rows], True, ("latent",))
        if predictive:
            collector.add("x", module.decoders.mean(out_all[proba.argmax(-1), rows]), True, ("feature",))
    collector.end_draw()


def _constants(model: ClusterEstimator) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Point-estimated parameters and the tree, with their dimensions."""
    module = model.module_
    tree = model.tree
    nodes = tree.nodes()
    index = torch.as_tensor(nodes, dtype=torch.long, device=model.device_)
    constants = {
        "parent": np.array([-1 if tree.parent(n) is None else tree.parent(n) for n in nodes]),
        "node_level": np.array([tree.level(n) for n in nodes]),
    }
    dims = {"parent": ["node"], "node_level": ["node"]}
    with torch.no_grad(), local_params():
        if isinstance(module, HCRLModule):
            constants["node_mean"] = module.node_locs[index].cpu().double().numpy()
            constants["node_scale"] = module.node_scales[index].cpu().double().numpy()
            dims.update(node_mean=["node", "latent"], node_scale=["node", "latent"])
        elif isinstance(module, VaDEModule):
            constants["cluster_mean"] = module.cluster_locs.cpu().double().numpy()
            constants["cluster_scale"] = module.cluster_scales.cpu().double().numpy()
            constants["mixture_weight"] = torch.softmax(module.mixture_logits, -1).cpu().double().numpy()
            dims.update(cluster_mean=["leaf", "latent"], cluster_scale=["leaf", "latent"], mixture_weight=["leaf"])
        elif isinstance(model, KDVAE):
            constants["mixture_weight"] = torch.exp(module.log_weights).cpu().double().numpy()
            dims.update(mixture_weight=["leaf"])
    return constants, dims


def to_inference_data(
    model: ClusterEstimator,
    data: Dataset | torch.Tensor | np.ndarray,
    num_samples: int = 100,
    num_chains: int = 2,
    seed: int | None = 0,
    batch_size: int = 1024,
    predictive: bool = False,
):
    """An ArviZ ``InferenceData`` of the fitted guide's posterior on ``data`` (see the module docstring).

    Parameters
    ----------
    model:
        A fitted variational model: ``vade``, ``vae``, ``hcrl1``, ``hcrl2``, ``vae_ncrp``, ``kdvae``,
        or any model whose ``module_`` has a Pyro ``guide`` that samples its latents.
    data:
        The data to condition on (a :class:`~pyro_hc.data.Dataset` adds its labels as constant data).
        Every datum gets its own draws, so use a subset of a large data set.
    num_samples, num_chains:
        Draws per chain and chains. The draws are independent samples of the guide; splitting them
        into chains only lets ArviZ's diagnostics (``r_hat`` ≈ 1, ``ess`` ≈ the number of draws)
        confirm that.
    seed:
        Seeds the draws (the global random state is left as it was); None draws fresh ones.
    batch_size:
        Data per pass (memory only; global latents are drawn once per draw for all batches).
    predictive:
        Also store the decoded mean ``E[x | z]`` of every draw (``posterior_predictive["x"]``) and
        the data (``observed_data["x"]``), both ``datum x feature``.

    Raises
    ------
    NotFittedError
        For an unfitted model.
    TypeError
        For a model without a variational posterior (k-DAE, deterministic models).
    """
    import arviz as az

    _check_model(model, "to_inference_data")
    if num_samples < 1 or num_chains < 1 or batch_size < 1:
        raise ValueError(f"num_samples, num_chains and batch_size must be >= 1, got {num_samples}, "
                         f"{num_chains}, {batch_size}")
    if isinstance(model, KDVAE) and not model.variational:
        raise TypeError(f"{type(model).__name__} trains deterministic autoencoders: it has no posterior for "
                        "ArviZ (read predict_proba / cluster_scores instead)")
    if not callable(getattr(model.module_, "guide", None)):
        raise TypeError(f"{type(model).__name__} has no Pyro guide: it has no posterior for ArviZ")
    x = model._prepare_input(data)
    draw_fn = _kdvae_draws if isinstance(model, KDVAE) else _generic_draws
    collector = _Collector()
    model.module_.eval()
    with torch.random.fork_rng(devices=[model.device_] if model.device_.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(int(seed))
        with torch.no_grad(), local_params():
            for _ in range(num_chains * num_samples):
                draw_fn(model, x, collector, batch_size, predictive)
    posterior = collector.stacked(num_chains)
    predicted = posterior.pop("x", None)

    tree = model.tree
    coords: dict[str, Any] = {
        "datum": np.arange(x.shape[0]),
        "node": np.array(tree.nodes()),
        "stick_node": np.array([n for n in tree.nodes() if n != tree.root]),
        "leaf": np.array(tree.leaves()),
        "path": path_names(tree),
    }
    dims = {name: d for name, d in collector.dims.items() if name != "x"}
    for name in ("latent", "level"):
        sizes = [posterior[v].shape[2 + dims[v].index(name)] for v in posterior if name in dims[v]]
        if sizes:
            coords[name] = np.arange(sizes[0])
    if "path_responsibility" in posterior:  # HCRL's path variable ranges over the full paths only
        coords["path"] = coords["path"][: posterior["path_responsibility"].shape[-1]]
    if "v" in posterior and posterior["v"].shape[-1] != len(coords["stick_node"]):
        raise RuntimeError("the guide's sticks do not match the tree's non-root nodes")

    constants, constant_dims = _constants(model)
    if "latent" not in coords and any("latent" in d for d in constant_dims.values()):
        coords["latent"] = np.arange(next(constants[n].shape[-1] for n, d in constant_dims.items() if "latent" in d))
    labels = _labels_of(data)
    if labels is not None:
        constants["label"] = labels
        constant_dims["label"] = ["datum"]
    groups: dict[str, Any] = {"posterior": posterior, "constant_data": constants}
    dims.update(constant_dims)
    if predicted is not None:
        coords["feature"] = np.arange(predicted.shape[-1])
        groups["posterior_predictive"] = {"x": predicted}
        groups["observed_data"] = {"x": x.reshape(x.shape[0], -1).double().numpy()}
        dims["x"] = ["datum", "feature"]
    used = {d for names in dims.values() for d in names}
    coords = {name: value for name, value in coords.items() if name in used}
    attrs = {"model": model.name, "inference_library": "pyro", "inference_library_version": pyro.__version__,
             "draws": "independent samples of the fitted variational guide"}
    return az.from_dict(**groups, coords=coords, dims=dims, attrs=attrs)


# node distributions in the embedding and in data space ---------------------------------------


def node_embeddings(model: ClusterEstimator) -> tuple[list[int], torch.Tensor] | None:
    """Each node's mean in the embedding, ``(node ids, M x latent_dim)`` on the CPU, or None.

    HCRL1/2, VAE-nCRP: the node means (every node); VaDE: the cluster means (leaves) and the
    mixture's mean ``Σ_c π_c μ_c`` (root). A model may provide its own through a
    ``node_embeddings()`` (or, as DeepECT does, ``node_centers()``) method returning the same
    pair. None when a model has no node means in one shared embedding (k-DVAE: every cluster
    has its own latent space).
    """
    _check_model(model, "node_embeddings")
    for name in ("node_embeddings", "node_centers"):  # DeepECT calls its node means centers
        hook = getattr(model, name, None)
        if callable(hook):
            return hook()
    module = model.module_
    tree = model.tree
    with torch.no_grad(), local_params():
        if callable(getattr(module, "node_means", None)):
            nodes = tree.nodes()
            index = torch.as_tensor(nodes, dtype=torch.long, device=model.device_)
            return nodes, module.node_means()[index].detach().cpu()
        if isinstance(module, VaDEModule):
            weights = torch.softmax(module.mixture_logits, -1)
            means = torch.cat([(weights[:, None] * module.cluster_locs).sum(0, keepdim=True), module.cluster_locs])
            return [tree.root, *tree.leaves()], means.detach().cpu()
    return None


def _image_shape(model: ClusterEstimator, flat: torch.Tensor) -> torch.Tensor:
    shape = model.data_spec_.image_shape
    return flat.reshape(flat.shape[0], *shape) if shape is not None else flat


def node_prototypes(model: ClusterEstimator) -> tuple[list[int], torch.Tensor]:
    """Each node's mean decoded to data space: ``(node ids, M x C x H x W)`` (``M x D`` for vectors).

    HCRL1/2, VAE-nCRP: ``model.decode_nodes()`` (HCRL Figure 1); VaDE: the decoded cluster means
    and, for the root, the decoded mean of the mixture; k-DVAE: each cluster's decoder at the
    prior mean ``z = 0`` (leaves only). A model may provide ``decode_nodes()`` itself.

    Raises
    ------
    TypeError
        For a model with no decodable node means (use member images instead).
    """
    _check_model(model, "node_prototypes")
    hook = getattr(model, "decode_nodes", None)
    if callable(hook):
        return hook()
    module = model.module_
    with torch.no_grad(), local_params():
        embedded = node_embeddings(model)
        if embedded is not None and hasattr(module, "decoder"):
            nodes, means = embedded
            return nodes, _image_shape(model, module.decoder.mean(means.to(model.device_)).cpu())
        if isinstance(model, KDVAE):
            zeros = torch.zeros(1, module.latent_dim, device=model.device_)
            decoded = module.decoders.mean(module.decoders(zeros))[:, 0]  # k x D
            return list(model.tree.leaves()), _image_shape(model, decoded.cpu())
    raise TypeError(f"{type(model).__name__} has no node means to decode; draw member images instead")


@torch.no_grad()
def sample_node(model: ClusterEstimator, node: int, n: int = 16, seed: int | None = None) -> torch.Tensor:
    """``n`` data generated from node ``node``: ``z`` from the node's distribution, decoded to ``E[x | z]``.

    HCRL1/2: ``z ~ N(μ_node, σ²_node)`` (any node: internal nodes emit too). VAE-nCRP:
    ``α ~ q(α_node)``, then ``z ~ N(α, σ²)`` with σ the leaf scale for a leaf and, for an internal
    node, the predictive of a new branch below it (the drift of the missing levels added). VaDE:
    a leaf's cluster Gaussian; the root samples the whole mixture. k-DVAE: ``z ~ N(0, I)``
    through a leaf's decoder (:meth:`~pyro_hc.models.KDVAE.sample`); the root samples the
    mixture. Returns ``n x C x H x W`` (``n x D`` for vectors) on the CPU.
    """
    _check_model(model, "sample_node")
    tree = model.tree
    node = int(node)
    if node not in tree:
        raise ValueError(f"node {node} is not in the model's tree (nodes: {tree.nodes()})")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    hook = getattr(model, "sample_node", None)
    if callable(hook):
        return hook(node, n, seed)
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(int(seed))
    else:
        generator.seed()
    module = model.module_
    module.eval()

    def normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        loc, scale = loc.detach().cpu(), scale.detach().cpu()
        return loc + scale * torch.randn(loc.shape, generator=generator)

    with local_params():
        if isinstance(module, HCRLModule):
            z = normal(module.node_locs[node].expand(n, -1), module.node_scales[node].expand(n, -1))
        elif isinstance(module, VAENCRPModule):
            alpha = normal(module.node_mean_locs[node].expand(n, -1), module.node_mean_scales[node].expand(n, -1))
            missing = 0 if tree.is_leaf(node) else module.depth - 1 - tree.level(node)
            scale = float(np.sqrt(module.leaf_scale**2 + missing * module.drift_scale**2))
            z = normal(alpha, torch.full_like(alpha, scale))
        elif isinstance(module, VaDEModule):
            if node == tree.root:
                weights = torch.softmax(module.mixture_logits, -1).cpu()
                cluster = torch.multinomial(weights, n, replacement=True, generator=generator)
            else:
                if not tree.is_leaf(node):
                    raise ValueError(f"node {node} is neither the root nor a cluster of the flat tree")
                cluster = torch.full((n,), tree.leaves().index(node), dtype=torch.long)
            z = normal(module.cluster_locs.cpu()[cluster], module.cluster_scales.cpu()[cluster])
        elif isinstance(model, KDVAE):
            if node != tree.root:
                return model.sample(node, n, seed=int(torch.randint(2**31, (1,), generator=generator)))
            weights = torch.exp(module.log_weights).cpu()
            cluster = torch.multinomial(weights, n, replacement=True, generator=generator)
            z = torch.randn(n, module.latent_dim, generator=generator).to(model.device_)
            out = module.decoders(z)[cluster.to(model.device_), torch.arange(n, device=model.device_)]
            return _image_shape(model, module.decoders.mean(out).cpu())
        elif isinstance(module, VAEModule) and node == tree.root:  # the plain VAE: the prior N(0, I)
            z = torch.randn(n, module.latent_dim, generator=generator)
        else:
            raise TypeError(f"{type(model).__name__} has no generative distribution for node {node} to sample from")
        return _image_shape(model, module.decoder.mean(z.to(model.device_)).cpu())


@torch.no_grad()
def reconstruct_by_level(model: ClusterEstimator, data: Dataset | torch.Tensor | np.ndarray,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every datum seen at each level of the hierarchy: the decoded node means along its path.

    The path is the root-to-leaf path of the leaf ``model.predict`` assigns; column ``l`` is the
    decoded mean of the path's node at level ``l`` (HCRL: "reconstruct data by the various
    abstraction levels"; the root's image blends everything, the leaf's is the cluster's
    prototype). Returns ``(nodes, images)``: ``N x L`` node ids and ``N x L x C x H x W``
    (``N x L x D`` for vectors), with ``L = tree.depth() + 1``; a path shorter than ``L`` (an
    unbalanced tree) repeats its leaf.

    Raises
    ------
    TypeError
        If a node on a path has no decodable mean (see :func:`node_prototypes`).
    """
    _check_model(model, "reconstruct_by_level")
    tree = model.tree
    nodes, images = node_prototypes(model)
    position = {node: i for i, node in enumerate(nodes)}
    width = tree.depth() + 1
    paths = {leaf: path + (path[-1],) * (width - len(path)) for leaf, path in zip(tree.leaves(), tree.paths())}
    missing = sorted({node for path in paths.values() for node in path if node not in position})
    if missing:
        raise TypeError(f"{type(model).__name__} has no decodable mean for node(s) {missing}")
    leaves = tree.leaves()
    leaf_paths = torch.as_tensor([paths[leaf] for leaf in leaves], dtype=torch.long)  # n_leaves x L
    leaf_rows = torch.as_tensor([[position[node] for node in paths[leaf]] for leaf in leaves], dtype=torch.long)
    leaf_position = torch.full((max(leaves) + 1,), -1, dtype=torch.long)
    leaf_position[torch.as_tensor(leaves)] = torch.arange(len(leaves))
    which = leaf_position[model.predict(data)]
    return leaf_paths[which], images[leaf_rows[which]]

