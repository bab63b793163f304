"""Fixtures the integration tests share: the API on a real port, for CLI commands that
talk to it over HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings
from tests.conftest import RunningSimulator, TestDatabase


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def service_url(database: TestDatabase, simulator: RunningSimulator) -> Iterator[str]:
    """The service (against the simulator) served by uvicorn in a thread; its base URL."""
    settings = Settings(database_url=database.url, pool_min_size=1, pool_max_size=5)
    app = create_app(settings, simulator.config(), sweeper=False, run_migrations=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="service-for-cli", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        threading.Event().wait(0.05)
    else:
        server.should_exit = True
        thread.join(timeout=20)
        raise RuntimeError(f"the service at {url} did not become healthy")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=20)
