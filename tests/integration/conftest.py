from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fal_client
import fal_client.client
import openai
import pytest
from playwright.sync_api import Browser

from tests.integration.browser import PageWatch, launched_chromium
from tests.integration.harness import ServerProcess, WebhookReceiver, close_fal_client

BUILD_TINY = (
    "import sys, pathlib\n"
    "from hidream_service.inference.weights import WeightsLayout\n"
    "from hidream_service.models.registry import DEFAULT_REGISTRY\n"
    "DEFAULT_REGISTRY.ensure_tiny_weights(WeightsLayout(pathlib.Path(sys.argv[1]), tiny=True))\n"
)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny weights built once per run, then served as a weights *directory* (the real-weights path)."""
    root = tmp_path_factory.mktemp("weights") / "tiny"
    subprocess.run([sys.executable, "-c", BUILD_TINY, str(root)], check=True, timeout=300)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[ServerProcess]:
    """One server shared by a module's tests that do not break it."""
    with ServerProcess(tmp_path_factory.mktemp("data"), weights=str(tiny_weights)) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless chromium for one module's tests. Not longer: Playwright's sync API keeps an
    event loop running in this thread, and later tests' asyncio.run() would refuse to start."""
    with launched_chromium() as running:
        yield running


@pytest.fixture
def watch() -> Iterator[PageWatch]:
    """Fails the test if its pages threw a script error or reached past loopback."""
    watching = PageWatch()
    yield watching
    watching.check()


@pytest.fixture
def fal(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[fal_client.SyncClient]:
    """fal's own client pointed at the module's server: queue, sync host and storage uploads."""
    for name, value in {
        "QUEUE_URL_FORMAT": f"{server.url}/",
        "RUN_URL_FORMAT": f"{server.url}/run/",
        "REST_URL": server.url,
        "CDN_URL": server.url,
    }.items():
        monkeypatch.setattr(fal_client.client, name, value)  # fal-client reads its hosts from module constants
    client = fal_client.SyncClient(key="unused")
    yield client
    close_fal_client(client)


@pytest.fixture
def oai(server: ServerProcess) -> Iterator[openai.OpenAI]:
    """OpenAI's own client pointed at the module's server, without retries."""
    client = openai.OpenAI(api_key="unused", base_url=f"{server.url}/v1", max_retries=0)
    yield client
    client.close()
