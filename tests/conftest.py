"""Shared fixtures: the repo's paths, and the nbgrader CLI run the way an instructor runs it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[:2].isdigit())


def pytest_collection_modifyitems(items):
    """nbval's lesson cells start kernels: mark them so `make test-fast` can leave them out."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebooks)


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
