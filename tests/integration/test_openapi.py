"""One OpenAPI document for every dialect, and nothing a client can send makes the server fail (5xx)."""

from __future__ import annotations

import collections
import dataclasses
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.integration.harness import ServerProcess


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[ServerProcess]:
    # Synchronous calls give up after 0.5 s (504), so that generated jobs queueing up cannot stall the run.
    env = {"HIDREAM_SYNC_TIMEOUT_SECONDS": "0.5"}
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


# -- Hostile inputs schemathesis does not make -------------------------------------------------------
#
# Schemathesis sends what the document describes, and values of the wrong type. Unfriendly clients
# also send JSON nested thousands deep, numbers past any float, lone surrogates, NUL bytes, megabyte
# strings; multipart bodies where JSON is expected (and the reverse); and odd headers. A fixed seed
# and a fixed number of cases keep the run the same each time and within seconds.

FUZZ_SEED = 20260601
FUZZ_CASES = 420
DEEP = "[" * 2000 + "]" * 2000

#: Raw JSON texts put in the place of one value.
HOSTILE_VALUES = [
    DEEP,
    '{"a":' * 2000 + "1" + "}" * 2000,
    "[" * 70 + "]" * 70,  # past our nesting limit, well within Python's
    "1e400",
    "-1e400",
    "9" * 5000,
    "1" * 4000,
    "-0",
    "1.5",
    "-1",
    "2147483648",
    "18446744073709551616",
    "NaN",
    "Infinity",
    '"a\\ud800b"',
    '"\\udfff"',
    '"\\ud83d\\ude00"',
    '"a\\u0000b"',
    '"' + "x" * 200_000 + '"',
    '""',
    '"   "',
    "null",
    "true",
    "[]",
    "{}",
    "[" + ",".join(["{}"] * 2000) + "]",
    '"../../../../etc/passwd"',
    '"http://127.0.0.1:1/%00"',
    '"http://[::1"',
    '"http://a\\u0009b.example/"',
    '"file:///etc/passwd"',
    '"data:image/png;base64,AAAA"',
    '"data:image/png;base64,' + "A" * 10_000 + '"',
    '"\\u202e\\ufeff"',
]
#: Whole bodies, not necessarily JSON.
HOSTILE_BODIES = [
    b"",
    b"{",
    b"[]",
    b"null",
    b'"x"',
    DEEP.encode(),
    b'{"prompt": "x", "prompt": 1}',
    '{"prompt": "x"}'.encode("utf-16"),
    b"\xef\xbb\xbf{}",
    b"\xff\xfe\xfd",
    b"\x00" * 64,
    b'{"prompt": "\xff"}',
    b"prompt=x&seed=1",
    b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n\x89PNG\r\n--b--\r\n',
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-16",
    'application/json; charset="',
    "application/vnd.api+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=" + "b" * 300,
    "image/png",
    ";;;",
    "",
]
HOSTILE_HEADERS: list[dict[str, bytes]] = [
    {"authorization": b"Bearer " + b"1" * 5000},
    {"authorization": b"Key " + b"9" * 5000},
    {"authorization": b"Bearer -." + b"9" * 5000 + b".x"},
    {"authorization": b"Token \xff\xfe"},
    {"authorization": b"Basic Zm9vOmJhcg=="},
    {"authorization": b"Key"},
    {"host": b"rebound.example"},
    {"host": b"127.0.0.1:99999"},
    {"host": b"[::1"},
    {"host": b"a b"},
    {"origin": b"null"},
    {"origin": b"http://attacker.example"},
    {"sec-fetch-site": b"cross-site"},
    {"idempotency-key": b"k" * 300},
    {"idempotency-key": b"\xff"},
    {"prefer": b"wait=" + b"9" * 50},
    {"prefer": b"wait=-1"},
    {"x-fal-file-name": b"a..png"},
    {"x-fal-file-name": b"../../" + b"." * 300},
    {"x-fal-file-name": b"\xff\xfe.png"},
    {"accept": b"text/event-stream"},
]
#: Path segments, sent as they are (percent escapes included).
HOSTILE_SEGMENTS = ["a" * 300, "%00", "..", "%2e%2e", "%ff", "%ED%A0%80", "0" * 5000, "-1", "%20", "x.png", "é"]
#: Values of query parameters.
HOSTILE_QUERY = ["", "%00", "9" * 5000, "-1", "true", "http://127.0.0.1:1/%00", "a%ED%A0%80b", "²", "x" * 5000]


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str  # as in the document: /v1/predictions/{prediction_id}
    query: tuple[str, ...]
    json_fields: tuple[str, ...]


