#!/usr/bin/env python3
"""Smoke test of a deployed HiDream service: its health route, then one hidream/noop job through
fal's queue routes, polled to the end, and the job's output file fetched.

    HIDREAM_SMOKE_API_KEY=... python .github/scripts/smoke_test.py https://...modal.run

The key is one of the deployment's HIDREAM_API_KEYS, read from the environment (never from the
command line, which other processes can read); unset, requests go without one (an open server).
Standard library only, so that it runs on a bare CI runner. Every request has a timeout and the
whole test a deadline; GETs are retried on connection errors and 5xx answers until the deadline
(a web container starting cold), the submit is sent once. Redirects are not followed: the base URL
must be the service's own. Exits 0 when the job succeeded, else 1 saying what went wrong.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

ENDPOINT = "hidream/noop"
PROMPT = "deploy smoke test"
API_KEY_VARIABLE = "HIDREAM_SMOKE_API_KEY"

#: Defaults: long enough for a cold web container and a cold CPU function on Modal.
DEADLINE_SECONDS = 300.0
REQUEST_TIMEOUT_SECONDS = 30.0
POLL_INTERVAL_SECONDS = 2.0

#: No answer at all: refused, reset, timed out (URLError is an OSError), or a garbled response.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class SmokeTestFailed(Exception):
    """The deployment did not behave: the message says how."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise SmokeTestFailed(f"expected JSON, got {self.status}: {self.body[:200]!r}") from None


class Service:
    """HTTP calls to one deployment, each bounded by the request timeout and the test's deadline."""

    def __init__(self, base_url: str, api_key: str | None, *, deadline: float, request_timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.deadline = deadline
        self.request_timeout = request_timeout
        self._opener = urllib.request.build_opener(_NoRedirects)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def call(self, method: str, path: str, body: Any = None) -> Answer:
        """One request; no answer at all raises one of TRANSPORT_ERRORS."""
        headers = {"Accept": "application/json", "User-Agent": "hidream-smoke-test"}
        if self.api_key:
            headers["Authorization"] = f"Key {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        timeout = max(0.1, min(self.request_timeout, self.remaining()))
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return Answer(response.status, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Answer(error.code, error.read())

    def get(self, path: str, *, poll_interval: float) -> Answer:
        """A GET, retried on connection errors and 5xx answers until the deadline."""
        while True:
            try:
                answer = self.call("GET", path)
                problem = f"answered {answer.status}: {answer.body[:200]!r}"
                if answer.status < 500:
                    return answer
            except TRANSPORT_ERRORS as error:
                problem = f"failed: {error}"
            if self.remaining() <= poll_interval:
                raise SmokeTestFailed(f"GET {path} {problem} (deadline reached)")
            time.sleep(poll_interval)


def check_health(service: Service, *, poll_interval: float) -> None:
    answer = service.get("/health", poll_interval=poll_interval)
    if answer.status != 200:
        raise SmokeTestFailed(f"GET /health answered {answer.status}: {answer.body[:500]!r}")
    health = answer.json()
    if health.get("status") != "ok":
        raise SmokeTestFailed(f"GET /health says {health}")
    if ENDPOINT not in health.get("endpoints", []):
        raise SmokeTestFailed(f"{ENDPOINT} is not served; /health lists {health.get('endpoints')}")
    print(f"health: ok, serving {', '.join(health['endpoints'])}")


def submit(service: Service) -> str:
    try:
        answer = service.call("POST", f"/{ENDPOINT}", {"prompt": PROMPT})
    except TRANSPORT_ERRORS as error:
        raise SmokeTestFailed(f"POST /{ENDPOINT} failed: {error}") from None
    if answer.status == 401:
        raise SmokeTestFailed(
            f"POST /{ENDPOINT} answered 401: set {API_KEY_VARIABLE} to one of the deployment's HIDREAM_API_KEYS"
        )
    if answer.status != 200:
        raise SmokeTestFailed(f"POST /{ENDPOINT} answered {answer.status}: {answer.body[:500]!r}")
    request_id: str = answer.json()["request_id"]
    print(f"submitted {ENDPOINT} job {request_id}")
    return request_id


def wait_until_completed(service: Service, request_id: str, *, poll_interval: float) -> None:
    path = f"/{ENDPOINT}/requests/{request_id}/status"
    while True:
        answer = service.get(path, poll_interval=poll_interval)
        status = answer.json().get("status") if answer.status in (200, 202) else None
        if answer.status == 200 and status == "COMPLETED":
            return
        if answer.status != 202:
            raise SmokeTestFailed(f"GET {path} answered {answer.status}: {answer.body[:500]!r}")
        if service.remaining() <= poll_interval:
            raise SmokeTestFailed(f"job {request_id} still {status} at the deadline")
        time.sleep(poll_interval)


def check_result(service: Service, request_id: str, *, poll_interval: float) -> None:
    path = f"/{ENDPOINT}/requests/{request_id}"
    answer = service.get(path, poll_interval=poll_interval)
    if answer.status != 200:  # a failed job answers with its error
        raise SmokeTestFailed(f"job {request_id} did not succeed: {answer.status} {answer.body[:500]!r}")
    result = answer.json()
    if result.get("prompt") != PROMPT or not result.get("images"):
        raise SmokeTestFailed(f"job {request_id} returned an unexpected result: {result}")
    # The file from the base URL given: the test checks this deployment, whatever host it names.
    file_path = urllib.parse.urlsplit(result["images"][0]["url"]).path
    image = service.get(file_path, poll_interval=poll_interval)
    if image.status != 200 or not image.body:
        raise SmokeTestFailed(f"GET {file_path} answered {image.status} with {len(image.body)} bytes")
    print(f"job {request_id} completed; its image ({len(image.body)} bytes) is served")


def smoke_test(
    base_url: str,
    api_key: str | None,
    *,
    deadline_seconds: float = DEADLINE_SECONDS,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    poll_interval: float = POLL_INTERVAL_SECONDS,
) -> None:
    """Raises SmokeTestFailed unless the deployment is healthy and runs a noop job to the end."""
    deadline = time.monotonic() + deadline_seconds
    service = Service(base_url, api_key, deadline=deadline, request_timeout=request_timeout)
    check_health(service, poll_interval=poll_interval)
    request_id = submit(service)
    wait_until_completed(service, request_id, poll_interval=poll_interval)
    check_result(service, request_id, poll_interval=poll_interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "base_url", help="the deployment's base URL (Modal's: https://…--hidream-service-web.modal.run)"
    )
    parser.add_argument("--deadline", type=float, default=DEADLINE_SECONDS, help="seconds for the whole test")
    parser.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_SECONDS, help="seconds per request")
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL_SECONDS, help="seconds between polls")
    args = parser.parse_args(argv)
    if urllib.parse.urlsplit(args.base_url).scheme not in ("http", "https"):
        parser.error(f"base_url must be an http(s) URL, got {args.base_url!r}")
    try:
        smoke_test(
            args.base_url,
            os.environ.get(API_KEY_VARIABLE) or None,
            deadline_seconds=args.deadline,
            request_timeout=args.request_timeout,
            poll_interval=args.poll_interval,
        )
    except SmokeTestFailed as failure:
        print(f"smoke test failed: {failure}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
