"""GET /metrics (Prometheus) and the one ASGI middleware every request passes: request id, body limit, prediction
timing and the per-request log line.

Each app has its own CollectorRegistry (app.state.metrics_registry), so any number of apps can live in one
process. Job, queue, worker and epoch figures are read from the database at scrape time, so every API replica
reports the same numbers and nothing is lost on restart; prediction latency is measured in this process.
"""

import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import TypedDict

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException
from starlette.requests import Request as StarletteRequest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.server.api.deps import require_admin
from service.server.config import Settings
from service.server.db import utcnow
from service.server.errors import REQUEST_ID, problem, problem_responses
from service.server.fleet import liveness_window_s
from service.server.logs import REQUEST_LOG, request_id_var, request_log_level
from service.server.tables import TERMINAL_STATUSES, Dataset, EpochMetric, Job, JobStatus, Model
from service.server.tables import Worker as WorkerRow

router = APIRouter(tags=["system"])

JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 3 * 3600.0, 12 * 3600.0,
                        24 * 3600.0)
PREDICT_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
EPOCH_RATE_WINDOW_S = 60.0
PREDICT_PATHS = {"/predict": "/predict"}
BATCH_PREDICT_PATH = re.compile(r"^/models/[^/]+/predict$")


class _Figures(TypedDict):
    """One scrape's reading of the database."""

    jobs: dict[str, int]  # by status
    workers_live: int
    epochs_per_second: float
    durations: dict[str, list[float]]  # finished jobs' run times by final status
    datasets: int
    models: int


def worker_liveness_window_s(settings: Settings) -> float:
    """The window GET /workers uses for liveness."""
    return liveness_window_s(settings.heartbeat_s)


