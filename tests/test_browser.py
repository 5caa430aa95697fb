"""The course in a real browser: Debian's Chromium driven by Playwright, against `make lab`.

A student's path (a lesson, then an exercise from stub to verdict, then nbgrader's Validate
button) and an instructor's (the formgrader lists the assignments). One screenshot per step goes
to artifacts/browser/ (git-ignored).
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, tool_env

pytestmark = [pytest.mark.notebooks, pytest.mark.browser]

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SHOTS = ROOT / "artifacts" / "browser"
TOKEN = "inside-nn-module-browser-test"
EXERCISE = "exercises/01_registration/registration.ipynb"
SOLUTION = "solutions/01_registration/registration.ipynb"
LESSON = "lessons/01_registration.ipynb"
# Flags for a closed network, as root, with no screen (see the machine notes in the README).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    reason = f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)"
    if os.environ.get("REQUIRE_BROWSER"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`make lab` on a scratch copy of the course (the browser's edits never touch the repo)."""
    course = tmp_path_factory.mktemp("lab")
    for name in ("Makefile", "pyproject.toml", "nbgrader_config.py"):
        shutil.copy2(ROOT / name, course)
    for folder in ("lessons", "solutions", "exercises"):
        shutil.copytree(ROOT / folder, course / folder)
    (course / ".venv").symlink_to(ROOT / ".venv")
    # User settings of this scratch lab: no "fetch Jupyter news?" toast over the page, and every
    # cell kept in the page (JupyterLab otherwise renders only the cells in view).
    settings = course / "lab-settings" / "@jupyterlab"
    for extension, values in (("apputils-extension/notification", '{"fetchNews": "false"}'),
                              ("notebook-extension/tracker", '{"windowingMode": "none"}')):
        (settings / extension).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{extension}.jupyterlab-settings").write_text(values)
    port = _free_port()
    env = tool_env() | {"JUPYTER_TOKEN": TOKEN, "JUPYTER_PORT": str(port), "BROWSER": "true",
                        "JUPYTERLAB_SETTINGS_DIR": str(course / "lab-settings")}
    log = open(course / "lab.log", "w")
    server = subprocess.Popen(["make", "lab"], cwd=course, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`make lab` exited {server.returncode}:\n{(course / 'lab.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        pytest.fail(f"`make lab` did not listen on {port} within 120 s")
    yield base, course
    os.killpg(server.pid, 15)
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, lab, request):
    base, _ = lab
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{base}/lab?token={TOKEN}")  # sets the auth cookie
    page.shot = lambda step: _screenshot(page, request.node.name, step)
    yield page
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        page.shot("failed")
    context.close()


def _screenshot(page, test: str, step: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{test.removeprefix('test_')}-{step}.png")


def _open_notebook(page, base: str, path: str):
    """Open one notebook in a fresh workspace (no tabs restored from an earlier test)."""
    workspace = Path(path).stem.replace("_", "-")
    page.goto(f"{base}/lab/workspaces/{workspace}/tree/{path}?reset")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    _wait_idle(page)


def _menu(page, menu: str, command: str):
    """Run a JupyterLab command from the main menu, as a user would."""
    page.locator("#jp-menu-panel div.lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(f"#jp-mainmenu-{menu.lower()} li[data-command='{command}']").click()


def _save(page, course: Path, path: str) -> nbformat.NotebookNode:
    """Save from the UI, then read what JupyterLab wrote."""
    before = (course / path).stat().st_mtime_ns
    page.keyboard.press("Control+S")
    deadline = time.monotonic() + 30
    while (course / path).stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.2)
    return nbformat.read(course / path, as_version=4)


def _wait_idle(page, timeout: float = 180_000):
    """Until the status bar reports the notebook's kernel as Idle."""
    page.locator("#jp-main-statusbar", has_text="| Idle").first.wait_for(timeout=timeout)


def _wait_all_run(page, timeout: float = 300_000):
    """Until no cell shows the busy prompt [*] and the kernel is idle."""
    page.wait_for_function(
        """() => ![...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
                 .some(p => p.textContent.includes('[*]'))""", timeout=timeout)
    _wait_idle(page, timeout)


def _cell(page, index: int):
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def _run_cell(page, index: int):
    cell = _cell(page, index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        """(i) => { const p = document.querySelectorAll('.jp-Notebook .jp-Cell')[i]
                     .querySelector('.jp-InputPrompt'); return p && /\\[\\d+\\]/.test(p.textContent); }""",
        arg=index, timeout=180_000)
    _wait_idle(page)
    return cell


def _replace_source(page, index: int, source: str):
    cell = _cell(page, index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(source)


def _without_markers(source: str) -> str:
    """A reference answer as a student would type it: no nbgrader solution markers."""
    return "\n".join(line for line in source.splitlines() if "### BEGIN SOLUTION" not in line
                     and "### END SOLUTION" not in line)


def _scroll_to_end(cell):
    cell.evaluate("c => c.scrollIntoView({block: 'end'})")


def _errors(page) -> list[str]:
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()


def _index(notebook: str) -> dict[str, int]:
    cells = nbformat.read(ROOT / notebook, as_version=4).cells
    return {c.metadata.get("nbgrader", {}).get("grade_id", c.get("id")): i for i, c in enumerate(cells)}


def _validate(page) -> str:
    page.locator("jp-button.validate-button, button.validate-button").first.click()
    dialog = page.locator(".nbgrader-SuccessDialog, .nbgrader-ErrorDialog").first
    dialog.wait_for(timeout=300_000)
    return dialog.get_attribute("class"), dialog.inner_text()


def _assert_short(outputs: list[str]) -> None:
    """What a failed check shows in the page: at most 10 lines, and no traceback, grader or torch frame."""
    lines = "\n".join(outputs).strip().splitlines()
    assert len(lines) <= 10, f"{len(lines)} lines:\n" + "\n".join(lines)
    assert not any(marker in line for line in lines for marker in ("Traceback", "File \"", "grader/", "site-packages",
                                                                   "During handling")), lines


def test_lesson_runs_without_errors(lab, page):
    base, course = lab
    _open_notebook(page, base, LESSON)
    page.shot("1-opened")
    _menu(page, "Run", "runmenu:run-all")
    _wait_all_run(page)
    page.shot("2-ran-all")
    assert _errors(page) == []
    code = [c for c in _save(page, course, LESSON).cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "not every cell ran, in order"
    errors = [o for c in code for o in c.outputs if o.output_type == "error" or o.get("name") == "stderr"]
    assert errors == []


def test_exercise_from_stub_to_verdict_and_validate(lab, page):
    base, course = lab
    where = _index(EXERCISE)
    reference = {c.metadata["nbgrader"]["grade_id"]: _without_markers(c.source)
                 for c in nbformat.read(ROOT / SOLUTION, as_version=4).cells
                 if c.metadata.get("nbgrader", {}).get("solution")}
    _open_notebook(page, base, EXERCISE)
    page.shot("1-opened")

    # The blank stub: the visible check answers with a diagnosis and a hint, not a bare assert.
    _run_cell(page, where["setup"])
    _run_cell(page, where["counting_functions"])
    check = _run_cell(page, where["test_linear_params"])
    _scroll_to_end(check)
    page.shot("2-stub-hint")
    failure = check.locator(".jp-OutputArea-output").all_inner_texts()
    assert any("Hint:" in text or "replace this line" in text for text in failure), failure
    _assert_short(failure)

    # A wrong answer (the bias forgotten): the diagnosis alone, in at most 10 lines, no traceback.
    _replace_source(page, where["counting_functions"], reference["counting_functions"]
                    + "\n\ndef linear_params(in_features, out_features):\n    return in_features * out_features\n")
    _run_cell(page, where["counting_functions"])
    check = _run_cell(page, where["test_linear_params"])
    _scroll_to_end(check)
    page.shot("2b-wrong-answer")
    failure = check.locator(".jp-OutputArea-output").all_inner_texts()
    assert any(text.startswith("✗ counting trainable parameters") for text in failure), failure
    _assert_short(failure)

    # nbgrader's Validate on the blank notebook fails.
    _save(page, course, EXERCISE)
    kind, text = _validate(page)
    page.shot("3-validate-blank")
    assert "ErrorDialog" in kind, text
    page.locator(".nbgrader-ErrorDialog button.jp-Dialog-button").first.click()

    # The student types the reference answers in, runs the check again and sees the verdict.
    for grade_id, source in reference.items():
        _replace_source(page, where[grade_id], source)
    page.shot("4-answers-typed")
    _run_cell(page, where["counting_functions"])
    check = _run_cell(page, where["test_linear_params"])
    _scroll_to_end(check)
    page.shot("5-verdict")
    verdict = check.locator(".jp-OutputArea-output").all_inner_texts()
    assert any(text.startswith("✓") for text in verdict), verdict

    # Saved and validated, the solved notebook passes.
    _save(page, course, EXERCISE)
    kind, text = _validate(page)
    page.shot("6-validate-solved")
    assert "SuccessDialog" in kind, text


def test_formgrader_lists_the_assignments(lab, page):
    base, course = lab
    page.goto(f"{base}/formgrader/manage_assignments")
    assignments = sorted(p.name for p in (course / "solutions").iterdir() if p.is_dir())
    for assignment in assignments:
        page.locator("table td", has_text=assignment).first.wait_for()
    page.shot("1-assignments")
    assert page.locator("body", has_text="Loading, please wait").count() == 0
