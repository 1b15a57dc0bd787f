"""Shared fixtures: real settings in a temp folder, a real SQLite file migrated by Alembic, real workers."""

import os
from pathlib import Path

import pytest

from service.config import Settings
from service.db import migrate

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("MLPS_TEST_DATASETS", ROOT.parent / "shared" / "datasets"))


def dataset_path(name: str) -> Path:
    path = DATASETS / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared/datasets beside the repository")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var", poll_interval_s=0.05, heartbeat_s=0.5, lease_s=30.0,
                    cancel_grace_s=2.0)


@pytest.fixture
def migrated(settings: Settings) -> Settings:
    migrate(settings.database_url)
    return settings


@pytest.fixture
def client(migrated: Settings):
    from fastapi.testclient import TestClient

    from service.api import create_app

    with TestClient(create_app(migrated)) as c:
        yield c


@pytest.fixture
def worker(migrated: Settings):
    """A real worker (child process per job) on the CPU, against the same database as `client`."""
    from service.devices import discover
    from service.worker import Worker

    w = Worker(migrated, discover("cpu"))
    w.start()
    yield w
    w.shutdown()


def upload(client, name: str, content: bytes | None = None, filename: str | None = None):
    """POST /datasets with a file from ../shared/datasets or raw bytes."""
    data = content if content is not None else dataset_path(name).read_bytes()
    return client.post("/datasets", files={"file": (filename or name, data, "text/csv")})
