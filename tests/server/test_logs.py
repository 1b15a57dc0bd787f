"""Structured logs: JSON lines that carry the request id (API) and the job id (training)."""

import io
import json
import logging
import re

import pytest

from service.server.logs import configure, job_id_var
from tests.helpers import upload


@pytest.fixture
def json_log():
    stream = io.StringIO()
    handler = configure("json", stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def lines(stream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_api_log_lines_carry_the_request_id(client, json_log):
    resp = upload(client, "iris.csv")
    stored = [r for r in lines(json_log) if r["logger"] == "mlps.datasets"]
    assert stored and stored[-1]["request_id"] == resp.headers["x-request-id"]
    assert "150 rows" in stored[-1]["message"] and stored[-1]["level"] == "INFO"


def test_job_log_lines_carry_the_job_id(json_log):
    token = job_id_var.set("job_0123456789abcdef")
    try:
        logging.getLogger("mlps.runner").warning("epoch %d slow", 3)
    finally:
        job_id_var.reset(token)
    (record,) = [r for r in lines(json_log) if r["logger"] == "mlps.runner"]
    assert record == {**record, "job_id": "job_0123456789abcdef", "message": "epoch 3 slow", "level": "WARNING"}


def test_exceptions_are_one_json_line(json_log):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("mlps.api").exception("failed")
    (record,) = [r for r in lines(json_log) if r["logger"] == "mlps.api"]
    assert "ValueError: boom" in record["exception"]


@pytest.mark.parametrize("given", ["abc\tdef", "<script>alert(1)</script>", "x" * 65, "naïve", "a b"])
def test_a_request_id_that_could_forge_logs_or_markup_is_replaced(client, given):
    resp = client.get("/datasets", headers={"x-request-id": given.encode("utf-8")})
    rid = resp.headers["x-request-id"]
    assert rid != given and re.fullmatch(r"[0-9a-f]{16}", rid)


def test_a_well_formed_request_id_is_kept(client):
    assert client.get("/datasets", headers={"x-request-id": "batch-42.retry_1"}).headers["x-request-id"] == \
        "batch-42.retry_1"


def _request_lines(stream) -> list[dict]:
    return [r for r in lines(stream) if r["logger"] == "mlps.request"]


def test_the_json_format_has_one_structured_line_per_request(client, json_log):
    resp = client.get("/datasets", headers={"x-request-id": "req-1"})
    (line,) = _request_lines(json_log)
    assert line == {**line, "method": "GET", "path": "/datasets", "status": resp.status_code, "request_id": "req-1",
                    "level": "INFO"}
    assert line["duration_ms"] > 0


def test_the_text_format_writes_request_lines_only_at_debug(client):
    stream = io.StringIO()
    handler = configure("text", stream)
    try:
        client.get("/datasets")
        assert "mlps.request" not in stream.getvalue()
        logging.getLogger("mlps.request").setLevel(logging.DEBUG)
        client.get("/datasets")
        (line,) = [t for t in stream.getvalue().splitlines() if "mlps.request" in t]
        assert "DEBUG" in line and "GET /datasets 200" in line
    finally:
        logging.getLogger("mlps.request").setLevel(logging.NOTSET)
        logging.getLogger().removeHandler(handler)


def test_uvicorns_access_log_is_off_once_the_app_has_started(client):
    access = logging.getLogger("uvicorn.access")
    # as uvicorn's access_log=False leaves it (pytest's own capture handlers aside): no line is ever formatted
    assert not access.propagate
    assert [h for h in access.handlers if type(h).__name__ != "LogCaptureHandler"] == []
