"""The Python client's response types (TypedDicts in service/client/http.py) against the server's OpenAPI document,
the source of truth: for every endpoint that answers JSON, the client method's return type has the schema's keys,
the schema's required keys and the same field types, nested types included."""

import types
from typing import (
    Any,
    Literal,
    NotRequired,
    TypedDict,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

import pytest

from service.client import Client

# Every operation whose answer is a JSON document with a schema, and the client method that calls it.
OPERATIONS = {
    ("POST", "/datasets"): Client.upload_dataset,
    ("GET", "/datasets"): Client.datasets,
    ("GET", "/datasets/{dataset_id}"): Client.dataset,
    ("GET", "/datasets/{dataset_id}/preview"): Client.preview,
    ("PATCH", "/datasets/{dataset_id}"): Client.update_dataset,
    ("POST", "/jobs"): Client.submit_job,
    ("GET", "/jobs"): Client.jobs,
    ("GET", "/jobs/{job_id}"): Client.job,
    ("GET", "/jobs/{job_id}/metrics"): Client.metrics,
    ("POST", "/jobs/{job_id}/cancel"): Client.cancel,
    ("PATCH", "/jobs/{job_id}"): Client.update_job,
    ("GET", "/jobs/compare"): Client.compare,
    ("POST", "/searches"): Client.start_search,
    ("GET", "/searches"): Client.searches,
    ("GET", "/searches/{search_id}"): Client.search,
    ("PATCH", "/searches/{search_id}"): Client.update_search,
    ("GET", "/searches/{search_id}/trials"): Client.search_trials,
    ("POST", "/searches/{search_id}/cancel"): Client.cancel_search,
    ("GET", "/models"): Client.models,
    ("GET", "/models/{model_id}"): Client.model,
    ("POST", "/predict"): Client.predict,
    ("POST", "/models/{model_id}/embed"): Client.embed,
    ("GET", "/workers"): Client.workers,
    ("GET", "/registry"): Client.registered_models,
    ("POST", "/registry/{name}"): Client.register_model,
    ("GET", "/registry/{name}"): Client.registered_model,
    ("GET", "/registry/{name}/versions"): Client.model_versions,
    ("GET", "/registry/{name}/versions/{version}"): Client.model_version,
    ("PUT", "/registry/{name}/aliases/{alias}"): Client.move_alias,
    ("GET", "/registry/{name}/aliases/{alias}"): Client.alias,
    ("GET", "/registry/{name}/aliases/{alias}/history"): Client.alias_history,
    ("POST", "/webhooks"): Client.create_webhook,
    ("GET", "/webhooks"): Client.webhooks,
    ("GET", "/webhooks/{webhook_id}"): Client.webhook,
    ("PATCH", "/webhooks/{webhook_id}"): Client.update_webhook,
    ("POST", "/webhooks/{webhook_id}/test"): Client.test_webhook,
    ("GET", "/webhooks/{webhook_id}/deliveries"): Client.webhook_deliveries,
}
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory) -> dict[str, Any]:
    """The OpenAPI document the app serves at /openapi.json (building it needs no database)."""
    from service.server.api import create_app
    from service.server.config import Settings

    folder = tmp_path_factory.mktemp("openapi")
    return create_app(Settings(data_dir=folder / "var", database_url=f"sqlite:///{folder / 'mlps.db'}")).openapi()


def json_response(operation: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of an operation's success answer when it is a JSON document with a declared shape."""
    for status, response in operation["responses"].items():
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if 200 <= int(status) < 300 and schema:
            return schema
    return None


def resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.removeprefix("#/components/schemas/")] if ref else schema


def describe(schema: dict[str, Any]) -> str:
    """A schema in a few words: an object schema by its title, anything else without its documentation."""
    if "properties" in schema:
        return f"the object {schema.get('title', '')}".rstrip()
    return str({k: v for k, v in schema.items() if k not in ("title", "description", "examples")})


def fields(hint: Any) -> tuple[dict[str, Any], frozenset[str]]:
    """A TypedDict's (or a parametrised generic TypedDict's) field types and required keys."""
    origin = get_origin(hint) or hint
    hints = get_type_hints(origin)
    bound = dict(zip(getattr(origin, "__parameters__", ()), get_args(hint), strict=False))
    for key, value in hints.items():
        if isinstance(value, TypeVar):
            hints[key] = bound[value]
        elif getattr(value, "__parameters__", ()):
            hints[key] = value[tuple(bound[p] for p in value.__parameters__)]
    return hints, origin.__required_keys__