def operations_of(document: dict[str, Any]) -> list[Operation]:
    found = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            query = tuple(p["name"] for p in operation.get("parameters", []) if p["in"] == "query")
            schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if "$ref" in schema:
                schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
            found.append(Operation(method.upper(), path, query, tuple(schema.get("properties", {}))))
    return found


def hostile_request(operation: Operation, rng: random.Random) -> dict[str, Any]:
    """One request for `operation`: hostile path segments and query values, then a hostile body or
    hostile headers (or both)."""
    path = re.sub(r"\{[^}]+\}", lambda _: rng.choice([*HOSTILE_SEGMENTS, "fal-ai", "hidream"]), operation.path)
    query = "&".join(f"{name}={rng.choice(HOSTILE_QUERY)}" for name in operation.query if rng.random() < 0.7)
    headers: dict[str, bytes] = {}
    kind = rng.choice(["json-field", "json-field", "body", "multipart", "headers"])
    if kind == "json-field":
        fields = list(operation.json_fields or ("prompt", "input", "webhook", "image_url"))
        chosen = rng.sample(fields, k=min(len(fields), rng.randint(1, 3)))
        values = {name: rng.choice(HOSTILE_VALUES) for name in chosen}
        body = ("{" + ",".join(f'"{name}": {value}' for name, value in values.items()) + "}").encode()
        headers["content-type"] = b"application/json"
    elif kind == "body":
        body = rng.choice(HOSTILE_BODIES)
        headers["content-type"] = rng.choice(CONTENT_TYPES).encode()
    elif kind == "multipart":
        body = b"--b\r\n" + (
            b'Content-Disposition: form-data; name="' + rng.choice([b"image", b"prompt", b"x" * 300, b"\xff"]) + b'"'
        )
        body += rng.choice([b'; filename="../a..png"', b'; filename="\xff"', b""]) + b"\r\n\r\n"
        body += rng.choice([b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, b"x", b"\xff" * 100]) + b"\r\n--b--\r\n"
        headers["content-type"] = rng.choice([b"multipart/form-data; boundary=b", b"multipart/form-data; boundary=c"])
    else:
        body = b'{"prompt": "x"}'
        headers["content-type"] = b"application/json"
    if kind == "headers" or rng.random() < 0.25:
        headers.update(rng.choice(HOSTILE_HEADERS))
    method = operation.method if rng.random() < 0.9 else rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
    return {"method": method, "url": path + (f"?{query}" if query else ""), "content": body, "headers": headers}


def test_hostile_inputs_on_every_route_make_no_5xx(fuzzed: ServerProcess) -> None:
    document = httpx.get(f"{fuzzed.url}/openapi.json").json()
    operations = operations_of(document)
    rng = random.Random(FUZZ_SEED)
    tried: collections.Counter[str] = collections.Counter()
    failures: list[str] = []

    with httpx.Client(base_url=fuzzed.url, timeout=30) as client:
        for n in range(FUZZ_CASES):
            operation = operations[n % len(operations)]  # every route, in turn
            request = hostile_request(operation, rng)
            tried[f"{operation.method} {operation.path}"] += 1
            try:
                response = client.request(**request)
            except httpx.HTTPError as exc:
                failures.append(f"{request['method']} {request['url'][:120]}: {type(exc).__name__}: {exc}")
                continue
            # 504: a synchronous call outlasted its wait (0.5 s here); the job itself goes on.
            if response.status_code >= 500 and response.status_code != 504:
                failures.append(
                    f"{request['method']} {request['url'][:120]}: {response.status_code} {response.text[:200]}"
                )

    assert failures == [], "\n".join(failures)
    assert set(tried) == {f"{op.method} {op.path}" for op in operations}
    assert httpx.get(f"{fuzzed.url}/health").status_code == 200
    print(f"hostile fuzz: {sum(tried.values())} requests over {len(tried)} routes, no 5xx")
