"""/healthz and /readyz"""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.server.db import SchemaNotReady, require_schema_at_head

router = APIRouter(tags=["system"])


class NotReady(BaseModel):
    status: str
    detail: str


@router.get("/healthz", summary="Liveness: the process answers")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable and migrated",
            responses={503: {"model": NotReady, "description": "Database unreachable or not migrated"}})
def readyz(request: Request):
    try:
        require_schema_at_head(request.app.state.engine)
    except SchemaNotReady as exc:
        return JSONResponse({"status": "not ready", "detail": str(exc)}, status_code=503)
    except Exception as exc:
        return JSONResponse({"status": "not ready", "detail": f"database unreachable: {type(exc).__name__}"},
                            status_code=503)
    return {"status": "ready"}
