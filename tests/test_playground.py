"""The playground in headless Debian chromium (playwright, system browser; never `playwright install`)."""

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

from test_server import server  # noqa: E402,F401 - the shared live server fixture

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def test_playground(server):  # noqa: F811
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        a = page.locator("#panelA")
        a.locator(".stage").first.wait_for(timeout=30000)
        bars = lambda: a.locator(".stages").inner_text()  # noqa: E731
        before = bars()
        assert "min_p" in before and "H=" in before
        # edit the chain: min_p 0.05 -> 0.5 changes the bars
        a.locator('input[data-k="min_p"]').fill("0.5")
        a.locator('input[data-k="min_p"]').dispatch_event("change")
        page.wait_for_function("b => document.querySelector('#panelA .stages').innerText !== b", arg=before, timeout=30000)
        # remove a stage
        n = a.locator(".chain li").count()
        a.locator(".chain li").first.locator('button[data-a="rm"]').click()
        assert a.locator(".chain li").count() == n - 1
        # step appends the chosen token
        a.locator("button.step").click()
        page.wait_for_function("() => document.querySelector('#panelA .appended').innerText.length > 1", timeout=30000)
        # generate both: coloured tokens with alternatives in the title
        page.click("#generateBoth")
        page.wait_for_function("() => document.querySelectorAll('#panelB .gen .tok').length > 0 && "
                               "document.querySelectorAll('#panelA .gen .tok').length > 0", timeout=60000)
        assert "p=" in page.locator("#panelA .gen .tok").first.get_attribute("title")
        out = Path(__file__).resolve().parents[1] / "artifacts"
        out.mkdir(exist_ok=True)
        page.screenshot(path=str(out / "playground.png"), full_page=True)
        browser.close()
    assert not errors, errors
