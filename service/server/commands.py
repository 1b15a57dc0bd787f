"""Server commands of `mlps`: serve, api, worker, migrate, keys (they run on the server's machine, against its
database and storage). `service.cli` mounts them next to the client commands."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.local_servers import process_alive, registry_path
from service.server.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(add_completion=False)


def _check_port_free(host: str, port: int) -> None:
    """Refuse to start (before creating any key or process) when the address is taken."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            typer.echo(f"error: cannot listen on {host}:{port} ({exc.strerror}); another server may be running "
                       "there: stop it, or pick another port with --port or MLPS_PORT", err=True)
            raise typer.Exit(1) from None

HostOpt = Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1, env MLPS_HOST)")]
PortOpt = Annotated[int | None, typer.Option(help="Port (default 8000, env MLPS_PORT)")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Storage and SQLite folder (default ./var, env MLPS_DATA_DIR)")]
DbOpt = Annotated[str | None, typer.Option(help="SQLAlchemy database URL (env MLPS_DATABASE_URL)")]


def _settings(host: str | None = None, port: int | None = None, data_dir: Path | None = None,
              database_url: str | None = None) -> Settings:
    """Settings from the environment, with command-line options taking precedence. Every server command starts
    here, so this is also where the process stops creating files other users could read: data sets, models and
    the SQLite file hold people's data (umask 077: folders 0700, files 0600)."""
    os.umask(0o077)
    overrides: dict[str, Any] = {k: v for k, v in {"host": host, "port": port, "data_dir": data_dir,
                                                   "database_url": database_url}.items() if v is not None}
    if data_dir is not None and database_url is None and not os.environ.get("MLPS_DATABASE_URL"):
        overrides["database_url"] = ""  # recomputed under the new data dir
    return Settings(**overrides)


def _logging(settings: Settings) -> None:
    from service.server.logs import configure

    configure(settings.log_format)


def _uvicorn_logging(settings: Settings) -> dict[str, Any]:
    """uvicorn's own log setup for text; in JSON mode its records go through ours."""
    return {} if settings.log_format == "text" else {"log_config": None}


def _env_for(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["MLPS_DATA_DIR"] = str(settings.data_dir)
    env["MLPS_DATABASE_URL"] = settings.database_url
    return env


def _check_schema(settings: Settings) -> None:
    from service.server.db import SchemaNotReady, make_engine, require_schema_at_head

    engine = make_engine(settings.database_url)
    try:
        require_schema_at_head(engine)
    except SchemaNotReady as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()


def _check_storage(settings: Settings) -> None:
    """Refuse to start when MLPS_STORAGE_URL is malformed or its bucket is missing or unreachable (a few seconds
    at most: short timeouts, bounded retries)."""
    from service.server.storage import Storage, StorageUnavailable

    try:
        Storage.from_settings(settings).check()
    except (ValueError, StorageUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def _database(settings: Settings) -> Iterator["Session"]:
    """One transaction on the settings' (migrated) database."""
    from service.server.db import make_engine, make_sessionmaker, session_scope

    _check_schema(settings)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _bootstrap_admin_key(settings: Settings) -> None:
    """First start: create an admin key, save it to <data-dir>/admin.key (mode 0600) and show it once."""
    from service.server.auth import ADMIN_KEY_FILE, bootstrap_admin_key

    preset = settings.admin_key.get_secret_value()
    try:
        with _database(settings) as session:
            key = bootstrap_admin_key(session, settings.data_dir, preset)
    except ValueError as exc:
        typer.echo(f"error: MLPS_ADMIN_KEY: {exc}", err=True)
        raise typer.Exit(2) from None
    if key and preset:
        typer.echo(f"Admin API key from MLPS_ADMIN_KEY saved to {settings.data_dir / ADMIN_KEY_FILE} (mode 0600)")
    elif key:
        typer.echo(f"Admin API key (shown once; saved to {settings.data_dir / ADMIN_KEY_FILE}, mode 0600):\n{key}")


# ---------------------------------------------------------------- the per-user record of local servers
# `mlps serve` and `mlps api` record, while they run, which data dir serves which loopback URL, so that a client
# command run from any folder finds the admin key of a server on this machine (path and shape: service.local_servers;
# service/client/servers.py reads the file).


def _loopback_urls(host: str, port: int) -> list[str]:
    """The loopback URLs a server bound to `host` answers on; none for an address elsewhere (the client sends a
    recorded key to a loopback URL only)."""
    if host in ("127.0.0.1", "localhost", "0.0.0.0", ""):
        return [f"http://127.0.0.1:{port}"]
    if host in ("::1", "[::1]"):
        return [f"http://[::1]:{port}"]
    if host in ("::", "[::]"):
        return [f"http://[::1]:{port}", f"http://127.0.0.1:{port}"]
    return []


@contextmanager
def _recorded_servers() -> Iterator[dict[str, Any]]:
    """The recorded servers (those still running), locked against servers starting or stopping at the same time,
    and written back (mode 0600, atomically) when the block ends."""
    import fcntl

    path = registry_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path.with_name("servers.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = {}
        entries = recorded.get("servers") if isinstance(recorded, dict) else None
        servers = {url: entry for url, entry in (entries if isinstance(entries, dict) else {}).items()
                   if isinstance(entry, dict) and process_alive(entry.get("pid"))}
        yield servers
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, json.dumps({"version": 1, "servers": servers}, indent=2).encode() + b"\n")
        finally:
            os.close(fd)
        os.replace(tmp, path)


@contextmanager
def _recorded(settings: Settings) -> Iterator[None]:
    """Record this process as the server of its loopback URLs, with its data dir, until the block ends."""
    from service.server.auth import ADMIN_KEY_FILE

    urls = _loopback_urls(settings.host, settings.port)
    entry = {"data_dir": str(settings.data_dir.resolve()), "pid": os.getpid()}
    # What was recorded before comes back on exit: a server that failed to bind must not erase the entry of the
    # one that holds the port.
    previous: dict[str, Any] = {}
    if urls:
        try:
            with _recorded_servers() as servers:
                previous = {url: servers[url] for url in urls if url in servers}
                servers.update(dict.fromkeys(urls, entry))
        except OSError as exc:
            typer.echo(f"warning: cannot record this server in {registry_path()} ({exc.strerror or exc}); client "
                       f"commands elsewhere need MLPS_API_KEY_FILE={settings.data_dir.resolve() / ADMIN_KEY_FILE}",
                       err=True)
    try:
        yield
    finally:
        if urls:
            with suppress(OSError), _recorded_servers() as servers:
                for url in urls:
                    if servers.get(url, {}).get("pid") != os.getpid():
                        continue
                    if url in previous and process_alive(previous[url].get("pid")):
                        servers[url] = previous[url]
                    else:
                        del servers[url]


@app.command()
def migrate(data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Create or upgrade the database schema to the newest version."""
    from service.server.db import migrate as run_migrations

    settings = _settings(data_dir=data_dir, database_url=database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run_migrations(settings.database_url)
    typer.echo("database schema is up to date")


@app.command()
def api(host: HostOpt = None, port: PortOpt = None, data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Run the HTTP API only (no training)."""
    import uvicorn

    from service.server.api import create_app

    settings = _settings(host, port, data_dir, database_url)
    _logging(settings)
    _check_schema(settings)
    _check_storage(settings)
    _bootstrap_admin_key(settings)
    with _recorded(settings):
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                    **_uvicorn_logging(settings))


@app.command()
def worker(
    devices: Annotated[str, typer.Option(help="auto, cpu, or a list such as cuda:0,cuda:1")] = "auto",
    slots_per_device: Annotated[int, typer.Option(min=1, max=64, help="Jobs at once on each device")] = 1,
    data_dir: DataDirOpt = None, database_url: DbOpt = None,
) -> None:
    """Run a worker that claims and trains queued jobs."""
    from service.server.devices import discover
    from service.server.worker import Worker

    settings = _settings(data_dir=data_dir, database_url=database_url)
    _logging(settings)
    _check_schema(settings)
    _check_storage(settings)
    try:
        found = discover(devices)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    Worker(settings, found, slots_per_device=slots_per_device).run()


@app.command()
def serve(host: HostOpt = None, port: PortOpt = None, data_dir: DataDirOpt = None,
          database_url: DbOpt = None,
          devices: Annotated[str, typer.Option(help="Devices for the embedded worker")] = "auto") -> None:
    """Migrate, then run the API and one worker process together (the single-machine setup)."""
    import uvicorn

    from service.server.api import create_app
    from service.server.db import migrate as run_migrations

    settings = _settings(host, port, data_dir, database_url)
    _check_port_free(settings.host, settings.port)
    _logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run_migrations(settings.database_url)
    _check_storage(settings)
    _bootstrap_admin_key(settings)
    worker = EmbeddedWorker([sys.executable, "-m", "service.cli", "worker", "--devices", devices],
                            env=_env_for(settings))
    worker.start()
    # uvicorn re-raises the SIGTERM it caught once it has shut down; turn that into SystemExit so that
    # the worker below is always stopped too.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        with _recorded(settings):
            uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                        **_uvicorn_logging(settings))
    finally:
        worker.stop()


class EmbeddedWorker:
    """`mlps serve`'s worker process, restarted whenever it dies (with backoff: 0.5 s, 1 s, … 30 s; the backoff
    resets once a worker has lived a minute), so that one crash does not leave queued jobs waiting for ever."""

    HEALTHY_AFTER_S = 60.0

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        import threading

        self.command = command
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="mlps-worker-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self.proc = subprocess.Popen(self.command, env=self.env)

    def _watch(self) -> None:
        import time

        from service.server.faults import Backoff

        backoff = Backoff()
        while not self._stopping.is_set():
            proc = self.proc
            assert proc is not None  # spawned in start()
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= self.HEALTHY_AFTER_S:
                backoff.succeeded()
            delay = backoff.failed()
            typer.echo(f"the worker process exited (code {code}); starting a new one in {delay:.1f} s", err=True)
            if self._stopping.wait(delay):
                return
            self._spawn()

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


keys_app = typer.Typer(help="API keys (run on the server: they act on its database directly).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Option(help="Owner: keys with the same name share data sets, jobs "
                                                       "and models")],
                admin: Annotated[bool, typer.Option("--admin", help="May see everything and read /metrics")] = False,
                data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Create a key and print it, alone on stdout; it is not stored and cannot be shown again."""
    from service.server.auth import create_key

    try:
        with _database(_settings(data_dir=data_dir, database_url=database_url)) as session:
            _, key = create_key(session, name=name, admin=admin)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(key)


@keys_app.command("list")
def keys_list(include_revoked: Annotated[bool, typer.Option("--all", help="Also list revoked keys")] = False,
              as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
              data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Keys: id, owner, prefix, admin, created, last used, revoked (never the key itself)."""
    from service.server.auth import list_keys

    with _database(_settings(data_dir=data_dir, database_url=database_url)) as session:
        rows: list[dict[str, Any]] = [
            {"id": k.id, "name": k.name, "prefix": k.prefix, "admin": k.admin,
             "created_at": k.created_at.isoformat(timespec="seconds"),
             "last_used_at": k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else None,
             "revoked_at": k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else None}
            for k in list_keys(session, include_revoked=include_revoked)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    # `mlps keys revoke` takes the id or the prefix: on a narrow terminal these two stay whole on one line.
    table = Table()
    table.add_column("id", no_wrap=True, min_width=max((len(r["id"]) for r in rows), default=2))
    table.add_column("name")
    table.add_column("prefix", no_wrap=True, min_width=max((len(r["prefix"]) + 1 for r in rows), default=6))
    for header in ("admin", "created", "last used", "revoked"):
        table.add_column(header)
    for r in rows:
        table.add_row(r["id"], r["name"], r["prefix"] + "…", "yes" if r["admin"] else "", r["created_at"],
                      r["last_used_at"] or "", r["revoked_at"] or "")
    Console(highlight=False).print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id (key_…) or prefix, as `mlps keys list` shows")],
                data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Revoke a key: within a second, requests with it get 401. Its owner's data stays."""
    from service.server.auth import revoke_key
    from service.server.errors import NotFound

    try:
        with _database(_settings(data_dir=data_dir, database_url=database_url)) as session:
            row = revoke_key(session, key)
    except NotFound as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {row.id} ({row.name}, {row.prefix}…)")

