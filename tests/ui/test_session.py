"""The web page's server side, in-process over a real migrated database: the sign-in cookie as an alternative to the
bearer key (owners applied as for keys), the page responses' headers and statuses, /docs from local assets, and the
histograms of the column profile."""

import re

import pytest
from fastapi.testclient import TestClient

from service.server.api import create_app
from service.server.auth import SESSION_COOKIE
from service.server.web import STATIC
from tests.helpers import bearer, make_key, problem, upload


@pytest.fixture
def app(migrated):
    # as a browser sends it with every request the page makes (a cookie-authenticated change needs it)
    with TestClient(create_app(migrated), headers={"sec-fetch-site": "same-origin"}) as c:
        yield c


@pytest.fixture
def keys(migrated) -> dict[str, str]:
    return {"admin": make_key(migrated, "admin", admin=True), "alice": make_key(migrated, "alice"),
            "bob": make_key(migrated, "bob")}


def sign_in(app: TestClient, key: str) -> None:
    resp = app.post("/ui/session", json={"key": key})
    assert resp.status_code == 200, resp.text


def test_sign_in_sets_an_http_only_strict_session_cookie(app, keys):
    resp = app.post("/ui/session", json={"key": keys["alice"]})
    assert resp.status_code == 200 and resp.json() == {"owner": "alice", "admin": False}
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    # kept for the browser session only: no expiry
    assert not any(a.startswith(("max-age", "expires")) for a in attributes)
    assert app.get("/ui/session").json() == {"owner": "alice", "admin": False}


@pytest.mark.parametrize("key", ["mlps_" + "x" * 43, "not-a-key", " "])
def test_sign_in_with_a_bad_key_is_401_naming_the_key(app, key):
    resp = app.post("/ui/session", json={"key": key})
    problem(resp, 401, "./var/admin.key", field="key")
    assert "set-cookie" not in resp.headers


def test_sign_in_without_a_key_is_422(app):
    problem(app.post("/ui/session", json={}), 422, field="key")
    problem(app.post("/ui/session", json={"key": "k", "owner": "x"}), 422, field="owner")


def test_without_a_cookie_or_key_the_api_still_answers_401(app):
    problem(app.get("/ui/session"), 401, "Authorization: Bearer")
    problem(app.get("/jobs"), 401, "Authorization: Bearer")


def test_the_cookie_stands_for_its_key_and_owners_apply(app, keys):
    sign_in(app, keys["alice"])
    alice_set = upload(app, "iris.csv").json()
    assert alice_set["id"] in [d["id"] for d in app.get("/datasets").json()["items"]]
    sign_in(app, keys["bob"])
    assert app.get("/datasets").json()["items"] == []
    problem(app.get(f"/datasets/{alice_set['id']}"), 404, field="dataset_id")
    problem(app.get(f"/ui/datasets/{alice_set['id']}/histograms"), 404, field="dataset_id")
    # a bearer key sent beside the cookie is the one that counts
    resp = app.get(f"/datasets/{alice_set['id']}", headers=bearer(keys["alice"]))
    assert resp.status_code == 200


def test_changes_with_the_cookie_from_another_origin_are_refused(app, keys):
    sign_in(app, keys["alice"])
    job_less = {"file": ("x.csv", b"a,b\n1,2\n3,4\n", "text/csv")}
    for site in ("same-site", "cross-site", "none"):  # another port of this host is same-site, not same-origin
        problem(app.post("/datasets", files=job_less, headers={"sec-fetch-site": site}), 403,
                "must come from the page itself", field="cookie")
    del app.headers["sec-fetch-site"]
    problem(app.post("/datasets", files=job_less, headers={"origin": "http://127.0.0.1:9999"}), 403, field="cookie")
    problem(app.post("/datasets", files=job_less), 403, field="cookie")  # no header says where it came from
    assert app.post("/datasets", files=job_less, headers={"origin": "http://testserver"}).status_code == 201
    assert app.get("/datasets").status_code == 200  # reading needs no such header
    assert app.post("/datasets", files=job_less, headers=bearer(keys["alice"])).status_code == 201  # a script's key


