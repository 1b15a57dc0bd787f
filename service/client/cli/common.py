"""What every client command shares: the options, the consoles, the error exit, numbers, sizes and times as text,
tables that fit the terminal, and `emit`: the server's JSON with --json, else the command's view of it."""

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from service.client import servers
from service.client.http import ApiError, Client, ClientError

UrlOpt = Annotated[str | None, typer.Option("--url", envvar="MLPS_URL", show_envvar=True,
                                            help="Server URL [default: http://127.0.0.1:8000]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer instead of a table")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the new id (for scripts)")]
LimitOpt = Annotated[int, typer.Option(min=1, max=500, help="Items per page")]
OffsetOpt = Annotated[int, typer.Option(min=0, help="Items to skip")]

STATUS_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "magenta"}
# A column that may wrap (free text) is planned at this many cells (or its header's width) when the table has
# to fit a narrow terminal; it takes more when there is room.
WRAP_AT = 16


# ---------------------------------------------------------------- consoles, errors, the server


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr); its width is the terminal's, or COLUMNS, or 80."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def fail(message: str, details: list[str] | None = None) -> NoReturn:
    """Print an error (and its details) on stderr and exit with status 1."""
    err = console(stderr=True)
    err.print(f"[bold red]error:[/] {escape(message)}")
    for line in details or []:
        err.print(f"  - {escape(line)}")
    raise typer.Exit(1)


def _key_hint() -> str:
    """Where a command looks for the API key, in order, for the answer to a 401."""
    return ("give a key: MLPS_API_KEY=mlps_..., or MLPS_API_KEY_FILE=path/to/key; for a server on this machine, "
            "mlps reads the admin key of the data dir that `mlps serve` (or `mlps api`) recorded for the URL in "
            f"{servers.registry_path()}, else <MLPS_DATA_DIR>/admin.key (default ./var/admin.key: run from the "
            "folder that holds var/, or set MLPS_DATA_DIR)")


@contextmanager
def connect(url: str | None) -> Iterator[Client]:
    """A client for the command; server errors become a message on stderr and exit status 1.

    The key: MLPS_API_KEY, else MLPS_API_KEY_FILE, else the key of the local server recorded for this URL, else
    <MLPS_DATA_DIR, default ./var>/admin.key (the Client looks them up in that order: find_api_key).
    """
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
            details.append(_key_hint())
        fail(f"{exc.detail or exc.title} ({exc.status} {exc.title})", details)
    except ClientError as exc:
        fail(str(exc))


def emit(answer: Any, as_json: bool, view: Callable[[Console], RenderableType | None]) -> None:
    """The one way a command prints an answer: with --json the server's JSON unchanged (for scripts), else
    `view(console)` (a table, a line, or None for nothing) on stdout."""
    if as_json:
        typer.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    out = console()
    shown = view(out)
    if shown is not None:
        out.print(shown)


# ---------------------------------------------------------------- values as text


def when(value: str | None, short: bool = False) -> str:
    """A server timestamp in local time: '2025-01-31 14:05:09', or '01-31 14:05' when short."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def number(value: Any, digits: int = 4) -> str:
    """A metric as text: integers as they are, floats with `digits` decimals (or significant digits when tiny
    or huge), None as '-'."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"


def size(n: float) -> str:
    """A byte count as '512 B', '4.5 KiB', '1.2 MiB' or '3.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def styled_status(value: str) -> str:
    """A job status, coloured."""
    return f"[{STATUS_STYLE.get(value, 'white')}]{value}[/]"


def headline(metrics: dict[str, Any] | None, short: bool = False) -> str:
    """'val_accuracy 0.9667' (or val_r2, else val_loss) from a metrics dict; 'acc 0.9667' when short."""
    if not metrics:
        return "-"
    for key, abbreviation in (("val_accuracy", "acc"), ("val_r2", "r2"), ("val_loss", "loss"), ("train_loss", "loss")):
        if isinstance(metrics.get(key), (int, float)):
            return f"{abbreviation if short else key} {number(metrics[key])}"
    return "-"


def warning_lines(warnings: Sequence[Mapping[str, Any]] | None) -> RenderableType:
    """A data set's or a job's warnings, one line each: the code and the message (empty when there are none)."""
    lines = [f"[yellow]warning[/] {escape(str(w['code']))}: {escape(str(w['message']))}" for w in warnings or []]
    return Group(*lines)


def key_values(rows: Sequence[tuple[str, Any]]) -> Table:
    """Two columns, key and value; a value that is not text is shown as JSON."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value if isinstance(value, str) else escape(json.dumps(value)))
    return table


