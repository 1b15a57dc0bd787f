"""Settings, read from the environment (prefix MLPS_) and built on demand."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
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
    max_upload_bytes: int = Field(default=1 << 30, ge=1)
    max_columns: int = Field(default=5000, ge=1)
    preview_rows: int = Field(default=20, ge=1, le=1000)

    # Queue and worker
    poll_interval_s: float = Field(default=0.2, gt=0)
    lease_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    cancel_grace_s: float = Field(default=10.0, ge=0)
    torch_threads: int = Field(default=0, ge=0, le=1024, description="Threads per training process; 0: torch's default")
    progress_flush_s: float = Field(default=0.5, ge=0, description="Longest wait before epoch metrics and a "
                                   "checkpoint are written; 0 writes after every epoch")
    reap_every_s: float = Field(default=5.0, gt=0, description="How often the API and workers requeue lost jobs")

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
