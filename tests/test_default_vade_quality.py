"""The quality tests of the paper-sized VaDE at its defaults on the digits and of k-DVAE started from it.

They share one fitted VaDE (the ``default_vade`` fixture, about 100 s), as ``init_from`` lets one
VaDE serve every k-DVAE variant; keeping them in one file keeps them on one pytest-xdist worker
(``make test`` runs ``--dist loadfile``), so the VaDE is fitted once.
"""

from __future__ import annotations

import pytest
from sklearn.cluster import KMeans

import pyro_hc
from pyro_hc.metrics import cluster_acc, nmi

from .conftest import FIT_THREADS, torch_threads


@pytest.fixture
def one_thread():
    """k-DVAE's small per-cluster networks gain nothing from a second thread."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def default_vade(digits):
    """VaDE at its defaults on the digits, seed 0, ``FIT_THREADS`` threads: fitted once, for the VaDE
    defaults test and as the start (``init_from``) of the k-DVAE quality test (about 100 s of the suite)."""
    with torch_threads(FIT_THREADS):
        return pyro_hc.get_model("vade").fit(digits, seed=0, progress=False)


@pytest.mark.slow
def test_default_vade_beats_kmeans_on_raw_digits(digits, default_vade):
    """The acceptance check: paper-sized VaDE at its default settings (seed 0; the ``default_vade``
    fixture) vs k-means on the pixels. Measured (2-core CPU): ACC / NMI 0.910 / 0.862 at one thread
    (``make test``'s workers), 0.891 / 0.855 at two; k-means 0.792 / 0.743."""
    labels = digits.y.numpy()
    kmeans = KMeans(10, n_init=10, random_state=0).fit_predict(digits.flat().numpy())
    scores = pyro_hc.evaluate(default_vade, digits)
    print(f"VaDE {scores}; k-means acc={cluster_acc(labels, kmeans):.4f} nmi={nmi(labels, kmeans):.4f}")
    assert scores["acc"] > cluster_acc(labels, kmeans)
    assert scores["nmi"] > nmi(labels, kmeans)


@pytest.mark.slow
def test_kdvae_digits_quality_against_its_start_vade_and_kmeans(digits, default_vade, one_thread):
    """Acceptance on the 8x8 digits (1,797 images), from the VaDE at its defaults (``init_from``).

    The start is the ``default_vade`` fixture (paper-sized, 50 + 100 epochs, seed 0),
    which the VaDE defaults test scores too: one VaDE serves both, as ``init_from`` lets one VaDE
    serve every k-DVAE variant. Then k-means in its embedding, 30 warm-up and 100 k-DVAE epochs with
    small D-128-32-10 autoencoders per cluster (the paper's D-500-100-10 gives about the same
    accuracy on 64-pixel images at twice the time), one thread.

    Every bar is a baseline measured in this test, with slack. Measured here (2-core CPU), k-DVAE
    ACC / NMI against its initial clusters (k-means in VaDE's embedding), the VaDE it starts from and
    k-means on the pixels: with the VaDE at one thread (``make test``'s workers) 0.930 / 0.877,
    start 0.915 / 0.868, VaDE 0.910 / 0.862; at two threads 0.932 / 0.881, start 0.899 / 0.860,
    VaDE 0.891 / 0.855; pixels 0.792 / 0.743 (k-DVAE 25 s after the fixture's 72 s at two threads,
    with the engine's fused Adam; before it 0.928 /
    0.875, 0.913 / 0.866, 0.908 / 0.861 in 34 s after 127 s). From a VaDE of 20 + 40 epochs
    (the test's start until this stop, ACC 0.72) k-DVAE reached 0.821 / 0.834 at seed 0, above that
    VaDE by 0.10, but from the default VaDE there is little left to gain, so the test asserts that
    k-DVAE keeps the quality of its start and of the VaDE, and beats k-means on the pixels.
    """
    labels = digits.y.numpy()
    kmeans = KMeans(10, n_init=10, random_state=0).fit_predict(digits.flat().numpy())
    km_acc, km_nmi = cluster_acc(labels, kmeans), nmi(labels, kmeans)
    model = pyro_hc.get_model("kdvae", hidden_dims=(128, 32), lr=3e-3, warmup_epochs=30, warmup_lr=3e-3,
                              epochs=100, init_from=default_vade)
    scores = pyro_hc.evaluate(model.fit(digits, seed=0, progress=False), digits)
    vade_scores = pyro_hc.evaluate(default_vade, digits)
    init_acc, init_nmi = cluster_acc(labels, model.init_labels_.numpy()), nmi(labels, model.init_labels_.numpy())
    report = (f"k-DVAE acc={scores['acc']:.4f} nmi={scores['nmi']:.4f}; "
              f"VaDE (its start) acc={vade_scores['acc']:.4f} nmi={vade_scores['nmi']:.4f}; "
              f"k-means in VaDE's embedding acc={init_acc:.4f} nmi={init_nmi:.4f}; "
              f"k-means on pixels acc={km_acc:.4f} nmi={km_nmi:.4f}")
    print(report)
    assert scores["acc"] >= init_acc - 0.03 and scores["nmi"] >= init_nmi - 0.03, report  # keeps its start
    assert scores["acc"] >= vade_scores["acc"] - 0.03 and scores["nmi"] >= vade_scores["nmi"] - 0.03, report
    assert scores["nmi"] >= km_nmi + 0.05 and scores["acc"] >= km_acc + 0.05, report