# ---------------------------------------------------------------- tables that fit the terminal


@dataclass(frozen=True)
class Col:
    """A column of a fitted table.

    `drop`: 0 for a column that is always shown; when the terminal is too narrow, the column with the highest
    `drop` goes first (the rightmost of equals), whole. A `wrap` column (free text) may wrap onto more lines; every
    other column keeps each cell, and its header, on one line, never cut: ids can be copied.
    """

    header: str
    drop: int = 0
    justify: JustifyMethod = "left"
    wrap: bool = False


def _cell_width(markup: str) -> int:
    return max((line.cell_len for line in Text.from_markup(markup).split()), default=0)


def natural_width(renderable: RenderableType) -> int:
    """The cells a renderable takes when the terminal is as wide as it likes (rich's own measure stops at the
    console's width)."""
    return Console(width=10**6).measure(renderable).maximum


def _overhead(options: dict[str, Any]) -> tuple[int, int]:
    """Cells a table's borders and padding take: (a, b) for a + b × the number of columns."""
    def measured(n: int) -> int:
        table = Table(**options)
        for _ in range(n):
            table.add_column(width=1)
        return natural_width(table) - n

    one, two = measured(1), measured(2)
    return one - (two - one), two - one


def fit(out: Console, columns: Sequence[Col], rows: Sequence[Sequence[str]],
        **options: Any) -> tuple[Table, list[str]]:
    """A table of `rows` (cells as Rich markup) with the columns that fit `out`'s width, and the headers of the
    columns it left out. `options` go to rich's Table."""
    planned = []
    for i, column in enumerate(columns):
        header = Text(column.header).cell_len
        natural = max([header, *(_cell_width(row[i]) for row in rows)])
        planned.append(min(natural, max(header, WRAP_AT)) if column.wrap else natural)
    base, per_column = _overhead(options)
    shown = set(range(len(columns)))
    width = base + sum(planned[i] + per_column for i in shown)
    by_drop = sorted((i for i in shown if columns[i].drop), key=lambda i: (columns[i].drop, i))
    while by_drop and width > out.width:
        gone = by_drop.pop()
        shown.remove(gone)
        width -= planned[gone] + per_column
    order = sorted(shown)
    table = Table(**options)
    for i in order:
        column = columns[i]
        if column.wrap:
            table.add_column(escape(column.header), justify=column.justify, overflow="fold", min_width=planned[i])
        else:
            # min_width keeps every cell whole, so no overflow rule ever applies; rich justifies nothing under
            # "ignore", so right-aligned columns keep the default
            table.add_column(escape(column.header), justify=column.justify, no_wrap=True, min_width=planned[i],
                             overflow="ignore" if column.justify == "left" else "ellipsis")
    for row in rows:
        table.add_row(*(row[i] for i in order))
    return table, [column.header for i, column in enumerate(columns) if i not in shown]


def fitted(out: Console, columns: Sequence[Col], rows: Sequence[Sequence[str]], **options: Any) -> RenderableType:
    """fit()'s table, followed by a line naming the columns left out, if any."""
    table, hidden = fit(out, columns, rows, **options)
    if not hidden:
        return table
    note = f"… {', '.join(hidden)}: not shown at this width (use --json)"
    if len(note) > out.width:
        note = f"… {len(hidden)} more columns: not shown at this width (use --json)"
    return Group(table, Text(note, style="dim"))
