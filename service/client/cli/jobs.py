"""`mlps jobs`: submit training jobs, follow them, read their metrics and plot them."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table

from service.client.cli.common import (
    Col,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    QuietOpt,
    UrlOpt,
    connect,
    console,
    emit,
    fail,
    fitted,
    headline,
    key_values,
    natural_width,
    number,
    styled_status,
    warning_lines,
    when,
)
from service.client.cli.progress import job_progress
from service.client.http import Client, Job, JobComparison, JobMetrics, Page

app = typer.Typer(help="Submit training jobs, follow them, read their metrics and plot them.", no_args_is_help=True)

MAIN_EPOCH_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_rmse", "val_rmse", "train_r2",
                      "val_r2", "lr", "seconds")
# Which of the main metrics go first when the terminal is too narrow (higher first).
METRIC_DROP = {"val_loss": 1, "val_accuracy": 1, "val_r2": 1, "train_loss": 2, "val_rmse": 2, "train_accuracy": 3,
               "train_r2": 3, "train_rmse": 3, "lr": 4, "seconds": 5}
# The figures `mlps jobs compare` shows side by side (--json has every one).
COMPARED_METRICS = ("val_loss", "val_accuracy", "val_auroc", "val_rmse", "val_r2")
LIST_COLUMNS = (Col("id"), Col("status"), Col("task", drop=4), Col("epoch", drop=1), Col("metric", drop=3),
                Col("model", drop=2), Col("tags", drop=3, wrap=True), Col("created", drop=5))


# ---------------------------------------------------------------- job specs from the command line


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


# ---------------------------------------------------------------- following a job


def follow(client: Client, job_id: str, timeout: float | None = None) -> Job:
    """Wait for a job with a live progress line on stderr; answers the final job."""
    progress, on_update = job_progress(console(stderr=True), job_id)
    with progress:
        try:
            return client.wait(job_id, timeout=timeout, on_update=on_update)
        except TimeoutError as exc:
            progress.stop()
            fail(f"{exc}; `mlps jobs wait {job_id}` follows it again")


def summary(job: Job) -> str:
    """One line on how a job ended: its epochs, the kept model's main metric and the model id, or its error."""
    state = job["status"]
    took = f" in {job['duration_s']:.1f} s" if job.get("duration_s") is not None else ""
    if state == "succeeded":
        result = job.get("result") or {}
        best = result.get("best_epoch")
        epochs = f"{job['progress']['epoch']} epochs" + (f" (kept epoch {best})" if best else "")
        kept = headline(job.get("metrics") or job["latest_metrics"])
        if result.get("ensemble"):
            ensemble = result["ensemble"]
            epochs += f", {ensemble['members']} of {ensemble['members_trained']} members kept"
            kept += f" ({ensemble['estimate']})"
        return (f"[green]✓[/] {job['id']} succeeded{took}: {epochs}, {kept}; "
                f"model [bold]{job['model_id']}[/]")
    mark = "[red]✗[/]" if state == "failed" else "[magenta]✗[/]"
    return f"{mark} {job['id']} {state}{took}: {escape(job.get('error') or '')}"


def _exit_for(job: Job) -> None:
    if job["status"] != "succeeded":
        raise typer.Exit(1)


# ---------------------------------------------------------------- commands


@app.command("submit")
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
            console().print(f"submitted [bold]{job['id']}[/] ({job['task']}, {job['progress']['epochs']} epochs at "
                            f"most): {styled_status(job['status'])}")
            console().print(warning_lines(job.get("warnings")))
        if wait:
            job = follow(client, job["id"], timeout=timeout)
    emit(job, as_json, lambda out: summary(job) if wait and not quiet else None)
    if wait:
        _exit_for(job)


def _list_table(out: Console, page: Page[Job]) -> RenderableType:
    rows = [[job["id"], styled_status(job["status"]), job["task"],
             f"{job['progress']['epoch']}/{job['progress']['epochs']}",
             headline(job.get("metrics") or job["latest_metrics"], short=True), job["model_id"] or "-",
             escape(" ".join(job.get("tags") or [])) or "-", when(job["created_at"], short=True)]
            for job in page["items"]]
    return fitted(out, LIST_COLUMNS, rows, caption=f"{len(page['items'])} of {page['total']} jobs",
                  box=box.SIMPLE_HEAD)


