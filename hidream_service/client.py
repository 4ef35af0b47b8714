"""A small client of this server's public API, for the `hidream` command (run, jobs).

It speaks what any client may: the fal queue (submit, status, cancel), fal's upload route, the
catalogue, and the request views (one request's event stream included) and webhook views. Nothing
here imports the server.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
STREAM_READ_TIMEOUT = 60.0  # an event stream sends a keep-alive every 15 s
REPLAY_WAIT_SECONDS = 60.0  # outlasts a webhook attempt's timeout (15 s by default)


class ServiceError(Exception):
    """The server refused a call (`status` is its HTTP status) or could not be reached (None)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_message(response: httpx.Response) -> str:
    """Any dialect's error body as one line: fal's detail (a string or a field list), OpenAI's or
    WaveSpeed's message."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "header"))
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return f"HTTP {response.status_code}: " + "; ".join(parts)
    if detail is None and isinstance(body, dict):
        nested = body.get("error")
        detail = nested.get("message") if isinstance(nested, dict) else body.get("message")
    return f"HTTP {response.status_code}: {detail if detail is not None else body}"


class ServiceClient:
    def __init__(self, base_url: str, key: str | None = None, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Key {key}"} if key else {}
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if url.startswith("/"):
            url = self.base_url + url
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(None, f"cannot reach {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise ServiceError(response.status_code, error_message(response))
        return response

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self._call(method, url, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServiceError(response.status_code, f"{url} answered something that is not JSON") from None

    # -- catalogue and uploads -------------------------------------------------------------------

    def catalogue(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self._json("GET", "/models")["models"]
        return models

    def upload(self, path: Path) -> str:
        """Store a local file through fal's upload route; the URL it answers fits any image input."""
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Content-Type": content_type, "X-Fal-File-Name": path.name}
        url: str = self._json("POST", "/files/upload", content=path.read_bytes(), headers=headers)["access_url"]
        return url

    # -- the fal queue ---------------------------------------------------------------------------

    def submit(self, endpoint: str, arguments: dict[str, Any], webhook: str | None = None) -> dict[str, Any]:
        params = {"fal_webhook": webhook} if webhook else None
        handle: dict[str, Any] = self._json("POST", f"/{endpoint}", json=arguments, params=params)
        return handle

    def request_events(self, request_id: str) -> Iterator[dict[str, Any]]:
        """The request's summaries from its event stream (GET /v1/requests/{id}/stream), each with its
        typed `progress` and the log lines new since the last, until the server closes the stream."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_TIMEOUT)
        try:
            url = f"{self.base_url}/v1/requests/{quote(request_id, safe='')}/stream"
            with self._http.stream("GET", url, timeout=timeout) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    raise ServiceError(stream.status_code, error_message(stream))
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        yield json.loads(line[len("data:") :])
        except httpx.HTTPError as exc:
            raise ServiceError(None, f"event stream dropped: {exc}") from None

    def status(self, status_url: str) -> dict[str, Any]:
        status: dict[str, Any] = self._json("GET", status_url, params={"logs": "1"})
        return status

    def cancel(self, cancel_url: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._json("PUT", cancel_url)
        return answer

    def download(self, url: str) -> bytes:
        if url.startswith("data:"):
            return base64.b64decode(url.split(",", 1)[1])
        return self._call("GET", url).content

    # -- the operator's views --------------------------------------------------------------------

    def requests(self, limit: int, before: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        page: dict[str, Any] = self._json("GET", "/v1/requests", params=params)
        return page

    def request(self, request_id: str) -> dict[str, Any]:
        summary: dict[str, Any] = self._json("GET", f"/v1/requests/{quote(request_id, safe='')}")
        return summary

    def deliveries(self, request_id: str) -> list[dict[str, Any]]:
        deliveries: list[dict[str, Any]] = self._json("GET", f"/v1/requests/{quote(request_id, safe='')}/webhooks")[
            "deliveries"
        ]
        return deliveries

    def replay(self, delivery_id: str, *, wait: float = REPLAY_WAIT_SECONDS, poll: float = 0.25) -> dict[str, Any]:
        """Replay a delivery and wait for its attempt. The server answers at once and sends in the
        background; this follows the delivery's history until the replayed attempt is in it.
        Returns {"delivered", "attempt": that attempt, "delivery": the history with it}."""
        started = self._json("POST", f"/v1/webhooks/deliveries/{quote(delivery_id, safe='')}/replay")
        seen = len(started["delivery"]["attempts"])
        deadline = time.monotonic() + wait
        while True:
            for delivery in self.deliveries(started["delivery"]["request_id"]):
                if delivery["id"] != delivery_id:
                    continue
                replayed = [attempt for attempt in delivery["attempts"][seen:] if attempt["replay"]]
                if replayed:
                    code = replayed[0]["status_code"]
                    delivered = code is not None and 200 <= code < 300
                    return {"delivered": delivered, "attempt": replayed[0], "delivery": delivery}
            if time.monotonic() > deadline:
                raise ServiceError(None, f"the replay of {delivery_id} was sent; no attempt was recorded in {wait:g} s")
            time.sleep(poll)
