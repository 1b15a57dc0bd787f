"""The OpenAPI document describes errors as they are sent: one Problem component, as application/problem+json; it
is valid OpenAPI 3.1, with operation ids and tags that generated clients name their calls by."""

import jsonschema
from fastapi.routing import APIRoute
from openapi_spec_validator import validate

from service.server.api import (
    datasets,
    events,
    jobs,
    models,
    ops,
    registry,
    scoring,
    searches,
    system,
    webhooks,
    workers,
)
from service.server.errors import PROBLEM_JSON, Problem, problem_schemas
from tests.helpers import problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def test_every_documented_error_is_a_problem(client):
    schema = client.get("/openapi.json").json()
    keyed, documented = set(), {401: set(), 429: set()}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path not in ("/healthz", "/readyz"):
                keyed.add((method, path))
            for status, response in operation["responses"].items():
                if int(status) >= 400 and status != "503":
                    assert response["content"] == {PROBLEM_JSON: {"schema": PROBLEM_REF}}, (method, path, status)
                    documented.get(int(status), set()).add((method, path))
    # every route but the health checks needs a key and counts against its rate limit, and says so
    assert documented[401] == documented[429] == keyed
    assert "HTTPValidationError" not in schema.get("components", {}).get("schemas", {})


def test_the_problem_component_is_the_model_with_its_errors_as_their_own_component(client):
    components = client.get("/openapi.json").json()["components"]["schemas"]
    assert {name: components[name] for name in ("Problem", "ProblemError")} == problem_schemas()
    assert components["Problem"]["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/ProblemError"}
    assert set(components["Problem"]["required"]) == set(Problem.model_fields)
    assert set(components["ProblemError"]["properties"]) == {"field", "column", "record", "records", "count",
                                                             "message"}
    assert components["ProblemError"]["required"] == ["message"]


def test_the_document_is_valid_openapi_3_1(client):
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.1.")
    validate(schema)  # raises, naming the path of the first invalid part


def test_operation_ids_are_the_route_functions_and_every_operation_has_a_tag(client):
    schema = client.get("/openapi.json").json()
    routes = [r for module in (datasets, events, jobs, models, ops, registry, scoring, searches, system,
                               webhooks, workers)
              for r in module.router.routes if isinstance(r, APIRoute) and r.include_in_schema]
    ids = {(method.lower(), r.path): r.endpoint.__name__ for r in routes for method in r.methods}
    documented = {(method, path): op for path, operations in schema["paths"].items()
                  for method, op in operations.items()}
    assert {key: op["operationId"] for key, op in documented.items()} == ids
    assert len(set(ids.values())) == len(ids)
    assert all(op["tags"] for op in documented.values())
    assert {op["tags"][0] for op in documented.values()} == {"datasets", "jobs", "models", "registry", "searches",
                                                             "system", "webhooks", "workers"}


def test_problem_bodies_match_the_documented_model(client):
    body = problem(client.get("/jobs/job_0000000000000000"), 404, "no job with id 'job_0000000000000000'")
    assert Problem.model_validate(body).model_dump(exclude_unset=True) == body


def test_problem_bodies_validate_against_the_document(client):
    document = client.get("/openapi.json").json()
    # an error of the framework's validation, one of the domain's naming a column, and one without errors
    bodies = [
        problem(client.post("/jobs", json={"dataset_id": "ds_x", "trainig": {}}), 422, "unknown field"),
        problem(client.post("/datasets", files={"file": ("a.csv", b"a,a\n1,2\n", "text/csv")}), 422),
        problem(client.get("/models/mdl_0000000000000000"), 404),
    ]
    assert any(e.get("column") for e in bodies[1]["errors"]), bodies[1]
    for body in bodies:
        jsonschema.validate(body, {**PROBLEM_REF, "components": document["components"]})
        # each entry has the keys it was given, not nulls for the others
        assert all(value is not None for err in body["errors"] for value in err.values()), body
