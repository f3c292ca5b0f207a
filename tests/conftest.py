"""Shared fixtures. Real model and data come from one setting: $SFPN_SHARED (default ../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SFPN_SHARED", REPO.parent / "shared")).resolve()
DWC_MAT = SHARED / "models" / "squeezefaceposenet" / "SqueezeFacePoseNet_with_separable_DWC.mat"
CFP_ROOT = SHARED / "data" / "cfp"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: set SFPN_SHARED to the shared/ folder with the model and CFP data")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def dwc_mat() -> Path:
    return _require(DWC_MAT)


@pytest.fixture(scope="session")
def example_crops() -> list:
    folder = _require(DWC_MAT.parent)
    return [folder / f"image_example{i}.png" for i in (1, 2, 3)]


@pytest.fixture(scope="session")
def cfp_root() -> Path:
    return _require(CFP_ROOT)
