"""A typed Python client for the MLP Service's HTTP API (httpx, synchronous).

    from service.client import Client

    with Client() as mlps:                      # MLPS_URL, default http://127.0.0.1:8000
        ds = mlps.upload_dataset("iris.csv")
        job = mlps.submit_job({"dataset_id": ds["id"], "target": "species"})
        job = mlps.wait(job["id"])
        mlps.predict(job["model_id"], records=[{"sepal_length": 5.1, ...}])

Every error the server answers becomes an ApiError carrying the server's problem details. This module
imports nothing heavier than httpx, so scripts that use it start fast.
"""

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Literal, NotRequired, TypedDict, TypeVar, cast

import httpx

from service import __version__
from service.client.servers import ADMIN_KEY_FILE, LOOPBACK_HOSTS, recorded_key

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# Reads on the event stream: the server sends a keep-alive comment every 15 s, so silence this long means a
# stalled connection, which is then re-opened.
EVENT_READ_TIMEOUT_S = 40.0
# Uploads and batch scoring: the server parses or scores the whole file before (or while) answering.
LONG_READ_TIMEOUT_S = 600.0
MAX_RECONNECTS = 8
# POSTs that create something carry an Idempotency-Key and are retried with it: after a lost connection or a
# timeout, and on these answers of a proxy or a briefly unavailable server.
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_BASE_S = 0.5
RETRY_CAP_S = 10.0

T = TypeVar("T")
EventKind = Literal["status", "epoch", "steps"]


# ---------------------------------------------------------------- response shapes
# The server's OpenAPI document is the source of truth (tests/client/test_types.py holds these to it): a key the
# schema does not mark required is NotRequired here.


