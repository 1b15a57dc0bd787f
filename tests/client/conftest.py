"""The client tests run against one real `mlps serve` (tests/live.py), shared with the CLI tests."""

from tests.live import iris_job, live_url  # noqa: F401 (fixtures)