def mismatches(hint: Any, schema: dict[str, Any], spec: dict[str, Any], where: str) -> list[str]:
    """How `hint` differs from the JSON schema `schema` (empty when they agree)."""
    schema = resolve(schema, spec)
    options = [resolve(s, spec) for s in schema.get("anyOf", [schema])]
    nullable = {"type": "null"} in options
    options = [s for s in options if s != {"type": "null"}]
    given = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    alternatives = [a for a in given if a is not type(None)]
    problems = []
    if nullable != (type(None) in given):
        problems.append(f"{where}: the schema says {'null or not' if nullable else 'never null'}, the client {hint}")
    if len(alternatives) != len(options):
        return [*problems, f"{where}: {len(options)} non-null alternative(s) in the schema, the client {hint}"]
    if len(options) == 1:
        return problems + one_type(alternatives[0], options[0], spec, where)
    # Several (none in the API today): each of the schema's alternatives matches one of the client's exactly.
    left = list(alternatives)
    for option in options:
        match = next((a for a in left if not one_type(a, option, spec, where)), None)
        if match is None:
            problems.append(f"{where}: no client type for the schema's {describe(option)}")
        else:
            left.remove(match)
    return problems


def one_type(hint: Any, schema: dict[str, Any], spec: dict[str, Any], where: str) -> list[str]:
    """How one non-null client type differs from one non-null schema."""
    schema = resolve(schema, spec)
    origin = get_origin(hint)
    kind = schema.get("type")
    if hint is Any:
        return [] if not (kind or "properties" in schema or "anyOf" in schema) else \
            [f"{where}: the client says Any, the schema {describe(schema)}"]
    if is_typeddict(origin or hint):
        if "properties" not in schema:
            return [f"{where}: the client has a TypedDict, the schema {describe(schema)}"]
        hints, required = fields(hint)
        problems = []
        for what, ours, theirs in (("keys", set(hints), set(schema["properties"])),
                                   ("required keys", set(required), set(schema.get("required", [])))):
            if ours != theirs:
                problems.append(f"{where}: {what} only in the client {sorted(ours - theirs)}, "
                                f"only in the schema {sorted(theirs - ours)}")
        for key in sorted(set(hints) & set(schema["properties"])):
            problems += mismatches(hints[key], schema["properties"][key], spec, f"{where}.{key}")
        return problems
    if origin is Literal:
        values = schema.get("enum", [schema["const"]] if "const" in schema else None)
        return [] if values is not None and set(values) == set(get_args(hint)) else \
            [f"{where}: the client says {hint}, the schema {describe(schema)}"]
    if hint in JSON_TYPES:
        if kind != JSON_TYPES[hint]:
            return [f"{where}: the client says {hint.__name__}, the schema {describe(schema)}"]
        return [f"{where}: the schema lists the values {schema['enum']}: say Literal"] if "enum" in schema else []
    if origin is list:
        if kind != "array":
            return [f"{where}: the client says {hint}, the schema {describe(schema)}"]
        return mismatches(get_args(hint)[0], schema.get("items", {}), spec, f"{where}[]")
    if origin is dict:
        if kind != "object" or "properties" in schema or get_args(hint)[0] is not str:
            return [f"{where}: the client says {hint}, the schema {describe(schema)}"]
        values = schema.get("additionalProperties", True)
        return mismatches(get_args(hint)[1], {} if values is True else values, spec, f"{where}{{}}")
    return [f"{where}: the client's {hint} has no JSON schema counterpart this test knows"]


def test_every_json_answer_has_a_typed_client_method(openapi):
    answered = {(method.upper(), path) for path, operations in openapi["paths"].items()
                for method, operation in operations.items() if json_response(operation)}
    assert answered == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), list(OPERATIONS), ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_the_client_type_matches_the_servers_schema(openapi, method, path):
    returns = get_type_hints(OPERATIONS[method, path])["return"]
    schema = json_response(openapi["paths"][path][method.lower()])
    assert mismatches(returns, schema, openapi, getattr(returns, "__name__", str(returns))) == []


class _Wrong(TypedDict):
    id: int
    name: NotRequired[str]
    format: str | None
    columns: list[dict[str, Any]]
    tags: list[str]


def test_the_comparison_finds_keys_required_keys_and_types_that_differ(openapi):
    found = mismatches(_Wrong, {"$ref": "#/components/schemas/DatasetRead"}, openapi, "_Wrong")
    assert found[0] == ("_Wrong: keys only in the client ['tags'], only in the schema ['created_at', 'dialect', "
                        "'n_columns', 'n_rows', 'sha256', 'size_bytes', 'warnings']")
    assert found[1] == ("_Wrong: required keys only in the client ['tags'], only in the schema ['created_at', "
                        "'n_columns', 'n_rows', 'name', 'sha256', 'size_bytes']")
    assert [f.split(":")[0] for f in found[2:]] == ["_Wrong.columns[]", "_Wrong.format", "_Wrong.id"]
    assert "never null" in found[3] and "the client says int, the schema {'type': 'string'" in found[4]
