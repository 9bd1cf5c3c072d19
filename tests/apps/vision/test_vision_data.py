"""Fashion-MNIST's IDX reader: the installed files' shapes and balanced labels, and malformed files."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

from attnkit.apps.vision import data
from attnkit.errors import AttnKitError


def test_splits_have_known_shapes_and_balanced_labels(need_data):
    need_data(data.data_status()["fashion-mnist"] == "installed", "Debian dataset-fashion-mnist", "make data")
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = data.load_fashion_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert torch.bincount(labels, minlength=10).tolist() == [n // 10] * 10
        assert int(images.max()) == 255 and int(images.min()) == 0
    assert len(data.CLASSES) == 10


def _idx(type_byte: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, type_byte, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def test_reader_round_trips_gzip_and_big_endian(tmp_path):
    values = torch.arange(6, dtype=torch.int32).view(2, 3) * 1000 - 2500
    raw = _idx(0x0C, (2, 3), b"".join(struct.pack(">i", v) for v in values.flatten().tolist()))
    (tmp_path / "a.idx").write_bytes(raw)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
    for name in ("a.idx", "a.idx.gz"):
        got = data.read_idx(tmp_path / name)
        assert got.dtype == torch.int32 and torch.equal(got, values)
    (tmp_path / "u8").write_bytes(_idx(0x08, (4,), bytes([1, 2, 3, 250])))
    assert data.read_idx(tmp_path / "u8").tolist() == [1, 2, 3, 250]


@pytest.mark.parametrize("raw,words", [
    (b"\x00", "not an IDX file"),
    (b"PK\x03\x04rest", "not an IDX file"),
    (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "not an IDX file"),  # unknown type byte
    (bytes([0, 0, 0x08, 3, 0, 0, 0, 2]), "truncated IDX header"),
    (_idx(0x08, (2, 3), bytes(5)), "5 bytes of values; expected 6 for shape \\(2, 3\\)"),
    (_idx(0x08, (2, 3), bytes(7)), "7 bytes of values"),
])
def test_malformed_files_are_refused_naming_the_file(tmp_path, raw, words):
    path = tmp_path / "bad-ubyte"
    path.write_bytes(raw)
    with pytest.raises(AttnKitError, match=words) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_missing_data_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKIT_FASHION_MNIST", str(tmp_path))
    assert data.data_status()["fashion-mnist"].startswith("missing: run make data")
    with pytest.raises(data.DataMissing, match="make data"):
        data.require_data("fashion-mnist")
    with pytest.raises(data.DataMissing):
        data.load_fashion_mnist("test")
    with pytest.raises(AttnKitError, match="split 'valid' is not known"):
        data.load_fashion_mnist("valid")
