"""Image decoding and validation: bytes or path in, uint8 BGR H×W×3 out, or a clear ImageError.

Decoding goes through ``cv2.imdecode(IMREAD_COLOR)``, which applies the EXIF orientation,
replicates greyscale to three channels, drops alpha and reduces 16-bit to 8-bit. Nothing in a
file is trusted before it is checked, so one input costs a bounded amount of memory and time:

- paths must be regular files after resolving links (FIFOs, devices, sockets and directories are
  refused before they are opened) and are read with a byte cap, ``MAX_FILE_BYTES``;
- width and height come from the header; images above ``MAX_PIXELS`` are decoded at 1/2, 1/4 or
  1/8 scale where the decoder can do so without a full-size buffer (DCT JPEGs: libjpeg scales
  while decoding) and refused otherwise (PNG, TIFF, WebP, BMP decode at full size first). JPEGs
  that libjpeg buffers whole (progressive or multi-scan) are also capped by that buffer's size;
- a JPEG must end with an end-of-image marker after scans that cover every coefficient of every
  component, and libjpeg's corruption warnings ("premature end of data segment", "bad Huffman
  code", ...), which OpenCV prints on stderr but does not report, refuse the image. Decoding
  runs with file descriptor 2 redirected to a temporary file (one decode at a time), read
  afterwards: a refused image gives one error naming the problem instead of the decoders' lines
  on stderr; anything else printed meanwhile (a good image's benign warnings, other threads'
  output) is passed on to stderr.
"""
from __future__ import annotations

import contextlib
import os
import re
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

from sfpn_edge import bounded_read
from sfpn_edge.errors import ImageError

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 24_000_000  # decoded pixels kept in memory per image (≈ 72 MB as BGR)
MAX_COEF_BYTES = 120_000_000  # whole-image DCT coefficients libjpeg may buffer (a 40 MP colour JPEG)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})  # what folders of photos are searched for

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview]

_REDUCED = ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2),
            (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))
_DCT_FRAMES = {0xC0, 0xC1, 0xC2, 0xC9, 0xCA}  # frames libjpeg can decode at reduced scale
_PROGRESSIVE = {0xC2, 0xCA}
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # the next marker after entropy-coded data
_LIBJPEG_CORRUPT = re.compile(
    rb"^(?:Corrupt JPEG data|Premature end of JPEG file|Inconsistent progression)[^\n]*", re.MULTILINE)
# What the decoders print about a file they fail on: kept out of stderr when the image is refused.
_DECODER_LINE = re.compile(rb"^(?:libpng |libtiff|TIFF|Corrupt JPEG|Premature end|Inconsistent progression"
                           rb"|\[ ?(?:ERROR|WARN)|> |\s*$)")
_STDERR_LOCK = threading.Lock()


def read_image(source: ImageSource, name: Optional[str] = None) -> np.ndarray:
    """Decode an image file or its bytes into a uint8 BGR array of shape (H, W, 3)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "<bytes>"
    else:
        data, label = read_file(Path(source)), name or str(source)
    if not data:
        raise ImageError(f"{label}: empty file")
    jpeg = _jpeg_info(data, label) if data[:2] == b"\xff\xd8" else None
    size = (jpeg.width, jpeg.height) if jpeg is not None else image_size(data)
    if size is None:
        raise ImageError(f"{label}: not a supported image (JPEG, PNG, BMP, WebP, TIFF, ...)")
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{label}: invalid image dimensions {width}x{height}")
    if data[:4] == b"\x89PNG" and b"IEND" not in data[-32:]:
        raise ImageError(f"{label}: truncated PNG (no IEND chunk)")
    scalable = jpeg is not None and jpeg.frame in _DCT_FRAMES
    factors = _REDUCED if scalable else _REDUCED[:1]
    flag = next((fl for f, fl in factors if width * height <= MAX_PIXELS * f * f), None)
    if flag is None:
        how = "" if scalable else " and cannot be decoded at reduced scale"
        limit = MAX_PIXELS * factors[-1][0] ** 2
        raise ImageError(f"{label}: {width}x{height} is too large{how} (limit {limit:,} pixels)")
    if jpeg is not None and jpeg.buffered and jpeg.coef_bytes > MAX_COEF_BYTES:
        raise ImageError(f"{label}: {width}x{height} progressive or multi-scan JPEG is too large to decode "
                         f"(needs {jpeg.coef_bytes:,} bytes of coefficients, limit {MAX_COEF_BYTES:,})")
    image, log = _decode(np.frombuffer(data, np.uint8), flag)
    warning = _LIBJPEG_CORRUPT.search(log) if jpeg is not None else None
    if warning is None and image is not None and image.size:
        _to_stderr(log)  # a good image: its decoders' benign warnings go where they always went
        return image
    _to_stderr(b"".join(line for line in log.splitlines(True) if not _DECODER_LINE.match(line)))
    if warning:
        detail = warning.group().decode("ascii", "replace").strip().replace("Corrupt JPEG data: ", "")
        raise ImageError(f"{label}: corrupt JPEG data (libjpeg: {detail})")
    first = log.decode("utf-8", "replace").strip().split("\n")[0]
    detail = f" ({first[:120]})" if first.startswith(("libpng", "libtiff", "TIFF")) else ""
    raise ImageError(f"{label}: corrupt or unsupported image data{detail}")


def read_file(path: Path) -> bytes:
    """The bytes of an image file, read within ``MAX_FILE_BYTES``; ImageError naming the file."""
    try:
        return bounded_read.read_bytes(path, MAX_FILE_BYTES)
    except bounded_read.LimitError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from the image header, or None when the bytes are not a format we accept
    (ImageError for a JPEG whose markers show it truncated or corrupt)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        info = _jpeg_info(data, "")
        return (info.width, info.height) if info is not None else None
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(data)
    return None


def _webp_size(data: bytes) -> Optional[Tuple[int, int]]:
    """Canvas size from the first chunk: VP8X (extended), VP8L (lossless) or VP8 (lossy)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff_size(data: bytes) -> Optional[Tuple[int, int]]:
    """ImageWidth and ImageLength (tags 256, 257) of the first image file directory."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        tags = {}
        for pos in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack_from(order + "HH", data, pos)
            if tag in (256, 257):
                fmt = {3: "H", 4: "I"}.get(kind)
                if fmt is None:
                    return None
                tags[tag] = struct.unpack_from(order + fmt, data, pos + 8)[0]
    except struct.error:
        return None
    return (tags[256], tags[257]) if len(tags) == 2 else None


@dataclass(frozen=True)
class _Jpeg:
    """What the markers of a JPEG say: frame type, size, and libjpeg's buffering needs."""

    frame: int          # SOFn marker byte
    width: int
    height: int
    buffered: bool      # progressive or multi-scan: libjpeg keeps every coefficient in memory
    coef_bytes: int     # size of that buffer (2 bytes per coefficient)


