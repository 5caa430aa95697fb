"""The student kit holds what a student needs and nothing an instructor keeps, and works on its own.

`make student-kit` builds build/student-kit/ and build/student-kit.zip. The test builds a kit, scans every file
in it for every solution line, hidden-test line and hidden-test value of every assignment, then, in a fresh copy,
runs the kit's own `make lab` (HTTP 200, the exercises listed), `nbgrader validate` on a blank exercise (fails)
and on a solved one (passes), and the kit's `make test` on one unit.

The kit's `.venv` is built by the kit's own Makefile, but on top of this environment's packages (a .pth file
points at them), so the test does not download torch again; the kit installs its grader from its own folder.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import nbformat
import pytest

from conftest import ASSIGNMENTS, ROOT, tool_env
from test_secrecy import KNOWN_LEAKS, common_knowledge, hidden_values, normal, secrets, solution_windows

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kit") / "student-kit"
    done = subprocess.run([sys.executable, "-m", "grader", "student-kit", "--course", str(ROOT), "--out", str(out)],
                          capture_output=True, text=True, env=tool_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "student kit:" in done.stdout
    return out


def kit_text(kit: Path, part: str) -> str:
    """The text of one assignment's exercises in the kit (part="exercises/NN_topic"), or of everything else but the
    exercises and the lessons ("rest"): students read the lessons anyway, so they are common knowledge."""
    parts = []
    for path in kit.rglob("*"):
        where = path.relative_to(kit).parts
        if part == "rest" and where[0] in ("lessons", "exercises"):
            continue
        if part != "rest" and where[:2] != tuple(part.split("/")):
            continue
        if path.suffix == ".ipynb":
            parts += [cell.source for cell in nbformat.read(path, as_version=4).cells]
        elif path.is_file() and path.suffix in (".py", ".md", ".toml", ".cfg", "") and path.stat().st_size < 2_000_000:
            parts.append(path.read_text(errors="replace"))
    return "\n".join(normal(line) for part in parts for line in part.splitlines())


def test_the_kit_has_what_a_student_needs(kit):
    assert sorted(p.name for p in kit.iterdir()) == ["Makefile", "README.md", "docs", "exercises", "grader",
                                                     "lessons", "nbgrader_config.py", "pyproject.toml"]
    assert sorted(p.name for p in (kit / "exercises").iterdir()) == ASSIGNMENTS
    assert len(list((kit / "lessons").glob("*.ipynb"))) == len(list((ROOT / "lessons").glob("*.ipynb")))
    readme = (kit / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    assert '"torch==2.13.0"' in (kit / "pyproject.toml").read_text()
    with zipfile.ZipFile(kit.with_suffix(".zip")) as archive:
        names = archive.namelist()
    assert "student-kit/exercises/01_registration/registration.ipynb" in names
    assert not [n for n in names if n.split("/")[1] in ("solutions", "tests", "benchmarks")]


@pytest.mark.parametrize("assignment", [
    pytest.param(a, marks=pytest.mark.xfail(reason=KNOWN_LEAKS[a], strict=True)) if a in KNOWN_LEAKS else a
    for a in ASSIGNMENTS])
def test_the_kit_holds_no_solution_and_no_hidden_test(kit, assignment):
    """By test_secrecy's rules, on the kit itself: its exercises show no solution or hidden-test line; the rest (the
    grader, docs, README, Makefile, config) no two-line piece of a solution and no hidden-test line that the
    lessons and torch's source do not already show; nothing shows a hidden value or a marker."""
    known, found = common_knowledge(), secrets(assignment)
    released, rest = kit_text(kit, f"exercises/{assignment}"), kit_text(kit, "rest")
    leaked = {kind: [line for line in lines if line in released] for kind, lines in found.items()}
    leaked["solution"] += [piece for piece in solution_windows(assignment) if piece in rest and piece not in known]
    leaked["hidden test"] += [line for line in found["hidden test"] if line in rest and line not in known]
    assert not any(leaked.values()), f"the kit shows {assignment}'s secrets: {leaked}"
    text = released + "\n" + rest
    values = [value for value in hidden_values(assignment) if value in text]
    assert not values, f"the kit shows values of {assignment}'s hidden tests: {values}"
    assert not re.search(r"### (BEGIN|END) (SOLUTION|HIDDEN TESTS)", text)


