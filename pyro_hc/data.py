"""Data sets, validation and on-device mini-batching.

Every loader returns a :class:`Dataset` whose ``x`` is a ``float32`` tensor with values in
``[0, 1]`` (``N x D`` for vectors, ``N x C x H x W`` for images) and whose ``y`` holds the class
labels as a ``long`` tensor.

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
- ``cifar100/``: the ``cifar-100-python`` folder or the ``cifar-100-python.tar.gz`` archive.

The data root is never written to (it may be a read-only shared copy). Whatever has to be
unpacked goes to the *cache*: the environment variable ``PYRO_HC_CACHE``, else
``~/.cache/pyro_hc``. MNIST-like files from a data root are decompressed once into
``<cache>/unpacked/<name>-<key>/MNIST/raw/`` (``FashionMNIST``), the layout torchvision reads, with
``<key>`` a hash of the source folder: each root has its own copy, so loading from one root never
replaces another's, and an empty or mistyped root is reported as missing rather than served
whatever was unpacked last. Each file is checked (gzip stream, IDX header and length) before it
replaces a cached copy, so a corrupt source never overwrites a good copy; ``<cache>/MNIST/raw/``
itself holds torchvision downloads only. CIFAR
archives are extracted into ``<cache>/<name>/``. ``download=True`` lets torchvision download a
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
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Dataset",
    "DeviceBatcher",
    "LIKELIHOODS",
    "SPLITS",
    "TEST_FRACTION",
    "list_datasets",
    "load_dataset",
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
    """

    x: Tensor
    y: Tensor | None
    name: str
    likelihood: str
    image_shape: tuple[int, int, int] | None = None
    n_classes: int | None = None
    tree: nx.DiGraph | None = None
    latent: Tensor | None = None

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

    def to(self, device: str | torch.device) -> Dataset:
        """Return a copy whose ``x``, ``y`` (and ``latent``) live on ``device``.

        Move the whole data set once, then index it with :class:`DeviceBatcher` batches, so
        that training never copies data between host and device.
        """
        y = None if self.y is None else self.y.to(device)
        latent = None if self.latent is None else self.latent.to(device)
        return dataclasses.replace(self, x=self.x.to(device), y=y, latent=latent)


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
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        opener: Callable[..., Any] = gzip.open if source.suffix == ".gz" else open
        try:
            with opener(source, "rb") as fin, os.fdopen(handle, "wb") as fout:
                shutil.copyfileobj(fin, fout, length=1 << 22)
        except (OSError, EOFError, ValueError) as err:  # gzip.BadGzipFile is an OSError; zlib.error too
            raise ValueError(f"{source} is damaged or truncated (cannot decompress it: {err}); "
                             f"the cached copy {target} was left as it was") from err
        if check is not None:
            check(source, Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; a shared cache should stay readable
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    stamp.write_text(json.dumps(record))


def _extract_tar(archive: Path, destination: Path, member_folder: str) -> None:
    """Extract ``archive`` so that ``destination / member_folder`` appears atomically."""
    destination.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=destination, prefix=".extract."))
    try:
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


