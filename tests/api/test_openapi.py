"""The OpenAPI document describes errors as they are sent: one Problem shape, as application/problem+json."""

from service.server.errors import PROBLEM_JSON, Problem


def test_every_documented_error_is_a_problem(client):
    schema = client.get("/openapi.json").json()
    problem = Problem.model_json_schema()
    errors = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and status != "503":
                    assert response["content"] == {PROBLEM_JSON: {"schema": problem}}, (method, path, status)
                    errors += 1
    assert errors > 20
    assert "HTTPValidationError" not in schema.get("components", {}).get("schemas", {})


def test_problem_bodies_match_the_documented_model(client):
    resp = client.get("/jobs/job_0000000000000000")
    assert resp.status_code == 404 and resp.headers["content-type"] == PROBLEM_JSON
    assert Problem.model_validate(resp.json()).status == 404
