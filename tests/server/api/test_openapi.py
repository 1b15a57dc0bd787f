"""The OpenAPI document describes errors as they are sent: one Problem shape, as application/problem+json."""

from service.server.errors import PROBLEM_JSON, Problem
from tests.helpers import problem


def test_every_documented_error_is_a_problem(client):
    schema = client.get("/openapi.json").json()
    documented_shape = Problem.model_json_schema()
    keyed, documented = set(), {401: set(), 429: set()}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path not in ("/healthz", "/readyz"):
                keyed.add((method, path))
            for status, response in operation["responses"].items():
                if int(status) >= 400 and status != "503":
                    assert response["content"] == {PROBLEM_JSON: {"schema": documented_shape}}, (method, path, status)
                    documented.get(int(status), set()).add((method, path))
    # every route but the health checks needs a key and counts against its rate limit, and says so
    assert documented[401] == documented[429] == keyed
    assert "HTTPValidationError" not in schema.get("components", {}).get("schemas", {})


def test_problem_bodies_match_the_documented_model(client):
    body = problem(client.get("/jobs/job_0000000000000000"), 404, "no job with id 'job_0000000000000000'")
    assert Problem.model_validate(body).model_dump() == body
