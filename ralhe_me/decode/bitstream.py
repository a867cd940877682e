"""The ``.ralhe`` container: the one place that declares the file layout.

Layout (all integers little-endian)::

    magic      6 bytes  b"RALHE\\x00"
    version    u16      FORMAT_VERSION (written); OLDEST_FORMAT_VERSION..FORMAT_VERSION are read
    count      u16      number of sections
    then ``count`` sections, each:
        name_len u8, name (ASCII), length u32, crc32 u32, payload (``length`` bytes)

The first section is always ``header``: zlib-compressed JSON with everything the decoder
needs (counts, depth J, levels L, attribute list, architectures, quantization steps,
segment length). Every payload has its own CRC-32, so a corrupted file is rejected with a
named error before any decoding work, and a truncated one is noticed when a length runs
past the end.

Versions: 2 lets the decoders section hold masked tensors (pruned decoder branches, see
weights.py); a decoder that reads only version 1 then refuses the file by its version instead of
failing inside that section. 3 lets the header say ``latent_coder`` "static": the latents
section then holds per-level histogram streams instead of ARM-coded latents, and the arms section
is empty (entropy/static_latents.py). Version 1 and 2 files still decode.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

MAGIC = b"RALHE\x00"
FORMAT_VERSION = 3
OLDEST_FORMAT_VERSION = 1
_PREFIX = struct.Struct("<6sHH")
_SECTION = struct.Struct("<II")
MAX_SECTIONS = 64


class BitstreamError(ValueError):
    """A ``.ralhe`` file cannot be decoded; subclasses say why."""


class BadMagicError(BitstreamError):
    """The file does not start with the RALHE magic bytes."""


class UnsupportedVersionError(BitstreamError):
    """The file was written by a format version this decoder does not know."""


class TruncatedFileError(BitstreamError):
    """The file ends before the data its sections announce."""


class ChecksumError(BitstreamError):
    """A section's CRC-32 does not match its payload."""


class CorruptDataError(BitstreamError):
    """The checksums pass but the content is inconsistent (missing section, bad header)."""


@dataclass
class Container:
    """A header dictionary and named binary sections, in file order."""

    header: dict
    sections: Dict[str, bytes] = field(default_factory=dict)
    version: int = FORMAT_VERSION  # the file's (pack writes FORMAT_VERSION)

    def section(self, name: str) -> bytes:
        if name not in self.sections:
            raise CorruptDataError(f"the file has no '{name}' section")
        return self.sections[name]

    def section_sizes(self) -> List[Tuple[str, int]]:
        """(name, bytes on disk including framing) for every section, header first."""
        encoded = encode_header(self.header)
        sizes = [("header", 1 + len("header") + _SECTION.size + len(encoded))]
        for name, payload in self.sections.items():
            sizes.append((name, 1 + len(name) + _SECTION.size + len(payload)))
        return sizes


def encode_header(header: dict) -> bytes:
    return zlib.compress(json.dumps(header, separators=(",", ":"), sort_keys=True).encode(), 9)


def pack(container: Container) -> bytes:
    """Serialize ``container`` to the bytes of a ``.ralhe`` file."""
    if "header" in container.sections:
        raise ValueError("'header' is reserved for the header section")
    items = [("header", encode_header(container.header))] + list(container.sections.items())
    if len(items) > MAX_SECTIONS:
        raise ValueError(f"too many sections ({len(items)} > {MAX_SECTIONS})")
    out = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(items))]
    for name, payload in items:
        raw = name.encode("ascii")
        if not 0 < len(raw) < 256:
            raise ValueError(f"bad section name {name!r}")
        out += [bytes([len(raw)]), raw, _SECTION.pack(len(payload), zlib.crc32(payload)), payload]
    return b"".join(out)


def unpack(data: bytes) -> Container:
    """Parse and verify a ``.ralhe`` file; raise a :class:`BitstreamError` subclass if invalid."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise BadMagicError("not a .ralhe file (wrong magic bytes)")
    if len(data) < _PREFIX.size:
        raise TruncatedFileError(f"file is truncated: {len(data)} bytes, shorter than the file prefix")
    _, version, count = _PREFIX.unpack_from(data, 0)
    if not OLDEST_FORMAT_VERSION <= version <= FORMAT_VERSION:
        raise UnsupportedVersionError(f"format version {version} is not supported (this decoder reads versions "
                                      f"{OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})")
    if not 1 <= count <= MAX_SECTIONS:
        raise CorruptDataError(f"invalid section count {count}")
    pos = _PREFIX.size
    sections: Dict[str, bytes] = {}
    for i in range(count):
        if pos + 1 > len(data):
            raise TruncatedFileError(f"file is truncated in the framing of section {i + 1} of {count}")
        name_len = data[pos]
        end = pos + 1 + name_len + _SECTION.size
        if end > len(data):
            raise TruncatedFileError(f"file is truncated in the framing of section {i + 1} of {count}")
        try:
            name = data[pos + 1: pos + 1 + name_len].decode("ascii")
        except UnicodeDecodeError:
            raise CorruptDataError(f"section {i + 1} has a non-ASCII name") from None
        length, crc = _SECTION.unpack_from(data, pos + 1 + name_len)
        if end + length > len(data):
            raise TruncatedFileError(
                f"file is truncated: section '{name}' needs {length} bytes, {len(data) - end} remain")
        payload = bytes(data[end: end + length])
        if zlib.crc32(payload) != crc:
            raise ChecksumError(f"checksum mismatch in section '{name}'")
        if name in sections:
            raise CorruptDataError(f"section '{name}' appears twice")
        sections[name] = payload
        pos = end + length
    if pos != len(data):
        raise CorruptDataError(f"{len(data) - pos} unexpected bytes after the last section")
    if "header" not in sections or next(iter(sections)) != "header":
        raise CorruptDataError("the first section is not the header")
    try:
        header = json.loads(zlib.decompress(sections.pop("header")))
    except (zlib.error, ValueError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptDataError("the header is not a dictionary")
    return Container(header=header, sections=sections, version=version)
