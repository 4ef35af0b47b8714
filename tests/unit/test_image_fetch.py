"""What an image input's download failure tells the caller: the details of a public host's answer,
nothing of a private one's. A public host cannot run on this machine, so its answers come from
`httpx.MockTransport`, marked public as the address guard marks them
(tests/integration/test_delivery_faults.py probes real local ports)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from hidream_service.api.image_fetch import UNREACHABLE, ImageInputs
from hidream_service.image_inputs import ImageDecoder, ImageInputError
from hidream_service.storage import LocalOutputStorage
from webhooks.ssrf import PRIVATE_ADDRESS

MAX_BYTES = 1000


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="PNG")
    return out.getvalue()


def fetch(tmp_path: Path, response: httpx.Response | Exception) -> ImageInputError | None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(response, Exception):
            raise response
        return response

    async def run() -> ImageInputError | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            inputs = ImageInputs(client, LocalOutputStorage(tmp_path), MAX_BYTES, ImageDecoder(), timeout=5)
            try:
                await inputs.prepare("https://images.example/a.png", own_hosts=set())
            except ImageInputError as exc:
                return exc
        return None

    return asyncio.run(run())


def answer(status: int, body: bytes = b"", *, private: bool | None, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, headers=headers, content=body, extensions={} if private is None else {PRIVATE_ADDRESS: private}
    )


@pytest.mark.parametrize(
    ("response", "status", "says"),
    [
        (answer(302, private=False, location="https://elsewhere.example/"), 422, "redirects are not followed"),
        (answer(404, private=False), 422, "answered HTTP 404"),
        (answer(200, b"<html>login</html>", private=False), 422, "JPEG, PNG or WebP"),
        (answer(200, b"x" * (MAX_BYTES + 1), private=False), 413, f"larger than {MAX_BYTES} bytes"),
    ],
)
def test_a_public_host_s_answer_is_explained(tmp_path: Path, response: httpx.Response, status: int, says: str) -> None:
    error = fetch(tmp_path, response)

    assert error is not None and error.status == status and says in error.message


@pytest.mark.parametrize("private", [True, None])  # None: a response the guard did not mark
@pytest.mark.parametrize(
    "body_status", [(b"", 302), (b"", 404), (b"<html>admin</html>", 200), (b"x" * (MAX_BYTES + 1), 200)]
)
def test_a_private_host_s_answer_is_not_described(
    tmp_path: Path, private: bool | None, body_status: tuple[bytes, int]
) -> None:
    body, status = body_status

    error = fetch(tmp_path, answer(status, body, private=private))

    assert error is not None and (error.status, error.message) == (422, UNREACHABLE)


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("Connection refused"), httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("reset")],
)
def test_an_unreachable_host_reads_the_same_whatever_went_wrong(tmp_path: Path, failure: Exception) -> None:
    error = fetch(tmp_path, failure)

    assert error is not None and (error.status, error.message) == (422, UNREACHABLE)


def test_an_image_from_a_private_host_is_used(tmp_path: Path) -> None:
    assert fetch(tmp_path, answer(200, png(), private=True)) is None
