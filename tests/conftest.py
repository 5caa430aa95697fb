"""Shared fixtures: the repo's paths, and the nbgrader CLI run the way an instructor runs it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())


def pytest_collection_modifyitems(items):
    """nbval's lesson cells start kernels: mark them so `make test-fast` can leave them out."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebooks)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures can react to a failed test (screenshots)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def tool_env() -> dict:
    """The environment with this interpreter's bin/ first (nbgrader calls `alembic` by name)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
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
    for assignment in ASSIGNMENTS:
        nbgrader("generate_assignment", assignment, cwd=root)
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
