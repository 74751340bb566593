"""pyro_hc.plot and ``pyro-hc plot``: every picture is written for every kind of model, unfitted models
are refused clearly, and the numbers drawn (layout, shares, purities, events) are the right ones."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pyro_hc  # noqa: E402
from pyro_hc import NotFittedError, plot  # noqa: E402
from pyro_hc.cli import main  # noqa: E402
from pyro_hc.tree import ClusterTree  # noqa: E402

# the paper's GROW / PRUNE / MERGE: it grows a tree in 4 tiny epochs, which the plots need
TINY_NCRP = dict(depth=3, latent_dim=2, hidden_dims=(16,), pretrain_epochs=1, capacity=16, lock_epochs=1, structure="paper")
FIT = dict(batch_size=64, seed=0, progress=False)
PLOTS = ["plot_tree", "plot_embedding", "plot_class_distance", "plot_history", "plot_node_samples",
         "plot_level_reconstructions"]


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return pyro_hc.load_dataset("digits").subset(torch.arange(300))


@pytest.fixture(scope="module")
def fitted(data):
    models = {
        "hcrl2": pyro_hc.get_model("hcrl2", **TINY_NCRP).fit(data, epochs=4, **FIT),
        "vade": pyro_hc.get_model("vade", n_clusters=5, latent_dim=3, hidden_dims=(16,),
                                  pretrain_epochs=1).fit(data, epochs=1, **FIT),
        "kdvae": pyro_hc.get_model("kdvae", n_clusters=4, latent_dim=2, hidden_dims=(16,), epochs=1,
                                   warmup_epochs=1, vade_epochs=0, vade_pretrain_epochs=0).fit(data, **FIT),
    }
    assert len(models["hcrl2"].tree.leaves()) >= 2 and models["hcrl2"].tree.events
    return models


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def call(name, model, data, path):
    if name in ("plot_history", "plot_node_samples"):
        return getattr(plot, name)(model, path=path)
    return getattr(plot, name)(model, data, path=path)


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 2000, f"{path.name} is missing or nearly empty"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.02, f"{path.name} is a blank image"


@pytest.mark.parametrize("name", PLOTS)
def test_every_plot_writes_a_png_for_a_tree_model(name, fitted, data, tmp_path):
    figure = call(name, fitted["hcrl2"], data, tmp_path / f"{name}.png")
    assert isinstance(figure, matplotlib.figure.Figure)
    assert_png(tmp_path / f"{name}.png")


@pytest.mark.parametrize("model_name", ["vade", "kdvae"])
@pytest.mark.parametrize("name", ["plot_tree", "plot_embedding", "plot_class_distance", "plot_history",
                                  "plot_node_samples"])
def test_every_plot_writes_a_png_for_flat_models(name, model_name, fitted, data, tmp_path):
    call(name, fitted[model_name], data, tmp_path / "out.png")
    assert_png(tmp_path / "out.png")


@pytest.mark.parametrize("name", PLOTS)
def test_an_unfitted_model_is_refused_with_a_clear_error(name, data, tmp_path):
    with pytest.raises(NotFittedError, match="not fitted yet; call fit"):
        call(name, pyro_hc.get_model("hcrl2"), data, tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()


def test_tree_layout_centres_parents_over_their_children():
    tree = ClusterTree()
    a, b = tree.add_child(0), tree.add_child(0)
    c, d = tree.add_child(a), tree.add_child(a)
    pos = plot.tree_layout(tree)
    assert [pos[leaf][0] for leaf in tree.leaves()] == [0.0, 1.0, 2.0]
    assert pos[a][0] == 0.5 and pos[0][0] == pytest.approx((0.5 + 2.0) / 2)
    assert pos[c][1] == pos[d][1] < pos[a][1] == pos[b][1] < pos[0][1]


def test_node_statistics_count_subtrees_and_majorities(fitted, data):
    model = fitted["hcrl2"]
    tree = model.tree
    stats = plot.node_statistics(model, data)
    assigned, labels = model.predict(data).numpy(), data.y.numpy()
    assert stats[tree.root]["n"] == len(data) and stats[tree.root]["share"] == 1.0
    assert sum(stats[leaf]["n"] for leaf in tree.leaves()) == len(data)
    for node in tree.nodes():
        held = labels[np.isin(assigned, tree.subtree_leaves(node))]
        assert stats[node]["n"] == held.size
        if held.size:
            counts = np.bincount(held)
            assert stats[node]["majority"] == counts.argmax()
            assert stats[node]["purity"] == pytest.approx(counts.max() / held.size)


@pytest.mark.parametrize("images", ["decoded", "mean", "members", "none"])
def test_plot_tree_image_modes(images, fitted, data, tmp_path):
    figure = plot.plot_tree(fitted["hcrl2"], data, images=images, path=tmp_path / "tree.png")
    assert_png(tmp_path / "tree.png")
    drawn = [im for ax in figure.axes for im in ax.get_images()]
    stats = plot.node_statistics(fitted["hcrl2"], data)
    expected = {"decoded": len(stats), "none": 0}.get(images, sum(s["n"] > 0 for s in stats.values()))
    assert len(drawn) == expected  # a node without data has no mean or member images: it is a disc


def test_plot_tree_refuses_bad_arguments(fitted):
    with pytest.raises(ValueError, match="images must be one of"):
        plot.plot_tree(fitted["vade"], images="photos")
    with pytest.raises(ValueError, match="pass data"):
        plot.plot_tree(fitted["vade"], images="mean")


def test_plot_tree_draws_vector_data_as_discs(tmp_path):
    synthetic = pyro_hc.synthetic_tree(depth=2, branching=2, n_per_leaf=30, n_features=12, latent_dim=3, seed=0)
    model = pyro_hc.get_model("vade", n_clusters=4, latent_dim=2, hidden_dims=(8,), pretrain_epochs=1)
    model.fit(synthetic, epochs=1, **FIT)
    figure = plot.plot_tree(model, synthetic, path=tmp_path / "tree.png")
    assert_png(tmp_path / "tree.png")
    assert not figure.axes[0].get_images() and len(figure.axes[0].patches) == len(model.tree)
    plot.plot_embedding(model, synthetic, method="latent", path=tmp_path / "embedding.png")
    assert_png(tmp_path / "embedding.png")


def test_plot_history_marks_every_structural_event(fitted, tmp_path):
    model = fitted["hcrl2"]
    figure = plot.plot_history(model, path=tmp_path / "history.png")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:2] == ["pretrain: loss", "train: loss"] and "train: tree size (events dashed)" in titles
    size_axis = figure.axes[titles.index("train: tree size (events dashed)")]
    marked = sorted(line.get_xdata()[0] for line in size_axis.lines if line.get_linestyle() == "--")
    assert marked == sorted(event["epoch"] for event in model.tree.events)
    with pytest.raises(ValueError, match="not in the history"):
        plot.plot_history(model, metrics=["no_such_metric"])


def test_plot_embedding_projections(fitted, data, tmp_path):
    for method in ("pca", "tsne"):
        plot.plot_embedding(fitted["vade"], data, method=method, max_points=120, path=tmp_path / f"{method}.png")
        assert_png(tmp_path / f"{method}.png")
    with pytest.raises(ValueError, match="2-D embedding"):
        plot.plot_embedding(fitted["vade"], data, method="latent")


def test_plot_class_distance_takes_a_precomputed_matrix(tmp_path):
    matrix = np.array([[0.5, 2.0, 4.0], [2.0, 0.4, 3.5], [4.0, 3.5, 1.0]])
    figure = plot.plot_class_distance(matrix=matrix, class_names=["cat", "dog", "car"], path=tmp_path / "d.png")
    assert_png(tmp_path / "d.png")
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["cat", "dog", "car"]
    with pytest.raises(ValueError, match="square"):
        plot.plot_class_distance(matrix=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="labelled data, or a matrix"):
        plot.plot_class_distance()


def test_pyro_hc_plot_writes_the_pictures_of_a_saved_run(tmp_path, capsys):
    run = tmp_path / "run"
    settings = ["--set", "latent_dim=2", "--set", "hidden_dims=[16]", "--set", "pretrain_epochs=1",
                "--set", "capacity=16", "--set", "lock_epochs=1"]
    assert main(["fit", "hcrl2", "--split", "test", *settings, "--epochs", "2", "--no-progress",
                 "--out", str(run)]) == 0
    assert main(["plot", str(run), "--max-points", "200"]) == 0
    printed = capsys.readouterr().out
    names = ["tree.png", "embedding.png", "history.png", "node_samples.png", "level_reconstructions.png",
             "class_distance.png"]
    for name in names:
        assert f"wrote {run / 'plots' / name}" in printed
        assert_png(run / "plots" / name)
    assert main(["plot", str(tmp_path / "nothing-here")]) == 2
    assert "metrics.json" in capsys.readouterr().err


def test_plot_history_draws_logged_metrics(data, tmp_path):
    from pyro_hc.infer import EpochMetrics

    spread = EpochMetrics(lambda module: {"nmi": float(module.mixture_logits.detach().softmax(-1).max()), "other": 1.0})
    model = pyro_hc.get_model("vade", n_clusters=3, latent_dim=2, hidden_dims=(8,), pretrain_epochs=1)
    model.fit(data, epochs=3, callbacks=[spread], **FIT)
    figure = plot.plot_history(model, path=tmp_path / "history.png")
    assert_png(tmp_path / "history.png")
    panel = next(ax for ax in figure.axes if ax.get_title() == "train: metrics")
    assert [line.get_label() for line in panel.lines] == ["nmi"]  # known metrics only, by default
    assert list(panel.lines[0].get_xdata()) == [0, 1, 2]
    figure = plot.plot_history(model, metrics=["other"])
    panel = next(ax for ax in figure.axes if ax.get_title() == "train: metrics")
    assert [line.get_label() for line in panel.lines] == ["other"]


def test_plot_node_samples_rows_name_nodes_and_their_majority_class(fitted, data):
    model = fitted["vade"]
    leaves = model.tree.leaves()
    figure = plot.plot_node_samples(model, nodes=leaves[:3], n=4, data=data)
    names = [tick.get_text() for tick in figure.axes[0].get_yticklabels()]
    stats = plot.node_statistics(model, data)
    for name, leaf in zip(names, leaves[:3]):
        assert name.startswith(f"node {leaf}\n(level 1)")
        if stats[leaf]["n"]:
            assert f"mostly {stats[leaf]['majority']} ({100 * stats[leaf]['purity']:.0f}%)" in name
    image = figure.axes[0].get_images()[0].get_array()
    assert image.shape == (3 * 8 + 2 * 1, 4 * 8 + 3 * 1)  # 3 rows x 4 samples of 8x8, one-pixel gaps
