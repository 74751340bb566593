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
    """Paper-sized VaDE at its default settings (seed 0; the ``default_vade`` fixture) against
    k-means on the pixels (0.792 / 0.742 ACC / NMI).

    VaDE's ACC at one seed is not a stable quantity: seeds 0-5 at one thread (2-core CPU,
    2026-12-07) gave 0.869, 0.815, 0.822, 0.758, 0.811, 0.728 (NMI 0.832, 0.828, 0.836, 0.790,
    0.826, 0.789), and another machine's rounding moves seed 0 as much (0.910 there). Two of six
    seeds fall below the pixels in ACC, so ACC is held only to a no-collapse bar (0.1 below the
    pixels; a collapsed GMM scores 0.3-0.5), and NMI, which beat the pixels by 0.047-0.094 at
    every seed, to the pixels + 0.03. The mean over ten seeds is in the README's results
    (ACC 0.824, sd 0.046)."""
    labels = digits.y.numpy()
    kmeans = KMeans(10, n_init=10, random_state=0).fit_predict(digits.flat().numpy())
    scores = pyro_hc.evaluate(default_vade, digits)
    report = f"VaDE {scores}; k-means acc={cluster_acc(labels, kmeans):.4f} nmi={nmi(labels, kmeans):.4f}"
    print(report)
    assert scores["nmi"] >= nmi(labels, kmeans) + 0.03, report
    assert scores["acc"] >= cluster_acc(labels, kmeans) - 0.1, report


@pytest.mark.slow
def test_kdvae_digits_quality_against_its_start_vade_and_kmeans(digits, default_vade, one_thread):
    """Acceptance on the 8x8 digits (1,797 images), from the VaDE at its defaults (``init_from``).

    The start is the ``default_vade`` fixture (paper-sized, 50 + 100 epochs, seed 0),
    which the VaDE defaults test scores too: one VaDE serves both, as ``init_from`` lets one VaDE
    serve every k-DVAE variant. Then k-means in its embedding, 30 warm-up and 100 k-DVAE epochs with
    small D-128-32-10 autoencoders per cluster (the paper's D-500-100-10 gives about the same
    accuracy on 64-pixel images at twice the time), one thread.

    Every bar is a baseline measured in this test, with slack, and the slack is set from the spread
    over seeds (a seed moves the fit as much as another CPU's rounding does: seed 0 here gave
    VaDE 0.869 where the machine behind the numbers below gave 0.910). Seeds 0-5, one thread,
    this test's recipe (2-core CPU, 2026-12-07), ACC / NMI:

    ====  =============  =============  =============
    seed  k-DVAE         its start      VaDE
    ====  =============  =============  =============
    0     0.824 / 0.837  0.824 / 0.840  0.869 / 0.832
    1     0.815 / 0.827  0.820 / 0.835  0.815 / 0.828
    2     0.825 / 0.838  0.821 / 0.835  0.822 / 0.836
    3     0.815 / 0.826  0.789 / 0.810  0.758 / 0.790
    4     0.824 / 0.837  0.814 / 0.830  0.811 / 0.826
    5     0.821 / 0.832  0.818 / 0.830  0.728 / 0.789
    ====  =============  =============  =============

    k-means on the pixels: 0.792 / 0.742. So k-DVAE stays within 0.008 of its start (the bar:
    0.03), its NMI within 0.001 of the VaDE's (0.03), and it beats the pixels by 0.023-0.033 in
    ACC (the bar: strictly above) and 0.084-0.096 in NMI (the bar: 0.05). Its ACC is *not* held to
    the VaDE's: k-DVAE starts from k-means in the VaDE's embedding (the paper's Sec. 4.2), which
    can sit 0.045 below the VaDE's own assignments (seed 0) — an assertion on that failed in CI.
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
    assert scores["nmi"] >= vade_scores["nmi"] - 0.03, report  # keeps the VaDE's information about the digits
    assert scores["acc"] > km_acc and scores["nmi"] >= km_nmi + 0.05, report  # beats the pixels
