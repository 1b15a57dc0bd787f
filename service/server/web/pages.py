"""Routes of the web page: the app's HTML shell at / and /ui/..., the sign-in session (a cookie that holds the key),
the numeric columns' histograms the data set page draws, and /docs (Swagger UI from local assets).

None of these routes is part of the OpenAPI contract. The shell is static HTML: every figure the page shows comes
from the JSON API, fetched by static/app.js, which builds the page with DOM text nodes (never HTML from data); the
Content-Security-Policy allows scripts and styles from this origin only.
"""

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from service.server import auth, datasets, jobs, predict
from service.server.api.deps import DatasetDep, PrincipalDep, StorageDep
from service.server.auth import Principal
from service.server.errors import NotFound, ServiceError, Unauthorized
from service.server.web import profile

router = APIRouter(include_in_schema=False)

STATIC_PREFIX = "/ui/static"
HERE = Path(__file__).parent
# Scripts, styles, images and connections from this origin only: no inline script, no style attribute, no eval.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# Swagger UI sets style attributes on its own elements (no script from data either way).
DOCS_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
SIGN_IN_MESSAGE = ("that is not a valid API key: paste a whole key as `mlps keys create` printed it (after `make "
                   "serve`, the admin key is in ./var/admin.key)")


@cache
def _html(name: str) -> str:
    return (HERE / name).read_text()


def _page(name: str, *, status_code: int = 200, csp: str = PAGE_CSP) -> HTMLResponse:
    return HTMLResponse(_html(name), status_code=status_code, headers={
        "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY", "Cache-Control": "no-store"})


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200, description="An API key, as `mlps keys create` printed it")


class SessionRead(BaseModel):
    owner: str
    admin: bool


def _set_session_cookie(request: Request, response: Response, key: str) -> None:
    # No Max-Age: the browser forgets the key when it closes. HttpOnly: the page's scripts cannot read it.
    # SameSite=Strict: no other site's page can make the browser send it (no cross-site request forgery).
    response.set_cookie(auth.SESSION_COOKIE, key, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


@router.post("/ui/session", response_model=SessionRead)
async def sign_in(body: SignIn, request: Request, response: Response) -> SessionRead:
    """Check the key and keep it in the session cookie."""
    key = body.key.strip()
    try:
        principal = await _load_principal(request, auth.bearer_digest(f"Bearer {key}"))
    except Unauthorized:
        raise Unauthorized(SIGN_IN_MESSAGE, errors=[{"field": "key", "message": SIGN_IN_MESSAGE}]) from None
    request.app.state.rate_limiter.check(principal.key_id)
    _set_session_cookie(request, response, key)
    return SessionRead(owner=principal.owner, admin=principal.admin)


@router.get("/ui/session", response_model=SessionRead)
def who_am_i(principal: PrincipalDep) -> SessionRead:
    """The signed-in owner (401 when the cookie holds no valid key)."""
    return SessionRead(owner=principal.owner, admin=principal.admin)


@router.delete("/ui/session", status_code=204)
def sign_out(request: Request) -> Response:
    """Forget the key: the cookie is cleared."""
    response = Response(status_code=204)
    response.delete_cookie(auth.SESSION_COOKIE, httponly=True, samesite="strict", path="/",
                           secure=request.url.scheme == "https")
    return response


@router.get("/ui/datasets/{dataset_id}/histograms", response_model=profile.Histograms)
async def dataset_histograms(dataset: DatasetDep, storage: StorageDep) -> profile.Histograms:
    """Bin counts of the data set's numeric columns, for the small histograms of its column profile."""
    return await run_in_threadpool(profile.histograms, storage.dataset_file(dataset.id, dataset.format),
                                   dataset.columns)


async def _load_principal(request: Request, digest: str) -> Principal:
    principals: auth.PrincipalCache = request.app.state.principals
    cached = principals.cached(digest)
    return cached if cached is not None else await run_in_threadpool(principals.load, digest)


async def _status_for(request: Request, lookup: Callable[..., Any], **ids: str) -> int:
    """404 when the signed-in caller may not see the row (another owner's, or none), else 200. Without a session the
    page itself asks to sign in."""
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if not cookie:
        return 200
    try:
        principal = await _load_principal(request, auth.request_digest(None, cookie))
    except ServiceError:
        return 200

    def visible() -> bool:
        session: Session
        with request.app.state.sessions() as session:
            try:
                lookup(session=session, principal=principal, **ids)
            except NotFound:
                return False
        return True

    return 200 if await run_in_threadpool(visible) else 404


@router.get("/docs")
def api_docs() -> HTMLResponse:
    """Swagger UI over /openapi.json, from the vendored assets."""
    return _page("docs.html", csp=DOCS_CSP)


@router.get("/")
@router.get("/ui")
def home() -> HTMLResponse:
    return _page("shell.html")


@router.get("/ui/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _page("shell.html", status_code=await _status_for(request, jobs.get, job_id=job_id))


@router.get("/ui/datasets/{dataset_id}")
async def dataset_page(request: Request, dataset_id: str) -> HTMLResponse:
    return _page("shell.html", status_code=await _status_for(request, datasets.get, dataset_id=dataset_id))


@router.get("/ui/models/{model_id}")
async def model_page(request: Request, model_id: str) -> HTMLResponse:
    return _page("shell.html", status_code=await _status_for(request, predict.get, model_id=model_id))


KNOWN_PAGES = {"sign-in", "jobs", "compare", "datasets", "train", "models", "workers"}


@router.get("/ui/{page}")
def app_page(page: str) -> HTMLResponse:
    """The other pages; an unknown one is the shell with status 404 (the page says so)."""
    return _page("shell.html", status_code=200 if page in KNOWN_PAGES else 404)
