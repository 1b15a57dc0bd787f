"""A small job's start: the worker on SQLite wakes when the database changes, and its fork server holds the
modules every job process would otherwise import again."""

import threading
import time

import pytest

from service.server.worker import SQLITE_WATCH_S, Wakeup, Worker, _main_modules, _signature, _sqlite_files
from tests.helpers import upload, wait_for_job


def test_sqlite_files_are_the_database_and_its_write_ahead_log(tmp_path):
    path = tmp_path / "mlps.db"
    assert _sqlite_files(f"sqlite:///{path}") == [str(path), f"{path}-wal"]
    assert _sqlite_files("sqlite://") == []
    assert _sqlite_files("sqlite:///:memory:") == []
    assert _sqlite_files("postgresql+psycopg://u:p@localhost/mlps") == []


def test_signature_changes_with_a_write_and_marks_a_missing_file(tmp_path):
    path = tmp_path / "f"
    assert _signature([str(path)]) == ((-1, -1),)
    path.write_bytes(b"a")
    before = _signature([str(path)])
    path.write_bytes(b"ab")
    assert _signature([str(path)]) != before


def test_wait_without_a_change_lasts_its_timeout_and_a_stop_ends_it(migrated):
    wakeup = Wakeup(migrated.database_url)
    stop = threading.Event()
    t0 = time.monotonic()
    wakeup.wait(0.2, stop)
    assert time.monotonic() - t0 >= 0.2
    stop.set()
    t0 = time.monotonic()
    wakeup.wait(30.0, stop)
    assert time.monotonic() - t0 < 5.0


def test_a_commit_on_sqlite_ends_the_wait_at_once(client, migrated):
    wakeup = Wakeup(migrated.database_url)
    stop = threading.Event()
    wakeup.wait(SQLITE_WATCH_S, stop)  # the files as they are now
    done = threading.Event()

    def wait() -> None:
        wakeup.wait(60.0, stop)
        done.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        upload(client, "iris.csv")  # a commit from another connection
        assert done.wait(10.0), "the wait did not notice the commit"
    finally:
        stop.set()
        waiter.join()


def test_a_job_queued_while_the_worker_waits_is_claimed_long_before_its_poll_interval(client, migrated):
    slow = migrated.model_copy(update={"poll_interval_s": 600.0})
    from service.server.devices import discover

    worker = Worker(slow, discover("cpu"))
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        ds = upload(client, "iris.csv").json()
        # the worker is up and waiting (its first round ran) once it is listed
        deadline = time.monotonic() + 120
        while not client.get("/workers").json()["items"] and time.monotonic() < deadline:
            time.sleep(0.05)
        job = client.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                         "training": {"epochs": 1}}).json()
        done = wait_for_job(client, job["id"], timeout=120)
        assert done["status"] == "succeeded"
    finally:
        worker.stop()
        runner.join(60)
    assert not runner.is_alive()


@pytest.mark.parametrize("main", [None, "service.cli", "service.server.commands", "pytest.__main__"])
def test_the_fork_server_preloads_what_a_child_runs_as_main(monkeypatch, main):
    import sys
    import types

    module = types.ModuleType("__main__")
    module.__spec__ = types.SimpleNamespace(name=main) if main else None  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, "__main__", module)
    names = _main_modules()
    assert names[0] == "service.cli"
    assert ("service.server.commands" in names) == (main == "service.server.commands")
    assert "pytest.__main__" not in names
