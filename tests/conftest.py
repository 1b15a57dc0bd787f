"""Shared fixtures: real settings in a temp folder, a real SQLite file migrated by Alembic, real workers."""

import os
import uuid
from pathlib import Path

import pytest

from service.server.config import Settings
from service.server.db import migrate

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("MLPS_TEST_DATASETS", ROOT.parent / "shared" / "datasets"))


def dataset_path(name: str) -> Path:
    path = DATASETS / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the tests need ../shared/datasets beside the repository")
    return path


POSTGRES_ADMIN_URL = os.environ.get("MLPS_TEST_POSTGRES_URL")


def pytest_generate_tests(metafunc):
    """Modules that set BOTH_DATABASES = True run each test on SQLite and on PostgreSQL."""
    if "database" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_DATABASES", False):
        metafunc.parametrize("database", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def database(request, tmp_path: Path) -> str:
    """A fresh, empty database URL: a SQLite file, or a new database on the test PostgreSQL server."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'mlps.db'}"
        return
    if not POSTGRES_ADMIN_URL:
        if os.environ.get("MLPS_REQUIRE_POSTGRES"):
            pytest.fail("MLPS_TEST_POSTGRES_URL is not set; .ci/run starts a server with scripts/with-postgres")
        pytest.skip("no PostgreSQL server: run `scripts/with-postgres make test` to include these tests")
    from sqlalchemy import create_engine, make_url, text

    name = f"mlps_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database: str) -> Settings:
    return Settings(data_dir=tmp_path / "var", database_url=database, poll_interval_s=0.05, heartbeat_s=0.5,
                    lease_s=30.0, cancel_grace_s=2.0)


@pytest.fixture
def migrated(settings: Settings) -> Settings:
    migrate(settings.database_url)
    return settings


def make_key(settings: Settings, name: str, admin: bool = False) -> str:
    """A new API key in the settings' database (what `mlps keys create` does)."""
    from service.server.auth import create_key
    from service.server.db import make_engine, make_sessionmaker, session_scope

    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            return create_key(session, name=name, admin=admin)[1]
    finally:
        engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(migrated: Settings):
    """The API in-process over a real migrated database, sending an admin key."""
    from fastapi.testclient import TestClient

    from service.server.api import create_app

    with TestClient(create_app(migrated), headers=bearer(make_key(migrated, "admin", admin=True))) as c:
        yield c


@pytest.fixture
def worker(migrated: Settings):
    """A real worker (child process per job) on the CPU, against the same database as `client`."""
    from service.server.devices import discover
    from service.server.worker import Worker

    w = Worker(migrated, discover("cpu"))
    w.start()
    yield w
    w.shutdown()


def upload(client, name: str, content: bytes | None = None, filename: str | None = None):
    """POST /datasets with a file from ../shared/datasets or raw bytes."""
    data = content if content is not None else dataset_path(name).read_bytes()
    return client.post("/datasets", files={"file": (filename or name, data, "text/csv")})
