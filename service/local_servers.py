"""The per-user record of the servers running on this machine, shared by both sides: `mlps serve` and `mlps api`
(service/server/commands.py) write which data dir serves which loopback URL, the client (service/client/servers.py)
reads it to find a local server's admin key from any folder. Its shape:

    {"version": 1, "servers": {"http://127.0.0.1:8000": {"data_dir": "/home/me/mlps/var", "pid": 4242}}}
"""

import os
from pathlib import Path


def registry_path() -> Path:
    """$XDG_STATE_HOME/mlps/servers.json, else ~/.local/state/mlps/servers.json (a relative XDG_STATE_HOME is
    ignored, as the XDG spec says)."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "mlps" / "servers.json"


def process_alive(pid: object) -> bool:
    """Whether the process that recorded an entry still runs (a server that was killed leaves its entry behind)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
