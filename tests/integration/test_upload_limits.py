"""What a hostile upload costs a live server: bodies are capped as they arrive (chunked ones too),
image inputs are refused by their decoded size before decoding, and whatever was uploaded comes
back as a picture or a download, never as a page on the API's origin."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.integration.harness import ServerProcess, wait_until
from tests.unit.test_image_inputs import RGBA, black_png

UPLOAD_CAP = 1 << 20
IMAGE_CAP = 256 * 1024
HUGE = 50 << 20  # what the client offers: 50 MB, far past every cap here
E1_FULL = "fal-ai/hidream-e1-full"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "HIDREAM_MAX_UPLOAD_BYTES": str(UPLOAD_CAP),
        "HIDREAM_MAX_IMAGE_BYTES": str(IMAGE_CAP),
        "HIDREAM_MODELS": "e1-full",  # E1 and OpenAI edits take submissions; no weights needed to refuse one
    }
    with ServerProcess(tmp_path_factory.mktemp("data"), env=env) as running:
        yield running


class ChunkedBody:
    """A request body with no length (httpx sends it chunked) that counts what the server took."""

    def __init__(self, total: int, *, head: bytes = b"") -> None:
        self.total = total
        self.head = head
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        if self.head:
            self.sent += len(self.head)
            yield self.head
        block = bytes(64 * 1024)
        while self.sent < self.total:
            self.sent += len(block)
            yield block


def multipart_head(field: str, file_name: str) -> bytes:
    """The start of a form whose one file part never ends: the parser has to stream it."""
    return (
        f'--cut\r\nContent-Disposition: form-data; name="{field}"; filename="{file_name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()


MULTIPART = {"content-type": "multipart/form-data; boundary=cut"}


@pytest.mark.parametrize(
    ("path", "headers", "head", "shape"),
    [
        pytest.param("/files/upload", {"x-fal-file-name": "big.bin"}, b"", "detail", id="fal-storage"),
        pytest.param("/v1/files", MULTIPART, multipart_head("content", "big.png"), "title", id="replicate-files"),
        pytest.param("/v1/images/edits", MULTIPART, multipart_head("image", "big.png"), "error", id="openai-edits"),
    ],
)
def test_a_chunked_body_past_the_cap_is_refused_before_it_is_all_sent(
    server: ServerProcess, path: str, headers: dict[str, str], head: bytes, shape: str
) -> None:
    body = ChunkedBody(HUGE, head=head)

    response = httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=60)

    assert response.status_code == 413, response.text
    assert shape in response.json()  # in the dialect's own error shape
    assert response.headers["connection"] == "close"  # the rest is never read, so the connection ends
    # What the socket buffers took before the server hung up, not the 50 MB offered.
    assert body.sent < HUGE // 4, f"{body.sent} bytes were taken"


def test_a_chunked_upload_within_the_cap_is_stored(server: ServerProcess) -> None:
    body = ChunkedBody(UPLOAD_CAP - 64 * 1024)

    response = httpx.post(f"{server.url}/files/upload", content=body, headers={"x-fal-file-name": "ok.bin"})

    assert response.status_code == 200, response.text
    assert httpx.get(response.json()["access_url"]).content == bytes(body.sent)


def data_uri(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def test_an_image_too_large_decoded_is_refused_from_its_header(server: ServerProcess) -> None:
    """4096x4096 is inside the pixel limit; at 16 bits a channel it would take 128 MiB decoded,
    from 130 KB of PNG. The same pixels at 8 bits (64 MiB) fit."""
    deep = black_png(4096, 4096, bit_depth=16, colour_type=RGBA)
    shallow = black_png(4096, 4096, bit_depth=8, colour_type=RGBA)

    fal = httpx.post(f"{server.url}/{E1_FULL}", json={"image_url": data_uri(deep), "edit_instruction": "x"})
    openai = httpx.post(
        f"{server.url}/v1/images/edits",
        files={"image": ("deep.png", deep, "image/png")},
        data={"model": "hidream-e1-full", "prompt": "x"},
    )
    fits = httpx.post(f"{server.url}/{E1_FULL}", json={"image_url": data_uri(shallow), "edit_instruction": "x"})

    assert len(deep) < IMAGE_CAP
    assert fal.status_code == 413, fal.text
    assert "134217728 bytes decoded" in fal.json()["detail"]
    assert openai.status_code == 413, openai.text
    assert "16 bits a channel" in openai.json()["error"]["message"]
    assert fits.status_code == 200, fits.text


def uploaded(server: ServerProcess, name: str, content: bytes) -> str:
    response = httpx.post(f"{server.url}/files/upload", content=content, headers={"x-fal-file-name": name})
    assert response.status_code == 200, response.text
    url: str = response.json()["access_url"]
    return url


def png(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buffer, format="GIF")
    return buffer.getvalue()


SANDBOX = "default-src 'none'; sandbox"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("evil.html", b"<html><script>fetch('/v1/webhooks/default/secret')</script></html>"),
        ("evil.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(document.domain)"/>'),
        ("evil.js", b"alert(document.cookie)"),
        ("evil.png", b"<html>a page named like a picture</html>"),
    ],
    ids=["html", "svg", "js", "html-named-png"],
)
def test_an_upload_that_is_no_image_comes_back_as_a_download(server: ServerProcess, name: str, content: bytes) -> None:
    served = httpx.get(uploaded(server, name, content))

    assert served.status_code == 200
    assert served.content == content
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"] == f'attachment; filename="{name}"'
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-security-policy"] == SANDBOX
    assert "immutable" not in served.headers["cache-control"]


@pytest.mark.parametrize(
    ("name", "content", "media_type"),
    [("photo.png", png(), "image/png"), ("photo.html", png(), "image/png"), ("picture.gif", gif(), "image/gif")],
    ids=["png", "png-named-html", "gif"],
)
def test_an_uploaded_image_is_served_as_what_its_bytes_are(
    server: ServerProcess, name: str, content: bytes, media_type: str
) -> None:
    served = httpx.get(uploaded(server, name, content))

    assert served.headers["content-type"] == media_type  # the bytes decide, not the name
    assert "content-disposition" not in served.headers
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-security-policy"] == SANDBOX


def test_a_jobs_output_keeps_its_image_type_and_caching(server: ServerProcess) -> None:
    handle = httpx.post(f"{server.url}/hidream/noop", json={"output_format": "webp"}).json()
    wait_until(lambda: httpx.get(handle["status_url"]).json()["status"] == "COMPLETED")
    result: dict[str, Any] = httpx.get(handle["response_url"]).json()

    served = httpx.get(result["images"][0]["url"])

    assert served.headers["content-type"] == "image/webp"
    assert served.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-security-policy"] == SANDBOX


@pytest.mark.parametrize(
    "path", ["/files/upload-nope/x.html", f"/files/{'a' * 300}/x.png"], ids=["unknown", "too-long"]
)
def test_a_missing_file_is_a_404_with_the_same_guards(server: ServerProcess, path: str) -> None:
    served = httpx.get(f"{server.url}{path}")

    assert served.status_code == 404
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-security-policy"] == SANDBOX
