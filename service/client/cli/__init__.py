"""Client commands of `mlps`: datasets, jobs, models, webhooks and predict, over HTTP against a running server.

Every read command prints a table fitted to the terminal's width (columns of lesser value go first, whole; ids are
never cut), or the server's JSON with --json (for scripts). The server comes from --url or MLPS_URL (default
http://127.0.0.1:8000). The API key comes from MLPS_API_KEY, MLPS_API_KEY_FILE, or for a server on this machine
from the data dir that `mlps serve` recorded for its URL (servers.py), else from <MLPS_DATA_DIR, default
./var>/admin.key. Exit codes: 0 success; 1 an error answer, an unreachable server, or a job that failed or was
cancelled; 2 a usage error.
"""

import typer

from service.client.cli import datasets, jobs, models, predict, webhooks

# The client side of `mlps`: service.cli mounts these groups and the predict command next to the server commands.
app = typer.Typer(add_completion=False)
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")
app.add_typer(webhooks.app, name="webhooks")
app.command(name="predict")(predict.predict)
