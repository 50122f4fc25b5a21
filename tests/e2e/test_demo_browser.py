"""The demo driver portal of `chargegate dev` in headless Chromium: a person picks the
emulated score, clicks "Start charging" and reads the decision. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Request, Response, expect, sync_playwright

from tests.e2e.test_dev_stack import DevStack

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
# Debian's chromium package, never a browser downloaded by `playwright install`.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with DevStack(tmp_path_factory.mktemp("dev-stack")) as dev:
        yield dev


@pytest.fixture
def page() -> Iterator[Page]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 520, "height": 760})
        finally:
            browser.close()


def start_charging(page: Page, score: str) -> None:
    page.get_by_label("reCAPTCHA score for the next token").fill(score)
    page.get_by_role("button", name="Start charging").click()


def test_allow_then_deny(dev_stack: DevStack, page: Page) -> None:
    requests: list[Request] = []
    responses: list[Response] = []
    # Playwright wants handlers it can tag: a lambda, not a bound builtin like list.append.
    page.on("request", lambda request: requests.append(request))
    page.on("response", lambda response: responses.append(response))
    ARTIFACTS.mkdir(exist_ok=True)

    page.goto(f"{dev_stack.url}/demo")
    expect(page.locator("#status")).to_have_text("Protected by reCAPTCHA Enterprise.")

    start_charging(page, "0.9")
    expect(page.locator("#result-title")).to_have_text("✓ Charging started")
    expect(page.locator("#decision")).to_have_text("allow")
    expect(page.locator("#reason")).to_have_text("score_ok")
    expect(page.locator("#score")).to_have_text("0.9")
    page.screenshot(path=ARTIFACTS / "demo-allow.png", full_page=True)

    start_charging(page, "0.1")
    expect(page.locator("#result-title")).to_have_text("✗ Charging refused")
    expect(page.locator("#decision")).to_have_text("deny")
    expect(page.locator("#reason")).to_have_text("score_below_threshold")
    expect(page.locator("#score")).to_have_text("0.1")
    page.screenshot(path=ARTIFACTS / "demo-deny.png", full_page=True)

    # The page ran the emulated enterprise.js and asked the demo backend, not chargegate.
    urls = [request.url for request in requests]
    assert any("/_google/recaptcha/enterprise.js?render=" in url for url in urls)
    assert sum(url.endswith("/demo/start") for url in urls) == 2
    assert not any("/sessions/authorize" in url for url in urls)
    # The backend key stayed on the server: in nothing the browser sent or received.
    backend_key = dev_stack.shell_values()["CHARGEGATE_BACKEND_KEY"]
    for request in requests:
        assert backend_key not in str(request.headers) + (request.post_data or "")
    for response in responses:
        assert backend_key not in response.text()
    assert backend_key not in page.content()