class DatabaseCollector(Collector):
    """Job, queue, worker, epoch, data set and model figures, read from the database at each scrape."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not read the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Read the figures and yield them as metric families (database_up 0 when the database cannot be read)."""
        try:
            figures = self._read()
        except Exception:
            yield GaugeMetricFamily("mlps_database_up", "Whether the last scrape could read the database", value=0)
            return
        yield GaugeMetricFamily("mlps_database_up", "Whether the last scrape could read the database", value=1)
        by_status = GaugeMetricFamily("mlps_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus:
            by_status.add_metric([status.value], figures["jobs"].get(status.value, 0))
        yield by_status
        yield GaugeMetricFamily("mlps_queue_depth", "Jobs queued, waiting for a worker",
                                value=figures["jobs"].get(JobStatus.QUEUED.value, 0))
        yield GaugeMetricFamily("mlps_workers_live", "Workers running now (not stopped, heartbeat within "
                                f"{worker_liveness_window_s(self.settings):g} s)", value=figures["workers_live"])
        yield GaugeMetricFamily("mlps_epochs_per_second", f"Epochs recorded per second over the last "
                                f"{EPOCH_RATE_WINDOW_S:g} s, all jobs", value=figures["epochs_per_second"])
        yield GaugeMetricFamily("mlps_datasets", "Data sets stored", value=figures["datasets"])
        yield GaugeMetricFamily("mlps_models", "Trained models stored", value=figures["models"])
        durations = HistogramMetricFamily("mlps_job_duration_seconds",
                                          "Finished jobs' run time (finished_at - started_at) by final status",
                                          labels=["status"])
        for status in TERMINAL_STATUSES:
            values = figures["durations"].get(status.value, [])
            buckets = [(f"{b:g}", sum(1 for v in values if v <= b)) for b in JOB_DURATION_BUCKETS]
            buckets.append(("+Inf", len(values)))
            durations.add_metric([status.value], buckets, sum_value=sum(values))
        yield durations

    def _read(self) -> _Figures:
        now = utcnow()
        alive_since = now - timedelta(seconds=worker_liveness_window_s(self.settings))
        with self.sessions() as session:
            jobs = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            workers_live = session.scalar(select(func.count()).select_from(WorkerRow).where(
                WorkerRow.stopped_at.is_(None), WorkerRow.heartbeat_at >= alive_since))
            recent_epochs = session.scalar(select(func.count()).select_from(EpochMetric).where(
                EpochMetric.created_at >= now - timedelta(seconds=EPOCH_RATE_WINDOW_S)))
            durations: dict[str, list[float]] = {}
            rows = session.execute(select(Job.status, Job.started_at, Job.finished_at).where(
                Job.started_at.is_not(None), Job.finished_at.is_not(None)))
            for status, started, finished in rows:
                assert started is not None and finished is not None  # as the query's WHERE asks
                durations.setdefault(str(status), []).append(max(0.0, (finished - started).total_seconds()))
            datasets = session.scalar(select(func.count()).select_from(Dataset))
            models = session.scalar(select(func.count()).select_from(Model))
        return {"jobs": {str(k): int(v) for k, v in jobs.items()}, "workers_live": int(workers_live or 0),
                "epochs_per_second": int(recent_epochs or 0) / EPOCH_RATE_WINDOW_S, "durations": durations,
                "datasets": int(datasets or 0), "models": int(models or 0)}


def predict_endpoint(path: str) -> str | None:
    """The route template a request path is timed under, or None when it is not a prediction."""
    if path in PREDICT_PATHS:
        return PREDICT_PATHS[path]
    if BATCH_PREDICT_PATH.match(path):
        return "/models/{model_id}/predict"
    return None


class RequestLayer:
    """The one ASGI middleware of the app (each layer costs every request a coroutine and a send wrapper):

    - the request's id: the client's x-request-id when it matches REQUEST_ID, else a new one, for logs, error
      bodies and the x-request-id response header;
    - the body limit: a request body other than a multipart upload (those stream under max_upload_bytes) larger
      than `max_bytes` gets 413, from its Content-Length before it is read, else as soon as it passes;
    - prediction timing: each POST to /predict or /models/{id}/predict is observed from request to the last byte
      of the answer, whose closing message is held back until the endpoint has returned (a streamed answer that
      fails part-way then ends with a broken connection, which a client notices, not with a clean end);
    - one log line per request (method, path, status, milliseconds), written only where logs.request_log_level
      says (JSON logs, or text logs at debug): no formatting at all otherwise.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, histogram: Histogram) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.histogram = histogram
        self.too_large = f"request bodies are limited to {max_bytes:,} bytes; send fewer records per request"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = scope["headers"]
        given = next((v for k, v in headers if k == b"x-request-id"), b"")
        rid = given.decode("ascii") if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        request_id_var.set(rid)
        raw_id = rid.encode("latin-1")
        endpoint = predict_endpoint(scope["path"]) if scope["method"] == "POST" else None
        status = 500
        closing: Message | None = None

        async def reply(message: Message) -> None:
            nonlocal status, closing
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            elif endpoint is not None and message["type"] == "http.response.body" \
                    and not message.get("more_body", False):
                closing = message
                return
            await send(message)

        try:
            inner = self._limited(scope, receive)
            if inner is None:
                response = problem(413, "payload-too-large", "Payload too large", self.too_large,
                                   StarletteRequest(scope), [{"field": "body", "message": self.too_large}])
                await response(scope, receive, reply)
            else:
                await self.app(scope, inner, reply)
            if closing is not None:
                await send(closing)
        finally:
            seconds = time.perf_counter() - start
            if endpoint is not None:
                self.histogram.labels(endpoint=endpoint, status=str(status)).observe(seconds)
            level = request_log_level()
            if level is not None:
                REQUEST_LOG.log(level, "%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1e3,
                                extra={"method": scope["method"], "path": scope["path"], "status": status,
                                       "duration_ms": round(seconds * 1e3, 2)})

    def _limited(self, scope: Scope, receive: Receive) -> Receive | None:
        """`receive`, counting the body against the limit; None when Content-Length already exceeds it."""
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if content_type[:10].lower() == b"multipart/":
            return receive
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return None
        seen = 0
        limit, message = self.max_bytes, self.too_large

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    # An HTTPException passes through FastAPI's body parsing as it is (others become 400).
                    raise HTTPException(413, detail=message)
            return msg

        return counted


def install(app: FastAPI, max_body_bytes: int) -> None:
    """Give the app its own metrics registry (database collector + predict latency) and its one middleware
    (RequestLayer), outermost."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(app.state.sessions, app.state.settings))
    latency = Histogram("mlps_predict_latency_seconds", "Prediction request latency, to the last byte of the answer",
                        labelnames=["endpoint", "status"], buckets=PREDICT_LATENCY_BUCKETS, registry=registry)
    app.state.metrics_registry = registry
    app.add_middleware(RequestLayer, max_bytes=max_body_bytes, histogram=latency)


@router.get("/metrics", summary="Prometheus metrics: jobs by status, queue depth, workers, durations, latency "
            "(admin key)", responses={200: {"content": {"text/plain": {}}}, **problem_responses(403)},
            dependencies=[Depends(require_admin)])
async def prometheus_metrics(request: Request) -> Response:
    """The app's registry in the exposition format the scraper asks for (Prometheus text by default)."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    body = await run_in_threadpool(encoder, request.app.state.metrics_registry)
    return Response(content=body, media_type=content_type)
