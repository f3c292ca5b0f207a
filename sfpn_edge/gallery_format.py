"""What every gallery store shares and checks: the format name and version, and GalleryError."""
from __future__ import annotations

from sfpn_edge.errors import SfpnError

FORMAT = "sfpn-edge-gallery"
# 2 added embeddings.checksum, 3 embeddings.photo_sha256, 4 the calibration table, 5 the change log
# (template_changes, meta gallery_id: the SQLite gallery's matrix file; a server has none)
FORMAT_VERSION = 5


class GalleryError(SfpnError):
    """The gallery is missing, not ours, made for another model, damaged, or its server unreachable."""
