"""Typed domain errors and the one JSON error format (RFC 9457 problem details)."""

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.server.logs import request_id_var

log = logging.getLogger("mlps.api")

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """The body of every error response (RFC 9457 problem details, application/problem+json)."""

    type: str = Field(description="The kind of problem, e.g. /problems/not-found", examples=["/problems/invalid-input"])
    title: str = Field(description="Short summary of the kind of problem", examples=["Invalid input"])
    status: int = Field(ge=400, le=599, description="The HTTP status code", examples=[422])
    detail: str = Field(description="What went wrong in this request and what would be accepted")
    errors: list[dict[str, Any]] = Field(
        description="One entry per problem found: 'field' (and 'column' or 'record' where it applies) and 'message'",
        examples=[[{"field": "target", "column": "colour", "message": "not in the data set"}]])
    request_id: str | None = Field(description="Quote it when reporting an error; also in the x-request-id header")


PROBLEM_DESCRIPTIONS = {
    400: "The body could not be read (e.g. JSON that is not UTF-8)",
    401: "Missing or invalid API key (Authorization: Bearer KEY)",
    403: "Needs an admin key",
    404: "No such resource, or another owner's",
    409: "Conflicts with the resource's current state",
    410: "The model's files are gone from the server (removed or not restored); its record remains",
    413: "Upload larger than the limit",
    415: "Not a multipart/form-data upload",
    422: "Invalid input: parameters, body or uploaded data; names the field or column",
    429: "Too many requests with this key, or too many queued and running jobs; see Retry-After",
    503: "The database is unavailable just now (down, read-only or locked); nothing was changed; see Retry-After",
    507: "The server's storage is full; nothing was stored",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's error statuses, each a Problem as application/problem+json."""
    # Inlined rather than a model reference: FastAPI would document a model under the route's own media type.
    schema = Problem.model_json_schema()
    return {status: {"description": PROBLEM_DESCRIPTIONS[status], "content": {PROBLEM_JSON: {"schema": schema}}}
            for status in statuses}


class ServiceError(Exception):
    """Base of every error a client may see; carries its HTTP status."""

    status = 500
    slug = "internal-error"
    title = "Internal server error"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}


class NotFound(ServiceError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(ServiceError):
    status, slug, title = 409, "conflict", "Conflict"


class Gone(ServiceError):
    status, slug, title = 410, "gone", "Gone"


class InvalidInput(ServiceError):
    status, slug, title = 422, "invalid-input", "Invalid input"


class PayloadTooLarge(ServiceError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMedia(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class Unauthorized(ServiceError):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class Forbidden(ServiceError):
    status, slug, title = 403, "forbidden", "Forbidden"


class Unavailable(ServiceError):
    status, slug, title = 503, "unavailable", "Service unavailable"


class InsufficientStorage(ServiceError):
    status, slug, title = 507, "insufficient-storage", "Insufficient storage"


class TooManyRequests(ServiceError):
    status, slug, title = 429, "too-many-requests", "Too many requests"


def problem(status: int, slug: str, title: str, detail: str, request: Request,
            errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(type=f"/problems/{slug}", title=title, status=status, detail=detail, errors=errors or [],
                   request_id=getattr(request.state, "request_id", None))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    # Drop where the value came from and pydantic's tags for union members (e.g. 'list[str]', 'constrained-str').
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "str", "int", "float", "bool")
             and not (isinstance(p, str) and ("[" in p or p.startswith(("constrained-", "function-"))))]
    return ".".join(parts) or "body"


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        msg = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field; remove it (see the job spec in the README for accepted fields)"
        elif err.get("type") == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        out.append({"field": _loc_to_field(tuple(err.get("loc", ()))), "message": msg})
    return out


# A client's x-request-id is adopted only in this shape: anything else (tabs, markup, newlines that would forge
# log lines) gets a fresh id instead.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class RequestId:
    """ASGI middleware: the request's id (the client's x-request-id when it matches REQUEST_ID, else a new one) for
    logs, error bodies and the x-request-id response header. Plain ASGI: no extra task or body copy per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        rid = given.decode("ascii") if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        request_id_var.set(rid)
        raw = rid.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def install_error_handlers(app: FastAPI, classify: Callable[[BaseException], ServiceError | None] | None = None,
                           fault_types: tuple[type[Exception], ...] = ()) -> None:
    """Render every error, ours or the framework's, in the same problem shape. `classify` turns a server-side
    fault (a full disk, an unavailable database: exceptions of `fault_types`) into the ServiceError a client should
    see instead of a 500."""
    app.add_middleware(RequestId)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return problem(exc.status, exc.slug, exc.title, exc.detail, request, exc.errors, exc.headers)

    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        # Registered per exception type (not for Exception), so that it runs inside the middleware and the answer
        # keeps its x-request-id.
        fault = classify(exc) if classify is not None else None
        rid = getattr(request.state, "request_id", None)
        if fault is None:
            log.exception("unhandled error (request_id=%s)", rid)
            return problem(500, "internal-error", "Internal server error",
                           f"an unexpected error occurred; quote request id {rid} when reporting it", request)
        log.warning("%s (request_id=%s): %s", fault.title, rid, exc)
        return problem(fault.status, fault.slug, fault.title, fault.detail, request, fault.errors, fault.headers)

    for fault_type in fault_types:
        app.add_exception_handler(fault_type, _fault)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem(422, "invalid-input", "Invalid input", detail, request, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {400: "bad-request", 404: "not-found", 405: "method-not-allowed",
                413: "payload-too-large"}.get(exc.status_code, "http-error")
        title = {400: "Bad request", 404: "Not found", 405: "Method not allowed",
                 413: "Payload too large"}.get(exc.status_code, "HTTP error")
        errors = [{"field": "body", "message": str(exc.detail)}] if exc.status_code in (400, 413) else []
        return problem(exc.status_code, slug, title, str(exc.detail), request, errors,
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", None)
        log.exception("unhandled error (request_id=%s)", rid)
        return problem(500, "internal-error", "Internal server error",
                       f"an unexpected error occurred; quote request id {rid} when reporting it", request)
