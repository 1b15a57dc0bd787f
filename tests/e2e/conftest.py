"""The e2e tests' deployment: one `mlps serve` for the session (tests that need another set-up start their own
processes with tests/live.py's Stack or running())."""

import pytest

from tests.live import free_port, running


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`mlps serve`: the README's single-machine setup."""
    data_dir = tmp_path_factory.mktemp("serve") / "var"
    port = free_port()
    with running(["serve", "--port", str(port), "--data-dir", str(data_dir)], data_dir=data_dir, port=port) as c:
        yield c
