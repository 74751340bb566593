"""Property-based tests (hypothesis) of random configurations and inputs for every model (issue 18).

For any configuration (each setting kept, drawn from a plausible range of its declared type, or
replaced by a value of the wrong type) and any input (a random number of digits, flat or as
images, or with values a likelihood cannot take), ``fit`` either succeeds, and then ``predict``
assigns every datum to a leaf, or raises one of the library's documented exceptions:

- before any training step, within a second, an ``InvalidSettingError`` / ``ValueError`` /
  ``TypeError`` / ``FileNotFoundError`` whose message names a setting that was changed or the
  input at fault;
- once training has started, only a :class:`~pyro_hc.infer.DivergenceError` (a learning rate
  drawn too large); any other error after the first step is a setting checked too late.

Budgets are tiny (at most two epochs of each phase, a few units per layer) and ``max_examples``
small, so the file runs in well under a minute; ``derandomize`` keeps CI reproducible.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyro_hc
from pyro_hc.estimator import InvalidSettingError, setting_hints
from pyro_hc.infer import DivergenceError, SVIEngine
from pyro_hc.models import get_model_class

from .robust_configs import TINY

DIGITS = pyro_hc.load_dataset("digits", n_samples=64)

# in-range draws for settings by name (small, so that a fit stays cheap); anything else by its type
VALID = {
    "epochs": st.integers(0, 2), "pretrain_epochs": st.integers(0, 2), "warmup_epochs": st.integers(0, 2),
    "vade_epochs": st.integers(0, 1), "vade_pretrain_epochs": st.integers(0, 1),
    "batch_size": st.integers(1, 80), "latent_dim": st.integers(1, 4), "n_clusters": st.integers(1, 8),
    "depth": st.integers(2, 4), "capacity": st.integers(3, 20), "max_leaves": st.one_of(st.none(), st.integers(2, 8)),
    "n_leaves": st.one_of(st.none(), st.integers(1, 4)), "grow_interval": st.integers(1, 6),
    "prune_check_every": st.integers(1, 4), "grow_sample": st.one_of(st.none(), st.integers(2, 80)),
    "grow_every": st.integers(1, 3), "lock_epochs": st.integers(0, 3), "lr_decay_every": st.integers(1, 3),
    "head_hidden": st.integers(1, 16), "projection_dim": st.integers(1, 8), "prune_start": st.integers(0, 3),
    "prune_every": st.integers(1, 3), "init_tree": st.sampled_from(["path", "embedding"]),
    "init_leaves": st.integers(1, 6), "hidden_dims": st.lists(st.integers(1, 8), min_size=1, max_size=2),
    "vade_hidden_dims": st.lists(st.integers(1, 8), min_size=1, max_size=2),
    "lr": st.sampled_from([1e-4, 1e-3, 1e-2, 0.5, 5.0]), "pretrain_lr": st.sampled_from([1e-4, 1e-3, 1e-2]),
    "warmup_lr": st.sampled_from([1e-4, 1e-3, 1e-2]), "vade_lr": st.sampled_from([1e-4, 1e-3, 1e-2]),
    "lr_decay": st.sampled_from([0.5, 0.9, 1.0]), "weight_decay": st.sampled_from([0.0, 1e-4]),
    "backbone": st.just("small_cnn"), "likelihood": st.sampled_from([None, "bernoulli", "gaussian"]),
    "crop_scale": st.one_of(st.none(), st.just((0.5, 1.0))), "pretrained": st.none(),
    "level_concentration": st.one_of(st.floats(0.1, 3), st.lists(st.floats(0.1, 3), min_size=1, max_size=4)),
    "prune_threshold": st.sampled_from([0.0, 0.01, 0.1]), "merge_threshold": st.sampled_from([0.5, 0.95, 1.0]),
    "corruption": st.sampled_from([0.0, 0.2]), "temperature": st.sampled_from([0.1, 0.5, 1.0]),
    "objective": st.sampled_from(["hard", "soft"]), "activation": st.sampled_from(["relu", "leaky_relu"]),
    "augment": st.sampled_from(["auto", "digits"]),
}
#: out-of-range values and values of the wrong type (one of them is put into a "bad" configuration)
INVALID = st.sampled_from(["5", True, 2.5, [1], float("nan"), -1, 0, -0.5, "bogus", (1, "a")])
#: words that name the input in an error message about the data
INPUT_WORDS = ("x ", "data", "shape", "image", "nan", "values", "points", "[0, 1]", "finite")


def _valid(name: str, hint) -> st.SearchStrategy:
    if name in VALID:
        return VALID[name]
    text = str(hint)
    if "bool" in text:
        return st.booleans()
    if "float" in text:
        return st.sampled_from([0.1, 0.5, 1.0])
    if "int" in text:
        return st.integers(1, 4)
    return st.nothing()


@st.composite
def configurations(draw, name: str) -> tuple[dict, set[str]]:
    """From the tiny configuration: some settings redrawn in range and, in a "bad" one, one setting
    given an out-of-range value or one of the wrong type. Returns the configuration and what changed."""
    cls = get_model_class(name)
    hints = setting_hints(cls)
    config, changed = dict(TINY[name]), set()
    for setting in cls._param_names():
        valid = _valid(setting, hints.get(setting))
        if valid.is_empty or draw(st.booleans()) or draw(st.booleans()):  # keep three in four
            continue
        config[setting] = draw(valid)
        changed.add(setting)
    if draw(st.sampled_from(["good", "good", "bad"])) == "bad":
        setting = draw(st.sampled_from(cls._param_names()))
        config[setting] = draw(INVALID)
        changed.add(setting)
    return config, changed


@st.composite
def inputs(draw) -> tuple[torch.Tensor, str | None]:
    """Digits (random count, images or flat), or data with a fault; returns (x, the fault or None)."""
    n = draw(st.integers(2, 64))
    x = DIGITS.x[:n].clone()
    fault = draw(st.sampled_from([None] * 6 + ["flat", "nan", "outside", "3d"]))
    if fault == "flat":
        x = x.reshape(n, -1)
    elif fault == "nan":
        x[0, 0, 0, 0] = float("nan")
    elif fault == "outside":
        x[0, 0, 0, 0] = 1.5
    elif fault == "3d":
        x = x.reshape(n, 8, 8)
    return x, fault


def _names_the_fault(message: str, changed: set[str], fault: str | None) -> bool:
    text = message.lower()
    if any(setting in message for setting in changed):
        return True
    return fault is not None and any(word in text for word in INPUT_WORDS) or (
        # the likelihood a setting or the data implies, or the data size a setting exceeds
        "data points" in text or "images" in text)


def _check(name: str, config: dict, changed: set[str], x: torch.Tensor, fault: str | None, monkeypatch) -> None:
    started: list[float] = []
    original_fit = SVIEngine.fit

    def recording_fit(engine, *args, **kwargs):
        started.append(time.perf_counter())
        return original_fit(engine, *args, **kwargs)

    monkeypatch.setattr(SVIEngine, "fit", recording_fit)
    torch.set_num_threads(1)
    began = time.perf_counter()
    try:
        model = pyro_hc.get_model(name, **config)
        model.fit(x, progress=False, seed=0)
    except DivergenceError:
        assert started, "a DivergenceError before any training step"
        return
    except (InvalidSettingError, ValueError, TypeError, FileNotFoundError) as err:
        where = f"{name} {config} fault={fault}: {type(err).__name__}: {err}"
        assert not started, f"raised after training had started (a setting checked too late): {where}"
        assert time.perf_counter() - began < 1.0, f"took {time.perf_counter() - began:.2f} s: {where}"
        assert _names_the_fault(str(err), changed, fault), f"names neither a changed setting nor the input: {where}"
        return
    labels = model.predict(x)
    assert labels.shape == (x.shape[0],) and set(labels.tolist()) <= set(model.tree.leaves())
    assert not math.isnan(model.fit_info_["seconds"])


@pytest.mark.parametrize("name", sorted(TINY))
@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_configurations_fit_or_fail_early_naming_the_fault(name, data, monkeypatch):
    config, changed = data.draw(configurations(name), label="configuration")
    x, fault = data.draw(inputs(), label="input")
    with monkeypatch.context() as patch:
        _check(name, config, changed, x, fault, patch)
