"""A 422 for a field finishes the sentence: an unknown field names the closest accepted one (or lists those accepted
there), and a value of the wrong type says what to send, with an example the server would accept."""

import json
import re

import pytest

from service.schemas import JobCreate
from tests.helpers import problem

SPEC = {"dataset_id": "ds_0123456789abcdef", "target": "species"}


def errors_at(body: dict, field: str) -> list[str]:
    return [e["message"] for e in body["errors"] if e["field"] == field]


@pytest.mark.parametrize(("path", "patch", "field", "suggestion"), [
    pytest.param("/jobs", {"training": {"optimiser": "adam"}}, "training.optimiser", "optimizer", id="spelling"),
    pytest.param("/jobs", {"model": {"hidden_layer": [8]}}, "model.hidden_layer", "hidden_layers", id="plural"),
    pytest.param("/jobs", {"training": {"lr_schedule": {"type": "plateau", "patients": 3}}},
                 "training.lr_schedule.plateau.patients", "patience", id="in-the-chosen-schedule"),
    pytest.param("/jobs", {"targets": "species"}, "targets", "target", id="top-level"),
    pytest.param("/jobs", {"epochs": 5}, "epochs", "training.epochs", id="a-level-too-high"),
    pytest.param("/jobs", {"optimiser": "sgd"}, "optimiser", "training.optimizer", id="misspelt-a-level-too-high"),
    pytest.param("/predict", {"model_id": "mdl_0123456789abcdef", "records": [{}], "uncertanty": True},
                 "uncertanty", "uncertainty", id="predict"),
])
def test_an_unknown_field_names_the_closest_accepted_one(client, path, patch, field, suggestion):
    body = {**SPEC, **patch} if path == "/jobs" else patch
    answer = problem(client.post(path, json=body), 422, field=field)
    message = f"unknown field; did you mean '{suggestion}'?"
    assert errors_at(answer, field) == [message]
    assert f"{field}: {message}" in answer["detail"]


def test_an_unknown_field_like_none_accepted_lists_those_accepted_there(client):
    answer = problem(client.post("/jobs", json={**SPEC, "colour": "red"}), 422, field="colour")
    assert errors_at(answer, "colour") == ["unknown field; accepted here: " + ", ".join(JobCreate.model_fields)]
    answer = problem(client.post("/jobs", json={**SPEC, "training": {"lr_schedule": {"type": "step", "every": 3}}}),
                     422)
    assert errors_at(answer, "training.lr_schedule.step.every") == [
        "unknown field; accepted here: type, step_size, gamma"]


def test_a_list_sent_as_text_is_told_to_send_a_json_list(client):
    # what `mlps jobs submit --set model.hidden_layers=64,64` sends: the value is not JSON, so it goes as text
    answer = problem(client.post("/jobs", json={**SPEC, "model": {"hidden_layers": "64,64"}}), 422,
                     field="model.hidden_layers")
    assert errors_at(answer, "model.hidden_layers") == [
        "Input should be a valid list; send a JSON list such as [64, 64]"]


# A wrong value at each location; what the message offers instead must be accepted there.
WRONG_TYPES = [
    pytest.param({"model": {"hidden_layers": "64,64"}}, "model.hidden_layers", "a JSON list", id="list"),
    pytest.param({"model": {"hidden_layers": ["wide"]}}, "model.hidden_layers.0", "a whole number", id="list-item"),
    pytest.param({"model": {"folds": "four"}}, "model.folds", "a whole number", id="int-under-a-bound"),
    pytest.param({"model": {"dropout": "some"}}, "model.dropout", "a number", id="float-below-one"),
    pytest.param({"training": {"epochs": "ten"}}, "training.epochs", "a whole number", id="int"),
    pytest.param({"training": {"learning_rate_range": 0.01}}, "training.learning_rate_range", "a JSON list",
                 id="a-range"),
    pytest.param({"training": "fast"}, "training", "a JSON object", id="object"),
    pytest.param({"model": ["mlp"]}, "model", "a JSON object", id="object-with-a-default"),
    pytest.param({"dataset_id": 7}, "dataset_id", "a JSON string", id="string-from-the-models-example"),
    pytest.param({"target": 5}, "target", "a JSON string", id="string-or-list"),
]


@pytest.mark.parametrize(("patch", "field", "form"), WRONG_TYPES)
def test_a_wrong_type_says_what_to_send_with_an_example_that_is_accepted(client, patch, field, form):
    answer = problem(client.post("/jobs", json={**SPEC, **patch}), 422, field=field)
    messages = errors_at(answer, field)
    found = [m for m in messages if f"; send {form} such as " in m]
    assert found, messages
    example = json.loads(found[0].split(" such as ", 1)[1])
    fixed = json.loads(json.dumps({**SPEC, **patch}))
    *parents, last = [int(p) if p.isdigit() else p for p in field.split(".")]
    node = fixed
    for part in parents:
        node = node[part]
    node[last] = example
    JobCreate.model_validate(fixed)  # raises if the example were not accepted


@pytest.mark.parametrize(("patch", "field", "message"), [
    pytest.param({"model": {"batch_norm": "yes please"}}, "model.batch_norm",
                 "Input should be a valid boolean, unable to interpret input; send true or false", id="bool"),
    pytest.param({"features": "sepal_length"}, "features", "Input should be a valid list; send a JSON list of strings",
                 id="list-of-free-text"),
])
def test_a_wrong_type_without_an_example_still_says_the_form(client, patch, field, message):
    answer = problem(client.post("/jobs", json={**SPEC, **patch}), 422, field=field)
    assert errors_at(answer, field) == [message]


def test_a_body_of_the_wrong_type_is_shown_the_documented_example(client):
    answer = problem(client.post("/jobs", json=["dataset", "species"]), 422, field="body")
    (message,) = errors_at(answer, "body")
    assert re.fullmatch(r"Input should be a valid dictionary.*; send a JSON object such as (\{.*\})", message)
    assert json.loads(message.split(" such as ", 1)[1]) == JobCreate.model_json_schema()["examples"][0]


def test_a_query_parameter_of_the_wrong_type_gets_an_example_in_its_bounds(client):
    answer = problem(client.get("/jobs", params={"limit": "many"}), 422, field="limit")
    (message,) = errors_at(answer, "limit")
    assert message.startswith("Input should be a valid integer") and "; send a whole number such as " in message
    assert client.get("/jobs", params={"limit": message.rsplit(" ", 1)[1]}).status_code == 200
