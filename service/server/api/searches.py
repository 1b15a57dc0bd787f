"""/searches: hyperparameter searches, their trials, their leaderboard and their events."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from service.schemas import LabelsUpdate, Page, SearchCreate, SearchRead, Tag, TrialRead
from service.server import searches
from service.server.api.deps import LimitDep, OffsetDep, PrincipalDep, SessionDep, SettingsDep
from service.server.api.idempotency import IdempotentJSON
from service.server.auth import Principal
from service.server.errors import problem_responses
from service.server.tables import Search, SearchStatus

router = APIRouter(prefix="/searches", tags=["searches"])

POLL_INTERVAL_S = 0.5
KEEPALIVE_S = 15.0


def search_or_404(search_id: str, session: SessionDep, principal: PrincipalDep) -> Search:
    return searches.get(session=session, search_id=search_id, principal=principal)


SearchDep = Annotated[Search, Depends(search_or_404)]


@router.post("", status_code=201, response_model=SearchRead, responses=problem_responses(400, 404, 409, 422),
             summary="Start a hyperparameter search")
def start_search(request: SearchCreate, idempotency: IdempotentJSON, session: SessionDep, principal: PrincipalDep,
                 settings: SettingsDep) -> Response:
    if idempotency.replay is not None:
        return idempotency.replay
    search = searches.create(session=session, request=request, principal=principal, settings=settings)
    return idempotency.respond(searches.to_read(session, search, leaderboard=True), 201,
                               {"Location": f"/searches/{search.id}"})


@router.get("", response_model=Page[SearchRead], responses=problem_responses(422),
            summary="List searches, newest first")
def list_searches(session: SessionDep, principal: PrincipalDep, status: SearchStatus | None = Query(default=None),
                  tag: Tag | None = Query(default=None, description="Searches carrying this tag"),
                  name: str | None = Query(default=None, max_length=255, description="Searches with this name"),
                  limit: LimitDep = 50, offset: OffsetDep = 0) -> Page[SearchRead]:
    items, total = searches.list_(session=session, principal=principal, status=status, tag=tag, name=name,
                                  limit=limit, offset=offset)
    return Page[SearchRead](items=[searches.to_read(session, s, leaderboard=False) for s in items], total=total,
                            limit=limit, offset=offset)


@router.get("/{search_id}", response_model=SearchRead, responses=problem_responses(404, 422),
            summary="Status, progress, best trial and leaderboard of a search")
def show_search(search: SearchDep, session: SessionDep) -> SearchRead:
    return searches.to_read(session, search, leaderboard=True)


@router.patch("/{search_id}", response_model=SearchRead, responses=problem_responses(400, 404, 422),
              summary="Name, tag or annotate a search")
def update_search(search: SearchDep, labels: LabelsUpdate, session: SessionDep) -> SearchRead:
    return searches.to_read(session, searches.update_labels(session=session, search=search, labels=labels),
                            leaderboard=True)


@router.get("/{search_id}/trials", response_model=list[TrialRead], responses=problem_responses(404, 422),
            summary="Every trial of a search, in order")
def search_trials(search: SearchDep, session: SessionDep) -> list[TrialRead]:
    return searches.trials(session=session, search=search)


@router.post("/{search_id}/cancel", status_code=202, response_model=SearchRead,
             responses=problem_responses(404, 409, 422), summary="Cancel a search: queued trials cancelled, "
                                                                 "running ones stopped")
def cancel_search(search: SearchDep, session: SessionDep, settings: SettingsDep) -> SearchRead:
    return searches.to_read(session, searches.cancel(session=session, search=search, settings=settings),
                            leaderboard=True)


def _snapshot(request: Request, search_id: str, principal: Principal) -> tuple[SearchRead, list[TrialRead]]:
    with request.app.state.sessions() as session, session.begin():
        search = searches.get(session=session, search_id=search_id, principal=principal)
        return (searches.to_read(session, search, leaderboard=True), searches.trials(session=session, search=search))


async def search_event_stream(request: Request, search_id: str, principal: Principal) -> AsyncIterator[str]:
    """A `search` event (the search with its leaderboard) whenever a trial moves; stops once the search and all its
    trials have ended, or when the client leaves."""
    poll_s = getattr(request.app.state, "events_poll_interval_s", POLL_INTERVAL_S)
    last = None
    quiet = 0.0
    sent = 0
    while True:
        view, trials = await run_in_threadpool(_snapshot, request, search_id, principal)
        now = searches.fingerprint(view, trials)
        if now != last:
            sent += 1
            data = json.dumps(view.model_dump(mode="json"), separators=(",", ":"))
            yield f"id: {sent}\nevent: search\ndata: {data}\n\n"
            last, quiet = now, 0.0
        if view.status != "running" and view.progress.trials_running == 0:
            return
        if quiet >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet = 0.0
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)
        quiet += poll_s


@router.get("/{search_id}/events", summary="Live leaderboard of a search (Server-Sent Events)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Events `search` (data: the search with its leaderboard) whenever a "
                                            "trial starts, records an epoch or ends; ends once the search has"},
                       **problem_responses(404, 422)})
async def search_events(request: Request, search_id: str, principal: PrincipalDep) -> StreamingResponse:
    """Stream a search's progress as Server-Sent Events until it ends."""

    def exists() -> None:
        with request.app.state.sessions() as session:
            searches.get(session=session, search_id=search_id, principal=principal)

    await run_in_threadpool(exists)  # 404 problem before the stream starts
    return StreamingResponse(search_event_stream(request, search_id, principal), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
