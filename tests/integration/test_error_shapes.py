"""Each dialect answers errors in its own shape: on its routes, and on the paths its clients use that
none of its routes takes (404, or 405 naming the methods the path does take)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from hidream_service.config import Settings
from hidream_service.server import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data")), start_workers=False)
    with TestClient(app, base_url="http://localhost") as running:  # a loopback bind answers its own names
        yield running


@pytest.mark.parametrize(
    ("method", "path", "status", "shape"),
    [
        ("POST", "/v1/images/variations", 404, "openai"),  # images.create_variation
        ("GET", "/v1/images/generations", 405, "openai"),
        ("POST", "/v1/models", 405, "openai"),
        ("POST", "/v1/predictions/abc", 405, "replicate"),
        ("DELETE", "/v1/predictions", 405, "replicate"),
        ("GET", "/v1/predictions/abc/outputs", 404, "replicate"),
        ("GET", "/api/v3/a/b/c", 404, "wavespeed"),
        ("GET", "/api/v3/wavespeed-ai/hidream-i1-fast", 405, "wavespeed"),
        ("POST", "/acme/nothing", 404, "fal"),
        ("GET", "/nowhere/at/all/x", 404, "fal"),  # no route: not the 405 of fal's any-path submit route
    ],
)
def test_a_request_none_of_a_dialect_s_routes_takes_is_answered_in_its_shape(
    client: TestClient, method: str, path: str, status: int, shape: str
) -> None:
    response = client.request(method, path)

    assert response.status_code == status
    body = response.json()
    expected_keys = {
        "openai": {"error"},
        "replicate": {"title", "detail", "status"},
        "wavespeed": {"code", "message", "data"},
        "fal": {"detail"},
    }[shape]
    assert set(body) == expected_keys, body
    if status == 405:
        assert response.headers["allow"]


def test_a_dialect_s_own_route_answers_a_bad_input_in_its_shape(client: TestClient) -> None:
    openai = client.post("/v1/images/generations", json={"prompt": ""})
    replicate = client.post("/v1/models/hidream/noop/predictions", json={"input": {"seed": -1}})
    wavespeed = client.get("/api/v3/predictions/nope/result")

    assert openai.status_code == 400 and openai.json()["error"]["param"] == "prompt"
    assert replicate.status_code == 422 and replicate.json()["invalid_fields"][0]["field"] == "seed"
    assert wavespeed.status_code == 404 and wavespeed.json() == {
        "code": 404,
        "message": "task nope not found",
        "data": None,
    }
