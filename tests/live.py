"""One real `mlps serve` (API + worker processes) shared by the client and CLI tests, and a trained iris job.

The e2e tests have their own `server` fixture in tests/e2e/conftest.py; the fixtures here are imported by
tests/test_client.py and tests/test_cli.py, and the process-wide cache below makes both modules use one server.
"""

from contextlib import ExitStack
from typing import Any

import pytest

from service.client import Client
from tests.conftest import dataset_path
from tests.e2e.conftest import admin_key, free_port, running

IRIS_RECORDS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3},
]
SHORT_TRAINING = {"epochs": 10, "learning_rate": 0.01, "batch_size": 16}
_shared: dict[str, Any] = {}


@pytest.fixture(scope="session")
def live_url(tmp_path_factory) -> str:
    """The base URL of a real `mlps serve` on a free port, started once per test session."""
    if "url" not in _shared:
        stack = ExitStack()
        data_dir = tmp_path_factory.mktemp("live") / "var"
        port = free_port()
        stack.enter_context(running(["serve", "--port", str(port), "--data-dir", str(data_dir)],
                                    data_dir=data_dir, port=port))
        _shared.update(url=f"http://127.0.0.1:{port}", stack=stack, data_dir=data_dir)
    yield _shared["url"]
    stack = _shared.pop("stack", None)
    if stack is not None:
        stack.close()


def live_data_dir() -> str:
    """The live server's data dir, where it wrote admin.key."""
    return str(_shared["data_dir"])


def live_key() -> str:
    """The live server's admin key."""
    return admin_key(_shared["data_dir"])


def trained_iris_job(url: str, api_key: str) -> dict[str, Any]:
    """A finished iris classification job (10 epochs) on the server at `url`, trained once per server."""
    key = ("iris_job", url.rstrip("/"))
    if key not in _shared:
        with Client(url, api_key=api_key) as mlps:
            dataset = mlps.upload_dataset(dataset_path("iris.csv"))
            job = mlps.submit_job({"dataset_id": dataset["id"], "target": "species", "training": SHORT_TRAINING})
            job = mlps.wait(job["id"], timeout=120)
        assert job["status"] == "succeeded", job["error"]
        _shared[key] = job
    return _shared[key]


@pytest.fixture(scope="session")
def iris_job(live_url: str) -> dict[str, Any]:
    """A finished iris classification job on the live server."""
    return trained_iris_job(live_url, live_key())
