"""Tests for pyro_hc.data: loaders, validation, the synthetic hierarchy and the batcher.

No test downloads anything or writes outside pytest's temporary folders: every test runs with
``PYRO_HC_CACHE`` pointing into ``tmp_path`` and ``HOME`` moved there too. MNIST and USPS are
read from the project's offline copies (``$PYRO_HC_DATA`` or ``<repo>/../shared/data``) and
skipped when those are absent; small fake files in the original formats exercise the same code
paths everywhere.
"""

from __future__ import annotations

import bz2
import gzip
import os
import pickle
import struct
import tarfile
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score

from pyro_hc import data as D
from pyro_hc.data import (
    Dataset,
    DeviceBatcher,
    list_datasets,
    load_dataset,
    synthetic_tree,
    validate_data,
)

ALL_NAMES = ["20newsgroups", "cifar10", "cifar100", "digits", "fashion_mnist", "mnist", "synthetic_tree", "usps"]


def _shared_data_root() -> Path:
    from_env = os.environ.get("PYRO_HC_DATA", "").strip()
    if from_env:
        return Path(from_env).expanduser().absolute()
    return (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


SHARED = _shared_data_root()


@pytest.fixture(autouse=True)
def _isolated_locations(tmp_path, monkeypatch):
    """Keep every test away from the user's home and real cache."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYRO_HC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PYRO_HC_DATA", raising=False)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------------------------
# digits, names, splits
# ---------------------------------------------------------------------------------------------


def test_digits_shapes_range_and_labels():
    data = load_dataset("digits")
    assert len(data) == 1797 and data.x.shape == (1797, 1, 8, 8)
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.long
    assert data.name == "digits" and data.likelihood == "bernoulli"
    assert data.image_shape == (1, 8, 8) and data.n_features == 64 and data.n_classes == 10
    assert float(data.x.min()) == 0.0 and float(data.x.max()) == 1.0
    assert data.y.bincount().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    reference = load_digits()
    np.testing.assert_array_equal(
        data.x[:, 0].numpy(), (reference.images / 16.0).astype(np.float32)
    )
    np.testing.assert_array_equal(data.y.numpy(), reference.target)
    assert data.flat().shape == (1797, 64)
    assert torch.equal(data.flat()[5], data.x[5].reshape(-1))


def test_digits_is_the_default():
    assert load_dataset().name == "digits"


def test_digits_splits_are_disjoint_cover_everything_and_are_fixed():
    full = load_dataset("digits")
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert len(test) == round(0.2 * 1797) == 359 and len(train) == 1797 - 359
    train_index, test_index = D._split_index(1797, "train"), D._split_index(1797, "test")
    assert set(train_index).isdisjoint(test_index)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train_index, test_index])), np.arange(1797)
    )
    # Each half is the full data set at those indices, in the original order.
    assert torch.equal(train.x, full.x[torch.from_numpy(train_index)])
    assert torch.equal(test.y, full.y[torch.from_numpy(test_index)])
    assert torch.equal(load_dataset("digits", split="test").x, test.x)
    # The split is a random one, not the tail of the file.
    assert not np.array_equal(test_index, np.arange(1797 - 359, 1797))


def test_names_are_case_insensitive_and_dash_equals_underscore(tmp_path):
    assert load_dataset("DiGiTs", split="TEST").name == "digits"
    assert [
        D._canonical_name(n)
        for n in ("Fashion-MNIST", "fashion_mnist", "CIFAR-10", "Synthetic-Tree")
    ] == [
        "fashion_mnist",
        "fashion_mnist",
        "cifar10",
        "synthetic_tree",
    ]
    with pytest.raises(FileNotFoundError, match="fashion_mnist"):
        load_dataset("Fashion-MNIST", root=tmp_path)


def test_list_datasets():
    assert list_datasets() == ALL_NAMES
    available = list_datasets(available=True, root=Path("/nonexistent/pyro_hc"))
    assert available == ["digits", "synthetic_tree"]


def test_unknown_name_split_and_n_samples_are_rejected():
    with pytest.raises(ValueError, match="unknown data set 'svhn'") as info:
        load_dataset("svhn")
    for name in ALL_NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="unknown split 'validation'.*all, train, test"):
        load_dataset("digits", split="validation")
    with pytest.raises(ValueError, match="n_samples"):
        load_dataset("digits", n_samples=0)
    with pytest.raises(ValueError, match="exceeds"):
        load_dataset("digits", split="test", n_samples=360)


def test_n_samples_takes_a_fixed_subset():
    subset = load_dataset("digits", n_samples=100)
    assert len(subset) == 100 and torch.equal(subset.x, load_dataset("digits", n_samples=100).x)
    full = load_dataset("digits")
    keep = np.sort(np.random.RandomState(D.SPLIT_SEED).permutation(1797)[:100])
    assert torch.equal(subset.y, full.y[torch.from_numpy(keep)])


def test_synthetic_tree_is_loadable_by_name():
    test = load_dataset("synthetic-tree", split="test")
    assert test.name == "synthetic_tree" and len(test) == 160 and isinstance(test.tree, nx.DiGraph)


# ---------------------------------------------------------------------------------------------
# locations and the missing-data error
# ---------------------------------------------------------------------------------------------


def test_resolve_data_root_precedence(tmp_path, monkeypatch):
    assert D.resolve_data_root() == tmp_path / "home" / ".cache" / "pyro_hc"
    monkeypatch.setenv("PYRO_HC_DATA", str(tmp_path / "from_env"))
    assert D.resolve_data_root() == tmp_path / "from_env"
    assert D.resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert D.resolve_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("PYRO_HC_CACHE")
    assert D.resolve_cache_dir() == tmp_path / "home" / ".cache" / "pyro_hc"


@pytest.mark.parametrize(
    ("name", "looked_in"),
    [
        ("mnist", ["{root}/mnist", "{cache}/MNIST/raw"]),
        ("fashion_mnist", ["{root}/fashion_mnist", "{cache}/FashionMNIST/raw"]),
        ("usps", ["{root}/usps", "{cache}/usps"]),
        (
            "cifar10",
            [
                "{root}/cifar10/cifar-10-batches-py",
                "{root}/cifar10/cifar-10-python.tar.gz",
                "{cache}/cifar10/cifar-10-batches-py",
            ],
        ),
        ("cifar100", ["{root}/cifar100/cifar-100-python", "{cache}/cifar100/cifar-100-python"]),
    ],
)
def test_missing_data_set_error_names_every_path_and_the_remedies(tmp_path, name, looked_in):
    root, cache = tmp_path / "data", tmp_path / "cache"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, root=root)
    message = str(info.value)
    for path in looked_in:
        assert path.format(root=root, cache=cache) in message
    for remedy in ("PYRO_HC_DATA", "root=", "download=True", "PYRO_HC_CACHE"):
        assert remedy in message
    assert not cache.exists(), "a failed lookup must not create the cache"


def test_missing_error_uses_the_environment_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_HC_DATA", str(tmp_path / "env_root"))
    with pytest.raises(FileNotFoundError, match="env_root/mnist") as info:
        load_dataset("mnist")
    assert "$PYRO_HC_DATA" in str(info.value)


# ---------------------------------------------------------------------------------------------
# fake files in the original formats: the same code paths without the real data
# ---------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (magic 0x08 = unsigned byte), gzip-compressed."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(folder: Path, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, size=(5, 28, 28)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, size=5),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, size=(3, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, size=3),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for file, array in arrays.items():
        _write_idx(folder / f"{file}.gz", array)
    return arrays


def test_mnist_like_files_are_unpacked_once_into_the_cache(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    arrays = _fake_mnist(root / "mnist", seed=0)
    before = _snapshot(root / "mnist")

    data = load_dataset("mnist", root=root)
    assert (
        data.x.shape == (8, 1, 28, 28) and data.likelihood == "bernoulli" and data.n_classes == 10
    )
    expected = (
        np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])
        / 255.0
    )
    np.testing.assert_allclose(data.x[:, 0].numpy(), expected, rtol=0, atol=1e-7)
    assert (
        data.y.tolist()
        == arrays["train-labels-idx1-ubyte"].tolist() + arrays["t10k-labels-idx1-ubyte"].tolist()
    )
    assert (
        load_dataset("mnist", root=root, split="test").y.tolist()
        == arrays["t10k-labels-idx1-ubyte"].tolist()
    )
    assert _snapshot(root / "mnist") == before, "the data root must never be written to"

    # each source folder has its own unpacked copy (issue 18: the cache is keyed by source)
    (unpacked,) = cache.glob("unpacked/mnist-*/MNIST/raw/train-images-idx3-ubyte")
    assert not (cache / "MNIST").exists(), "the download location holds downloads only"
    assert unpacked.stat().st_size == 16 + 5 * 28 * 28
    stamp_time = unpacked.stat().st_mtime_ns
    load_dataset("mnist", root=root, split="train")
    assert unpacked.stat().st_mtime_ns == stamp_time, "an up-to-date cache is not rewritten"

    # A changed source is unpacked again.
    new_arrays = _fake_mnist(root / "mnist", seed=1)
    os.utime(
        root / "mnist" / "train-images-idx3-ubyte.gz", ns=(stamp_time + 10**9, stamp_time + 10**9)
    )
    fresh = load_dataset("mnist", root=root, split="train")
    np.testing.assert_allclose(
        fresh.x[:, 0].numpy(), new_arrays["train-images-idx3-ubyte"] / 255.0, atol=1e-7
    )

    # An empty or mistyped root is missing data, not whatever was unpacked last (issue 18).
    empty_root = tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", root=empty_root, split="train")


def test_fashion_mnist_uses_its_own_folders(tmp_path):
    arrays = _fake_mnist(tmp_path / "data" / "fashion_mnist", seed=2)
    data = load_dataset("fashion-mnist", root=tmp_path / "data", split="train")
    assert (
        data.name == "fashion_mnist"
        and data.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    )
    assert len(list((tmp_path / "cache").glob("unpacked/fashion_mnist-*/FashionMNIST/raw/train-labels-idx1-ubyte"))) == 1
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", root=tmp_path / "data")


def test_usps_is_read_in_place_from_libsvm_files(tmp_path):
    rng = np.random.RandomState(0)
    folder = tmp_path / "data" / "usps"
    folder.mkdir(parents=True)
    values, labels = {}, {}
    for part, file in (("train", "usps.bz2"), ("test", "usps.t.bz2")):
        values[part] = rng.uniform(-1, 1, size=(4, 256)).round(6)
        labels[part] = rng.randint(1, 11, size=4)  # the file counts digits 1..10
        lines = [
            f"{label} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(row))
            for label, row in zip(labels[part], values[part], strict=True)
        ]
        with bz2.open(folder / file, "wt") as handle:
            handle.write("\n".join(lines) + "\n")

    data = load_dataset("usps", root=tmp_path / "data")
    assert data.x.shape == (8, 1, 16, 16) and data.likelihood == "bernoulli"
    assert data.y.tolist() == (np.concatenate([labels["train"], labels["test"]]) - 1).tolist()
    pixels = ((np.concatenate([values["train"], values["test"]]) + 1) / 2 * 255).astype(
        np.uint8
    ) / 255.0
    np.testing.assert_allclose(data.flat().numpy(), pixels, atol=1e-7)
    assert not (tmp_path / "cache").exists(), "USPS needs no cache"


def _fake_cifar10_batches(folder: Path, seed: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True)
    batches = {}
    for file in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = rng.randint(0, 256, size=(2, 3 * 32 * 32)).astype(np.uint8)
        labels = rng.randint(0, 10, size=2).tolist()
        with open(folder / file, "wb") as handle:
            pickle.dump({"data": pixels, "labels": labels}, handle)
        batches[file] = (pixels, labels)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return batches


@pytest.mark.parametrize("packed", [False, True])
def test_cifar10_from_folder_or_archive(tmp_path, monkeypatch, packed):
    import torchvision.datasets.cifar as tv_cifar

    # The fake batches cannot match torchvision's MD5s, which it checks on every load.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    root = tmp_path / "data"
    if packed:
        staging = tmp_path / "staging"
        batches = _fake_cifar10_batches(staging / "cifar-10-batches-py", seed=0)
        (root / "cifar10").mkdir(parents=True)
        with tarfile.open(root / "cifar10" / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    else:
        batches = _fake_cifar10_batches(root / "cifar10" / "cifar-10-batches-py", seed=0)

    train = load_dataset("CIFAR-10", root=root, split="train")
    assert (
        train.x.shape == (10, 3, 32, 32)
        and train.likelihood == "gaussian"
        and train.image_shape == (3, 32, 32)
    )
    # The batches store each image channel-major (R plane, G plane, B plane).
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32) / 255.0
    np.testing.assert_allclose(train.x[0].numpy(), first, atol=1e-7)
    assert train.y.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert load_dataset("cifar10", root=root, split="test").y.tolist() == batches["test_batch"][1]
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-batches-py").is_dir() == packed


# ---------------------------------------------------------------------------------------------
# the real MNIST and USPS copies
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    if not (SHARED / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no offline MNIST copy at {SHARED / 'mnist'}")
    cache = tmp_path_factory.mktemp("mnist_cache")
    before = _snapshot(SHARED / "mnist")
    train = load_dataset("mnist", root=SHARED, split="train", cache_dir=cache)
    test = load_dataset("mnist", root=SHARED, split="test", cache_dir=cache)
    assert _snapshot(SHARED / "mnist") == before
    return {"train": train, "test": test, "cache": cache}


def test_mnist_shapes_range_and_class_counts(mnist):
    train, test = mnist["train"], mnist["test"]
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert (
        train.x.dtype == torch.float32 and train.name == "mnist" and train.likelihood == "bernoulli"
    )
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert train.y.bincount().tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert test.y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(float(train.x.double().mean()) - 0.1307) < 5e-5
    assert abs(float(train.x.double().std()) - 0.3081) < 5e-5


def test_mnist_all_is_train_then_test(mnist):
    everything = load_dataset("mnist", root=SHARED, cache_dir=mnist["cache"])
    assert len(everything) == 70000
    assert torch.equal(everything.y, torch.cat([mnist["train"].y, mnist["test"].y]))
    assert torch.equal(everything.x[60000:60050], mnist["test"].x[:50])


def test_usps_real_copy():
    if not (SHARED / "usps" / "usps.bz2").is_file():
        pytest.skip(f"no offline USPS copy at {SHARED / 'usps'}")
    train = load_dataset("usps", root=SHARED, split="train")
    test = load_dataset("usps", root=SHARED, split="test")
    assert train.x.shape == (7291, 1, 16, 16) and test.x.shape == (2007, 1, 16, 16)
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert float(train.x.max()) > 0.99 and float(train.x.min()) < 0.01
    assert train.y.bincount().tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    assert test.y.bincount().tolist() == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]


# ---------------------------------------------------------------------------------------------
# validation and the Dataset container
# ---------------------------------------------------------------------------------------------


def test_validate_data_reports_nan_and_inf_counts():
    x = torch.rand(10, 4)
    x[1, 2] = x[1, 3] = x[7, 0] = float("nan")
    with pytest.raises(ValueError, match=r"3 NaN values in 2 of 10 samples"):
        validate_data(x, "gaussian")
    x = torch.rand(10, 4)
    x[0, 0] = float("inf")
    x[0, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"2 infinite values in 1 of 10 samples"):
        validate_data(x, "bernoulli")


def test_validate_data_checks_the_bernoulli_support():
    x = torch.rand(5, 3)
    x[0, 0], x[4, 2] = -0.5, 2.0
    with pytest.raises(ValueError, match=r"\[-0\.5, 2\].*2 values outside"):
        validate_data(x, "bernoulli")
    assert validate_data(x, "gaussian") is x, "the gaussian likelihood accepts any finite value"
    with pytest.raises(ValueError, match="divide by 255"):
        validate_data(torch.full((2, 2), 200.0), "bernoulli")


def test_validate_data_checks_dtype_shape_emptiness_and_likelihood():
    with pytest.raises(ValueError, match="floating-point.*divide by 255"):
        validate_data(torch.zeros(3, 4, dtype=torch.uint8), "bernoulli")
    with pytest.raises(ValueError, match="unsqueeze"):
        validate_data(torch.zeros(3, 8, 8), "bernoulli")
    with pytest.raises(ValueError, match="N x D"):
        validate_data(torch.zeros(3), "bernoulli")
    with pytest.raises(ValueError, match="empty"):
        validate_data(torch.zeros(0, 4), "bernoulli")
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'.*bernoulli, gaussian"):
        validate_data(torch.zeros(3, 4), "poisson")
    with pytest.raises(TypeError):
        validate_data([[0.0, 1.0]], "bernoulli")
    assert isinstance(validate_data(np.zeros((2, 3)), "bernoulli"), torch.Tensor)


def test_dataset_checks_labels_and_image_shape():
    x = torch.rand(6, 1, 2, 2)
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        Dataset(x=x, y=torch.zeros(5, dtype=torch.long), name="t", likelihood="bernoulli")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        Dataset(
            x=x, y=torch.tensor([0, 1, 2, 3, 0, 0]), name="t", likelihood="bernoulli", n_classes=3
        )
    with pytest.raises(ValueError, match="integer labels"):
        Dataset(x=x, y=torch.zeros(6), name="t", likelihood="bernoulli")
    with pytest.raises(ValueError, match="pixels"):
        Dataset(x=torch.rand(6, 5), y=None, name="t", likelihood="gaussian", image_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        Dataset(x=torch.full((2, 2), float("nan")), y=None, name="t", likelihood="gaussian")
    data = Dataset(
        x=x, y=torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32), name="t", likelihood="Bernoulli"
    )
    assert (
        data.image_shape == (1, 2, 2)
        and data.y.dtype == torch.long
        and data.likelihood == "bernoulli"
    )
    assert "n=6" in repr(data)


def test_dataset_subset_and_to():
    data = load_dataset("digits")
    picked = data.subset([3, 1, 4])
    assert (
        torch.equal(picked.x, data.x[[3, 1, 4]]) and picked.y.tolist() == data.y[[3, 1, 4]].tolist()
    )
    assert picked.n_classes == 10 and picked.name == "digits"
    mask = data.y == 7
    assert len(data.subset(mask)) == 179 and bool((data.subset(mask).y == 7).all())
    assert len(data.subset(slice(0, 10))) == 10
    moved = data.to("cpu")
    assert (
        moved.x.device.type == "cpu"
        and torch.equal(moved.x, data.x)
        and moved.image_shape == (1, 8, 8)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dataset_to_cuda_and_batch_there():
    data = load_dataset("digits").to("cuda")
    assert data.x.is_cuda and data.y.is_cuda
    batcher = DeviceBatcher(len(data), 100, device="cuda", seed=0)
    seen = torch.cat([index for index in batcher])
    assert seen.is_cuda and torch.equal(seen.sort().values.cpu(), torch.arange(len(data)))
    assert data.x[next(iter(batcher))].shape == (100, 1, 8, 8)
    again = torch.cat(list(DeviceBatcher(len(data), 100, device="cuda", seed=0)))
    assert torch.equal(seen, again)


# ---------------------------------------------------------------------------------------------
# 20 Newsgroups
# ---------------------------------------------------------------------------------------------

NEWSGROUPS_ARCHIVE = SHARED / "20newsgroups" / "20news-bydate.tar.gz"
#: a few documents per part in the bydate layout: (part, group, file name) -> text
FAKE_POSTS = {
    ("train", "sci.med", "59"): "doctor patient medicine doctor",
    ("train", "sci.med", "100"): "patient disease medicine",
    ("train", "comp.graphics", "7"): "image pixel render image graphics",
    ("train", "comp.graphics", "8"): "graphics card pixel",
    ("train", "rec.autos", "3"): "car engine wheel car",
    ("test", "sci.med", "5"): "medicine doctor disease",
    ("test", "comp.graphics", "1"): "render image graphics",
    ("test", "rec.autos", "2"): "engine car wheel \xe9t\xe9",  # Latin-1 bytes, as the originals
}


def _fake_newsgroups(root: Path, extracted: bool = False) -> Path:
    folder = root / "20newsgroups"
    folder.mkdir(parents=True, exist_ok=True)
    if extracted:
        for (part, group, name), text in FAKE_POSTS.items():
            path = folder / f"20news-bydate-{part}" / group / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("latin-1"))
        return folder
    archive = folder / "20news-bydate.tar.gz"
    staging = root / "staging"
    for (part, group, name), text in FAKE_POSTS.items():
        path = staging / f"20news-bydate-{part}" / group / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("latin-1"))
    with tarfile.open(archive, "w:gz") as tar:
        for part in ("test", "train"):
            tar.add(staging / f"20news-bydate-{part}", arcname=f"20news-bydate-{part}")
    return archive


def test_newsgroups_hierarchy_follows_the_group_names():
    tree = D.newsgroups_hierarchy()
    name = dict(tree.nodes(data="name"))
    leaves = [n for n in tree if tree.out_degree(n) == 0]
    assert nx.is_arborescence(tree) and tree.number_of_nodes() == 28 and len(leaves) == 20
    assert sorted(tree.nodes[n]["label"] for n in leaves) == list(range(20))
    assert all(D.NEWSGROUPS[tree.nodes[n]["label"]] == name[n] for n in leaves)
    assert all("label" not in tree.nodes[n] for n in tree if n not in leaves)
    by_name = {v: k for k, v in name.items()}
    path = nx.shortest_path(tree, 0, by_name["comp.sys.ibm.pc.hardware"])
    assert [name[n] for n in path] == ["", "comp", "comp.sys", "comp.sys.ibm.pc.hardware"]
    assert sorted(name[n] for n in tree.successors(0)) == [
        "alt.atheism", "comp", "misc.forsale", "rec", "sci", "soc.religion.christian", "talk"]
    # a one-child prefix is merged into its child: it would hold the same documents
    assert sorted(name[n] for n in tree.successors(by_name["talk"])) == ["talk.politics", "talk.religion.misc"]
    assert {tree.nodes[n]["level"] for n in leaves} == {1, 2, 3}  # 4 levels with the root
    assert all(tree.nodes[n]["level"] == len(nx.shortest_path(tree, 0, n)) - 1 for n in tree)
    small = D.newsgroups_hierarchy(["a.x", "a.y", "b"])
    assert sorted(dict(small.nodes(data="name")).values()) == ["", "a", "a.x", "a.y", "b"]
    with pytest.raises(ValueError, match="prefixes of other groups"):
        D.newsgroups_hierarchy(["a", "a.x"])
    with pytest.raises(ValueError, match="distinct"):
        D.newsgroups_hierarchy(["a", "a"])


def test_newsgroups_hierarchy_scores_coarse_groups():
    from pyro_hc.metrics import hierarchical_f_score

    tree = D.newsgroups_hierarchy()
    labels = np.repeat(np.arange(20), 5)
    leaf_of_label = {label: node for node, label in tree.nodes(data="label") if label is not None}
    perfect = np.array([leaf_of_label[label] for label in labels])
    assert hierarchical_f_score(tree, perfect, labels, label_tree=tree) == pytest.approx(1.0)
    flat = nx.DiGraph([(100, label) for label in range(20)])
    # every group found, but none of the 8 coarse nodes: their F-scores are below 1
    assert hierarchical_f_score(flat, labels, labels) == pytest.approx(1.0)
    assert hierarchical_f_score(flat, labels, labels, label_tree=tree) < 0.9


@pytest.mark.parametrize("extracted", [False, True])
def test_20newsgroups_from_a_fake_archive(tmp_path, extracted):
    _fake_newsgroups(tmp_path / "root", extracted=extracted)
    data = load_dataset("20-newsgroups", root=tmp_path / "root")
    assert data.name == "20newsgroups" and data.likelihood == "gaussian" and data.n_classes == 20
    assert len(data) == 8 and data.x.dtype == torch.float32 and data.x.ndim == 2
    # train then test, each by group then by file name as strings ("100" < "59"), as scikit-learn
    groups = ["comp.graphics", "comp.graphics", "rec.autos", "sci.med", "sci.med",
              "comp.graphics", "rec.autos", "sci.med"]
    assert data.y.tolist() == [D.NEWSGROUPS.index(g) for g in groups]
    # DEC's scaling: every document has L2 norm sqrt(D); values are non-negative
    norms = data.x.norm(dim=1)
    torch.testing.assert_close(norms, torch.full((8,), data.n_features**0.5))
    assert float(data.x.min()) == 0.0
    # the two medical training posts share more terms with each other than with the graphics ones
    similarity = data.x @ data.x.T
    assert similarity[3, 4] > similarity[3, 0] and similarity[3, 4] > similarity[3, 1]
    assert isinstance(data.tree, nx.DiGraph) and data.tree.number_of_nodes() == 28
    train, test = (load_dataset("20newsgroups", root=tmp_path / "root", split=s) for s in ("train", "test"))
    assert len(train) == 5 and len(test) == 3
    assert torch.equal(torch.cat([train.x, test.x]), data.x) and torch.equal(test.y, data.y[5:])
    assert "20newsgroups" in list_datasets(available=True, root=tmp_path / "root")


def test_20newsgroups_is_vectorised_once_and_again_when_the_source_changes(tmp_path, monkeypatch):
    archive = _fake_newsgroups(tmp_path / "root")
    calls = []
    read = D._newsgroups_documents
    monkeypatch.setattr(D, "_newsgroups_documents", lambda source: calls.append(source) or read(source))
    first = load_dataset("20newsgroups", root=tmp_path / "root")
    assert len(calls) == 1  # split="all" reads two parts from one vectorisation
    cache = tmp_path / "cache" / "20newsgroups"
    assert sorted(p.name for p in cache.iterdir()) == ["tfidf2000.npz", "tfidf2000.npz.source.json"]
    before = _snapshot(tmp_path / "root" / "20newsgroups")
    again = load_dataset("20newsgroups", root=tmp_path / "root", split="test")
    assert len(calls) == 1 and torch.equal(again.x, first.x[5:])
    assert _snapshot(tmp_path / "root" / "20newsgroups") == before  # the data root is never written
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    load_dataset("20newsgroups", root=tmp_path / "root", split="train")
    assert len(calls) == 2
    (cache / "tfidf2000.npz").write_bytes(b"not a zip file")  # a damaged cache is rebuilt
    assert torch.equal(load_dataset("20newsgroups", root=tmp_path / "root", split="test").x, first.x[5:])
    assert len(calls) == 3
    # with the source gone, the cache still serves
    archive.unlink()
    assert torch.equal(load_dataset("20newsgroups", root=tmp_path / "root").x, first.x) and len(calls) == 3
    assert "20newsgroups" in list_datasets(available=True, root=tmp_path / "root")


def test_20newsgroups_missing_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("20newsgroups", root=tmp_path / "empty")
    message = str(info.value)
    assert "20news-bydate.tar.gz" in message and str(tmp_path / "empty" / "20newsgroups") in message
    assert "does not download" in message and "PYRO_HC_DATA" in message
    assert "20newsgroups" not in list_datasets(available=True, root=tmp_path / "empty")


@pytest.mark.skipif(not NEWSGROUPS_ARCHIVE.is_file(), reason="20 Newsgroups not on disk (set PYRO_HC_DATA)")
def test_20newsgroups_real_archive_documents_and_groups():
    texts, labels, is_test = D._newsgroups_documents(NEWSGROUPS_ARCHIVE)
    assert len(texts) == 18846 and int((~is_test).sum()) == 11314 and int(is_test.sum()) == 7532
    assert not is_test[:11314].any() and is_test[11314:].all()  # train first, then test
    alt, christian = D.NEWSGROUPS.index("alt.atheism"), D.NEWSGROUPS.index("soc.religion.christian")
    # the README's official per-group counts
    assert [int((labels[~is_test] == g).sum()) for g in (alt, christian)] == [480, 599]
    assert [int((labels[is_test] == g).sum()) for g in (alt, christian)] == [319, 398]
    assert set(labels.tolist()) == set(range(20)) and np.all(np.diff(labels[:11314]) >= 0)
    assert all(isinstance(text, str) and text for text in texts[:50])


# ---------------------------------------------------------------------------------------------
# synthetic_tree
# ---------------------------------------------------------------------------------------------


def test_synthetic_tree_shapes_tree_and_labels():
    data = synthetic_tree(depth=3, branching=3, latent_dim=6, n_features=20, n_per_leaf=10, seed=1)
    tree = data.tree
    assert (
        data.x.shape == (27 * 10, 20)
        and data.x.dtype == torch.float32
        and data.name == "synthetic_tree"
    )
    assert data.likelihood == "gaussian" and data.n_classes == 27 and data.image_shape is None
    assert 0.0 < float(data.x.min()) and float(data.x.max()) < 1.0
    assert nx.is_arborescence(tree) and [n for n, d in tree.in_degree() if d == 0] == [0]
    leaves = [n for n in tree if tree.out_degree(n) == 0]
    assert len(leaves) == 3**3 and tree.number_of_nodes() == 1 + 3 + 9 + 27
    assert max(nx.shortest_path_length(tree, 0).values()) == 3
    assert all(nx.shortest_path_length(tree, 0, leaf) == 3 for leaf in leaves)
    assert sorted(tree.nodes[leaf]["label"] for leaf in leaves) == list(range(27))
    assert all("label" not in tree.nodes[n] for n in tree if n not in leaves)
    assert data.y.bincount().tolist() == [10] * 27
    assert all(
        isinstance(tree.nodes[n]["mean"], list) and len(tree.nodes[n]["mean"]) == 6 for n in tree
    )


def test_synthetic_tree_means_drift_less_with_depth():
    data = synthetic_tree(depth=3, branching=2, latent_dim=4, separation=6.0, seed=3)
    tree = data.tree
    for parent, child in tree.edges:
        level = tree.nodes[child]["level"]
        step = np.linalg.norm(np.subtract(tree.nodes[child]["mean"], tree.nodes[parent]["mean"]))
        assert step == pytest.approx(6.0 / 2 ** (level - 1))
    for node in tree:
        children = list(tree.successors(node))
        if children:  # siblings are placed symmetrically around their parent
            centroid = np.mean([tree.nodes[c]["mean"] for c in children], axis=0)
            np.testing.assert_allclose(centroid, tree.nodes[node]["mean"], atol=1e-9)


def test_synthetic_tree_latent_points_sit_around_their_leaf_means():
    data = synthetic_tree(depth=2, branching=3, latent_dim=5, noise=0.3, n_per_leaf=40, seed=2)
    assert data.latent.shape == (9 * 40, 5) and data.latent.dtype == torch.float32
    tree = data.tree
    leaf_mean = {tree.nodes[n]["label"]: tree.nodes[n]["mean"] for n in tree if "label" in tree.nodes[n]}
    offsets = data.latent.numpy() - np.array([leaf_mean[label] for label in data.y.tolist()])
    # the noise around each point's own leaf mean, not around another's: the rows follow the shuffle
    assert abs(offsets.std() - 0.3) < 0.02 and np.abs(offsets.mean(0)).max() < 0.05
    picked = data.subset(torch.tensor([5, 0, 7]))
    assert torch.equal(picked.latent, data.latent[[5, 0, 7]]) and picked.to("cpu").latent is not None
    assert torch.equal(data.subset(data.y == 4).latent, data.latent[data.y == 4])


def test_dataset_rejects_a_latent_that_does_not_match_x():
    with pytest.raises(ValueError, match=r"latent must be a floating-point \(3, d\)"):
        Dataset(x=torch.rand(3, 2), y=None, name="t", likelihood="gaussian", latent=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="latent must be"):
        Dataset(x=torch.rand(3, 2), y=None, name="t", likelihood="gaussian", latent=torch.zeros(3, dtype=torch.long))


def test_synthetic_tree_is_reproducible():
    a, b = synthetic_tree(seed=5), synthetic_tree(seed=5)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert dict(a.tree.nodes(data=True)) == dict(b.tree.nodes(data=True)) and list(
        a.tree.edges
    ) == list(b.tree.edges)
    c = synthetic_tree(seed=6)
    assert not torch.allclose(a.x, c.x)
    # The tree is drawn before the points: more points per leaf, same tree.
    d = synthetic_tree(seed=5, n_per_leaf=20)
    assert dict(d.tree.nodes(data=True)) == dict(a.tree.nodes(data=True)) and len(d) == 8 * 20


def test_synthetic_tree_labels_are_recoverable_and_the_hierarchy_is_visible():
    data = synthetic_tree(
        depth=2, branching=3, latent_dim=8, n_features=30, n_per_leaf=60, noise=0.3, seed=0
    )
    x, y = data.x.numpy(), data.y.numpy()
    predicted = KMeans(n_clusters=9, n_init=10, random_state=0).fit_predict(x)
    assert normalized_mutual_info_score(y, predicted) > 0.8

    # Leaves sharing a parent are closer in data space than leaves under different parents.
    tree = data.tree
    parent_of_label = {
        tree.nodes[n]["label"]: next(tree.predecessors(n)) for n in tree if "label" in tree.nodes[n]
    }
    centroids = np.stack([x[y == label].mean(axis=0) for label in range(9)])
    siblings, cousins = [], []
    for i in range(9):
        for j in range(i + 1, 9):
            distance = np.linalg.norm(centroids[i] - centroids[j])
            (siblings if parent_of_label[i] == parent_of_label[j] else cousins).append(distance)
    assert np.mean(siblings) < np.mean(cousins)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 0},
        {"branching": 1},
        {"latent_dim": 0},
        {"n_per_leaf": 0},
        {"separation": 0.0},
        {"noise": -1.0},
    ],
)
def test_synthetic_tree_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        synthetic_tree(**kwargs)


def test_synthetic_tree_more_children_than_latent_dimensions():
    data = synthetic_tree(depth=1, branching=4, latent_dim=2, n_per_leaf=5, seed=0)
    assert data.n_classes == 4 and len(data) == 20


def _true_node_of_points(data):
    """The node of ``data.tree`` that drew each point (its class's node)."""
    node_of_label = {label: node for node, label in data.tree.nodes(data="label") if label is not None}
    return np.array([node_of_label[label] for label in data.y.tolist()])


def test_synthetic_tree_internal_nodes_emit_labelled_points():
    data = synthetic_tree(depth=2, branching=3, latent_dim=5, noise=0.3, n_per_leaf=20, n_per_internal=8, seed=2)
    tree = data.tree
    internal = [n for n in tree if tree.out_degree(n) > 0]
    assert internal == [0, 1, 2, 3] and tree.graph["n_per_internal"] == 8
    # leaves keep 0..8 (left to right), the internal nodes follow in breadth-first order, root first
    assert [tree.nodes[n]["label"] for n in internal] == [9, 10, 11, 12]
    assert data.n_classes == 13 and len(data) == 9 * 20 + 4 * 8 and data.x.shape == (212, 50)
    assert data.y.bincount().tolist() == [20] * 9 + [8] * 4
    # every point sits around the mean of the node that drew it, internal ones included
    means = {tree.nodes[n]["label"]: tree.nodes[n]["mean"] for n in tree}
    offsets = data.latent.numpy() - np.array([means[label] for label in data.y.tolist()])
    assert abs(offsets.std() - 0.3) < 0.03
    internal_rows = data.y >= 9
    assert np.abs(offsets[internal_rows.numpy()]).max() < 6 * 0.3
    # the root's points lie at the origin, between the groups, far from every leaf mean
    root_points = data.latent[data.y == 9].numpy()
    assert np.linalg.norm(root_points.mean(0)) < 1.0  # the groups sit at distance 8 (separation)
    # the tree and the decoder are drawn before the points: leaf-only and all-node data share them
    leaf_only = synthetic_tree(depth=2, branching=3, latent_dim=5, noise=0.3, n_per_leaf=20, seed=2)
    assert [leaf_only.tree.nodes[n]["mean"] for n in tree] == [tree.nodes[n]["mean"] for n in tree]


def test_synthetic_tree_internal_points_are_true_clusters_of_the_hierarchical_f_score():
    from pyro_hc.metrics import hierarchical_f_score

    data = synthetic_tree(depth=2, branching=3, n_per_leaf=10, n_per_internal=6, seed=0)
    labels, truth = data.y.numpy(), data.tree
    on_true_nodes = _true_node_of_points(data)
    # the true tree with every point on the node that drew it is perfect, coarse groups included
    assert hierarchical_f_score(truth, on_true_nodes, labels, label_tree=truth) == pytest.approx(1.0)
    # moving a coarse node's own points into another group breaks that group's cluster (its points
    # belong to node 1's subtree) and only that: the leaves and the other groups stay perfect
    moved = on_true_nodes.copy()
    moved[labels == truth.nodes[1]["label"]] = 3
    score = hierarchical_f_score(truth, moved, labels, label_tree=truth)
    # the true clusters: 9 leaves of 10, 3 groups of 36 (6 own + 30 below); node 1's subtree keeps
    # 30 of its 36 (F = 60/66), node 3's gains 6 (F = 72/78); the root's own points are in no cluster
    expected = (9 * 10 + 36 + 36 * (60 / 66) + 36 * (72 / 78)) / (9 * 10 + 3 * 36)
    assert score == pytest.approx(expected)


def test_synthetic_tree_tree_spec_of_a_complete_tree_is_the_complete_tree():
    for depth, branching, spec in [(2, 2, [2, 2]), (3, 3, [[3] * 3] * 3), (1, 4, 4)]:
        complete = synthetic_tree(depth=depth, branching=branching, n_per_leaf=5, seed=4)
        from_spec = synthetic_tree(tree=spec, n_per_leaf=5, seed=4)
        assert torch.equal(complete.x, from_spec.x) and torch.equal(complete.y, from_spec.y)
        assert dict(complete.tree.nodes(data=True)) == dict(from_spec.tree.nodes(data=True))
        assert complete.tree.graph == from_spec.tree.graph


def test_synthetic_tree_unbalanced():
    data = synthetic_tree(tree=[4, 2, 0], latent_dim=6, n_per_leaf=10, separation=4.0, seed=1)
    tree = data.tree
    assert nx.is_arborescence(tree) and tree.number_of_nodes() == 1 + 3 + 6
    assert [tree.out_degree(n) for n in range(10)] == [3, 4, 2, 0, 0, 0, 0, 0, 0, 0]
    assert tree.graph["depth"] == 2 and tree.graph["branching"] is None
    # leaves numbered left to right: node 1's four, node 2's two, then node 3, a leaf at level 1
    label_of = dict(tree.nodes(data="label"))
    assert [label_of[n] for n in (4, 5, 6, 7, 8, 9, 3)] == list(range(7))
    assert tree.nodes[3]["level"] == 1 and label_of[0] is None and label_of[1] is None
    assert data.n_classes == 7 and data.y.bincount().tolist() == [10] * 7 and data.x.shape == (70, 50)
    for parent, child in tree.edges:
        step = np.linalg.norm(np.subtract(tree.nodes[child]["mean"], tree.nodes[parent]["mean"]))
        assert step == pytest.approx(4.0 / 2 ** (tree.nodes[child]["level"] - 1))
    for node in (0, 1, 2):
        centroid = np.mean([tree.nodes[c]["mean"] for c in tree.successors(node)], axis=0)
        np.testing.assert_allclose(centroid, tree.nodes[node]["mean"], atol=1e-9)
    deeper = synthetic_tree(tree=[[2, 2], 3], n_per_leaf=4, n_per_internal=2, seed=0)
    levels = {deeper.tree.nodes[n]["level"] for n in deeper.tree if deeper.tree.out_degree(n) == 0}
    assert levels == {2, 3} and deeper.tree.graph["depth"] == 3
    # 7 leaves and 5 internal nodes (root, the two groups, the two pairs)
    assert deeper.n_classes == 12 and len(deeper) == 7 * 4 + 5 * 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tree": [2, 2], "depth": 2}, "not both"),
        ({"tree": [3], "branching": 3}, "not both"),
        ({"tree": [1, 2]}, "at least 2 children"),
        ({"tree": [[0], 2]}, "at least 2 children"),
        ({"tree": [2]}, "at least 2 children"),
        ({"tree": 0}, "tree must be"),
        ({"tree": "ab"}, "tree must be"),
        ({"tree": [2, "x"]}, "at least 2 children"),
        ({"n_per_internal": -1}, "n_per_internal"),
    ],
)
def test_synthetic_tree_rejects_bad_shapes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_tree(**kwargs)


