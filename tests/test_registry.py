"""The model registry: every public estimator is registered, names are normalised."""

from __future__ import annotations

import inspect

import pytest

import pyro_hc.models as models
from pyro_hc.estimator import ClusterEstimator
from pyro_hc.models import get_model, get_model_class, list_models, register_model


def public_estimators():
    return [obj for name, obj in inspect.getmembers(models, inspect.isclass)
            if issubclass(obj, ClusterEstimator) and obj is not ClusterEstimator and not name.startswith("_")]


def test_every_public_model_is_registered():
    estimators = public_estimators()
    assert estimators, "pyro_hc.models exports no estimator"
    for cls in estimators:
        assert cls.name in list_models(), cls
        assert get_model_class(cls.name) is cls


def test_names_are_case_and_dash_insensitive():
    assert get_model_class("VADE") is get_model_class("vade")
    assert get_model_class(" VaDE ") is get_model_class("vade")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        get_model("nope")
    assert all(name in str(err.value) for name in list_models())


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        @register_model("vade")
        class Impostor(ClusterEstimator):
            pass


def test_constructor_only_stores_configuration():
    model = get_model("vade", n_clusters=4, hidden_dims=[8, 8])
    assert model.get_params()["n_clusters"] == 4 and model.get_params()["hidden_dims"] == (8, 8)
    assert not any(name.endswith("_") and not name.startswith("_") for name in vars(model))
    with pytest.raises(TypeError):
        get_model("vade", no_such_option=1)
