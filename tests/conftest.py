"""Shared fixtures: real settings in a temp folder, a real SQLite file migrated by Alembic, real workers."""

import os
import uuid
from pathlib import Path

import pytest

from service.server.config import Settings
from service.server.db import migrate
from tests.helpers import bearer, make_key
from tests.helpers import dataset_path as dataset_path  # re-exported: the CLI tests import it from here

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

