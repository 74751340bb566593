"""Users' own data: Dataset.from_array / from_file, `pyro-hc fit --data`, and the tree in the terminal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pyro_hc import Dataset, metrics
from pyro_hc.cli import main
from pyro_hc.data import validate_data
from pyro_hc.baselines import kmeans_ward_tree
from pyro_hc.report import baseline_comparison, format_comparison, format_tree, subtree_class_counts
from pyro_hc.tree import ClusterTree

# a DeepECT that trains in a second or two
TINY = ["--set", "latent_dim=2", "--set", "hidden_dims=[8]", "--set", "pretrain_epochs=1", "--set", "max_leaves=3",
        "--set", "grow_interval=1", "--set", "batch_size=8", "--epochs", "2", "--no-progress"]


def blobs(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three separated groups in [0, 1]^4 and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centers = np.array([[0.1, 0.1, 0.9, 0.5], [0.9, 0.2, 0.1, 0.5], [0.5, 0.9, 0.5, 0.1]])
    return np.clip(centers[labels] + 0.03 * rng.standard_normal((n, 4)), 0, 1), labels


def write_csv(path, x, labels=None, header=True, delimiter=","):
    with open(path, "w") as handle:
        if header:
            names = [f"f{k}" for k in range(x.shape[1])] + (["digit"] if labels is not None else [])
            handle.write(delimiter.join(names) + "\n")
        for k, row in enumerate(x):
            cells = [repr(float(v)) for v in row] + ([str(labels[k])] if labels is not None else [])
            handle.write(delimiter.join(cells) + "\n")


# from_array -------------------------------------------------------------------------------------


def test_from_array_picks_the_likelihood_and_numbers_string_labels():
    x, labels = blobs()
    data = Dataset.from_array(x, labels)
    assert data.x.dtype == torch.float32 and data.likelihood == "bernoulli" and data.n_classes == 3
    assert torch.equal(data.y, torch.as_tensor(labels))
    assert Dataset.from_array(x * 10 - 5).likelihood == "gaussian"
    assert Dataset.from_array(x, likelihood="gaussian").likelihood == "gaussian"
    named = Dataset.from_array(x, np.array(["b", "a", "c"])[labels], name="mine")
    assert named.class_names == ("a", "b", "c") and named.y.tolist()[:3] == [1, 0, 2] and named.name == "mine"
    assert Dataset.from_array(torch.tensor(x), labels.astype(float)).y.dtype == torch.long  # integral floats
    images = Dataset.from_array(np.random.rand(5, 1, 4, 4))
    assert images.image_shape == (1, 4, 4) and images.y is None and images.n_classes is None


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.ones(5), None, "must be N x D"),
        (np.ones((5, 4, 4)), None, "add a channel axis"),
        (np.full((4, 3), np.nan), None, "12 NaN values in 4 of 4 samples"),
        (np.ones((4, 3), dtype=np.uint8), None, "divide by 255"),
        (np.ones((4, 3)), [0, 1, 0.5, 1], "not integers"),
        (np.ones((4, 3)), [0, 1, 1], r"shape \(4,\)"),
        (np.ones((4, 3)), [0, -1, 1, 1], "non-negative"),
    ],
)
def test_from_array_refuses_bad_data_like_every_data_set(x, y, match):
    with pytest.raises(ValueError, match=match):
        Dataset.from_array(x, y)


def test_from_array_errors_are_validate_datas_own():
    bad = np.ones((3, 2))
    bad[1, 0] = np.inf
    with pytest.raises(ValueError) as ours:
        Dataset.from_array(bad)
    with pytest.raises(ValueError) as reference:
        validate_data(bad, "gaussian")
    assert str(ours.value) == str(reference.value)


# from_file ------------------------------------------------------------------------------------------


def test_every_array_format_reads_the_same_data(tmp_path):
    x, labels = blobs()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    np.savez(tmp_path / "d.npz", features=x, y=labels)
    torch.save({"x": torch.tensor(x), "target": torch.tensor(labels)}, tmp_path / "d.pt")
    torch.save(torch.tensor(x), tmp_path / "t.pt")
    write_csv(tmp_path / "d.csv", x, labels)
    write_csv(tmp_path / "n.csv", x, labels, header=False)
    write_csv(tmp_path / "d.tsv", x, labels, delimiter="\t")
    loaded = {
        "npy": Dataset.from_file(tmp_path / "x.npy", tmp_path / "y.npy"),
        "npz": Dataset.from_file(tmp_path / "d.npz", "y"),  # the only other array is the data
        "pt": Dataset.from_file(tmp_path / "d.pt", "target"),
        "csv": Dataset.from_file(tmp_path / "d.csv", "digit"),
        "csv, no header": Dataset.from_file(tmp_path / "n.csv", -1),
        "tsv": Dataset.from_file(tmp_path / "d.tsv", "digit"),
    }
    for kind, data in loaded.items():
        assert torch.allclose(data.x, torch.tensor(x, dtype=torch.float32)), kind
        assert data.y.tolist() == labels.tolist(), kind
    assert Dataset.from_file(tmp_path / "x.npy").y is None
    assert Dataset.from_file(tmp_path / "t.pt").x.shape == (24, 4)
    assert Dataset.from_file(tmp_path / "d.npz", x_key="features").y is None
    assert loaded["csv"].name == "d"


def test_csv_labels_may_be_names(tmp_path):
    x, labels = blobs()
    write_csv(tmp_path / "d.csv", x, np.array(["cat", "dog", "emu"])[labels])
    data = Dataset.from_file(tmp_path / "d.csv", "digit")
    assert data.class_names == ("cat", "dog", "emu") and data.y.tolist() == labels.tolist()


@pytest.mark.parametrize(
    "make, labels, error, match",
    [
        (lambda p: np.save(p / "f.npy", np.ones(6)), None, ValueError, r"f\.npy must be N x D .* got shape \(6,\)"),
        (lambda p: np.save(p / "f.npy", np.array([[0.1, np.nan], [0.2, 0.3]])), None, ValueError,
         r"f\.npy contains 1 NaN value in 1 of 2 samples"),
        (lambda p: np.save(p / "f.npy", np.ones((3, 2), dtype=np.uint8)), None, ValueError, "divide by 255"),
        (lambda p: write_csv(p / "f.csv", np.ones((3, 2)), [0, 1, 0]), "label", ValueError,
         r"no labels column 'label'; its columns are: 'f0', 'f1', 'digit'"),
        (lambda p: write_csv(p / "f.csv", np.ones((3, 2)), [0, 1, 0], header=False), "digit", ValueError,
         r"no header, so name the column by its 0-based index \(0 \.\. 2\)"),
        (lambda p: (p / "f.csv").write_text("a,b\n1,2\n3\n"), None, ValueError, "line 3 has 1 columns, expected 2"),
        (lambda p: (p / "f.csv").write_text("a,b\n1,2\n3,x\n"), None, ValueError, r"line 3, column 'b': 'x' is not"),
        (lambda p: (p / "f.csv").write_text("a,b\n1,2\n3,\n"), None, ValueError, "1 NaN value in 1 of 2"),
        (lambda p: np.savez(p / "f.npz", a=np.ones((3, 2)), b=np.ones((3, 2))), None, ValueError,
         r"holds the arrays 'a', 'b'; say which one is the data"),
        (lambda p: np.savez(p / "f.npz", x=np.ones((3, 2))), "y", ValueError,
         r"no labels array 'y'; its arrays are: 'x'"),
        (lambda p: np.savez(p / "f.npz", x=np.ones((3, 2)), y=np.arange(4)), "y", ValueError,
         "4 entries but the data have 3"),
        (lambda p: torch.save([1, 2], p / "f.pt"), None, ValueError, "a tensor or a dict of named tensors"),
        (lambda p: (p / "f.txt").write_text("1 2\n"), None, ValueError, r"supported are \.npy"),
        (lambda p: None, None, FileNotFoundError, "does not exist"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path, make, labels, error, match):
    make(tmp_path)
    path = next(iter(sorted(tmp_path.iterdir())), tmp_path / "missing.npy")
    with pytest.raises(error, match=match):
        Dataset.from_file(path, labels)


def make_image_folder(root, sizes=((6, 5),), mode="L", per_class=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            h, w = sizes[k % len(sizes)]
            shape = (h, w) if mode == "L" else (h, w, 3)
            pixels = (rng.random(shape) * 60 + 190 * label).astype(np.uint8)  # class 1 is bright
            Image.fromarray(pixels, mode=mode).save(root / name / f"{k}.png")
    return root


def test_image_folders_are_read_resized_and_labelled(tmp_path):
    grey = Dataset.from_file(make_image_folder(tmp_path / "grey", sizes=((6, 5), (9, 7))), image_size=(4, 3))
    assert grey.x.shape == (6, 1, 4, 3) and grey.class_names == ("dark", "light")
    assert grey.y.tolist() == [0] * 3 + [1] * 3
    assert grey.x[grey.y == 1].mean() > 0.7 > 0.3 > grey.x[grey.y == 0].mean()  # [0, 1], classes kept apart
    colour = Dataset.from_file(make_image_folder(tmp_path / "rgb", mode="RGB"))
    assert colour.x.shape == (6, 3, 6, 5) and colour.image_shape == (3, 6, 5)
    assert Dataset.from_file(tmp_path / "rgb", channels=1).x.shape == (6, 1, 6, 5)
    with pytest.raises(ValueError, match="different sizes.*pass image_size"):
        Dataset.from_file(tmp_path / "grey")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no images found .*root/<class>/<image>"):
        Dataset.from_file(tmp_path / "empty")
    with pytest.raises(ValueError, match="image_size must be"):
        Dataset.from_file(tmp_path / "rgb", image_size=(0, 3))


# the command line ---------------------------------------------------------------------------------


def test_fit_on_an_npy_file_prints_and_saves_the_tree(tmp_path, capsys, monkeypatch):
    x, labels = blobs()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    out = tmp_path / "run"
    assert main(["fit", "deepect", "--data", str(tmp_path / "x.npy"), *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "deepect on x (24 points" in printed and "no labels, so no metrics" in printed
    assert "tree: 5 nodes, 3 leaves" in printed and (out / "tree.txt").is_file()
    record = json.loads((out / "metrics.json").read_text())
    assert record["dataset"] == "x" and record["data_file"]["path"] == str((tmp_path / "x.npy").resolve())

    labelled = tmp_path / "labelled"
    monkeypatch.chdir(tmp_path)  # relative paths are recorded as absolute ones
    assert main(["fit", "deepect", "--data", "x.npy", "--labels", "y.npy", *TINY,
                 "--baseline", "--out", str(labelled)]) == 0
    printed = capsys.readouterr().out
    assert "dendrogram_purity" in printed and "k-means + Ward on the raw features" in printed
    comparison = json.loads((labelled / "baseline.json").read_text())
    assert comparison["n_leaves"] == 3 and 0 < comparison["baseline_dendrogram_purity"] <= 1
    # show prints the very same tree again, evaluate reads the file again (from anywhere)
    monkeypatch.chdir(out)
    assert main(["show", str(labelled)]) == 0
    shown = capsys.readouterr().out
    assert (labelled / "tree.txt").read_text().strip() in shown
    assert main(["evaluate", str(labelled)]) == 0
    assert f"{json.loads((labelled / 'metrics.json').read_text())['metrics']['acc']:.4f}" in capsys.readouterr().out


def test_fit_on_an_image_folder(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "images", sizes=((6, 5), (9, 7)), per_class=4)
    out = tmp_path / "run"
    assert main(["fit", "deepect", "--data", str(folder), "--image-size", "4x3", *TINY, "--plot-tree",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "deepect on images (8 points" in printed and "dendrogram_purity" in printed
    assert "majority" in printed and ("dark" in printed or "light" in printed)  # class folders name the classes
    assert (out / "tree.png").stat().st_size > 0 and "tree picture:" in printed
    record = json.loads((out / "metrics.json").read_text())
    assert record["data_file"]["image_size"] == [4, 3]
    assert main(["show", str(out)]) == 0 and "tree: 5 nodes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "{tmp}/missing.npy"], "no such file"),
        (["--data", "{tmp}/bad.npy"], "bad.npy must be N x D"),
        (["--data", "{tmp}/nan.npy"], "nan.npy contains 2 NaN values in 1 of 4 samples"),
        (["--data", "{tmp}/table.csv", "--labels", "class"], "no labels column 'class'"),
        (["--data", "{tmp}/bad.npy", "--dataset", "usps"], "both name the training data"),
        (["--labels", "y"], "pass the file with --data"),
        (["--data", "{tmp}/table.csv", "--image-size", "0"], "--image-size expects"),
    ],
)
def test_bad_data_files_exit_with_a_message(tmp_path, capsys, extra, message):
    np.save(tmp_path / "bad.npy", np.ones((2, 3, 4, 5, 6)))
    np.save(tmp_path / "nan.npy", np.array([[0.1, 0.2], [np.nan, np.nan], [0.3, 0.4], [0.5, 0.6]]))
    write_csv(tmp_path / "table.csv", np.ones((4, 2)), [0, 1, 0, 1])
    argv = ["fit", "deepect", *[e.format(tmp=tmp_path) for e in extra], *TINY, "--out", str(tmp_path / "run")]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code != 0 and message in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.pt").exists()


# the tree as text -----------------------------------------------------------------------------------


def test_format_tree_counts_every_subtree():
    tree = ClusterTree()
    a, b = tree.add_child(0), tree.add_child(0)
    c, d = tree.add_child(a), tree.add_child(a)
    assigned = np.array([c, c, c, d, b, b, b, b])
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    counts = subtree_class_counts(tree, assigned, labels)
    assert counts[0].tolist() == [3, 2, 3] and counts[a].tolist() == [2, 2, 0] and counts[d].tolist() == [0, 1, 0]
    text = format_tree(tree, assigned, labels, class_names=["zero", "one", "two"], bar_width=8)
    lines = text.splitlines()
    assert lines[0] == "tree: 5 nodes, 3 leaves, depth 2; 8 points"
    assert [line.split()[0] for line in lines[2:]] == ["0", "├─", "│", "│", "└─"]  # preorder, indented
    assert lines[3].split()[1:4] == ["1", "4", "zero"] and "50%" in lines[3]
    assert lines[4].split()[2:5] == ["3", "3", "zero"] and "67%" in lines[4]
    assert lines[2].endswith("█" * 8) and lines[3].endswith("█" * 4)  # bar: share of all points
    plain = format_tree(tree, assigned, charset="ascii")
    assert "majority" not in plain and "|- 1" in plain and "`- 2" in plain and plain.isascii()
    assert format_tree(tree).splitlines()[1:] == ["0", "├─ 1", "│  ├─ 3", "│  └─ 4", "└─ 2"]
    with pytest.raises(ValueError, match=r"not in the tree"):
        format_tree(tree, [9, 9])


def test_baseline_comparison_is_kmeans_ward_with_as_many_leaves():
    x, labels = blobs(60)
    tree, assigned = kmeans_ward_tree(x, 3, seed=0)
    comparison = baseline_comparison(tree, assigned, x, labels)
    assert comparison["n_leaves"] == 3
    assert comparison["baseline_dendrogram_purity"] == pytest.approx(metrics.dendrogram_purity(tree, assigned, labels))
    line = format_comparison(comparison, "deepect")
    assert "with 3 leaves: deepect 1.0000 | k-means + Ward on the raw features 1.0000 | difference +0.0000" == \
        line.split("dendrogram purity ")[1]
