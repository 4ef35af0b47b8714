"""A real headless Chromium for the playground tests: Debian's `chromium`, driven by Playwright.

Playwright's own browser download does not work offline; `.ci/setup` installs Debian's package
instead, and a missing browser fails the tests with that advice rather than skipping them. Every
page refuses requests to anything but loopback, and a test fails on any uncaught script error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no calls home on a machine without internet
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
VIEWPORT = {"width": 1360, "height": 900}
SCREENSHOTS_VARIABLE = "PLAYGROUND_SCREENSHOTS"  # a directory: save the main states there (docs/)


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        pytest.fail(
            "Debian's chromium is not installed, and the playground tests need it: run `bash .ci/setup` "
            "(it installs the chromium package), or `apt-get install chromium`",
            pytrace=False,
        )
    return found


@contextlib.contextmanager
def launched_chromium() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageWatch:
    """What a page did that a test must not let pass: script errors and requests off this machine."""

    errors: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def console(self, kind: str, text: str) -> None:
        # Chromium logs every 4xx answer as "Failed to load resource"; the tests provoke those on purpose.
        if kind == "error" and not text.startswith("Failed to load resource"):
            self.errors.append(text)

    def check(self) -> None:
        assert self.blocked == [], f"the page reached off this machine: {self.blocked}"
        assert self.errors == [], f"the page logged errors: {self.errors}"


def open_page(browser: Browser, url: str, watch: PageWatch) -> Page:
    context = browser.new_context(viewport=VIEWPORT)

    def only_loopback(route: Route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            route.continue_()
        else:
            watch.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    page.on("console", lambda message: watch.console(message.type, message.text))
    page.goto(url)
    return page


def screenshot(page: Page, name: str) -> None:
    """Save the page as docs would show it, when PLAYGROUND_SCREENSHOTS names a directory."""
    directory = os.environ.get(SCREENSHOTS_VARIABLE)
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")  # the top bar is sticky: a scrolled page draws it mid-picture
        page.screenshot(path=str(Path(directory) / f"playground-{name}.png"), full_page=True)
