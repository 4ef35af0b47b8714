"""The playground in a real headless Chromium, against a live server, as a person would use it."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect
from pydantic import BaseModel, Field

from hidream_service.models.image_fields import image_fields
from tests.integration.browser import PageWatch, open_page, screenshot
from tests.integration.harness import Reply, ServerProcess, WebhookReceiver, wait_until

GENERATION_TIMEOUT_MS = 180_000  # tiny weights on a busy two-core machine
RECORD_PROGRESS = """() => {
  window.progressSeen = [];
  const bar = document.getElementById("progress");
  new MutationObserver(() => window.progressSeen.push(Number(bar.getAttribute("aria-valuenow"))))
    .observe(bar, { attributes: true, attributeFilter: ["aria-valuenow"] });
  window.previewsSeen = [];
  const preview = document.getElementById("preview");
  new MutationObserver(() => preview.src && window.previewsSeen.push(preview.src))
    .observe(preview, { attributes: true, attributeFilter: ["src"] });
}"""


@pytest.fixture(scope="module")
def noop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("browser-noop")) as running:
        yield running


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[ServerProcess]:
    # Tiny steps take milliseconds: flush their logs often enough for the bar to show them.
    env = {"HIDREAM_HEARTBEAT_SECONDS": "0.02"}
    with ServerProcess(tmp_path_factory.mktemp("browser-tiny"), weights=str(tiny_weights), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HIDREAM_API_KEYS": "alice-key"}
    with ServerProcess(tmp_path_factory.mktemp("browser-keyed"), env=env) as running:
        yield running


def playground(browser: Browser, server: ServerProcess, watch: PageWatch, endpoint: str) -> Page:
    page = open_page(browser, f"{server.url}/?endpoint={endpoint}", watch)
    expect(page.locator("#endpoint")).to_have_value(endpoint)
    return page


def progress_seen(page: Page) -> list[float]:
    seen: list[float] = page.evaluate("window.progressSeen")
    return seen


def test_generate_with_tiny_weights_shows_the_progress_and_the_image(
    browser: Browser, watch: PageWatch, tiny_server: ServerProcess
) -> None:
    page = playground(browser, tiny_server, watch, "fal-ai/hidream-i1-fast")
    page.fill("#field-prompt", "a lighthouse at dusk")
    page.fill("#field-num_inference_steps", "50")
    page.fill("#field-seed", "7")
    page.evaluate(RECORD_PROGRESS)

    page.click("#submit")

    image = page.locator("#images img")
    expect(image).to_have_count(1, timeout=GENERATION_TIMEOUT_MS)
    expect(page.locator("#run-status")).to_have_text("done")
    expect(page.locator("#images figcaption")).to_contain_text("64×64")
    expect(page.locator("#result-meta")).to_contain_text("seed 7")
    expect(page.locator("#result-meta")).to_contain_text("inference")
    assert image.evaluate("img => img.complete && img.naturalWidth") == 64
    seen = progress_seen(page)
    assert any(0 < value < 100 for value in seen), f"the bar never stood between empty and full: {seen}"
    assert seen[-1] == 100
    expect(page.locator("#logs")).to_contain_text("step 50/50")
    previews = page.evaluate("window.previewsSeen")
    assert previews and all(src.startswith("data:image/jpeg;base64,") for src in previews), previews
    expect(page.locator("#preview")).to_be_hidden()  # the result replaced it
    screenshot(page, "generate")


def test_queue_position_then_a_moving_progress_bar_then_cancel(
    browser: Browser, watch: PageWatch, noop_server: ServerProcess
) -> None:
    slow = {"num_steps": 300, "step_seconds": 0.1}
    ahead = [httpx.post(f"{noop_server.url}/hidream/noop", json=slow).json() for _ in range(2)]  # one runs, one waits
    running = f"{noop_server.url}/v1/requests/{ahead[0]['request_id']}"
    wait_until(lambda: httpx.get(running).json()["status"] == "IN_PROGRESS")  # a worker still starting has not taken it
    page = playground(browser, noop_server, watch, "hidream/noop")
    page.fill("#field-prompt", "pretend to work")
    page.fill("#field-num_steps", "100")  # 10 s: time to watch it move, then cancel it well before the end
    page.fill("#field-step_seconds", "0.1")
    page.evaluate(RECORD_PROGRESS)

    page.click("#submit")
    expect(page.locator("#progress-label")).to_have_text("1 ahead in the queue")
    expect(page.locator("#run-status")).to_have_text("queued")
    for handle in ahead:
        httpx.put(handle["cancel_url"])
    page.wait_for_function("() => window.progressSeen.some(value => value > 0)")
    first = max(progress_seen(page))
    page.wait_for_function(f"() => window.progressSeen.some(value => value > {first} && value >= 25)")
    expect(page.locator("#progress-label")).to_contain_text("step ")
    screenshot(page, "progress")
    page.click("#cancel")

    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#run-error")).to_contain_text("Cancelled")
    assert max(progress_seen(page)) < 100
    request_id = page.inner_text("#run-id")
    assert httpx.get(f"{noop_server.url}/v1/requests/{request_id}").json()["status"] == "CANCELLED"


def test_a_failed_webhook_shows_in_the_jobs_view_and_replays(
    browser: Browser, watch: PageWatch, noop_server: ServerProcess
) -> None:
    answer = {"status": 503}
    replicate = httpx.post(f"{noop_server.url}/v1/models/hidream/noop/predictions", json={"input": {"prompt": "x"}})
    with WebhookReceiver(responder=lambda path, nth: Reply(answer["status"])) as receiver:
        page = playground(browser, noop_server, watch, "hidream/noop")
        page.fill("#field-prompt", "tell my receiver")
        page.click("#more-options summary")
        page.fill("#webhook-url", receiver.url())
        page.click("#submit")
        expect(page.locator("#run-status")).to_have_text("done")
        request_id = page.inner_text("#run-id")

        page.click("#tab-jobs")
        row = page.locator(f'tr[data-request-id="{request_id}"]')
        expect(row.locator(".webhook .badge")).to_have_text("failed", timeout=30_000)
        row.click()
        expect(page.locator(".details-row .attempts tbody tr")).to_have_count(4)
        expect(page.locator(f'tr[data-request-id="{replicate.json()["id"]}"]')).to_contain_text("replicate")
        screenshot(page, "jobs")

        answer["status"] = 200
        row.locator("button.replay").click()

        expect(row.locator(".webhook .badge")).to_have_text("delivered")
        expect(page.locator(".toast")).to_contain_text("Webhook delivered (HTTP 200)")
        hooks = receiver.for_path("/hook")
        assert len(hooks) == 5
        assert {hook.headers["webhook-id"] for hook in hooks} == {hooks[0].headers["webhook-id"]}


def test_a_rejected_input_is_shown_beside_its_field(
    browser: Browser, watch: PageWatch, noop_server: ServerProcess
) -> None:
    page = playground(browser, noop_server, watch, "hidream/noop")
    page.fill("#field-num_steps", "5000")

    page.click("#submit")

    expect(page.locator('[data-field="num_steps"] .field-error')).to_contain_text("less than or equal to 1000")
    expect(page.locator("#run-body")).to_be_hidden()


def test_an_api_key_is_asked_for_and_kept_for_this_tab_only(
    browser: Browser, watch: PageWatch, keyed_server: ServerProcess
) -> None:
    page = open_page(browser, f"{keyed_server.url}/", watch)
    expect(page.locator("#key-dialog")).to_be_visible()
    screenshot(page, "api-key")

    page.fill("#key-input", "not-the-key")
    page.click("#key-save")
    expect(page.locator("#key-reason")).to_contain_text("invalid API key")
    page.fill("#key-input", "alice-key")
    page.click("#key-save")

    expect(page.locator("#endpoint")).to_have_value("hidream/noop")
    page.click("#submit")
    expect(page.locator("#run-status")).to_have_text("done")
    assert page.evaluate("sessionStorage.getItem('hidream.apiKey')") == "alice-key"
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []
    request_id = page.inner_text("#run-id")
    owned = httpx.get(f"{keyed_server.url}/v1/requests/{request_id}", headers={"Authorization": "Key alice-key"})
    assert owned.status_code == 200
    another_tab = page.context.new_page()
    another_tab.goto(f"{keyed_server.url}/")
    expect(another_tab.locator("#key-dialog")).to_be_visible()


def test_the_python_snippets_run_as_shown(browser: Browser, watch: PageWatch, tiny_server: ServerProcess) -> None:
    page = playground(browser, tiny_server, watch, "fal-ai/hidream-i1-dev")
    page.fill("#field-prompt", "a fox")
    page.fill("#field-num_inference_steps", "2")
    page.fill("#field-seed", "11")
    outputs = {}
    for kind in ("fal", "openai"):
        page.click(f'.segment[data-snippet="{kind}"]')
        code = page.inner_text("#snippet")
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "HIDREAM_KEY": "unused-on-an-open-server"},
            capture_output=True,
            text=True,
            timeout=GENERATION_TIMEOUT_MS / 1000,
        )
        assert done.returncode == 0, f"{kind} snippet failed:\n{code}\n{done.stderr}"
        outputs[kind] = done.stdout

    assert f"{tiny_server.url}/files/" in outputs["fal"] and outputs["fal"].strip().endswith("11")
    assert f"{tiny_server.url}/files/" in outputs["openai"]
    page.click('.segment[data-snippet="curl"]')
    expect(page.locator("#snippet")).to_contain_text(f"curl -s -X POST '{tiny_server.url}/fal-ai/hidream-i1-dev'")


class EditingInput(BaseModel):
    """The shape of an editing endpoint's input, as the catalogue would publish it."""

    prompt: str
    image_url: str = Field(description="URL of the image to edit.")


