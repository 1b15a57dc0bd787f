"""The live progress line inside a long epoch: its steps, rate and time left."""

import io

from rich.console import Console

from service.client.cli.progress import job_progress, steps_line
from service.client.http import JobEvent


def test_a_steps_event_shows_where_the_epoch_stands():
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    progress, view = job_progress(console, "job_0123456789abcdef")
    view(JobEvent(kind="steps", data={"job_id": "job_0123456789abcdef", "epoch": 3, "epochs": 10, "step": 1200,
                                      "steps": 2540, "samples_per_second": 40960.4, "eta_s": 33.2}))
    task = progress.tasks[0]
    assert task.completed == 2 and task.total == 10  # two epochs finished, the third in progress
    assert task.fields["status"] == "epoch 3 step 1,200/2,540, 40,960 rows/s, 33 s left in it"
    assert steps_line({"epoch": 1, "step": 5, "steps": 9}) == "epoch 1 step 5/9"
