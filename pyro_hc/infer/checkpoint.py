"""Model and checkpoint files: one ``torch.save`` dict behind a checksummed header, written atomically.

A file is ``MAGIC`` (8 bytes), the SHA-256 of the payload (32 bytes), the payload's length (8 bytes,
little endian) and the payload (``torch.save`` of a dict of tensors and plain containers). Reading
checks all three before unpickling anything, so a damaged, truncated, empty or foreign file is
named as such by one exception, :class:`ModelFileError`, instead of loading with silently changed
weights or failing deep inside ``torch.load``. Files written before the header existed (a bare
``torch.save`` zip) still load; they have no checksum to verify.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "ModelFileError"]

MAGIC = b"PYROHC\x00\x01"
_HEADER = len(MAGIC) + 32 + 8
_ZIP_MAGIC = b"PK\x03\x04"


class ModelFileError(ValueError):
    """A model or checkpoint file that cannot be read: empty, truncated, damaged, or not a pyro_hc file.

    ``path`` is the file, ``reason`` a short word for what is wrong with it (``"empty"``,
    ``"truncated"``, ``"damaged"``, ``"text"``, ``"foreign"``, ``"mismatch"``).
    """

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path} is {detail}")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` (parent folders created) via a temporary file and a rename.

    An interruption at any point (a Ctrl-C lands between any two bytecodes) leaves either the old
    file or the new one, never half a file, and no temporary file behind.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()

    def write(out) -> None:
        out.write(MAGIC + hashlib.sha256(body).digest() + len(body).to_bytes(8, "little"))
        out.write(body)

    return atomic_write(path, write)


def _describe_unknown(path: Path, head: bytes) -> ModelFileError:
    try:
        head.decode("utf-8")
        return ModelFileError(path, "text", "a text file, not a pyro_hc model file")
    except UnicodeDecodeError:
        return ModelFileError(path, "foreign", "not a pyro_hc model file (no pyro_hc header)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_checkpoint`, verifying its length and checksum.

    Raises ``FileNotFoundError`` when it is missing and :class:`ModelFileError` when it cannot be
    read (empty, truncated, damaged, text or foreign).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_file():
        raise ModelFileError(path, "foreign", "not a file (a folder?); expected a pyro_hc model file")
    data = path.read_bytes()
    if not data:
        raise ModelFileError(path, "empty", "empty (0 bytes): not a pyro_hc model file")
    if data.startswith(MAGIC):
        if len(data) < _HEADER:
            raise ModelFileError(path, "truncated", f"truncated ({len(data)} bytes, shorter than its header)")
        digest, length = data[len(MAGIC):len(MAGIC) + 32], int.from_bytes(data[len(MAGIC) + 32:_HEADER], "little")
        body = data[_HEADER:]
        if len(body) < length:
            raise ModelFileError(path, "truncated", f"truncated ({len(body)} of its {length} payload bytes)")
        if len(body) > length:
            raise ModelFileError(path, "damaged", f"damaged ({len(body) - length} bytes more than its header says)")
        if hashlib.sha256(body).digest() != digest:
            raise ModelFileError(path, "damaged", "damaged: its SHA-256 checksum does not match its contents")
    elif data.startswith(_ZIP_MAGIC):
        body = data  # a file from before the checksummed header: nothing to verify
    else:
        raise _describe_unknown(path, data[:256])
    try:
        # weights_only: checkpoints hold tensors and plain containers only (tree and history as JSON data)
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch raises for a bad archive, name the file
        raise ModelFileError(path, "damaged", f"damaged or not a pyro_hc model file ({type(err).__name__}: "
                                              f"{str(err).splitlines()[0][:200] if str(err) else ''})") from err
    if not isinstance(payload, dict):
        raise ModelFileError(path, "foreign", f"not a pyro_hc model file (it holds a {type(payload).__name__})")
    return payload
