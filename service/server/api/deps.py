"""Dependencies, declared once as Annotated aliases."""

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.server import auth, datasets, jobs, predict
from service.server.auth import Principal
from service.server.config import Settings
from service.server.errors import Forbidden
from service.server.predict import ModelCache
from service.server.storage import Storage
from service.server.tables import Dataset, Job, Model

log = logging.getLogger("mlps.api")


# Dependencies that only read app.state are async: a sync one would cost a thread-pool round trip per request.
# app.state holds untyped attributes: each is named with its type once, here.
def settings_of(app: FastAPI) -> Settings:
    settings: Settings = app.state.settings
    return settings


def model_cache_of(app: FastAPI) -> ModelCache:
    cache: ModelCache = app.state.model_cache
    return cache


async def get_settings(request: Request) -> Settings:
    return settings_of(request.app)


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def get_model_cache(request: Request) -> ModelCache:
    return model_cache_of(request.app)


def get_session(request: Request) -> Iterator[Session]:
    """The request's transaction: commit when the handler returns, roll back when it raises.

    Domain code may queue file operations in session.info["on_commit"] / ["on_rollback"], so that files
    and rows change together.
    """
    session: Session = request.app.state.sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        _run_each(session.info.pop("on_rollback", []), "after a rollback")
        raise
    else:
        # The rows are changed for good: a file that cannot be removed now (the bucket is away) is only logged,
        # and the API's sweep removes it later (cleanup.sweep_orphans).
        _run_each(session.info.pop("on_commit", []), "after a commit")
    finally:
        session.close()


def _run_each(actions: list[Callable[[], None]], when: str) -> None:
    """Run every action, each on its own: one that fails is logged and does not stop the others."""
    for action in actions:
        try:
            action()
        except Exception:
            log.exception("file operation %s failed; the periodic sweep removes what it left", when)


SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
# scope="function": commit before the response is sent, so a client that got 201/202 reads what it wrote.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
# Documents the scheme in OpenAPI; the check itself is ours, so that every failure is the same 401.
_bearer = HTTPBearer(auto_error=False, description="An API key: `mlps keys create --name NAME` prints one")


async def get_principal(request: Request,
                        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    """The caller's key (401 without a valid one), rate-limited per key (429 with Retry-After). The key comes from
    the Authorization header or, for the web page, from its session cookie."""
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if request.headers.get("authorization") is None and cookie and request.method not in ("GET", "HEAD", "OPTIONS"):
        _same_origin_only(request)
    digest = auth.request_digest(request.headers.get("authorization"), cookie)
    principals: auth.PrincipalCache = request.app.state.principals
    principal = principals.cached(digest)
    if principal is None:
        principal = await run_in_threadpool(principals.load, digest)
    elif principals.due(digest):
        # A key in use is checked again off this request's path (the answer in hand is younger than the cache's
        # time limit); refresh() handles its own errors.
        asyncio.get_running_loop().run_in_executor(None, principals.refresh, digest)
    request.app.state.rate_limiter.check(principal.key_id)
    return principal


def _same_origin_only(request: Request) -> None:
    """A change made with the web page's cookie must come from the page itself: SameSite=Strict still sends the
    cookie from another port of the same host, so a browser's Sec-Fetch-Site (or Origin) must say same-origin."""
    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if site == "same-origin" or (site is None and origin == own):
        return
    raise Forbidden("a request that changes something with the web page's session cookie must come from the page "
                    "itself; scripts send the key in an Authorization: Bearer header",
                    errors=[{"field": "cookie", "message": "cross-origin request refused"}])


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.admin:
        raise Forbidden("this needs an admin key")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
LimitDep = Annotated[int, Query(ge=1, le=500, description="Page size")]
OffsetDep = Annotated[int, Query(ge=0, le=10**9, description="Items to skip")]


def dataset_or_404(dataset_id: str, session: SessionDep, principal: PrincipalDep) -> Dataset:
    return datasets.get(session=session, dataset_id=dataset_id, principal=principal)


def job_or_404(job_id: str, session: SessionDep, principal: PrincipalDep) -> Job:
    return jobs.get(session=session, job_id=job_id, principal=principal)


def model_row_or_404(model_id: str, session: SessionDep, principal: PrincipalDep) -> Model:
    return predict.get(session=session, model_id=model_id, principal=principal)


def model_or_404(model: Annotated[Model, Depends(model_row_or_404)], storage: StorageDep) -> Model:
    """The model, whose files must be present (410 otherwise)."""
    return predict.files_present(storage, model)


DatasetDep = Annotated[Dataset, Depends(dataset_or_404)]
JobDep = Annotated[Job, Depends(job_or_404)]
ModelDep = Annotated[Model, Depends(model_or_404)]
ModelRowDep = Annotated[Model, Depends(model_row_or_404)]  # also a model whose files are gone (to delete it)
