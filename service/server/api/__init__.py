"""The HTTP API: create_app() builds it from settings."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

import service
from service.server import faults
from service.server.api import (
    datasets,
    events,
    inference,
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
from service.server.api.deps import get_principal
from service.server.auth import PrincipalCache, RateLimiter
from service.server.config import Settings, get_settings
from service.server.db import make_engine, make_sessionmaker, require_schema_at_head
from service.server.errors import install_error_handlers, problem_responses
from service.server.fleet import Reaper, Upkeep
from service.server.logs import quiet_access_log
from service.server.predict import ModelCache
from service.server.searches import Driver as SearchDriver
from service.server.storage import Storage
from service.server.web import install as install_web
from service.server.webhooks import Deliverer


def operation_id(route: APIRoute) -> str:
    """The route function's name: operation ids that generated clients name their calls by (`submit_job`), which
    stay the same when a path changes."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application; refuses to start on a database that is not migrated."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        require_schema_at_head(app.state.engine)
        app.state.storage.check()  # a missing or unreachable bucket stops the start here
        quiet_access_log()  # after uvicorn set up its loggers: the request line is ops.RequestLayer's
        upkeep = Upkeep(storage=app.state.storage, temp_max_age_s=settings.temp_max_age_s,
                        checkpoint_keep_s=settings.checkpoint_keep_s, every_s=settings.sweep_every_s)
        reaper = Reaper(app.state.sessions, max_attempts=settings.max_attempts, every_s=settings.reap_every_s,
                        upkeep=upkeep)
        reaper.start()
        driver = SearchDriver(app.state.sessions, settings)
        driver.start()
        deliverer = Deliverer(app.state.sessions, settings)  # the webhook outbox
        deliverer.start()
        # What is loaded by now lives as long as the process: out of the collector's sight, so that a full
        # collection (a pause in whichever request triggers it) walks only what requests make.
        gc.freeze()
        yield
        deliverer.stop()
        driver.stop()
        reaper.stop()
        app.state.engine.dispose()

    app = FastAPI(title="MLP Service", version=service.__version__, lifespan=lifespan,
                  description="Training-as-a-service for PyTorch multilayer perceptrons.",
                  generate_unique_id_function=operation_id,
                  docs_url=None, redoc_url=None)  # /docs comes from local assets (service.server.web)
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.sessions = make_sessionmaker(app.state.engine)
    app.state.storage = Storage.from_settings(settings)
    app.state.model_cache = ModelCache(app.state.storage, settings.model_cache_size)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app.state.principals = PrincipalCache(app.state.sessions)
    # One middleware for every request (request id, body limit, prediction timing, the request line): ops.install.
    install_error_handlers(app, classify=faults.classify, fault_types=faults.FAULT_TYPES, request_ids=False)
    ops.install(app, max_body_bytes=settings.max_json_bytes)
    # A request walks the routes in this order until one matches: the models' routes, /predict first among them,
    # come first (no other route matches /predict or /models/...), so that a prediction is not checked against
    # every other route.
    keyed = [models.router, datasets.router, jobs.router, events.router, scoring.router, ops.router,
             workers.router, registry.router, searches.router, webhooks.router]
    app.include_router(keyed[0], dependencies=[Depends(get_principal)], responses=problem_responses(401, 429))
    app.include_router(system.router)  # /healthz and /readyz: the only routes without a key
    app.include_router(inference.router)  # /v2: the Open Inference Protocol, keyed per route (not its health)
    for router in keyed[1:]:
        app.include_router(router, dependencies=[Depends(get_principal)], responses=problem_responses(401, 429))
    install_web(app)  # the web page at / and /ui/..., its sign-in session, /docs
    return app
