"""Fixtures of the HTTP tests: a coordinator's services on SQLite, and the app over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from swarm.coordinator.http import create_app
from swarm.coordinator.server import Services
from tests.conftest import local_client, wire_services


@pytest.fixture
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    """Wired, not serving; `@pytest.mark.settings(lease_ttl_s=10.0)` changes settings."""
    marker = request.node.get_closest_marker("settings")
    wired = wire_services(tmp_path, **(marker.kwargs if marker else {}))
    try:
        yield wired
    finally:
        wired.db.dispose()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    """The HTTP app over `services`, called from 127.0.0.1 (setup mode's local operator)."""
    with local_client(create_app(services)) as test_client:
        yield test_client
