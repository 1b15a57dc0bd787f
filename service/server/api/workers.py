"""/workers"""

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from service.server import fleet
from service.server.api.deps import PrincipalDep, SessionDep, SettingsDep
from service.server.errors import problem_responses

router = APIRouter(tags=["workers"])


class WorkerRead(BaseModel):
    id: str
    host: str
    pid: int
    devices: list[dict[str, Any]]
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool
    running_jobs: list[str]


class WorkerList(BaseModel):
    items: list[WorkerRead]


@router.get("/workers", response_model=WorkerList, responses=problem_responses(422),
            summary="Live workers, their devices and running jobs")
def list_workers(session: SessionDep, settings: SettingsDep, principal: PrincipalDep,
                 include_stopped: bool = Query(default=False, description="Also list stopped or silent workers")
                 ) -> WorkerList:
    items = fleet.list_workers(session=session, principal=principal, include_stopped=include_stopped,
                               stale_after_s=fleet.liveness_window_s(settings.heartbeat_s))
    return WorkerList(items=items)
