"""Typed domain errors and the one JSON error format (RFC 9457 problem details)."""

import difflib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Annotated, Any, Literal, get_args, get_origin

from fastapi import FastAPI, Request
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.server.logs import request_id_var

log = logging.getLogger("mlps.api")

PROBLEM_JSON = "application/problem+json"
COMPONENTS = "#/components/schemas/"


def _absent_not_null(schema: dict[str, Any]) -> None:
    # An entry carries only the keys it was given; a documented default would have generators type the others as
    # always there (openapi-typescript makes a key with a default required).
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class ProblemError(BaseModel):
    """One entry of a problem's `errors`: where the problem is (a field, a column, a record) and what to change."""

    # Keys beyond these reach clients rather than being dropped here; the documented ones are typed.
    model_config = ConfigDict(extra="allow", json_schema_extra=_absent_not_null)

    field: str | None = Field(default=None, description="The request's field at fault, dotted (model.hidden_layers, "
                                                        "features.0); 'file' for an upload, 'body' for the whole body",
                              examples=["target"])
    column: str | None = Field(default=None, description="The data set's or the uploaded file's column at fault",
                               examples=["colour"])
    record: int | None = Field(default=None, ge=0, description="Index (from 0) of the request's record at fault, "
                                                                "when it is the only one")
    records: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, description="Indexes (from 0) of the first records with this fault", examples=[[0, 3, 7]])
    count: int | None = Field(default=None, ge=1, description="How many records have this fault, all told")
    message: str = Field(description="What is wrong there and what would be accepted",
                         examples=["not in the data set"])


class Problem(BaseModel):
    """The body of every error response (RFC 9457 problem details, application/problem+json)."""

    type: str = Field(description="The kind of problem, e.g. /problems/not-found", examples=["/problems/invalid-input"])
    title: str = Field(description="Short summary of the kind of problem", examples=["Invalid input"])
    status: int = Field(ge=400, le=599, description="The HTTP status code", examples=[422])
    detail: str = Field(description="What went wrong in this request and what would be accepted")
    errors: list[ProblemError] = Field(
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
    # A reference written out rather than `model=Problem`: FastAPI would document a model under the route's own
    # media type. install_error_handlers puts the component it points at into the document.
    ref = {"$ref": f"{COMPONENTS}Problem"}
    return {status: {"description": PROBLEM_DESCRIPTIONS[status], "content": {PROBLEM_JSON: {"schema": ref}}}
            for status in statuses}


def problem_schemas() -> dict[str, Any]:
    """Problem and the ProblemError of its `errors`, as the OpenAPI components problem_responses refers to."""
    _, document = models_json_schema([(Problem, "serialization")], ref_template=COMPONENTS + "{model}")
    schemas: dict[str, Any] = document["$defs"]
    return schemas


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
    # exclude_unset: an entry of `errors` carries the keys it was given, no nulls for the others
    return JSONResponse(body.model_dump(mode="json", exclude_unset=True), status_code=status,
                        media_type=PROBLEM_JSON, headers=headers)


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    # Drop where the value came from and pydantic's tags for union members (e.g. 'list[str]', 'constrained-str').
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "str", "int", "float", "bool")
             and not (isinstance(p, str) and ("[" in p or p.startswith(("constrained-", "function-"))))]
    return ".".join(parts) or "body"


# ---------------------------------------------------------------- validation messages
# Pydantic says what is wrong ("Input should be a valid list"); these finish the sentence with what to send
# instead, read from the request's models at the error's location.

# pydantic's error type -> the kind of JSON value the location accepts
_EXPECTED = {"list_type": "list", "tuple_type": "list", "set_type": "list", "int_type": "int", "int_parsing": "int",
             "int_from_float": "int", "float_type": "float", "float_parsing": "float", "bool_type": "bool",
             "bool_parsing": "bool", "string_type": "str", "dict_type": "object", "model_type": "object",
             "model_attributes_type": "object"}
_FORMS = {"list": "a JSON list", "int": "a whole number", "float": "a number", "bool": "true or false",
          "str": "a JSON string", "object": "a JSON object"}
_PLURALS = {"list": "lists", "int": "whole numbers", "float": "numbers", "bool": "true or false values",
            "str": "strings", "object": "objects"}
_SEQUENCES = (list, tuple, set, frozenset)


