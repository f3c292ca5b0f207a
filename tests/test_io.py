import struct
import zlib

import cv2
import numpy as np
import pytest

from sfpn_edge import io
from sfpn_edge.errors import ImageError


def _encode(ext, image):
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _png_header_only(width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.fixture
def colour():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_reads_jpeg_file(tmp_path, colour):
    path = tmp_path / "a.jpg"
    path.write_bytes(_encode(".jpg", colour))
    image = io.read_image(path)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".tiff"])
def test_lossless_formats_roundtrip(ext, colour):
    np.testing.assert_array_equal(io.read_image(_encode(ext, colour)), colour)


def test_grey_rgba_and_16bit_become_bgr(colour):
    grey = colour[..., 0]
    out = io.read_image(_encode(".png", grey))
    assert out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out[..., 0], grey)
    np.testing.assert_array_equal(out[..., 2], grey)
    rgba = np.dstack([colour, np.full(grey.shape, 7, np.uint8)])
    np.testing.assert_array_equal(io.read_image(_encode(".png", rgba)), colour)
    deep = colour.astype(np.uint16) * 257
    np.testing.assert_array_equal(io.read_image(_encode(".png", deep)), colour)


def test_header_size_matches_decoder(colour):
    assert io.image_size(_encode(".jpg", colour)) == (64, 48)
    assert io.image_size(_encode(".png", colour)) == (64, 48)
    assert io.image_size(_encode(".bmp", colour)) == (64, 48)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"GIF89a not really" * 4, "not a supported image"),
        (b"\xff\xd8\xff" + b"\x00" * 40, "not a supported image"),
    ],
)
def test_rejects_non_images(data, match):
    with pytest.raises(ImageError, match=match):
        io.read_image(data)


def test_rejects_truncated_files(colour):
    jpeg = _encode(".jpg", colour)
    with pytest.raises(ImageError, match="truncated JPEG"):
        io.read_image(jpeg[: len(jpeg) // 2])
    png = _encode(".png", colour)
    with pytest.raises(ImageError, match="truncated PNG"):
        io.read_image(png[: len(png) - 20])


def test_corrupt_body_is_an_error(colour):
    png = bytearray(_encode(".png", colour))
    png[40:80] = b"\x00" * 40
    with pytest.raises(ImageError, match="corrupt"):
        io.read_image(bytes(png))


def test_path_errors(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        io.read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        io.read_image(tmp_path)


def test_huge_image_refused_from_header_without_decoding():
    with pytest.raises(ImageError, match="too large"):
        io.read_image(_png_header_only(100_000, 100_000) + b"IEND\xaeB`\x82")


def test_large_image_decoded_reduced(monkeypatch):
    monkeypatch.setattr(io, "MAX_PIXELS", 1000)
    image = np.full((80, 120, 3), 90, np.uint8)
    out = io.read_image(_encode(".jpg", image))
    assert out.shape[0] * out.shape[1] <= 1000
    assert out.shape[:2] == (20, 30)


def test_oversized_file_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_FILE_BYTES", 10)
    path = tmp_path / "big.png"
    path.write_bytes(b"x" * 11)
    with pytest.raises(ImageError, match="limit"):
        io.read_image(path)
