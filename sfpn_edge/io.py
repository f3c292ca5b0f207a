"""Image decoding and validation: bytes or path in, uint8 BGR H×W×3 out, or a clear ImageError.

Decoding goes through ``cv2.imdecode(IMREAD_COLOR)``, which applies the EXIF orientation,
replicates greyscale to three channels, drops alpha and reduces 16-bit to 8-bit. Memory is
bounded: files above ``MAX_FILE_BYTES`` are refused, and images above ``MAX_PIXELS`` are
decoded at 1/2, 1/4 or 1/8 scale (libjpeg/libpng reduced decoding) or refused if still too big.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Optional, Tuple, Union

import cv2
import numpy as np

from sfpn_edge.errors import ImageError

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 40_000_000  # decoded pixels kept in memory per image (≈ 120 MB as BGR)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

_REDUCED = ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2),
            (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))


def read_image(source: ImageSource, name: Optional[str] = None) -> np.ndarray:
    """Decode an image file or its bytes into a uint8 BGR array of shape (H, W, 3)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "<bytes>"
    else:
        data, label = _read_file(Path(source)), name or str(source)
    if not data:
        raise ImageError(f"{label}: empty file")
    size = image_size(data)
    if size is None:
        raise ImageError(f"{label}: not a supported image (JPEG, PNG, BMP, WebP, TIFF, ...)")
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{label}: invalid image dimensions {width}x{height}")
    if data[:2] == b"\xff\xd8" and not _jpeg_complete(data):
        raise ImageError(f"{label}: truncated JPEG (no end-of-image marker)")
    if data[:4] == b"\x89PNG" and b"IEND" not in data[-32:]:
        raise ImageError(f"{label}: truncated PNG (no IEND chunk)")
    factor, flag = next(((f, fl) for f, fl in _REDUCED if width * height <= MAX_PIXELS * f * f),
                        (None, None))
    if flag is None:
        raise ImageError(f"{label}: {width}x{height} is too large (limit {MAX_PIXELS * 64:,} pixels)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None or image.size == 0:
        raise ImageError(f"{label}: corrupt or unsupported image data")
    return image


def _read_file(path: Path) -> bytes:
    try:
        if path.is_dir():
            raise ImageError(f"{path}: is a directory, not an image")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{path}: file is {size:,} bytes (limit {MAX_FILE_BYTES:,})")
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from the image header, or None when the bytes are not a format we accept."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:4] in (b"RIFF",) and data[8:12] == b"WEBP":
        return _probe_with_opencv(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _probe_with_opencv(data)
    return None


def _probe_with_opencv(data: bytes) -> Optional[Tuple[int, int]]:
    """Formats whose header we do not parse: decode at 1/8 scale to learn the size cheaply."""
    small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if small is None:
        return None
    return small.shape[1] * 8, small.shape[0] * 8


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    return None


def _jpeg_complete(data: bytes) -> bool:
    """True when an end-of-image marker follows the last start-of-scan marker."""
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")
