"""/healthz and /readyz"""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.server import fleet

router = APIRouter(tags=["system"])


class NotReady(BaseModel):
    status: str
    detail: str


# response_model=None: FastAPI would otherwise make each return annotation a response model, documented and
# validated.
@router.get("/healthz", summary="Liveness: the process answers", response_model=None)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable, migrated and writable; a live worker; free space",
            response_model=None,
            responses={503: {"model": NotReady, "description": "Not ready; detail says why (database unavailable "
                                                               "or not migrated, no live worker, disk full)"}})
def readyz(request: Request) -> JSONResponse | dict[str, str]:
    state = request.app.state
    reasons = fleet.not_ready(engine=state.engine, sessions=state.sessions, storage=state.storage,
                              heartbeat_s=state.settings.heartbeat_s, min_free_bytes=state.settings.min_free_bytes)
    if reasons:
        return JSONResponse({"status": "not ready", "detail": "; ".join(reasons)}, status_code=503)
    return {"status": "ready"}
