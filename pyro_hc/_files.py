"""The one way pyro_hc replaces a file: write a temporary beside it, then rename it over the target.

Checkpoints and model files (:mod:`pyro_hc.infer.checkpoint`), saved trees (:meth:`ClusterTree.save`),
the data caches (:mod:`pyro_hc.data`) and a CLI run's records all go through :func:`atomic_write`, so
an interruption at any point — a Ctrl-C lands between any two bytecodes, a full disk, a failing
``check`` — leaves the old file (or none) and never half a file, and no temporary behind.
This module imports nothing of pyro_hc: ``tree`` and ``data`` stay free of the engine.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], object], *, text: bool = False,
                 check: Callable[[Path], object] | None = None, permissions: int = 0o644) -> Path:
    """Replace ``path`` by what ``write(handle)`` writes, atomically.

    ``write`` receives a file opened for writing (binary, or UTF-8 text with ``text=True``); the
    file is flushed and synced, then ``check(temporary)`` (if given) may read it and raise to keep
    the old file, then it gets ``permissions`` (a cache or checkpoint stays readable whatever the
    umask) and is renamed over ``path``. Parent folders are created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary's name is fixed before the file exists, so the ``finally`` can remove it wherever
    # an interrupt lands: ``tempfile.mkstemp`` creates the file before it returns the name, and a
    # Ctrl-C in between once left a stray ``.tmp`` beside a checkpoint (seen in CI).
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        # "x": never another writer's file
        with open(temporary, "x" if text else "xb", **({"encoding": "utf-8"} if text else {})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(temporary)
        os.chmod(temporary, permissions)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