@dataclass
class _Location:
    """What the request's models say about one location of the body or of a parameter."""

    models: list[type[BaseModel]] = dc_field(default_factory=list)  # the models whose fields are accepted there
    field: FieldInfo | None = None  # the last field on the way there (the location itself, or what holds it)
    name: str = ""
    owners: list[type[BaseModel]] = dc_field(default_factory=list)  # the models that declare that field


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold, through Optional, Annotated, unions, lists and dicts."""
    if _is_model(annotation):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _is_model(annotation: Any) -> bool:
    return get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _tagged(model: type[BaseModel], tag: str) -> bool:
    # A union's member appears in a location as its discriminator's value (or its class name).
    return tag == model.__name__ or any(
        get_origin(f.annotation) is Literal and tag in get_args(f.annotation) for f in model.model_fields.values())


def _locate(route: APIRoute | None, loc: tuple[Any, ...]) -> _Location:
    """Follow an error's location through the request's models."""
    at = _Location()
    if route is None or not loc:
        return at
    source, path = loc[0], list(loc[1:])
    if source == "body" and route.body_field is not None:
        at.models = _models_in(route.body_field.field_info.annotation)
    elif source in ("query", "path", "header") and path:
        params = {p.alias: p.field_info for p in get_flat_params(route.dependant)}
        if path[0] not in params:
            return at
        at.field, at.name, path = params[path[0]], str(path[0]), path[1:]
        at.models = _models_in(at.field.annotation)
    for part in path:
        owners = [m for m in at.models if isinstance(part, str) and part in m.model_fields]
        if owners:
            at.field, at.name, at.owners = owners[0].model_fields[part], part, owners
            at.models = [m for o in owners for m in _models_in(o.model_fields[part].annotation)]
        elif isinstance(part, str) and any(_tagged(m, part) for m in at.models):
            at.models = [m for m in at.models if _tagged(m, part)]
        # else a list index or a dict key: the same models hold the items
    return at


def _unknown_field(route: APIRoute | None, loc: tuple[Any, ...]) -> str:
    """"unknown field; " and the closest name accepted at that location, or the names accepted there."""
    models = _locate(route, loc[:-1]).models
    given = str(loc[-1])
    accepted = list(dict.fromkeys(name for m in models for name in m.model_fields))
    if not accepted:
        return "unknown field; remove it"
    close = difflib.get_close_matches(given, accepted, n=1)
    if not close:
        # A field sent a level too high, e.g. "epochs" beside "training" rather than inside it
        below: dict[str, str] = {}
        for m in models:
            for name, f in m.model_fields.items():
                for child in _models_in(f.annotation):
                    for child_name in child.model_fields:
                        below.setdefault(child_name, f"{name}.{child_name}")
        close = [below[name] for name in difflib.get_close_matches(given, list(below), n=1)]
    if close:
        return f"unknown field; did you mean '{close[0]}'?"
    return "unknown field; accepted here: " + ", ".join(accepted)


def _types(annotation: Any, constraints: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """The types an annotation admits, outermost first (a list before its items), each with the constraints
    (Ge, Le, ...) that apply to it."""
    queue = [(annotation, constraints)]
    while queue:
        node, found = queue.pop(0)
        origin, args = get_origin(node), [a for a in get_args(node) if a is not type(None)]
        if hasattr(node, "__metadata__"):  # Annotated[T, Field(ge=1), ...]
            found += tuple(m for item in node.__metadata__
                           for m in (item.metadata if isinstance(item, FieldInfo) else [item]))
            queue.append((args[0], found))
        elif origin is not None and origin not in (*_SEQUENCES, dict, Literal):
            # a union (Optional included): the field's constraints hold for each member
            queue.extend((a, found) for a in args)
        else:
            yield node, found
            if origin in _SEQUENCES or origin is dict:
                queue.append((args[-1], ()))


def _kind(annotation: Any) -> str | None:
    origin = get_origin(annotation) or annotation
    if origin in _SEQUENCES:
        return "list"
    if origin is dict or _is_model(origin):
        return "object"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(origin)


def _fits(kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return kind == "bool"
    if kind == "float":
        return isinstance(value, int | float)
    return isinstance(value, {"list": list, "object": dict, "str": str, "int": int, "bool": bool}[kind])


def _model_example(model: type[BaseModel]) -> dict[str, Any]:
    extra = model.model_config.get("json_schema_extra")
    examples = extra.get("examples") if isinstance(extra, dict) else None
    return dict(examples[0]) if isinstance(examples, list) and examples and isinstance(examples[0], dict) else {}


def _documented(field: FieldInfo, name: str, owners: list[type[BaseModel]]) -> list[Any]:
    """The values the models show for a field: its examples, the examples of the models declaring it, its
    default."""
    values = [*(field.examples or []), *(_model_example(o).get(name) for o in owners)]
    if not field.is_required() and field.default_factory is None:
        values.append(field.default)
    return [v for v in values if v is not None]


def _number(kind: str, constraints: tuple[Any, ...]) -> float:
    """A round number inside the constraints: 64 for a whole number, 0.1 for any number."""
    value, step = (64, 1) if kind == "int" else (0.1, 0.1)
    for c in constraints:
        if getattr(c, "ge", None) is not None:
            value = max(value, c.ge)
        if getattr(c, "gt", None) is not None and value <= c.gt:
            value = c.gt + step
        if getattr(c, "le", None) is not None:
            value = min(value, c.le)
        if getattr(c, "lt", None) is not None and value >= c.lt:
            value = c.lt - step
    return value


def _example(kind: str, annotation: Any, constraints: tuple[Any, ...], shown: list[Any]) -> Any:
    """A value of this kind for the annotation: a value the models show if one fits (or the first item of one),
    else one made from the type and its bounds; None when there is nothing to go on (a free string)."""
    for value in [*shown, *(v[0] for v in shown if isinstance(v, list) and v)]:
        if _fits(kind, value):
            return value
    if kind in ("int", "float"):
        return _number(kind, constraints)
    if kind == "list" and get_args(annotation):
        item = next(((t, c) for t, c in _types(get_args(annotation)[0]) if _kind(t)), None)
        if item is None:
            return None
        item_kind = str(_kind(item[0]))
        value = _example(item_kind, *item, shown)
        return None if value is None else [value, value] if item_kind in ("int", "float") else [value]
    if kind == "object" and _is_model(annotation):
        if example := _model_example(annotation):
            return example
        for name, f in annotation.model_fields.items():
            if documented := _documented(f, name, [annotation]):
                return {name: documented[0]}
            for t, c in _types(f.annotation, tuple(f.metadata)):
                if (sub_kind := _kind(t)) and (value := _example(sub_kind, t, c, [])) is not None:
                    return {name: value}
    return None


def _accepted_form(route: APIRoute | None, loc: tuple[Any, ...], kind: str) -> str:
    """"send " and the kind of value accepted at that location, with an example where the models give one."""
    if kind == "bool":
        return f"send {_FORMS[kind]}"
    at = _locate(route, loc)
    if at.field is not None:
        types = list(_types(at.field.annotation, tuple(at.field.metadata)))
        shown = _documented(at.field, at.name, at.owners)
    else:  # the whole body
        types, shown = [(m, ()) for m in at.models], []
    annotation, constraints = next(((t, c) for t, c in types if _kind(t) == kind), (None, ()))
    if annotation is None:
        return f"send {_FORMS[kind]}"
    example = _example(kind, annotation, constraints, shown)
    if example is not None:
        return f"send {_FORMS[kind]} such as {json.dumps(example)}"
    items = [_kind(t) for t, _ in _types(get_args(annotation)[0])] if kind == "list" and get_args(annotation) else []
    item_kind = next((k for k in items if k), None)
    return f"send {_FORMS[kind]}" + (f" of {_PLURALS[item_kind]}" if item_kind else "")


def _validation_errors(exc: RequestValidationError, route: APIRoute | None = None) -> list[dict[str, Any]]:
    """One entry per error pydantic found, each message saying what the location accepts (`route`: the request's
    route, whose models tell the accepted fields and forms)."""
    out = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        kind = _EXPECTED.get(err.get("type", ""))
        if err.get("type") == "extra_forbidden":
            msg = _unknown_field(route, loc)
        elif err.get("type") == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}"
        elif kind is not None:
            msg = f"{msg}; {_accepted_form(route, loc, kind)}"
        out.append({"field": _loc_to_field(loc), "message": msg})
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
                           fault_types: tuple[type[Exception], ...] = (), request_ids: bool = True) -> None:
    """Render every error, ours or the framework's, in the same problem shape. `classify` turns a server-side
    fault (a full disk, an unavailable database: exceptions of `fault_types`) into the ServiceError a client should
    see instead of a 500. The OpenAPI document gets the Problem components that problem_responses refers to.
    `request_ids`: add the RequestId middleware (an app whose own middleware sets the request id leaves it out)."""
    if request_ids:
        app.add_middleware(RequestId)
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = build_openapi()  # also cached as app.openapi_schema, which this completes in place
        document.setdefault("components", {}).setdefault("schemas", {}).update(problem_schemas())
        return document

    app.openapi = openapi  # type: ignore[method-assign]

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
        route = request.scope.get("route")
        errors = _validation_errors(exc, route if isinstance(route, APIRoute) else None)
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
