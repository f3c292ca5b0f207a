"""Synthetic identities for the server-gallery tests (test_gallery_pg, test_gallery_offline)."""
from __future__ import annotations

import numpy as np

SHA = "ab" * 32
DIM = 64


def people(n: int, photos: int, seed: int = 0) -> dict:
    """Identities with ``photos`` noisy non-negative embeddings around their own centre."""
    rng = np.random.default_rng(seed)
    centres = rng.random((n, DIM))
    return {f"p{i:03d}": np.abs(centres[i] + 0.15 * rng.standard_normal((photos, DIM))).astype(np.float32)
            for i in range(n)}
