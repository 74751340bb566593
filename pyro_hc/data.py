"""Data sets, validation and on-device mini-batching.

Every loader returns a :class:`Dataset` whose ``x`` is a ``float32`` tensor with values in
``[0, 1]`` (``20newsgroups``: scaled TF-IDF, see there; ``N x D`` for vectors, ``N x C x H x W``
for images) and whose ``y`` holds the class labels as a ``long`` tensor.

Data sets
---------
``digits``
    scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; values 0..16 divided by 16).
    It ships with a dependency, so it is always available and is the default data set. It has
    no official train/test split; see :data:`TEST_FRACTION` for the fixed split used here.
``mnist``, ``fashion_mnist``
    28x28 grey images through :class:`torchvision.datasets.MNIST` /
    :class:`torchvision.datasets.FashionMNIST`, official 60,000 / 10,000 split.
``usps``
    16x16 grey images through :class:`torchvision.datasets.USPS`, official 7,291 / 2,007 split.
``cifar10``, ``cifar100``
    32x32 colour images through :class:`torchvision.datasets.CIFAR10` / ``CIFAR100`` (fine
    labels), official 50,000 / 10,000 split, Gaussian likelihood.
``synthetic_tree``
    :func:`synthetic_tree` with its default arguments (a known hierarchy, see there).
``20newsgroups``
    The 18,846 Usenet posts of 20 Newsgroups ("bydate": 11,314 train / 7,532 test documents, in
    scikit-learn's order, ``fetch_20newsgroups(shuffle=False)``; labels are the groups' indices in
    :data:`NEWSGROUPS`) as TF-IDF vectors of the :data:`NEWSGROUPS_VOCABULARY` (2,000) most
    frequent terms. HCRL's paper leaves its preprocessing to a supplement we do not have, and says
    it scores hierarchies "following" DEC (Xie et al. 2016), so these are DEC's text features
    (its ``make_reuters_data``): raw term counts of the most frequent terms, TF-IDF with
    sublinear TF and unit L2 norm per document, times ``sqrt(2000)``. Values lie in
    ``[0, sqrt(2000)]`` (mean square 1 per feature), not ``[0, 1]``: likelihood ``"gaussian"``
    (a VaDE of 2000-256-10 on 4,000 documents, 5 + 10 epochs, CPU, seed 0, reached NMI 0.33 on
    these, 0.01 with a Gaussian and 0.002 with a Bernoulli decoder on the unscaled vectors). The
    vocabulary and IDF are fitted on train and test together (clustering is transductive).
    ``tree`` is the topic hierarchy of the group names (:func:`newsgroups_hierarchy`:
    ``comp.sys.ibm.pc.hardware`` under ``comp.sys`` under ``comp``; 4 levels with the root).

Where the files are looked for
------------------------------
The *data root* is the ``root`` argument, else the environment variable ``PYRO_HC_DATA``,
else ``~/.cache/pyro_hc``. Each data set lives in ``<data root>/<name>/`` in its original
distribution format:

- ``mnist/``, ``fashion_mnist/``: the four IDX files (``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``),
  gzip-compressed or not;
- ``usps/``: the LIBSVM files ``usps.bz2`` (train) and ``usps.t.bz2`` (test);
- ``cifar10/``: the ``cifar-10-batches-py`` folder or the ``cifar-10-python.tar.gz`` archive;
- ``cifar100/``: the ``cifar-100-python`` folder or the ``cifar-100-python.tar.gz`` archive;
- ``20newsgroups/``: ``20news-bydate.tar.gz`` or its two extracted folders
  ``20news-bydate-train/`` and ``20news-bydate-test/`` (it cannot be downloaded).

The data root is never written to (it may be a read-only shared copy). Whatever has to be
unpacked goes to the *cache*: the environment variable ``PYRO_HC_CACHE``, else
``~/.cache/pyro_hc``. MNIST-like files from a data root are decompressed once into
``<cache>/unpacked/<name>-<key>/MNIST/raw/`` (``FashionMNIST``), the layout torchvision reads, with
``<key>`` a hash of the source folder: each root has its own copy, so loading from one root never
replaces another's, and an empty or mistyped root is reported as missing rather than served
whatever was unpacked last. Each file is checked (gzip stream, IDX header and length) before it
replaces a cached copy, so a corrupt source never overwrites a good copy; ``<cache>/MNIST/raw/``
itself holds torchvision downloads only. CIFAR
archives are extracted into ``<cache>/<name>/``; the 20 Newsgroups TF-IDF matrix is computed once
(~20 s) and kept, sparse, in ``<cache>/20newsgroups/``. ``download=True`` lets torchvision download a
missing data set into the cache.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import tarfile
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from ._catalog import FILE_FORMATS
from ._files import atomic_write

__all__ = [
    "Dataset",
    "DeviceBatcher",
    "FILE_FORMATS",
    "LIKELIHOODS",
    "NEWSGROUPS",
    "NEWSGROUPS_VOCABULARY",
    "SPLITS",
    "TEST_FRACTION",
    "list_datasets",
    "load_dataset",
    "newsgroups_hierarchy",
    "resolve_cache_dir",
    "resolve_data_root",
    "synthetic_tree",
    "validate_data",
]

DATA_ENV_VAR = "PYRO_HC_DATA"
CACHE_ENV_VAR = "PYRO_HC_CACHE"
DEFAULT_DIR = Path("~") / ".cache" / "pyro_hc"

LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian")
SPLITS: tuple[str, ...] = ("all", "train", "test")

#: Fraction of a data set without an official split (``digits``, ``synthetic_tree``) that
#: ``split="test"`` returns. The test indices are the last ``round(TEST_FRACTION * N)`` entries
#: of ``numpy.random.RandomState(SPLIT_SEED).permutation(N)``; both halves are returned in the
#: original order. ``RandomState`` is used because its stream is frozen across numpy versions.
TEST_FRACTION = 0.2
SPLIT_SEED = 0


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def _check_choice(value: Any, choices: Sequence[str], what: str) -> str:
    """Return ``value`` lower-cased if it is one of ``choices``, else raise ``ValueError``."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid values are: {', '.join(choices)}")
    return value.lower()