def test_an_image_input_uploads_a_local_file_and_takes_its_url(
    browser: Browser, watch: PageWatch, noop_server: ServerProcess
) -> None:
    schema = EditingInput.model_json_schema()
    model = {
        "id": "example/edit",
        "input_schema": schema,
        "defaults": {},
        "image_fields": [field.to_json() for field in image_fields(schema)],
    }
    page = open_page(browser, f"{noop_server.url}/", watch)
    page.evaluate(
        """async (model) => {
          const { buildForm } = await import("/playground/form.js");
          const box = document.createElement("div");
          box.id = "editing-form";
          document.body.prepend(box);
          window.editingForm = buildForm(model, box, document.createElement("div"), () => {});
        }""",
        model,
    )
    picture = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(picture, format="PNG")

    page.set_input_files(
        '#editing-form [data-field="image_url"] input[type=file]',
        files=[{"name": "cat.png", "mimeType": "image/png", "buffer": picture.getvalue()}],
    )

    url_box = page.locator("#editing-form #field-image_url")
    expect(url_box).to_have_value(re.compile(rf"^{re.escape(noop_server.url)}/files/upload-[0-9a-f]+/cat\.png$"))
    url = url_box.input_value()
    assert httpx.get(url).content == picture.getvalue()
    assert page.evaluate("window.editingForm.values()")["image_url"] == url
    expect(page.locator("#editing-form .thumb")).to_have_count(1)
    url_box.fill("https://example.com/elsewhere.png")
    url_box.dispatch_event("change")
    expect(page.locator("#editing-form .thumb")).to_have_count(0)  # no thumbnail fetched from another host
