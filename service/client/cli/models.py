"""`mlps models`: list, show and download trained models."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape

from service.client.cli.common import (
    Col,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    UrlOpt,
    connect,
    console,
    emit,
    fitted,
    headline,
    key_values,
    number,
    size,
    when,
)
from service.client.http import Model, Page

app = typer.Typer(help="List and show trained models.", no_args_is_help=True)

LIST_COLUMNS = (Col("id"), Col("type", drop=3), Col("task", drop=5), Col("target", drop=2, wrap=True),
                Col("metric", drop=1), Col("job", drop=4), Col("created", drop=6))
FEATURE_COLUMNS = (Col("name", wrap=True), Col("kind"), Col("detail", wrap=True))


def _list_table(out: Console, page: Page[Model]) -> RenderableType:
    rows = [[model["id"], model["model_type"], model["task"], escape(str(model["target"] or "-")),
             headline(model["metrics"], short=True), model["job_id"] or "-", when(model["created_at"], short=True)]
            for model in page["items"]]
    return fitted(out, LIST_COLUMNS, rows, caption=f"{len(page['items'])} of {page['total']} models",
                  box=box.SIMPLE_HEAD)


@app.command("list")
def models_list(limit: LimitOpt = 50, offset: OffsetOpt = 0, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List trained models, newest first."""
    with connect(url) as client:
        page = client.models(limit=limit, offset=offset)
    emit(page, as_json, lambda out: _list_table(out, page))


def _model_view(out: Console, model: Model) -> RenderableType:
    rows: list[tuple[str, Any]] = [("id", model["id"]), ("type", model["model_type"]), ("task", model["task"]),
                                   ("target", escape(str(model["target"]))), ("job", model["job_id"] or "-"),
                                   ("dataset", model["dataset_id"] or "-"), ("size", size(model["size_bytes"])),
                                   ("created", when(model["created_at"]))]
    if model["labels"] is not None:
        rows.append(("labels", escape(", ".join(str(v) for v in model["labels"]))))
    rows.append(("metrics", ", ".join(f"{k} {number(v)}" for k, v in model["metrics"].items()
                                      if isinstance(v, (int, float)))))
    features = []
    for f in model["features"]:
        detail = (f"{len(f['categories'])} categories" if "categories" in f
                  else f"shape {f['shape']}" if "shape" in f else "")
        features.append([escape(str(f.get("name"))), str(f.get("kind", "")), detail])
    return Group(key_values(rows), fitted(out, FEATURE_COLUMNS, features, title="features", title_justify="left"))


@app.command("show")
def models_show(model_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a model: task, features, labels and final metrics."""
    with connect(url) as client:
        model = client.model(model_id)
    emit(model, as_json, lambda out: _model_view(out, model))


@app.command("download")
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


@app.command("delete")
def models_delete(model_id: str, url: UrlOpt = None) -> None:
    """Delete a model: its record, files and every cached copy (the job that trained it stays)."""
    with connect(url) as client:
        client.delete_model(model_id)
    console().print(f"deleted {model_id}")