def test_a_kit_is_never_written_into_the_course(tmp_path):
    done = subprocess.run([sys.executable, "-m", "grader", "student-kit", "--course", str(ROOT),
                           "--out", str(ROOT / "exercises" / "kit")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "outside the course's own folders" in done.stderr
    assert not (ROOT / "exercises" / "kit").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _solved(release: Path, source: Path, target: Path) -> None:
    """The release notebook with every answer cell filled in from the source (what a student submits)."""
    answers = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nbformat.read(source, as_version=4).cells
               if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
    nb = nbformat.read(release, as_version=4)
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in answers and cell.metadata.nbgrader.get("solution"):
            cell.source = "\n".join(line for line in answers[grade_id].splitlines()
                                    if not re.match(r"\s*### (BEGIN|END) SOLUTION", line))
    nbformat.write(nb, target)


@pytest.fixture(scope="module")
def fresh_kit(kit, tmp_path_factory) -> Path:
    """A copy of the kit whose .venv its own Makefile builds, over this environment's packages."""
    copy = tmp_path_factory.mktemp("fresh") / "kit"
    shutil.copytree(kit, copy)
    subprocess.run([sys.executable, "-m", "venv", str(copy / ".venv")], check=True)
    site = next((copy / ".venv" / "lib").glob("python3*/site-packages"))
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "_course_packages.pth").write_text("\n".join(ours) + "\n")
    kit_python = copy / ".venv" / "bin" / "python"
    for script in Path(sys.executable).parent.iterdir():  # the console scripts pip would have written (jupyter...)
        target = copy / ".venv" / "bin" / script.name
        if target.exists() or not script.is_file():
            continue
        with script.open("rb") as handle:
            first = handle.readline()
        if first.startswith(b"#!") and b"python" in first:
            target.write_text(f"#!{kit_python}\n" + script.read_text().split("\n", 1)[1])
            target.chmod(0o755)
    old = time.time() - 3600
    os.utime(copy / ".venv", (old, old))  # older than pyproject.toml: `make` runs the kit's own install
    env = tool_env()
    env["PATH"] = f"{copy / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    done = subprocess.run(["make", ".venv", f"PYTHON={sys.executable}"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    located = subprocess.run([str(copy / ".venv/bin/python"), "-c", "import grader; print(grader.__file__)"],
                             capture_output=True, text=True, cwd="/", env=env)
    assert located.stdout.strip() == str(copy / "grader" / "__init__.py"), located
    return copy


def test_make_lab_in_the_kit_serves_the_exercises(fresh_kit):
    port = _free_port()
    env = tool_env()
    env.update(JUPYTER_PORT=str(port), PATH=f"{fresh_kit / '.venv' / 'bin'}{os.pathsep}{env['PATH']}",
               JUPYTER_TOKEN="kit-test")
    server = subprocess.Popen(["make", "lab"], cwd=fresh_kit, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status, listing = time.monotonic() + 120, None, ""
        while time.monotonic() < deadline and status != 200:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token=kit-test", timeout=5) as reply:
                    status = reply.status
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/exercises?token=kit-test",
                                            timeout=5) as reply:
                    listing = reply.read().decode()
            except OSError:
                continue
        assert status == 200, server.stdout.read1().decode(errors="replace") if server.stdout else ""
        assert all(f'"{a}"' in listing for a in ASSIGNMENTS)
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


def test_validate_in_the_kit_fails_a_blank_exercise_and_passes_a_solved_one(fresh_kit, tmp_path):
    release = fresh_kit / "exercises" / "01_registration" / "registration.ipynb"
    solved = release.with_name("registration_solved.ipynb")
    _solved(release, ROOT / "solutions" / "01_registration" / "registration.ipynb", solved)
    env = tool_env()
    env["PATH"] = f"{fresh_kit / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    nbgrader = str(fresh_kit / ".venv" / "bin" / "nbgrader")
    blank = subprocess.run([nbgrader, "validate", str(release)], cwd=fresh_kit, env=env, capture_output=True,
                           text=True, timeout=300)
    assert "VALIDATION FAILED" in blank.stdout, blank.stdout + blank.stderr
    good = subprocess.run([nbgrader, "validate", str(solved)], cwd=fresh_kit, env=env, capture_output=True,
                          text=True, timeout=300)
    assert "Success! Your notebook passes all the tests." in good.stdout, good.stdout + good.stderr
    done = subprocess.run(["make", "test", "UNITS=01_registration"], cwd=fresh_kit, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ torch 2.13.0" in done.stdout
    assert re.search(r"· exercises/01_registration/registration\.ipynb: 0 of \d+ test cells pass", done.stdout)
    assert re.search(r"✓ exercises/01_registration/registration_solved\.ipynb: (\d+) of \1 test cells pass",
                     done.stdout), done.stdout
    solved.unlink()
