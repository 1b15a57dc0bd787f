"""The web page served by the API itself: a static single-page app (service/server/web/static/) over the same JSON
API, its sign-in cookie, and the interactive API docs from local assets. install(app) mounts it all."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.server.web import pages

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the page routes, the sign-in session, /docs and the static assets on the app."""
    app.include_router(pages.router)
    app.mount(pages.STATIC_PREFIX, StaticFiles(directory=STATIC), name="web-static")
