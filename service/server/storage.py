"""Where files live. Paths are built from our own ids only, never from client input.

Two backends behind one `Storage`: a local directory (the default: datasets/, models/, checkpoints/ and tmp/ under
`data_dir`), or an S3 bucket (`MLPS_STORAGE_URL=s3://bucket/prefix`), where data sets, models and checkpoints
live under the prefix and every process keeps only a cache on its own disk. Callers work with local paths in both:
`dataset_file` and `model_dir` fetch from the bucket on first use; the writers call the `publish_*` and
checkpoint methods, which with a local directory are today's renames.

What a reader of the bucket may rely on: an object appears whole or not at all (S3 publishes a multipart upload
only when it completes); a model folder counts as present only once its `model.json`, uploaded last, exists, and a
checkpoint once its `.json`, uploaded after its tensors. The cache (datasets/ and models/ under `data_dir`) is
bounded by `cache_max_bytes`, evicts the least recently used entries and may be deleted at any time: a missing
entry is fetched again. Every request to the bucket has short timeouts and bounded retries; a bucket that cannot
be reached raises `StorageUnavailable` (a 503 for the API, a job handed back for a worker), never a hang; a request
the bucket refuses for good (access denied, object too large) raises `StorageRefused` (a 500 naming the code, a
failed job).
"""

import errno
import functools
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.server.errors import ServiceError

if TYPE_CHECKING:
    from service.server.config import Settings

_ID = re.compile(r"^[a-z]{2,4}_[0-9a-f]{8,32}$")
_CHECKPOINT = re.compile(r"^[0-9a-f]{1,8}-[0-9]{1,9}$")
# The file of a model folder written last: the folder exists for readers once it does (training/artifact.py).
MODEL_META = "model.json"
# The files of a model folder in the cache, written once all are fetched: an entry without it is fetched again.
_MANIFEST = ".files.json"
# Parts of a multipart upload: the most an upload holds in memory is about PART_BYTES × UPLOAD_THREADS.
PART_BYTES = 8 << 20
UPLOAD_THREADS = 4
# Cache entries used this recently are never evicted: a streaming job reopens its data set file every epoch.
CACHE_IN_USE_S = 600.0
# The error codes of a bucket that may answer if asked again: busy, slow or failing on its side.
_RETRYABLE_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
                              "ThrottlingException", "RequestLimitExceeded", "NoSuchBucket"})
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def _checked(id_: str) -> str:
    if not _ID.match(id_):
        raise ValueError(f"not a valid id: {id_!r}")
    return id_


def _checked_checkpoint(name: str) -> str:
    if not _CHECKPOINT.match(name):
        raise ValueError(f"not a valid checkpoint name: {name!r}")
    return name


class StorageUnavailable(ConnectionError):
    """The object storage cannot be reached or answers that it cannot serve us just now (down, timed out, busy, a
    5xx, bucket missing); the message names the URL and the cause. Worth trying again later."""


class StorageRefused(ServiceError, OSError):
    """The object storage refused the request for good (a 4xx such as AccessDenied or EntityTooLarge): asking again
    will not help. A 500 for the API (rendered through ServiceError), a failed job for a worker."""

    slug, title = "storage-refused", "Object storage refused the request"


def _client_error(exc: BaseException) -> Any:
    """The botocore ClientError behind `exc` (itself, or what boto3's transfer errors were raised from), or None."""
    from botocore.exceptions import ClientError

    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None or isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class S3Location:
    """An `s3://bucket/prefix` URL, taken apart."""

    bucket: str
    prefix: str  # "" or ends with "/"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)


def parse_storage_url(url: str) -> S3Location | None:
    """The bucket and prefix of an `s3://` URL; None for a local directory (or empty: the data dir)."""
    if not url.startswith("s3://"):
        if "://" in url:
            raise ValueError(f"MLPS_STORAGE_URL={url!r}: expected a local directory or s3://bucket/prefix")
        return None
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"MLPS_STORAGE_URL={url!r}: {bucket!r} is not a bucket name (3-63 characters: lower-case "
                         "letters, digits, dots and hyphens)")
    prefix = prefix.strip("/")
    return S3Location(bucket, f"{prefix}/" if prefix else "")


@dataclass(frozen=True)
class S3Options:
    """How to reach the bucket: an empty field leaves it to boto3's usual sources (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ~/.aws)."""

    endpoint_url: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 20.0
    max_attempts: int = 3


