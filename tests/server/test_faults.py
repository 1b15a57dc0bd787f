"""Server-side faults are told apart from bugs: a full disk is 507, an unavailable database 503 with Retry-After,
anything else stays a 500; loops back off and reset."""

import errno
import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from service.server import faults


def _sqlite_error(message: str) -> OperationalError:
    return OperationalError("INSERT INTO datasets ...", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left "
                                         "on device"),
                                 _sqlite_error("database or disk is full")])
def test_a_full_disk_is_507(exc):
    fault = faults.classify(exc)
    assert fault is not None and fault.status == 507 and "storage is full" in fault.detail


@pytest.mark.parametrize("message", ["attempt to write a readonly database", "database is locked",
                                     "unable to open database file"])
def test_an_unavailable_database_is_503_with_retry_after(message):
    fault = faults.classify(_sqlite_error(message))
    assert fault is not None and fault.status == 503
    assert fault.headers["Retry-After"] == str(faults.RETRY_AFTER_S)


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("x"), OSError(errno.EACCES, "Permission denied")])
def test_other_errors_are_not_faults(exc):
    assert faults.classify(exc) is None


def test_backoff_doubles_up_to_its_cap_and_resets():
    backoff = faults.Backoff(first_s=0.5, cap_s=4.0)
    delays = [backoff.failed() for _ in range(6)]
    assert all(lo * 0.8 <= d <= lo for d, lo in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True))
    assert backoff.succeeded() is True and backoff.succeeded() is False
    assert 0.4 <= backoff.failed() <= 0.5
