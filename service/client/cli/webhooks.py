"""`mlps webhooks`: add, list, show and remove webhook endpoints, send a test event, read the delivery log."""

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
    QuietOpt,
    UrlOpt,
    connect,
    console,
    emit,
    fitted,
    key_values,
    when,
)
from service.client.http import Page, Webhook, WebhookDelivery

app = typer.Typer(help="Webhook endpoints: signed POSTs when jobs end and searches finish.", no_args_is_help=True)

EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled", "search.finished")
LIST_COLUMNS = (Col("id"), Col("url", wrap=True), Col("events", drop=2, wrap=True), Col("enabled", drop=1),
                Col("created", drop=3))
DELIVERY_COLUMNS = (Col("id", justify="right"), Col("event"), Col("type", drop=3), Col("state"),
                    Col("attempts", justify="right"), Col("last answer", drop=1, wrap=True), Col("next", drop=2),
                    Col("created", drop=4))

EventOpt = Annotated[list[str], typer.Option("--event", "-e", help=f"An event type to deliver (repeat it): "
                                             f"{', '.join(EVENT_TYPES)}")]


def _enabled(hook: Webhook) -> str:
    return "yes" if hook["enabled"] else f"no ({hook['disabled_reason']})" if hook["disabled_reason"] else "no"


def _view(hook: Webhook, secret: str | None = None) -> RenderableType:
    rows: list[tuple[str, Any]] = [("id", hook["id"]), ("owner", escape(hook["owner"])), ("url", escape(hook["url"])),
                                   ("events", ", ".join(hook["events"])),
                                   ("description", escape(hook["description"] or "-")),
                                   ("enabled", escape(_enabled(hook))), ("created", when(hook["created_at"]))]
    return key_values([*rows, ("secret", f"[bold]{secret}[/]")] if secret else rows)


@app.command("add")
def webhooks_add(url: str, events: EventOpt, description: Annotated[str | None, typer.Option(
                     help="A note of what the endpoint is for")] = None, server: UrlOpt = None,
                 as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """Add an endpoint; prints its signing secret, which is shown this once."""
    with connect(server) as client:
        hook = client.create_webhook(url, events, description=description)
    if quiet and not as_json:
        typer.echo(hook["id"])
        typer.echo(hook["secret"])
        return
    emit(hook, as_json, lambda out: Group(_view(hook, hook["secret"]), "The secret is shown this once: keep it to "
                                                                      "verify the webhook-signature header."))


@app.command("list")
def webhooks_list(limit: LimitOpt = 50, offset: OffsetOpt = 0, server: UrlOpt = None,
                  as_json: JsonOpt = False) -> None:
    """List your endpoints."""
    with connect(server) as client:
        page = client.webhooks(limit=limit, offset=offset)
    rows = [[h["id"], escape(h["url"]), ", ".join(h["events"]), escape(_enabled(h)), when(h["created_at"], short=True)]
            for h in page["items"]]
    emit(page, as_json, lambda out: fitted(out, LIST_COLUMNS, rows, box=box.SIMPLE_HEAD,
                                           caption=f"{len(page['items'])} of {page['total']} webhooks"))


@app.command("show")
def webhooks_show(webhook_id: str, server: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show an endpoint (without its secret)."""
    with connect(server) as client:
        hook = client.webhook(webhook_id)
    emit(hook, as_json, lambda out: _view(hook))


@app.command("rm")
def webhooks_rm(webhook_id: str, server: UrlOpt = None) -> None:
    """Remove an endpoint and its delivery log."""
    with connect(server) as client:
        client.delete_webhook(webhook_id)
    console().print(f"removed {webhook_id}")


@app.command("test")
def webhooks_test(webhook_id: str, server: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Queue a webhook.test event for an endpoint; `mlps webhooks deliveries` shows how it went."""
    with connect(server) as client:
        delivery = client.test_webhook(webhook_id)
    emit(delivery, as_json, lambda out: f"queued {delivery['type']} event {delivery['event_id']} (delivery "
                                        f"{delivery['id']})")


def _last_answer(delivery: WebhookDelivery) -> str:
    if not delivery["attempts"]:
        return "-"
    last: dict[str, Any] = dict(delivery["attempts"][-1])
    return escape(str(last["status_code"]) if last["error"] is None else str(last["error"]))


def _deliveries_table(out: Console, page: Page[WebhookDelivery]) -> RenderableType:
    rows = [[str(d["id"]), d["event_id"], d["type"], d["state"], str(d["attempt_count"]), _last_answer(d),
             when(d["next_attempt_at"], short=True), when(d["created_at"], short=True)] for d in page["items"]]
    return fitted(out, DELIVERY_COLUMNS, rows, box=box.SIMPLE_HEAD,
                  caption=f"{len(page['items'])} of {page['total']} deliveries")


@app.command("deliveries")
def webhooks_deliveries(webhook_id: str, state: Annotated[str | None, typer.Option(
                            help="Only pending, delivered or failed ones")] = None,
                        limit: LimitOpt = 50, offset: OffsetOpt = 0, server: UrlOpt = None,
                        as_json: JsonOpt = False) -> None:
    """The endpoint's delivery log, newest first: each event's attempts and its last answer."""
    with connect(server) as client:
        page = client.webhook_deliveries(webhook_id, state=state, limit=limit, offset=offset)
    emit(page, as_json, lambda out: _deliveries_table(out, page))
