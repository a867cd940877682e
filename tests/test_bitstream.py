import struct
import zlib

import numpy as np
import pytest

from ralhe_me.decode.bitstream import (FORMAT_VERSION, MAGIC, BadMagicError, BitstreamError, ChecksumError,
                                       Container, CorruptDataError, TruncatedFileError, UnsupportedVersionError,
                                       pack, unpack)


def _example():
    rng = np.random.default_rng(0)
    return Container(header={"n": 123, "depth": 10, "attributes": ["sh0", "opacity"], "step": 0.25},
                     sections={"positions": rng.bytes(300), "covariance": rng.bytes(50), "empty": b""})


def test_round_trip_exact():
    c = _example()
    data = pack(c)
    back = unpack(data)
    assert back.header == c.header and back.sections == c.sections
    assert list(back.sections) == list(c.sections)
    assert pack(back) == data
    assert sum(s for _, s in c.section_sizes()) + 10 == len(data)


def test_named_errors():
    data = pack(_example())
    with pytest.raises(BadMagicError):
        unpack(b"PLY" + data[3:])
    with pytest.raises(BadMagicError):
        unpack(b"")
    bumped = data[:6] + struct.pack("<H", FORMAT_VERSION + 1) + data[8:]
    with pytest.raises(UnsupportedVersionError, match=f"version {FORMAT_VERSION + 1}"):
        unpack(bumped)
    with pytest.raises(UnsupportedVersionError, match="version 0 .* reads versions 1 to 3"):
        unpack(data[:6] + struct.pack("<H", 0) + data[8:])
    assert unpack(data).version == FORMAT_VERSION == 3
    old = unpack(data[:6] + struct.pack("<H", 1) + data[8:])  # files written before masked weights
    assert old.version == 1 and old.sections == unpack(data).sections
    with pytest.raises(TruncatedFileError, match="truncated"):
        unpack(data[:-1])
    flipped = bytearray(data)
    flipped[-20] ^= 0x10
    with pytest.raises(ChecksumError, match="section 'covariance'"):
        unpack(bytes(flipped))
    with pytest.raises(CorruptDataError, match="unexpected bytes"):
        unpack(data + b"\x00")
    with pytest.raises(CorruptDataError, match="no 'colors' section"):
        unpack(data).section("colors")


def test_header_must_be_json_dict():
    bad = zlib.compress(b"[1, 2]")
    raw = MAGIC + struct.pack("<HH", FORMAT_VERSION, 1) + bytes([6]) + b"header" + struct.pack(
        "<II", len(bad), zlib.crc32(bad)) + bad
    with pytest.raises(CorruptDataError, match="not a dictionary"):
        unpack(raw)


def test_fuzz_container_only_raises_named_errors():
    data = pack(_example())
    rng = np.random.default_rng(1)
    outcomes = {"ok": 0, "error": 0}
    for trial in range(400):
        buf = bytearray(data)
        kind = trial % 4
        if kind == 0:  # bit flips
            for _ in range(rng.integers(1, 4)):
                buf[rng.integers(len(buf))] ^= 1 << rng.integers(8)
        elif kind == 1:  # truncation
            buf = buf[: rng.integers(len(buf))]
        elif kind == 2:  # splice a chunk elsewhere
            a, b = sorted(rng.integers(0, len(buf), 2))
            at = rng.integers(len(buf))
            buf = buf[:at] + buf[a:b] + buf[at:]
        else:  # random garbage after a valid prefix
            cut = rng.integers(len(buf))
            buf = buf[:cut] + bytearray(rng.bytes(rng.integers(1, 40)))
        try:
            back = unpack(bytes(buf))
            assert back.header == _example().header
            outcomes["ok"] += 1
        except BitstreamError:
            outcomes["error"] += 1
    assert outcomes["error"] > 300
