"""Browser tests: headless Chromium (Debian's `chromium`, driven by Playwright for Python) against a real `mlps
serve`. They skip when no Chromium or no Playwright is installed here; .ci/run installs both.

Every page a test opens runs in a context that records each request the browser makes; after the test, every one
must have gone to the server's own origin (no CDN, no outside host)."""

import os
import shutil
from pathlib import Path

import httpx
import pytest

from service.server.config import Settings
from tests.helpers import make_key
from tests.live import admin_key, free_port, running


def chromium_path() -> str | None:
    """$MLPS_CHROMIUM, else Debian's chromium on the PATH."""
    found = os.environ.get("MLPS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and Path(found).exists() else None


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium here: `apt-get install chromium` (what .ci/run does) to run the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed: `pip install -e '.[dev]'` installs it")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield instance
        instance.close()


class Site:
    """The live server: its URL, its admin key, an HTTP client that sends that key, and keys made for other owners."""

    def __init__(self, url: str, data_dir: Path, api: httpx.Client) -> None:
        self.url = url
        self.data_dir = data_dir
        self.api = api
        self.admin_key = admin_key(data_dir)

    def new_key(self, owner: str) -> str:
        # the server's own SQLite file, whatever MLPS_DATABASE_URL says (Stack leaves it out of the server's env)
        return make_key(Settings(data_dir=self.data_dir,
                                 database_url=f"sqlite:///{(self.data_dir / 'mlps.db').resolve()}"), owner)


@pytest.fixture(scope="session")
def site(tmp_path_factory, browser) -> Site:
    """`mlps serve` on a free port (started after the browser, so that a missing Chromium starts no server)."""
    data_dir = tmp_path_factory.mktemp("ui") / "var"
    port = free_port()
    with running(["serve", "--port", str(port), "--data-dir", str(data_dir)], data_dir=data_dir, port=port) as api:
        yield Site(f"http://127.0.0.1:{port}", data_dir, api)


@pytest.fixture
def context(browser, site):
    """A fresh browser profile (no cookie) whose every request is recorded and checked at the end."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=site.url, accept_downloads=True)
    ctx.set_default_timeout(30_000)
    requested: list[str] = []
    ctx.on("request", lambda request: requested.append(request.url))
    yield ctx
    ctx.close()
    outside = [u for u in requested if not u.startswith((f"{site.url}/", "blob:", "data:"))]
    assert outside == [], f"pages requested outside hosts: {outside}"
    assert requested, "the test opened no page"


@pytest.fixture
def page(context):
    """A page in that context; a script error, an alert() or anything the CSP refused fails the test."""
    tab = context.new_page()
    failures: list[str] = []
    tab.on("pageerror", lambda error: failures.append(f"script error: {error}"))
    tab.on("dialog", lambda dialog: (failures.append(f"unexpected dialog: {dialog.message}"), dialog.dismiss()))
    # what the Content-Security-Policy blocked: the page must need nothing it forbids
    tab.on("console", lambda message: failures.append(f"refused: {message.text}")
           if message.type == "error" and "Content Security Policy" in message.text else None)
    tab.failures = failures
    yield tab
    assert failures == []


def sign_in(page, key: str) -> None:
    """Sign the page's browser context in through /ui/session (what the sign-in form posts)."""
    resp = page.request.post("/ui/session", data={"key": key})
    assert resp.status == 200, resp.text()


@pytest.fixture
def admin_page(page, site):
    """A page signed in with the admin key."""
    sign_in(page, site.admin_key)
    return page