def _jpeg_info(data: bytes, label: str) -> Optional[_Jpeg]:
    """Walk the markers of a JPEG: None when there is no frame header (not a JPEG we accept);
    ImageError when the stream is truncated or its scans leave coefficients undecoded."""
    pos, frame, components, scans = 2, None, {}, []
    while True:
        marker = data[pos + 1] if pos + 2 <= len(data) and data[pos] == 0xFF else None
        if marker == 0xD9:
            break
        if marker in (0xD8, 0x01, 0xFF) or marker is not None and 0xD0 <= marker <= 0xD7:
            pos += 1 if marker == 0xFF else 2
            continue
        if marker is None or pos + 4 > len(data):
            if frame is None:
                return None
            raise ImageError(f"{label}: truncated JPEG (no end-of-image marker)")
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        body = data[pos + 4:pos + 2 + length]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and frame is None:
            if len(body) < 6:
                return None
            height, width, n = struct.unpack(">HHB", body[1:6])
            frame = (marker, width, height)
            components = {body[6 + 3 * i]: body[7 + 3 * i] for i in range(n) if 7 + 3 * i < len(body)}
        pos += 2 + length
        if marker == 0xDA:
            if frame is None:
                return None
            scans.append(body)
            found = _MARKER.search(data, pos)
            pos = found.start() if found else len(data)
    if frame is None:
        return None
    marker, width, height = frame
    sampling = [(s >> 4, s & 15) for s in components.values()]
    if not scans or not sampling or not all(h and v for h, v in sampling):
        raise ImageError(f"{label}: corrupt JPEG (no scans or no components)")
    if marker in _DCT_FRAMES:
        _check_coverage(scans, set(components), marker in _PROGRESSIVE, label)
    hmax, vmax = (max(s[i] for s in sampling) for i in (0, 1))
    coef = sum(-(-width * h // hmax) * -(-height * v // vmax) for h, v in sampling) * 2
    buffered = marker in _PROGRESSIVE or (scans[0][0] if scans[0] else 0) < len(components)
    return _Jpeg(marker, width, height, buffered, coef)


def _check_coverage(scans: List[bytes], components: set, progressive: bool, label: str) -> None:
    """Every coefficient of every component must be finished (successive approximation bit 0)
    by some scan: a progressive or multi-scan JPEG cut between scans decodes without a warning."""
    done: dict = {c: set() for c in components}
    for scan in scans:
        n = scan[0] if scan else 0
        if len(scan) < 4 + 2 * n:
            raise ImageError(f"{label}: corrupt JPEG (short scan header)")
        ss, se, approx = (scan[1 + 2 * n], scan[2 + 2 * n], scan[3 + 2 * n]) if progressive else (0, 63, 0)
        if approx & 15 == 0:
            for c in scan[1:1 + 2 * n:2]:
                done.get(c, set()).update(range(ss, min(se, 63) + 1))
    if any(len(coefs) < 64 for coefs in done.values()):
        raise ImageError(f"{label}: truncated JPEG (scans missing: some coefficients are never decoded)")


def _decode(buffer: np.ndarray, flag: int) -> Tuple[Optional[np.ndarray], bytes]:
    """``cv2.imdecode`` and what the decoders (libjpeg, libpng, OpenCV's log) printed meanwhile."""
    with _STDERR_LOCK:
        log = _log_fd()
        os.ftruncate(log, 0)
        os.lseek(log, 0, os.SEEK_SET)
        with _fd2_to(log):
            image = cv2.imdecode(buffer, flag)
        return image, os.pread(log, os.lseek(log, 0, os.SEEK_CUR), 0)


def _to_stderr(text: bytes) -> None:
    if text:
        with contextlib.suppress(OSError):
            os.write(2, text)


_LOG: dict = {}  # process id -> descriptor of an unlinked temporary file (one per process: fork-safe)


def _log_fd() -> int:
    pid = os.getpid()
    if pid not in _LOG:
        _LOG.clear()
        fd, name = tempfile.mkstemp(prefix="sfpn-libjpeg-")
        os.unlink(name)
        _LOG[pid] = fd
    return _LOG[pid]


@contextlib.contextmanager
def _fd2_to(fileno: int) -> Iterator[None]:
    """Point file descriptor 2 at ``fileno`` for the block (restored afterwards, even if fd 2 was closed)."""
    try:
        saved: Optional[int] = os.dup(2)
    except OSError:
        saved = None
    os.dup2(fileno, 2)
    try:
        yield
    finally:
        if saved is None:
            os.close(2)
        else:
            os.dup2(saved, 2)
            os.close(saved)
