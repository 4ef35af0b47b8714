"""The official JavaScript clients (npm's @fal-ai/client, openai, replicate, wavespeed) against a live
server: tests/js/clients.mjs makes each call the README's JavaScript snippets make, in one node
process, and reports each as a named check; each check is asserted here on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import ServerProcess

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "clients.mjs"
MIN_NODE_MAJOR = 18  # Debian bookworm's nodejs; the clients' own minimum
CHECK_TIMEOUT_SECONDS = 60  # one call, a first model load on a busy machine included
RUN_TIMEOUT_SECONDS = 300

pytestmark = pytest.mark.timeout(420)  # the first test also waits for the server and the whole run

CHECKS = [
    "fal.subscribe",
    "fal.subscribe.streaming",
    "fal.run",
    "fal.stream",
    "fal.storage.upload",
    "fal.queue",
    "openai.images.generate",
    "openai.images.generate.stream",
    "openai.images.edit",
    "openai.images.edit.stream",
    "replicate.run",
    "replicate.models.get",
    "replicate.run.version",
    "replicate.stream",
    "wavespeed.run",
    # The README's "JavaScript clients" snippets, run as written (but for the server's URL).
    "readme.@fal-ai/client",
    "readme.openai",
    "readme.replicate",
    "readme.wavespeed",
    "process.no_unhandled_errors",
]


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, or a failure that says how to get it (CI installs it: no skipping)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `bash .ci/setup` (it installs Debian's nodejs and npm)")
    major = subprocess.run([node, "-p", "process.versions.node"], capture_output=True, text=True, check=True)
    if int(major.stdout.split(".")[0]) < MIN_NODE_MAJOR:
        pytest.fail(
            f"node {major.stdout.strip()} is older than {MIN_NODE_MAJOR}: the JavaScript clients need a newer one"
        )
    if not (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `bash .ci/setup` (npm ci in tests/js)")
    return node


@pytest.fixture(scope="module")
def js_server(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Iterator[ServerProcess]:
    # The checks use four models (I1 Full, Dev and Fast, E1 Full): keep them loaded, not reloaded per
    # switch. Tiny steps take milliseconds: flush progress and previews often enough for the streams
    # to carry some before the result.
    env = {"HIDREAM_MAX_LOADED_PIPELINES": "4", "HIDREAM_HEARTBEAT_SECONDS": "0.02"}
    with ServerProcess(tmp_path_factory.mktemp("js"), weights=str(tiny_weights), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def report(node: str, js_server: ServerProcess) -> dict[str, Any]:
    """One run of every check (one node process: starting node and the clients once is the lean way)."""
    finished = subprocess.run(
        [node, str(SCRIPT), "--timeout", str(CHECK_TIMEOUT_SECONDS)],
        cwd=JS_DIR,
        env={**os.environ, "HIDREAM_SERVER_URL": js_server.url},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    lines = finished.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"clients.mjs printed no report (exit {finished.returncode}):\n{finished.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_the_report_names_every_check(report: dict[str, Any]) -> None:
    assert list(report["checks"]) == CHECKS


@pytest.mark.parametrize("check", CHECKS)
def test_js_client_call(report: dict[str, Any], check: str) -> None:
    outcome = report["checks"].get(check, "not run")
    assert outcome == "ok", f"{check}: {outcome}"


README = Path(__file__).resolve().parents[2] / "README.md"
README_PYTHON_SECTIONS = ("From Python, with fal's own client:", "### Other clients: Replicate, WaveSpeed, OpenAI")


def _readme_python_block(after: str) -> str:
    """The first python code block after `after` in the README."""
    text = README.read_text()
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    return text[start : text.index("```", start)]


@pytest.mark.parametrize("section", README_PYTHON_SECTIONS)
def test_readme_python_snippets_run_as_written(js_server: ServerProcess, section: str) -> None:
    """The README's Python snippets (the official Python clients) run as written, but for the
    server's URL, and print or return images."""
    code = _readme_python_block(section).replace("http://localhost:8000", js_server.url)
    done = subprocess.run(
        [sys.executable, "-c", code + "\nprint('snippet finished')"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.rstrip().endswith("snippet finished")
