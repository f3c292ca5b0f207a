"""Photos for enrolment: read and hashed once, duplicates found, folders of people scanned."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from sfpn_edge.io import IMAGE_SUFFIXES, read_file

if TYPE_CHECKING:
    from sfpn_edge.gallery import FaceGallery
    from sfpn_edge.pipeline import FaceVerifier


@dataclass(frozen=True)
class Photo:
    """A photo file's path, bytes and content sha256."""

    path: Path
    data: bytes
    sha256: str


@dataclass(frozen=True)
class Skipped:
    """A photo (or person folder) left out, and why."""

    image: str
    reason: str

    def to_dict(self) -> dict:
        return {"image": self.image, "reason": self.reason}


def read_photo(path: Path) -> Photo:
    """``path`` read within the image size cap and hashed (ImageError naming it)."""
    data = read_file(path)
    return Photo(path, data, hashlib.sha256(data).hexdigest())


def drop_duplicates(photos: Sequence[Photo], enrolled: Dict[str, str]) -> Tuple[List[Photo], List[Skipped]]:
    """``photos`` without those already in the gallery (``enrolled``: sha256 -> name) or repeated."""
    kept: List[Photo] = []
    skipped: List[Skipped] = []
    first: Dict[str, Path] = {}
    for photo in photos:
        if photo.sha256 in enrolled:
            skipped.append(Skipped(str(photo.path), f"duplicate: this photo is already enrolled as "
                                                    f"{enrolled[photo.sha256]!r}"))
        elif photo.sha256 in first:
            skipped.append(Skipped(str(photo.path), f"duplicate: same photo as {first[photo.sha256]}"))
        else:
            first[photo.sha256] = photo.path
            kept.append(photo)
    return kept, skipped


def known_photos(gallery: Optional["FaceGallery"], photos: Sequence[Photo], name: str,
                 replace: bool) -> Dict[str, str]:
    """The gallery's identities for these photos' hashes (``replace``: ``name``'s own do not count)."""
    if gallery is None:
        return {}
    found = gallery.enrolled_photos(p.sha256 for p in photos)
    return {h: who for h, who in found.items() if not (replace and who == name)}


def scan_people(root: Path) -> Tuple[List[Tuple[str, List[Path]]], List[Skipped]]:
    """``root``'s person folders (name = folder name, sorted) with their photos (by image suffix, sorted);
    folders that cannot name an identity are skipped."""
    from sfpn_edge.errors import SfpnError
    from sfpn_edge.gallery import check_name

    if not root.is_dir():
        raise SfpnError(f"{root}: not a folder (--from-dir wants one folder per person)")
    people, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        try:
            check_name(folder.name)
        except SfpnError as exc:
            skipped.append(Skipped(str(folder), str(exc)))
            continue
        if photos:
            people.append((folder.name, photos))
        else:
            skipped.append(Skipped(str(folder), "no photos (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")"))
    if not people:
        raise SfpnError(f"{root}: no person folders with photos (one folder per person, named after them)")
    return people, skipped


def open_existing(db: Path, verifier: "FaceVerifier") -> Optional["FaceGallery"]:
    """The gallery at ``db`` when it exists (checked now, before slow work), else None; a server's
    gallery (a URL) is made here when missing."""
    from sfpn_edge.gallery import FaceGallery

    if isinstance(db, str):
        return FaceGallery(db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim)
    if not (db.exists() or db.is_symlink()):
        return None
    return FaceGallery(db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim, create=False)


def create(db: Path, verifier: "FaceVerifier", gallery: Optional["FaceGallery"]) -> "FaceGallery":
    """``gallery``, or a new one at ``db`` (made only once there is something to store)."""
    from sfpn_edge.gallery import FaceGallery

    if gallery is not None:
        return gallery
    return FaceGallery(db, model_sha256=verifier.model_sha256, dim=verifier.descriptor_dim)
