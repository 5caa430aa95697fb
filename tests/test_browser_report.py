"""The class report in a real browser: Debian's Chromium (headless, Playwright) opens report.html of the graded
class (synthetic_course.shared_class) from disk, with no console error, no request beyond the page itself and
its embedded figures, every figure drawn; screenshots go to artifacts/browser/."""

import subprocess
import sys

import pytest

from conftest import tool_env
from synthetic_course import shared_class
from test_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, sync_api  # skips this file too where Chromium is missing

pytestmark = [pytest.mark.notebooks, pytest.mark.browser]


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    course = shared_class(tmp_path_factory)
    out = tmp_path_factory.mktemp("browser-report")
    done = subprocess.run([sys.executable, "-m", "grader", "report", "--out", str(out), "--quiet"], cwd=course,
                          env=tool_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out / "report.html"


def test_the_report_opens_in_chromium_without_errors(page_file):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            errors, requests = [], []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SHOTS / "report-1-top.png")
            drawn = page.evaluate("() => [...document.images].map(i => i.complete && i.naturalWidth > 0)")
            page.locator("#checks").scroll_into_view_if_needed()
            page.screenshot(path=SHOTS / "report-2-checks.png")
            page.screenshot(path=SHOTS / "report-3-full.png", full_page=True)
            headings = page.locator("h2").all_inner_texts()
        finally:
            browser.close()
    assert errors == []
    assert all(url == page_file.as_uri() or url.startswith("data:") for url in requests), requests
    assert drawn == [True] * 4
    assert headings == ["Scores", "Pass rate of each test cell",
                        "Checks: how often each failed, and the most common diagnoses", "Flagged submissions",
                        "Grading time per notebook", "Students who fail the same check in several assignments",
                        "Similar answers, to review"]
