"""`mlps datasets`: upload, list, show, preview and delete data sets."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.text import Text

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
    fit,
    fitted,
    key_values,
    number,
    size,
    warning_lines,
    when,
)
from service.client.http import Column, Dataset, DatasetPreview, Page

app = typer.Typer(help="Upload, list, show, preview and delete data sets.", no_args_is_help=True)

COLUMN_COLUMNS = (Col("name", wrap=True), Col("kind"), Col("dtype", drop=2), Col("missing", drop=1, justify="right"),
                  Col("unique", drop=1, justify="right"), Col("summary", wrap=True), Col("why", drop=3, wrap=True))
LIST_COLUMNS = (Col("id"), Col("name", drop=1, wrap=True), Col("format", drop=4), Col("rows", drop=2, justify="right"),
                Col("columns", drop=2, justify="right"), Col("size", drop=3, justify="right"),
                Col("created", drop=5))


def _summary(column: Column) -> str:
    stats = column.get("stats") or {}
    if column["kind"] == "datetime" and stats.get("min"):
        text = f"{stats['min']} to {stats['max']}"
    elif "mean" in stats:
        text = f"min {number(stats.get('min'))}, mean {number(stats.get('mean'))}, max {number(stats.get('max'))}"
    elif stats.get("top"):
        text = ", ".join(f"{t['value']} ({t['count']})" for t in stats["top"][:3])
    else:
        text = ""
    if column.get("shape"):
        text = f"shape {column['shape']}; {text}"
    return text


def _columns_table(out: Console, columns: list[Column]) -> RenderableType:
    rows = [[escape(col["name"]), col["kind"], col["dtype"], str(col["n_missing"]), str(col["n_unique"]),
             escape(_summary(col)), escape(str(col.get("reason") or "").split(": ", 1)[-1])] for col in columns]
    return fitted(out, COLUMN_COLUMNS, rows, title="columns", title_justify="left", box=box.SIMPLE_HEAD)


def _dataset_summary(ds: Dataset) -> RenderableType:
    return key_values([("id", ds["id"]), ("name", escape(ds["name"])), ("format", ds["format"]),
                       ("rows", str(ds["n_rows"])), ("columns", str(ds["n_columns"])),
                       ("size", size(ds["size_bytes"])), ("created", when(ds["created_at"]))])


@app.command("upload")
def datasets_upload(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                                         help="CSV, TSV, Parquet or .npz file")],
                    name: Annotated[str | None, typer.Option(help="Display name [default: the file name]")] = None,
                    url: UrlOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Upload a data set; prints its id and column schema."""
    with connect(url) as client:
        ds = client.upload_dataset(file, name=name)
    if quiet and not as_json:
        typer.echo(ds["id"])
        return
    emit(ds, as_json, lambda out: Group(
        f"uploaded [bold]{ds['id']}[/] ({escape(ds['name'])}): {ds['n_rows']} rows × {ds['n_columns']} columns"
        + _dialect(ds), _columns_table(out, ds["columns"]), warning_lines(ds.get("warnings"))))


def _dialect(ds: Dataset) -> str:
    """How a text table was read, where it is not plain UTF-8 CSV with '.' decimals."""
    d = ds.get("dialect")
    if not d:
        return ""
    parts = [] if d["delimiter"] in (",", "\t") else [f"delimiter {d['delimiter']!r}"]
    if d["decimal"] != ".":
        parts.append(f"decimal {d['decimal']!r}")
    if d.get("thousands_separator"):
        parts.append("digit groups " + " ".join(repr(s) for s in d["thousands_separator"] or []))
    if d["encoding"] != "utf-8":
        parts.append(f"read as {d['encoding']}")
    return f" ({escape(', '.join(parts))})" if parts else ""


def _list_table(out: Console, page: Page[Dataset]) -> RenderableType:
    rows = [[ds["id"], escape(ds["name"]), ds["format"], str(ds["n_rows"]), str(ds["n_columns"]),
             size(ds["size_bytes"]), when(ds["created_at"], short=True)] for ds in page["items"]]
    return fitted(out, LIST_COLUMNS, rows, caption=f"{len(page['items'])} of {page['total']} data sets",
                  box=box.SIMPLE_HEAD)


@app.command("list")
def datasets_list(limit: LimitOpt = 50, offset: OffsetOpt = 0, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List data sets, newest first."""
    with connect(url) as client:
        page = client.datasets(limit=limit, offset=offset)
    emit(page, as_json, lambda out: _list_table(out, page))


@app.command("show")
def datasets_show(dataset_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a data set and its column schema."""
    with connect(url) as client:
        ds = client.dataset(dataset_id)
    emit(ds, as_json, lambda out: Group(_dataset_summary(ds), _columns_table(out, ds["columns"]),
                                        warning_lines(ds.get("warnings"))))


@app.command("set-kind")
def datasets_set_kind(dataset_id: str, kinds: Annotated[list[str], typer.Argument(
                          help="COLUMN=KIND, KIND one of numeric, categorical, boolean, datetime, text, identifier")],
                      url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Set the kind of one or more columns (how jobs use them); prints the new column schema."""
    column_kinds: dict[str, str] = {}
    for text in kinds:
        column, sep, kind = text.rpartition("=")
        if not sep or not column or not kind:
            raise typer.BadParameter(f"'{text}' is not COLUMN=KIND", param_hint="KINDS")
        column_kinds[column] = kind
    with connect(url) as client:
        ds = client.update_dataset(dataset_id, column_kinds=column_kinds)
    emit(ds, as_json, lambda out: Group(_columns_table(out, ds["columns"]), warning_lines(ds.get("warnings"))))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return number(value)
    if isinstance(value, list):
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return "" if value is None else str(value)


def _preview_table(out: Console, preview: DatasetPreview) -> RenderableType:
    """The first rows, with as many whole columns (from the left) as fit, and how many were left out."""
    names = preview["columns"]
    columns = [Col(name, drop=i, wrap=True) for i, name in enumerate(names)]
    rows = [[escape(_cell(row.get(name))) for name in names] for row in preview["rows"]]
    table, hidden = fit(out, columns, rows)
    if not hidden:
        return table
    more = f"… {len(hidden)} more column{'s' if len(hidden) > 1 else ''}: use --json"
    return Group(table, Text(more, style="dim"))


@app.command("preview")
def datasets_preview(dataset_id: str, limit: Annotated[int, typer.Option(min=1, max=500, help="Rows")] = 10,
                     url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show the first rows of a data set."""
    with connect(url) as client:
        preview = client.preview(dataset_id, limit=limit)
    emit(preview, as_json, lambda out: _preview_table(out, preview))


@app.command("delete")
def datasets_delete(dataset_id: str, url: UrlOpt = None) -> None:
    """Delete a data set (refused while a queued or running job uses it)."""
    with connect(url) as client:
        client.delete_dataset(dataset_id)
    console().print(f"deleted {dataset_id}")
