"""`python -m grader export --format canvas|moodle|csv` on the graded class of synthetic_course.shared_class:
the files load back with the students' names, nbgrader's late penalties and the right course totals, in the
columns Canvas's and Moodle's grade imports read, and agree with nbgrader's own `nbgrader export`."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import nbgrader, tool_env
from synthetic_course import class_plan, roster, shared_class

from grader.grading import export

pytestmark = pytest.mark.notebooks

# What each archetype scores on an assignment after nbgrader's late penalty (one point a day; "late" is two days
# late, "extended" as late but within its three-day extension), out of 5: the known pattern.
FINAL = {"reference": 5, "late": 3, "extended": 5, "no_bias_plain": 0, "plain_blocks": 2, "no_super": 2,
         "blank": 0, "flagged": 0}
PLAN = class_plan()
ROSTER = {row["id"]: row for row in roster(list(PLAN))}


def expected(student: str, assignment: str) -> float:
    return FINAL[PLAN[student][assignment]] if assignment in PLAN[student] else 0.0  # no submission: 0


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture(autouse=True)
def nbgrader_tools(monkeypatch):
    monkeypatch.setenv("PATH", tool_env()["PATH"])  # nbgrader runs `alembic` by name


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    return shared_class(tmp_path_factory)


def test_canvas_file_loads_back_with_names_totals_and_points_possible(course, tmp_path):
    """Through the CLI, as an instructor runs it."""
    out = tmp_path / "canvas.csv"
    done = subprocess.run([sys.executable, "-m", "grader", "export", "--format", "canvas", "--out", str(out)],
                          cwd=course, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "31 students, 2 assignment(s) (lab /5, lab2 /5), course total out of 10; 6 late penalties applied; " \
           "2 missing submission(s) count 0" in done.stdout
    header, points, *students = rows_of(out)
    assert header == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "lab", "lab2", "Final Points"]
    assert points == ["Points Possible", "", "", "", "", "5", "5", "10"]
    assert len(students) == 31
    for name, canvas_id, _, login, _, lab, lab2, total in students:
        person = ROSTER[login]
        assert name == f"{person['last_name']}, {person['first_name']}" and canvas_id == person["lms_user_id"]
        assert (float(lab), float(lab2)) == (expected(login, "lab"), expected(login, "lab2")), login
        assert float(total) == expected(login, "lab") + expected(login, "lab2")
    by_name = sorted(PLAN, key=lambda s: (ROSTER[s]["last_name"].lower(), ROSTER[s]["first_name"].lower(), s))
    assert [s[3] for s in students] == by_name


def test_moodle_file_through_nbgraders_own_export(course, tmp_path):
    """`nbgrader export --exporter=...` runs the same plugin: the documented way in without our CLI."""
    out = tmp_path / "moodle.csv"
    nbgrader("export", "--exporter=grader.grading.export.MoodleExportPlugin", f"--to={out}", cwd=course)
    header, *students = rows_of(out)
    assert header == ["First name", "Last name", "Username", "ID number", "Email address", "lab", "lab2",
                      "Course total"]
    assert len(students) == 31
    for first, last, username, number, email, lab, lab2, total in students:
        person = ROSTER[username]
        assert (first, last, number, email) == (person["first_name"], person["last_name"], person["lms_user_id"],
                                                person["email"])
        assert float(lab) + float(lab2) == float(total) == expected(username, "lab") + expected(username, "lab2")


def test_csv_totals_agree_with_nbgraders_own_export(course, tmp_path, monkeypatch):
    """Per assignment, our score is the `score` column of `nbgrader export` (raw score less its late penalty)."""
    monkeypatch.chdir(course)
    assert export.main(["--format", "csv", "--out", str(tmp_path / "grades.csv")]) == 0
    with open(tmp_path / "grades.csv", newline="") as handle:
        ours = {row["student_id"]: row for row in csv.DictReader(handle)}
    nbgrader("export", f"--to={tmp_path / 'nbgrader.csv'}", cwd=course)
    with open(tmp_path / "nbgrader.csv", newline="") as handle:
        theirs = list(csv.DictReader(handle))
    assert len(theirs) == 2 * 31
    for row in theirs:
        mine = ours[row["student_id"]]
        assert float(mine[row["assignment"]]) == float(row["score"]) == expected(row["student_id"], row["assignment"])
        assert float(mine[f"{row['assignment']} late_penalty"]) == float(row["late_submission_penalty"])
    for student, row in ours.items():
        total = expected(student, "lab") + expected(student, "lab2")
        assert (float(row["total"]), float(row["max_total"]), float(row["percent"])) == (total, 10.0, total * 10)
        assert float(row["late_penalty"]) == 2.0 * sum(PLAN[student].get(a) == "late" for a in ("lab", "lab2"))


def test_one_assignment_and_an_assignment_not_graded_yet(course, tmp_path, monkeypatch, capsys):
    import shutil

    from nbgrader.api import Gradebook

    copy = shutil.copytree(course, tmp_path / "course")
    with Gradebook(f"sqlite:///{copy / 'gradebook.db'}") as gradebook:
        gradebook.add_assignment("lab3")
    monkeypatch.chdir(copy)
    assert export.main(["--format", "canvas", "--out", "one.csv", "--assignment", "lab"]) == 0
    header, points, *_ = rows_of(copy / "one.csv")
    assert header[5:] == ["lab", "Final Points"] and points[5:] == ["5", "5"]
    assert export.main(["--format", "moodle", "--out", "all.csv"]) == 0
    assert rows_of(copy / "all.csv")[0][5:] == ["lab", "lab2", "Course total"]  # lab3 left out, not zeros
    assert "Leaving out lab3: no graded submission yet" in capsys.readouterr().err
    assert export.main(["--format", "csv", "--out", "none.csv", "--assignment", "lab3"]) == 2
    assert "no assignment to export" in capsys.readouterr().err


def test_no_gradebook_and_no_students(tmp_path, monkeypatch, capsys):
    from nbgrader.api import Gradebook

    monkeypatch.chdir(tmp_path)
    assert export.main(["--format", "canvas"]) == 2
    assert "grader export: no gradebook at" in capsys.readouterr().err
    assert not (tmp_path / "gradebook.db").exists()
    Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}").close()
    assert export.main(["--format", "canvas"]) == 2
    message = capsys.readouterr().err
    assert "no student to export" in message and "nbgrader db student import" in message