def validate_data(x: Tensor | np.ndarray, likelihood: str, *, name: str = "x") -> Tensor:
    """Check that ``x`` is a usable data tensor for the given likelihood.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        Data, ``N x D`` (vectors) or ``N x C x H x W`` (images), of a floating-point dtype.
    likelihood : {"bernoulli", "gaussian"}
        ``"bernoulli"`` needs every value in ``[0, 1]`` (values are Bernoulli means, as VaDE
        treats MNIST intensities); ``"gaussian"`` accepts any finite value.
    name : str, optional
        What to call the data in error messages.

    Returns
    -------
    torch.Tensor
        ``x`` itself (a numpy array is wrapped with :func:`torch.as_tensor`, sharing memory).

    Raises
    ------
    TypeError
        If ``x`` is neither a tensor nor a numpy array.
    ValueError
        For an unknown likelihood, a non-floating dtype, a shape that is neither 2-D nor 4-D,
        empty data, NaN or infinite values (with their counts) or, for ``"bernoulli"``,
        values outside ``[0, 1]`` (with the minimum and maximum found).
    """
    likelihood = _check_choice(likelihood, LIKELIHOODS, "likelihood")
    if isinstance(x, np.ndarray):
        x = torch.as_tensor(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if not x.is_floating_point():
        hint = " (raw 8-bit pixels? divide by 255)" if x.dtype == torch.uint8 else ""
        raise ValueError(f"{name} must have a floating-point dtype, got {x.dtype}{hint}")
    if x.ndim not in (2, 4):
        raise ValueError(
            f"{name} must be N x D (vectors) or N x C x H x W (images), got shape {tuple(x.shape)}"
            + (" (add a channel axis with x.unsqueeze(1))" if x.ndim == 3 else "")
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")

    n_nan = int(torch.isnan(x).sum())
    n_inf = int(torch.isinf(x).sum())
    if n_nan or n_inf:
        bad_rows = int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).sum())
        problems = []
        if n_nan:
            problems.append(f"{n_nan} NaN value{'s' * (n_nan != 1)}")
        if n_inf:
            problems.append(f"{n_inf} infinite value{'s' * (n_inf != 1)}")
        raise ValueError(
            f"{name} contains {' and '.join(problems)} in {bad_rows} of {x.shape[0]} samples"
        )

    if likelihood == "bernoulli":
        x_min, x_max = float(x.min()), float(x.max())
        if x_min < 0.0 or x_max > 1.0:
            n_out = int(((x < 0) | (x > 1)).sum())
            hint = " (raw 8-bit pixels? divide by 255)" if x_max > 1.0 and x_max <= 255.0 else ""
            raise ValueError(
                f"the bernoulli likelihood needs {name} in [0, 1], but its values range over "
                f"[{x_min:g}, {x_max:g}] ({n_out} values outside){hint}; "
                "rescale the data or use likelihood='gaussian'"
            )
    return x


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Dataset:
    """An in-memory data set: tensors plus what a model needs to know about them.

    Parameters
    ----------
    x : torch.Tensor
        Floating-point data, ``N x D`` or ``N x C x H x W``; validated with
        :func:`validate_data` against ``likelihood``. Loaders give ``float32`` in ``[0, 1]``.
    y : torch.Tensor or None
        Integer labels of length ``N`` (stored as ``long``), or ``None`` when unlabelled.
    name : str
        Canonical data set name.
    likelihood : {"bernoulli", "gaussian"}
        Observation likelihood the data suit.
    image_shape : tuple of int or None
        ``(C, H, W)`` for images. Filled in from ``x`` when ``x`` is 4-D; for 2-D ``x`` it may
        describe flattened images (its product must then equal ``D``).
    n_classes : int or None
        Number of classes of the full data set (a subset may miss some); labels must lie in
        ``[0, n_classes)``.
    tree : networkx.DiGraph or None
        The ground-truth hierarchy when known (:func:`synthetic_tree`).
    latent : torch.Tensor or None
        The true latent point behind each sample when known (:func:`synthetic_tree`), ``N x d``:
        what a perfect encoder would recover, for oracle baselines.
    class_names : tuple of str or None
        The name of each label value (``class_names[label]``) when known: the class folders of
        an image folder, the strings of a label column (:meth:`from_file`, :meth:`from_array`).
    """

    x: Tensor
    y: Tensor | None
    name: str
    likelihood: str
    image_shape: tuple[int, int, int] | None = None
    n_classes: int | None = None
    tree: nx.DiGraph | None = None
    latent: Tensor | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.likelihood = _check_choice(self.likelihood, LIKELIHOODS, "likelihood")
        self.x = validate_data(self.x, self.likelihood)
        n = self.x.shape[0]
        if self.image_shape is None and self.x.ndim == 4:
            self.image_shape = tuple(int(s) for s in self.x.shape[1:])
        if self.image_shape is not None:
            self.image_shape = tuple(int(s) for s in self.image_shape)
            if len(self.image_shape) != 3:
                raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape}")
            if self.x.ndim == 4 and self.image_shape != tuple(self.x.shape[1:]):
                raise ValueError(
                    f"image_shape {self.image_shape} does not match x of shape "
                    f"{tuple(self.x.shape)}"
                )
            if self.x.ndim == 2 and math.prod(self.image_shape) != self.x.shape[1]:
                raise ValueError(
                    f"image_shape {self.image_shape} has {math.prod(self.image_shape)} pixels "
                    f"but x has {self.x.shape[1]} features"
                )
        if self.y is not None:
            y = torch.as_tensor(self.y)
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
            if y.ndim != 1 or y.shape[0] != n:
                raise ValueError(f"y must have shape ({n},) to match x, got {tuple(y.shape)}")
            self.y = y.long()
            if self.n_classes is not None:
                y_min, y_max = int(self.y.min()), int(self.y.max())
                if y_min < 0 or y_max >= self.n_classes:
                    raise ValueError(
                        f"labels must lie in [0, {self.n_classes}), found range [{y_min}, {y_max}]"
                    )
        if self.latent is not None:
            latent = torch.as_tensor(self.latent)
            if not latent.is_floating_point() or latent.ndim != 2 or latent.shape[0] != n:
                raise ValueError(
                    f"latent must be a floating-point ({n}, d) tensor to match x, got dtype {latent.dtype} "
                    f"and shape {tuple(latent.shape)}"
                )
            self.latent = latent
        if self.class_names is not None:
            self.class_names = tuple(str(name) for name in self.class_names)
            if self.n_classes is not None and len(self.class_names) != self.n_classes:
                raise ValueError(f"class_names has {len(self.class_names)} names for n_classes={self.n_classes}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, x_shape={tuple(self.x.shape)}, "
            f"likelihood={self.likelihood!r}, n_classes={self.n_classes}, "
            f"device={self.x.device}{', tree' if self.tree is not None else ''})"
        )

    @property
    def n_features(self) -> int:
        """Number of values per sample (product of ``x.shape[1:]``)."""
        return math.prod(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        """Device of ``x``."""
        return self.x.device

    def flat(self) -> Tensor:
        """Return ``x`` as ``N x n_features`` (a view whenever ``x`` is contiguous)."""
        return self.x.reshape(self.x.shape[0], -1)

    def subset(self, index: Tensor | np.ndarray | Sequence[int] | slice) -> Dataset:
        """Return the samples selected by ``index`` (integer indices, a boolean mask or a slice).

        Every other field (name, likelihood, n_classes, tree) is kept; ``latent`` is indexed with ``x``.
        """
        if not isinstance(index, slice):
            index = torch.as_tensor(np.asarray(index) if not isinstance(index, Tensor) else index)
            index = index.to(self.x.device)
            if index.dtype != torch.bool:
                index = index.long()
        y = None if self.y is None else self.y[index]
        latent = None
        if self.latent is not None:
            latent = self.latent[index.to(self.latent.device) if isinstance(index, Tensor) else index]
        return dataclasses.replace(self, x=self.x[index], y=y, latent=latent)

    @classmethod
    def from_array(
        cls,
        x: Any,
        y: Any = None,
        likelihood: str | None = None,
        *,
        name: str = "array",
        n_classes: int | None = None,
        image_shape: tuple[int, int, int] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> Dataset:
        """A data set from your own arrays (numpy, torch or nested lists).

        Parameters
        ----------
        x : array-like
            ``N x D`` vectors or ``N x C x H x W`` images of a floating-point dtype (``float64``
            becomes ``float32``); checked by :func:`validate_data`, so integer pixels, other
            shapes, NaN and infinite values get the same errors as anywhere in pyro_hc.
        y : array-like, optional
            One label per row: non-negative integers (integral floats are accepted), or strings,
            which are numbered in sorted order and kept as ``class_names``.
        likelihood : {"bernoulli", "gaussian"}, optional
            Default: ``"bernoulli"`` when every value lies in ``[0, 1]``, else ``"gaussian"``.
        name : str, optional
            What the data set is called in reports.
        n_classes : int, optional
            Default: the number of class names, else the largest label + 1.
        image_shape : (C, H, W), optional
            For ``N x D`` data that are flattened images (filled in from ``x`` when it is 4-D).
        class_names : sequence of str, optional
            The name of each label value.

        Examples
        --------
        >>> data = Dataset.from_array(np.random.rand(100, 5).astype("float32"), y=np.arange(100) % 3)
        >>> data.likelihood, data.n_classes
        ('bernoulli', 3)
        """
        x = _as_data_tensor(x, "x")
        validate_data(x, likelihood or "gaussian")
        if likelihood is None:
            likelihood = "bernoulli" if float(x.min()) >= 0.0 and float(x.max()) <= 1.0 else "gaussian"
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        labels, found_names = (None, None) if y is None else _as_labels(y, "y")
        if found_names is not None:
            if class_names is not None:
                raise ValueError("y holds strings, which name the classes themselves; do not pass class_names too")
            class_names = found_names
        if class_names is not None:
            class_names = tuple(str(c) for c in class_names)
            if n_classes is None:
                n_classes = len(class_names)
        if n_classes is None and labels is not None:
            n_classes = int(labels.max()) + 1
        return cls(x=x, y=labels, name=str(name), likelihood=likelihood, image_shape=image_shape,
                   n_classes=n_classes, class_names=class_names)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        labels: str | int | os.PathLike | None = None,
        *,
        x_key: str | None = None,
        likelihood: str | None = None,
        image_size: int | tuple[int, int] | None = None,
        channels: int | None = None,
    ) -> Dataset:
        """A data set from a file of your own, or a folder of images.

        Formats (chosen by the suffix; a folder is an image folder):

        ``.npy``
            One array, ``N x D`` or ``N x C x H x W``. ``labels`` may name a second ``.npy`` file
            with one label per row.
        ``.npz``
            Arrays by name: the data are ``x_key``, else the array called ``x``, ``X`` or ``data``,
            else the only array that is not the labels; ``labels`` names the labels array.
        ``.pt`` / ``.pth``
            A tensor, or a dict of tensors / arrays read like ``.npz``
            (``torch.load(..., weights_only=True)``: nothing in the file is executed).
        ``.csv`` / ``.tsv``
            A numeric table, one row per datum, with or without a header row (a first row with a
            non-numeric cell is the header). ``labels`` names the label column (its header, or
            its 0-based index); every other column is a feature. Label cells may be strings.
        a folder
            torchvision's ``ImageFolder`` layout, ``root/<class>/<image>``: labels are the class
            folders (sorted, their names kept as ``class_names``); images are read with Pillow,
            converted to ``channels`` (1 grey or 3 RGB; default: 1 when every image is grey) and
            resized to ``image_size`` (``H`` or ``(H, W)``; default: their common size, which they
            must then share), giving values in ``[0, 1]``.

        The data are then checked like every data set (:meth:`from_array`, :func:`validate_data`):
        wrong shapes, integer dtypes, NaN / infinite values and labels that do not match the
        rows are refused with a message naming the file.

        Raises
        ------
        FileNotFoundError
            If ``path`` (or a labels file) does not exist, or an image folder holds no images.
        ValueError
            For an unknown suffix, a missing array or column (listing the ones there), or data
            that fail validation.
        """
        return _load_user_file(Path(path).expanduser(), labels, x_key=x_key, likelihood=likelihood,
                               image_size=image_size, channels=channels)

    def to(self, device: str | torch.device) -> Dataset:
        """Return a copy whose ``x``, ``y`` (and ``latent``) live on ``device``.

        Move the whole data set once, then index it with :class:`DeviceBatcher` batches, so
        that training never copies data between host and device.
        """
        y = None if self.y is None else self.y.to(device)
        latent = None if self.latent is None else self.latent.to(device)
        return dataclasses.replace(self, x=self.x.to(device), y=y, latent=latent)


# ---------------------------------------------------------------------------------------------
# users' own data: arrays and files
# ---------------------------------------------------------------------------------------------

#: suffixes :meth:`Dataset.from_file` reads (and folders, as torchvision ImageFolder trees)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _as_data_tensor(values: Any, name: str) -> Tensor:
    """Arrays, tensors or nested lists as a tensor (sharing memory where possible), for validation."""
    if isinstance(values, Tensor):
        return values.detach()
    array = np.asarray(values)
    if array.dtype == object or array.dtype.kind in "USV":
        raise ValueError(f"{name} must hold numbers, got an array of dtype {array.dtype}")
    return torch.as_tensor(array)


def _as_labels(values: Any, name: str) -> tuple[Tensor, tuple[str, ...] | None]:
    """Labels as a ``long`` tensor, and the class names when the labels were strings."""
    array = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one label per datum (1-D), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if array.dtype.kind in "USO":
        names = np.array([str(v) for v in array.tolist()])
        classes, index = np.unique(names, return_inverse=True)
        return torch.as_tensor(index.astype(np.int64)), tuple(classes.tolist())
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            example = array[bad][0]
            raise ValueError(f"{name} must hold integer labels, but {int(bad.sum())} value(s) are not integers "
                             f"(e.g. {example!r})")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer or string labels, got dtype {array.dtype}")
    labels = array.astype(np.int64)
    if labels.min() < 0:
        raise ValueError(f"{name} must hold non-negative labels, found {int(labels.min())}")
    return torch.as_tensor(labels), None


def _pick(arrays: dict[str, Any], key: str | None, labels: Any, path: Path) -> tuple[Any, Any]:
    """The data array and the labels array (or None) out of named arrays (``.npz``, a dict in ``.pt``)."""
    names = sorted(arrays)
    listing = ", ".join(repr(n) for n in names) or "none"
    if labels is not None and str(labels) not in arrays:
        raise ValueError(f"{path.name} has no labels array {str(labels)!r}; its arrays are: {listing}")
    if key is None:
        key = next((k for k in ("x", "X", "data") if k in arrays), None)
        if key is None:
            candidates = [n for n in names if n != (None if labels is None else str(labels))]
            if len(candidates) != 1:
                raise ValueError(f"{path.name} holds the arrays {listing}; say which one is the data "
                                 "(x_key= in Python, --data-key on the command line)")
            key = candidates[0]
    elif key not in arrays:
        raise ValueError(f"{path.name} has no array {key!r}; its arrays are: {listing}")
    return arrays[key], None if labels is None else arrays[str(labels)]


def _read_table(path: Path, labels: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A ``.csv`` / ``.tsv`` file as a float matrix and, optionally, its label column (as strings)."""
    import csv

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = [row for row in csv.reader(handle, delimiter=delimiter) if any(cell.strip() for cell in row)]
    if not rows:
        raise ValueError(f"{path.name} is empty")

    def is_number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    header = None
    if not all(is_number(cell) or not cell.strip() for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    if not rows:
        raise ValueError(f"{path.name} has a header row but no data rows")
    width = len(header) if header is not None else len(rows[0])
    for number, row in enumerate(rows, start=2 if header is not None else 1):
        if len(row) != width:
            raise ValueError(f"{path.name}: line {number} has {len(row)} columns, expected {width}")
    label_column = None
    if labels is not None:
        text = str(labels)
        if header is not None and text in header:
            label_column = header.index(text)
        elif re.fullmatch(r"-?[0-9]+", text) and -width <= int(text) < width:
            label_column = int(text) % width
        else:
            known = f"its columns are: {', '.join(repr(h) for h in header)}" if header is not None else \
                f"it has no header, so name the column by its 0-based index (0 .. {width - 1})"
            raise ValueError(f"{path.name} has no labels column {text!r}; {known}")
    features = [c for c in range(width) if c != label_column]
    if not features:
        raise ValueError(f"{path.name} has no feature columns besides the labels")
    table = np.empty((len(rows), len(features)), dtype=np.float64)
    for r, row in enumerate(rows):
        for k, c in enumerate(features):
            cell = row[c].strip()
            try:
                table[r, k] = float(cell) if cell else np.nan  # an empty cell is a missing value
            except ValueError:
                column = repr(header[c]) if header is not None else str(c)
                raise ValueError(f"{path.name}: line {r + (2 if header is not None else 1)}, column {column}: "
                                 f"{cell!r} is not a number (a column of labels is named with "
                                 "labels=, --labels on the command line)") from None
    label_values = None if label_column is None else np.array([row[label_column].strip() for row in rows])
    if label_values is not None and all(is_number(v) for v in label_values):
        label_values = label_values.astype(np.float64)
    return table, label_values


def _image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                                 for s in size):
        raise ValueError(f"image_size must be a positive integer H or a pair (H, W), got {image_size!r}")
    return int(size[0]), int(size[1])


def _read_image_folder(root: Path, image_size: Any, channels: int | None) -> Dataset:
    """An ImageFolder tree (``root/<class>/<image>``) as images in [0, 1] with class labels."""
    from PIL import Image

    size = _image_size(image_size)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grey), 3 (RGB) or None (automatic), got {channels!r}")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    files = [(file, label) for label, name in enumerate(classes) for file in sorted((root / name).rglob("*"))
             if file.is_file() and file.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(
            f"no images found in {root}: an image folder holds one sub-folder per class with the images "
            f"inside (root/<class>/<image>, torchvision's ImageFolder layout; suffixes "
            f"{', '.join(_IMAGE_SUFFIXES)}); found {len(classes)} sub-folder(s)")
    images = []
    for file, _ in files:
        try:
            with Image.open(file) as image:
                image.load()
                images.append(image.copy())
        except OSError as error:
            raise ValueError(f"cannot read the image {file}: {error}") from error
    if channels is None:
        channels = 1 if all(image.mode in _GREY_MODES for image in images) else 3
    if size is None:
        sizes = {(image.height, image.width) for image in images}
        if len(sizes) != 1:
            raise ValueError(f"the images in {root} have {len(sizes)} different sizes (e.g. "
                             f"{sorted(sizes)[:3]} as H x W); pass image_size (--image-size) to resize them")
        (size,) = sizes
    mode = "L" if channels == 1 else "RGB"
    pixels = np.stack([
        np.asarray(image.convert(mode).resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)
        for image in images
    ])
    x = torch.from_numpy(pixels / 255.0)
    x = x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([label for _, label in files], dtype=torch.long)
    return Dataset.from_array(x, y, likelihood="bernoulli", name=root.name, class_names=classes)


def _load_user_file(path: Path, labels: Any, *, x_key: str | None, likelihood: str | None,
                    image_size: Any, channels: int | None) -> Dataset:
    if not path.exists():
        raise FileNotFoundError(f"the data file {path} does not exist")
    if path.is_dir():
        if labels is not None or x_key is not None:
            raise ValueError(f"{path} is an image folder: its labels are its class sub-folders, so labels and "
                             "x_key do not apply")
        return _read_image_folder(path, image_size, channels)
    if image_size is not None or channels is not None:
        raise ValueError(f"image_size and channels apply to image folders, but {path.name} is a file")
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ValueError(f"cannot read {path.name}: supported are {', '.join(FILE_FORMATS)} files and image "
                         "folders (root/<class>/<image>)")
    y: Any = None
    if suffix == ".npy":
        if x_key is not None:
            raise ValueError(f"{path.name} holds a single array; x_key applies to .npz and .pt files")
        x = np.load(path, allow_pickle=False)
        if labels is not None:
            label_path = Path(labels).expanduser()
            if label_path.suffix.lower() != ".npy" or not label_path.is_file():
                raise ValueError(f"a .npy file holds one array, so its labels come from a second .npy file; "
                                 f"{str(labels)!r} is not one")
            y = np.load(label_path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            x, y = _pick({name: archive[name] for name in archive.files}, x_key, labels, path)
    elif suffix in (".pt", ".pth"):
        content = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(content, (Tensor, np.ndarray)):
            if labels is not None or x_key is not None:
                raise ValueError(f"{path.name} holds a single tensor; labels and x_key need a dict of tensors")
            x = content
        elif isinstance(content, dict) and all(isinstance(k, str) for k in content):
            x, y = _pick(content, x_key, labels, path)
        else:
            raise ValueError(f"{path.name} must hold a tensor or a dict of named tensors, got "
                             f"{type(content).__name__}")
    else:
        x, y = _read_table(path, labels)
    x = _as_data_tensor(x, path.name)
    validate_data(x, likelihood or "gaussian", name=path.name)
    if y is not None:
        y_name = f"the labels {str(labels)!r} of {path.name}"
        if len(y) != x.shape[0]:
            raise ValueError(f"{y_name} have {len(y)} entries but the data have {x.shape[0]} rows")
        try:
            _as_labels(y, y_name)
        except ValueError as error:
            raise ValueError(str(error)) from None
    try:
        return Dataset.from_array(x, y, likelihood, name=path.stem)
    except ValueError as error:  # the checks above cover x; say which file is meant
        raise ValueError(f"{path.name}: {error}") from None


# ---------------------------------------------------------------------------------------------
# locations
# ---------------------------------------------------------------------------------------------


def _env_path(variable: str) -> Path | None:
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser() if value else None


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """Folder that holds the data sets in their original format.

    Parameters
    ----------
    root : str or path-like, optional
        Explicit data root; takes precedence.

    Returns
    -------
    pathlib.Path
        ``root``, else ``$PYRO_HC_DATA``, else ``~/.cache/pyro_hc`` (user-expanded, absolute).
    """
    if root is not None:
        return Path(root).expanduser().absolute()
    return (_env_path(DATA_ENV_VAR) or DEFAULT_DIR.expanduser()).absolute()


def _data_root_origin(root: str | os.PathLike | None) -> str:
    if root is not None:
        return "the root argument"
    if _env_path(DATA_ENV_VAR) is not None:
        return f"${DATA_ENV_VAR}"
    return f"the default (${DATA_ENV_VAR} is not set)"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Writable folder for decompressed files and downloads.

    Parameters
    ----------
    cache_dir : str or path-like, optional
        Explicit cache folder; takes precedence.

    Returns
    -------
    pathlib.Path
        ``cache_dir``, else ``$PYRO_HC_CACHE``, else ``~/.cache/pyro_hc``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    return (_env_path(CACHE_ENV_VAR) or DEFAULT_DIR.expanduser()).absolute()


@dataclass(frozen=True)
class _Where:
    """Where a loader looks, and how to explain a miss."""

    data_root: Path
    origin: str
    cache_dir: Path
    download: bool


def _unique(paths: Sequence[tuple[Path, str]]) -> list[tuple[Path, str]]:
    seen: set[Path] = set()
    out = []
    for path, note in paths:
        if path not in seen:
            seen.add(path)
            out.append((path, note))
    return out


def _missing(
    name: str, where: _Where, looked: Sequence[tuple[Path, str]], expected: str
) -> FileNotFoundError:
    """Build the error for a data set that is nowhere to be found."""
    lines = [f"data set {name!r} was not found. Looked in:"]
    lines += [f"  - {path}  ({note})" for path, note in _unique(looked)]
    lines += [
        "To provide it, either",
        f"  - put {expected} in <data root>/{name}/ and pass root=<data root> to load_dataset "
        f"or set the environment variable {DATA_ENV_VAR}=<data root> "
        f"(the data root used was {where.data_root}, from {where.origin}); or",
        f"  - pass download=True to let torchvision download it into {where.cache_dir} "
        f"(the cache; set {CACHE_ENV_VAR} to move it).",
    ]
    return FileNotFoundError("\n".join(lines))


def _lacks(folder: Path, what: str) -> str:
    return "folder does not exist" if not folder.is_dir() else f"missing {what}"


def _check_idx(source: Path, unpacked: Path) -> None:
    """Raise ``ValueError`` unless ``unpacked`` is a whole IDX file (magic, dimensions, length)."""
    size = unpacked.stat().st_size
    with open(unpacked, "rb") as handle:
        head = handle.read(4)
        if len(head) == 4 and head[:2] == b"\x00\x00" and head[2] == 0x08 and 1 <= head[3] <= 4:
            dims = handle.read(4 * head[3])
            if len(dims) == 4 * head[3]:
                shape = [int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims), 4)]
                expected = 4 + len(dims) + math.prod(shape)
                if size == expected:
                    return
                raise ValueError(f"{source} is damaged or truncated: its IDX header promises {expected} bytes "
                                 f"(shape {shape}), it holds {size}; the cached copy was left as it was")
    raise ValueError(f"{source} is not an IDX file (bad header); the cached copy was left as it was")


def _source_key(folder: Path) -> str:
    """A short, stable name for a source folder (its resolved path hashed)."""
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]


def _materialise(source: Path, target: Path, check: Callable[[Path, Path], None] | None = None) -> None:
    """Decompress (``.gz``) or copy ``source`` to ``target`` unless an up-to-date copy exists.

    A small JSON stamp next to ``target`` records the source path, size and modification time,
    so a changed source is unpacked again while an unchanged one costs a ``stat``. The copy is
    written to a temporary file, checked by ``check(source, temporary)`` and renamed, so
    concurrent loaders never see half a file and a corrupt source never replaces a good copy.
    """
    stat = source.stat()
    record = {"source": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    stamp = target.with_name(target.name + ".source.json")
    if target.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == record:
                return
        except (OSError, ValueError):
            pass  # an unreadable stamp just means unpacking again
    opener: Callable[..., Any] = gzip.open if source.suffix == ".gz" else open

    def copy(out) -> None:
        try:
            with opener(source, "rb") as fin:
                shutil.copyfileobj(fin, out, length=1 << 22)
        except (OSError, EOFError, ValueError) as err:  # gzip.BadGzipFile is an OSError; zlib.error too
            raise ValueError(f"{source} is damaged or truncated (cannot decompress it: {err}); "
                             f"the cached copy {target} was left as it was") from err

    atomic_write(target, copy, check=None if check is None else (lambda temporary: check(source, temporary)))
    atomic_write(stamp, lambda out: out.write(json.dumps(record)), text=True)


def _extract_tar(archive: Path, destination: Path, member_folder: str) -> None:
    """Extract ``archive`` so that ``destination / member_folder`` appears atomically."""
    destination.mkdir(parents=True, exist_ok=True)
    # named before it exists (unlike ``tempfile.mkdtemp``), so an interrupt anywhere leaves no scratch folder
    scratch = destination / f".extract.{secrets.token_hex(6)}"
    try:
        scratch.mkdir()
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(scratch, filter="data")
            else:  # Python < 3.11.4: refuse members that would escape the scratch folder
                for member in tar.getmembers():
                    target = (scratch / member.name).resolve()
                    if (
                        not str(target).startswith(str(scratch.resolve()))
                        or member.issym()
                        or member.islnk()
                    ):
                        raise ValueError(
                            f"refusing unsafe archive member {member.name!r} in {archive}"
                        )
                tar.extractall(scratch)
        extracted = scratch / member_folder
        if not extracted.is_dir():
            raise FileNotFoundError(f"{archive} does not contain the folder {member_folder!r}")
        final = destination / member_folder
        if not final.exists():
            os.replace(extracted, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _to_unit_float(images: Tensor) -> Tensor:
    """uint8 ``N x H x W`` or ``N x C x H x W`` pixels -> float32 in [0, 1] with a channel axis."""
    x = images.to(torch.float32).div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x


# ---------------------------------------------------------------------------------------------
# loaders: each returns (x, y) for one official part, "train" or "test"
# ---------------------------------------------------------------------------------------------


def _mnist_like_root(name: str, tv_class: type, where: _Where) -> Path:
    """The torchvision root whose ``<ClassName>/raw/`` holds the decompressed IDX files of this source.

    Files from the data root go to ``<cache>/unpacked/<name>-<key of the source folder>/``;
    ``<cache>/<ClassName>/raw/`` serves only files torchvision downloaded (no source stamps).
    """
    files = [Path(resource[0]).name.removesuffix(".gz") for resource in tv_class.resources]
    source_dir = where.data_root / name
    raw_dir = where.cache_dir / tv_class.__name__ / "raw"  # torchvision's download location

    sources: dict[str, Path] = {}
    for file in files:
        for candidate in (source_dir / f"{file}.gz", source_dir / file):
            if candidate.is_file():
                sources[file] = candidate
                break
    if len(sources) == len(files):
        unpacked_root = where.cache_dir / "unpacked" / f"{name}-{_source_key(source_dir)}"
        for file, source in sources.items():
            _materialise(source, unpacked_root / tv_class.__name__ / "raw" / file, check=_check_idx)
        return unpacked_root
    if _downloaded(raw_dir, files):
        return where.cache_dir  # downloaded earlier by torchvision
    if where.download:
        tv_class(str(where.cache_dir), train=True, download=True)
        return where.cache_dir

    missing = ", ".join(f"{file}.gz" for file in files if file not in sources)
    raise _missing(
        name,
        where,
        [
            (source_dir, f"data root, from {where.origin}; " + _lacks(source_dir, missing)),
            (raw_dir, "cache, torchvision layout; " + _lacks(raw_dir, "the decompressed files")),
        ],
        "the four IDX files (" + ", ".join(f + ".gz" for f in files) + ")",
    )


def _downloaded(raw_dir: Path, files: Sequence[str]) -> bool:
    """Whether ``raw_dir`` holds a torchvision download (not a copy unpacked from some data root)."""
    return all((raw_dir / f).is_file() and not (raw_dir / f"{f}.source.json").exists() for f in files)


def _load_mnist_like(
    name: str, tv_class_name: str
) -> Callable[[str, _Where], tuple[Tensor, Tensor]]:
    def load(part: str, where: _Where) -> tuple[Tensor, Tensor]:
        import torchvision.datasets as tvd

        tv_class = getattr(tvd, tv_class_name)
        root = _mnist_like_root(name, tv_class, where)
        # Read the tensors directly: going through __getitem__ would build one PIL image per item.
        ds = tv_class(str(root), train=part == "train", download=False)
        return _to_unit_float(ds.data), ds.targets.long()

    return load


_USPS_FILES = {"train": "usps.bz2", "test": "usps.t.bz2"}


def _load_usps(part: str, where: _Where) -> tuple[Tensor, Tensor]:
    import torchvision.datasets as tvd

    file = _USPS_FILES[part]
    # torchvision reads <root>/usps.bz2 directly and writes nothing, so the (possibly read-only)
    # data root itself can serve as its root; the cache only matters for downloads.
    candidates = [where.data_root / "usps", where.cache_dir / "usps"]
    root = next((folder for folder in candidates if (folder / file).is_file()), None)
    if root is None:
        if not where.download:
            raise _missing(
                "usps",
                where,
                [
                    (
                        candidates[0],
                        f"data root, from {where.origin}; " + _lacks(candidates[0], file),
                    ),
                    (candidates[1], "cache, for downloads; " + _lacks(candidates[1], file)),
                ],
                "the LIBSVM files usps.bz2 (train) and usps.t.bz2 (test)",
            )
        root = candidates[1]
    ds = tvd.USPS(str(root), train=part == "train", download=where.download)
    # torchvision maps the file's [-1, 1] values to uint8 0..255.
    return _to_unit_float(torch.from_numpy(ds.data)), torch.as_tensor(ds.targets, dtype=torch.long)


def _cifar_root(name: str, tv_class: type, where: _Where) -> Path:
    """Return a folder holding ``tv_class.base_folder``, extracting the archive if needed."""
    source_dir = where.data_root / name
    cache_dir = where.cache_dir / name
    if (source_dir / tv_class.base_folder).is_dir():
        return source_dir
    if (cache_dir / tv_class.base_folder).is_dir():
        return cache_dir
    archive = source_dir / tv_class.filename
    if archive.is_file():
        _extract_tar(archive, cache_dir, tv_class.base_folder)
        return cache_dir
    if where.download:
        tv_class(str(cache_dir), train=True, download=True)
        return cache_dir
    raise _missing(
        name,
        where,
        [
            (source_dir / tv_class.base_folder, f"data root, from {where.origin}"),
            (archive, f"data root, from {where.origin}"),
            (cache_dir / tv_class.base_folder, "cache, extracted archive"),
        ],
        f"the {tv_class.base_folder} folder or the {tv_class.filename} archive",
    )


def _load_cifar(name: str, tv_class_name: str) -> Callable[[str, _Where], tuple[Tensor, Tensor]]:
    def load(part: str, where: _Where) -> tuple[Tensor, Tensor]:
        import torchvision.datasets as tvd

        tv_class = getattr(tvd, tv_class_name)
        root = _cifar_root(name, tv_class, where)
        try:
            ds = tv_class(str(root), train=part == "train", download=False)
        except RuntimeError as err:  # torchvision checks the batches' MD5s on every load
            raise RuntimeError(
                f"{name} files under {root / tv_class.base_folder} failed to load: {err}"
            ) from err
        pixels = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return _to_unit_float(pixels), torch.as_tensor(ds.targets, dtype=torch.long)

    return load


def _load_digits(where: _Where) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Values are counts 0..16 of a 4x4 block; dividing by 16 gives intensities in [0, 1].
    x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return Dataset(x=x, y=y, name="digits", likelihood="bernoulli", n_classes=10)


def _mnist_like_present(name: str, tv_class_name: str) -> Callable[[_Where], bool]:
    def present(where: _Where) -> bool:
        import torchvision.datasets as tvd

        tv_class = getattr(tvd, tv_class_name)
        files = [Path(resource[0]).name.removesuffix(".gz") for resource in tv_class.resources]
        in_root = all(
            (where.data_root / name / f"{f}.gz").is_file() or (where.data_root / name / f).is_file()
            for f in files
        )
        return in_root or _downloaded(where.cache_dir / tv_class.__name__ / "raw", files)

    return present


def _usps_present(where: _Where) -> bool:
    folders = (where.data_root / "usps", where.cache_dir / "usps")
    return all(
        any((folder / file).is_file() for folder in folders) for file in _USPS_FILES.values()
    )


def _cifar_present(name: str, tv_class_name: str) -> Callable[[_Where], bool]:
    def present(where: _Where) -> bool:
        import torchvision.datasets as tvd

        tv_class = getattr(tvd, tv_class_name)
        return (
            (where.data_root / name / tv_class.base_folder).is_dir()
            or (where.data_root / name / tv_class.filename).is_file()
            or (where.cache_dir / name / tv_class.base_folder).is_dir()
        )

    return present


# ---------------------------------------------------------------------------------------------
# 20 Newsgroups: TF-IDF features of the bydate documents, the topic hierarchy of the group names
# ---------------------------------------------------------------------------------------------

#: The 20 groups in scikit-learn's order (sorted); a document's label is its group's index here.
NEWSGROUPS: tuple[str, ...] = (
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
    "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med", "sci.space",
    "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
    "talk.religion.misc",
)
#: Size of the TF-IDF vocabulary: the most frequent terms of the corpus.
NEWSGROUPS_VOCABULARY = 2000
_NEWSGROUPS_ARCHIVE = "20news-bydate.tar.gz"
_NEWSGROUPS_PARTS = {"train": "20news-bydate-train", "test": "20news-bydate-test"}
# Everything that shapes the cached matrix; a change here invalidates old caches.
_NEWSGROUPS_SETTINGS = {
    "counts": "sklearn CountVectorizer(max_features)", "max_features": NEWSGROUPS_VOCABULARY,
    "tfidf": "sklearn TfidfTransformer(norm='l2', sublinear_tf=True)", "scale": "sqrt(max_features)",
    "encoding": "latin-1", "fit_on": "train+test", "format": 1,
}


def newsgroups_hierarchy(groups: Sequence[str] = NEWSGROUPS) -> nx.DiGraph:
    """The topic hierarchy of dotted group names, as a tree whose leaves are the groups.

    Every dotted prefix is a node (``comp.sys.ibm.pc.hardware`` sits under ``comp.sys`` under
    ``comp``), and a prefix with a single child is merged into it, since it would hold exactly the
    same documents (``alt`` -> ``alt.atheism``, ``comp.sys.ibm`` -> ``comp.sys.ibm.pc.hardware``).
    For the 20 groups this gives 7 top-level nodes (``alt.atheism``, ``comp``, ``misc.forsale``,
    ``rec``, ``sci``, ``soc.religion.christian``, ``talk``), 3 second-level groups (``comp.sys``,
    ``rec.sport``, ``talk.politics``) and 20 leaves: 4 levels with the root, the depth of HCRL's
    Table 2.

    Parameters
    ----------
    groups : sequence of str
        The group names; leaf ``label`` ``i`` is ``groups[i]``.

    Returns
    -------
    networkx.DiGraph
        Root 0, node ids in breadth-first order (children sorted by name), node attributes
        ``"name"`` (the dotted prefix; ``""`` for the root) and ``"level"``, and ``"label"`` on
        the leaves, as :func:`pyro_hc.metrics.hierarchical_f_score`'s ``label_tree`` reads it.
    """
    groups = list(groups)
    if len(set(groups)) != len(groups) or not all(isinstance(g, str) and g for g in groups):
        raise ValueError(f"groups must be distinct non-empty names, got {groups!r}")
    prefixes = {".".join(g.split(".")[:k]) for g in groups for k in range(1, g.count(".") + 2)}
    clash = sorted(p for p in prefixes if p in groups and any(g.startswith(p + ".") for g in groups))
    if clash:
        raise ValueError(f"groups {clash} are also prefixes of other groups; they cannot be leaves")
    children: dict[str, list[str]] = {"": []}
    for prefix in sorted(prefixes):
        parent = prefix.rpartition(".")[0]
        children.setdefault(prefix, [])
        children.setdefault(parent, []).append(prefix)

    def collapsed(name: str) -> str:
        while len(children[name]) == 1:  # a one-child prefix holds the same documents as its child
            name = children[name][0]
        return name

    label_of = {group: label for label, group in enumerate(groups)}
    graph = nx.DiGraph(groups=groups)
    graph.add_node(0, name="", level=0)
    queue = deque([(0, "")])
    while queue:
        node, name = queue.popleft()
        for child_name in sorted(collapsed(c) for c in children[name]):
            child = graph.number_of_nodes()
            graph.add_node(child, name=child_name, level=graph.nodes[node]["level"] + 1)
            graph.add_edge(node, child)
            if child_name in label_of:
                graph.nodes[child]["label"] = label_of[child_name]
            else:
                queue.append((child, child_name))
    return graph


def _newsgroups_source(where: _Where) -> Path | None:
    """The archive, or the folder holding the two extracted ``20news-bydate-*`` folders."""
    folder = where.data_root / "20newsgroups"
    if (folder / _NEWSGROUPS_ARCHIVE).is_file():
        return folder / _NEWSGROUPS_ARCHIVE
    if all((folder / part).is_dir() for part in _NEWSGROUPS_PARTS.values()):
        return folder
    return None


def _newsgroups_cache(where: _Where) -> Path:
    return where.cache_dir / "20newsgroups" / f"tfidf{NEWSGROUPS_VOCABULARY}.npz"


def _newsgroups_present(where: _Where) -> bool:
    return _newsgroups_source(where) is not None or _newsgroups_cache(where).is_file()


def _newsgroups_documents(source: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts, labels and test flags: train then test, each sorted by group, then by file name.

    That is the order of scikit-learn's ``load_files`` (``fetch_20newsgroups(shuffle=False)``).
    """
    raw: dict[tuple[int, str, str], bytes] = {}
    part_index = {folder: index for index, folder in enumerate(_NEWSGROUPS_PARTS.values())}
    if source.is_file():
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 3 and parts[0] in part_index and parts[1] in NEWSGROUPS:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    raw[(part_index[parts[0]], parts[1], parts[2])] = handle.read()
    else:
        for folder, index in part_index.items():
            for path in (source / folder).glob("*/*"):
                if path.is_file() and path.parent.name in NEWSGROUPS:
                    raw[(index, path.parent.name, path.name)] = path.read_bytes()
    if not raw:
        raise ValueError(f"{source} holds no documents in 20news-bydate-{{train,test}}/<group>/ folders")
    keys = sorted(raw)
    label_of = {group: label for label, group in enumerate(NEWSGROUPS)}
    texts = [raw[key].decode("latin-1") for key in keys]
    labels = np.array([label_of[group] for _, group, _ in keys], dtype=np.int64)
    is_test = np.array([index == 1 for index, _, _ in keys], dtype=bool)
    return texts, labels, is_test


def _newsgroups_record(source: Path | None) -> dict[str, Any]:
    if source is None:
        return {"settings": _NEWSGROUPS_SETTINGS}
    stat = source.stat()
    return {"source": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "settings": _NEWSGROUPS_SETTINGS}


def _newsgroups_matrix(where: _Where) -> dict[str, np.ndarray]:
    """The cached sparse TF-IDF matrix of all documents (CSR arrays), labels and test flags.

    Vectorised once and cached in ``<cache>/20newsgroups/``, with a JSON stamp of the source's
    path, size and modification time and of the vectoriser settings: an unchanged source costs a
    ``stat`` and one ``numpy.load``; a changed one is vectorised again. A cache without its source
    (the data root moved) is still used when its settings match.
    """
    source = _newsgroups_source(where)
    cache = _newsgroups_cache(where)
    stamp = cache.with_name(cache.name + ".source.json")
    if cache.is_file() and stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text())
            if recorded == _newsgroups_record(source) or (
                source is None and recorded.get("settings") == _NEWSGROUPS_SETTINGS
            ):
                with np.load(cache, allow_pickle=False) as arrays:
                    return dict(arrays)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # an unreadable cache just means vectorising again
    if source is None:
        folder = where.data_root / "20newsgroups"
        looked = [
            (folder / _NEWSGROUPS_ARCHIVE, f"data root, from {where.origin}"),
            (folder / _NEWSGROUPS_PARTS["train"], f"data root, from {where.origin}; extracted archive"),
            (cache, "cache, the vectorised matrix"),
        ]
        raise FileNotFoundError("\n".join([
            "data set '20newsgroups' was not found. Looked in:",
            *[f"  - {path}  ({note})" for path, note in _unique(looked)],
            f"Put {_NEWSGROUPS_ARCHIVE} (the 'bydate' archive: 20news-bydate-{{train,test}}/<group>/<id>), "
            "or its two extracted folders, in <data root>/20newsgroups/ and pass root=<data root> to "
            f"load_dataset or set {DATA_ENV_VAR}=<data root> (the data root used was {where.data_root}, "
            f"from {where.origin}). pyro_hc does not download it.",
        ]))

    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    texts, labels, is_test = _newsgroups_documents(source)
    # DEC's text features (Xie et al. 2016, make_reuters_data), whose evaluation HCRL follows:
    # counts of the most frequent terms, sublinear TF-IDF, each document of unit L2 norm, then
    # scaled by sqrt(D) so that a feature's mean square is 1/D * D = 1 per document on average.
    vectorizer = CountVectorizer(max_features=NEWSGROUPS_VOCABULARY, dtype=np.float64)
    counts = vectorizer.fit_transform(texts)
    matrix = TfidfTransformer(norm="l2", sublinear_tf=True).fit_transform(counts).tocsr()
    matrix.sort_indices()
    matrix.data *= math.sqrt(matrix.shape[1])
    arrays = {
        "data": matrix.data.astype(np.float32), "indices": matrix.indices.astype(np.int32),
        "indptr": matrix.indptr.astype(np.int64), "shape": np.array(matrix.shape, dtype=np.int64),
        "labels": labels, "is_test": is_test,
        "vocabulary": np.asarray(vectorizer.get_feature_names_out(), dtype=str),
    }
    atomic_write(cache, lambda out: np.savez(out, **arrays))
    atomic_write(stamp, lambda out: out.write(json.dumps(_newsgroups_record(source))), text=True)
    return arrays


def _load_newsgroups(part: str, where: _Where) -> tuple[Tensor, Tensor]:
    arrays = _newsgroups_matrix(where)
    rows = np.flatnonzero(arrays["is_test"] == (part == "test"))
    start, stop = arrays["indptr"][rows[0]], arrays["indptr"][rows[-1] + 1]
    # The rows of a part are contiguous (train first), so the part is one slice of the CSR arrays.
    assert rows[-1] - rows[0] + 1 == rows.size
    x = np.zeros((rows.size, int(arrays["shape"][1])), dtype=np.float32)
    row_of_value = np.repeat(np.arange(rows.size), np.diff(arrays["indptr"][rows[0]:rows[-1] + 2]))
    x[row_of_value, arrays["indices"][start:stop]] = arrays["data"][start:stop]
    return torch.from_numpy(x), torch.from_numpy(arrays["labels"][rows])


@dataclass(frozen=True)
class _Spec:
    """How to load one named data set."""

    likelihood: str
    n_classes: int | None
    description: str
    # Data sets with an official split load one part ("train"/"test") at a time; the others
    # load everything at once and are split by _split_index.
    load_part: Callable[[str, _Where], tuple[Tensor, Tensor]] | None = None
    load_all: Callable[[_Where], Dataset] | None = None
    # Whether the files can be found without downloading (no side effects).
    present: Callable[[_Where], bool] = lambda where: True
    # The true hierarchy over the classes (Dataset.tree) of a data set loaded by parts.
    label_tree: Callable[[], nx.DiGraph] | None = None


_REGISTRY: dict[str, _Spec] = {
    "20newsgroups": _Spec(
        "gaussian",
        20,
        f"20 Newsgroups (bydate), TF-IDF of {NEWSGROUPS_VOCABULARY} terms, 11,314 train + 7,532 test",
        load_part=_load_newsgroups,
        present=_newsgroups_present,
        label_tree=newsgroups_hierarchy,
    ),
    "digits": _Spec(
        "bernoulli", 10, "scikit-learn 8x8 digits, 1,797 images", load_all=_load_digits
    ),
    "mnist": _Spec(
        "bernoulli",
        10,
        "MNIST 28x28 digits, 60,000 train + 10,000 test",
        load_part=_load_mnist_like("mnist", "MNIST"),
        present=_mnist_like_present("mnist", "MNIST"),
    ),
    "fashion_mnist": _Spec(
        "bernoulli",
        10,
        "Fashion-MNIST 28x28 clothes, 60,000 train + 10,000 test",
        load_part=_load_mnist_like("fashion_mnist", "FashionMNIST"),
        present=_mnist_like_present("fashion_mnist", "FashionMNIST"),
    ),
    "usps": _Spec(
        "bernoulli",
        10,
        "USPS 16x16 digits, 7,291 train + 2,007 test",
        load_part=_load_usps,
        present=_usps_present,
    ),
    "cifar10": _Spec(
        "gaussian",
        10,
        "CIFAR-10 32x32 colour, 50,000 train + 10,000 test",
        load_part=_load_cifar("cifar10", "CIFAR10"),
        present=_cifar_present("cifar10", "CIFAR10"),
    ),
    "cifar100": _Spec(
        "gaussian",
        100,
        "CIFAR-100 32x32 colour (fine labels), 50,000 train + 10,000 test",
        load_part=_load_cifar("cifar100", "CIFAR100"),
        present=_cifar_present("cifar100", "CIFAR100"),
    ),
    "synthetic_tree": _Spec(
        "gaussian",
        None,
        "synthetic_tree() with its default arguments",
        load_all=lambda where: synthetic_tree(),
    ),
}


def _canonical_name(name: str) -> str:
    """Map a user-given name to a registry key: case-insensitive, '-' and '_' interchangeable.

    Separators are ignored altogether, so ``"CIFAR-10"``, ``"FashionMNIST"`` and
    ``"fashion-mnist"`` all resolve.
    """
    if not isinstance(name, str):
        raise ValueError(
            f"data set name must be a string, got {name!r}; "
            f"valid names are: {', '.join(list_datasets())}"
        )
    key = re.sub(r"[-_\s]", "", name.lower())
    for canonical in _REGISTRY:
        if canonical.replace("_", "") == key:
            return canonical
    raise ValueError(f"unknown data set {name!r}; valid names are: {', '.join(list_datasets())}")


def list_datasets(available: bool = False, root: str | os.PathLike | None = None) -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted.

    Parameters
    ----------
    available : bool, optional
        If true, list only the data sets that can be loaded now without downloading (found in
        the data root or the cache).
    root : str or path-like, optional
        Data root to check when ``available`` is true (see :func:`resolve_data_root`).
    """
    names = sorted(_REGISTRY)
    if not available:
        return names
    where = _Where(resolve_data_root(root), _data_root_origin(root), resolve_cache_dir(), False)
    return [name for name in names if _REGISTRY[name].present(where)]


def _split_index(n: int, split: str) -> np.ndarray:
    """Indices of the fixed ``split`` of a data set without an official one (see TEST_FRACTION)."""
    order = np.random.RandomState(SPLIT_SEED).permutation(n)
    n_test = int(round(TEST_FRACTION * n))
    chosen = order[n - n_test :] if split == "test" else order[: n - n_test]
    return np.sort(chosen)


def load_dataset(
    name: str = "digits",
    root: str | os.PathLike | None = None,
    split: str = "all",
    download: bool = False,
    n_samples: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Load a named data set as float32 tensors in [0, 1].

    Parameters
    ----------
    name : str, optional
        One of :func:`list_datasets` (case-insensitive; ``-`` and ``_`` are interchangeable).
        Defaults to ``"digits"``, which ships with scikit-learn.
    root : str or path-like, optional
        Data root holding ``<name>/`` in the original distribution format; defaults to
        ``$PYRO_HC_DATA``, else ``~/.cache/pyro_hc``. Never written to.
    split : {"all", "train", "test"}, optional
        Official split where the data set has one (``"all"`` is train followed by test);
        otherwise the fixed split described at :data:`TEST_FRACTION`.
    download : bool, optional
        Let torchvision download a missing data set into the cache. Tests never do.
    n_samples : int, optional
        Keep a fixed random subset of this many samples of the split (the first ``n_samples``
        of ``RandomState(SPLIT_SEED).permutation``, in original order). Handy for quick runs.
    cache_dir : str or path-like, optional
        Writable folder for unpacked files and downloads; defaults to ``$PYRO_HC_CACHE``, else
        ``~/.cache/pyro_hc``.

    Returns
    -------
    Dataset
        Images come as ``N x C x H x W``.

    Raises
    ------
    ValueError
        For an unknown name (listing the valid ones), split or an invalid ``n_samples``.
    FileNotFoundError
        When the files are missing, naming every path searched and how to provide them.
    """
    canonical = _canonical_name(name)
    split = _check_choice(split, SPLITS, "split")
    if n_samples is not None and (
        isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1
    ):
        raise ValueError(f"n_samples must be a positive integer or None, got {n_samples!r}")
    spec = _REGISTRY[canonical]
    where = _Where(
        resolve_data_root(root),
        _data_root_origin(root),
        resolve_cache_dir(cache_dir),
        bool(download),
    )

    if spec.load_all is not None:
        dataset = spec.load_all(where)
        if split != "all":
            dataset = dataset.subset(torch.from_numpy(_split_index(len(dataset), split)))
    else:
        assert spec.load_part is not None
        parts = [
            spec.load_part(part, where)
            for part in (("train", "test") if split == "all" else (split,))
        ]
        x = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
        y = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        dataset = Dataset(
            x=x, y=y, name=canonical, likelihood=spec.likelihood, n_classes=spec.n_classes,
            tree=None if spec.label_tree is None else spec.label_tree(),
        )

    if n_samples is not None:
        if n_samples > len(dataset):
            raise ValueError(
                f"n_samples={n_samples} exceeds the {len(dataset)} samples of {canonical}/{split}"
            )
        keep = np.sort(np.random.RandomState(SPLIT_SEED).permutation(len(dataset))[:n_samples])
        dataset = dataset.subset(torch.from_numpy(keep))
    return dataset


# ---------------------------------------------------------------------------------------------
# synthetic hierarchy
# ---------------------------------------------------------------------------------------------


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _sibling_directions(rng: np.random.RandomState, branching: int, latent_dim: int) -> np.ndarray:
    """Unit vectors, one per child, that sum to (nearly) zero.

    When ``branching <= latent_dim`` they are the vertices of a randomly rotated regular
    simplex (all pairwise angles equal, so no two siblings are accidentally close and the
    parent mean is exactly the centroid of its children); otherwise centred random directions.
    """
    if branching <= latent_dim:
        basis, _ = np.linalg.qr(rng.standard_normal((latent_dim, latent_dim)))
        vectors = basis[:, :branching].T
    else:
        vectors = rng.standard_normal((branching, latent_dim))
    vectors = vectors - vectors.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _children_counts(tree: Any) -> list[int]:
    """Number of children of every node, in breadth-first order (root first), of a tree spec.

    A spec is a leaf (``0`` or an empty list), an integer ``n >= 2`` (a node with ``n`` leaf
    children) or a list of specs (a node with those children, left to right). The root must have
    children.
    """

    def is_count(spec: Any) -> bool:
        return isinstance(spec, (int, np.integer)) and not isinstance(spec, bool)

    if not (is_count(tree) or isinstance(tree, (list, tuple))) or tree in (0, [], ()):
        raise ValueError(
            "tree must be an integer >= 2 (a root with that many leaves) or a list of subtrees "
            f"(each 0 for a leaf, an integer >= 2 for a node with that many leaves, or a list), got {tree!r}"
        )
    counts, queue = [], deque([tree])
    while queue:
        spec = queue.popleft()
        if is_count(spec) and spec == 0 or isinstance(spec, (list, tuple)) and len(spec) == 0:
            counts.append(0)
        elif is_count(spec) and spec >= 2:
            counts.append(int(spec))
            queue.extend([0] * int(spec))
        elif isinstance(spec, (list, tuple)) and len(spec) >= 2:
            counts.append(len(spec))
            queue.extend(spec)
        else:
            raise ValueError(
                f"tree: every internal node needs at least 2 children and a leaf is 0 or []; got the subtree {spec!r}"
            )
    return counts


def synthetic_tree(
    depth: int | None = None,
    branching: int | None = None,
    latent_dim: int = 10,
    n_features: int = 50,
    n_per_leaf: int = 100,
    separation: float = 8.0,
    noise: float = 0.5,
    seed: int = 0,
    *,
    tree: int | Sequence[Any] | None = None,
    n_per_internal: int = 0,
) -> Dataset:
    """Draw a data set from a known hierarchical Gaussian mixture.

    By default the true tree is complete: the root (level 0, mean 0) has ``branching`` children,
    each of those ``branching`` children, and so on down to the leaves at level ``depth``;
    ``tree`` gives any other shape (unbalanced trees). A node at level ``l`` sits at distance
    ``separation / 2**(l - 1)`` from its parent, in a direction that places siblings
    symmetrically around it, so clusters split coarse-to-fine and the hierarchy is visible in the
    data. Leaf points are ``z ~ N(leaf_mean, noise**2 I)``; with ``n_per_internal > 0`` every
    internal node (the root included) emits points too, ``z ~ N(node_mean, noise**2 I)``: HCRL's
    premise that each node of the hierarchy generates data, its internal nodes the blends of their
    subtrees (an internal mean is the centroid of its children's). The points are mapped by a
    fixed random decoder, ``x = sigmoid(W2 tanh(W1 z / s + b1) + b2)`` (``s`` the root-mean-square
    norm of a deepest leaf's ``z``, so the tanh layer neither saturates nor stays linear), to
    ``n_features`` values in ``(0, 1)``.

    Parameters
    ----------
    depth : int, optional
        Levels below the root (>= 1) of the complete tree; there are ``branching**depth``
        leaves. Default 3. Not with ``tree``.
    branching : int, optional
        Children per internal node (>= 2) of the complete tree. Default 2. Not with ``tree``.
    latent_dim : int, optional
        Dimension of the latent space holding the node means.
    n_features : int, optional
        Dimension of the observed data.
    n_per_leaf : int, optional
        Points drawn per leaf.
    separation : float, optional
        Parent-to-child distance at level 1 (> 0); halves at every level below.
    noise : float, optional
        Standard deviation of the points around their node's mean in latent space (>= 0).
    seed : int, optional
        Seed of the ``numpy.random.RandomState`` that draws everything. The tree and decoder are
        drawn before the points, so changing ``n_per_leaf``, ``n_per_internal`` or ``noise``
        keeps them.
    tree : int or nested list, optional
        The shape of the true tree, for unbalanced hierarchies: the list of the root's subtrees,
        left to right, each ``0`` (a leaf), an integer ``n >= 2`` (a node with ``n`` leaves) or
        again a list of subtrees. ``[4, 2, 0]`` is a root with a 4-leaf group, a 2-leaf group
        and a single leaf at level 1; ``[[2, 2], 3]`` has leaves at levels 3 and 2. An integer
        ``n`` alone is a root with ``n`` leaves. The complete tree of ``depth`` and
        ``branching`` is ``tree=[[b] * b] * b`` for ``depth=3``.
    n_per_internal : int, optional
        Points drawn at every internal node, the root included (>= 0). 0 (the default) draws at
        the leaves only.

    Returns
    -------
    Dataset
        Named ``"synthetic_tree"``, likelihood ``"gaussian"``, ``x`` of shape
        ``(n_leaves * n_per_leaf + n_internal * n_per_internal, n_features)`` in shuffled order,
        ``y`` the class of the node that drew each point: leaves ``0 .. n_leaves - 1``, numbered
        left to right (depth first), then, with ``n_per_internal > 0``, the internal nodes
        ``n_leaves .. n_leaves + n_internal - 1`` in breadth-first order (the root is
        ``n_leaves``); ``n_classes`` the number of those classes. ``tree`` is a
        ``networkx.DiGraph`` with root 0, node ids in breadth-first order, node attributes
        ``"mean"`` (list of floats) and ``"level"``, and ``"label"`` (the class) on every node
        that draws points: the leaves, and the internal nodes when ``n_per_internal > 0`` (a
        true cluster of :func:`pyro_hc.metrics.hierarchical_f_score` is then a node's own points
        plus its descendants'). Its graph attributes record ``depth`` (the deepest leaf's
        level), ``branching`` (``None`` when internal nodes differ), ``separation``, ``noise``
        and ``n_per_internal``. ``latent`` holds the ``latent_dim``-dimensional points ``z``
        before the decoder (for oracle baselines).

    Raises
    ------
    ValueError
        For an argument out of range, a malformed ``tree`` or ``tree`` given with ``depth`` or
        ``branching``.
    """
    if tree is not None:
        if depth is not None or branching is not None:
            raise ValueError("give either tree or depth/branching, not both: tree fixes the whole shape")
        children_counts = _children_counts(tree)
    else:
        depth = _check_int(3 if depth is None else depth, "depth", 1)
        branching = _check_int(2 if branching is None else branching, "branching", 2)
        n_internal = sum(branching**level for level in range(depth))
        children_counts = [branching] * n_internal + [0] * branching**depth
    latent_dim = _check_int(latent_dim, "latent_dim", 1)
    n_features = _check_int(n_features, "n_features", 1)
    n_per_leaf = _check_int(n_per_leaf, "n_per_leaf", 1)
    n_per_internal = _check_int(n_per_internal, "n_per_internal", 0)
    seed = _check_int(seed, "seed", 0)
    if not (isinstance(separation, (int, float)) and math.isfinite(separation) and separation > 0):
        raise ValueError(f"separation must be a finite number > 0, got {separation!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    # RandomState's stream is frozen across numpy versions, so a seed names one data set forever.
    rng = np.random.RandomState(seed)

    # Breadth first: the nodes of one level draw their children's directions in turn, as the
    # complete tree always did, so a seed keeps naming the same complete tree.
    internal_counts = {count for count in children_counts if count}
    graph = nx.DiGraph(
        depth=0,
        branching=internal_counts.pop() if len(internal_counts) == 1 else None,
        separation=float(separation),
        noise=float(noise),
        n_per_internal=n_per_internal,
    )
    means = {0: np.zeros(latent_dim)}
    graph.add_node(0, mean=means[0].tolist(), level=0)
    for parent, n_children in enumerate(children_counts):
        if not n_children:
            continue
        level = graph.nodes[parent]["level"] + 1
        step = separation / 2 ** (level - 1)
        for direction in _sibling_directions(rng, n_children, latent_dim):
            child = graph.number_of_nodes()
            means[child] = means[parent] + step * direction
            graph.add_node(child, mean=means[child].tolist(), level=level)
            graph.add_edge(parent, child)
    depth = max(level for _, level in graph.nodes(data="level"))
    graph.graph["depth"] = depth
    # Leaves numbered left to right: depth first, children in id order.
    leaves = [node for node in nx.dfs_preorder_nodes(graph, 0) if graph.out_degree(node) == 0]
    internal = [node for node in graph if graph.out_degree(node) > 0]  # breadth first: ids ascend
    emitting = leaves + (internal if n_per_internal else [])
    for label, node in enumerate(emitting):
        graph.nodes[node]["label"] = label

    hidden_dim = max(32, 2 * latent_dim)
    w1 = rng.standard_normal((latent_dim, hidden_dim))
    b1 = 0.5 * rng.standard_normal(hidden_dim)
    # Output gain 2 gives logits of standard deviation ~1.3: most of the sigmoid's range is used
    # without piling values up against 0 and 1.
    w2 = 2.0 * rng.standard_normal((hidden_dim, n_features)) / math.sqrt(hidden_dim)
    b2 = 0.5 * rng.standard_normal(n_features)
    # Expected squared norm of a deepest leaf's z: the offsets of all levels (independent
    # directions) plus noise.
    z_scale = math.sqrt(
        sum((separation / 2 ** (lv - 1)) ** 2 for lv in range(1, depth + 1)) + latent_dim * noise**2
    )

    node_means = np.stack([means[node] for node in emitting])
    labels = np.repeat(np.arange(len(leaves)), n_per_leaf)
    if n_per_internal:
        labels = np.concatenate([labels, np.repeat(np.arange(len(leaves), len(emitting)), n_per_internal)])
    z = node_means[labels] + noise * rng.standard_normal((labels.size, latent_dim))
    order = rng.permutation(labels.size)
    z, labels = z[order], labels[order]

    logits = np.tanh(z / z_scale @ w1 + b1) @ w2 + b2
    x = 1.0 / (1.0 + np.exp(-logits))
    return Dataset(
        x=torch.as_tensor(x, dtype=torch.float32),
        y=torch.as_tensor(labels, dtype=torch.long),
        name="synthetic_tree",
        likelihood="gaussian",
        n_classes=len(emitting),
        tree=graph,
        latent=torch.as_tensor(z, dtype=torch.float32),
    )


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class DeviceBatcher:
    """Mini-batches of indices generated on the training device.

    Move the data set to the device once (:meth:`Dataset.to`), then index it with the batches
    this yields; nothing crosses the host-device boundary per step, unlike a ``DataLoader``.

    Parameters
    ----------
    n_samples : int
        Size of the data set (>= 1).
    batch_size : int
        Indices per batch (>= 1). A larger value than ``n_samples`` gives one full batch.
    device : str or torch.device, optional
        Device of the yielded index tensors.
    shuffle : bool, optional
        Draw a fresh permutation every epoch (with ``torch.randperm`` on ``device``); otherwise
        yield ``0 .. n_samples - 1`` in order.
    drop_last : bool, optional
        Skip the final batch when it is smaller than ``batch_size``.
    seed : int or torch.Generator, optional
        Seed of a private generator, or a generator on ``device`` to draw from. With ``None``
        the private generator is seeded from torch's global generator, so ``torch.manual_seed``
        still makes runs reproducible.

    Raises
    ------
    ValueError
        For ``n_samples < 1``, ``batch_size < 1``, ``drop_last`` with ``batch_size >
        n_samples`` (an epoch would be empty) or a generator on another device.

    Examples
    --------
    >>> data = load_dataset("digits").to("cpu")
    >>> batcher = DeviceBatcher(len(data), batch_size=256, seed=0)
    >>> for index in batcher:
    ...     batch = data.x[index]
    """

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int | torch.Generator | None = None,
    ) -> None:
        self.n_samples = _check_int(n_samples, "n_samples", 1)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.device = torch.device(device)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if self.drop_last and self.batch_size > self.n_samples:
            raise ValueError(
                f"drop_last=True with batch_size={self.batch_size} > n_samples={self.n_samples} "
                "would give epochs without a single batch"
            )
        if isinstance(seed, torch.Generator):
            if not _same_device(seed.device, self.device):
                raise ValueError(
                    f"the generator lives on {seed.device} but the batcher on {self.device}"
                )
            self.generator = seed
        elif seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
            if seed is None:
                # Seed from the global generator so torch.manual_seed governs unseeded batchers.
                seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(int(seed))
        else:
            raise TypeError(
                f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}"
            )

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.n_samples // self.batch_size
        return -(-self.n_samples // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            order = torch.randperm(self.n_samples, generator=self.generator, device=self.device)
        else:
            order = torch.arange(self.n_samples, device=self.device)
        stop = len(self) * self.batch_size if self.drop_last else self.n_samples
        for start in range(0, stop, self.batch_size):
            yield order[start : start + self.batch_size]

    def __repr__(self) -> str:
        return (
            f"DeviceBatcher(n_samples={self.n_samples}, batch_size={self.batch_size}, "
            f"device={self.device}, shuffle={self.shuffle}, drop_last={self.drop_last})"
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Generator state, so that a resumed run continues the same sequence of epochs."""
        return {"generator_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.generator.set_state(state["generator_state"])
