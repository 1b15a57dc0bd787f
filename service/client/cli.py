"""Client commands of `mlps`: datasets, jobs, models and predict, over HTTP against a running server.

Every read command prints a table, or the server's JSON with --json (for scripts). The server comes from --url
or MLPS_URL (default http://127.0.0.1:8000). The API key comes from MLPS_API_KEY, MLPS_API_KEY_FILE, or for a
server on this machine from <MLPS_DATA_DIR, default ./var>/admin.key, which `mlps serve` writes.
Exit codes: 0 success; 1 an error answer, an unreachable server, or a job that failed or was cancelled;
2 a usage error.
"""

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from service.client.http import ApiError, Client, ClientError, JobEvent

datasets_app = typer.Typer(help="Upload, list, show, preview and delete data sets.", no_args_is_help=True)
jobs_app = typer.Typer(help="Submit training jobs, follow them, read their metrics and plot them.",
                       no_args_is_help=True)
models_app = typer.Typer(help="List and show trained models.", no_args_is_help=True)

UrlOpt = Annotated[str | None, typer.Option("--url", envvar="MLPS_URL", show_envvar=True,
                                            help="Server URL [default: http://127.0.0.1:8000]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer instead of a table")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the new id (for scripts)")]
LimitOpt = Annotated[int, typer.Option(min=1, max=500, help="Items per page")]
OffsetOpt = Annotated[int, typer.Option(min=0, help="Items to skip")]

STATUS_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "magenta"}
MAIN_EPOCH_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_rmse", "val_rmse", "train_r2",
                      "val_r2", "lr", "seconds")
TABLE_SUFFIXES = {".csv", ".tsv", ".txt", ".parquet", ".pq"}


# ---------------------------------------------------------------- helpers


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _fail(message: str, details: list[str] | None = None) -> NoReturn:
    err = _console(stderr=True)
    err.print(f"[bold red]error:[/] {escape(message)}")
    for line in details or []:
        err.print(f"  - {escape(line)}")
    raise typer.Exit(1)