class _Bucket:
    """The bucket behind an S3 Storage: every call with short timeouts, bounded retries and errors translated
    (connection or refusal → StorageUnavailable, a missing key → FileNotFoundError). One client per process
    (boto3 clients are thread-safe, but not to be shared across a fork)."""

    def __init__(self, location: S3Location, options: S3Options, tmp_dir: Path) -> None:
        self.location, self.options, self.tmp_dir = location, options, tmp_dir
        self._client: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                import boto3
                from botocore.config import Config

                o = self.options
                region = o.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
                    or "us-east-1"
                config = Config(connect_timeout=o.connect_timeout_s, read_timeout=o.read_timeout_s,
                                retries={"max_attempts": o.max_attempts, "mode": "standard"},
                                s3={"addressing_style": "path"}, max_pool_connections=16)
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=o.endpoint_url or None, region_name=region, config=config,
                    aws_access_key_id=o.access_key_id or None, aws_secret_access_key=o.secret_access_key or None)
                self._pid = os.getpid()
            return self._client

    @contextmanager
    def _errors(self, key: str = "") -> Iterator[None]:
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.location.bucket}/{key}" if key else self.location.url
        try:
            yield
        except (ClientError, BotoCoreError, S3UploadFailedError, S3TransferFailedError) as exc:
            raise self.translate(exc, where) from exc

    def translate(self, exc: BaseException, where: str) -> Exception:
        """The error a caller sees for what boto3 raised: FileNotFoundError for a missing key, StorageUnavailable
        for what may pass (no connection, a timeout, a 5xx, throttling), StorageRefused for any other 4xx."""
        client_error = _client_error(exc)
        if client_error is None:
            return StorageUnavailable(f"object storage {self.location.url} is unreachable ({exc})")
        error = client_error.response.get("Error", {})
        code = str(error.get("Code", ""))
        http = int(client_error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _MISSING_CODES:
            return FileNotFoundError(f"{where} does not exist")
        message = f"object storage {self.location.url}: {code or 'error'} ({error.get('Message') or client_error})"
        if code in _RETRYABLE_CODES or http >= 500 or (code.isdigit() and int(code) >= 500):
            return StorageUnavailable(message)
        return StorageRefused(f"{message}; the request for {where} was refused, asking again will not help")

    def check(self) -> None:
        """Raise StorageUnavailable unless the bucket exists and answers us."""
        from botocore.exceptions import ClientError

        try:
            with self._errors():
                self.client.head_bucket(Bucket=self.location.bucket)
        except StorageRefused as exc:  # bad credentials, no permission: nothing works until the operator acts
            cause = _client_error(exc)
            code = str(cause.response.get("Error", {}).get("Code", "")) if cause is not None else ""
            raise StorageUnavailable(f"object storage {self.location.url}: the bucket refused us ({code or 'error'}); "
                                     "check the credentials and their permissions") from exc
        except StorageUnavailable as exc:
            cause = _client_error(exc)
            missing = isinstance(cause, ClientError) and str(cause.response.get("Error", {}).get("Code")) in (
                "404", "NoSuchBucket")
            if missing:
                raise StorageUnavailable(f"object storage {self.location.url}: the bucket "
                                         f"{self.location.bucket!r} does not exist; create it first") from None
            raise
        except FileNotFoundError:
            raise StorageUnavailable(f"object storage {self.location.url}: the bucket {self.location.bucket!r} "
                                     "does not exist; create it first") from None

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES,
                              max_concurrency=UPLOAD_THREADS, io_chunksize=1 << 20)

    def upload(self, path: Path, key: str) -> None:
        """Stream a local file to `key` (multipart past PART_BYTES): the object appears whole or not at all."""
        with self._errors(key):
            self.client.upload_file(str(path), self.location.bucket, key, Config=self._transfer())

    def download(self, key: str, dest: Path) -> None:
        """Stream `key` into `dest` (written to a temp file in tmp/, then renamed: never seen half written)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        os.close(fd)
        try:
            with self._errors(key):
                self.client.download_file(self.location.bucket, key, tmp, Config=self._transfer())
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        try:
            with self._errors(key):
                self.client.head_object(Bucket=self.location.bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def keys(self, prefix: str) -> dict[str, int]:
        """Every key under `prefix` with its size."""
        out: dict[str, int] = {}
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket,
                                                                              Prefix=prefix):
                out.update({item["Key"]: int(item["Size"]) for item in page.get("Contents", [])})
        return out

    def ages(self, prefix: str) -> dict[str, float]:
        """Every key under `prefix` with its last modification (seconds since the epoch)."""
        out: dict[str, float] = {}
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket,
                                                                              Prefix=prefix):
                out.update({item["Key"]: item["LastModified"].timestamp() for item in page.get("Contents", [])})
        return out

    def folders(self, prefix: str) -> list[str]:
        """The names of the 'folders' directly under `prefix`."""
        names: list[str] = []
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.location.bucket, Prefix=prefix, Delimiter="/"):
                names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return names

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            with self._errors():
                self.client.delete_objects(Bucket=self.location.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True})


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class Storage:
    """The one entry point to stored files. `root` is the local directory: the store itself by default, or the
    cache (and tmp/) when the files live in a bucket (`bucket` set)."""

    def __init__(self, root: Path, *, location: S3Location | None = None, options: S3Options | None = None,
                 cache_max_bytes: int = 10 << 30) -> None:
        self.root = Path(root).resolve()
        self.bucket = _Bucket(location, options or S3Options(), self.root / "tmp") if location is not None else None
        self.cache_max_bytes = cache_max_bytes
        self._evict_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Storage":
        """The storage MLPS_STORAGE_URL names: a local directory (default: the data dir) or an S3 bucket (one
        Storage per process and location, so that its S3 client and connections are reused)."""
        return _storage_for(settings.storage_url, settings.data_dir, settings.s3_endpoint_url, settings.s3_region,
                            settings.s3_timeout_s, settings.s3_max_attempts, settings.cache_max_bytes)

    @property
    def url(self) -> str:
        """Where the files live, as MLPS_STORAGE_URL names it."""
        return self.bucket.location.url if self.bucket else str(self.root)

    def ensure(self) -> None:
        for sub in ("datasets", "models", "checkpoints", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def check(self) -> None:
        """At startup: the local folders exist and, for a bucket, the bucket answers (StorageUnavailable if not)."""
        self.ensure()
        if self.bucket:
            self.bucket.check()

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh, unused path inside tmp/ (same filesystem, so rename is atomic)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix)
        os.close(fd)
        return Path(name)

    def temp_dir(self) -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.tmp_dir))

    # ------------------------------------------------------------ data sets

    @staticmethod
    def _dataset_name(dataset_id: str, fmt: str) -> str:
        return f"{_checked(dataset_id)}.{'npz' if fmt == 'npz' else 'parquet'}"

    def dataset_file(self, dataset_id: str, fmt: str = "parquet") -> Path:
        """The stored data as a local file (Parquet for tables, .npz for arrays), fetched into the cache on first
        use; a path that does not exist when the data set has no file."""
        name = self._dataset_name(dataset_id, fmt)
        path = self.root / "datasets" / name
        if self.bucket is None:
            return path
        if self._hit(path):
            return path
        try:
            self.bucket.download(self.bucket.location.key("datasets", name), path)
        except FileNotFoundError:
            return path
        self._evict(keep=path)
        return path

    def publish_dataset(self, src: Path, dataset_id: str, fmt: str) -> None:
        """Move a finished data file into place: renamed locally, or streamed to the bucket (and kept cached)."""
        dest = self.root / "datasets" / self._dataset_name(dataset_id, fmt)
        if self.bucket is not None:
            self.bucket.upload(src, self.bucket.location.key("datasets", dest.name))
        publish(src, dest)
        if self.bucket is not None:
            self._evict(keep=dest)

    def remove_dataset(self, dataset_id: str) -> None:
        names = [self._dataset_name(dataset_id, fmt) for fmt in ("parquet", "npz")]
        for name in names:  # the local copy first: it goes even when the bucket is away (the sweep removes the rest)
            (self.root / "datasets" / name).unlink(missing_ok=True)
        if self.bucket is not None:
            self.bucket.delete([self.bucket.location.key("datasets", n) for n in names])

    # ------------------------------------------------------------ models

    def model_dir(self, model_id: str) -> Path:
        """The model's folder on local disk, fetched whole into the cache on first use (model.json last); a path
        without model.json when the model is not (or not yet) in the store."""
        folder = self.root / "models" / _checked(model_id)
        if self.bucket is None or self._complete(folder):
            return folder
        prefix = self.bucket.location.key("models", model_id) + "/"
        # Folder markers ("a/") and keys with ".." segments are no files of ours: never written where they point.
        names = [k[len(prefix):] for k in self.bucket.keys(prefix)]
        names = [n for n in names if n and not n.endswith("/") and not {"", ".", ".."} & set(n.split("/"))]
        if MODEL_META not in names:
            return folder
        staging = self.temp_dir()
        try:
            for name in sorted(names, key=lambda n: n == MODEL_META):  # the meta file last
                self.bucket.download(prefix + name, staging / model_id / name)
            (staging / model_id / _MANIFEST).write_text(json.dumps(sorted(names)))
            self._install(staging / model_id, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._evict(keep=folder)
        return folder

    def _install(self, fetched: Path, folder: Path) -> None:
        """Rename a fetched model folder into the cache. A complete folder already there (another thread or process
        of this host fetched it meanwhile) is kept; a stale one (partly deleted) is renamed aside first, never
        removed in place, so that no reader sees it half gone."""
        folder.parent.mkdir(parents=True, exist_ok=True)  # the cache may have been deleted
        for _ in range(3):
            if self._complete(folder):
                return
            if folder.exists():
                aside = self.temp_dir()
                try:
                    os.rename(folder, aside / folder.name)
                except FileNotFoundError:
                    pass  # someone else moved it meanwhile
                finally:
                    shutil.rmtree(aside, ignore_errors=True)
            try:
                os.rename(fetched, folder)
                return
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        raise OSError(f"{folder}: could not be replaced by a fresh copy of the model (it keeps changing)")

    def model_present(self, model_id: str) -> bool:
        """True when the model's folder is complete in the store (its model.json exists)."""
        if self.bucket is None:
            return (self.model_dir(model_id) / MODEL_META).is_file()
        return self.bucket.exists(self.bucket.location.key("models", _checked(model_id), MODEL_META))

    def publish_model(self, src: Path, model_id: str) -> None:
        """Move a finished model folder into place: renamed locally, or uploaded file by file with model.json
        last (so that no reader sees half a model)."""
        dest = self.root / "models" / _checked(model_id)
        if self.bucket is None:
            publish(src, dest)
            return
        files = sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: p.name == MODEL_META)
        for path in files:
            self.bucket.upload(path, self.bucket.location.key("models", model_id, path.relative_to(src).as_posix()))
        shutil.rmtree(src, ignore_errors=True)

    def remove_model(self, model_id: str) -> None:
        folder = self.root / "models" / _checked(model_id)
        (folder / _MANIFEST).unlink(missing_ok=True)  # incomplete for this host's readers from here on
        shutil.rmtree(folder, ignore_errors=True)
        if self.bucket is not None:
            prefix = self.bucket.location.key("models", model_id) + "/"
            self.bucket.delete([prefix + MODEL_META])  # absent for readers from here on
            self.bucket.delete(list(self.bucket.keys(prefix)))

    # ------------------------------------------------------------ checkpoints

    def checkpoint_dir(self, job_id: str) -> Path:
        """The local folder a job's checkpoints are written to (and, with a bucket, fetched to)."""
        return self.root / "checkpoints" / _checked(job_id)

    def push_checkpoint(self, job_id: str, name: str) -> None:
        """After save_checkpoint wrote NAME.safetensors and NAME.json locally: upload them (the JSON last), so that
        a worker on another host can resume from them. Nothing to do with a local directory."""
        if self.bucket is None:
            return
        folder = self.checkpoint_dir(job_id)
        for suffix in ("safetensors", "json"):
            file = f"{_checked_checkpoint(name)}.{suffix}"
            self.bucket.upload(folder / file, self.bucket.location.key("checkpoints", job_id, file))

    def fetch_checkpoint(self, job_id: str, name: str) -> Path:
        """The folder holding checkpoint NAME of the job, fetched from the bucket when this host lacks it."""
        folder = self.checkpoint_dir(job_id)
        if self.bucket is None:
            return folder
        for suffix in ("json", "safetensors"):
            file = f"{_checked_checkpoint(name)}.{suffix}"
            if not (folder / file).is_file():
                self.bucket.download(self.bucket.location.key("checkpoints", job_id, file), folder / file)
        return folder

    def prune_checkpoints(self, job_id: str, keep: str) -> None:
        """Remove every checkpoint of the job but `keep`, here and in the bucket."""
        folder = self.checkpoint_dir(job_id)
        kept = (f"{keep}.safetensors", f"{keep}.json")
        for path in folder.glob("*"):
            if path.name not in kept:
                path.unlink(missing_ok=True)
        if self.bucket is not None:
            prefix = self.bucket.location.key("checkpoints", job_id) + "/"
            self.bucket.delete([k for k in self.bucket.keys(prefix) if k[len(prefix):] not in kept])

    def checkpoint_jobs(self) -> list[str]:
        """The job ids that have checkpoints stored."""
        local = self.root / "checkpoints"
        found = {p.name for p in local.iterdir() if p.is_dir()} if local.is_dir() else set()
        if self.bucket is not None:
            found |= set(self.bucket.folders(self.bucket.location.key("checkpoints") + "/"))
        return sorted(n for n in found if _ID.match(n))

    def remove_checkpoints(self, job_id: str) -> int:
        """Remove every checkpoint of the job, here and in the bucket; the bytes freed."""
        folder = self.checkpoint_dir(job_id)
        freed = _size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        if self.bucket is not None:
            keys = self.bucket.keys(self.bucket.location.key("checkpoints", job_id) + "/")
            self.bucket.delete(list(keys))
            freed += sum(keys.values())
        return freed

    # ------------------------------------------------------------ objects without a row

    def stored_ids(self, *, older_than_s: float, now: float | None = None) -> dict[str, list[str]]:
        """With a bucket: the data set and model ids it holds objects of, every one of them older than older_than_s
        (so that an upload in flight is never among them), each with its keys; {} with a local directory."""
        if self.bucket is None:
            return {}
        now = time.time() if now is None else now
        found: dict[str, list[str]] = {}
        young: set[str] = set()
        for sub in ("datasets", "models"):
            prefix = self.bucket.location.key(sub) + "/"
            for key, modified in self.bucket.ages(prefix).items():
                rest = key[len(prefix):]
                id_ = rest.partition("/")[0] if sub == "models" else rest.partition(".")[0]
                if not _ID.match(id_):
                    continue
                found.setdefault(id_, []).append(key)
                if now - modified < older_than_s:
                    young.add(id_)
        return {id_: keys for id_, keys in found.items() if id_ not in young}

    def remove_objects(self, keys: list[str]) -> None:
        """Remove these bucket keys (a model's model.json first, so that no reader sees half a model)."""
        if self.bucket is not None:
            metas = [k for k in keys if k.endswith("/" + MODEL_META)]
            self.bucket.delete(metas)
            self.bucket.delete([k for k in keys if k not in metas])

    # ------------------------------------------------------------ the cache

    def _hit(self, path: Path, touch: Path | None = None) -> bool:
        """True when `path` is cached; marks its entry used now (the mtime is the LRU order)."""
        try:
            os.utime(touch or path)
        except FileNotFoundError:
            return False
        return path.exists()

    def _complete(self, folder: Path) -> bool:
        """True when a cached model folder holds every file its manifest lists; marks it used now."""
        try:
            names = json.loads((folder / _MANIFEST).read_text())
            os.utime(folder)
        except (FileNotFoundError, ValueError):
            return False
        return all((folder / name).is_file() for name in names)

    def cache_entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, path) of every cached data set file and model folder, oldest first."""
        entries = []
        for sub in ("datasets", "models"):
            folder = self.root / sub
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.startswith("."):
                    continue
                try:
                    entries.append((path.stat().st_mtime, _size(path), path))
                except FileNotFoundError:
                    continue
        return sorted(entries, key=lambda e: e[0])

    def _evict(self, keep: Path, now: float | None = None) -> None:
        """Remove the least recently used cache entries until the cache fits cache_max_bytes (never `keep`, just
        fetched or published, nor an entry used in the last CACHE_IN_USE_S: a job may still be reading it, and a
        streaming job reopens its file every epoch). Safe with readers: an open file outlives its unlink, a later
        use fetches again."""
        now = time.time() if now is None else now
        with self._evict_lock:
            entries = self.cache_entries()
            total = sum(size for _, size, _ in entries)
            for used, size, path in entries:
                if total <= self.cache_max_bytes:
                    break
                if path == keep or now - used < CACHE_IN_USE_S:
                    continue
                if path.is_dir():
                    (path / _MANIFEST).unlink(missing_ok=True)  # incomplete for readers from here on
                _remove(path)
                total -= size


@functools.lru_cache(maxsize=8)
def _storage_for(url: str, data_dir: Path, endpoint_url: str, region: str, timeout_s: float, max_attempts: int,
                 cache_max_bytes: int) -> Storage:
    location = parse_storage_url(url)
    if location is None:
        return Storage(Path(url) if url else data_dir)
    options = S3Options(endpoint_url=endpoint_url, region=region, connect_timeout_s=timeout_s,
                        read_timeout_s=max(timeout_s, 20.0), max_attempts=max_attempts)
    return Storage(data_dir, location=location, options=options, cache_max_bytes=cache_max_bytes)


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
