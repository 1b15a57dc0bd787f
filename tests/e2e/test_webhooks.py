"""Webhooks end to end against real `mlps serve` processes: an endpoint added with `mlps webhooks add`, a job
trained by the worker, its event kept in the outbox while the receiver is down and across an API restart, then
delivered once the receiver is up, signed so that the Standard Webhooks library verifies it."""

import json

from typer.testing import CliRunner

from service.cli import app
from tests.helpers import upload, wait_for, wait_for_job
from tests.live import admin_key, free_port, running
from tests.server.test_webhooks import Receiver

ENV = {"MLPS_WEBHOOK_ALLOW": "127.0.0.1", "MLPS_WEBHOOK_POLL_S": "0.1", "MLPS_WEBHOOK_RETRY_BASE_S": "0.5",
       "MLPS_WEBHOOK_MAX_ATTEMPTS": "30", "MLPS_WEBHOOK_TIMEOUT_S": "2"}


def test_the_outbox_survives_a_restart_and_delivers_once_the_receiver_is_up(tmp_path):
    data_dir = tmp_path / "var"
    api_port, hook_port = free_port(), free_port()  # nothing listens on hook_port yet: the receiver is down
    url = f"http://127.0.0.1:{hook_port}/hook"
    command = ["serve", "--port", str(api_port), "--data-dir", str(data_dir)]
    runner = CliRunner()

    with running(command, data_dir=data_dir, port=api_port, env=ENV) as server:
        env = {"MLPS_URL": str(server.base_url), "MLPS_API_KEY": admin_key(data_dir), "COLUMNS": "200"}
        added = runner.invoke(app, ["webhooks", "add", url, "-e", "job.succeeded", "-e", "job.failed",
                                    "--description", "nightly", "--json"], env=env)
        assert added.exit_code == 0, added.output
        hook = json.loads(added.output)
        assert hook["secret"].startswith("whsec_") and hook["events"] == ["job.succeeded", "job.failed"]
        refused = runner.invoke(app, ["webhooks", "add", "https://10.0.0.1/x", "-e", "job.failed"], env=env)
        assert refused.exit_code == 1 and "a private address" in refused.output

        ds = upload(server, "iris.csv").json()
        job = server.post("/jobs", json={"dataset_id": ds["id"], "target": "species",
                                         "training": {"epochs": 5, "batch_size": 16}}).json()
        job = wait_for_job(server, job["id"])
        assert job["status"] == "succeeded", job["error"]

        def failed_once() -> dict | None:
            items = server.get(f"/webhooks/{hook['id']}/deliveries").json()["items"]
            return items[0] if items and items[0]["attempt_count"] >= 1 else None

        pending = wait_for(failed_once, timeout=60, what="a first failed attempt")
        assert pending["state"] == "pending" and pending["attempts"][0]["status_code"] is None
        assert "ConnectError" in pending["attempts"][0]["error"]

    receiver = Receiver(port=hook_port)
    receiver.secret = hook["secret"]
    try:
        with running(command, data_dir=data_dir, port=api_port, env=ENV) as server:
            def delivered() -> dict | None:
                items = server.get(f"/webhooks/{hook['id']}/deliveries").json()["items"]
                return items[0] if items and items[0]["state"] == "delivered" else None

            delivery = wait_for(delivered, timeout=90, what="the delivery after the restart")
            shown = runner.invoke(app, ["webhooks", "deliveries", hook["id"]], env={
                "MLPS_URL": str(server.base_url), "MLPS_API_KEY": admin_key(data_dir), "COLUMNS": "200"})
            assert shown.exit_code == 0 and delivery["event_id"] in shown.output and "delivered" in shown.output
    finally:
        receiver.close()

    assert delivery["event_id"] == pending["event_id"] and delivery["attempts"][-1]["status_code"] == 204
    assert all(a["status_code"] is None for a in delivery["attempts"][:-1])
    [got] = receiver.received  # the failed attempts never reached it; the one that did was verified
    assert isinstance(got["verified"], dict), got["verified"]
    assert got["headers"]["webhook-id"] == delivery["event_id"]
    body = json.loads(got["body"])
    assert body["type"] == "job.succeeded" and body["data"]["id"] == job["id"]
    assert body["data"]["model_id"] == job["model_id"] and body["data"]["metrics"] == job["metrics"]
