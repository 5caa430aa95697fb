"""The assignments through the real nbgrader CLI: no drift, and an autograde round trip.

The round trip is nbgrader's "validate both ways", done the way grading happens: the
reference solution must earn full marks and the blank release exactly 0 (so every graded cell
fails on the stub). `make validate` runs `nbgrader validate` itself, and the browser tests press
its button.
"""

import shutil
import subprocess
import sys

import nbformat
import pytest
from nbgrader.api import Gradebook

from conftest import ASSIGNMENTS, ROOT, tool_env

pytestmark = pytest.mark.notebooks


def notebooks(folder: str):
    return sorted((ROOT / folder).glob("*/*.ipynb"))


def test_there_is_something_to_test():
    assert ASSIGNMENTS and notebooks("solutions") and notebooks("exercises")


def _comparable(path):
    notebook = nbformat.read(path, as_version=4)
    return [(c.cell_type, c.source, c.metadata.get("nbgrader")) for c in notebook.cells], notebook.metadata


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercises_match_what_generate_assignment_makes(course, assignment):
    generated = sorted(p.name for p in (course / "exercises" / assignment).glob("*.ipynb"))
    committed = sorted(p.name for p in (ROOT / "exercises" / assignment).glob("*.ipynb"))
    regenerate = f"make exercises ASSIGNMENT={assignment} FORCE=1"
    assert committed == generated, f"exercises/ has other notebooks than solutions/: run `{regenerate}`"
    for name in generated:
        assert _comparable(ROOT / "exercises" / assignment / name) == \
            _comparable(course / "exercises" / assignment / name), \
            f"exercises/{assignment}/{name} drifted from solutions/: run `{regenerate}`, never edit it by hand"


@pytest.fixture(scope="module")
def graded(course):
    """Every assignment's reference solution and blank release, graded in one parallel run of
    nbgrader's own converter (`python -m grader autograde`), with the course's configuration."""
    for student, source in (("reference", "solutions"), ("blank", "exercises")):
        for assignment in ASSIGNMENTS:
            shutil.copytree(course / source / assignment, course / "submitted" / student / assignment,
                            dirs_exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "grader", "autograde", *ASSIGNMENTS, "--force", "--quiet"],
                          cwd=course, env=tool_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return course


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_autograde_gives_reference_full_marks_and_blank_zero(graded, assignment):
    with Gradebook(f"sqlite:///{graded / 'gradebook.db'}") as gradebook:
        max_score = gradebook.find_assignment(assignment).max_score
        reference = gradebook.find_submission(assignment, "reference").score
        blank = gradebook.find_submission(assignment, "blank").score
    assert max_score > 0
    assert (reference, blank) == (max_score, 0)
