"""`mlps search`: start a hyperparameter search, watch its leaderboard live, list, show and cancel searches."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
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
    fitted,
    key_values,
    number,
    styled_status,
    when,
)
from service.client.cli.jobs import apply_override, load_spec, parse_override
from service.client.http import Client, Page, Search, Trial

app = typer.Typer(help="Hyperparameter searches: start one, watch its leaderboard, list, show and cancel them.",
                  no_args_is_help=True)

LIST_COLUMNS = (Col("id"), Col("status"), Col("name", drop=3, wrap=True), Col("sampler", drop=4),
                Col("trials", drop=1), Col("best", drop=2), Col("model", drop=2), Col("tags", drop=5, wrap=True),
                Col("created", drop=6))
STATE_STYLE = {"running": "cyan", "complete": "green", "pruned": "yellow", "failed": "red", "cancelled": "magenta"}


# ---------------------------------------------------------------- the space from files and options


def parse_param(text: str | list[Any] | dict[str, Any]) -> Any:
    """One parameter of the space: a list (the choices), a JSON object, or float:LOW:HIGH[:log] /
    int:LOW:HIGH[:log]."""
    if isinstance(text, list | dict):
        return {"type": "choice", "values": text} if isinstance(text, list) else text
    kind, _, rest = text.partition(":")
    if kind in ("float", "int") and rest:
        parts = rest.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise typer.BadParameter(f"{text!r}: write {kind}:LOW:HIGH or {kind}:LOW:HIGH:log", param_hint="--param")
        try:
            low, high = (float(p) if kind == "float" else int(p) for p in parts[:2])
        except ValueError:
            raise typer.BadParameter(f"{text!r}: LOW and HIGH must be {'numbers' if kind == 'float' else 'integers'}",
                                     param_hint="--param") from None
        return {"type": kind, "low": low, "high": high, "log": len(parts) == 3}
    try:
        value = json.loads(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a JSON list of choices, a JSON object, or float:LOW:HIGH[:log] / "
                                 "int:LOW:HIGH[:log]", param_hint="--param") from None
    if not isinstance(value, list | dict):
        raise typer.BadParameter(f"{text!r}: give a list of choices, e.g. [0.001, 0.01]", param_hint="--param")
    return parse_param(value)


def load_space(path: Path | None, params: list[str]) -> dict[str, Any]:
    """The search space from a YAML/JSON file (field: list of choices or parameter object) and --param FIELD=..."""
    space: dict[str, Any] = {}
    if path is not None:
        for key, value in load_spec(path).items():
            space[str(key)] = parse_param(value if isinstance(value, list | dict) else str(value))
    for text in params:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{text!r} is not FIELD=VALUES (e.g. training.learning_rate=float:1e-4:0.1:log)",
                                     param_hint="--param")
        space[key.strip()] = parse_param(raw)
    if not space:
        raise typer.BadParameter("give the space: --space space.yaml or --param FIELD=VALUES", param_hint="--space")
    return space


# ---------------------------------------------------------------- views


def _params(params: dict[str, Any]) -> str:
    return escape(", ".join(f"{k.split('.')[-1]}={json.dumps(v) if not isinstance(v, float) else number(v)}"
                            for k, v in params.items()))


def leaderboard(search: Search, top: int = 10) -> RenderableType:
    """The search's headline and its best trials as a table."""
    progress = search["progress"]
    budget = progress["trials_budget"]
    done = f"{progress['trials_done']}/{budget}" if budget is not None else str(progress["trials_done"])
    title = (f"search [bold]{search['id']}[/] {styled_status(search['status'])}: {done} trials done, "
             f"{progress['trials_running']} running, {progress['elapsed_s']:.0f} s; {search['metric']} "
             f"({search['direction']})")
    table = Table(box=box.SIMPLE_HEAD)
    for header, justify in (("#", "right"), ("trial", "right"), ("state", "left"), (search["metric"], "right"),
                            ("epochs", "right"), ("time", "right"), ("parameters", "left")):
        table.add_column(header, justify=justify, no_wrap=header != "parameters", overflow="fold")  # type: ignore[arg-type]
    for rank, trial in enumerate((search.get("leaderboard") or [])[:top], start=1):
        table.add_row(str(rank), str(trial["number"]), f"[{STATE_STYLE[trial['state']]}]{trial['state']}[/]",
                      number(trial["value"]), str(trial["epochs"]),
                      f"{trial['duration_s']:.1f} s" if trial["duration_s"] is not None else "-",
                      _params(trial["params"]))
    lines: list[RenderableType] = [title, table]
    if search["model_id"]:
        best = search["best"]
        lines.append(f"best model: [bold]{search['model_id']}[/]" + (f" (trial {best['number']})" if best else ""))
    if search.get("refit_job_id"):
        lines.append(f"refit on all rows: job {search['refit_job_id']}"
                     + (f", model [bold]{search['refit_model_id']}[/]" if search.get("refit_model_id") else ""))
    if search["error"]:
        lines.append(f"[red]{escape(search['error'])}[/]")
    return Group(*lines)


