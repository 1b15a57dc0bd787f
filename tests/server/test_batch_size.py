"""The batch size a job gets when its spec leaves it out: the lecture's 32 on small data, larger on large data;
a batch_size the spec gives always wins."""

import pytest

from service.server.spec import single_batch_size
from tests.helpers import upload


@pytest.mark.parametrize(("rows", "batch"), [(1, 32), (150, 32), (32_768, 32), (32_769, 64), (60_000, 64),
                                             (100_000, 128), (1_000_000, 1024), (2_600_000, 1024)])
def test_an_epoch_stays_near_a_thousand_steps_beyond_the_lectures_32(rows, batch):
    assert single_batch_size(rows) == batch


def _rows_csv(rows: int) -> bytes:
    return ("x,y\n" + "".join(f"{i % 97},{i % 2}\n" for i in range(rows))).encode()


def test_a_job_stores_the_batch_size_that_fits_its_data_unless_it_gives_one(client):
    small = upload(client, "iris.csv").json()
    large = upload(client, "large.csv", _rows_csv(40_000)).json()

    def stored(dataset, model, training=None):
        job = client.post("/jobs", json={"dataset_id": dataset["id"], "target": "species" if dataset is small
                                         else "y", "model": model, "training": training or {}})
        assert job.status_code == 202, job.text
        return job.json()["spec"]["training"]["batch_size"]

    assert stored(small, {"type": "mlp"}) == 32  # the lecture's network, as before
    assert stored(large, {"type": "mlp"}) == 64
    assert stored(large, {"type": "mlp"}, {"batch_size": 32}) == 32  # the spec's own always wins
    assert stored(large, {"type": "mlp"}, {"batch_size": 7}) == 7
    assert stored(large, {"type": "ensemble"}) == 1024  # the ensemble's own rule: a few steps per epoch
