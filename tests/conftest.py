"""Shared fixtures: the repo's paths, and the nbgrader CLI run the way an instructor runs it."""

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
# nbgrader's Gradebook runs `alembic` by name, in this process too: this interpreter's bin/ first on PATH, as
# `make test` has it, also when pytest is started as .venv/bin/python -m pytest.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())


# Files whose tests take longest, started first (make test: --dist loadfile --no-loadscope-reorder) so that no
# worker is left with one of them at the end. test_feedback reads the grading lab that test_attacks builds.
LONGEST_FIRST = ("test_attacks.py", "test_bad_submissions.py", "test_autograde.py", "test_cluster.py",
                 "test_assignments.py", "test_mutants.py", "test_report.py", "test_answer_corpus.py", "test_lessons_portable.py", "test_student_kit.py",
                 "test_browser.py", "test_devices_and_cli.py")
LAST = ("test_feedback.py",)


def pytest_collection_modifyitems(items):
    """Mark nbval's lesson cells (they start kernels) for `make test-fast` to leave out; longest files first."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebooks)

    def rank(item):
        name = item.path.name
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name)
        return len(LONGEST_FIRST) + (name in LAST)

    items.sort(key=rank)  # stable: the order within a file stays


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures can react to a failed test (screenshots)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# What an instructor's shell may hold after any torch.compile: graded code must not try to write there.
OUTSIDE_CACHE = Path(tempfile.gettempdir()) / "inside-nn-module-tests" / "torchinductor"


def tool_env() -> dict:
    """The environment with this interpreter's bin/ first (nbgrader calls `alembic` by name).

    TORCHINDUCTOR_CACHE_DIR is set, as torch sets it in any process that compiled, to a folder that graded code may
    not write: the grading kernels must use their own.
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TORCHINDUCTOR_CACHE_DIR"] = str(OUTSIDE_CACHE)
    return env


def nbgrader(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real nbgrader CLI; on failure, show its output."""
    done = subprocess.run([Path(sys.executable).parent / "nbgrader", *args], cwd=cwd, env=tool_env(),
                          capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        pytest.fail(f"nbgrader {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def course(tmp_path_factory) -> Path:
    """A scratch course: the repo's config and solutions, with every assignment generated into exercises/."""
    root = tmp_path_factory.mktemp("course")
    shutil.copy(ROOT / "nbgrader_config.py", root)
    shutil.copytree(ROOT / "solutions", root / "solutions")
    nbgrader("generate_assignment", "*", cwd=root)  # one process for all: nbgrader's converters take a glob
    return root


def run_cells(notebook: str, *grade_ids: str, namespace: dict | None = None) -> dict:
    """Execute the named cells of a course notebook (path relative to the repo) in one namespace.

    Tests use it to take broken models and reference code from the notebooks themselves, so the
    test and the notebook cannot drift apart. Cells run in the order given.
    """
    cells = {c.metadata.get("nbgrader", {}).get("grade_id") or c.get("id"): c
             for c in nbformat.read(ROOT / notebook, as_version=4).cells}
    namespace = {} if namespace is None else namespace
    for grade_id in grade_ids:
        if grade_id not in cells:
            raise KeyError(f"{notebook} has no cell {grade_id!r}")
        exec(compile(cells[grade_id].source, f"{notebook}#{grade_id}", "exec"), namespace)
    return namespace


def printed_by(notebook: str, namespace: dict, grade_id: str) -> str:
    """What one cell of the notebook prints, run in a copy of the namespace."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_cells(notebook, grade_id, namespace=dict(namespace))
    return out.getvalue()


def rejected(check, *fragments) -> str:
    """The CheckFailed message of `check()`, which must name every fragment."""
    from grader import CheckFailed

    with pytest.raises(CheckFailed) as failure:
        check()
    message = str(failure.value)
    for fragment in fragments:
        assert fragment in message, f"missing {fragment!r} in:\n{message}"
    return message
