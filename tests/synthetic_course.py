"""Tiny torch-free nbgrader courses for the autograde tests: a source notebook, students, gradebooks.

`make_course` writes an nbgrader source notebook (two answers with tests, one written answer) into a
temp course and runs the real `nbgrader generate_assignment`; `submit` files a student's notebook
under submitted/. Students are built from the generated release, so their cells carry the real
checksums and ids.
"""

import json
import shutil
import sqlite3
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import nbgrader

ASSIGNMENT = "toy"
NOTEBOOK = "toy"
MAX_SCORE = 4.0  # 1 + 2 automatic points, 1 manual point


def cell(kind, source, grade_id, *, solution=False, grade=False, locked=False, points=None):
    made = (new_code_cell if kind == "code" else new_markdown_cell)(source)
    meta = {"schema_version": 3, "grade_id": grade_id, "solution": solution, "grade": grade, "locked": locked}
    if points is not None:
        meta["points"] = points
    made.metadata["nbgrader"] = meta
    return made


def source_notebook(extra_cells=()) -> nbformat.NotebookNode:
    cells = [
        cell("markdown", "# Toy assignment", "intro", locked=True),
        cell("code", "import math", "setup", locked=True),
        cell("code", "def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION", "square",
              solution=True),
        cell("code", '"""Check that square squares."""\nassert square(3) == 9', "test_square", grade=True,
              locked=True, points=1),
        cell("code", "def cube(x):\n    ### BEGIN SOLUTION\n    return x ** 3\n    ### END SOLUTION", "cube",
              solution=True),
        cell("code", '"""Check that cube cubes."""\nassert cube(2) == 8\n### BEGIN HIDDEN TESTS\n'
                      'assert cube(3) == 27\n### END HIDDEN TESTS', "test_cube", grade=True, locked=True, points=2),
        cell("markdown", "### BEGIN SOLUTION\nBecause.\n### END SOLUTION", "explain", solution=True, grade=True,
              points=1),
        *extra_cells,
    ]
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                              "language": "python"}})


CONFIG = '''c = get_config()
c.CourseDirectory.course_id = "toy-course"
c.Execute.timeout = {timeout}
c.Execute.startup_timeout = 120
c.Execute.interrupt_on_timeout = True
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
{extra}
'''


def make_course(root: Path, *, timeout: int = 30, extra_config: str = "", notebook=None) -> Path:
    """A course folder with the toy assignment generated into its gradebook."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(CONFIG.format(timeout=timeout, extra=extra_config))
    (root / "source" / ASSIGNMENT).mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook or source_notebook(), root / "source" / ASSIGNMENT / f"{NOTEBOOK}.ipynb")
    nbgrader("generate_assignment", ASSIGNMENT, "--force", cwd=root)
    return root


def release(root: Path) -> nbformat.NotebookNode:
    return nbformat.read(root / "release" / ASSIGNMENT / f"{NOTEBOOK}.ipynb", as_version=4)


def answered(root: Path, answers: dict[str, str]) -> nbformat.NotebookNode:
    """The released notebook with these cells' sources replaced (by grade_id)."""
    notebook = release(root)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id]
    return notebook


RIGHT = {"square": "def square(x):\n    return x * x", "cube": "def cube(x):\n    return x ** 3",
         "explain": "Because."}
WRONG = {"square": "def square(x):\n    return x + x", "cube": "def cube(x):\n    return x * 3"}


def submit(root: Path, student: str, notebook=None, *, name: str = NOTEBOOK, raw: str | None = None,
           timestamp: str = "2030-01-15 12:00:00.000000 UTC") -> Path:
    """File a submission as `nbgrader collect` does: the notebook and a timestamp.txt."""
    folder = root / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "timestamp.txt").write_text(timestamp)
    path = folder / f"{name}.ipynb"
    if raw is not None:
        path.write_text(raw)
    else:
        nbformat.write(notebook, path)
    return path


def copy_course(root: Path, to: Path) -> Path:
    shutil.copytree(root, to)
    return to


def gradebook_rows(root: Path) -> dict:
    """Everything autograde writes, per (assignment, student, notebook): grades, comments, timestamp."""
    from nbgrader.api import Gradebook

    rows = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", "toy-course") as gradebook:
        for assignment in gradebook.assignments:
            for submission in gradebook.assignment_submissions(assignment.name):
                for notebook in submission.notebooks:
                    rows[(assignment.name, submission.student.id, notebook.name)] = {
                        "grades": sorted((g.name, g.auto_score, g.manual_score, g.needs_manual_grade)
                                         for g in notebook.grades),
                        "comments": sorted((c.name, c.auto_comment, c.manual_comment) for c in notebook.comments),
                        "timestamp": str(submission.timestamp),
                    }
    return rows


def integrity(root: Path) -> str:
    with sqlite3.connect(root / "gradebook.db") as db:
        return db.execute("pragma integrity_check").fetchone()[0]


def report(path: Path) -> dict:
    """The JSON report of `python -m grader autograde --report`, by student."""
    return {o["student"]: o for o in json.loads(path.read_text())["students"]}


__all__ = ["ASSIGNMENT", "MAX_SCORE", "RIGHT", "WRONG", "answered", "cell", "copy_course", "gradebook_rows",
           "integrity", "make_course", "release", "report", "source_notebook", "submit"]