# ---------------------------------------------------------------------------------------------
# DeviceBatcher
# ---------------------------------------------------------------------------------------------


def test_batcher_covers_every_index_once_per_epoch():
    batcher = DeviceBatcher(103, 10, seed=0)
    assert len(batcher) == 11
    for _ in range(2):
        batches = list(batcher)
        assert len(batches) == 11 and [len(b) for b in batches] == [10] * 10 + [3]
        assert all(b.dtype == torch.long and b.device.type == "cpu" for b in batches)
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(103))


def test_batcher_drop_last():
    batcher = DeviceBatcher(103, 10, drop_last=True, seed=0)
    batches = list(batcher)
    assert len(batcher) == len(batches) == 10 and all(len(b) == 10 for b in batches)
    assert torch.cat(batches).unique().numel() == 100
    assert len(DeviceBatcher(100, 10, drop_last=True)) == 10
    assert len(DeviceBatcher(5, 10)) == 1 and list(DeviceBatcher(5, 10, shuffle=False))[
        0
    ].tolist() == [0, 1, 2, 3, 4]


def test_batcher_is_reproducible_per_seed():
    a, b = DeviceBatcher(50, 7, seed=1), DeviceBatcher(50, 7, seed=1)
    a_epochs = [torch.cat(list(a)) for _ in range(3)]
    b_epochs = [torch.cat(list(b)) for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(a_epochs, b_epochs, strict=True))
    assert not torch.equal(a_epochs[0], a_epochs[1]), "each epoch draws a new permutation"
    assert not torch.equal(a_epochs[0], torch.cat(list(DeviceBatcher(50, 7, seed=2))))
    # Unseeded batchers follow torch's global seed.
    torch.manual_seed(123)
    c = torch.cat(list(DeviceBatcher(50, 7)))
    torch.manual_seed(123)
    assert torch.equal(c, torch.cat(list(DeviceBatcher(50, 7))))


def test_batcher_accepts_a_generator_and_resumes_from_its_state():
    generator = torch.Generator().manual_seed(4)
    batcher = DeviceBatcher(30, 30, seed=generator)
    assert torch.equal(
        next(iter(batcher)), torch.randperm(30, generator=torch.Generator().manual_seed(4))
    )
    state = batcher.state_dict()
    expected = next(iter(batcher))
    resumed = DeviceBatcher(30, 30, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(next(iter(resumed)), expected)


def test_batcher_without_shuffle_is_in_order():
    batches = list(DeviceBatcher(7, 3, shuffle=False))
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n_samples": 10, "batch_size": 0}, ValueError),
        ({"n_samples": 0, "batch_size": 4}, ValueError),
        ({"n_samples": 10, "batch_size": 2.5}, ValueError),
        ({"n_samples": 10, "batch_size": True}, ValueError),
        ({"n_samples": 3, "batch_size": 4, "drop_last": True}, ValueError),
        ({"n_samples": 10, "batch_size": 4, "seed": "zero"}, TypeError),
    ],
)
def test_batcher_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        DeviceBatcher(**kwargs)
