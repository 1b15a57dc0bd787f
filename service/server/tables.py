"""ORM tables. "Model" in this product means a trained network, hence tables.py."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from service.server.db import Base, UTCDateTime, utcnow


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting for a worker with a suitable device
    RUNNING = "running"  # claimed: a worker holds the lease and trains
    SUCCEEDED = "succeeded"  # terminal: a model was stored
    FAILED = "failed"  # terminal: error holds a message a person can act on
    CANCELLED = "cancelled"  # terminal: cancelled by the user, its process has stopped


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


# Rows that existed before owners did belong to the owner of the bootstrapped admin key.
ADMIN_OWNER = "admin"


class ApiKey(Base):
    """A bearer key. Only its SHA-256 is stored; the owner is the key's name, so a new key with the same
    name (a rotation) reaches the same data sets, jobs and models."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart in lists
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default=ADMIN_OWNER)
    name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    n_rows: Mapped[int] = mapped_column(BigInteger)
    n_columns: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    warnings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # {code, column, message}
    dialect: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # how a text table was read


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created_at", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default=ADMIN_OWNER)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    task: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    device_request: Mapped[str] = mapped_column(String(32), default="auto")
    device: Mapped[str | None] = mapped_column(String(128))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(64))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer)
    latest_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The epoch in progress, when it is long: {"epoch", "step", "steps", "samples_per_second", "eta_s"}
    step_progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The newest checkpoint a lease holder recorded: {"epoch": k, "file": name}; the files alone prove nothing.
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    warnings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # found at submit: {code, column, message}
    model_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A search's trial belongs to its search; name, tags and notes are the user's own labels.
    search_id: Mapped[str | None] = mapped_column(ForeignKey("searches.id", ondelete="SET NULL"), index=True)
    name: Mapped[str | None] = mapped_column(String(255), index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    notes: Mapped[str | None] = mapped_column(Text)


class SearchStatus(StrEnum):
    RUNNING = "running"  # trials are being created and trained until the budget is spent
    SUCCEEDED = "succeeded"  # terminal: the budget is spent and at least one trial completed
    FAILED = "failed"  # terminal: the budget is spent and no trial completed
    CANCELLED = "cancelled"  # terminal: cancelled by the user; its queued trials were cancelled, running ones stopped


class TrialState(StrEnum):
    RUNNING = "running"  # its job is queued or running
    COMPLETE = "complete"  # its job succeeded; value holds the metric
    PRUNED = "pruned"  # stopped early by the pruner (its job cancelled); value holds the last epoch's metric
    FAILED = "failed"  # its job failed, or its parameters made a spec the server refuses (error says why)
    CANCELLED = "cancelled"  # its job was cancelled with the search, or by the user


class Search(Base):
    """A hyperparameter search: the request as submitted (base spec, space, sampler, budget, metric) in `spec`;
    its trials in search_trials, each a job."""

    __tablename__ = "searches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default=ADMIN_OWNER)
    dataset_id: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    notes: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=SearchStatus.RUNNING, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    task: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    best_trial: Mapped[int | None] = mapped_column(Integer)
    model_id: Mapped[str | None] = mapped_column(String(32))
    refit_job_id: Mapped[str | None] = mapped_column(String(32))  # the best configuration trained on all rows
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SearchTrial(Base):
    __tablename__ = "search_trials"
    # Two drivers (two API processes, a restart) racing to create trial n: the second insert fails here.
    __table_args__ = (UniqueConstraint("search_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    search_id: Mapped[str] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=TrialState.RUNNING)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    value: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default=ADMIN_OWNER)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(String(32))
    model_type: Mapped[str] = mapped_column(String(32))
    task: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(255))
    features: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    labels: Mapped[list[Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RegisteredName(Base):
    """A name in the model registry, in its owner's namespace; last_version numbers its versions 1, 2, ..."""

    __tablename__ = "registry_names"
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_registry_names_owner"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ModelVersion(Base):
    """Version N of a registered name: one trained model (deleted with it, unless an alias holds it)."""

    __tablename__ = "registry_versions"
    __table_args__ = (UniqueConstraint("name_id", "version", name="uq_registry_versions_name_id"),
                      UniqueConstraint("name_id", "model_id", name="uq_registry_versions_name_id_model_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name_id: Mapped[str] = mapped_column(ForeignKey("registry_names.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    registered_by: Mapped[str] = mapped_column(String(64))
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RegistryAlias(Base):
    """An alias (production, staging, ...) of a registered name, pointing at one of its versions."""

    __tablename__ = "registry_aliases"
    __table_args__ = (UniqueConstraint("name_id", "alias", name="uq_registry_aliases_name_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name_id: Mapped[str] = mapped_column(ForeignKey("registry_names.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    # RESTRICT: the database itself refuses to delete a model an alias points at.
    version_id: Mapped[int] = mapped_column(ForeignKey("registry_versions.id", ondelete="RESTRICT"), index=True)
    moved_by: Mapped[str] = mapped_column(String(64))
    moved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AliasMove(Base):
    """The audit record of one alias move: who (owner and key) moved which alias from which version to which,
    when. to_version is null when the alias was removed."""

    __tablename__ = "registry_alias_moves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name_id: Mapped[str] = mapped_column(ForeignKey("registry_names.id", ondelete="CASCADE"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int | None] = mapped_column(Integer)
    model_id: Mapped[str | None] = mapped_column(String(32))
    moved_by: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    moved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEndpoint(Base):
    """An owner's webhook receiver: the URL, the event types it wants and the secret its deliveries are signed
    with (kept to sign; shown to the owner once, at creation)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(255))
    secret: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)  # set when a receiver answered 410 Gone
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEvent(Base):
    """The outbox: one event, written in the transaction of the change it reports; body is the JSON text exactly
    as every attempt sends and signs it."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id header
    owner: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDeliveryState(StrEnum):
    PENDING = "pending"  # due at next_attempt_at; a deliverer holds it while claimed_until is in the future
    DELIVERED = "delivered"  # terminal: the receiver answered 2xx
    FAILED = "failed"  # terminal: out of attempts or age, 410 Gone, or the endpoint was disabled


class WebhookDelivery(Base):
    """One event for one endpoint, and its attempts: [{attempt, at, status_code, error, duration_ms}]."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=WebhookDeliveryState.PENDING)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    devices: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyState(StrEnum):
    PENDING = "pending"  # the first request with this key is being processed
    DONE = "done"  # its response is stored and answers every retry until expires_at


class IdempotencyKey(Base):
    """An owner's Idempotency-Key: the first request's fingerprint (method, path, sha256 of its body) and, once
    answered, its response. service.server.idempotency reads and writes it."""

    __tablename__ = "idempotency_keys"
    # The first of several concurrent requests with one key (in any API process) is the one whose insert succeeds.
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_keys_owner_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    token: Mapped[str] = mapped_column(String(32))  # the claim of the request that inserted the row
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(255))
    body_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=IdempotencyState.PENDING)
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    response_body: Mapped[str | None] = mapped_column(Text)  # the JSON text exactly as it was sent
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # pending: when the request counts as abandoned; done: created_at + the TTL. Past it, the row is no more.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