@contextmanager
def connect(url: str | None) -> Iterator[Client]:
    """A client for the command; server errors become a message on stderr and exit status 1."""
    try:
        with Client(base_url=url) as client:
            yield client
    except ApiError as exc:
        details = []
        for error in exc.errors:
            where = ".".join(str(v) for v in (error.get("field"), error.get("column")) if v)
            if error.get("message") and error.get("message") != exc.detail:
                details.append(f"{where}: {error['message']}" if where else error["message"])
        if exc.status == 401:
            details.append("give a key: MLPS_API_KEY=mlps_..., or MLPS_API_KEY_FILE=path/to/key; for a server on "
                           "this machine, mlps reads <MLPS_DATA_DIR>/admin.key (default ./var/admin.key, where "
                           "`mlps serve` wrote it: run from that folder or set MLPS_DATA_DIR)")
        _fail(f"{exc.detail or exc.title} ({exc.status} {exc.title})", details)
    except ClientError as exc:
        _fail(str(exc))


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _when(value: str | None, short: bool = False) -> str:
    """A server timestamp in local time: '2025-01-31 14:05:09', or '01-31 14:05' when short."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _headline(metrics: dict[str, Any] | None, short: bool = False) -> str:
    """'val_accuracy 0.9667' (or val_r2, else val_loss) from a metrics dict; 'acc 0.9667' when short."""
    if not metrics:
        return "-"
    for key, abbreviation in (("val_accuracy", "acc"), ("val_r2", "r2"), ("val_loss", "loss"), ("train_loss", "loss")):
        if isinstance(metrics.get(key), (int, float)):
            return f"{abbreviation if short else key} {_number(metrics[key])}"
    return "-"


def _key_values(rows: list[tuple[str, Any]]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value if isinstance(value, str) else escape(json.dumps(value)))
    return table


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.epochs=50' → (['training', 'epochs'], 50); the value is JSON when it parses, else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise typer.BadParameter(f"{text!r} is not KEY=VALUE (e.g. training.epochs=50)", param_hint="--set")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip().split("."), value


def apply_override(spec: dict[str, Any], path: list[str], value: Any) -> None:
    """Set spec[a][b]... = value, creating the nested objects on the way."""
    node = spec
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise typer.BadParameter(f"'{'.'.join(path[: i + 1])}' is {json.dumps(child)}, not an object, so "
                                     f"'{'.'.join(path)}' cannot be set", param_hint="--set")
        node = child
    node[path[-1]] = value


def load_spec(path: Path) -> dict[str, Any]:
    """A job spec from a YAML or JSON file (JSON is YAML too, but its errors read better from the JSON parser)."""
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        spec = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: "
                                 f"{exc}", param_hint="--spec") from None
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"{path} must hold one object (mapping), not {type(spec).__name__}",
                                 param_hint="--spec")
    return spec


# ---------------------------------------------------------------- datasets


def _columns_table(columns: list[dict[str, Any]]) -> Table:
    table = Table(title="columns", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("name", "kind", "dtype", "missing", "unique", "summary"):
        table.add_column(name, overflow="fold", justify="right" if name in ("missing", "unique") else "left")
    for col in columns:
        stats = col.get("stats") or {}
        if "mean" in stats:
            summary = (f"min {_number(stats.get('min'))}, mean {_number(stats.get('mean'))}, "
                       f"max {_number(stats.get('max'))}")
        elif stats.get("top"):
            summary = ", ".join(f"{t['value']} ({t['count']})" for t in stats["top"][:3])
        else:
            summary = ""
        if col.get("shape"):
            summary = f"shape {col['shape']}; {summary}"
        table.add_row(escape(col["name"]), col["kind"], col["dtype"], str(col["n_missing"]), str(col["n_unique"]),
                      escape(summary))
    return table


def _dataset_summary(ds: dict[str, Any]) -> Table:
    return _key_values([("id", ds["id"]), ("name", escape(ds["name"])), ("format", ds["format"]),
                        ("rows", str(ds["n_rows"])), ("columns", str(ds["n_columns"])),
                        ("size", _size(ds["size_bytes"])), ("created", _when(ds["created_at"]))])


@datasets_app.command("upload")
def datasets_upload(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                                         help="CSV, TSV, Parquet or .npz file")],
                    name: Annotated[str | None, typer.Option(help="Display name [default: the file name]")] = None,
                    url: UrlOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Upload a data set; prints its id and column schema."""
    with connect(url) as client:
        ds = client.upload_dataset(file, name=name)
    if as_json:
        _print_json(ds)
        return
    if quiet:
        typer.echo(ds["id"])
        return
    out = _console()
    out.print(f"uploaded [bold]{ds['id']}[/] ({escape(ds['name'])}): {ds['n_rows']} rows × {ds['n_columns']} columns")
    out.print(_columns_table(ds["columns"]))


