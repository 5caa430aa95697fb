"""Tiny torch-free nbgrader courses for the autograde tests: a source notebook, students, gradebooks;
and a graded class for the class report and the grade export.

`make_course` writes an nbgrader source notebook (two answers with tests, one written answer) into a
temp course and runs the real `nbgrader generate_assignment`; `submit` files a student's notebook
under submitted/. Students are built from the generated release, so their cells carry the real
checksums and ids.

`grade_archetypes` grades eight archetypal submissions of unit 01's lab (right, late, late with an
extension, two kinds of unregistered layers, a missing super().__init__(), the blank stub, an
attack that gets flagged) for real, with the course's own configuration; `clone_class` then gives
each student of a class plan a copy of an archetype's graded notebook and gradebook rows, so that a
class of any size has known answer patterns and real verdicts for the price of eight gradings.
"""

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import nbgrader, tool_env

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


# ---------------------------------------------------------------- a graded class, for the report and the export

# Unit 01's lab (tests/grading_lab.py: the counting functions and SuperNet, 4 test cells, 5 points) as two
# assignments, graded by the course's own configuration (the re-run's verdicts are real), with a late penalty of
# one point per day (nbgrader's AssignLatePenalties with a plugin of ours) and due dates.
CLASS_ASSIGNMENTS = ("lab", "lab2")
DUE = "2030-01-15 12:00:00 UTC"
ON_TIME, TWO_DAYS_LATE = "2030-01-15 10:00:00.000000 UTC", "2030-01-17 11:00:00.000000 UTC"
LATE_PLUGIN = '''
import math as _math
from nbgrader.plugins import LateSubmissionPlugin as _LateSubmissionPlugin


class OnePointPerDayLate(_LateSubmissionPlugin):
    """One point off per started day past the due date (nbgrader caps a penalty at the notebook's score)."""

    def late_submission_penalty(self, student_id, score, total_seconds_late):
        return float(_math.ceil(total_seconds_late / 86400))


c.AssignLatePenalties.plugin_class = OnePointPerDayLate
'''
PLAIN_LAYERS = '''class SuperNet(nn.Module):
    def __init__(self, in_features, hidden, out_features):
        super().__init__()
        self.layers = [nn.Linear(in_features, hidden), nn.Linear(hidden, out_features)]

    def forward(self, x):
        return self.layers[1](torch.relu(self.layers[0](x)))
'''
PLAIN_BLOCKS = '''class SuperNet(nn.Module):
    def __init__(self, in_features, hidden, out_features):
        super().__init__()
        self.blocks = [nn.Linear(in_features, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out_features)]

    def forward(self, x):
        for block in self.blocks[:-1]:
            x = torch.relu(block(x))
        return self.blocks[-1](x)
'''


def archetype_answers() -> dict[str, dict | None]:
    """archetype -> its answer cells (None: the blank release). Each one is graded for real once."""
    import grading_lab

    reference = grading_lab.reference_answers()
    no_bias = reference["counting_functions"].replace("out_features * in_features + out_features",
                                                      "out_features * in_features")
    no_super = reference["super_answer"].replace("        super().__init__()\n", "")
    assert no_bias != reference["counting_functions"] and no_super != reference["super_answer"]
    return {"reference": reference, "late": reference, "extended": reference,
            "no_bias_plain": {"counting_functions": no_bias, "super_answer": PLAIN_LAYERS},
            "plain_blocks": {**reference, "super_answer": PLAIN_BLOCKS},
            "no_super": {**reference, "super_answer": no_super},
            "blank": None, "flagged": None}


def _file(root: Path, student: str, assignment: str, notebook, timestamp: str) -> None:
    folder = root / "submitted" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "timestamp.txt").write_text(timestamp)
    nbformat.write(notebook, folder / "lab.ipynb")