@app.command("list")
def jobs_list(status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")] = None,
              dataset: Annotated[str | None, typer.Option("--dataset", help="Only jobs on this data set")] = None,
              tag: Annotated[str | None, typer.Option("--tag", help="Only jobs carrying this tag")] = None,
              name: Annotated[str | None, typer.Option("--name", help="Only jobs with this name")] = None,
              search: Annotated[str | None, typer.Option("--search", help="Only the trials of this search")] = None,
              limit: LimitOpt = 50, offset: OffsetOpt = 0, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List jobs, newest first."""
    with connect(url) as client:
        page = client.jobs(status=status, limit=limit, offset=offset, dataset_id=dataset, tag=tag, name=name,
                           search_id=search)
    emit(page, as_json, lambda out: _list_table(out, page))


@app.command("label")
def jobs_label(job_id: str,
               name: Annotated[str | None, typer.Option("--name", help="A name for the job")] = None,
               tags: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeat; replaces all)")] = None,
               notes: Annotated[str | None, typer.Option("--notes", help="Free text")] = None,
               url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Name, tag or annotate a job."""
    labels: dict[str, Any] = {k: v for k, v in (("name", name), ("tags", tags), ("notes", notes)) if v is not None}
    if not labels:
        raise typer.BadParameter("give --name, --tag or --notes")
    with connect(url) as client:
        job = client.update_job(job_id, **labels)
    emit(job, as_json, lambda out: key_values(_job_rows(job)))


def _compare_view(out: Console, answer: JobComparison) -> RenderableType:
    ids = [j["id"] for j in answer["jobs"]]
    present = {k for j in answer["jobs"] for k, v in (j["metrics"] or {}).items() if isinstance(v, (int, float))}
    figures = [f for f in COMPARED_METRICS if f in present]
    table = Table(box=box.SIMPLE_HEAD, title="final metrics")
    for column in ("job", "name", "epochs", *figures):
        table.add_column(column, justify="right" if column in ("epochs", *figures) else "left", no_wrap=True)
    for j in answer["jobs"]:
        # a job that did not succeed shows its latest epoch's figures, and says so
        name = escape(j["name"] or "-") + ("" if j["status"] == "succeeded" else f" ({styled_status(j['status'])})")
        table.add_row(j["id"], name, str(j["epochs_run"]), *(number((j["metrics"] or {}).get(f)) for f in figures))
    diffs = Table(box=box.SIMPLE_HEAD, title="spec differences")
    diffs.add_column("field", no_wrap=True)
    for job_id in ids:
        diffs.add_column(job_id, no_wrap=True)
    for difference in answer["differences"]:
        if difference["field"] in ("dataset_id",):
            continue
        diffs.add_row(difference["field"], *(escape(json.dumps(difference["values"].get(i))) for i in ids))
    return Group(table, diffs if answer["differences"] else "[dim]the specs are the same[/]")


@app.command("compare")
def jobs_compare(job_ids: Annotated[list[str], typer.Argument(help="Two to twenty job ids")],
                 url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Jobs side by side: final metrics and the spec fields that differ (--json adds the aligned histories)."""
    with connect(url) as client:
        answer = client.compare(job_ids)
    emit(answer, as_json, lambda out: _compare_view(out, answer))


def _job_rows(job: Job) -> list[tuple[str, Any]]:
    spec = job["spec"]
    model = spec.get("model") or {}
    layers = model.get("hidden_layers")
    rows: list[tuple[str, Any]] = [
        ("id", job["id"]), ("status", styled_status(job["status"])), ("task", job["task"]),
        ("dataset", job["dataset_id"] or "-"),
        ("target", escape(json.dumps(spec.get("targets") or spec.get("target")))),
        ("model", f"{model.get('type', 'mlp')}" + (f" {layers}" if layers and model.get("type") != "logistic_regression"
                                                    else "")),
        ("progress", f"epoch {job['progress']['epoch']} of {job['progress']['epochs']}"),
        ("device", job["device"] or job["device_request"]), ("attempts", str(job["attempts"])),
    ]
    waiting_for, kept = job.get("waiting_for"), job.get("metrics")
    if waiting_for:
        rows.append(("waiting for", escape(waiting_for)))
    if kept:
        rows.append(("kept model", ", ".join(f"{k} {number(v)}" for k, v in kept.items()
                                             if k.startswith("val_") and isinstance(v, (int, float)))))
    if job["latest_metrics"]:
        rows.append(("latest", ", ".join(f"{k} {number(v)}" for k, v in job["latest_metrics"].items()
                                         if k != "epoch" and isinstance(v, (int, float)))))
    if job["error"]:
        rows.append(("error", f"[red]{escape(job['error'])}[/]"))
    if job["model_id"]:
        rows.append(("model id", job["model_id"]))
    rows += [("created", when(job["created_at"])), ("started", when(job["started_at"])),
             ("finished", when(job["finished_at"]))]
    if job.get("duration_s") is not None:
        rows.append(("duration", f"{job['duration_s']:.1f} s"))
    return rows


@app.command("show")
def jobs_show(job_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a job: status, progress, latest metrics, error and model."""
    with connect(url) as client:
        job = client.job(job_id)
    emit(job, as_json, lambda out: key_values(_job_rows(job)))


@app.command("wait")
def jobs_wait(job_id: str,
              timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds")] = None,
              url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Follow a job with a live progress bar; exit status 0 when it succeeds, 1 when it fails or is cancelled."""
    with connect(url) as client:
        job = follow(client, job_id, timeout=timeout)
    emit(job, as_json, lambda out: summary(job))
    _exit_for(job)


@app.command("cancel")
def jobs_cancel(job_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a queued job at once, or a running one at the end of its current epoch."""
    with connect(url) as client:
        job = client.cancel(job_id)
    emit(job, as_json, lambda out: f"cancelled {job_id}" if job["status"] == "cancelled" else
         f"cancel requested for {job_id}: it stops at the end of its current epoch (`mlps jobs wait {job_id}` "
         "follows it)")


def _metrics_table(out: Console, metrics: JobMetrics, last: int, show_all: bool) -> RenderableType:
    """Every epoch's (main) metrics, fitted to the terminal, then the test metrics and the confusion matrix."""
    epochs = metrics["epochs"][-last:] if last else metrics["epochs"]
    names: list[str] = []
    for row in epochs:
        names += [k for k in row["metrics"] if k not in names]
    if not show_all:
        names = [n for n in MAIN_EPOCH_METRICS if n in names]
    # The main metrics go by how much they say; with --all, as many as fit in the server's order.
    drops = list(range(1, len(names) + 1)) if show_all else [METRIC_DROP[name] for name in names]
    columns = [Col("epoch", justify="right"),
               *(Col(name, drop=drop, justify="right") for name, drop in zip(names, drops, strict=True))]
    rows = [[str(row["epoch"]), *(number(row["metrics"].get(name)) for name in names)] for row in epochs]
    parts: list[RenderableType] = [
        fitted(out, columns, rows, caption=f"{len(metrics['epochs'])} epochs" if epochs else "no epochs recorded yet",
               box=box.SIMPLE_HEAD)]
    if metrics.get("test"):
        parts.append(key_values([(f"test {k}", number(v)) for k, v in (metrics["test"] or {}).items()]))
    confusion = metrics.get("confusion_matrix")
    if confusion and confusion.get("labels"):
        parts.append(_confusion_table(out, confusion))
    return Group(*parts)


def _confusion_table(out: Console, confusion: dict[str, Any]) -> Table:
    """Rows true, columns predicted, headed by the labels; by the labels' numbers when the labels do not fit."""
    labels = [escape(str(label)) for label in confusion["labels"]]
    title = f"confusion matrix ({confusion.get('split', 'validation')}): rows true, columns predicted"
    for headers, names in ((labels, labels), ([str(i) for i in range(len(labels))],
                                              [f"{i} {label}" for i, label in enumerate(labels)])):
        table = Table(title=title, title_justify="left")
        table.add_column("", no_wrap=True)
        for header in headers:
            table.add_column(header, justify="right", no_wrap=True)
        for name, row in zip(names, confusion["matrix"], strict=False):
            table.add_row(name, *(str(v) for v in row))
        if natural_width(table) <= out.width:
            break
    return table


@app.command("metrics")
def jobs_metrics(job_id: str,
                 last: Annotated[int, typer.Option(min=0, help="Show only the last N epochs (0: all)")] = 0,
                 show_all: Annotated[bool, typer.Option("--all", help="Every metric, not only the main ones")] = False,
                 url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Every epoch's metrics as a table, then the test metrics and confusion matrix when there are any."""
    with connect(url) as client:
        metrics = client.metrics(job_id)
    emit(metrics, as_json, lambda out: _metrics_table(out, metrics, last, show_all))


@app.command("plot")
def jobs_plot(job_id: str,
              output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="PNG file to write")],
              url: UrlOpt = None) -> None:
    """Write a PNG of the learning curves (loss, accuracy or R²) and of the held-out rows: for classifiers the
    confusion matrix, ROC curves and per-class precision/recall; for regression predicted vs actual and residuals."""
    with connect(url) as client:
        job = client.job(job_id)
        metrics = client.metrics(job_id)
    from service.client.plots import plot_job

    best = (job.get("result") or {}).get("best_epoch")
    title = f"{job_id} ({job['task']}, {job['status']})"
    try:
        plot_job(metrics, output, title=title, best_epoch=best)
    except ValueError as exc:
        fail(str(exc))
    console().print(f"wrote {output}")
