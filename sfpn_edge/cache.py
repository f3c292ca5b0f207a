"""The local cache ($SFPN_EDGE_HOME or the XDG cache dir) and atomic, verified writes."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

from sfpn_edge.errors import SfpnError


def home() -> Path:
    """Root of the cache: $SFPN_EDGE_HOME, else $XDG_CACHE_HOME/sfpn_edge, else ~/.cache/sfpn_edge."""
    if os.environ.get("SFPN_EDGE_HOME"):
        return Path(os.environ["SFPN_EDGE_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "sfpn_edge"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest``; on success it replaces ``dest``, on error it vanishes.

    Readers therefore see either the old complete directory or the new complete one.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as exc:
        raise SfpnError(f"cannot write to {dest.parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` through a temp file + fsync + rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def download(url: str, dest: Path, sha256: Optional[str], timeout: float = 60.0) -> Path:
    """Fetch ``url`` (http(s) or file://) to ``dest``, verifying ``sha256`` before it appears.

    A failed, truncated or altered download leaves nothing at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if sha256 and digest.hexdigest() != sha256.lower():
            raise SfpnError(
                f"sha256 mismatch for {url}: got {digest.hexdigest()}, expected {sha256} "
                "(truncated or altered download; nothing was stored)"
            )
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SfpnError(f"cannot download {url}: {getattr(exc, 'reason', None) or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