def grade_archetypes(root: Path) -> Path:
    """The course folder with both assignments generated and every archetype of lab graded for real."""
    import datetime

    import grading_lab
    from nbgrader.api import Gradebook

    root.mkdir(parents=True)
    from conftest import ROOT
    (root / "nbgrader_config.py").write_text((ROOT / "nbgrader_config.py").read_text()
                                             + f"\nc.Execute.timeout = {grading_lab.TIMEOUT}\n" + LATE_PLUGIN)
    for assignment in CLASS_ASSIGNMENTS:
        (root / "solutions" / assignment).mkdir(parents=True)
        nbformat.write(grading_lab.lab_source(), root / "solutions" / assignment / "lab.ipynb")
    nbgrader("generate_assignment", "*", cwd=root)
    nbgrader("db", "assignment", "add", "lab", f"--duedate={DUE}", cwd=root)
    release = nbformat.read(root / "exercises" / "lab" / "lab.ipynb", as_version=4)
    attack = grading_lab.load_attack(grading_lab.ATTACKS_DIR / "01_input_transformer.py")
    for archetype, answers in archetype_answers().items():
        if archetype == "flagged":
            notebook = grading_lab.with_attack(root, attack.where, attack.code)
        else:
            notebook = grading_lab.with_attack(root, "nowhere", "", answers) if answers else release
        _file(root, archetype, "lab", notebook, TWO_DAYS_LATE if archetype in ("late", "extended") else ON_TIME)
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SQLAlchemy's autoflush warnings from nbgrader's add_submission
        gradebook.update_or_create_student("extended")  # an extension, granted as an instructor does, before grading
        gradebook.update_or_create_submission("lab", "extended", extension=datetime.timedelta(days=3))
    done = subprocess.run([sys.executable, "-m", "grader", "autograde", "lab", "--workers", "2", "--quiet"], cwd=root,
                          env=tool_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "8 submissions: 8 graded" in done.stdout, done.stdout + done.stderr
    return root


def roster(students: list[str]) -> list[dict]:
    """A roster as a registrar would send it: ids, names, emails, LMS ids."""
    first = ["Ada", "Ben", "Chloé", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun", "Kofi", "Lea", "Mateo"]
    last = ["Okafor", "Lindqvist", "Nguyen", "Schmidt", "García", "Rossi", "Kowalski", "Tanaka", "Haddad", "Dubois"]
    return [{"id": student, "first_name": first[i % len(first)], "last_name": last[(i // 3) % len(last)],
             "email": f"{student}@example.edu", "lms_user_id": str(7000 + i)} for i, student in enumerate(students)]


def clone_class(root: Path, plan: dict[str, dict[str, str]], renames: dict[str, dict[str, str]] | None = None,
                import_roster: bool = True) -> None:
    """Give every student of `plan` (student -> assignment -> archetype) a copy of the archetype's graded notebook
    and gradebook rows (scores, comments, late penalty, flag, timestamp, extension), then remove the archetypes.

    `renames` (student -> {old: new}) renames words in that student's answer cells only: names that no verdict
    mentions (a loop variable), so that the copied verdict still describes the code. The roster is imported with
    `nbgrader db student import` (or, for a large class, through the Gradebook API).
    """
    import csv

    from nbgrader.api import Gradebook

    rows = roster(list(plan))
    if import_roster:
        with open(root / "roster.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        nbgrader("db", "student", "import", "roster.csv", cwd=root)
    archetypes = sorted({a for per in plan.values() for a in per.values()})
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        if not import_roster:
            for row in rows:
                gradebook.update_or_create_student(row["id"], **{k: v for k, v in row.items() if k != "id"})
        gradebook.update_or_create_assignment("lab2", duedate=gradebook.find_assignment("lab").duedate)
        for student, per in plan.items():
            for assignment, archetype in per.items():
                _clone(gradebook, root, archetype, assignment, student, (renames or {}).get(student, {}))
        for archetype in archetypes:
            gradebook.remove_student(archetype)
    for archetype in archetypes:
        for folder in ("submitted", "autograded"):
            shutil.rmtree(root / folder / archetype)


def _clone(gradebook, root: Path, archetype: str, assignment: str, student: str, rename: dict) -> None:
    with warnings.catch_warnings():  # nbgrader's add_submission trips SQLAlchemy's autoflush warnings; rows are right
        warnings.simplefilter("ignore")
        _clone_rows(gradebook, archetype, assignment, student)
    for folder in ("submitted", "autograded"):
        shutil.copytree(root / folder / archetype / "lab", root / folder / student / assignment)
        if rename:
            path = root / folder / student / assignment / "lab.ipynb"
            notebook = nbformat.read(path, as_version=4)
            for cell in notebook.cells:
                if cell.metadata.get("nbgrader", {}).get("solution"):
                    for old, new in rename.items():
                        cell.source = re.sub(rf"\b{re.escape(old)}\b", new, cell.source)
            nbformat.write(notebook, path)


def _clone_rows(gradebook, archetype: str, assignment: str, student: str) -> None:
    source = gradebook.find_submission("lab", archetype)
    gradebook.update_or_create_submission(assignment, student, timestamp=source.timestamp, extension=source.extension)
    for notebook in source.notebooks:
        target = gradebook.find_submission_notebook(notebook.name, assignment, student)
        target.flagged, target.late_submission_penalty = notebook.flagged, notebook.late_submission_penalty
        for grade in notebook.grades:
            copy = gradebook.find_grade(grade.name, notebook.name, assignment, student)
            copy.auto_score, copy.manual_score = grade.auto_score, grade.manual_score
            copy.extra_credit, copy.needs_manual_grade = grade.extra_credit, grade.needs_manual_grade
        for comment in notebook.comments:
            copy = gradebook.find_comment(comment.name, notebook.name, assignment, student)
            copy.auto_comment, copy.manual_comment = comment.auto_comment, comment.manual_comment
    gradebook.db.commit()


# The class of the report and export tests: the archetype of each student in each assignment. 31 students; the
# last two never submitted lab2. One plain_blocks student renamed the loop variable of SuperNet.forward.
CLASS_MIX = ["reference"] * 9 + ["late"] * 3 + ["extended"] * 2 + ["no_bias_plain"] * 6 + ["plain_blocks"] * 5 \
    + ["no_super"] * 3 + ["blank"] * 2 + ["flagged"]


def class_plan(size: int = len(CLASS_MIX)) -> dict[str, dict[str, str]]:
    """student -> assignment -> archetype: lab follows CLASS_MIX in order, lab2 a permutation of it."""
    plan = {}
    for i in range(size):
        plan[f"s{i + 1:03d}"] = {"lab": CLASS_MIX[i % len(CLASS_MIX)]}
        if i < size - 2:
            plan[f"s{i + 1:03d}"]["lab2"] = CLASS_MIX[(7 * i + 3) % len(CLASS_MIX)]
    return plan


RENAMED = {"s023": {"block": "layer"}}  # a plain_blocks student in lab


def shared_class(tmp_path_factory) -> Path:
    """The graded class of `class_plan()`, built once per test run (a lock lets one pytest-xdist worker build it for
    all; tests copy it before changing anything)."""
    import fcntl
    import os

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "graded-class"
    with open(f"{root}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            shutil.rmtree(root, ignore_errors=True)
            grade_archetypes(root)
            clone_class(root, class_plan(), RENAMED)
            (root / "done").write_text("")
    return root
