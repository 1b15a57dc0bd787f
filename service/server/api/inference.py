"""/v2: the Open Inference Protocol (KServe v2 REST), with our keys and owners; answers and errors in the
protocol's own shapes (an error is {"error": "..."}), so the protocol's clients (tritonclient, KServe's) read them.

Documented by the protocol's own specification rather than in our OpenAPI document, whose every error is a problem.
"""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

import service
from service.server import faults, inference
from service.server.api.deps import ModelCacheDep, PrincipalDep, SettingsDep
from service.server.errors import InvalidInput, ServiceError


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class ProtocolRoute(APIRoute):
    """A route whose errors, ours or the framework's, leave as the protocol's {"error": "..."}; invalid input is
    the protocol's 400."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                return _error(400 if isinstance(exc, InvalidInput) else exc.status, exc.detail, exc.headers)
            except RequestValidationError as exc:
                return _error(400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
            except faults.FAULT_TYPES as exc:
                fault = faults.classify(exc)
                if fault is None:
                    raise
                return _error(fault.status, fault.detail, fault.headers)

        return route


router = APIRouter(prefix="/v2", route_class=ProtocolRoute, include_in_schema=False)


@router.get("")
def server_metadata() -> dict[str, Any]:
    return {"name": inference.SERVER_NAME, "version": service.__version__, "extensions": inference.EXTENSIONS}


@router.get("/health/live")
def server_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def server_ready(request: Request) -> JSONResponse:
    # The protocol: 200 is ready, a 4xx is not.
    reason = await run_in_threadpool(inference.not_ready, request.app.state.engine)
    if reason is not None:
        return JSONResponse({"ready": False, "error": reason}, status_code=400)
    return JSONResponse({"ready": True})


async def _resolve(request: Request, principal: PrincipalDep, cache: ModelCacheDep, model_name: str,
                   model_version: str | None = None) -> str:
    return await run_in_threadpool(lambda: inference.resolve(sessions=request.app.state.sessions, cache=cache,
                                                             principal=principal, name=model_name,
                                                             version=model_version))


@router.get("/models/{model_name}")
@router.get("/models/{model_name}/versions/{model_version}")
async def model_metadata(request: Request, principal: PrincipalDep, cache: ModelCacheDep, model_name: str,
                         model_version: str | None = None) -> dict[str, Any]:
    model_id = await _resolve(request, principal, cache, model_name, model_version)
    found = await run_in_threadpool(lambda: inference.metadata(cache=cache, model_id=model_id, name=model_name,
                                                                  version=model_version))
    return found.model_dump()


@router.get("/models/{model_name}/ready")
@router.get("/models/{model_name}/versions/{model_version}/ready")
async def model_ready(request: Request, principal: PrincipalDep, cache: ModelCacheDep, model_name: str,
                      model_version: str | None = None) -> dict[str, Any]:
    model_id = await _resolve(request, principal, cache, model_name, model_version)
    await run_in_threadpool(cache.get, model_id)  # loads it, or Gone when its files are missing
    return {"name": model_name, "ready": True}


@router.post("/models/{model_name}/infer")
@router.post("/models/{model_name}/versions/{model_version}/infer")
async def model_infer(request: Request, principal: PrincipalDep, cache: ModelCacheDep, settings: SettingsDep,
                      model_name: str, model_version: str | None = None) -> Response:
    model_id = await _resolve(request, principal, cache, model_name, model_version)
    body = await request.body()
    answer = await run_in_threadpool(lambda: inference.infer(
        cache=cache, model_id=model_id, name=model_name, version=model_version, body=body,
        header_length=request.headers.get(inference.HEADER_LENGTH), max_records=settings.max_predict_records))
    headers = {inference.HEADER_LENGTH: str(answer.header_length)} if answer.header_length is not None else None
    return Response(answer.body, media_type=answer.media_type, headers=headers)
