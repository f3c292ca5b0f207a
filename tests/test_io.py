import os
import re
import struct
import threading
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import hostile_corpus
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


# ---------------------------------------------------------------- hostile inputs (issue 20)

def _read_in_thread(path, timeout=5.0):
    """read_image(path) in a thread; a FIFO opened for reading (old behaviour) is unblocked by
    opening its write end, so a regression fails the test instead of hanging it."""
    outcome = {}

    def run():
        try:
            io.read_image(path)
            outcome["result"] = "decoded"
        except ImageError as exc:
            outcome["result"] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        with open(path, "wb"):
            pass
        thread.join(timeout)
        return "hung"
    return outcome["result"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_are_refused_before_opening(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    assert _read_in_thread(fifo).endswith("is a FIFO, not a regular file")
    for target in ("/dev/null", "/dev/zero"):
        if os.path.exists(target):
            link = tmp_path / f"link-{Path(target).name}.jpg"
            link.symlink_to(target)
            with pytest.raises(ImageError, match="is a device, not a regular file"):
                io.read_image(link)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_byte_cap_does_not_trust_st_size(monkeypatch):
    assert os.stat("/proc/self/maps").st_size == 0  # a regular file that reports no size
    monkeypatch.setattr(io, "MAX_FILE_BYTES", 64)
    with pytest.raises(ImageError, match="over 64 bytes"):
        io.read_image("/proc/self/maps")


def test_header_sizes_of_webp_and_tiff(colour):
    bgra = np.dstack([colour, np.full(colour.shape[:2], 9, np.uint8)])
    lossy = cv2.imencode(".webp", colour, [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes()
    lossless = cv2.imencode(".webp", colour, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    extended = cv2.imencode(".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes()  # alpha + lossy
    assert {lossy[12:16], lossless[12:16], extended[12:16]} == {b"VP8 ", b"VP8L", b"VP8X"}
    for data in (lossy, lossless, extended, _encode(".tiff", colour), _encode(".tiff", colour[..., 0])):
        assert io.image_size(data) == (64, 48)


@pytest.mark.parametrize("ext", [".png", ".tiff", ".webp", ".bmp"])
def test_formats_without_reduced_decoding_are_refused_above_the_pixel_cap(monkeypatch, colour, ext):
    """OpenCV decodes these at full size before any IMREAD_REDUCED_* resize: a 30000² PNG cost 2.7 GB."""
    monkeypatch.setattr(io, "MAX_PIXELS", 1000)  # 64x48 = 3072 pixels
    with pytest.raises(ImageError, match="cannot be decoded at reduced scale"):
        io.read_image(_encode(ext, colour))
    assert io.read_image(_encode(".jpg", colour)).shape == (24, 32, 3)  # JPEG: libjpeg scales


def test_bombs_refused_from_their_headers():
    """Real decodable bombs (a few MB or bytes) are refused without decoding."""
    for data in (hostile_corpus.png_bomb(30000, 30000), hostile_corpus.tiff_bomb(30000, 30000),
                 hostile_corpus.webp_bomb(16000, 16000)):
        tracemalloc.start()
        with pytest.raises(ImageError, match="too large"):
            io.read_image(data)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
        tracemalloc.stop()


def test_progressive_jpeg_capped_by_its_coefficient_buffer(monkeypatch):
    """libjpeg keeps every coefficient of a progressive JPEG, whatever the output scale."""
    width, height = 8 * 4681, 8 * 14  # 2 x 32767 blocks
    progressive = hostile_corpus.flat_jpeg(width, height, progressive=True)
    baseline = hostile_corpus.flat_jpeg(width, height)
    monkeypatch.setattr(io, "MAX_PIXELS", width * height // 64)  # both need 1/8 scale
    monkeypatch.setattr(io, "MAX_COEF_BYTES", 2 * width * height - 1)
    assert io.read_image(baseline).shape == (height // 8, width // 8, 3)
    with pytest.raises(ImageError, match="coefficients"):
        io.read_image(progressive)
    monkeypatch.setattr(io, "MAX_COEF_BYTES", 2 * width * height)
    assert io.read_image(progressive).shape == (height // 8, width // 8, 3)


def _jpegs(colour):
    """A baseline and a progressive JPEG of a smooth image (random pixels would hide truncation)."""
    smooth = cv2.resize(colour, (320, 240), interpolation=cv2.INTER_CUBIC)
    return (_encode(".jpg", smooth),
            cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes())


def _assert_truncations_refused(jpeg, progressive):
    io.read_image(jpeg)
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, 0.97):
        with pytest.raises(ImageError, match="corrupt JPEG data|truncated JPEG"):
            io.read_image(hostile_corpus.truncated_jpeg(jpeg, fraction))
    io.read_image(progressive)
    scans = [m.start() for m in re.finditer(b"\xff\xda", progressive)]
    assert len(scans) > 3
    for start in scans[1:]:  # cut exactly between scans: libjpeg warns about nothing
        with pytest.raises(ImageError, match="scans missing"):
            io.read_image(progressive[:start] + b"\xff\xd9")


def test_truncated_jpeg_with_end_marker_appended_is_refused(colour):
    _assert_truncations_refused(*_jpegs(colour))


def test_truncated_cfp_photos_are_refused(cfp_root):
    """Real camera JPEGs: before, 0.7546 instead of 0.9107 for a truncated frontal photo."""
    for person in ("001", "137", "420"):
        photo = (cfp_root / "Data" / "Images" / person / "frontal" / "01.jpg").read_bytes()
        image = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
        _assert_truncations_refused(photo, cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes())


def test_decoder_messages_become_the_error_and_benign_ones_pass(colour, capfd):
    jpeg, _ = _jpegs(colour)
    with pytest.raises(ImageError, match=r"libjpeg: premature end of data segment"):
        io.read_image(hostile_corpus.truncated_jpeg(jpeg, 0.5))
    png = bytearray(_encode(".png", colour))
    png[60] ^= 0xFF  # inside IDAT: CRC error
    with pytest.raises(ImageError, match="corrupt"):
        io.read_image(bytes(png))
    assert capfd.readouterr().err == ""  # refused: one error, not the decoders' lines on stderr
    odd = bytearray(jpeg)
    assert odd[6:11] == b"JFIF\x00"
    odd[11] = 9  # JFIF 9.01: libjpeg warns, the image is fine
    assert io.read_image(bytes(odd)).shape == (240, 320, 3)
    os.write(2, b"after\n")  # file descriptor 2 is back where it was
    assert capfd.readouterr().err == "Warning: unknown JFIF revision number 9.01\nafter\n"


def test_concurrent_decodes_keep_their_own_verdicts(colour):
    jpeg, _ = _jpegs(colour)
    bad = hostile_corpus.truncated_jpeg(jpeg, 0.6)
    results = []

    def work(data, expect_ok):
        for _ in range(25):
            try:
                io.read_image(data)
                results.append(expect_ok)
            except ImageError:
                results.append(not expect_ok)

    threads = [threading.Thread(target=work, args=(d, ok)) for d, ok in [(jpeg, True), (bad, False)] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 100 and all(results)
