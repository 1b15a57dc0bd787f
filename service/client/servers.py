"""Which data dir serves which local URL, so that a client command run from any folder finds the admin key of a
server on this machine.

`mlps serve` and `mlps api` record themselves, while they run, in a per-user file: $XDG_STATE_HOME/mlps/servers.json
(default ~/.local/state/mlps/servers.json, mode 0600), shaped

    {"version": 1, "servers": {"http://127.0.0.1:8000": {"data_dir": "/home/me/mlps/var", "pid": 4242}}}

The server side writes it (service/server/commands.py); the path and the shape live in service.local_servers,
which both sides import; this module only reads it.
"""

import json
import os
from pathlib import Path

import httpx

from service.local_servers import process_alive
from service.local_servers import registry_path as registry_path  # re-exported for the commands

ADMIN_KEY_FILE = "admin.key"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def loopback_url(base_url: str) -> str | None:
    """The form a server URL is recorded in ('http://127.0.0.1:8000', 'http://[::1]:8000'), or None when the URL is
    not on this machine: a recorded key is only ever sent to a loopback address."""
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        return None  # the Client says what is wrong with it
    if url.host not in LOOPBACK_HOSTS:
        return None
    host = "[::1]" if ":" in url.host else "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.scheme}://{host}:{port}"


def recorded_data_dir(base_url: str) -> Path | None:
    """The data dir of the running local server recorded for this URL, if any."""
    url = loopback_url(base_url)
    if url is None:
        return None
    path = registry_path()
    try:
        info = path.stat()
        # A file someone else could have written must not choose which key is sent.
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            return None
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entries = recorded.get("servers") if isinstance(recorded, dict) else None
    entry = entries.get(url) if isinstance(entries, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("data_dir"), str) or not process_alive(entry.get("pid")):
        return None
    return Path(entry["data_dir"])


def recorded_key(base_url: str) -> str | None:
    """The admin key of the local server recorded for this URL; None when MLPS_API_KEY or MLPS_API_KEY_FILE is set
    (they come first) or when no running server recorded the URL."""
    if os.environ.get("MLPS_API_KEY") or os.environ.get("MLPS_API_KEY_FILE"):
        return None
    data_dir = recorded_data_dir(base_url)
    if data_dir is None:
        return None
    try:
        return (data_dir / ADMIN_KEY_FILE).read_text().strip() or None
    except OSError:
        return None
