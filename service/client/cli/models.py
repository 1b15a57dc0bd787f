"""`mlps models`: list, show, download and delete trained models; register them under names, move aliases, list a
name's versions."""

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
from service.client.http import Alias, AliasMove, Model, ModelVersion, Page

app = typer.Typer(help="List and show trained models; names, versions and aliases in the registry.",
                  no_args_is_help=True)

LIST_COLUMNS = (Col("id"), Col("type", drop=3), Col("task", drop=5), Col("target", drop=2, wrap=True),
                Col("metric", drop=1), Col("job", drop=4), Col("created", drop=6))
FEATURE_COLUMNS = (Col("name", wrap=True), Col("kind"), Col("detail", wrap=True))
VERSION_COLUMNS = (Col("version", justify="right"), Col("model"), Col("aliases", wrap=True),
                   Col("registered by", drop=2, wrap=True), Col("registered", drop=1))
MOVE_COLUMNS = (Col("moved"), Col("from", justify="right"), Col("to", justify="right"), Col("model", drop=2),
                Col("by", drop=1, wrap=True))


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


@app.command("register")
def models_register(name: Annotated[str, typer.Argument(help="The name: letters, digits and ._-")],
                    model_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Register a model under a name as its next version (the name is created on first use)."""
    with connect(url) as client:
        version = client.register_model(name, model_id)
    emit(version, as_json, lambda out: f"registered {version['model_id']} as {escape(version['name'])} version "
                                       f"{version['version']} ({escape(version['name'])}:{version['version']})")


def _moved(alias: Alias) -> str:
    before = f"version {alias['previous_version']} -> " if alias["previous_version"] is not None else "new, "
    return (f"{escape(alias['name'])}@{escape(alias['alias'])}: {before}version {alias['version']} "
            f"(model {alias['model_id']})")


def _history_view(out: Console, alias: Alias, moves: Page[AliasMove]) -> RenderableType:
    rows = [[when(m["moved_at"]), "-" if m["from_version"] is None else str(m["from_version"]),
             "removed" if m["to_version"] is None else str(m["to_version"]), m["model_id"] or "-",
             escape(m["moved_by"])] for m in moves["items"]]
    return Group(f"{_moved(alias)}, moved by {escape(alias['moved_by'])} at {when(alias['moved_at'])}",
                 fitted(out, MOVE_COLUMNS, rows, caption=f"{len(rows)} of {moves['total']} moves",
                        box=box.SIMPLE_HEAD))


@app.command("alias")
def models_alias(
    name: str,
    alias: Annotated[str, typer.Argument(help="The alias, e.g. production or staging")],
    version: Annotated[int | None, typer.Argument(min=1, help="Point the alias at this version; without it, show "
                                                               "the alias and its moves")] = None,
    expect: Annotated[int | None, typer.Option("--expect", min=0, help="Move only if the alias points at this "
                                                                        "version now (0: only if it does not "
                                                                        "exist yet)")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the alias (its versions stay)")] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move an alias to a version atomically, remove it, or show it with who moved it when."""
    if remove and version is not None:
        raise typer.BadParameter("give a VERSION to move the alias, or --remove, not both")
    with connect(url) as client:
        if remove:
            client.remove_alias(name, alias)
            console().print(f"removed {escape(name)}@{escape(alias)}")
            return
        if version is not None:
            moved = client.move_alias(name, alias, version, expected_version=expect)
            emit(moved, as_json, lambda out: _moved(moved))
            return
        shown, moves = client.alias(name, alias), client.alias_history(name, alias)
    emit({**shown, "history": moves["items"]}, as_json, lambda out: _history_view(out, shown, moves))


def _versions_table(out: Console, name: str, page: Page[ModelVersion]) -> RenderableType:
    rows = [[str(v["version"]), v["model_id"], escape(", ".join(v["aliases"]) or "-"), escape(v["registered_by"]),
             when(v["registered_at"], short=True)] for v in page["items"]]
    return fitted(out, VERSION_COLUMNS, rows, caption=f"{len(rows)} of {page['total']} versions of {escape(name)}",
                  box=box.SIMPLE_HEAD)


@app.command("versions")
def models_versions(name: str, limit: LimitOpt = 50, offset: OffsetOpt = 0, url: UrlOpt = None,
                    as_json: JsonOpt = False) -> None:
    """List a registered name's versions, newest first, with the aliases that point at each."""
    with connect(url) as client:
        page = client.model_versions(name, limit=limit, offset=offset)
    emit(page, as_json, lambda out: _versions_table(out, name, page))
