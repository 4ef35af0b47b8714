"""The playground page at the root, beside the fal routes, from files shipped in the package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import ServerProcess


@pytest.fixture(scope="module")
def noop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("page")) as running:
        yield running


def test_the_playground_is_served_at_the_root_with_its_assets(noop_server: ServerProcess) -> None:
    page = httpx.get(f"{noop_server.url}/")
    script = httpx.get(f"{noop_server.url}/playground/app.js")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/playground/app.js">' in page.text
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")


def test_the_page_loads_nothing_from_another_host() -> None:
    folder = Path(__file__).resolve().parents[2] / "hidream_service" / "playground"
    for asset in folder.iterdir():
        text = asset.read_text()
        for reference in ('src="http', 'href="http', "url(http", "@import", 'import("http'):
            assert reference not in text, f"{asset.name} refers to another host: {reference}"


def test_unknown_playground_files_are_4xx_and_paths_do_not_escape(noop_server: ServerProcess) -> None:
    assert httpx.get(f"{noop_server.url}/playground/nope.js").status_code == 404
    for path in ("/playground/..%2Fapi%2Fapp.py", "/playground/%2e%2e%2fconfig.py", "/playground/..%5Capp.js"):
        answer = httpx.get(f"{noop_server.url}{path}")
        assert 400 <= answer.status_code < 500 and "import" not in answer.text, path


def test_fal_routes_still_answer_beside_the_page(noop_server: ServerProcess) -> None:
    submitted = httpx.post(f"{noop_server.url}/hidream/noop", json={"prompt": "x"})
    assert submitted.status_code == 200
    assert httpx.post(f"{noop_server.url}/", json={}).status_code == 404  # no app at the root