class Page(TypedDict, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


ColumnKind = Literal["numeric", "categorical", "boolean", "datetime", "text", "identifier", "tensor"]


class Column(TypedDict):
    name: str
    kind: ColumnKind
    reason: NotRequired[str | None]  # why the column has its kind
    inferred_kind: NotRequired[ColumnKind | None]  # where the user set another
    datetime_layout: NotRequired[str | None]
    dtype: str
    n_missing: int
    n_unique: int
    stats: dict[str, Any]
    shape: NotRequired[list[int] | None]


class DataWarning(TypedDict):
    code: str  # stable: identifier_column, rare_class, target_leak, ...
    column: NotRequired[str | None]
    message: str


class Dialect(TypedDict):
    format: str
    delimiter: str
    decimal: str
    encoding: str
    quoted_newlines: bool
    thousands_separator: list[str] | None
    missing_values: list[str]


class Dataset(TypedDict):
    id: str
    name: str
    format: str
    n_rows: int
    n_columns: int
    columns: list[Column]
    size_bytes: int
    sha256: str
    created_at: str
    warnings: NotRequired[list[DataWarning]]
    dialect: NotRequired[Dialect | None]


class DatasetPreview(TypedDict):
    dataset_id: str
    columns: list[str]
    rows: list[dict[str, Any]]


class Progress(TypedDict):
    epoch: int
    epochs: int
    # the epoch in progress, once it has run a few seconds
    step: NotRequired[int | None]
    steps: NotRequired[int | None]
    samples_per_second: NotRequired[float | None]
    eta_s: NotRequired[float | None]


class Job(TypedDict):
    id: str
    status: str
    dataset_id: str | None
    task: str
    spec: dict[str, Any]
    progress: Progress
    latest_metrics: dict[str, Any] | None
    device_request: str
    device: str | None
    attempts: int
    cancel_requested: bool
    waiting_for: NotRequired[str | None]
    error: str | None
    warnings: NotRequired[list[DataWarning]]  # what the checks at submit found
    result: dict[str, Any] | None
    metrics: NotRequired[dict[str, Any] | None]  # the kept model's figures once succeeded
    model_id: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    duration_s: NotRequired[float | None]
    search_id: NotRequired[str | None]  # the search this job is a trial of
    name: NotRequired[str | None]
    tags: NotRequired[list[str]]
    notes: NotRequired[str | None]


class EpochMetrics(TypedDict):
    epoch: int
    metrics: dict[str, Any]


class TargetPredictions(TypedDict):
    target: str
    actual: list[float]  # in the target's units
    predicted: list[float]  # for the same rows


class RocCurve(TypedDict):
    label: str  # the positive class
    fpr: list[float]
    tpr: list[float]
    auc: float | None


class ClassFigures(TypedDict):
    label: str
    precision: float
    recall: float
    f1: float
    support: int


class JobReport(TypedDict):
    split: Literal["test", "validation", "out-of-fold"]
    n_rows: int
    predictions: list[TargetPredictions] | None  # regression
    roc: list[RocCurve] | None  # classification
    classes: list[ClassFigures] | None  # classification


class JobMetrics(TypedDict):
    job_id: str
    task: str
    epochs: list[EpochMetrics]
    test: NotRequired[dict[str, Any] | None]
    confusion_matrix: NotRequired[dict[str, Any] | None]
    report: NotRequired[JobReport | None]  # what the plots draw, once the job succeeded


class Model(TypedDict):
    id: str
    job_id: str | None
    dataset_id: str | None
    model_type: str
    task: str
    target: str | None
    features: list[dict[str, Any]]
    labels: list[Any] | None
    metrics: dict[str, Any]
    size_bytes: int
    created_at: str


class Prediction(TypedDict):
    model_id: str
    predictions: list[Any]
    probabilities: list[dict[str, float]] | None
    uncertainty: NotRequired[list[dict[str, Any]] | None]  # an ensemble's member spread, when asked for


class Embedding(TypedDict):
    model_id: str
    embeddings: list[list[float]]


class RegisteredModel(TypedDict):
    name: str
    owner: str
    latest_version: int | None  # the newest version still present
    versions: int  # how many are present
    aliases: dict[str, int]  # alias -> version
    created_at: str
    updated_at: str


class ModelVersion(TypedDict):
    name: str
    version: int
    model_id: str
    aliases: list[str]  # the aliases that point at this version now
    registered_by: str
    registered_at: str


class Alias(TypedDict):
    name: str
    alias: str
    version: int
    model_id: str
    previous_version: int | None  # before its last move (None: that move created it)
    moved_by: str
    moved_at: str


class AliasMove(TypedDict):
    alias: str
    from_version: int | None  # None: the move created the alias
    to_version: int | None  # None: the move removed it
    model_id: str | None
    moved_by: str
    key_id: str
    moved_at: str


WebhookEventType = Literal["job.succeeded", "job.failed", "job.cancelled", "search.finished"]


class Webhook(TypedDict):
    id: str
    owner: str
    url: str
    events: list[WebhookEventType]
    description: str | None
    enabled: bool
    disabled_reason: str | None  # why the server disabled it (its receiver answered 410 Gone)
    created_at: str
    updated_at: str


class WebhookCreated(Webhook):
    secret: str  # whsec_...: shown in this answer only


class WebhookAttempt(TypedDict):
    attempt: int
    at: str
    status_code: int | None  # None: no answer came (refused address, timeout, connection error)
    error: str | None
    duration_ms: float


class WebhookDelivery(TypedDict):
    id: int
    event_id: str  # the webhook-id header, the same on every attempt
    type: str
    state: Literal["pending", "delivered", "failed"]
    attempt_count: int
    attempts: list[WebhookAttempt]
    next_attempt_at: str | None
    created_at: str
    finished_at: str | None


class Worker(TypedDict):
    id: str
    host: str
    pid: int
    devices: list[dict[str, Any]]
    started_at: str
    heartbeat_at: str
    stopped_at: str | None
    alive: bool
    running_jobs: list[str]


class WorkerList(TypedDict):
    items: list[Worker]


class ComparedJob(TypedDict):
    id: str
    name: str | None
    status: str
    search_id: str | None
    epochs_run: int
    metrics: dict[str, Any] | None  # the kept model's figures once succeeded, else the latest epoch's


class MetricHistory(TypedDict):
    metric: str
    epochs: list[int]
    values: dict[str, list[float | None]]  # job id -> the metric at each of `epochs`


class SpecDifference(TypedDict):
    field: str  # dotted, e.g. training.learning_rate
    values: dict[str, Any]  # job id -> its value


class JobComparison(TypedDict):
    jobs: list[ComparedJob]
    histories: list[MetricHistory]
    differences: list[SpecDifference]


class Trial(TypedDict):
    number: int
    state: Literal["running", "complete", "pruned", "failed", "cancelled"]
    params: dict[str, Any]
    value: float | None
    job_id: str | None
    job_status: str | None
    epochs: int
    duration_s: float | None
    error: str | None
    created_at: str
    finished_at: str | None


class SearchProgress(TypedDict):
    trials_done: int
    trials_running: int
    trials_budget: int | None  # None: only the wall time bounds it
    elapsed_s: float
    max_wall_s: int | None


class Search(TypedDict):
    id: str
    status: Literal["running", "succeeded", "failed", "cancelled"]
    name: str | None
    tags: list[str]
    notes: str | None
    dataset_id: str | None
    task: str
    sampler: str
    metric: str
    direction: Literal["minimize", "maximize"]
    spec: dict[str, Any]
    progress: SearchProgress
    best: Trial | None
    model_id: str | None
    refit_job_id: NotRequired[str | None]  # with refit: the best configuration trained on all rows
    refit_model_id: NotRequired[str | None]
    leaderboard: NotRequired[list[Trial] | None]  # best first; GET /searches/{id} only
    error: str | None
    created_at: str
    finished_at: str | None


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's progress: a status change (data: the job), an epoch (data: its metrics) or, in a long
    epoch, where its steps stand (`steps`; data: epoch in progress, step, steps, samples_per_second, eta_s)."""

    kind: EventKind
    data: dict[str, Any]
    id: str | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether this is the job's final status event."""
        return self.kind == "status" and self.data.get("status") in TERMINAL_STATUSES


# ---------------------------------------------------------------- errors


class ClientError(Exception):
    """Base of the errors this client raises."""


class ServerUnreachable(ClientError):
    """No HTTP answer at all: the server is down, the URL is wrong, or the connection broke."""


@dataclass(eq=False)
class ApiError(ClientError):
    """The server answered with an error (RFC 9457 problem details)."""

    status: int
    title: str
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    type: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        """Build from an error response, whether it holds problem JSON or not."""
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            text = response.text.strip()[:500] if response.content else ""
            return cls(status=response.status_code, title=response.reason_phrase or "HTTP error",
                       detail=text or f"HTTP {response.status_code} from {response.request.url}")
        errors: list[dict[str, Any]] = body["errors"] if isinstance(body.get("errors"), list) else []
        return cls(status=int(body.get("status") or response.status_code),
                   title=str(body.get("title") or response.reason_phrase or "HTTP error"),
                   detail=str(body.get("detail") or ""), errors=errors, type=body.get("type"),
                   request_id=body.get("request_id") or response.headers.get("x-request-id"))


class _EventsUnavailable(Exception):
    """The server has no event stream for jobs: wait() polls instead."""


# ---------------------------------------------------------------- server-sent events


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str, str | None]]:
    """(event, data, id) for each event in a text/event-stream; comments and retry fields are skipped."""
    event = "message"
    data: list[str] = []
    event_id: str | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data), event_id
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
    if data:
        yield event, "\n".join(data), event_id


