"""Hostile files, generated at test time (nothing binary is committed to the project).

Each generator builds a valid file of its format whose cost to decode is out of proportion to its
size, or a damaged copy of a good file:

- ``png_bomb`` / ``tiff_bomb`` / ``webp_bomb``: a huge all-black image in a few MB or bytes
  (a deflate stream made of one repeated full-flush block; TIFF strips that all point at one
  compressed row; a VP8L image whose prefix codes have one symbol each, so pixels cost 0 bits);
- ``flat_jpeg``: a grey JPEG of any size with all-zero coefficients and hand-made one-code
  Huffman tables; progressive makes libjpeg buffer every coefficient of the image;
- ``zip_bomb``: a zip (``.npz``) whose member inflates to ``nbytes`` zeros;
- ``truncated_jpeg``: a JPEG cut at a fraction of its length with an end-of-image marker appended
  (libjpeg only warns, and OpenCV returns a half-grey image).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import List, Tuple

CHUNK = 1 << 20


def deflate_zeros(block: int, count: int, *, prefix: bytes = b"", raw: bool = False) -> Tuple[bytes, int]:
    """A deflate stream of ``prefix`` then ``block * count`` zero bytes, built by compressing one
    block (a full flush resets the compressor, so every later block compresses to the same bytes):
    zlib-wrapped, or raw with the data's CRC-32 (for zip members; 0 when zlib-wrapped)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15 if raw else zlib.MAX_WBITS)
    first = comp.compress(prefix + bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    middle = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    end = comp.flush()
    crc = 0
    if raw:
        crc = zlib.crc32(prefix)
        for _ in range(count):
            crc = zlib.crc32(bytes(block), crc)
    else:  # Adler-32 of prefix + zeros: zeros leave A alone and add A to B once per byte
        adler = zlib.adler32(prefix)
        a, b = adler & 0xFFFF, adler >> 16
        end = end[:-4] + struct.pack(">I", ((b + a * block * count) % 65521) << 16 | a)
    return first + middle * (count - 1) + end, crc


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """An RGB PNG of width x height black pixels (filter byte 0 + zeros on every row)."""
    idat, _ = deflate_zeros(1 + 3 * width, height)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def tiff_bomb(width: int, height: int) -> bytes:
    """A deflate-compressed RGB TIFF of black pixels whose one-row strips all share one stream."""
    row = zlib.compress(bytes(3 * width), 9)
    data_at = 8  # after the header
    bits_at = data_at + len(row)
    offsets_at = bits_at + 6
    counts_at = offsets_at + 4 * height
    ifd_at = counts_at + 4 * height
    short, long_ = 3, 4
    tags: List[Tuple[int, int, int, bytes]] = [  # (tag, type, count, value or offset)
        (256, long_, 1, struct.pack("<I", width)),
        (257, long_, 1, struct.pack("<I", height)),
        (258, short, 3, struct.pack("<I", bits_at)),
        (259, short, 1, struct.pack("<HH", 8, 0)),           # Adobe deflate
        (262, short, 1, struct.pack("<HH", 2, 0)),           # RGB
        (273, long_, height, struct.pack("<I", offsets_at)),
        (277, short, 1, struct.pack("<HH", 3, 0)),
        (278, long_, 1, struct.pack("<I", 1)),               # one row per strip
        (279, long_, height, struct.pack("<I", counts_at)),
        (284, short, 1, struct.pack("<HH", 1, 0)),
    ]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHI", t, k, n) + v for t, k, n, v in tags)
    return (b"II*\x00" + struct.pack("<I", ifd_at) + row + struct.pack("<HHH", 8, 8, 8)
            + struct.pack("<I", data_at) * height + struct.pack("<I", len(row)) * height
            + ifd + b"\x00\x00\x00\x00")


class _Bits:
    """An LSB-first (VP8L) or MSB-first (JPEG, with 0xFF byte stuffing) bit writer."""

    def __init__(self, msb_first: bool):
        self.msb, self.bits = msb_first, []

    def put(self, value: int, count: int) -> None:
        order = range(count - 1, -1, -1) if self.msb else range(count)
        self.bits += [(value >> i) & 1 for i in order]

    def bytes(self) -> bytes:
        bits = self.bits + [1] * (-len(self.bits) % 8)  # JPEG pads with ones
        out = bytearray()
        for i in range(0, len(bits), 8):
            byte = bits[i:i + 8]
            value = sum(b << (7 - j if self.msb else j) for j, b in enumerate(byte))
            out.append(value)
            if self.msb and value == 0xFF:
                out.append(0)
        return bytes(out)


def webp_bomb(width: int, height: int) -> bytes:
    """A lossless (VP8L) WebP of black pixels: 30 bits of prefix codes, 0 bits per pixel."""
    bits = _Bits(msb_first=False)
    bits.put(width - 1, 14)
    bits.put(height - 1, 14)
    bits.put(0, 1)  # alpha_is_used
    bits.put(0, 3)  # version
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    for symbol in (0, 0, 0, 255, 0):  # green, red, blue, alpha, distance: simple codes, one symbol
        bits.put(1, 1)
        bits.put(0, 1)
        bits.put(1 if symbol > 1 else 0, 1)
        bits.put(symbol, 8 if symbol > 1 else 1)
    payload = b"\x2f" + bits.bytes() + bytes(8)  # padding: OpenCV wants at least 32 bytes of file
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, 2 + len(body)) + body


