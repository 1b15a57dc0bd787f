"""/webhooks: the caller's webhook endpoints, a test delivery and the delivery log (service.server.webhooks does
the work)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from service.schemas import (
    Page,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryRead,
    WebhookRead,
    WebhookUpdate,
)
from service.server import webhooks
from service.server.api.deps import LimitDep, OffsetDep, PrincipalDep, SessionDep, SettingsDep
from service.server.errors import problem_responses
from service.server.tables import WebhookDelivery, WebhookDeliveryState, WebhookEndpoint

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

WebhookIdPath = Annotated[str, Path(max_length=64, description="A webhook's id (whk_...)")]


def webhook_or_404(webhook_id: WebhookIdPath, session: SessionDep, principal: PrincipalDep) -> WebhookEndpoint:
    return webhooks.get(session=session, webhook_id=webhook_id, caller=principal)


WebhookDep = Annotated[WebhookEndpoint, Depends(webhook_or_404)]


def _delivery_read(delivery: WebhookDelivery, type_: str) -> WebhookDeliveryRead:
    return WebhookDeliveryRead(id=delivery.id, event_id=delivery.event_id, type=type_,
                               state=delivery.state,
                               attempt_count=delivery.attempt_count, attempts=delivery.attempts,
                               next_attempt_at=delivery.next_attempt_at, created_at=delivery.created_at,
                               finished_at=delivery.finished_at)


@router.post("", status_code=201, response_model=WebhookCreated, responses=problem_responses(400, 422),
             summary="Add a webhook endpoint; the answer holds its signing secret, shown this once")
def create_webhook(request: WebhookCreate, session: SessionDep, principal: PrincipalDep, settings: SettingsDep,
                   response: Response) -> WebhookCreated:
    endpoint = webhooks.create(session=session, caller=principal, request=request, settings=settings)
    response.headers["Location"] = f"/webhooks/{endpoint.id}"
    return WebhookCreated.model_validate(endpoint)


@router.get("", response_model=Page[WebhookRead], responses=problem_responses(422),
            summary="List your webhook endpoints, oldest first (an admin's list: everyone's)")
def list_webhooks(session: SessionDep, principal: PrincipalDep, limit: LimitDep = 50,
                  offset: OffsetDep = 0) -> Page[WebhookRead]:
    items, total = webhooks.list_(session=session, caller=principal, limit=limit, offset=offset)
    return Page[WebhookRead](items=[WebhookRead.model_validate(i) for i in items], total=total, limit=limit,
                             offset=offset)


@router.get("/{webhook_id}", response_model=WebhookRead, responses=problem_responses(404, 422),
            summary="A webhook endpoint (without its secret)")
def show_webhook(endpoint: WebhookDep) -> WebhookEndpoint:
    return endpoint


@router.patch("/{webhook_id}", response_model=WebhookRead, responses=problem_responses(400, 404, 422),
              summary="Change a webhook's URL, event types, description, or pause and resume it")
def update_webhook(endpoint: WebhookDep, request: WebhookUpdate, session: SessionDep,
                   settings: SettingsDep) -> WebhookEndpoint:
    return webhooks.update_endpoint(session=session, endpoint=endpoint, request=request, settings=settings)


@router.delete("/{webhook_id}", status_code=204, responses=problem_responses(404, 422),
               summary="Remove a webhook endpoint and its delivery log")
def delete_webhook(endpoint: WebhookDep, session: SessionDep) -> Response:
    webhooks.delete_endpoint(session=session, endpoint=endpoint)
    return Response(status_code=204)


@router.post("/{webhook_id}/test", status_code=202, response_model=WebhookDeliveryRead,
             responses=problem_responses(404, 409, 422),
             summary="Queue a webhook.test event for this endpoint; its delivery shows in the log")
def test_webhook(endpoint: WebhookDep, session: SessionDep) -> WebhookDeliveryRead:
    return _delivery_read(webhooks.send_test(session=session, endpoint=endpoint), webhooks.TEST_EVENT)


@router.get("/{webhook_id}/deliveries", response_model=Page[WebhookDeliveryRead],
            responses=problem_responses(404, 422),
            summary="The delivery log, newest first: each event's attempts, their answers and what comes next")
def webhook_deliveries(endpoint: WebhookDep, session: SessionDep,
                       state: WebhookDeliveryState | None = Query(default=None, description="Only deliveries in "
                                                                                             "this state"),
                       limit: LimitDep = 50, offset: OffsetDep = 0) -> Page[WebhookDeliveryRead]:
    items, total = webhooks.deliveries(session=session, endpoint=endpoint, state=state, limit=limit, offset=offset)
    return Page[WebhookDeliveryRead](items=[_delivery_read(d, t) for d, t in items], total=total, limit=limit,
                                     offset=offset)