def _trials_table(trials: list[Trial]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for header in ("trial", "state", "value", "epochs", "job", "parameters"):
        table.add_column(header, no_wrap=header != "parameters", overflow="fold")
    for t in trials:
        table.add_row(str(t["number"]), f"[{STATE_STYLE[t['state']]}]{t['state']}[/]", number(t["value"]),
                      str(t["epochs"]), t["job_id"] or "-", _params(t["params"]))
    return table


def _list_table(out: Console, page: Page[Search]) -> RenderableType:
    rows = []
    for s in page["items"]:
        progress = s["progress"]
        budget = progress["trials_budget"]
        best = s["best"]
        rows.append([s["id"], styled_status(s["status"]), escape(s["name"] or "-"), s["sampler"],
                     f"{progress['trials_done']}/{budget if budget is not None else '-'}",
                     f"{s['metric']} {number(best['value'])}" if best else "-", s["model_id"] or "-",
                     escape(" ".join(s["tags"])) or "-", when(s["created_at"], short=True)])
    return fitted(out, LIST_COLUMNS, rows, caption=f"{len(page['items'])} of {page['total']} searches",
                  box=box.SIMPLE_HEAD)


def watch_search(client: Client, search_id: str, top: int = 10) -> Search:
    """A live leaderboard in the terminal until the search ends; answers the final search."""
    search = client.search(search_id)
    with Live(leaderboard(search, top), console=console(), auto_refresh=False) as live:
        for update in client.search_events(search_id):
            search = update
            live.update(leaderboard(search, top), refresh=True)
    return client.search(search_id)


def _exit_for(search: Search) -> None:
    if search["status"] != "succeeded":
        raise typer.Exit(1)


# ---------------------------------------------------------------- commands


@app.command("start")
def search_start(
    spec_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The base job spec (YAML or JSON)")],
    space_file: Annotated[Path | None, typer.Option("--space", exists=True, dir_okay=False,
                                                    help="The space: FIELD: [choices] or {type: float, low: .., "
                                                         "high: .., log: true}")] = None,
    params: Annotated[list[str] | None, typer.Option("--param", help="FIELD=[choices] | FIELD=float:LOW:HIGH[:log] | "
                                                                     "FIELD=int:LOW:HIGH[:log] (repeat)")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE in the base spec (repeat)")] = None,
    sampler: Annotated[str, typer.Option(help="grid, random or tpe")] = "tpe",
    trials: Annotated[int | None, typer.Option(min=1, help="Trials to run")] = None,
    max_wall_s: Annotated[int | None, typer.Option("--max-wall-s", min=1, help="Stop after this many seconds")] = None,
    metric: Annotated[str, typer.Option(help="Validation metric to optimise")] = "val_loss",
    direction: Annotated[str | None, typer.Option(help="minimize or maximize (default: by metric)")] = None,
    pruner: Annotated[str | None, typer.Option(help="median or successive_halving")] = None,
    parallelism: Annotated[int, typer.Option(min=1, help="Trials queued or running at once")] = 4,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    refit: Annotated[bool, typer.Option("--refit", help="At the end, train the best setting on all rows")] = False,
    name: Annotated[str | None, typer.Option(help="A name for the search")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeat)")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Show the live leaderboard until the search ends")] = False,
    url: UrlOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Start a search over a base job spec; with --watch, follow its leaderboard to the end."""
    spec = load_spec(spec_file)
    for text in overrides or []:
        apply_override(spec, *parse_override(text))
    request: dict[str, Any] = {"spec": spec, "space": load_space(space_file, params or []), "sampler": sampler,
                               "budget": {k: v for k, v in (("trials", trials), ("max_wall_s", max_wall_s)) if v},
                               "metric": metric, "parallelism": parallelism, "seed": seed, "refit": refit,
                               "tags": list(tags or [])}
    for key, value in (("direction", direction), ("name", name)):
        if value is not None:
            request[key] = value
    if pruner is not None:
        request["pruner"] = {"type": pruner}
    with connect(url) as client:
        search = client.start_search(request)
        if quiet:
            typer.echo(search["id"])
        elif not as_json:
            budget = search["progress"]["trials_budget"]
            console().print(f"started search [bold]{search['id']}[/] ({search['sampler']}, "
                            f"{budget if budget is not None else 'unbounded'} trials, {search['metric']} "
                            f"{search['direction']}): {styled_status(search['status'])}")
        if watch:
            search = watch_search(client, search["id"])
    if as_json:
        emit(search, True, lambda out: None)
    if watch:
        _exit_for(search)


@app.command("watch")
def search_watch(search_id: str, top: Annotated[int, typer.Option(min=1, help="Rows of the leaderboard")] = 10,
                 url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Follow a search's leaderboard live until it ends; exit status 1 unless it succeeded."""
    with connect(url) as client:
        search = client.wait_search(search_id) if as_json else watch_search(client, search_id, top)
    if as_json:
        emit(search, True, lambda out: None)
    _exit_for(search)


@app.command("list")
def search_list(status: Annotated[str | None, typer.Option(help="running, succeeded, failed, cancelled")] = None,
                tag: Annotated[str | None, typer.Option("--tag", help="Only searches carrying this tag")] = None,
                name: Annotated[str | None, typer.Option("--name", help="Only searches with this name")] = None,
                limit: LimitOpt = 50, offset: OffsetOpt = 0, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List searches, newest first."""
    with connect(url) as client:
        page = client.searches(status=status, tag=tag, name=name, limit=limit, offset=offset)
    emit(page, as_json, lambda out: _list_table(out, page))


@app.command("show")
def search_show(search_id: str, trials: Annotated[bool, typer.Option("--trials", help="Every trial, in order")] = False,
                top: Annotated[int, typer.Option(min=1, help="Rows of the leaderboard")] = 10,
                url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a search: status, progress, best trial and leaderboard (or, with --trials, every trial)."""
    with connect(url) as client:
        search = client.search(search_id)
        every = client.search_trials(search_id) if trials else None
    if as_json:
        emit({**search, "trials": every} if every is not None else search, True, lambda out: None)
        return
    out = console()
    out.print(leaderboard(search, top))
    out.print(key_values([("name", escape(search["name"] or "-")), ("tags", escape(" ".join(search["tags"])) or "-"),
                          ("sampler", search["sampler"]), ("created", when(search["created_at"])),
                          ("finished", when(search["finished_at"]))]))
    if every is not None:
        out.print(_trials_table(every))


@app.command("cancel")
def search_cancel(search_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a search: its queued trials at once, its running ones at the end of their current epoch."""
    with connect(url) as client:
        search = client.cancel_search(search_id)
    emit(search, as_json, lambda out: f"search [bold]{search['id']}[/] {styled_status(search['status'])}; "
                                      f"{search['progress']['trials_running']} trial(s) stopping")