# ---------------------------------------------------------------- the client


def find_api_key(base_url: str) -> str | None:
    """The key to send: MLPS_API_KEY, else MLPS_API_KEY_FILE, else, for a server on this machine, the admin key of
    the running server recorded for this URL (see service.client.servers), else the one `mlps serve` wrote to
    <MLPS_DATA_DIR, default ./var>/admin.key."""
    if os.environ.get("MLPS_API_KEY"):
        return os.environ["MLPS_API_KEY"].strip()
    path = os.environ.get("MLPS_API_KEY_FILE")
    if not path:
        if httpx.URL(base_url).host not in LOOPBACK_HOSTS:
            return None
        recorded = recorded_key(base_url)
        if recorded is not None:
            return recorded
        path = str(Path(os.environ.get("MLPS_DATA_DIR") or "var") / ADMIN_KEY_FILE)
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


class Client:
    """The MLP Service over HTTP; every method is one endpoint (wait() follows a job to its end)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 30.0,
                 retries: int = 4) -> None:
        self.base_url = (base_url or os.environ.get("MLPS_URL") or DEFAULT_URL).rstrip("/")
        self.timeout = timeout
        self.retries = retries  # of an upload, a job or a search, with its Idempotency-Key (0: never)
        key = api_key if api_key is not None else find_api_key(self.base_url)
        headers = {"user-agent": f"mlps-client/{__version__}", "accept": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    @property
    def headers(self) -> dict[str, str]:
        """The headers sent with every request (user agent, accept and, with an API key, authorization)."""
        return dict(self._http.headers)

    # ------------------------------------------------------------ plumbing

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        return ServerUnreachable(f"cannot reach the MLP Service at {self.base_url} ({type(exc).__name__}: "
                                 f"{exc}); is it running? Set MLPS_URL or pass --url")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _create(self, path: str, idempotency_key: str | None, **kwargs: Any) -> Any:
        """POST something new with an Idempotency-Key (the caller's, else a new UUID), retried with that key after
        a connection error or a timeout and on 502/503/504, and on the server's 409 for a request with the key
        still in progress: the server answers a retry with the first response, so nothing is created twice."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key or str(uuid.uuid4())}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request("POST", path, headers=headers, **kwargs)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if last:
                    raise self._unreachable(exc) from None
                time.sleep(_backoff(attempt, None))
                continue
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
            if last or not (response.status_code in RETRY_STATUSES or _key_in_progress(response)):
                if response.is_error:
                    raise ApiError.from_response(response)
                return response.json()
            time.sleep(_backoff(attempt, response.headers.get("retry-after")))
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _long_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, LONG_READ_TIMEOUT_S))

    # ------------------------------------------------------------ system

    def health(self) -> dict[str, Any]:
        """GET /healthz: the process answers."""
        return cast(dict[str, Any], self._json("GET", "/healthz"))

    def ready(self) -> bool:
        """GET /readyz: whether the database is reachable and migrated."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def workers(self, include_stopped: bool = False) -> WorkerList:
        """GET /workers: live workers (with include_stopped, stopped or silent ones too), devices, running jobs."""
        return cast(WorkerList, self._json("GET", "/workers", params={"include_stopped": include_stopped}))

    def server_metrics(self) -> str:
        """GET /metrics: the Prometheus text exposition."""
        return self._request("GET", "/metrics", headers={"accept": "text/plain"}).text

    # ------------------------------------------------------------ datasets

    def upload_dataset(self, path: str | Path, name: str | None = None, idempotency_key: str | None = None
                       ) -> Dataset:
        """POST /datasets: upload a CSV, TSV, Parquet or .npz file (streamed from disk; retried safely, see
        `_create`)."""
        path = Path(path)
        with path.open("rb") as fh:  # a retry sends the file again from its start
            return cast(Dataset, self._create("/datasets", idempotency_key,
                                              files={"file": (path.name, fh, "application/octet-stream")},
                                              data={"name": name} if name else None, timeout=self._long_timeout()))

    def datasets(self, limit: int = 50, offset: int = 0) -> Page[Dataset]:
        """GET /datasets: a page of data sets, newest first."""
        return cast(Page[Dataset], self._json("GET", "/datasets", params={"limit": limit, "offset": offset}))

    def dataset(self, dataset_id: str) -> Dataset:
        """GET /datasets/{id}: one data set and its column schema."""
        return cast(Dataset, self._json("GET", f"/datasets/{dataset_id}"))

    def preview(self, dataset_id: str, limit: int = 20) -> DatasetPreview:
        """GET /datasets/{id}/preview: the first rows."""
        return cast(DatasetPreview, self._json("GET", f"/datasets/{dataset_id}/preview", params={"limit": limit}))

    def update_dataset(self, dataset_id: str, *, name: str | None = None,
                       column_kinds: dict[str, str] | None = None) -> Dataset:
        """PATCH /datasets/{id}: rename it, or set the kinds of columns ({"customer_id": "categorical"})."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if column_kinds:
            body["column_kinds"] = column_kinds
        return cast(Dataset, self._json("PATCH", f"/datasets/{dataset_id}", json=body))

    def delete_dataset(self, dataset_id: str) -> None:
        """DELETE /datasets/{id} (409 while a queued or running job uses it)."""
        self._request("DELETE", f"/datasets/{dataset_id}")

    # ------------------------------------------------------------ jobs

    def submit_job(self, spec: dict[str, Any], idempotency_key: str | None = None) -> Job:
        """POST /jobs: enqueue a training job; answers the queued job (retried safely, see `_create`)."""
        return cast(Job, self._create("/jobs", idempotency_key, json=spec))

    def jobs(self, status: str | None = None, limit: int = 50, offset: int = 0,
             dataset_id: str | None = None, tag: str | None = None, name: str | None = None,
             search_id: str | None = None) -> Page[Job]:
        """GET /jobs: a page of jobs, newest first, optionally filtered by status, data set, tag, name or search."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        for key, value in (("status", status), ("dataset_id", dataset_id), ("tag", tag), ("name", name),
                           ("search_id", search_id)):
            if value:
                params[key] = value
        return cast(Page[Job], self._json("GET", "/jobs", params=params))

    def update_job(self, job_id: str, **labels: Any) -> Job:
        """PATCH /jobs/{id}: set name=, tags= (replacing every tag) or notes= (None clears a name or notes)."""
        return cast(Job, self._json("PATCH", f"/jobs/{job_id}", json=labels))

    def compare(self, job_ids: list[str]) -> JobComparison:
        """GET /jobs/compare: aligned per-epoch metrics, final metrics and the spec fields that differ."""
        return cast(JobComparison, self._json("GET", "/jobs/compare", params={"ids": ",".join(job_ids)}))

    def job(self, job_id: str) -> Job:
        """GET /jobs/{id}: status, progress, latest metrics, result."""
        return cast(Job, self._json("GET", f"/jobs/{job_id}"))

    def metrics(self, job_id: str) -> JobMetrics:
        """GET /jobs/{id}/metrics: every epoch's metrics (and the confusion matrix and held-out report once
        finished)."""
        return cast(JobMetrics, self._json("GET", f"/jobs/{job_id}/metrics"))

    def cancel(self, job_id: str) -> Job:
        """POST /jobs/{id}/cancel: cancel a queued or running job (409 if it already finished)."""
        return cast(Job, self._json("POST", f"/jobs/{job_id}/cancel"))

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[JobEvent]:
        """GET /jobs/{id}/events: the job's live events on one connection, until its final status."""
        try:
            yield from self._event_stream(job_id, last_event_id, EVENT_READ_TIMEOUT_S)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _event_stream(self, job_id: str, last_event_id: str | None, read_timeout: float) -> Iterator[JobEvent]:
        """One connection to the event stream; httpx's transport errors (ReadTimeout included) pass through."""
        headers = {"accept": "text/event-stream"}
        if last_event_id:
            headers["last-event-id"] = last_event_id
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        with self._http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
            if response.status_code in (404, 405, 501) and not _mentions(response, job_id):
                raise _EventsUnavailable()
            if response.is_error:
                response.read()
                raise ApiError.from_response(response)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise _EventsUnavailable()
            for kind, data, event_id in parse_sse(response.iter_lines()):
                if kind in ("status", "epoch", "steps"):
                    yield JobEvent(kind=cast(EventKind, kind), data=json.loads(data), id=event_id)

    def wait(self, job_id: str, timeout: float | None = None,
             on_update: Callable[[JobEvent], None] | None = None, *, stream: bool = True,
             poll_interval: float = 0.5) -> Job:
        """Follow a job until it succeeds, fails or is cancelled; answers the final job.

        Uses the live event stream (re-connecting with Last-Event-ID, so no event is lost or repeated) and falls
        back to polling every `poll_interval` seconds on a server without one (or with stream=False).
        `on_update` sees every event; raises TimeoutError after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.job(job_id)["status"]  # an unknown job is an ApiError (404) at once
        if not stream:
            return self._poll(job_id, deadline, on_update, poll_interval)
        last_event_id: str | None = None
        failures = 0
        while True:
            # Reads wait at most until the deadline: keep-alive comments alone must not keep wait() waiting.
            read_timeout = EVENT_READ_TIMEOUT_S if deadline is None else \
                max(0.05, min(EVENT_READ_TIMEOUT_S, deadline - time.monotonic()))
            try:
                for event in self._event_stream(job_id, last_event_id, read_timeout):
                    last_event_id = event.id or last_event_id
                    failures = 0
                    status = event.data["status"] if event.kind == "status" else status
                    if on_update is not None:
                        on_update(event)
                    if event.is_terminal:
                        return self.job(job_id)
                    _check_deadline(deadline, job_id, status)
            except _EventsUnavailable:
                return self._poll(job_id, deadline, on_update, poll_interval)
            except httpx.ReadTimeout:
                _check_deadline(deadline, job_id, status)  # else: a stalled connection, opened again below
            except httpx.TransportError as exc:
                failures += 1
                if failures > MAX_RECONNECTS:
                    raise self._unreachable(exc) from None
            else:
                # The stream ended without a final status: the server restarted, or the final event was
                # already delivered on an earlier connection.
                job = self.job(job_id)
                if job["status"] in TERMINAL_STATUSES:
                    return job
                failures += 1
            _check_deadline(deadline, job_id, status)
            if failures:
                time.sleep(min(0.1 * 2 ** failures, 2.0))

    def _poll(self, job_id: str, deadline: float | None, on_update: Callable[[JobEvent], None] | None,
              poll_interval: float) -> Job:
        """wait() without an event stream: GET the job (and new epochs' metrics) every poll_interval."""
        status, epochs_seen, steps_seen = None, 0, None
        while True:
            job = self.job(job_id)
            if on_update is not None and job["progress"]["epoch"] > epochs_seen:
                for row in self.metrics(job_id)["epochs"]:
                    if row["epoch"] > epochs_seen:
                        on_update(JobEvent(kind="epoch", data={"job_id": job_id, "epoch": row["epoch"],
                                                               "epochs": job["progress"]["epochs"],
                                                               "metrics": row["metrics"]}))
                        epochs_seen = row["epoch"]
            if job["status"] != status:
                status = job["status"]
                if on_update is not None:
                    on_update(JobEvent(kind="status", data=dict(job)))
            progress = job["progress"]
            if on_update is not None and status == "running" and progress.get("step") is not None \
                    and progress != steps_seen:
                steps_seen = progress
                on_update(JobEvent(kind="steps", data={"job_id": job_id, **progress, "epoch": progress["epoch"] + 1}))
            if status in TERMINAL_STATUSES:
                return job
            _check_deadline(deadline, job_id, status)
            time.sleep(poll_interval)

    # ------------------------------------------------------------ searches

    def start_search(self, request: dict[str, Any], idempotency_key: str | None = None) -> Search:
        """POST /searches: a base spec ("spec"), a "space", a sampler, a budget and a metric; queues its first
        trials (retried safely, see `_create`)."""
        return cast(Search, self._create("/searches", idempotency_key, json=request))

    def searches(self, status: str | None = None, tag: str | None = None, name: str | None = None,
                 limit: int = 50, offset: int = 0) -> Page[Search]:
        """GET /searches: a page of searches, newest first (without their leaderboards)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        for key, value in (("status", status), ("tag", tag), ("name", name)):
            if value:
                params[key] = value
        return cast(Page[Search], self._json("GET", "/searches", params=params))

    def search(self, search_id: str) -> Search:
        """GET /searches/{id}: status, progress, the best trial and the leaderboard."""
        return cast(Search, self._json("GET", f"/searches/{search_id}"))

    def search_trials(self, search_id: str) -> list[Trial]:
        """GET /searches/{id}/trials: every trial, in order."""
        return cast(list[Trial], self._json("GET", f"/searches/{search_id}/trials"))

    def update_search(self, search_id: str, **labels: Any) -> Search:
        """PATCH /searches/{id}: set name=, tags= or notes=."""
        return cast(Search, self._json("PATCH", f"/searches/{search_id}", json=labels))

    def cancel_search(self, search_id: str) -> Search:
        """POST /searches/{id}/cancel: queued trials are cancelled, running ones stopped."""
        return cast(Search, self._json("POST", f"/searches/{search_id}/cancel"))

    def search_events(self, search_id: str) -> Iterator[Search]:
        """GET /searches/{id}/events: the search (with its leaderboard) each time a trial moves, until it ends."""
        timeout = httpx.Timeout(self.timeout, read=EVENT_READ_TIMEOUT_S)
        try:
            with self._http.stream("GET", f"/searches/{search_id}/events", timeout=timeout,
                                   headers={"accept": "text/event-stream"}) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                for kind, data, _ in parse_sse(response.iter_lines()):
                    if kind == "search":
                        yield cast(Search, json.loads(data))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def wait_search(self, search_id: str, timeout: float | None = None, interval: float = 1.0) -> Search:
        """Poll GET /searches/{id} until the search and its trials have ended (TimeoutError after `timeout` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            search = self.search(search_id)
            if search["status"] != "running" and search["progress"]["trials_running"] == 0:
                return search
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"search {search_id} is still {search['status']} after {timeout} s")
            time.sleep(interval)

    # ------------------------------------------------------------ models and predictions

    def models(self, limit: int = 50, offset: int = 0) -> Page[Model]:
        """GET /models: a page of trained models, newest first."""
        return cast(Page[Model], self._json("GET", "/models", params={"limit": limit, "offset": offset}))

    def model(self, model_id: str) -> Model:
        """GET /models/{id}: task, feature schema, labels and metrics."""
        return cast(Model, self._json("GET", f"/models/{model_id}"))

    def download_model(self, model_id: str, out_path: str | Path | IO[bytes]) -> None:
        """GET /models/{id}/download: a zip of weights.safetensors and model.json, saved to out_path."""
        try:
            with self._http.stream("GET", f"/models/{model_id}/download", timeout=self._long_timeout()) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                _save_stream(response, out_path)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def export_model(self, model_id: str, out_path: str | Path | IO[bytes],
                     format: Literal["onnx"] = "onnx") -> None:
        """GET /models/{id}/export: the model as one self-contained ONNX file (raw feature columns in, probabilities
        or values out), saved to out_path."""
        try:
            with self._http.stream("GET", f"/models/{model_id}/export", params={"format": format},
                                   timeout=self._long_timeout()) as response:
                if response.is_error:
                    response.read()
                    raise ApiError.from_response(response)
                _save_stream(response, out_path)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def delete_model(self, model_id: str) -> None:
        """DELETE /models/{id}: its record, files and cached copies (the job that trained it stays)."""
        self._request("DELETE", f"/models/{model_id}")

    def predict(self, model_id: str, records: list[dict[str, Any]] | None = None,
                inputs: list[Any] | None = None, uncertainty: bool = False) -> Prediction:
        """POST /predict: records keyed by column name, or `inputs` (nested arrays) for array models; with
        `uncertainty`, an ensemble's member spread per record. `model_id` may be a registry reference
        ('iris@production', 'iris:3')."""
        # a registry reference ('iris@production', 'iris:3') goes as `model`, an id as `model_id`
        body: dict[str, Any] = {"model" if "@" in model_id or ":" in model_id else "model_id": model_id}
        if uncertainty:
            body["uncertainty"] = True
        if records is not None:
            body["records"] = records
        if inputs is not None:
            body["inputs"] = inputs
        return cast(Prediction, self._json("POST", "/predict", json=body))

    def embed(self, model_id: str, records: list[dict[str, Any]] | None = None,
              inputs: list[Any] | None = None) -> Embedding:
        """POST /models/{id}/embed: an autoencoder's bottleneck codes."""
        body: dict[str, Any] = {}
        if records is not None:
            body["records"] = records
        if inputs is not None:
            body["inputs"] = inputs
        return cast(Embedding, self._json("POST", f"/models/{model_id}/embed", json=body))

    def predict_csv(self, model_id: str, in_path: str | Path, out_path: str | Path | IO[bytes]) -> int | None:
        """POST /models/{id}/predict: score a CSV (or Parquet) file, streaming the predictions CSV to out_path.

        Answers the number of rows scored (the server's X-Row-Count header).
        """
        in_path = Path(in_path)
        with in_path.open("rb") as fh:
            try:
                with self._http.stream("POST", f"/models/{model_id}/predict",
                                       files={"file": (in_path.name, fh, "text/csv")},
                                       headers={"accept": "text/csv"}, timeout=self._long_timeout()) as response:
                    if response.is_error:
                        response.read()
                        raise ApiError.from_response(response)
                    _save_stream(response, out_path)
                    rows = response.headers.get("x-row-count")
                    return int(rows) if rows and rows.isdigit() else None
            except httpx.RemoteProtocolError as exc:
                raise ClientError(f"the server stopped the prediction stream part-way ({exc}); a row further "
                                  "down the file may not fit the model: see the server log") from None
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None

    # ------------------------------------------------------------ the model registry

    def registered_models(self, limit: int = 50, offset: int = 0) -> Page[RegisteredModel]:
        """GET /registry: your registered names, alphabetically."""
        return cast(Page[RegisteredModel], self._json("GET", "/registry", params={"limit": limit, "offset": offset}))

    def register_model(self, name: str, model_id: str) -> ModelVersion:
        """POST /registry/{name}: register a model as the name's next version (the name is created on first use)."""
        return cast(ModelVersion, self._json("POST", f"/registry/{name}", json={"model_id": model_id}))

    def registered_model(self, name: str) -> RegisteredModel:
        """GET /registry/{name}: its newest version, how many there are, its aliases."""
        return cast(RegisteredModel, self._json("GET", f"/registry/{name}"))

    def model_versions(self, name: str, limit: int = 50, offset: int = 0) -> Page[ModelVersion]:
        """GET /registry/{name}/versions: the name's versions, newest first."""
        return cast(Page[ModelVersion], self._json("GET", f"/registry/{name}/versions",
                                                   params={"limit": limit, "offset": offset}))

    def model_version(self, name: str, version: int) -> ModelVersion:
        """GET /registry/{name}/versions/{version}: one version's model and aliases."""
        return cast(ModelVersion, self._json("GET", f"/registry/{name}/versions/{version}"))

    def move_alias(self, name: str, alias: str, version: int, expected_version: int | None = None) -> Alias:
        """PUT /registry/{name}/aliases/{alias}: point the alias at a version, atomically; with `expected_version`
        only if it points there now (0: only if it does not exist yet), else an ApiError 409."""
        body: dict[str, Any] = {"version": version}
        if expected_version is not None:
            body["expected_version"] = expected_version
        return cast(Alias, self._json("PUT", f"/registry/{name}/aliases/{alias}", json=body))

    def alias(self, name: str, alias: str) -> Alias:
        """GET /registry/{name}/aliases/{alias}: where it points, who moved it there, when."""
        return cast(Alias, self._json("GET", f"/registry/{name}/aliases/{alias}"))

    def alias_history(self, name: str, alias: str, limit: int = 50, offset: int = 0) -> Page[AliasMove]:
        """GET /registry/{name}/aliases/{alias}/history: every move of the alias, newest first."""
        return cast(Page[AliasMove], self._json("GET", f"/registry/{name}/aliases/{alias}/history",
                                                params={"limit": limit, "offset": offset}))

    def remove_alias(self, name: str, alias: str) -> None:
        """DELETE /registry/{name}/aliases/{alias}: remove the alias (its versions stay; the removal is recorded)."""
        self._request("DELETE", f"/registry/{name}/aliases/{alias}")

    # ------------------------------------------------------------ webhooks

    def create_webhook(self, url: str, events: list[str], description: str | None = None) -> WebhookCreated:
        """POST /webhooks: a new endpoint; the answer's `secret` (to verify signatures) is shown this once."""
        body: dict[str, Any] = {"url": url, "events": events}
        if description is not None:
            body["description"] = description
        return cast(WebhookCreated, self._json("POST", "/webhooks", json=body))

    def webhooks(self, limit: int = 50, offset: int = 0) -> Page[Webhook]:
        """GET /webhooks: your webhook endpoints, oldest first."""
        return cast(Page[Webhook], self._json("GET", "/webhooks", params={"limit": limit, "offset": offset}))

    def webhook(self, webhook_id: str) -> Webhook:
        """GET /webhooks/{id}: one endpoint (without its secret)."""
        return cast(Webhook, self._json("GET", f"/webhooks/{webhook_id}"))

    def update_webhook(self, webhook_id: str, **changes: Any) -> Webhook:
        """PATCH /webhooks/{id}: change url, events, description or enabled."""
        return cast(Webhook, self._json("PATCH", f"/webhooks/{webhook_id}", json=changes))

    def delete_webhook(self, webhook_id: str) -> None:
        """DELETE /webhooks/{id}: remove the endpoint and its delivery log."""
        self._request("DELETE", f"/webhooks/{webhook_id}")

    def test_webhook(self, webhook_id: str) -> WebhookDelivery:
        """POST /webhooks/{id}/test: queue a webhook.test event for the endpoint; answers its pending delivery."""
        return cast(WebhookDelivery, self._json("POST", f"/webhooks/{webhook_id}/test"))

    def webhook_deliveries(self, webhook_id: str, state: str | None = None, limit: int = 50,
                           offset: int = 0) -> Page[WebhookDelivery]:
        """GET /webhooks/{id}/deliveries: the delivery log, newest first (optionally only one state)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state is not None:
            params["state"] = state
        return cast(Page[WebhookDelivery], self._json("GET", f"/webhooks/{webhook_id}/deliveries", params=params))


def _backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds before retry `attempt` + 1: the server's Retry-After when it gives one, else doubling from 0.5 s."""
    if retry_after is not None and retry_after.strip().isdigit():
        return min(float(retry_after), RETRY_CAP_S)
    return min(RETRY_BASE_S * 2.0 ** attempt, RETRY_CAP_S)


def _key_in_progress(response: httpx.Response) -> bool:
    """The server's 409 for a request whose Idempotency-Key another request, still running, holds."""
    if response.status_code != 409:
        return False
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return False
    return any(isinstance(e, dict) and e.get("field") == IDEMPOTENCY_HEADER for e in errors)


def _mentions(response: httpx.Response, job_id: str) -> bool:
    """Whether an error response is about this job (as opposed to a route the server does not have)."""
    response.read()
    return job_id in response.text


def _check_deadline(deadline: float | None, job_id: str, status: str | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"job {job_id} has not finished in time" + (f" (still {status})" if status else ""))


def _save_stream(response: httpx.Response, out: str | Path | IO[bytes]) -> None:
    """Write a streamed body to a path (atomically, via a .part file) or to an open binary file."""
    if not isinstance(out, (str, Path)):
        for chunk in response.iter_bytes():
            out.write(chunk)
        out.flush()
        return
    out = Path(out)
    part = out.with_name(out.name + ".part")
    try:
        with part.open("wb") as fh:
            for chunk in response.iter_bytes():
                fh.write(chunk)
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
