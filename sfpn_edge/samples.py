"""Face images on disk: a Sample (an image plus its landmark file, if any) and the text readers they need.

Shared by the evaluation protocols and the int8 calibration data; numpy and the stdlib only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from sfpn_edge.errors import SfpnError


@dataclass(frozen=True)
class Sample:
    """One image of a protocol; ``landmarks`` is a text file of ``x,y`` lines when known."""

    path: Path
    landmarks: Optional[Path] = None


def text_lines(path: Path) -> List[Tuple[int, str]]:
    """Non-empty lines with 1-based line numbers; missing/unreadable file -> SfpnError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SfpnError(f"missing file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SfpnError(f"cannot read {path}: {exc}") from None
    return [(no, line.strip()) for no, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_cfp_landmarks(path: Path) -> np.ndarray:
    """A CFP fiducial file (one ``x,y`` per line) as float64 [K, 2]."""
    rows = []
    for no, line in text_lines(Path(path)):
        try:
            x, y = (float(v) for v in line.replace(",", " ").split())
        except ValueError:
            raise SfpnError(f"{path} line {no}: expected 'x,y', got {line!r}") from None
        rows.append((x, y))
    pts = np.array(rows, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2 or not np.isfinite(pts).all():
        raise SfpnError(f"{path}: need at least two finite landmark points")
    return pts