def flat_jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    """A grey (one component) JPEG of mid-grey pixels: every coefficient is zero.

    Baseline: each block is two 1-bit codes (DC difference 0, end of block). Progressive: a DC
    scan of 1-bit codes, then one AC scan of end-of-band runs of 32767 blocks (EOB14 with 14
    extra bits), so the block count must be a multiple of 32767.
    """
    blocks = -(-width // 8) * -(-height // 8)
    one_code = bytes([1] + [0] * 15)
    dqt = _segment(0xDB, b"\x00" + b"\x01" * 64)
    sof = _segment(0xC2 if progressive else 0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    dht = _segment(0xC4, b"\x00" + one_code + b"\x00") + _segment(
        0xC4, b"\x10" + one_code + (b"\xe0" if progressive else b"\x00"))
    out = b"\xff\xd8" + dqt + sof + dht
    if not progressive:
        return out + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + bytes(-(-2 * blocks // 8)) + b"\xff\xd9"
    assert blocks % 32767 == 0, "progressive flat_jpeg needs a multiple of 32767 blocks"
    dc = bytes(blocks // 8) + (_Bits(True).bytes() if blocks % 8 == 0 else bytes([0xFF >> (blocks % 8)]))
    runs = _Bits(msb_first=True)
    for _ in range(blocks // 32767):
        runs.put(0, 1)            # the one AC code: EOB14
        runs.put(32767 - 16384, 14)
    return (out + _segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + dc
            + _segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + runs.bytes() + b"\xff\xd9")


def zip_bomb(path: Path, member: str, header: bytes, nbytes: int) -> Path:
    """A zip holding one deflated member: ``header`` then ``nbytes`` zeros (a multiple of 1 MiB)."""
    assert nbytes % CHUNK == 0
    data, crc = deflate_zeros(CHUNK, nbytes // CHUNK, prefix=header, raw=True)
    size, name = len(header) + nbytes, member.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size,
                          len(name), 0, 0, 0, 0, 0, 0)
    directory_at = len(local) + len(name) + len(data)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), directory_at, 0)
    path.write_bytes(local + name + data + central + name + end)
    return path


def truncated_jpeg(data: bytes, fraction: float) -> bytes:
    """The first ``fraction`` of a JPEG with an end-of-image marker appended."""
    return data[:int(len(data) * fraction)] + b"\xff\xd9"


def deep_json(depth: int) -> str:
    """``depth`` nested arrays: ``[[[...]]]``."""
    return "[" * depth + "]" * depth
