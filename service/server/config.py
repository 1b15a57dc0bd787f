"""Settings, read from the environment (prefix MLPS_) and built on demand."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; each has a safe default."""

    model_config = SettingsConfigDict(env_prefix="MLPS_", extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="Datasets, models and the SQLite file live here.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite in data_dir.")
    host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = Field(default="text", description="json: one object per line")
    port: int = Field(default=8000, ge=1, le=65535)

    # Uploads
    max_upload_bytes: int = Field(default=1 << 30, ge=1, description="Largest upload; 413 as soon as it is passed")
    max_rows: int = Field(default=20_000_000, ge=1, description="Rows per data set")
    max_columns: int = Field(default=5000, ge=1, description="Columns per data set")
    max_array_bytes: int = Field(default=2 << 30, ge=1, description="Unpacked size of an .npz upload's arrays")
    max_json_bytes: int = Field(default=64 << 20, ge=1, description="Largest JSON request body (413)")
    preview_rows: int = Field(default=20, ge=1, le=1000)

    # Job specs
    max_parameters: int = Field(default=50_000_000, ge=1, description="Trainable parameters per network")
    max_layers: int = Field(default=32, ge=1, description="Hidden layers per network")
    max_layer_width: int = Field(default=16384, ge=1, description="Units per hidden layer")
    max_epochs: int = Field(default=100_000, ge=1)
    max_batch_size: int = Field(default=1_000_000, ge=1)
    max_runtime_s: int = Field(default=7 * 24 * 3600, ge=1, description="Ceiling on a job's training time; also "
                               "the limit of a job that sets none")
    max_active_jobs: int = Field(default=100, ge=1, description="Queued + running jobs per owner")

    # Keys
    admin_key: SecretStr = Field(default=SecretStr(""), description="The first admin key to create, instead of a "
                                 "random one (e.g. from a deployment's secrets); mlps_ and at least 40 characters")
    rate_limit_per_s: float = Field(default=50.0, ge=0, description="Requests per second per key; 0: no limit")
    rate_limit_burst: int = Field(default=200, ge=1, description="Requests a key may make at once")

    # Queue and worker
    poll_interval_s: float = Field(default=0.2, gt=0)
    lease_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    cancel_grace_s: float = Field(default=10.0, ge=0)
    torch_threads: int = Field(default=0, ge=0, le=1024, description="Threads per training process; 0: torch's default")
    train_memory_bytes: int = Field(default=0, ge=0, description="Memory a job's prepared data may take; a job "
                                    "whose feature matrix would need more trains by streaming its data set's row "
                                    "groups; 0: half the memory the worker may use (its cgroup limit, else the "
                                    "machine's RAM)")
    progress_flush_s: float = Field(default=0.5, ge=0, description="Longest wait before epoch metrics and a "
                                   "checkpoint are written; 0 writes after every epoch")
    reap_every_s: float = Field(default=5.0, gt=0, description="How often the API and workers requeue lost jobs")

    # Where data sets, models and checkpoints live (service.server.storage)
    storage_url: str = Field(default="", description="A local directory (empty: data_dir) or s3://bucket/prefix; "
                             "with a bucket, data_dir keeps only a cache")
    cache_max_bytes: int = Field(default=10 << 30, ge=0, description="Bound on the local cache of a bucket's data "
                                 "sets and models (least recently used go first)")
    s3_endpoint_url: str = Field(default="", description="The S3 endpoint (empty: AWS_ENDPOINT_URL or AWS's own)")
    s3_region: str = Field(default="", description="The bucket's region (empty: AWS_REGION, else us-east-1)")
    s3_timeout_s: float = Field(default=3.0, gt=0, description="Connect timeout of each request to the bucket")
    s3_max_attempts: int = Field(default=3, ge=1, le=10, description="Tries of each request to the bucket")

    # Storage upkeep and faults
    min_free_bytes: int = Field(default=64 << 20, ge=0, description="Below this much free space in data_dir, "
                                "/readyz answers 503 and workers claim no new job")
    temp_max_age_s: float = Field(default=3600.0, gt=0, description="Temporary files untouched this long are "
                                  "abandoned (a killed upload or scoring) and removed")
    checkpoint_keep_s: float = Field(default=24 * 3600.0, ge=0, description="How long the checkpoints of an "
                                     "ended job are kept")
    sweep_every_s: float = Field(default=600.0, gt=0, description="How often the API removes abandoned "
                                 "temporary files and old checkpoints (also once at startup)")

    # Idempotency keys (POST /jobs, /datasets, /searches)
    idempotency_ttl_s: float = Field(default=24 * 3600.0, gt=0, description="How long a key's first response "
                                     "answers its retries; then the reaper removes it and the key is free again")
    idempotency_wait_s: float = Field(default=10.0, ge=0, description="How long a request waits for another one "
                                      "with the same key still in progress before answering 409 (well below a "
                                      "client's 30 s timeout)")
    idempotency_pending_s: float = Field(default=900.0, gt=0, description="A request with a key still in progress "
                                         "after this long counts as abandoned: a retry may take its key over")

    # Webhooks
    webhook_allow: str = Field(default="", description="Comma-separated hosts webhooks may reach although they "
                               "are not public: names (hooks.example.com), *.suffix wildcards, addresses and CIDR "
                               "ranges (10.0.0.0/8); these may also use plain http")
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120, description="Per delivery attempt")
    webhook_poll_s: float = Field(default=1.0, gt=0, description="How often the API looks for due deliveries")
    webhook_retry_base_s: float = Field(default=5.0, gt=0, description="Wait before the first retry; each "
                                        "later one waits 5 times longer (with jitter), at most an hour")
    webhook_max_attempts: int = Field(default=8, ge=1, le=50, description="Attempts per delivery before it fails")
    webhook_max_age_s: float = Field(default=24 * 3600.0, gt=0, description="A delivery still failing this long "
                                     "after its event is given up")
    webhook_keep_s: float = Field(default=30 * 24 * 3600.0, gt=0, description="How long ended deliveries stay "
                                  "in the log")

    # Predict
    model_cache_size: int = Field(default=16, ge=1)
    max_predict_records: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _default_database(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'mlps.db').resolve()}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