@datasets_app.command("list")
def datasets_list(limit: LimitOpt = 50, offset: OffsetOpt = 0, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List data sets, newest first."""
    with connect(url) as client:
        page = client.datasets(limit=limit, offset=offset)
    if as_json:
        _print_json(page)
        return
    table = Table(caption=f"{len(page['items'])} of {page['total']} data sets", box=box.SIMPLE_HEAD)
    for name in ("id", "name", "format", "rows", "columns", "size", "created"):
        table.add_column(name, no_wrap=name == "id", justify="right" if name in ("rows", "columns", "size") else "left")
    for ds in page["items"]:
        table.add_row(ds["id"], escape(ds["name"]), ds["format"], str(ds["n_rows"]), str(ds["n_columns"]),
                      _size(ds["size_bytes"]), _when(ds["created_at"], short=True))
    _console().print(table)


@datasets_app.command("show")
def datasets_show(dataset_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a data set and its column schema."""
    with connect(url) as client:
        ds = client.dataset(dataset_id)
    if as_json:
        _print_json(ds)
        return
    out = _console()
    out.print(_dataset_summary(ds))
    out.print(_columns_table(ds["columns"]))


@datasets_app.command("preview")
def datasets_preview(dataset_id: str, limit: Annotated[int, typer.Option(min=1, max=500, help="Rows")] = 10,
                     url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show the first rows of a data set."""
    with connect(url) as client:
        preview = client.preview(dataset_id, limit=limit)
    if as_json:
        _print_json(preview)
        return
    table = Table()
    for name in preview["columns"]:
        table.add_column(escape(name), overflow="fold")
    for row in preview["rows"]:
        table.add_row(*(escape(_cell(row.get(name))) for name in preview["columns"]))
    _console().print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, list):
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return "" if value is None else str(value)


@datasets_app.command("delete")
def datasets_delete(dataset_id: str, url: UrlOpt = None) -> None:
    """Delete a data set (refused while a queued or running job uses it)."""
    with connect(url) as client:
        client.delete_dataset(dataset_id)
    _console().print(f"deleted {dataset_id}")


# ---------------------------------------------------------------- jobs


@jobs_app.command("submit")
def jobs_submit(
    dataset: Annotated[str | None, typer.Option("--dataset", help="Data set id (dataset_id)")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Column to predict")] = None,
    spec_file: Annotated[Path | None, typer.Option("--spec", exists=True, dir_okay=False,
                                                   help="Job spec file, YAML or JSON")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a spec field: KEY=VALUE with a dotted key and a JSON value "
                      "(e.g. training.epochs=50, model.hidden_layers=[32,16]); repeatable")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this many seconds")] = None,
    url: UrlOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Submit a training job: --dataset and --target, a --spec file, and --set overrides, applied in that order."""
    spec = load_spec(spec_file) if spec_file else {}
    if dataset is not None:
        spec["dataset_id"] = dataset
    if target is not None:
        spec["target"] = target
    for text in overrides or []:
        apply_override(spec, *parse_override(text))
    if not spec.get("dataset_id"):
        raise typer.BadParameter("say which data set to train on: --dataset ID (or dataset_id in --spec)",
                                 param_hint="--dataset")
    with connect(url) as client:
        job = client.submit_job(spec)
        if quiet and not as_json:
            typer.echo(job["id"])
        elif not as_json:
            _console().print(f"submitted [bold]{job['id']}[/] ({job['task']}, {job['progress']['epochs']} epochs at "
                             f"most): {_status(job['status'])}")
        if wait:
            job = follow(client, job["id"], timeout=timeout, summary=not (as_json or quiet))
    if as_json:
        _print_json(job)
    if wait:
        _exit_for(job)


@jobs_app.command("list")
def jobs_list(status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")] = None,
              dataset: Annotated[str | None, typer.Option("--dataset", help="Only jobs on this data set")] = None,
              limit: LimitOpt = 50, offset: OffsetOpt = 0, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List jobs, newest first."""
    with connect(url) as client:
        page = client.jobs(status=status, limit=limit, offset=offset, dataset_id=dataset)
    if as_json:
        _print_json(page)
        return
    table = Table(caption=f"{len(page['items'])} of {page['total']} jobs", box=box.SIMPLE_HEAD)
    for name in ("id", "status", "task", "epoch", "metric", "model", "created"):
        table.add_column(name, no_wrap=name in ("id", "status", "task", "epoch", "model"))
    for job in page["items"]:
        table.add_row(job["id"], _status(job["status"]), job["task"],
                      f"{job['progress']['epoch']}/{job['progress']['epochs']}",
                      _headline(job.get("metrics") or job["latest_metrics"], short=True), job["model_id"] or "-",
                      _when(job["created_at"], short=True))
    _console().print(table)


def _job_rows(job: dict[str, Any]) -> list[tuple[str, Any]]:
    spec = job["spec"]
    model = spec.get("model") or {}
    layers = model.get("hidden_layers")
    rows: list[tuple[str, Any]] = [
        ("id", job["id"]), ("status", _status(job["status"])), ("task", job["task"]),
        ("dataset", job["dataset_id"] or "-"),
        ("target", escape(json.dumps(spec.get("targets") or spec.get("target")))),
        ("model", f"{model.get('type', 'mlp')}" + (f" {layers}" if layers and model.get("type") != "logistic_regression"
                                                    else "")),
        ("progress", f"epoch {job['progress']['epoch']} of {job['progress']['epochs']}"),
        ("device", job["device"] or job["device_request"]), ("attempts", str(job["attempts"])),
    ]
    if job.get("waiting_for"):
        rows.append(("waiting for", escape(job["waiting_for"])))
    if job.get("metrics"):
        rows.append(("kept model", ", ".join(f"{k} {_number(v)}" for k, v in job["metrics"].items()
                                             if k.startswith("val_") and isinstance(v, (int, float)))))
    if job["latest_metrics"]:
        rows.append(("latest", ", ".join(f"{k} {_number(v)}" for k, v in job["latest_metrics"].items()
                                         if k != "epoch" and isinstance(v, (int, float)))))
    if job["error"]:
        rows.append(("error", f"[red]{escape(job['error'])}[/]"))
    if job["model_id"]:
        rows.append(("model id", job["model_id"]))
    rows += [("created", _when(job["created_at"])), ("started", _when(job["started_at"])),
             ("finished", _when(job["finished_at"]))]
    if job.get("duration_s") is not None:
        rows.append(("duration", f"{job['duration_s']:.1f} s"))
    return rows


@jobs_app.command("show")
def jobs_show(job_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a job: status, progress, latest metrics, error and model."""
    with connect(url) as client:
        job = client.job(job_id)
    if as_json:
        _print_json(job)
        return
    _console().print(_key_values(_job_rows(job)))


class EpochColumn(ProgressColumn):
    """'epoch k/n' (n: the spec's upper bound on epochs, or the last epoch run once it stopped early)."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else f"{task.total:.0f}"
        return Text(f"epoch {task.completed:.0f}/{total}")


class _ProgressView:
    """Turns job events into a Rich progress bar: epoch k/n, losses, the main metric, ETA."""

    def __init__(self, progress: Progress, job_id: str) -> None:
        self.progress = progress
        self.task = progress.add_task(job_id, total=None, status="", loss="", metric="")
        self.job_id = job_id

    def __call__(self, event: JobEvent) -> None:
        data = event.data
        if event.kind == "status":
            epochs = data["progress"]["epochs"]
            self.progress.update(self.task, total=epochs, completed=data["progress"]["epoch"],
                                 status=data["status"] + (f" ({data['waiting_for']})" if data.get("waiting_for")
                                                          else ""))
            if data["status"] == "succeeded" and data["progress"]["epoch"]:
                # Early stopping ends before the upper bound: the bar ends full at the last epoch run.
                self.progress.update(self.task, total=data["progress"]["epoch"], completed=data["progress"]["epoch"])
            return
        metrics = data["metrics"]
        loss = f"loss {_number(metrics.get('train_loss'))} / val {_number(metrics.get('val_loss'))}"
        metric = next((f"{key} {_number(metrics[key])}" for key in ("val_accuracy", "val_r2")
                       if isinstance(metrics.get(key), (int, float))), "")
        self.progress.update(self.task, total=data["epochs"], completed=data["epoch"], loss=loss, metric=metric,
                             status="running")


def follow(client: Client, job_id: str, timeout: float | None = None, summary: bool = True) -> dict[str, Any]:
    """Wait for a job with a live progress bar on stderr; answers the final job (and prints a summary line)."""
    err = _console(stderr=True)
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}[/] {task.fields[status]}"),
                        BarColumn(bar_width=24), EpochColumn(), TextColumn("{task.fields[loss]}"),
                        TextColumn("{task.fields[metric]}"), TimeRemainingColumn(), console=err, transient=False)
    with progress:
        try:
            job = client.wait(job_id, timeout=timeout, on_update=_ProgressView(progress, job_id))
        except TimeoutError as exc:
            progress.stop()
            _fail(f"{exc}; `mlps jobs wait {job_id}` follows it again")
    if summary:
        _console().print(_summary(job))
    return job


def _summary(job: dict[str, Any]) -> str:
    status = job["status"]
    took = f" in {job['duration_s']:.1f} s" if job.get("duration_s") is not None else ""
    if status == "succeeded":
        result = job.get("result") or {}
        best = result.get("best_epoch")
        epochs = f"{job['progress']['epoch']} epochs" + (f" (kept epoch {best})" if best else "")
        kept = _headline(job.get("metrics") or job["latest_metrics"])
        if result.get("ensemble"):
            ensemble = result["ensemble"]
            epochs += f", {ensemble['members']} of {ensemble['members_trained']} members kept"
            kept += f" ({ensemble['estimate']})"
        return (f"[green]✓[/] {job['id']} succeeded{took}: {epochs}, {kept}; "
                f"model [bold]{job['model_id']}[/]")
    mark = "[red]✗[/]" if status == "failed" else "[magenta]✗[/]"
    return f"{mark} {job['id']} {status}{took}: {escape(job.get('error') or '')}"


def _exit_for(job: dict[str, Any]) -> None:
    if job["status"] != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("wait")
def jobs_wait(job_id: str,
              timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds")] = None,
              url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Follow a job with a live progress bar; exit status 0 when it succeeds, 1 when it fails or is cancelled."""
    with connect(url) as client:
        job = follow(client, job_id, timeout=timeout, summary=not as_json)
    if as_json:
        _print_json(job)
    _exit_for(job)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a queued job at once, or a running one at the end of its current epoch."""
    with connect(url) as client:
        job = client.cancel(job_id)
    if as_json:
        _print_json(job)
    elif job["status"] == "cancelled":
        _console().print(f"cancelled {job_id}")
    else:
        _console().print(f"cancel requested for {job_id}: it stops at the end of its current epoch "
                         f"(`mlps jobs wait {job_id}` follows it)")


@jobs_app.command("metrics")
def jobs_metrics(job_id: str,
                 last: Annotated[int, typer.Option(min=0, help="Show only the last N epochs (0: all)")] = 0,
                 show_all: Annotated[bool, typer.Option("--all", help="Every metric, not only the main ones")] = False,
                 url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Every epoch's metrics as a table, then the test metrics and confusion matrix when there are any."""
    with connect(url) as client:
        metrics = client.metrics(job_id)
    if as_json:
        _print_json(metrics)
        return
    out = _console()
    epochs = metrics["epochs"][-last:] if last else metrics["epochs"]
    names: list[str] = []
    for row in epochs:
        names += [k for k in row["metrics"] if k not in names]
    if not show_all:
        names = [n for n in MAIN_EPOCH_METRICS if n in names]
    table = Table(caption=f"{len(metrics['epochs'])} epochs" if epochs else "no epochs recorded yet",
                  box=box.SIMPLE_HEAD)
    table.add_column("epoch", justify="right")
    for name in names:
        table.add_column(name, justify="right", overflow="fold")
    for row in epochs:
        table.add_row(str(row["epoch"]), *(_number(row["metrics"].get(name)) for name in names))
    out.print(table)
    if metrics.get("test"):
        out.print(_key_values([(f"test {k}", _number(v)) for k, v in metrics["test"].items()]))
    confusion = metrics.get("confusion_matrix")
    if confusion and confusion.get("labels"):
        cm = Table(title=f"confusion matrix ({confusion.get('split', 'validation')}): rows true, columns predicted",
                   title_justify="left")
        cm.add_column("")
        for label in confusion["labels"]:
            cm.add_column(escape(str(label)), justify="right")
        for label, row in zip(confusion["labels"], confusion["matrix"], strict=False):
            cm.add_row(escape(str(label)), *(str(v) for v in row))
        out.print(cm)


@jobs_app.command("plot")
def jobs_plot(job_id: str,
              output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="PNG file to write")],
              url: UrlOpt = None) -> None:
    """Write a PNG of the learning curves (loss, accuracy or R²) and, for classifiers, the confusion matrix."""
    with connect(url) as client:
        job = client.job(job_id)
        metrics = client.metrics(job_id)
    from service.client.plots import plot_job

    best = (job.get("result") or {}).get("best_epoch")
    title = f"{job_id} ({job['task']}, {job['status']})"
    try:
        plot_job(metrics, output, title=title, best_epoch=best)
    except ValueError as exc:
        _fail(str(exc))
    _console().print(f"wrote {output}")


# ---------------------------------------------------------------- models


@models_app.command("list")
def models_list(limit: LimitOpt = 50, offset: OffsetOpt = 0, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List trained models, newest first."""
    with connect(url) as client:
        page = client.models(limit=limit, offset=offset)
    if as_json:
        _print_json(page)
        return
    table = Table(caption=f"{len(page['items'])} of {page['total']} models", box=box.SIMPLE_HEAD)
    for name in ("id", "type", "task", "target", "metric", "job", "created"):
        table.add_column(name, no_wrap=name in ("id", "job"))
    for model in page["items"]:
        table.add_row(model["id"], model["model_type"], model["task"], escape(str(model["target"] or "-")),
                      _headline(model["metrics"], short=True), model["job_id"] or "-",
                      _when(model["created_at"], short=True))
    _console().print(table)


@models_app.command("show")
def models_show(model_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a model: task, features, labels and final metrics."""
    with connect(url) as client:
        model = client.model(model_id)
    if as_json:
        _print_json(model)
        return
    out = _console()
    rows: list[tuple[str, Any]] = [("id", model["id"]), ("type", model["model_type"]), ("task", model["task"]),
                                   ("target", escape(str(model["target"]))), ("job", model["job_id"] or "-"),
                                   ("dataset", model["dataset_id"] or "-"), ("size", _size(model["size_bytes"])),
                                   ("created", _when(model["created_at"]))]
    if model["labels"] is not None:
        rows.append(("labels", escape(", ".join(str(v) for v in model["labels"]))))
    rows.append(("metrics", ", ".join(f"{k} {_number(v)}" for k, v in model["metrics"].items()
                                      if isinstance(v, (int, float)))))
    out.print(_key_values(rows))
    features = Table(title="features", title_justify="left")
    for name in ("name", "kind", "detail"):
        features.add_column(name, overflow="fold")
    for f in model["features"]:
        detail = (f"{len(f['categories'])} categories" if "categories" in f
                  else f"shape {f['shape']}" if "shape" in f else "")
        features.add_row(escape(str(f.get("name"))), str(f.get("kind", "")), detail)
    out.print(features)


@models_app.command("download")
def models_download(
    model_id: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Zip file [default: MODEL_ID.zip]")] = None,
    url: UrlOpt = None,
) -> None:
    """Download a model: a zip of weights.safetensors and model.json (load them without this service)."""
    output = output or Path(f"{model_id}.zip")
    with connect(url) as client:
        client.download_model(model_id, output)
    typer.echo(f"saved {model_id} to {output}")


# ---------------------------------------------------------------- predict


def _read_json_input(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"{path} is not valid JSON: {exc}", param_hint="--input") from None
    if isinstance(body, list):
        return {"records": body}
    if isinstance(body, dict) and ({"records", "inputs"} & set(body)):
        return {k: body[k] for k in ("records", "inputs") if k in body}
    raise typer.BadParameter(f"{path} must hold a list of records, or an object with 'records' or 'inputs'",
                             param_hint="--input")


def _prediction_rows(answer: dict[str, Any], records: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Rows for CSV output: each record's columns, then prediction(s) and p_<label> per class."""
    rows = []
    probabilities = answer.get("probabilities") or [None] * len(answer["predictions"])
    spreads = answer.get("uncertainty") or [None] * len(answer["predictions"])
    for i, (prediction, probs, spread) in enumerate(zip(answer["predictions"], probabilities, spreads,
                                                         strict=True)):
        row = dict(records[i]) if records else {}
        if isinstance(prediction, dict):
            row.update({f"prediction_{k}": v for k, v in prediction.items()})
        else:
            row["prediction"] = prediction
        if probs:
            row.update({f"p_{label}": p for label, p in probs.items()})
        for key, value in (spread or {}).items():
            if isinstance(value, dict):  # one standard deviation per regression target
                row.update({f"{key}_{name}": v for name, v in value.items()})
            else:
                row[key] = value
        rows.append(row)
    return rows


def _write_csv(rows: list[dict[str, Any]], out: io.TextIOBase) -> None:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})


def _csv_to_answer(model_id: str, data: bytes) -> dict[str, Any]:
    """The /predict answer's shape from a scored CSV: predictions and, for classifiers, probabilities."""
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(io.BytesIO(data))
    names = table.column_names
    probability_names = [n for n in names if n.startswith("p_")]
    prediction_names = [n for n in names if n == "prediction" or n.startswith("prediction_")]
    if prediction_names == ["prediction"]:
        predictions = table.column("prediction").to_pylist()
    else:
        columns = {n.removeprefix("prediction_"): table.column(n).to_pylist() for n in prediction_names}
        predictions = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    probabilities = None
    if probability_names:
        columns = {n.removeprefix("p_"): table.column(n).to_pylist() for n in probability_names}
        probabilities = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return {"model_id": model_id, "predictions": predictions, "probabilities": probabilities}


@contextmanager
def _text_output(output: Path | None) -> Iterator[Any]:
    """The --output file (opened for text), or standard output."""
    if output is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with output.open("w", encoding="utf-8", newline="") as fh:
        yield fh


def predict(
    model_id: Annotated[str, typer.Argument(help="Model id (mdl_...)")],
    input_file: Annotated[Path, typer.Option("--input", "-i", exists=True, dir_okay=False, readable=True,
                                             help=".json (a list of records, or {\"inputs\": [...]}) or .csv/.tsv/"
                                                  ".parquet (scored on the server in batches)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False,
                                                help="File to write [default: standard output]")] = None,
    output_format: Annotated[str | None, typer.Option(
        "--format", help="json or csv [default: json for .json input, csv for a table]")] = None,
    uncertainty: Annotated[bool, typer.Option("--uncertainty", help="Ensembles, JSON input: also the members' "
                                                                    "spread per record")] = False,
    url: UrlOpt = None,
) -> None:
    """Predict with a trained model for the records in a JSON file or every row of a CSV/Parquet file."""
    if uncertainty and input_file.suffix.lower() != ".json":
        raise typer.BadParameter("--uncertainty works with a .json input (records)", param_hint="--uncertainty")
    is_table = input_file.suffix.lower() in TABLE_SUFFIXES
    fmt = (output_format or ("csv" if is_table else "json")).lower()
    if fmt not in ("json", "csv"):
        raise typer.BadParameter(f"{output_format!r}: use json or csv", param_hint="--format")
    if not is_table and input_file.suffix.lower() != ".json":
        raise typer.BadParameter(f"{input_file.name}: give a .json, .csv, .tsv or .parquet file", param_hint="--input")
    with connect(url) as client:
        if is_table and fmt == "csv":
            rows = client.predict_csv(model_id, input_file, output if output is not None else sys.stdout.buffer)
            if output is not None:
                _console(stderr=True).print(f"wrote {rows} predictions to {output}")
                return
        elif is_table:
            buffer = io.BytesIO()
            client.predict_csv(model_id, input_file, buffer)
            answer = _csv_to_answer(model_id, buffer.getvalue())
            with _text_output(output) as out:
                out.write(json.dumps(answer, indent=2, ensure_ascii=False) + "\n")
        else:
            body = _read_json_input(input_file)
            answer = client.predict(model_id, records=body.get("records"), inputs=body.get("inputs"),
                                    uncertainty=uncertainty)
            with _text_output(output) as out:
                if fmt == "json":
                    out.write(json.dumps(answer, indent=2, ensure_ascii=False) + "\n")
                else:
                    _write_csv(_prediction_rows(answer, body.get("records")), out)
    if output is not None:
        _console(stderr=True).print(f"wrote {output}")



# ---------------------------------------------------------------- the client side of `mlps` (service.cli mounts it)

app = typer.Typer(add_completion=False)
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.command(name="predict")(predict)
