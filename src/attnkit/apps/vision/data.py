"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, read with a small IDX reader.

The files are ``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
(60,000 training and 10,000 test images of 28x28 grey pixels, 10 balanced classes; MIT licence,
Zalando). ``ATTNKIT_FASHION_MNIST`` points elsewhere.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import torch
from torch import Tensor

from ...errors import AttnKitError

__all__ = ["CLASSES", "DataMissing", "fashion_dir", "read_idx", "load_fashion_mnist", "data_status", "require_data"]

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_DTYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32, 0x0D: torch.float32,
           0x0E: torch.float64}
INSTALL = "make data (or: apt-get install dataset-fashion-mnist)"


class DataMissing(AttnKitError):
    """A data set or the package that provides it is not installed; the message names the command."""


def fashion_dir() -> Path:
    """The folder holding the four Fashion-MNIST files."""
    return Path(os.environ.get("ATTNKIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def read_idx(path: str | Path) -> Tensor:
    """The array stored in an IDX file (gzip-compressed or not), as a tensor of its own dtype.

    IDX: two zero bytes, a type byte, the number of dimensions, each dimension as a big-endian u32,
    then the values, big-endian. A truncated or malformed file raises an error naming it.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _DTYPES:
        raise AttnKitError(f"{path}: not an IDX file (header {raw[:4]!r}); expected 0x0000, a type byte, a rank byte")
    dtype, rank = _DTYPES[raw[2]], raw[3]
    head = 4 + 4 * rank
    if len(raw) < head:
        raise AttnKitError(f"{path}: truncated IDX header ({len(raw)} bytes); expected at least {head}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    n = 1
    for d in dims:
        n *= d
    size = n * torch.empty((), dtype=dtype).element_size()
    if len(raw) - head != size:
        raise AttnKitError(f"{path}: {len(raw) - head} bytes of values; expected {size} for shape {tuple(dims)}")
    values = torch.frombuffer(bytearray(raw[head:]), dtype=torch.uint8)
    if dtype.itemsize > 1:  # big-endian on disk
        values = values.view(-1, dtype.itemsize).flip(1).reshape(-1)
    return values.view(dtype).reshape(dims)


def load_fashion_mnist(split: str) -> tuple[Tensor, Tensor]:
    """``(images (N, 28, 28) uint8, labels (N,) int64)`` of the ``"train"`` (60,000) or ``"test"`` (10,000) split."""
    if split not in _FILES:
        raise AttnKitError(f"split {split!r} is not known; expected 'train' or 'test'")
    require_data("fashion-mnist")
    images, labels = (read_idx(fashion_dir() / name) for name in _FILES[split])
    if images.shape[0] != labels.shape[0]:
        raise AttnKitError(f"{fashion_dir()}: {images.shape[0]} images but {labels.shape[0]} labels in {split!r}")
    return images, labels.long()


def _present() -> bool:
    return all((fashion_dir() / name).is_file() for pair in _FILES.values() for name in pair)


def data_status() -> dict[str, str]:
    """Per data set: ``"installed"`` or the command that installs it."""
    return {"fashion-mnist": "installed" if _present() else f"missing: run {INSTALL}"}


def require_data(data: str = "fashion-mnist") -> None:
    """A :class:`DataMissing` naming the install command when Fashion-MNIST is not installed."""
    if not _present():
        raise DataMissing(f"Fashion-MNIST is not installed in {fashion_dir()}; expected the Debian package "
                          f"dataset-fashion-mnist: run {INSTALL}")
