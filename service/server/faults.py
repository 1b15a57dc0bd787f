"""Server-side faults a client cannot fix but may retry: a full disk and an unavailable database.

`classify` maps the exception a failed write or query raised (from the OS, SQLite, PostgreSQL or pyarrow) to the
problem the client sees: 507 Insufficient Storage when the disk is full, 503 Service Unavailable with Retry-After
when the database is down, read-only or locked past its timeout. Loops that must outlive such faults (the worker,
the reapers) back off with `Backoff` and try again.
"""

import logging
import random

from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, TimeoutError

from service.server.errors import InsufficientStorage, ServiceError, Unavailable
from service.server.storage import StorageUnavailable
from service.training import ingest

log = logging.getLogger("mlps.faults")

RETRY_AFTER_S = 5
# A job's process exits with this code when the database failed under it (EX_TEMPFAIL): its worker hands the job
# back to the queue without counting the attempt, and the next attempt resumes from the last checkpoint.
HAND_BACK_EXIT = 75
# What the OS, SQLite and PostgreSQL say when the disk is full, in the messages they raise.
_DISK_FULL = ("no space left on device", "database or disk is full", "disk full", "could not extend file",
              "errno 28", "[errno 122]", "disk quota exceeded")
_DB_UNAVAILABLE = ("readonly database", "read-only", "database is locked", "unable to open database file",
                   "disk i/o error", "connection refused", "server closed the connection", "terminating connection",
                   "connection is closed", "could not connect", "the database system is starting up",
                   "the database system is shutting down", "connection timeout", "consuming input failed",
                   "no connection to the server", "admin_shutdown")


def _text(exc: BaseException) -> str:
    return f"{exc} {getattr(exc, 'orig', '')}".lower()


def disk_full(exc: BaseException) -> bool:
    """True when `exc` says the disk (or the user's quota) is full."""
    if ingest.disk_full(exc):
        return True
    return isinstance(exc, (OSError, DBAPIError)) and any(s in _text(exc) for s in _DISK_FULL)


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached or written just now (down, read-only, locked)."""
    if isinstance(exc, (DisconnectionError, TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or (isinstance(exc, OperationalError)
                                                    or any(s in _text(exc) for s in _DB_UNAVAILABLE))
    return False


def classify(exc: BaseException) -> ServiceError | None:
    """The problem a client should see for a server-side fault, or None when `exc` is not one."""
    if disk_full(exc):
        return InsufficientStorage("the server's storage is full; nothing was stored. Try again after the operator "
                                   "frees space", headers={"Retry-After": str(RETRY_AFTER_S * 6)})
    if database_unavailable(exc):
        return Unavailable("the database is unavailable just now (down, read-only or busy); nothing was changed. "
                           f"Try again in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
    if storage_unavailable(exc):
        return Unavailable(f"the object storage is unavailable just now ({exc}); nothing was changed. Try again "
                           f"in {RETRY_AFTER_S} s", headers={"Retry-After": str(RETRY_AFTER_S)})
    return None


def storage_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the object storage (S3) cannot be reached or refused us just now: our own
    StorageUnavailable, or botocore's connection and timeout errors that reached us unwrapped."""
    if isinstance(exc, StorageUnavailable):
        return True
    try:
        from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
    except ImportError:  # boto3 is only needed with an s3:// MLPS_STORAGE_URL
        return False
    return isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError))


# The exception types a fault arrives as (the API registers its fault handler for these; StorageUnavailable is
# an OSError).
FAULT_TYPES: tuple[type[Exception], ...] = (OSError, DBAPIError, DisconnectionError, TimeoutError)


def transient(exc: BaseException) -> bool:
    """A fault that may clear by itself: the loop that met it should back off and try again."""
    return classify(exc) is not None or isinstance(exc, OSError)


class Backoff:
    """Exponential backoff with jitter for a loop meeting faults: 0.5 s, 1 s, 2 s … up to `cap`, reset on success."""

    def __init__(self, first_s: float = 0.5, cap_s: float = 30.0) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        delay = min(self.cap_s, self.first_s * 2.0 ** (self.failures - 1))
        return delay * random.uniform(0.8, 1.0)

    def succeeded(self) -> bool:
        """Reset; True when this ends a run of failures (worth one log line)."""
        recovered = self.failures > 0
        self.failures = 0
        return recovered
