"""Logging: plain text or one JSON object per line, carrying the request id and job id of the record.

Requests: the API writes one line per request (`mlps.request`: method, path, status, milliseconds) in the JSON
format, and in the text format only when that logger is at DEBUG; uvicorn's own access log is switched off
(`quiet_access_log`), so that a prediction does not pay for a line nobody asked for.
"""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

request_id_var: ContextVar[str | None] = ContextVar("mlps_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("mlps_job_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_LOG = logging.getLogger("mlps.request")
# Fields a record may carry beyond its message, written by the JSON format when present.
RECORD_FIELDS = ("request_id", "job_id", "method", "path", "status", "duration_ms")
_format = {"current": "text"}


def request_log_level() -> int | None:
    """The level of the per-request line: INFO in the JSON format, DEBUG in the text format when mlps.request is
    at DEBUG, else None (no line)."""
    if _format["current"] == "json":
        return logging.INFO
    return logging.DEBUG if REQUEST_LOG.isEnabledFor(logging.DEBUG) else None


def quiet_access_log() -> None:
    """Switch off uvicorn's access log (as its access_log=False does): the API writes its own request line."""
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False


class ContextFilter(logging.Filter):
    """Put the current request id and job id on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id / job_id when known, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in RECORD_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send INFO and above to `stream` (stderr) as text or JSON lines; returns the handler."""
    _format["current"] = fmt
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return handler