_REGISTRY: dict[str, _Spec] = {
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
            x=x, y=y, name=canonical, likelihood=spec.likelihood, n_classes=spec.n_classes
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


def synthetic_tree(
    depth: int = 3,
    branching: int = 2,
    latent_dim: int = 10,
    n_features: int = 50,
    n_per_leaf: int = 100,
    separation: float = 8.0,
    noise: float = 0.5,
    seed: int = 0,
) -> Dataset:
    """Draw a data set from a known hierarchical Gaussian mixture.

    The true tree is complete: the root (level 0, mean 0) has ``branching`` children, each of
    those ``branching`` children, and so on down to the leaves at level ``depth``. A node at
    level ``l`` sits at distance ``separation / 2**(l - 1)`` from its parent, so clusters split
    coarse-to-fine and the hierarchy is visible in the data. Leaf points are
    ``z ~ N(leaf_mean, noise**2 I)``; they are mapped by a fixed random decoder,
    ``x = sigmoid(W2 tanh(W1 z / s + b1) + b2)`` (``s`` the root-mean-square norm of ``z``,
    so the tanh layer neither saturates nor stays linear), to ``n_features`` values in
    ``(0, 1)``.

    Parameters
    ----------
    depth : int, optional
        Levels below the root (>= 1); there are ``branching**depth`` leaves.
    branching : int, optional
        Children per internal node (>= 2).
    latent_dim : int, optional
        Dimension of the latent space holding the node means.
    n_features : int, optional
        Dimension of the observed data.
    n_per_leaf : int, optional
        Points drawn per leaf.
    separation : float, optional
        Parent-to-child distance at level 1 (> 0); halves at every level below.
    noise : float, optional
        Standard deviation of the points around their leaf mean in latent space (>= 0).
    seed : int, optional
        Seed of the ``numpy.random.RandomState`` that draws everything. The tree and decoder are
        drawn before the points, so changing ``n_per_leaf`` or ``noise`` keeps them.

    Returns
    -------
    Dataset
        Named ``"synthetic_tree"``, likelihood ``"gaussian"``, ``x`` of shape
        ``(branching**depth * n_per_leaf, n_features)`` in shuffled order, ``y`` the leaf label
        ``0 .. n_leaves - 1`` of each point, and ``tree`` a ``networkx.DiGraph`` with root 0,
        node ids in breadth-first order, node attributes ``"mean"`` (list of floats) and
        ``"level"``, and ``"label"`` on the leaves (numbered left to right); ``latent`` the
        ``latent_dim``-dimensional points ``z`` before the decoder (for oracle baselines).
    """
    depth = _check_int(depth, "depth", 1)
    branching = _check_int(branching, "branching", 2)
    latent_dim = _check_int(latent_dim, "latent_dim", 1)
    n_features = _check_int(n_features, "n_features", 1)
    n_per_leaf = _check_int(n_per_leaf, "n_per_leaf", 1)
    seed = _check_int(seed, "seed", 0)
    if not (isinstance(separation, (int, float)) and math.isfinite(separation) and separation > 0):
        raise ValueError(f"separation must be a finite number > 0, got {separation!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    # RandomState's stream is frozen across numpy versions, so a seed names one data set forever.
    rng = np.random.RandomState(seed)

    tree = nx.DiGraph(
        depth=depth, branching=branching, separation=float(separation), noise=float(noise)
    )
    means = {0: np.zeros(latent_dim)}
    tree.add_node(0, mean=means[0].tolist(), level=0)
    frontier = [0]
    for level in range(1, depth + 1):
        step = separation / 2 ** (level - 1)
        next_frontier = []
        for parent in frontier:
            for direction in _sibling_directions(rng, branching, latent_dim):
                child = tree.number_of_nodes()
                means[child] = means[parent] + step * direction
                tree.add_node(child, mean=means[child].tolist(), level=level)
                tree.add_edge(parent, child)
                next_frontier.append(child)
        frontier = next_frontier
    leaves = frontier
    for label, leaf in enumerate(leaves):
        tree.nodes[leaf]["label"] = label

    hidden_dim = max(32, 2 * latent_dim)
    w1 = rng.standard_normal((latent_dim, hidden_dim))
    b1 = 0.5 * rng.standard_normal(hidden_dim)
    # Output gain 2 gives logits of standard deviation ~1.3: most of the sigmoid's range is used
    # without piling values up against 0 and 1.
    w2 = 2.0 * rng.standard_normal((hidden_dim, n_features)) / math.sqrt(hidden_dim)
    b2 = 0.5 * rng.standard_normal(n_features)
    # Expected squared norm of z: the offsets of all levels (independent directions) plus noise.
    z_scale = math.sqrt(
        sum((separation / 2 ** (lv - 1)) ** 2 for lv in range(1, depth + 1)) + latent_dim * noise**2
    )

    leaf_means = np.stack([means[leaf] for leaf in leaves])
    labels = np.repeat(np.arange(len(leaves)), n_per_leaf)
    z = leaf_means[labels] + noise * rng.standard_normal((labels.size, latent_dim))
    order = rng.permutation(labels.size)
    z, labels = z[order], labels[order]

    logits = np.tanh(z / z_scale @ w1 + b1) @ w2 + b2
    x = 1.0 / (1.0 + np.exp(-logits))
    return Dataset(
        x=torch.as_tensor(x, dtype=torch.float32),
        y=torch.as_tensor(labels, dtype=torch.long),
        name="synthetic_tree",
        likelihood="gaussian",
        n_classes=len(leaves),
        tree=tree,
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
