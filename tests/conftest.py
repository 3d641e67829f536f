"""Shared fixtures: the cast of users, the offline model server, the channel layer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat.settings")


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def owner(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("owner", password="owner-pass-123")


@pytest.fixture
def outsider(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("outsider", password="outsider-pass-123")


@pytest.fixture(scope="session")
def model_server() -> Iterator[Any]:
    """The offline model server, over real HTTP, shared by the session (fast token rate)."""
    from agents.offline_server import start_in_thread

    server = start_in_thread(rate=2000.0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def provider(model_server: Any, settings: Any) -> Iterator[Any]:
    """Point the app at the offline server; a fresh client per test (per event loop)."""
    from chat.streaming import provider_client

    settings.GLASSBOX_PROVIDER = "offline"
    settings.GLASSBOX_BASE_URL = model_server.base_url
    settings.GLASSBOX_MAX_RETRIES = 2
    provider_client.cache_clear()
    model_server.requests.clear()
    yield model_server
    provider_client.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def _release_runner_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Turn runners keep connections in their own threads; PostgreSQL cannot drop a test
    database while they are open, so end them before pytest-django tears it down."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