def test_a_revoked_key_in_the_cookie_is_refused(app, keys, migrated):
    from service.server.auth import revoke_key
    from service.server.db import make_engine, make_sessionmaker, session_scope

    sign_in(app, keys["bob"])
    engine = make_engine(migrated.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        revoke_key(session, keys["bob"][:12])
    engine.dispose()
    app.app.state.principals.ttl_s = 0.0
    app.app.state.principals._items.clear()
    problem(app.get("/ui/session"), 401)


def test_sign_out_clears_the_cookie(app, keys):
    sign_in(app, keys["alice"])
    resp = app.delete("/ui/session")
    assert resp.status_code == 204
    assert f'{SESSION_COOKIE}=""' in resp.headers["set-cookie"] and "max-age=0" in resp.headers["set-cookie"].lower()
    problem(app.get("/ui/session"), 401)


PAGES = ["/", "/ui", "/ui/jobs", "/ui/compare", "/ui/datasets", "/ui/train", "/ui/models", "/ui/workers",
         "/ui/sign-in"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_allow_no_inline_script(app, path):
    resp = app.get(path)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    csp = dict(part.strip().split(" ", 1) for part in resp.headers["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["default-src"] == "'none'" and csp["style-src"] == "'self'"
    assert csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert resp.headers["x-content-type-options"] == "nosniff"
    # the shell carries no script of its own and no data: everything comes from /ui/static and the API
    assert "<script>" not in resp.text and "onload" not in resp.text
    assert re.findall(r'<script src="([^"]+)"', resp.text) == ["/ui/static/vendor/uplot/uPlot.iife.min.js",
                                                              "/ui/static/app.js"]


def test_an_unknown_page_is_404(app):
    assert app.get("/ui/nothing-here").status_code == 404


def test_another_owners_job_page_is_404(app, keys):
    sign_in(app, keys["alice"])
    dataset = upload(app, "iris.csv").json()
    job = app.post("/jobs", json={"dataset_id": dataset["id"], "target": "species"}).json()
    for path in (f"/ui/jobs/{job['id']}", f"/ui/datasets/{dataset['id']}"):
        assert app.get(path).status_code == 200
    sign_in(app, keys["bob"])
    for path in (f"/ui/jobs/{job['id']}", f"/ui/datasets/{dataset['id']}", "/ui/models/mdl_0123456789abcdef",
                 "/ui/jobs/job_unknown"):
        resp = app.get(path)
        assert resp.status_code == 404 and resp.headers["content-type"].startswith("text/html"), path
    # an admin sees everything, as with its key
    sign_in(app, keys["admin"])
    assert app.get(f"/ui/jobs/{job['id']}").status_code == 200


def test_docs_come_from_local_assets(app):
    resp = app.get("/docs")
    assert resp.status_code == 200
    assert "script-src 'self';" in resp.headers["content-security-policy"]
    assert "http://" not in resp.text and "https://" not in resp.text and "<script>" not in resp.text
    for asset in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', resp.text):
        assert app.get(asset).status_code == 200, asset
    assert app.get("/redoc").status_code == 404


def test_static_assets_have_no_outside_references():
    for path in STATIC.rglob("*"):
        if path.suffix in (".js", ".css", ".html") and "vendor" not in path.parts:
            text = path.read_text()
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path


def test_histograms_count_every_row_of_a_numeric_column(app, keys):
    sign_in(app, keys["alice"])
    dataset = upload(app, "iris.csv").json()
    body = app.get(f"/ui/datasets/{dataset['id']}/histograms").json()
    assert body["rows_read"] == 150
    by_column = {h["column"]: h for h in body["items"]}
    assert set(by_column) == {"sepal_length", "sepal_width", "petal_length", "petal_width"}
    petal = by_column["petal_length"]
    assert sum(petal["counts"]) == 150 and len(petal["edges"]) == len(petal["counts"]) + 1
    assert petal["edges"][0] == 1.0 and petal["edges"][-1] == 6.9
    # iris's petal lengths have a gap between the setosas (< 2) and the rest (> 3)
    assert petal["counts"][0] > 0 and 0 in petal["counts"][4:6]
