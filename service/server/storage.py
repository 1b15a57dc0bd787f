"""Where files live. Paths are built from our own ids only, never from client input."""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

_ID = re.compile(r"^[a-z]{2,4}_[0-9a-f]{8,32}$")


def _checked(id_: str) -> str:
    if not _ID.match(id_):
        raise ValueError(f"not a valid id: {id_!r}")
    return id_


class Storage:
    """The storage directory: datasets/, models/, checkpoints/ and tmp/ under one root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def ensure(self) -> None:
        for sub in ("datasets", "models", "checkpoints", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def dataset_file(self, dataset_id: str, fmt: str = "parquet") -> Path:
        """The stored data: Parquet for tables, .npz for arrays."""
        suffix = "npz" if fmt == "npz" else "parquet"
        return self.root / "datasets" / f"{_checked(dataset_id)}.{suffix}"

    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / _checked(model_id)

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.root / "checkpoints" / _checked(job_id)

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh, unused path inside tmp/ (same filesystem, so rename is atomic)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix)
        os.close(fd)
        return Path(name)

    def temp_dir(self) -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.tmp_dir))

    def remove_dataset(self, dataset_id: str) -> None:
        for fmt in ("parquet", "npz"):
            self.dataset_file(dataset_id, fmt).unlink(missing_ok=True)

    def remove_model(self, model_id: str) -> None:
        shutil.rmtree(self.model_dir(model_id), ignore_errors=True)


def publish(src: Path, dest: Path) -> None:
    """Move a finished temp file or folder into place atomically (rename on one filesystem)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
