"""One OpenAPI document for every dialect, and nothing a client can send makes the server fail (5xx)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.integration.harness import ServerProcess


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[ServerProcess]:
    # Synchronous calls give up after 2 s (504), so that generated jobs queueing up cannot stall the run.
    env = {"HIDREAM_SYNC_TIMEOUT_SECONDS": "2"}
    with ServerProcess(tmp_path_factory.mktemp("fuzz"), weights=str(tiny_weights), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def api(fuzzed: ServerProcess) -> Iterator[schemathesis.BaseSchema]:
    loaded = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    loaded.config.update(base_url=fuzzed.url)
    yield loaded


def test_the_document_describes_every_dialect(server: ServerProcess) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]

    for path in (
        "/fal-ai/hidream-i1-full",
        "/run/fal-ai/hidream-i1-dev",
        "/{owner}/{app}/requests/{request_id}/status",
        "/v1/models/{owner}/{name}/predictions",
        "/v1/predictions/{prediction_id}",
        "/api/v3/{owner}/{model}",
        "/v1/images/generations",
        "/v1/webhooks/default/secret",
        "/.well-known/jwks.json",
        "/models",
    ):
        assert path in paths, path
    body = paths["/fal-ai/hidream-i1-full"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "prompt" in body["required"]


MAX_EXAMPLES = 6
SKIPPED = {"/v1/webhooks/default/secret/rotate"}  # would change the secret this module's server signs with


def test_no_input_makes_the_server_fail(api: schemathesis.BaseSchema) -> None:
    failures: list[str] = []
    for result in api.get_all_operations():
        operation = result.ok()
        if operation.path in SKIPPED:
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],  # report what was found; shrinking HTTP calls is slow
        )
        def call(case: schemathesis.Case) -> None:
            try:
                response = case.call(timeout=30)
            except Exception as exc:
                failures.append(f"{case.method} {case.formatted_path}: {type(exc).__name__}: {exc}")
                return
            # 504 says a synchronous call outlasted its wait; the job itself goes on.
            if response.status_code >= 500 and response.status_code != 504:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")

        call()

    assert failures == [], "\n".join(failures)
