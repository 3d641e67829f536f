"""Browser fixtures: the real app in a daphne child process, the offline model, Chromium.

The app runs exactly as deployed (daphne, the in-process channel layer, turn runners in the web
process, a Celery worker on the filesystem broker for tool calls) against pytest-django's SQLite
test database file, so the data a test commits through `transactional_db` is what the app sees,
and what the app stores is what the test reads back.

daphne and the worker share a data folder of their own (`var/browser/`), so their broker queue is
not the one a unit run at the same time uses: that run's worker would take the browser's tool
calls and look for them in the wrong database.
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from agents.offline_server import ThreadedServer, start_in_thread

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Slow enough that a person watching a headed run sees the thinking clock tick; a test that
# wants speed asks for it per message with `!rate:N`.
MODEL_RATE = 30.0
STARTUP_SECONDS = 30.0
USERNAME = "browser-user"
PASSWORD = "browser-pass-123"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the browser tests in a run that also has async tests (plain `pytest`).

    Playwright's sync API keeps an event loop running in the main thread, after which every
    pytest-asyncio test in the same run fails with "Runner.run() cannot be called from a running
    event loop". `make browser` runs these tests on their own.
    """
    browser = [item for item in items if item.get_closest_marker("browser")]
    if not browser or not any(
        inspect.iscoroutinefunction(getattr(item, "function", None)) for item in items
    ):
        return
    skip = pytest.mark.skip(reason="browser tests need their own pytest run: `make browser`")
    for item in browser:
        item.add_marker(skip)


WORKER_STARTUP_SECONDS = 60.0


@dataclass
class LiveApp:
    url: str
    model: ThreadedServer
    log: Path
    env: dict[str, str]  # the environment of the app's processes (daphne, the worker)
    data_dir: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"daphne exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/login/", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        # A connection refused returns at once: pace the probes instead of spinning.
        time.sleep(0.05)
    pytest.fail(
        f"daphne did not serve {url} within {STARTUP_SECONDS} s:\n{log.read_text()[-4000:]}"
    )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """A test database file of our own, so a unit run at the same time cannot clobber it."""
    test = settings.DATABASES["default"].get("TEST", {})
    if test.get("NAME"):
        name = Path(test["NAME"])
        test["NAME"] = str(name.with_name(f"browser-{name.name}"))


@pytest.fixture(scope="session")
def live_app(django_db_setup: None) -> Iterator[LiveApp]:
    """daphne serving `chat.asgi:application` on the test database, with the offline model."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("the browser tests run on the embedded SQLite database")
    database = Path(connection.settings_dict["NAME"]).resolve()
    model = start_in_thread(rate=MODEL_RATE)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = settings.DATA_DIR / "browser"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_ALLOW_ASYNC_UNSAFE", "GLASSBOX_COALESCE_MS", "REDIS_URL"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="chat.settings",
        DATABASE_URL=f"sqlite:///{database}",
        GLASSBOX_DATA_DIR=str(data_dir),
        GLASSBOX_PROVIDER="offline",
        GLASSBOX_BASE_URL=model.base_url,
    )
    log = settings.DATA_DIR / "browser-daphne.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
            + ["chat.asgi:application"],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(url, process, log)
        yield LiveApp(url=url, model=model, log=log, env=env, data_dir=data_dir)
    finally:
        _stop(process)
        model.stop()


def _stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


@pytest.fixture(scope="session")
def worker(live_app: LiveApp) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker running the app's tool calls, on the app's broker and database.

    Like `tests.procs.celery_worker`, but it clears stale messages from the browser's own
    broker folder, never from the one a unit run at the same time may be using.
    """
    queue = live_app.data_dir / "broker" / "queue"
    for stale in queue.glob("*.msg"):
        stale.unlink(missing_ok=True)
    log = settings.DATA_DIR / "browser-worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "chat", "worker", "--loglevel", "INFO"]
            + ["--concurrency", "2", "-n", f"browser-{os.getpid()}@%h"]
            + ["--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=settings.BASE_DIR,
            env=live_app.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WORKER_STARTUP_SECONDS
        while b" ready." not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Celery worker did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.05)
        yield process
    finally:
        _stop(process, 15)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium through Playwright's sync API (never `playwright install`)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    # Playwright's sync API keeps an event loop running in this thread, so Django would treat
    # the tests' own ORM calls as made from async code.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    expect.set_options(timeout=20_000)
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def user(transactional_db: None, django_user_model: Any) -> Any:
    """A user committed to the test database, so the daphne process can log them in."""
    return django_user_model.objects.create_user(USERNAME, password=PASSWORD)


@pytest.fixture
def viewport() -> ViewportSize:
    """A desktop window; a test parametrizes `viewport` for a phone."""
    return {"width": 1280, "height": 860}


@pytest.fixture
def page(browser: Browser, live_app: LiveApp, user: Any, viewport: ViewportSize) -> Iterator[Page]:
    """A fresh browser context (no cookies) per test, at the test's viewport."""
    context = browser.new_context(base_url=live_app.url, viewport=viewport)
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = settings.DATA_DIR / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
