"""The live progress line of `mlps jobs wait` and `mlps jobs submit --wait`: epoch k/n, losses, the main metric and
the time left (inside a long epoch also its steps, rate and time left), fitted to the terminal's width."""

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from service.client.cli.common import natural_width, number
from service.client.http import JobEvent

BAR_WIDTH = 24
MIN_BAR_WIDTH = 10


class EpochColumn(ProgressColumn):
    """'epoch k/n' (n: the spec's upper bound on epochs, or the last epoch run once it stopped early)."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else f"{task.total:.0f}"
        return Text(f"epoch {task.completed:.0f}/{total}")


class FittedProgress(Progress):
    """A Progress whose line fits the terminal: when it is too narrow, the columns in `drop_first` go, whole and in
    that order, instead of every column being squeezed to an ellipsis; the bar takes what room is left, between
    MIN_BAR_WIDTH and BAR_WIDTH cells."""

    def __init__(self, *columns: ProgressColumn, bar: BarColumn, drop_first: Sequence[ProgressColumn],
                 **options: Any) -> None:
        self.bar = bar  # set first: Progress renders itself once while it is built, with no task yet
        self.drop_first = list(drop_first)
        super().__init__(*columns, **options)

    def _grid(self, columns: list[ProgressColumn], tasks: list[Task]) -> Table:
        table = Table.grid(*(column.get_table_column().copy() for column in columns), padding=(0, 1))
        for task in tasks:
            table.add_row(*(column(task) for column in columns))
        return table

    def make_tasks_table(self, tasks: Iterable[Task]) -> Table:
        visible = [task for task in tasks if task.visible]
        shown = [column for column in self.columns if isinstance(column, ProgressColumn)]
        if not visible:
            return self._grid(shown, visible)
        self.bar.bar_width = MIN_BAR_WIDTH
        for gone in [None, *self.drop_first]:
            if gone is not None:
                shown.remove(gone)
            table = self._grid(shown, visible)
            spare = self.console.width - natural_width(table)
            if spare >= 0:
                break
        if self.bar in shown and spare > 0:
            self.bar.bar_width = min(BAR_WIDTH, MIN_BAR_WIDTH + spare)
            table = self._grid(shown, visible)
        return table


class ProgressView:
    """Turns job events into the progress line: epoch k/n, losses, the main metric, the time left."""

    def __init__(self, progress: Progress, job_id: str) -> None:
        self.progress = progress
        self.task = progress.add_task(job_id, total=None, status="", loss="", metric="")

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
        if event.kind == "steps":
            # inside a long epoch: the bar stays at the epochs finished; the status says where the epoch stands
            self.progress.update(self.task, total=data["epochs"], completed=data["epoch"] - 1,
                                 status=steps_line(data))
            return
        metrics = data["metrics"]
        loss = f"loss {number(metrics.get('train_loss'))} / val {number(metrics.get('val_loss'))}"
        metric = next((f"{key} {number(metrics[key])}" for key in ("val_accuracy", "val_r2")
                       if isinstance(metrics.get(key), (int, float))), "")
        self.progress.update(self.task, total=data["epochs"], completed=data["epoch"], loss=loss, metric=metric,
                             status="running")


def steps_line(data: dict[str, Any]) -> str:
    """'epoch 3 step 1,200/2,540, 41,000 rows/s, 33 s left in it' from a `steps` event."""
    rate = data.get("samples_per_second")
    eta = data.get("eta_s")
    return (f"epoch {data['epoch']} step {data['step']:,}/{data['steps']:,}"
            + (f", {rate:,.0f} rows/s" if rate is not None else "")
            + (f", {eta:,.0f} s left in it" if eta is not None else ""))


def job_progress(console: Console, job_id: str) -> tuple[FittedProgress, ProgressView]:
    """The progress line for one job (spinner, id, status, bar, epoch k/n, losses, metric, time left) and the
    on_update callback that moves it. On a narrow terminal the id goes first (the summary line names it), then the
    bar, the losses, the metric, the status and the spinner; the epoch counter and the time left always stay."""
    spinner, bar = SpinnerColumn(), BarColumn(bar_width=BAR_WIDTH)
    name, state = TextColumn("[bold]{task.description}[/]"), TextColumn("{task.fields[status]}")
    loss, metric = TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[metric]}")
    progress = FittedProgress(spinner, name, state, bar, EpochColumn(), loss, metric, TimeRemainingColumn(),
                              bar=bar, drop_first=[name, bar, loss, metric, state, spinner], console=console,
                              transient=False)
    return progress, ProgressView(progress, job_id)
